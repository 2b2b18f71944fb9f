//! A small ONNX writer over the protobuf types of `tract_onnx::pb` (encoded with `prost`), and the
//! ONNX nodes of each backbone layer (design.md decision 2, edge-runtime.md §2.1).
//!
//! - [`GraphBuilder`]: unique tensor names, f32 initializers stored as raw little-endian bytes,
//!   graph inputs/outputs with fixed or symbolic (`dim_param`) dimensions, `ir_version` 8,
//!   opset 17.
//! - [`emit_layer`]: the nodes of one [`Layer`]. BatchNorm is folded into the preceding conv
//!   (`w' = w * gamma / sqrt(var + eps)`, `b' = (b - mean) * gamma / sqrt(var + eps) + beta`),
//!   ReLU6 is `Clip(x, 0, 6)` with min/max as initializer inputs, TF "SAME" padding is
//!   `auto_pad = "SAME_UPPER"` when the padding depends on the input size (stride > 1) and
//!   explicit `pads` otherwise, so the graph keeps symbolic H and W.

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, bail, Result};
use fss_core::bundle::Dim;
use tch::{Device, Kind, Tensor};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::backbone::layers::{
    Activation, BatchNorm2d, Conv2d, ConvBnAct, InvertedResidual, Layer, Linear, MaxPool2d, Padding,
};

/// ONNX IR version written (ONNX 1.13+ reads it; onnx 1.23 checks it).
pub const IR_VERSION: i64 = 8;
/// The default-domain opset the nodes are written for.
pub const OPSET: i64 = 17;
/// `producer_name` of the models.
pub const PRODUCER: &str = "fss-host";

/// Attribute helpers.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A float tensor value info with fixed or symbolic dimensions.
pub fn value_info_f32(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                Dim::Symbol(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

/// Builds one ONNX graph: nodes in topological order (the order they are added), initializers,
/// inputs and outputs. Every tensor name is unique.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    used: HashSet<String>,
    counters: HashMap<String, usize>,
    scalars: HashMap<u32, String>,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// A name not used yet: `base` itself if free, else `base_1`, `base_2`, ...
    pub fn unique(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "t" } else { base };
        if self.used.insert(base.to_string()) {
            return base.to_string();
        }
        let n = self.counters.entry(base.to_string()).or_insert(0);
        loop {
            *n += 1;
            let candidate = format!("{base}_{n}");
            if self.used.insert(candidate.clone()) {
                return candidate;
            }
        }
    }

    /// Declares a float graph input; returns its (exact) name. Errors if the name is taken.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> Result<String> {
        if !self.used.insert(name.to_string()) {
            bail!(
                "ONNX graph {}: input name `{name}` is already used",
                self.name
            );
        }
        self.inputs.push(value_info_f32(name, dims));
        Ok(name.to_string())
    }

    /// A float initializer (raw little-endian bytes); returns its unique name.
    pub fn initializer_f32(&mut self, base: &str, dims: &[i64], data: &[f32]) -> Result<String> {
        let expected: i64 = dims.iter().product();
        if expected as usize != data.len() {
            bail!(
                "ONNX initializer {base}: {} values for shape {dims:?}",
                data.len()
            );
        }
        let name = self.unique(base);
        let raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            name: name.clone(),
            raw_data,
            ..Default::default()
        });
        Ok(name)
    }

    /// An initializer of any element type from its raw little-endian bytes (`data_type` is a
    /// `tensor_proto::DataType`); returns its unique name.
    pub fn initializer_raw(
        &mut self,
        base: &str,
        dims: &[i64],
        data_type: DataType,
        raw_data: Vec<u8>,
    ) -> Result<String> {
        let n: i64 = dims.iter().product();
        let width = match data_type {
            DataType::Uint8 | DataType::Int8 => 1,
            DataType::Int32 | DataType::Float => 4,
            DataType::Int64 => 8,
            other => bail!("ONNX initializer {base}: element type {other:?} not supported"),
        };
        if (n as usize) * width != raw_data.len() {
            bail!(
                "ONNX initializer {base}: {} bytes for shape {dims:?} of {data_type:?}",
                raw_data.len()
            );
        }
        let name = self.unique(base);
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: data_type as i32,
            name: name.clone(),
            raw_data,
            ..Default::default()
        });
        Ok(name)
    }

    /// A scalar (rank 0) float constant, shared by every node that uses the same value.
    pub fn scalar_f32(&mut self, base: &str, v: f32) -> Result<String> {
        if let Some(n) = self.scalars.get(&v.to_bits()) {
            return Ok(n.clone());
        }
        let name = self.initializer_f32(base, &[], &[v])?;
        self.scalars.insert(v.to_bits(), name.clone());
        Ok(name)
    }

    /// Adds a node with one output; returns the output's unique name (derived from `base`).
    pub fn node(
        &mut self,
        op_type: &str,
        base: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) -> String {
        let out = self.unique(base);
        let name = self.unique(&format!("{base}/{op_type}"));
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name,
            op_type: op_type.to_string(),
            attribute,
            ..Default::default()
        });
        out
    }

    /// Makes tensor `tensor` a graph output named `name` (renaming the tensor where it is
    /// produced and consumed; an `Identity` node when `tensor` is a graph input or initializer).
    pub fn output(&mut self, tensor: &str, name: &str, dims: &[Dim]) -> Result<()> {
        if tensor != name {
            if self.used.contains(name) {
                bail!(
                    "ONNX graph {}: output name `{name}` is already used",
                    self.name
                );
            }
            let produced = self
                .nodes
                .iter()
                .any(|n| n.output.iter().any(|o| o == tensor));
            if produced {
                for n in &mut self.nodes {
                    for s in n.output.iter_mut().chain(n.input.iter_mut()) {
                        if s == tensor {
                            *s = name.to_string();
                        }
                    }
                }
                self.used.insert(name.to_string());
            } else {
                self.used.insert(name.to_string());
                self.nodes.push(NodeProto {
                    input: vec![tensor.to_string()],
                    output: vec![name.to_string()],
                    name: format!("{name}/Identity"),
                    op_type: "Identity".into(),
                    ..Default::default()
                });
            }
        }
        self.outputs.push(value_info_f32(name, dims));
        Ok(())
    }

    /// Number of nodes so far.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn into_graph(self) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: self.name,
            initializer: self.initializers,
            input: self.inputs,
            output: self.outputs,
            ..Default::default()
        }
    }

    /// The model: IR version 8, default-domain opset 17.
    pub fn into_model(self, doc: &str) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: PRODUCER.into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.to_string(),
            graph: Some(self.into_graph()),
            ..Default::default()
        }
    }
}

