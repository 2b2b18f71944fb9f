//! Int8 post-training quantization of the encoder (first slice of the "quantized bundles"
//! issue; edge-runtime.md §0 item 2, §1.3-1.5, §2.1).
//!
//! - Dense and pointwise convs (`groups == 1`) become QOperator nodes:
//!   `QuantizeLinear(x, s_x, zp_x) -> QLinearConv(.., s_y, zp_y) -> DequantizeLinear`, then the
//!   activation in f32. Weights: BatchNorm folded first ([`onnx::fold_conv_bn`]), symmetric
//!   per-tensor int8 (`s_w = max|w| / 127`, zero point 0, values in [-127, 127]); bias int32 at
//!   scale `s_x * s_w`. Activations: u8, asymmetric, from calibrated min-max ranges.
//! - Depthwise (and any grouped) convs stay fp32 (`Conv`): tract runs every quantized conv
//!   through Im2col and depthwise kernels quantize badly per-tensor. Their names are recorded in
//!   the manifest's `quantization.layers_fp32`.
//! - Everything else (Clip/Relu, residual `Add`, pools) stays f32 between the
//!   Dequantize/Quantize pairs.
//!
//! Calibration (method `minmax`): the tch backbone runs on each calibration image (resized and
//! normalised exactly as the edge does, `edge::preprocess::prepare_input`); for each quantized
//! conv the min and max of its input and of its output (conv + folded BatchNorm, before the
//! activation) are accumulated over all images. Ranges are widened to contain 0, then
//! `scale = (max - min) / 255`, `zero_point = round(-min / scale)`. When the activation is
//! ReLU or ReLU6 the output range is first clipped to `[0, max]` / `[0, min(max, 6)]`: the u8
//! output then saturates exactly as the activation would, so the range spends no codes on
//! values the activation discards (the f32 activation node is still emitted, and is then a
//! no-op).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use edge::preprocess::{InputSize, Normalization};
use tch::Tensor;
use tract_onnx::pb::{tensor_proto::DataType, ModelProto};

use super::onnx::{
    self, attr_int, attr_ints, block_name, conv_padding_attrs, emit_activation, fold_conv_bn,
    FoldedConv, GraphBuilder,
};
use crate::backbone::layers::{Activation, ConvBnAct, InvertedResidual, Layer};
use crate::backbone::Backbone;

/// The calibration method recorded in the manifest.
pub const METHOD: &str = "minmax";

/// Min and max seen of one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

impl Range {
    pub const EMPTY: Range = Range {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
    };

    fn update(&mut self, t: &Tensor) {
        let lo = t.min().double_value(&[]) as f32;
        let hi = t.max().double_value(&[]) as f32;
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
    }
}

/// Calibrated ranges of one quantized conv (output: conv + folded BN, before the activation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvRanges {
    pub input: Range,
    pub output: Range,
}

/// u8 asymmetric quantization parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: u8,
}

impl QParams {
    /// `scale = (max - min) / 255`, `zero_point = round(-min / scale)` on the range widened to
    /// contain 0. A degenerate (empty or all-zero) range gets scale 1, zero point 0.
    pub fn from_range(r: Range) -> QParams {
        let min = r.min.min(0.0);
        let max = r.max.max(0.0);
        let scale = (max - min) / 255.0;
        if !(scale.is_finite() && scale > 0.0) {
            return QParams {
                scale: 1.0,
                zero_point: 0,
            };
        }
        let zp = (-min / scale).round().clamp(0.0, 255.0) as u8;
        QParams {
            scale,
            zero_point: zp,
        }
    }
}

/// Whether a conv is quantized (dense and pointwise: `groups == 1`).
pub fn is_quantized(l: &ConvBnAct) -> bool {
    l.conv.groups == 1
}

/// Runs `layers` on `x` exactly as `Layer::forward` does in eval mode, calling `hook(conv,
/// input, output)` for every conv of a `ConvBnAct` (also inside inverted residuals), where
/// `output` is the conv + BatchNorm result before the activation.
pub fn forward_with_conv_hook(
    layers: &[Layer],
    x: &Tensor,
    hook: &mut dyn FnMut(&ConvBnAct, &Tensor, &Tensor),
) -> Tensor {
    fn cba(
        l: &ConvBnAct,
        x: &Tensor,
        hook: &mut dyn FnMut(&ConvBnAct, &Tensor, &Tensor),
    ) -> Tensor {
        let y = l.conv.forward(x, false);
        let y = match &l.bn {
            Some(bn) => bn.forward(&y, false),
            None => y,
        };
        hook(l, x, &y);
        l.act.forward(y)
    }
    let mut h = x.shallow_clone();
    for layer in layers {
        h = match layer {
            Layer::ConvBnAct(l) => cba(l, &h, hook),
            Layer::InvertedResidual(l) => {
                let mut t = match &l.expand {
                    Some(e) => cba(e, &h, hook),
                    None => h.shallow_clone(),
                };
                t = cba(&l.depthwise, &t, hook);
                t = cba(&l.project, &t, hook);
                if l.residual {
                    t + &h
                } else {
                    t
                }
            }
            other => other.forward(&h, false),
        };
    }
    h
}

