//! `ConvBnAct`, the one layer that holds a conv: conv, optional BatchNorm, activation. Beside its
//! tch forward are its two ONNX forms and the tch simulation of the second:
//!
//! - fp32 ([`emit_conv`]): `Conv` with the BatchNorm folded in ([`fold_conv_bn`]), then the
//!   activation's nodes;
//! - int8 ([`ConvBnAct::emit_int8`]): `QuantizeLinear(x, s_x, zp_x) -> QLinearConv(.., s_y,
//!   zp_y) -> DequantizeLinear`, then the activation in f32. Weights symmetric per-tensor int8
//!   (`s_w = max|w| / 127`, zero point 0, values in [-127, 127]) after the BatchNorm fold; bias
//!   int32 at scale `s_x * s_w`; input and output u8 from calibrated ranges ([`QuantConv`]);
//! - the int8 simulation ([`ConvBnAct::simulate_int8`]): the same quantized weights, bias and
//!   u8 steps in tch, which the per-layer sensitivity of `export::quant` runs.

use anyhow::Result;
use tch::Tensor;
use tract_onnx::pb::tensor_proto::DataType;

use super::activation::Activation;
use super::batch_norm::{fold_conv_bn, BatchNorm2d, FoldedConv};
use super::conv::Conv2d;
use super::int8::{fake_quant, QParams, Range};
use super::Emitter;
use crate::onnx::GraphBuilder;

/// Conv, then optional BatchNorm, then activation.
#[derive(Debug)]
pub struct ConvBnAct {
    pub conv: Conv2d,
    pub bn: Option<BatchNorm2d>,
    pub act: Activation,
}

impl ConvBnAct {
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.act.forward(self.forward_pre_activation(x, train))
    }

    /// Conv + BatchNorm, before the activation (what int8 calibration observes).
    pub fn forward_pre_activation(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.conv.forward(x, train);
        match &self.bn {
            Some(bn) => bn.forward(&y, train),
            None => y,
        }
    }

    pub fn out_channels(&self) -> i64 {
        self.conv.out_channels()
    }

    pub fn named_parameters(&self, out: &mut Vec<(String, Tensor)>) {
        self.conv.named_parameters(out);
        if let Some(bn) = &self.bn {
            bn.named_parameters(out);
        }
    }

    /// `dense` (k > 1, groups 1), `pointwise` (1x1) or `depthwise` (grouped).
    pub fn kind(&self) -> &'static str {
        if self.conv.groups != 1 {
            "depthwise"
        } else if self.conv.kernel() == [1, 1] {
            "pointwise"
        } else {
            "dense"
        }
    }

    /// Whether the conv is quantized by default (dense and pointwise: `groups == 1`; tract runs
    /// every quantized conv through Im2col, and depthwise kernels quantize badly per tensor).
    pub fn quantized_by_default(&self) -> bool {
        self.conv.groups == 1
    }

    /// The layer's nodes on `x`: int8 when the emitter's plan quantizes this conv, else fp32;
    /// returns the output tensor name.
    pub fn emit(&self, e: &mut Emitter, x: &str) -> Result<String> {
        match e.int8_form(&self.conv.name)? {
            Some(q) => {
                e.last_output_scale = Some(q.y.scale);
                self.emit_int8(&mut e.graph, q, x)
            }
            None => emit_conv(&mut e.graph, &self.conv, self.bn.as_ref(), self.act, x),
        }
    }

    /// The int8 nodes of the layer from its quantized form `q` (see the module docs).
    pub fn emit_int8(&self, g: &mut GraphBuilder, q: &QuantConv, x: &str) -> Result<String> {
        let conv = &self.conv;
        let base = if conv.name.is_empty() {
            "conv"
        } else {
            &conv.name
        };
        let scalar_u8 = |g: &mut GraphBuilder, base: &str, v: u8| {
            g.initializer_raw(base, &[], DataType::Uint8, vec![v])
        };
        let wq: Vec<u8> = q.weight.iter().map(|&v| v as u8).collect();
        let bq: Vec<u8> = q.bias.iter().flat_map(|b| b.to_le_bytes()).collect();

        let x_scale = g.initializer_f32(&format!("{base}.x_scale"), &[], &[q.x.scale])?;
        let x_zp = scalar_u8(g, &format!("{base}.x_zero_point"), q.x.zero_point)?;
        let w_name =
            g.initializer_raw(&format!("{base}.weight_q"), &q.shape, DataType::Int8, wq)?;
        let w_scale_n = g.initializer_f32(&format!("{base}.w_scale"), &[], &[q.w_scale])?;
        let w_zp = g.initializer_raw(
            &format!("{base}.w_zero_point"),
            &[],
            DataType::Int8,
            vec![0],
        )?;
        let y_scale = g.initializer_f32(&format!("{base}.y_scale"), &[], &[q.y.scale])?;
        let y_zp = scalar_u8(g, &format!("{base}.y_zero_point"), q.y.zero_point)?;
        let b_name = g.initializer_raw(
            &format!("{base}.bias_q"),
            &[q.shape[0]],
            DataType::Int32,
            bq,
        )?;

        let xq = g.node(
            "QuantizeLinear",
            &format!("{base}.xq"),
            &[x, &x_scale, &x_zp],
            vec![],
        );
        let yq = g.node(
            "QLinearConv",
            &format!("{base}.yq"),
            &[
                &xq, &x_scale, &x_zp, &w_name, &w_scale_n, &w_zp, &y_scale, &y_zp, &b_name,
            ],
            conv.onnx_attributes(),
        );
        let y = g.node("DequantizeLinear", base, &[&yq, &y_scale, &y_zp], vec![]);
        self.act.emit(g, &y, base)
    }

    /// The layer in simulated int8 from its quantized form `q`: the input quantized to u8, the
    /// int8 weights and int32 bias dequantized, the conv in f32, the output quantized to u8 and
    /// dequantized, then the activation.
    pub fn simulate_int8(&self, q: &QuantConv, x: &Tensor) -> Tensor {
        let dev = x.device();
        let w: Vec<f32> = q.weight.iter().map(|&v| v as f32 * q.w_scale).collect();
        let w = Tensor::from_slice(&w)
            .view(q.shape.as_slice())
            .to_device(dev);
        let b_scale = q.x.scale as f64 * q.w_scale as f64;
        let b: Vec<f32> = q
            .bias
            .iter()
            .map(|&v| (v as f64 * b_scale) as f32)
            .collect();
        let b = Tensor::from_slice(&b).to_device(dev);
        let xq = fake_quant(x, q.x);
        let y = self.conv.forward_with(&xq, &w, Some(&b));
        self.act.forward(fake_quant(&y, q.y))
    }
}