/// The values of a tensor as f32 on the CPU, row-major.
pub fn tensor_f32(t: &Tensor) -> Result<Vec<f32>> {
    let t = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    Vec::<f32>::try_from(&t.flatten(0, -1)).map_err(|e| anyhow!("reading a tensor: {e}"))
}

/// A conv's parameters with the BatchNorm that follows it folded in.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedConv {
    /// OIHW, row-major.
    pub weight: Vec<f32>,
    /// `[out, in / groups, kh, kw]`.
    pub shape: Vec<i64>,
    pub bias: Option<Vec<f32>>,
}

/// `conv`'s weight and bias with `bn` folded in (computed in f64):
/// `w' = w * gamma / sqrt(var + eps)`, `b' = (b - mean) * gamma / sqrt(var + eps) + beta`.
pub fn fold_conv_bn(conv: &Conv2d, bn: Option<&BatchNorm2d>) -> Result<FoldedConv> {
    let shape = conv.weight.size();
    let w = tensor_f32(&conv.weight)?;
    let b = conv.bias.as_ref().map(tensor_f32).transpose()?;
    let Some(bn) = bn else {
        return Ok(FoldedConv {
            weight: w,
            shape,
            bias: b,
        });
    };
    let out = shape[0] as usize;
    let gamma = tensor_f32(&bn.weight)?;
    let beta = tensor_f32(&bn.bias)?;
    let mean = tensor_f32(&bn.running_mean)?;
    let var = tensor_f32(&bn.running_var)?;
    if [gamma.len(), beta.len(), mean.len(), var.len()]
        .iter()
        .any(|&n| n != out)
    {
        bail!(
            "BatchNorm {} has {} channels, conv {} has {out}",
            bn.name,
            gamma.len(),
            conv.name
        );
    }
    let per = w.len() / out.max(1);
    let mut wf = Vec::with_capacity(w.len());
    let mut bf = Vec::with_capacity(out);
    for c in 0..out {
        let scale = gamma[c] as f64 / (var[c] as f64 + bn.eps).sqrt();
        wf.extend(
            w[c * per..(c + 1) * per]
                .iter()
                .map(|&v| (v as f64 * scale) as f32),
        );
        let b0 = b.as_ref().map(|b| b[c] as f64).unwrap_or(0.0);
        bf.push(((b0 - mean[c] as f64) * scale + beta[c] as f64) as f32);
    }
    Ok(FoldedConv {
        weight: wf,
        shape,
        bias: Some(bf),
    })
}