/// The calibration images of a folder: `*.jpg`, `*.jpeg`, `*.png`, sorted by name.
pub fn calibration_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| {
        anyhow!(
            "--calibration {}: cannot read the folder: {e}",
            dir.display()
        )
    })?;
    let mut out = Vec::new();
    for e in rd {
        let p = e
            .map_err(|e| anyhow!("--calibration {}: {e}", dir.display()))?
            .path();
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if p.is_file() && matches!(ext.as_str(), "jpg" | "jpeg" | "png") {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        bail!(
            "--calibration {}: no .jpg/.jpeg/.png image in the folder",
            dir.display()
        );
    }
    Ok(out)
}

/// An image resized to `size` and normalised with the backbone's statistics, CHW f32.
pub fn prepared_image(backbone: &Backbone, path: &Path, size: InputSize) -> Result<Vec<f32>> {
    let img = edge::data::image_io::load_rgb(path)?;
    let (mean, std) = backbone.normalization();
    Ok(edge::preprocess::prepare_input(
        &img,
        size,
        &Normalization { mean, std },
    ))
}

/// Calibration result: the ranges of every quantized conv (by conv name) and the image count.
#[derive(Debug, Clone)]
pub struct Calibration {
    pub ranges: HashMap<String, ConvRanges>,
    pub images: usize,
}

/// Min-max ranges of each quantized conv of `layers` over `images` (prepared CHW inputs at
/// `size`).
pub fn calibrate(
    backbone: &Backbone,
    layers: &[Layer],
    images: &[Vec<f32>],
    size: InputSize,
) -> Result<Calibration> {
    let mut ranges: HashMap<String, ConvRanges> = HashMap::new();
    let (h, w) = (size.height as i64, size.width as i64);
    for img in images {
        let x = Tensor::from_slice(img)
            .view([1, 3, h, w])
            .to_device(backbone.device());
        let _features = tch::no_grad(|| {
            forward_with_conv_hook(layers, &x, &mut |l, input, output| {
                if !is_quantized(l) {
                    return;
                }
                let r = ranges.entry(l.conv.name.clone()).or_insert(ConvRanges {
                    input: Range::EMPTY,
                    output: Range::EMPTY,
                });
                r.input.update(input);
                r.output.update(output);
            })
        });
    }
    Ok(Calibration {
        ranges,
        images: images.len(),
    })
}

