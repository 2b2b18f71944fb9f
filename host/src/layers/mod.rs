//! The explicit layer set the backbones are built from, one file per op: each op's tch
//! forward sits beside the ONNX nodes it exports to (fp32, and for the conv layer int8 with the
//! tch simulation of it), so an op is defined in one place (tract keeps one small file per op
//! too). `host/tests/layers.rs` checks every op type's export in tract against its tch forward.
//!
//! Every network in [`crate::backbone`] is a flat list of [`Layer`]s. Each layer holds its own
//! `tch::Tensor` parameters (created through a [`tch::nn::Path`], so they live in a `VarStore`)
//! and is plain data: a conv's stride, padding, dilation and groups, a BatchNorm's eps, an
//! activation's kind are all public fields. Parameter names are relative to the backbone root and
//! equal the keys of the source state dict (torchvision / efficientnet-lite-pytorch), e.g.
//! `features.3.conv.1.0.weight`.
//!
//! - [`conv`]: `Conv2d` and the ONNX attributes of its geometry (TF "SAME" padding is
//!   `auto_pad = "SAME_UPPER"` where it depends on the input size, explicit `pads` otherwise, so
//!   graphs keep symbolic H and W);
//! - [`batch_norm`]: `BatchNorm2d` and its fold into the conv before it;
//! - [`activation`]: ReLU, ReLU6 (`Clip(x, 0, 6)`) and none;
//! - [`conv_bn_act`]: conv + BatchNorm + activation, fp32 and int8 (QLinearConv), and the int8
//!   simulation in tch;
//! - [`inverted_residual`]: the MobileNetV2 / EfficientNet block;
//! - [`pool`]: max pooling and the global average;
//! - [`linear`]: the classifiers' fully connected layer;
//! - [`int8`]: the u8 quantization (ranges, scale and zero point, quantize-dequantize).

use std::collections::{BTreeMap, HashSet};

use anyhow::{anyhow, Result};
use fss_core::bundle::Dim;
use tch::nn;
use tch::Tensor;
use tract_onnx::pb::ModelProto;

use crate::onnx::GraphBuilder;

pub mod activation;
pub mod batch_norm;
pub mod conv;
pub mod conv_bn_act;
pub mod int8;
pub mod inverted_residual;
pub mod linear;
pub mod pool;

pub use activation::Activation;
pub use batch_norm::{fold_conv_bn, BatchNorm2d, FoldedConv};
pub use conv::{Conv2d, Conv2dConfig, ConvInit, Padding};
pub use conv_bn_act::{emit_conv, emit_conv_relu, ConvBnAct, ConvRanges, QuantConv};
pub use inverted_residual::InvertedResidual;
pub use linear::Linear;
pub use pool::{GlobalAvgPool, MaxPool2d};

/// Names a sub-tree of the parameters: the `nn::Path` the tensors are created under plus the name
/// relative to the backbone root (the state-dict key prefix).
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    path: nn::Path<'a>,
    name: String,
}

impl<'a> Scope<'a> {
    /// The backbone root: relative names start empty whatever `path` is.
    pub fn root(path: &nn::Path<'a>) -> Self {
        Scope {
            path: path.clone(),
            name: String::new(),
        }
    }

    /// A child scope (`s` must not contain `.`).
    pub fn sub(&self, s: &str) -> Scope<'a> {
        let name = if self.name.is_empty() {
            s.to_string()
        } else {
            format!("{}.{s}", self.name)
        };
        Scope {
            path: self.path.sub(s),
            name,
        }
    }

    /// The relative name of this scope (`features.3.conv.1.0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `nn::Path` the tensors are created under.
    pub fn path(&self) -> &nn::Path<'a> {
        &self.path
    }
}

/// One step of a backbone. The trunk and the classifier head are `Vec<Layer>` run in order.
#[derive(Debug)]
pub enum Layer {
    ConvBnAct(ConvBnAct),
    InvertedResidual(Box<InvertedResidual>),
    MaxPool2d(MaxPool2d),
    GlobalAvgPool(GlobalAvgPool),
    Linear(Linear),
}

