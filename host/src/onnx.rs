//! A small ONNX writer over the protobuf types of `tract_onnx::pb` (encoded with `prost`)
//! (design.md decision 2, edge-runtime.md §2.1): unique tensor names, f32 initializers stored as
//! raw little-endian bytes, graph inputs/outputs with fixed or symbolic (`dim_param`)
//! dimensions, `ir_version` 8, opset 17. The nodes each layer writes are beside its forward in
//! [`crate::layers`]; the head graphs are in [`crate::export::head`].

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, bail, Result};
use fss_core::bundle::Dim;
use tch::{Device, Kind, Tensor};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
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

// Graph helpers of the head graphs: small node patterns written once.

/// An int64 vector initializer.
pub fn int64s(g: &mut GraphBuilder, base: &str, v: &[i64]) -> Result<String> {
    g.initializer_raw(
        base,
        &[v.len() as i64],
        DataType::Int64,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

/// A two-input node (`Add`, `Mul`, `MatMul`, ...).
pub fn binary(g: &mut GraphBuilder, op: &str, a: &str, b: &str, base: &str) -> String {
    g.node(op, base, &[a, b], vec![])
}

/// `Reshape` to a fixed `shape`.
pub fn reshape(g: &mut GraphBuilder, x: &str, shape: &[i64], base: &str) -> Result<String> {
    let s = int64s(g, &format!("{base}.shape"), shape)?;
    Ok(g.node("Reshape", base, &[x, &s], vec![]))
}

/// `Concat` along channels.
pub fn concat(g: &mut GraphBuilder, xs: &[&str], base: &str) -> String {
    g.node("Concat", base, xs, vec![attr_int("axis", 1)])
}

/// `ReduceSum(x, axes = [axis])` (opset 13+: axes as an input).
pub fn reduce_sum(
    g: &mut GraphBuilder,
    x: &str,
    axis: i64,
    keep: bool,
    base: &str,
) -> Result<String> {
    let axes = int64s(g, &format!("{base}.axes"), &[axis])?;
    Ok(g.node(
        "ReduceSum",
        base,
        &[x, &axes],
        vec![attr_int("keepdims", keep as i64)],
    ))
}

/// `ReduceMax` / `ReduceMean` (opset 17: axes as an attribute).
pub fn reduce_attr(
    g: &mut GraphBuilder,
    op: &str,
    x: &str,
    axis: i64,
    keep: bool,
    base: &str,
) -> String {
    g.node(
        op,
        base,
        &[x],
        vec![
            attr_ints("axes", &[axis]),
            attr_int("keepdims", keep as i64),
        ],
    )
}

/// `sqrt(sum x^2 over axis (+ eps))`, kept dims.
pub fn l2_norm(
    g: &mut GraphBuilder,
    x: &str,
    axis: i64,
    eps: Option<f32>,
    base: &str,
) -> Result<String> {
    let sq = binary(g, "Mul", x, x, &format!("{base}.sq"));
    let mut s = reduce_sum(g, &sq, axis, true, &format!("{base}.sum"))?;
    if let Some(e) = eps {
        let e = g.scalar_f32(&format!("{base}.eps"), e)?;
        s = binary(g, "Add", &s, &e, &format!("{base}.add_eps"));
    }
    Ok(g.node("Sqrt", &format!("{base}.sqrt"), &[&s], vec![]))
}

/// `cos(x, v) = dot / (|x| |v| + eps)` over channels: `x` `[1, W, h, w]`, `v4` `[1, W, 1, 1]`.
pub fn cosine_map(g: &mut GraphBuilder, x: &str, v4: &str, eps: f32, base: &str) -> Result<String> {
    let xv = binary(g, "Mul", x, v4, &format!("{base}.xv"));
    let dot = reduce_sum(g, &xv, 1, true, &format!("{base}.dot"))?;
    let nx = l2_norm(g, x, 1, None, &format!("{base}.nx"))?;
    let nv = l2_norm(g, v4, 1, None, &format!("{base}.nv"))?;
    let den = binary(g, "Mul", &nx, &nv, &format!("{base}.nxnv"));
    let eps = g.scalar_f32(&format!("{base}.eps"), eps)?;
    let den = binary(g, "Add", &den, &eps, &format!("{base}.den"));
    Ok(binary(g, "Div", &dot, &den, &format!("{base}.cos")))
}

/// `AveragePool` k3 s2 p1 with the padding counted (torch's `avg_pool2d` defaults).
pub fn avg_pool(g: &mut GraphBuilder, x: &str, base: &str) -> String {
    g.node(
        "AveragePool",
        base,
        &[x],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
            attr_int("count_include_pad", 1),
        ],
    )
}

/// Bilinear (half-pixel) resize of `x` to the shape of `like` (same batch and channels).
pub fn resize_like(g: &mut GraphBuilder, x: &str, like: &str, base: &str) -> String {
    let sizes = g.node("Shape", &format!("{base}.sizes"), &[like], vec![]);
    g.node(
        "Resize",
        base,
        &[x, "", "", &sizes],
        vec![
            attr_string("mode", "linear"),
            attr_string("coordinate_transformation_mode", "half_pixel"),
        ],
    )
}