/// The fp32 nodes of `conv` (with `bn` folded in) and `act` on `x`: `Conv`, then the
/// activation; returns the output tensor name. The heads' convs (no BatchNorm) use it too.
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
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let y = g.node("Conv", base, &refs, conv.onnx_attributes());
    act.emit(g, &y, base)
}

/// Calibrated ranges of one conv: its input and its output after the activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvRanges {
    pub input: Range,
    pub output: Range,
}

/// One conv in int8: what the ONNX graph stores and the tch simulation uses.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantConv {
    pub x: QParams,
    pub y: QParams,
    pub w_scale: f32,
    /// OIHW int8 weights (BatchNorm folded).
    pub weight: Vec<i8>,
    pub shape: Vec<i64>,
    /// int32 bias at scale `x.scale * w_scale`.
    pub bias: Vec<i32>,
}

impl QuantConv {
    /// Quantizes conv `l` (BatchNorm folded) with its calibrated ranges `r`.
    pub fn new(l: &ConvBnAct, r: &ConvRanges) -> Result<QuantConv> {
        let x = QParams::from_range(r.input);
        let y = QParams::from_range(l.act.output_range(r.output));
        let FoldedConv {
            weight,
            shape,
            bias,
        } = fold_conv_bn(&l.conv, l.bn.as_ref())?;
        let wmax = weight.iter().fold(0f32, |m, v| m.max(v.abs()));
        let w_scale = if wmax > 0.0 && wmax.is_finite() {
            wmax / 127.0
        } else {
            1.0
        };
        let wq = weight
            .iter()
            .map(|&v| (v / w_scale).round().clamp(-127.0, 127.0) as i8)
            .collect();
        let b_scale = x.scale as f64 * w_scale as f64;
        let bq = bias
            .unwrap_or_else(|| vec![0.0; shape[0] as usize])
            .iter()
            .map(|&b| {
                (b as f64 / b_scale)
                    .round()
                    .clamp(i32::MIN as f64, i32::MAX as f64) as i32
            })
            .collect();
        Ok(QuantConv {
            x,
            y,
            w_scale,
            weight: wq,
            shape,
            bias: bq,
        })
    }
}

/// `Conv` then `Relu` (a head conv without BatchNorm).
pub fn emit_conv_relu(g: &mut GraphBuilder, conv: &Conv2d, x: &str) -> Result<String> {
    emit_conv(g, conv, None, Activation::Relu, x)
}