impl Layer {
    /// `train`: BatchNorm uses (and updates) batch statistics. Dropout is never applied.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_convs(x, &mut |l, x| l.forward(x, train))
    }

    /// The layer in eval mode, except that each of its `ConvBnAct`s (also inside an inverted
    /// residual) is computed by `conv(layer, input)`, which returns the output after the
    /// activation (int8 calibration and simulation).
    pub fn forward_convs(
        &self,
        x: &Tensor,
        conv: &mut dyn FnMut(&ConvBnAct, &Tensor) -> Tensor,
    ) -> Tensor {
        match self {
            Layer::ConvBnAct(l) => conv(l, x),
            Layer::InvertedResidual(l) => l.forward_convs(x, conv),
            Layer::MaxPool2d(l) => l.forward(x, false),
            Layer::GlobalAvgPool(l) => l.forward(x, false),
            Layer::Linear(l) => l.forward(x, false),
        }
    }

    /// The nodes of the layer on tensor `x`; returns the output tensor name. `index` names the
    /// parameter-less layers (pools).
    pub fn emit(&self, e: &mut Emitter, x: &str, index: usize) -> Result<String> {
        match self {
            Layer::ConvBnAct(l) => l.emit(e, x),
            Layer::InvertedResidual(l) => l.emit(e, x),
            Layer::MaxPool2d(p) => Ok(p.emit(&mut e.graph, x, &format!("pool{index}"))),
            Layer::GlobalAvgPool(p) => Ok(p.emit(&mut e.graph, x, &format!("gap{index}"))),
            Layer::Linear(l) => l.emit(&mut e.graph, x),
        }
    }

    /// The layer's `ConvBnAct`s in graph order.
    pub fn convs(&self) -> Box<dyn Iterator<Item = &ConvBnAct> + '_> {
        match self {
            Layer::ConvBnAct(l) => Box::new(std::iter::once(l)),
            Layer::InvertedResidual(l) => Box::new(l.convs()),
            Layer::MaxPool2d(_) | Layer::GlobalAvgPool(_) | Layer::Linear(_) => {
                Box::new(std::iter::empty())
            }
        }
    }

    /// Appends `(relative name, tensor)` for every parameter and buffer (shallow clones).
    pub fn named_parameters(&self, out: &mut Vec<(String, Tensor)>) {
        match self {
            Layer::ConvBnAct(l) => l.named_parameters(out),
            Layer::InvertedResidual(l) => l.named_parameters(out),
            Layer::Linear(l) => l.named_parameters(out),
            Layer::MaxPool2d(_) | Layer::GlobalAvgPool(_) => {}
        }
    }

    /// Output channels when the layer changes them (`None` for pools, which keep them).
    pub fn out_channels(&self) -> Option<i64> {
        match self {
            Layer::ConvBnAct(l) => Some(l.out_channels()),
            Layer::InvertedResidual(l) => Some(l.out_channels()),
            Layer::Linear(l) => Some(l.weight.size()[0]),
            Layer::MaxPool2d(_) | Layer::GlobalAvgPool(_) => None,
        }
    }
}

/// `<name>.weight` and, when there is one, `<name>.bias` (shallow clones): the parameters of a
/// conv or a linear layer.
fn push_weight_and_bias(
    name: &str,
    weight: &Tensor,
    bias: Option<&Tensor>,
    out: &mut Vec<(String, Tensor)>,
) {
    out.push((format!("{name}.weight"), weight.shallow_clone()));
    if let Some(b) = bias {
        out.push((format!("{name}.bias"), b.shallow_clone()));
    }
}

/// Weight plus bias values.
fn weight_and_bias_count(weight: &Tensor, bias: Option<&Tensor>) -> i64 {
    weight.numel() as i64 + bias.map_or(0, |b| b.numel() as i64)
}

