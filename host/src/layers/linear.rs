//! The fully connected layer (the classifiers' last step), in tch and as ONNX nodes.

use anyhow::Result;
use tch::nn::Init;
use tch::Tensor;

use super::Scope;
use crate::onnx::{attr_float, attr_int, tensor_f32, GraphBuilder};

/// Fully connected layer on `[N, in]` (a 4-D input is flattened from dim 1 first).
/// `weight` is `[out, in]` (ONNX `Gemm` with `transB = 1`).
#[derive(Debug)]
pub struct Linear {
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// torchvision-style init: weight ~ N(0, 0.01), bias 0.
    pub fn new(scope: &Scope, in_features: i64, out_features: i64, bias: bool) -> Self {
        let p = scope.path();
        Linear {
            name: scope.name().to_string(),
            weight: p.var(
                "weight",
                &[out_features, in_features],
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.01,
                },
            ),
            bias: bias.then(|| p.zeros("bias", &[out_features])),
        }
    }

    pub fn forward(&self, x: &Tensor, _train: bool) -> Tensor {
        let x = if x.dim() > 2 {
            x.flatten(1, -1)
        } else {
            x.shallow_clone()
        };
        x.linear(&self.weight, self.bias.as_ref())
    }

    /// `Flatten(axis 1)` then `Gemm(transB = 1)`; returns the output tensor name.
    pub fn emit(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let base = if self.name.is_empty() {
            "linear"
        } else {
            &self.name
        };
        let flat = g.node(
            "Flatten",
            &format!("{base}.flatten"),
            &[x],
            vec![attr_int("axis", 1)],
        );
        let shape = self.weight.size();
        let w = g.initializer_f32(
            &format!("{base}.weight"),
            &shape,
            &tensor_f32(&self.weight)?,
        )?;
        let mut inputs = vec![flat, w];
        if let Some(b) = &self.bias {
            inputs.push(g.initializer_f32(
                &format!("{base}.bias"),
                &[shape[0]],
                &tensor_f32(b)?,
            )?);
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

    /// Weights plus bias values.
    pub fn parameter_count(&self) -> i64 {
        super::weight_and_bias_count(&self.weight, self.bias.as_ref())
    }

    pub fn named_parameters(&self, out: &mut Vec<(String, Tensor)>) {
        super::push_weight_and_bias(&self.name, &self.weight, self.bias.as_ref(), out);
    }
}