/// The ONNX padding attributes of a conv: explicit `pads` `[top, left, bottom, right]` when they
/// do not depend on the input size, else `auto_pad = "SAME_UPPER"` (TF "SAME": the odd pixel
/// at the end).
pub fn conv_padding_attrs(conv: &Conv2d) -> Vec<AttributeProto> {
    let kernel = conv.kernel();
    match conv.padding {
        Padding::Explicit(p) => vec![attr_ints("pads", &p)],
        Padding::TfSame => {
            let fixed = (0..2).all(|d| {
                let field = (kernel[d] - 1) * conv.dilation[d] + 1;
                // stride 1: total (k - 1) * d whatever the size; a field no wider than the
                // stride never pads.
                conv.stride[d] == 1 || field <= conv.stride[d]
            });
            if fixed {
                // Any size gives the same padding; resolve it on a size the stride divides.
                let probe = [conv.stride[0] * 64, conv.stride[1] * 64];
                let p = conv
                    .padding
                    .resolve(probe, kernel, conv.stride, conv.dilation);
                vec![attr_ints("pads", &p)]
            } else {
                vec![attr_string("auto_pad", "SAME_UPPER")]
            }
        }
    }
}

/// `Conv` (BatchNorm folded) and the activation; returns the output tensor name.
pub fn emit_conv_bn_act(g: &mut GraphBuilder, l: &ConvBnAct, x: &str) -> Result<String> {
    emit_conv(g, &l.conv, l.bn.as_ref(), l.act, x)
}

/// `Conv` of `conv` (with `bn` folded in) and `act`; returns the output tensor name.
pub fn emit_conv(
    g: &mut GraphBuilder,
    conv: &Conv2d,
    bn: Option<&BatchNorm2d>,
    act: Activation,
    x: &str,
) -> Result<String> {
    let base = if conv.name.is_empty() {
        "conv"
    } else {
        &conv.name
    };
    let FoldedConv {
        weight: w,
        shape,
        bias: b,
    } = fold_conv_bn(conv, bn)?;
    let w_name = g.initializer_f32(&format!("{base}.weight"), &shape, &w)?;
    let mut inputs = vec![x.to_string(), w_name];
    if let Some(b) = b {
        inputs.push(g.initializer_f32(&format!("{base}.bias"), &[shape[0]], &b)?);
    }
    let mut attrs = vec![
        attr_ints("kernel_shape", &conv.kernel()),
        attr_ints("strides", &conv.stride),
        attr_ints("dilations", &conv.dilation),
        attr_int("group", conv.groups),
    ];
    attrs.extend(conv_padding_attrs(conv));
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let y = g.node("Conv", base, &refs, attrs);
    emit_activation(g, act, &y, base)
}

/// The nodes of an activation (none for [`Activation::None`]).
pub fn emit_activation(
    g: &mut GraphBuilder,
    act: Activation,
    x: &str,
    base: &str,
) -> Result<String> {
    Ok(match act {
        Activation::None => x.to_string(),
        Activation::Relu => g.node("Relu", &format!("{base}.relu"), &[x], vec![]),
        Activation::Relu6 => {
            let lo = g.scalar_f32("relu6_min", 0.0)?;
            let hi = g.scalar_f32("relu6_max", 6.0)?;
            g.node("Clip", &format!("{base}.relu6"), &[x, &lo, &hi], vec![])
        }
    })
}

/// Expansion, depthwise, projection and the residual `Add`.
pub fn emit_inverted_residual(
    g: &mut GraphBuilder,
    l: &InvertedResidual,
    x: &str,
) -> Result<String> {
    let mut h = x.to_string();
    if let Some(e) = &l.expand {
        h = emit_conv_bn_act(g, e, &h)?;
    }
    h = emit_conv_bn_act(g, &l.depthwise, &h)?;
    h = emit_conv_bn_act(g, &l.project, &h)?;
    if l.residual {
        let base = format!("{}.add", block_name(&l.project.conv.name));
        h = g.node("Add", &base, &[&h, x], vec![]);
    }
    Ok(h)
}

