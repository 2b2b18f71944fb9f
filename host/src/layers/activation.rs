//! Point-wise activations: tch forward, ONNX nodes, and the output range they leave for int8.

use anyhow::Result;
use tch::Tensor;

use super::int8::Range;
use crate::onnx::GraphBuilder;

/// Point-wise activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    /// `min(max(x, 0), 6)` (ONNX: `Clip(0, 6)`).
    Relu6,
}

impl Activation {
    pub fn forward(&self, x: Tensor) -> Tensor {
        match self {
            Activation::None => x,
            Activation::Relu => x.relu(),
            Activation::Relu6 => x.relu6(),
        }
    }

    /// The nodes of the activation on `x` (none for [`Activation::None`]): `Relu`, or ReLU6 as
    /// `Clip(x, 0, 6)` with min and max as initializer inputs; returns the output tensor name.
    pub fn emit(self, g: &mut GraphBuilder, x: &str, base: &str) -> Result<String> {
        Ok(match self {
            Activation::None => x.to_string(),
            Activation::Relu => g.node("Relu", &format!("{base}.relu"), &[x], vec![]),
            Activation::Relu6 => {
                let lo = g.scalar_f32("relu6_min", 0.0)?;
                let hi = g.scalar_f32("relu6_max", 6.0)?;
                g.node("Clip", &format!("{base}.relu6"), &[x, &lo, &hi], vec![])
            }
        })
    }

    /// `r` clipped to what the activation can output (int8: the u8 range of a quantized conv
    /// whose activation follows spends no codes on values the activation discards).
    pub fn output_range(self, r: Range) -> Range {
        match self {
            Activation::None => r,
            Activation::Relu => Range {
                min: 0.0,
                max: r.max.max(0.0),
            },
            Activation::Relu6 => Range {
                min: 0.0,
                max: r.max.clamp(0.0, 6.0),
            },
        }
    }
}