/// The output range a quantized conv uses (see the module doc: clipped to the activation's
/// range for ReLU / ReLU6).
fn output_range(act: Activation, r: Range) -> Range {
    match act {
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

/// Emits graphs with the quantized convs; collects the names of the convs kept fp32.
struct QEmitter<'a> {
    cal: &'a Calibration,
    layers_fp32: Vec<String>,
    /// Scale of the last quantized conv's output (one u8 step there).
    last_output_scale: Option<f32>,
}

impl QEmitter<'_> {
    fn scalar_u8(g: &mut GraphBuilder, base: &str, v: u8) -> Result<String> {
        g.initializer_raw(base, &[], DataType::Uint8, vec![v])
    }

    fn conv_bn_act(&mut self, g: &mut GraphBuilder, l: &ConvBnAct, x: &str) -> Result<String> {
        if !is_quantized(l) {
            self.layers_fp32.push(l.conv.name.clone());
            return onnx::emit_conv_bn_act(g, l, x);
        }
        let conv = &l.conv;
        let base = if conv.name.is_empty() {
            "conv"
        } else {
            &conv.name
        };
        let r = self.cal.ranges.get(&conv.name).ok_or_else(|| {
            anyhow!(
                "conv {}: no calibration range (did the calibration run it?)",
                conv.name
            )
        })?;
        let qx = QParams::from_range(r.input);
        let qy = QParams::from_range(output_range(l.act, r.output));
        let FoldedConv {
            weight,
            shape,
            bias,
        } = fold_conv_bn(conv, l.bn.as_ref())?;
        let wmax = weight.iter().fold(0f32, |m, v| m.max(v.abs()));
        let w_scale = if wmax > 0.0 && wmax.is_finite() {
            wmax / 127.0
        } else {
            1.0
        };
        let wq: Vec<u8> = weight
            .iter()
            .map(|&v| ((v / w_scale).round().clamp(-127.0, 127.0) as i8) as u8)
            .collect();
        let b_scale = qx.scale as f64 * w_scale as f64;
        let bq: Vec<u8> = bias
            .unwrap_or_else(|| vec![0.0; shape[0] as usize])
            .iter()
            .flat_map(|&b| {
                let q = (b as f64 / b_scale)
                    .round()
                    .clamp(i32::MIN as f64, i32::MAX as f64) as i32;
                q.to_le_bytes()
            })
            .collect();

        let x_scale = g.initializer_f32(&format!("{base}.x_scale"), &[], &[qx.scale])?;
        let x_zp = Self::scalar_u8(g, &format!("{base}.x_zero_point"), qx.zero_point)?;
        let w_name = g.initializer_raw(&format!("{base}.weight_q"), &shape, DataType::Int8, wq)?;
        let w_scale_n = g.initializer_f32(&format!("{base}.w_scale"), &[], &[w_scale])?;
        let w_zp = g.initializer_raw(
            &format!("{base}.w_zero_point"),
            &[],
            DataType::Int8,
            vec![0],
        )?;
        let y_scale = g.initializer_f32(&format!("{base}.y_scale"), &[], &[qy.scale])?;
        let y_zp = Self::scalar_u8(g, &format!("{base}.y_zero_point"), qy.zero_point)?;
        let b_name =
            g.initializer_raw(&format!("{base}.bias_q"), &[shape[0]], DataType::Int32, bq)?;

        let xq = g.node(
            "QuantizeLinear",
            &format!("{base}.xq"),
            &[x, &x_scale, &x_zp],
            vec![],
        );
        let mut attrs = vec![
            attr_ints("kernel_shape", &conv.kernel()),
            attr_ints("strides", &conv.stride),
            attr_ints("dilations", &conv.dilation),
            attr_int("group", conv.groups),
        ];
        attrs.extend(conv_padding_attrs(conv));
        let yq = g.node(
            "QLinearConv",
            &format!("{base}.yq"),
            &[
                &xq, &x_scale, &x_zp, &w_name, &w_scale_n, &w_zp, &y_scale, &y_zp, &b_name,
            ],
            attrs,
        );
        let y = g.node("DequantizeLinear", base, &[&yq, &y_scale, &y_zp], vec![]);
        self.last_output_scale = Some(qy.scale);
        emit_activation(g, l.act, &y, base)
    }

    fn inverted_residual(
        &mut self,
        g: &mut GraphBuilder,
        l: &InvertedResidual,
        x: &str,
    ) -> Result<String> {
        let mut h = x.to_string();
        if let Some(e) = &l.expand {
            h = self.conv_bn_act(g, e, &h)?;
        }
        h = self.conv_bn_act(g, &l.depthwise, &h)?;
        h = self.conv_bn_act(g, &l.project, &h)?;
        if l.residual {
            let base = format!("{}.add", block_name(&l.project.conv.name));
            h = g.node("Add", &base, &[&h, x], vec![]);
        }
        Ok(h)
    }

    fn layer(&mut self, g: &mut GraphBuilder, layer: &Layer, x: &str, i: usize) -> Result<String> {
        match layer {
            Layer::ConvBnAct(l) => self.conv_bn_act(g, l, x),
            Layer::InvertedResidual(l) => self.inverted_residual(g, l, x),
            other => onnx::emit_layer(g, other, x, i),
        }
    }
}

/// The int8 model and what the manifest records about it.
#[derive(Debug, Clone)]
pub struct QuantizedModel {
    pub model: ModelProto,
    /// Names of the convs kept fp32 (depthwise / grouped).
    pub layers_fp32: Vec<String>,
    /// Names of the quantized convs.
    pub layers_int8: Vec<String>,
    /// The u8 step of the last quantized conv's output.
    pub last_output_scale: Option<f32>,
}