/// `features.3.conv.2` -> `features.3`: the block prefix of a layer name (best effort).
pub fn block_name(conv_name: &str) -> String {
    let parts: Vec<&str> = conv_name.split('.').collect();
    if parts.len() >= 2 {
        parts[..2].join(".")
    } else {
        conv_name.to_string()
    }
}

/// `MaxPool` (symmetric pads, no dilation).
pub fn emit_max_pool(g: &mut GraphBuilder, p: &MaxPool2d, x: &str, base: &str) -> String {
    let [ph, pw] = p.padding;
    let attrs = vec![
        attr_ints("kernel_shape", &p.kernel),
        attr_ints("strides", &p.stride),
        attr_ints("pads", &[ph, pw, ph, pw]),
        attr_int("ceil_mode", p.ceil_mode as i64),
    ];
    g.node("MaxPool", base, &[x], attrs)
}

/// `Flatten(axis 1)` then `Gemm(transB = 1)`.
pub fn emit_linear(g: &mut GraphBuilder, l: &Linear, x: &str) -> Result<String> {
    let base = if l.name.is_empty() { "linear" } else { &l.name };
    let flat = g.node(
        "Flatten",
        &format!("{base}.flatten"),
        &[x],
        vec![attr_int("axis", 1)],
    );
    let shape = l.weight.size();
    let w = g.initializer_f32(&format!("{base}.weight"), &shape, &tensor_f32(&l.weight)?)?;
    let mut inputs = vec![flat, w];
    if let Some(b) = &l.bias {
        inputs.push(g.initializer_f32(&format!("{base}.bias"), &[shape[0]], &tensor_f32(b)?)?);
    }
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    Ok(g.node(
        "Gemm",
        base,
        &refs,
        vec![
            attr_int("transB", 1),
            attr_float("alpha", 1.0),
            attr_float("beta", 1.0),
        ],
    ))
}

/// The nodes of one layer applied to tensor `x`; returns the output tensor name. `index` names
/// the parameter-less layers (pools).
pub fn emit_layer(g: &mut GraphBuilder, layer: &Layer, x: &str, index: usize) -> Result<String> {
    match layer {
        Layer::ConvBnAct(l) => emit_conv_bn_act(g, l, x),
        Layer::InvertedResidual(l) => emit_inverted_residual(g, l, x),
        Layer::MaxPool2d(p) => Ok(emit_max_pool(g, p, x, &format!("pool{index}"))),
        Layer::GlobalAvgPool => {
            let base = format!("gap{index}");
            let y = g.node("GlobalAveragePool", &base, &[x], vec![]);
            Ok(g.node(
                "Flatten",
                &format!("{base}.flatten"),
                &[&y],
                vec![attr_int("axis", 1)],
            ))
        }
        Layer::Linear(l) => emit_linear(g, l, x),
    }
}

/// The encoder's input `[1, C_in, "H", "W"]` and output `[1, C_out, "h", "w"]` dims.
pub fn encoder_dims(in_channels: usize, out_channels: usize) -> ([Dim; 4], [Dim; 4]) {
    let dims = |c: usize, h: &str, w: &str| {
        [
            Dim::Fixed(1),
            Dim::Fixed(c),
            Dim::Symbol(h.into()),
            Dim::Symbol(w.into()),
        ]
    };
    (dims(in_channels, "H", "W"), dims(out_channels, "h", "w"))
}

/// A model running `layers` in order on a float input `[1, in_channels, "H", "W"]` named
/// `input_name`, with output `output_name` `[1, out_channels, "h", "w"]`.
pub fn layers_model(
    layers: &[Layer],
    in_channels: usize,
    out_channels: usize,
    input_name: &str,
    output_name: &str,
    doc: &str,
) -> Result<ModelProto> {
    let mut g = GraphBuilder::new("encoder");
    let (in_dims, out_dims) = encoder_dims(in_channels, out_channels);
    let mut x = g.input(input_name, &in_dims)?;
    for (i, layer) in layers.iter().enumerate() {
        x = emit_layer(&mut g, layer, &x, i)?;
    }
    g.output(&x, output_name, &out_dims)?;
    Ok(g.into_model(doc))
}
