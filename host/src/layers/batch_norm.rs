//! `BatchNorm2d` in tch, and its folding into the conv before it, which is how every exported
//! graph carries it: `w' = w * gamma / sqrt(var + eps)`,
//! `b' = (b - mean) * gamma / sqrt(var + eps) + beta`.

use anyhow::{bail, Result};
use tch::Tensor;

use super::conv::Conv2d;
use super::Scope;
use crate::onnx::tensor_f32;

/// BatchNorm over channels (NCHW). Running statistics are non-trainable variables; in training
/// mode (`forward(x, true)`) the batch statistics are used and the running ones updated with
/// `momentum` (torch convention: `running = (1 - momentum) * running + momentum * batch`).
#[derive(Debug)]
pub struct BatchNorm2d {
    /// Relative name; tensors are `<name>.weight`, `.bias`, `.running_mean`, `.running_var`.
    pub name: String,
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f64,
    pub momentum: f64,
}

impl BatchNorm2d {
    pub fn new(scope: &Scope, channels: i64, eps: f64, momentum: f64) -> Self {
        let p = scope.path();
        BatchNorm2d {
            name: scope.name().to_string(),
            weight: p.ones("weight", &[channels]),
            bias: p.zeros("bias", &[channels]),
            running_mean: p.zeros_no_train("running_mean", &[channels]),
            running_var: p.ones_no_train("running_var", &[channels]),
            eps,
            momentum,
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.momentum,
            self.eps,
            true,
        )
    }

    pub fn named_parameters(&self, out: &mut Vec<(String, Tensor)>) {
        for (n, t) in [
            ("weight", &self.weight),
            ("bias", &self.bias),
            ("running_mean", &self.running_mean),
            ("running_var", &self.running_var),
        ] {
            out.push((format!("{}.{n}", self.name), t.shallow_clone()));
        }
    }
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