/// Like [`onnx::layers_model`], with the dense and pointwise convs quantized from `cal`.
pub fn quantized_layers_model(
    layers: &[Layer],
    cal: &Calibration,
    in_channels: usize,
    out_channels: usize,
    input_name: &str,
    output_name: &str,
    doc: &str,
) -> Result<QuantizedModel> {
    let mut g = GraphBuilder::new("encoder");
    let (in_dims, out_dims) = onnx::encoder_dims(in_channels, out_channels);
    let mut e = QEmitter {
        cal,
        layers_fp32: Vec::new(),
        last_output_scale: None,
    };
    let mut x = g.input(input_name, &in_dims)?;
    for (i, layer) in layers.iter().enumerate() {
        x = e.layer(&mut g, layer, &x, i)?;
    }
    g.output(&x, output_name, &out_dims)?;
    let mut layers_int8: Vec<String> = cal.ranges.keys().cloned().collect();
    layers_int8.sort();
    Ok(QuantizedModel {
        model: g.into_model(doc),
        layers_fp32: e.layers_fp32,
        layers_int8,
        last_output_scale: e.last_output_scale,
    })
}

/// Agreement of int8 features with fp32 ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureError {
    pub max_abs_diff: f64,
    /// `||int8 - fp32||_2 / ||fp32||_2`.
    pub relative_l2: f64,
    /// Cosine of the two flattened feature tensors.
    pub cosine: f64,
}

/// Compares `got` (int8) with `want` (fp32); errors on a shape mismatch.
pub fn feature_error(
    want: &(Vec<usize>, Vec<f32>),
    got: &(Vec<usize>, Vec<f32>),
) -> Result<FeatureError> {
    let max_abs_diff = super::max_abs_diff(want, got)?;
    let (mut dd, mut ww, mut gg, mut wg) = (0f64, 0f64, 0f64, 0f64);
    for (a, b) in want.1.iter().zip(&got.1) {
        let (a, b) = (*a as f64, *b as f64);
        dd += (a - b) * (a - b);
        ww += a * a;
        gg += b * b;
        wg += a * b;
    }
    Ok(FeatureError {
        max_abs_diff,
        relative_l2: (dd / ww.max(f64::MIN_POSITIVE)).sqrt(),
        cosine: wg / (ww.sqrt() * gg.sqrt()).max(f64::MIN_POSITIVE),
    })
}

/// What an int8 export measured.
#[derive(Debug, Clone)]
pub struct Int8Report {
    pub quantized: QuantizedModel,
    pub images: usize,
    /// int8 graph in tract vs tch fp32 on the first calibration image at the export size.
    pub error: FeatureError,
}

/// Calibrates on the images of `dir` at `size`, builds the int8 encoder up to `stride`, writes
/// it to `path` (not atomically: the caller writes to a temporary file) and measures it in tract
/// against tch fp32 on the first calibration image.
pub fn export_int8_encoder(
    backbone: &Backbone,
    stride: i64,
    size: InputSize,
    dir: &Path,
    path: &Path,
) -> Result<Int8Report> {
    let files = calibration_images(dir)?;
    let images = files
        .iter()
        .map(|p| prepared_image(backbone, p, size))
        .collect::<Result<Vec<_>>>()?;
    let layers = backbone.layers_to(stride)?;
    let cal = calibrate(backbone, layers, &images, size)?;
    let channels = backbone.feature_channels(stride).ok_or_else(|| {
        anyhow!(
            "backbone {} has no level at stride {stride}",
            backbone.kind()
        )
    })? as usize;
    let doc = format!(
        "{} encoder, int8 (QLinearConv per-tensor, {METHOD} calibration on {} images): \
         normalised RGB image -> stride-{stride} features",
        backbone.kind(),
        cal.images
    );
    let quantized = quantized_layers_model(
        layers,
        &cal,
        3,
        channels,
        super::INPUT_NAME,
        super::OUTPUT_NAME,
        &doc,
    )?;
    std::fs::write(path, prost::Message::encode_to_vec(&quantized.model))
        .map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))?;
    let (h, w) = (size.height, size.width);
    let want = super::tch_features(backbone, stride, &images[0], h, w)?;
    let got = super::tract_run(path, &images[0], &[1, 3, h, w])
        .with_context(|| format!("int8 encoder {} in tract", path.display()))?;
    let error = feature_error(&want, &got)?;
    Ok(Int8Report {
        quantized,
        images: cal.images,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qparams_contain_zero_and_span_the_range() {
        let q = QParams::from_range(Range {
            min: -1.0,
            max: 3.0,
        });
        assert!((q.scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(q.zero_point, 64);
        let q = QParams::from_range(Range { min: 0.5, max: 6.0 });
        assert_eq!(q.zero_point, 0);
        assert!((q.scale - 6.0 / 255.0).abs() < 1e-7);
        let q = QParams::from_range(Range::EMPTY);
        assert_eq!((q.scale, q.zero_point), (1.0, 0));
    }
}