/// Runs `layers` in order on `x` as [`Layer::forward_convs`] does.
pub fn forward_convs(
    layers: &[Layer],
    x: &Tensor,
    conv: &mut dyn FnMut(&ConvBnAct, &Tensor) -> Tensor,
) -> Tensor {
    let mut h = x.shallow_clone();
    for layer in layers {
        h = layer.forward_convs(&h, conv);
    }
    h
}

/// Every `ConvBnAct` of `layers`, in graph order.
pub fn convs(layers: &[Layer]) -> impl Iterator<Item = &ConvBnAct> {
    layers.iter().flat_map(Layer::convs)
}

/// Which convs an int8 graph quantizes, and their quantized forms.
#[derive(Debug, Clone, Copy)]
pub struct Int8Plan<'a> {
    pub quant: &'a BTreeMap<String, QuantConv>,
    /// Names of the convs written int8; every other conv is written fp32.
    pub int8: &'a HashSet<String>,
}

/// Where the layers write their nodes, and in which precision.
pub struct Emitter<'a> {
    pub graph: GraphBuilder,
    int8: Option<Int8Plan<'a>>,
    /// With an int8 plan: the convs written fp32, in graph order.
    pub layers_fp32: Vec<String>,
    /// The u8 step of the last int8 conv's output.
    pub last_output_scale: Option<f32>,
}

impl<'a> Emitter<'a> {
    /// An emitter into `graph`, every conv fp32 unless `int8` names it.
    pub fn new(graph: GraphBuilder, int8: Option<Int8Plan<'a>>) -> Self {
        Emitter {
            graph,
            int8,
            layers_fp32: Vec::new(),
            last_output_scale: None,
        }
    }

    /// The int8 form conv `name` is written in, or `None` for fp32 (recorded in
    /// [`Emitter::layers_fp32`] when there is an int8 plan). A conv the plan quantizes without
    /// a calibrated form is an error.
    pub fn int8_form(&mut self, name: &str) -> Result<Option<&'a QuantConv>> {
        let Some(plan) = self.int8 else {
            return Ok(None);
        };
        if !plan.int8.contains(name) {
            self.layers_fp32.push(name.to_string());
            return Ok(None);
        }
        plan.quant.get(name).map(Some).ok_or_else(|| {
            anyhow!("conv {name}: no calibration range (did the calibration run it?)")
        })
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

/// An encoder graph and what its emitter recorded.
#[derive(Debug, Clone)]
pub struct EncoderGraph {
    pub model: ModelProto,
    /// With an int8 plan: the convs written fp32, in graph order.
    pub layers_fp32: Vec<String>,
    /// The u8 step of the last int8 conv's output.
    pub last_output_scale: Option<f32>,
}

/// A model running `layers` in order on a float input `[1, in_channels, "H", "W"]` named
/// `input_name`, with output `output_name` `[1, out_channels, "h", "w"]`; the convs `int8`
/// names are written int8, every other one fp32.
pub fn encoder_graph(
    layers: &[Layer],
    (in_channels, out_channels): (usize, usize),
    (input_name, output_name): (&str, &str),
    doc: &str,
    int8: Option<Int8Plan>,
) -> Result<EncoderGraph> {
    let mut e = Emitter::new(GraphBuilder::new("encoder"), int8);
    let (in_dims, out_dims) = encoder_dims(in_channels, out_channels);
    let mut x = e.graph.input(input_name, &in_dims)?;
    for (i, layer) in layers.iter().enumerate() {
        x = layer.emit(&mut e, &x, i)?;
    }
    e.graph.output(&x, output_name, &out_dims)?;
    Ok(EncoderGraph {
        model: e.graph.into_model(doc),
        layers_fp32: e.layers_fp32,
        last_output_scale: e.last_output_scale,
    })
}

/// The fp32 model of `layers` (see [`encoder_graph`]).
pub fn layers_model(
    layers: &[Layer],
    in_channels: usize,
    out_channels: usize,
    input_name: &str,
    output_name: &str,
    doc: &str,
) -> Result<ModelProto> {
    Ok(encoder_graph(
        layers,
        (in_channels, out_channels),
        (input_name, output_name),
        doc,
        None,
    )?
    .model)
}
