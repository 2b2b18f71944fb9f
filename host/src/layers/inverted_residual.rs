//! The MobileNetV2 / EfficientNet inverted residual: tch forward and ONNX nodes of one block
//! (each of its convs writes its own nodes, fp32 or int8, through [`ConvBnAct::emit`]).

use anyhow::Result;
use tch::Tensor;

use super::conv_bn_act::ConvBnAct;
use super::Emitter;

/// MobileNetV2 / EfficientNet inverted residual (MBConv without squeeze-excitation):
/// optional 1x1 expansion, depthwise conv, linear 1x1 projection, identity shortcut when
/// `residual` (stride 1 and equal channel counts).
#[derive(Debug)]
pub struct InvertedResidual {
    pub expand: Option<ConvBnAct>,
    pub depthwise: ConvBnAct,
    pub project: ConvBnAct,
    pub residual: bool,
}

impl InvertedResidual {
    /// The block (as [`super::Layer::forward`] runs it) with each of its convs computed by `conv(layer, input)` (which returns the
    /// output after the activation): expansion, depthwise, projection, then the shortcut.
    pub fn forward_convs(
        &self,
        x: &Tensor,
        conv: &mut dyn FnMut(&ConvBnAct, &Tensor) -> Tensor,
    ) -> Tensor {
        let mut h = match &self.expand {
            Some(e) => conv(e, x),
            None => x.shallow_clone(),
        };
        h = conv(&self.depthwise, &h);
        h = conv(&self.project, &h);
        if self.residual {
            h + x
        } else {
            h
        }
    }

    /// Expansion, depthwise, projection and the residual `Add`; returns the output tensor name.
    pub fn emit(&self, e: &mut Emitter, x: &str) -> Result<String> {
        let mut h = x.to_string();
        if let Some(c) = &self.expand {
            h = c.emit(e, &h)?;
        }
        h = self.depthwise.emit(e, &h)?;
        h = self.project.emit(e, &h)?;
        if self.residual {
            let base = format!("{}.add", block_name(&self.project.conv.name));
            h = e.graph.node("Add", &base, &[&h, x], vec![]);
        }
        Ok(h)
    }

    /// The block's convs in graph order.
    pub fn convs(&self) -> impl Iterator<Item = &ConvBnAct> {
        self.expand.iter().chain([&self.depthwise, &self.project])
    }

    pub fn out_channels(&self) -> i64 {
        self.project.out_channels()
    }

    pub fn named_parameters(&self, out: &mut Vec<(String, Tensor)>) {
        for c in self.convs() {
            c.named_parameters(out);
        }
    }
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
