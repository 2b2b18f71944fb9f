//! Int8 post-training quantization of the encoder (the "quantized bundles" issue;
//! edge-runtime.md §0 item 2, §1.3-1.5, §2.1).
//!
//! - Dense and pointwise convs (`groups == 1`) become QOperator nodes:
//!   `QuantizeLinear(x, s_x, zp_x) -> QLinearConv(.., s_y, zp_y) -> DequantizeLinear`, then the
//!   activation in f32 (written, with its tch simulation, by
//!   [`crate::layers::conv_bn_act`]). Weights: BatchNorm folded first, symmetric per-tensor int8
//!   (`s_w = max|w| / 127`, zero point 0, values in [-127, 127]); bias int32 at scale
//!   `s_x * s_w`. Activations: u8, asymmetric, per tensor, from calibrated ranges.
//! - Depthwise (and any grouped) convs stay fp32 (`Conv`): tract runs every quantized conv
//!   through Im2col and depthwise kernels quantize badly per-tensor (measured per layer, see
//!   [`sensitivity`]). Dense/pointwise convs named in [`Int8Options::fp32_layers`], and the
//!   [`Int8Options::fp32_auto`] most sensitive ones, stay fp32 too. The manifest's
//!   `quantization.layers` lists every conv with its precision, the reason when fp32, and its
//!   measured sensitivity.
//! - Everything else (Clip/Relu, residual `Add`, pools) stays f32 between the
//!   Dequantize/Quantize pairs.
//!
//! Calibration: the tch backbone runs on each calibration image (resized and normalised
//! exactly as the edge does, `fss_core::preprocess::prepare_input`). For every conv two tensors
//! are observed: its input and its output after the activation (conv + folded BatchNorm +
//! ReLU/ReLU6: the u8 output of a QLinearConv whose range starts at 0 saturates exactly as the
//! activation would, so the range spends no codes on values the activation discards; the f32
//! activation node is still emitted and is then a no-op). Pass 1 takes min and max; for
//! `percentile` and `mse` pass 2 fills a [`HIST_BINS`]-bin histogram of each tensor over that
//! range (exact zeros counted apart: ReLU makes many, and 0 is always exactly representable).
//! The range of each tensor is then (see [`CalibrationMethod`]):
//! - `minmax`: `[min, max]`;
//! - `percentile P`: the `(100 - P)`-th and `P`-th percentiles (bin edges, outward);
//! - `mse`: `[f * min, f * max]` with the `f` in {0.05, 0.06, ..., 1.00} that minimises the
//!   mean squared u8 quantize-dequantize error over the histogram.
//!
//! Every range is widened to contain 0, then `scale = (max - min) / 255`,
//! `zero_point = round(-min / scale)`.
//!
//! Per-layer sensitivity ([`sensitivity`]) simulates the int8 arithmetic of one conv in tch
//! (the same quantized weights, int32 bias and u8 scales as the ONNX graph: [`QuantConv`]) with
//! every other layer fp32, and reports the relative L2 error of the encoder's output features
//! against fp32 on calibration images.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use fss_core::preprocess::{InputSize, Normalization};
use tch::{Kind, Tensor};
use tract_onnx::pb::ModelProto;

use crate::backbone::Backbone;
pub use crate::layers::int8::{QParams, Range};
use crate::layers::{self, encoder_graph, ConvBnAct, Int8Plan, Layer};
pub use crate::layers::{ConvRanges, QuantConv};

/// Bins of the calibration histograms.
pub const HIST_BINS: usize = 2048;
/// The percentile `--calibration-method percentile` uses unless told otherwise.
pub const DEFAULT_PERCENTILE: f64 = 99.99;
/// The calibration method of `host export --int8` unless told otherwise (docs/int8.md, "int8
/// bundles": on the EfficientNet-Lite0 PANet it gave the best DAVIS J and feature error of the
/// three).
pub const DEFAULT_METHOD: CalibrationMethod = CalibrationMethod::Percentile(DEFAULT_PERCENTILE);
/// How many calibration images the per-layer sensitivity is measured on (evenly spaced).
pub const SENSITIVITY_IMAGES: usize = 8;
/// Sub-points per histogram bin at which the MSE search evaluates the quantization error.
const MSE_SUBPOINTS: usize = 4;

/// How the range of an activation tensor is chosen from its calibration statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CalibrationMethod {
    /// The min and max seen.
    MinMax,
    /// The `(100 - p)`-th and `p`-th percentiles (`p` in (50, 100]).
    Percentile(f64),
    /// The clipping of `[min, max]` that minimises the quantization MSE.
    Mse,
}

impl CalibrationMethod {
    /// `minmax`, `percentile` or `mse`.
    pub fn name(&self) -> &'static str {
        match self {
            CalibrationMethod::MinMax => "minmax",
            CalibrationMethod::Percentile(_) => "percentile",
            CalibrationMethod::Mse => "mse",
        }
    }

    pub fn percentile(&self) -> Option<f64> {
        match self {
            CalibrationMethod::Percentile(p) => Some(*p),
            _ => None,
        }
    }

    /// A percentile method; errors unless `50 < p <= 100`.
    pub fn percentile_checked(p: f64) -> Result<Self> {
        if !(p > 50.0 && p <= 100.0) {
            bail!("--percentile {p}: expected a value in (50, 100], e.g. 99.99");
        }
        Ok(CalibrationMethod::Percentile(p))
    }

    fn needs_histograms(&self) -> bool {
        !matches!(self, CalibrationMethod::MinMax)
    }
}

impl std::fmt::Display for CalibrationMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalibrationMethod::Percentile(p) => write!(f, "percentile {p}"),
            other => f.write_str(other.name()),
        }
    }
}

/// A histogram of a tensor's values over `[lo, hi]` in equal bins; exact zeros apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub lo: f32,
    pub hi: f32,
    /// Counts per bin, exact zeros excluded.
    pub counts: Vec<f64>,
    /// How many values were exactly 0.
    pub zeros: f64,
}

impl Histogram {
    /// An empty histogram of `bins` bins over `r`.
    pub fn new(r: Range, bins: usize) -> Histogram {
        Histogram {
            lo: r.min,
            hi: r.max,
            counts: vec![0.0; bins.max(1)],
            zeros: 0.0,
        }
    }

    /// The histogram of `values` over their own min-max range.
    pub fn of_values(values: &[f32], bins: usize) -> Histogram {
        let mut r = Range::EMPTY;
        for &v in values {
            r.min = r.min.min(v);
            r.max = r.max.max(v);
        }
        let mut h = Histogram::new(r, bins);
        h.add_values(values);
        h
    }

    fn width(&self) -> f32 {
        (self.hi - self.lo) / self.counts.len() as f32
    }

    fn bin_of(&self, v: f32) -> usize {
        let n = self.counts.len();
        let w = self.width();
        if w.is_nan() || w <= 0.0 {
            return 0;
        }
        (((v - self.lo) / w).floor().max(0.0) as usize).min(n - 1)
    }

    /// Adds values (clamped into the outer bins).
    pub fn add_values(&mut self, values: &[f32]) {
        for &v in values {
            if v == 0.0 {
                self.zeros += 1.0;
            } else if v.is_finite() {
                let b = self.bin_of(v);
                self.counts[b] += 1.0;
            }
        }
    }

    /// Adds a tensor's values (computed in tch: bin indices, then `bincount`).
    fn add_tensor(&mut self, t: &Tensor) {
        let n = self.counts.len() as i64;
        let flat = t.flatten(0, -1).to_kind(Kind::Float);
        let zero = flat.eq(0.0);
        self.zeros += zero.sum(Kind::Double).double_value(&[]);
        let w = self.width() as f64;
        let idx = if w > 0.0 {
            ((&flat - self.lo as f64) / w)
                .floor()
                .clamp(0.0, (n - 1) as f64)
                .to_kind(Kind::Int64)
        } else {
            flat.zeros_like().to_kind(Kind::Int64)
        };
        let weights = zero.logical_not().to_kind(Kind::Double);
        let counts = idx.bincount(Some(&weights), n).to_kind(Kind::Double);
        let counts = Vec::<f64>::try_from(&counts).unwrap_or_default();
        for (c, v) in self.counts.iter_mut().zip(counts) {
            *c += v;
        }
    }

    /// Number of values seen.
    pub fn total(&self) -> f64 {
        self.counts.iter().sum::<f64>() + self.zeros
    }

    /// The full range the histogram covers.
    pub fn range(&self) -> Range {
        Range {
            min: self.lo,
            max: self.hi,
        }
    }

    /// Counts per bin with the exact zeros put back into the bin that holds 0 (when 0 is in
    /// the range).
    fn counts_with_zeros(&self) -> Vec<f64> {
        let mut c = self.counts.clone();
        if self.zeros > 0.0 && self.lo <= 0.0 && self.hi >= 0.0 {
            let b = self.bin_of(0.0);
            c[b] += self.zeros;
        }
        c
    }

    /// The `(100 - p)`-th and `p`-th percentiles, rounded outward to bin edges; inside
    /// [`Histogram::range`].
    pub fn percentile_range(&self, p: f64) -> Range {
        let c = self.counts_with_zeros();
        let total: f64 = c.iter().sum();
        if total <= 0.0 || self.hi.is_nan() || self.lo.is_nan() || self.hi <= self.lo || p >= 100.0
        {
            return self.range();
        }
        let tail = total * (1.0 - p / 100.0);
        let w = self.width();
        let mut cum = 0.0;
        let mut lo_bin = 0;
        for (i, &n) in c.iter().enumerate() {
            cum += n;
            if cum > tail {
                lo_bin = i;
                break;
            }
        }
        let mut cum = 0.0;
        let mut hi_bin = c.len() - 1;
        for (i, &n) in c.iter().enumerate().rev() {
            cum += n;
            if cum > tail {
                hi_bin = i;
                break;
            }
        }
        Range {
            min: (self.lo + lo_bin as f32 * w).max(self.lo),
            max: (self.lo + (hi_bin + 1) as f32 * w).min(self.hi),
        }
    }

    /// Mean squared error of u8 quantize-dequantize with the parameters of range `r`
    /// ([`QParams::from_range`]) over the histogram (each bin's count spread over
    /// [`MSE_SUBPOINTS`] points; exact zeros add no error).
    pub fn quantization_mse(&self, r: Range) -> f64 {
        let q = QParams::from_range(r);
        let (s, zp) = (q.scale as f64, q.zero_point as f64);
        let w = self.width() as f64;
        let mut err = 0.0;
        for (i, &n) in self.counts.iter().enumerate() {
            if n == 0.0 {
                continue;
            }
            for j in 0..MSE_SUBPOINTS {
                let v = self.lo as f64 + (i as f64 + (j as f64 + 0.5) / MSE_SUBPOINTS as f64) * w;
                let code = ((v / s).round_ties_even() + zp).clamp(0.0, 255.0);
                let d = v - (code - zp) * s;
                err += n / MSE_SUBPOINTS as f64 * d * d;
            }
        }
        err / self.total().max(1.0)
    }

    /// `[f * min, f * max]` (the range widened to contain 0) for the `f` in
    /// {0.05, 0.06, ..., 1.00} with the smallest [`Histogram::quantization_mse`]; ties go to
    /// the wider range.
    pub fn mse_range(&self) -> Range {
        let (lo, hi) = (self.lo.min(0.0), self.hi.max(0.0));
        let mut best = (f64::INFINITY, self.range());
        for k in (5..=100).rev() {
            let f = k as f32 / 100.0;
            let r = Range {
                min: lo * f,
                max: hi * f,
            };
            let e = self.quantization_mse(r);
            if e < best.0 {
                best = (e, r);
            }
        }
        best.1
    }
}

/// Runs `layers` on `x` exactly as `Layer::forward` does in eval mode, calling `hook(conv,
/// input, output)` for every conv of a `ConvBnAct`, where `output` is the conv + BatchNorm
/// result before the activation.
pub fn forward_with_conv_hook(
    layers: &[Layer],
    x: &Tensor,
    hook: &mut dyn FnMut(&ConvBnAct, &Tensor, &Tensor),
) -> Tensor {
    layers::forward_convs(layers, x, &mut |l, x| {
        let y = l.forward_pre_activation(x, false);
        hook(l, x, &y);
        l.act.forward(y)
    })
}

/// The names of every conv in `layers`, in graph order, with their kind
/// ([`ConvBnAct::kind`]).
pub fn conv_names(layers: &[Layer]) -> Vec<(String, &'static str)> {
    layers::convs(layers)
        .map(|l| (l.conv.name.clone(), l.kind()))
        .collect()
}

/// The calibration images of a folder: `*.jpg`, `*.jpeg`, `*.png`, sorted by name.
pub fn calibration_images(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        bail!("--calibration {}: no such folder", dir.display());
    }
    if !dir.is_dir() {
        bail!("--calibration {}: not a folder", dir.display());
    }
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
    let img = fss_core::image_io::load_rgb(path)?;
    let (mean, std) = backbone.normalization();
    Ok(fss_core::preprocess::prepare_input(
        &img,
        size,
        &Normalization { mean, std },
    ))
}

/// The statistics of one observed tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorStats {
    pub minmax: Range,
    /// Filled in pass 2 (methods other than min-max).
    pub histogram: Option<Histogram>,
}

impl TensorStats {
    fn range(&self, method: CalibrationMethod) -> Range {
        match (method, &self.histogram) {
            (CalibrationMethod::MinMax, _) | (_, None) => self.minmax,
            (CalibrationMethod::Percentile(p), Some(h)) => h.percentile_range(p),
            (CalibrationMethod::Mse, Some(h)) => h.mse_range(),
        }
    }
}

/// Statistics of a conv's input and of its output after the activation.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvStats {
    pub input: TensorStats,
    pub output: TensorStats,
}

/// Calibration result: the statistics of every conv (by name), the method and the image count.
#[derive(Debug, Clone)]
pub struct Calibration {
    pub method: CalibrationMethod,
    pub stats: BTreeMap<String, ConvStats>,
    pub images: usize,
}

impl Calibration {
    /// The ranges of every conv under the calibration's method.
    pub fn ranges(&self) -> BTreeMap<String, ConvRanges> {
        self.stats
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    ConvRanges {
                        input: s.input.range(self.method),
                        output: s.output.range(self.method),
                    },
                )
            })
            .collect()
    }
}

fn image_tensor(backbone: &Backbone, img: &[f32], size: InputSize) -> Tensor {
    Tensor::from_slice(img)
        .view([1, 3, size.height as i64, size.width as i64])
        .to_device(backbone.device())
}

/// Statistics of every conv of `layers` (input, and output after the activation) over
/// `images` (prepared CHW inputs at `size`): min-max, and histograms when `method` needs them
/// (a second pass).
pub fn calibrate(
    backbone: &Backbone,
    layers: &[Layer],
    images: &[Vec<f32>],
    size: InputSize,
    method: CalibrationMethod,
) -> Result<Calibration> {
    if images.is_empty() {
        bail!("calibration needs at least one image");
    }
    let mut stats: BTreeMap<String, ConvStats> = BTreeMap::new();
    for img in images {
        let x = image_tensor(backbone, img, size);
        let _features = tch::no_grad(|| {
            layers::forward_convs(layers, &x, &mut |l, input| {
                let out = l.forward(input, false);
                let s = stats.entry(l.conv.name.clone()).or_insert(ConvStats {
                    input: TensorStats {
                        minmax: Range::EMPTY,
                        histogram: None,
                    },
                    output: TensorStats {
                        minmax: Range::EMPTY,
                        histogram: None,
                    },
                });
                s.input.minmax.update(input);
                s.output.minmax.update(&out);
                out
            })
        });
    }
    if method.needs_histograms() {
        for s in stats.values_mut() {
            s.input.histogram = Some(Histogram::new(s.input.minmax, HIST_BINS));
            s.output.histogram = Some(Histogram::new(s.output.minmax, HIST_BINS));
        }
        for img in images {
            let x = image_tensor(backbone, img, size);
            let _features = tch::no_grad(|| {
                layers::forward_convs(layers, &x, &mut |l, input| {
                    let out = l.forward(input, false);
                    if let Some(s) = stats.get_mut(&l.conv.name) {
                        for (t, v) in [(&mut s.input, input), (&mut s.output, &out)] {
                            if let Some(h) = t.histogram.as_mut() {
                                h.add_tensor(v);
                            }
                        }
                    }
                    out
                })
            });
        }
    }
    Ok(Calibration {
        method,
        stats,
        images: images.len(),
    })
}

/// Quantizes every conv of `layers` that has calibrated ranges.
pub fn quantize_convs(
    layers: &[Layer],
    ranges: &BTreeMap<String, ConvRanges>,
) -> Result<BTreeMap<String, QuantConv>> {
    let mut out = BTreeMap::new();
    for l in layers::convs(layers) {
        if let Some(r) = ranges.get(&l.conv.name) {
            out.insert(l.conv.name.clone(), QuantConv::new(l, r)?);
        }
    }
    Ok(out)
}

/// The encoder output with the convs named in `int8` simulated in int8 (everything else fp32).
pub fn simulated_forward(
    layers: &[Layer],
    x: &Tensor,
    quant: &BTreeMap<String, QuantConv>,
    int8: &HashSet<String>,
) -> Tensor {
    tch::no_grad(|| {
        layers::forward_convs(layers, x, &mut |l, input| match quant
            .get(&l.conv.name)
            .filter(|_| int8.contains(&l.conv.name))
        {
            Some(q) => l.simulate_int8(q, input),
            None => l.forward(input, false),
        })
    })
}

/// Squared L2 norms of `a - b` and of `b`.
fn sq_err(a: &Tensor, b: &Tensor) -> (f64, f64) {
    let d = (a - b).square().sum(Kind::Double).double_value(&[]);
    let n = b.square().sum(Kind::Double).double_value(&[]);
    (d, n)
}

/// How much quantizing one conv alone costs.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSensitivity {
    pub name: String,
    pub kind: &'static str,
    /// Relative L2 error of the encoder output (`sqrt(sum ||q - f||^2 / sum ||f||^2)` over the
    /// images) with only this conv in simulated int8.
    pub rel_l2: f64,
}

/// Per-layer sensitivity: for every conv of `quant`, the encoder output error with only that
/// conv in simulated int8, over `images`; in graph order.
pub fn sensitivity(
    backbone: &Backbone,
    layers: &[Layer],
    images: &[Vec<f32>],
    size: InputSize,
    quant: &BTreeMap<String, QuantConv>,
) -> Vec<LayerSensitivity> {
    let xs: Vec<Tensor> = images
        .iter()
        .map(|i| image_tensor(backbone, i, size))
        .collect();
    let none = HashSet::new();
    let refs: Vec<Tensor> = xs
        .iter()
        .map(|x| simulated_forward(layers, x, quant, &none))
        .collect();
    conv_names(layers)
        .into_iter()
        .filter(|(n, _)| quant.contains_key(n))
        .map(|(name, kind)| {
            let one = HashSet::from([name.clone()]);
            let (mut d, mut n) = (0.0, 0.0);
            for (x, r) in xs.iter().zip(&refs) {
                let (dd, nn) = sq_err(&simulated_forward(layers, x, quant, &one), r);
                d += dd;
                n += nn;
            }
            LayerSensitivity {
                name,
                kind,
                rel_l2: (d / n.max(f64::MIN_POSITIVE)).sqrt(),
            }
        })
        .collect()
}

/// Relative L2 error of the encoder output with the convs of `int8` simulated in int8, over
/// `images`.
pub fn simulated_error(
    backbone: &Backbone,
    layers: &[Layer],
    images: &[Vec<f32>],
    size: InputSize,
    quant: &BTreeMap<String, QuantConv>,
    int8: &HashSet<String>,
) -> f64 {
    let none = HashSet::new();
    let (mut d, mut n) = (0.0, 0.0);
    for img in images {
        let x = image_tensor(backbone, img, size);
        let r = simulated_forward(layers, &x, quant, &none);
        let (dd, nn) = sq_err(&simulated_forward(layers, &x, quant, int8), &r);
        d += dd;
        n += nn;
    }
    (d / n.max(f64::MIN_POSITIVE)).sqrt()
}

/// The int8 model and what the manifest records about it.
#[derive(Debug, Clone)]
pub struct QuantizedModel {
    pub model: ModelProto,
    /// Names of the convs kept fp32, in graph order.
    pub layers_fp32: Vec<String>,
    /// Names of the quantized convs, sorted.
    pub layers_int8: Vec<String>,
    /// The u8 step of the last quantized conv's output.
    pub last_output_scale: Option<f32>,
}

/// Like [`crate::layers::layers_model`], with the convs named in `int8` quantized (QLinearConv) from
/// `quant`.
#[allow(clippy::too_many_arguments)]
pub fn quantized_layers_model(
    layers: &[Layer],
    quant: &BTreeMap<String, QuantConv>,
    int8: &HashSet<String>,
    in_channels: usize,
    out_channels: usize,
    input_name: &str,
    output_name: &str,
    doc: &str,
) -> Result<QuantizedModel> {
    let e = encoder_graph(
        layers,
        (in_channels, out_channels),
        (input_name, output_name),
        doc,
        Some(Int8Plan { quant, int8 }),
    )?;
    let mut layers_int8: Vec<String> = int8.iter().cloned().collect();
    layers_int8.sort();
    Ok(QuantizedModel {
        model: e.model,
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

/// What `host export --int8` was asked for.
#[derive(Debug, Clone)]
pub struct Int8Options {
    /// Folder of calibration images.
    pub calibration: PathBuf,
    pub method: CalibrationMethod,
    /// Dense/pointwise convs to keep fp32 (names as in `quantization.layers`).
    pub fp32_layers: Vec<String>,
    /// Also keep the `fp32_auto` dense/pointwise convs with the largest sensitivity fp32.
    pub fp32_auto: usize,
}

impl Int8Options {
    pub fn new(calibration: PathBuf) -> Self {
        Int8Options {
            calibration,
            method: DEFAULT_METHOD,
            fp32_layers: Vec::new(),
            fp32_auto: 0,
        }
    }
}

/// One conv of the int8 encoder as the manifest records it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerChoice {
    pub name: String,
    pub kind: &'static str,
    /// `int8` or `fp32`.
    pub precision: &'static str,
    /// Why a conv is fp32: `depthwise`, `--fp32-layers`, `--fp32-auto`.
    pub reason: Option<&'static str>,
    /// [`LayerSensitivity::rel_l2`].
    pub rel_l2_alone: f64,
}

/// Which convs are int8: dense/pointwise ones, minus `fp32_layers`, minus the `fp32_auto`
/// most sensitive. Errors on a name that is no conv of the encoder.
pub fn choose_layers(
    sens: &[LayerSensitivity],
    fp32_layers: &[String],
    fp32_auto: usize,
) -> Result<Vec<LayerChoice>> {
    for n in fp32_layers {
        if !sens.iter().any(|s| &s.name == n) {
            let quantizable: Vec<&str> = sens
                .iter()
                .filter(|s| s.kind != "depthwise")
                .map(|s| s.name.as_str())
                .collect();
            bail!(
                "--fp32-layers {n}: no such conv in the encoder (dense/pointwise convs: {})",
                quantizable.join(", ")
            );
        }
    }
    let mut ranked: Vec<&LayerSensitivity> = sens
        .iter()
        .filter(|s| s.kind != "depthwise" && !fp32_layers.contains(&s.name))
        .collect();
    ranked.sort_by(|a, b| b.rel_l2.total_cmp(&a.rel_l2));
    let auto: HashSet<&str> = ranked
        .iter()
        .take(fp32_auto)
        .map(|s| s.name.as_str())
        .collect();
    Ok(sens
        .iter()
        .map(|s| {
            let reason = if s.kind == "depthwise" {
                Some("depthwise")
            } else if fp32_layers.contains(&s.name) {
                Some("--fp32-layers")
            } else if auto.contains(s.name.as_str()) {
                Some("--fp32-auto")
            } else {
                None
            };
            LayerChoice {
                name: s.name.clone(),
                kind: s.kind,
                precision: if reason.is_some() { "fp32" } else { "int8" },
                reason,
                rel_l2_alone: s.rel_l2,
            }
        })
        .collect())
}

/// What an int8 export measured.
#[derive(Debug, Clone)]
pub struct Int8Report {
    pub quantized: QuantizedModel,
    pub method: CalibrationMethod,
    pub images: usize,
    /// Every conv in graph order, with its precision and sensitivity.
    pub layers: Vec<LayerChoice>,
    /// Images the sensitivity was measured on.
    pub sensitivity_images: usize,
    /// Simulated (tch) relative L2 error of the final mix on those images.
    pub simulated_rel_l2: f64,
    /// int8 graph in tract vs tch fp32 on the first calibration image at the export size.
    pub error: FeatureError,
}

/// Evenly spaced images for the sensitivity measurement (at most [`SENSITIVITY_IMAGES`]).
fn sensitivity_subset(images: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let step = images.len().div_ceil(SENSITIVITY_IMAGES).max(1);
    images.iter().step_by(step).cloned().collect()
}

/// Calibrates on the images of `opts.calibration` at `size`, measures every conv's
/// sensitivity, builds the int8 encoder up to `stride` with the chosen mix, writes it to
/// `path` (not atomically: the caller writes to a temporary file) and measures it in tract
/// against tch fp32 on the first calibration image.
pub fn export_int8_encoder(
    backbone: &Backbone,
    stride: i64,
    size: InputSize,
    opts: &Int8Options,
    path: &Path,
) -> Result<Int8Report> {
    let files = calibration_images(&opts.calibration)?;
    let images = files
        .iter()
        .map(|p| prepared_image(backbone, p, size).map_err(|e| anyhow!("--calibration: {e:#}")))
        .collect::<Result<Vec<_>>>()?;
    let layers = backbone.layers_to(stride)?;
    let cal = calibrate(backbone, layers, &images, size, opts.method)?;
    let quant = quantize_convs(layers, &cal.ranges())?;
    let subset = sensitivity_subset(&images);
    let sens = sensitivity(backbone, layers, &subset, size, &quant);
    let choice = choose_layers(&sens, &opts.fp32_layers, opts.fp32_auto)?;
    let int8: HashSet<String> = choice
        .iter()
        .filter(|c| c.precision == "int8")
        .map(|c| c.name.clone())
        .collect();
    let simulated_rel_l2 = simulated_error(backbone, layers, &subset, size, &quant, &int8);
    let channels = backbone.feature_channels(stride).ok_or_else(|| {
        anyhow!(
            "backbone {} has no level at stride {stride}",
            backbone.kind()
        )
    })? as usize;
    let doc = format!(
        "{} encoder, int8 (QLinearConv per-tensor, {} calibration on {} images, {} of {} convs \
         int8): normalised RGB image -> stride-{stride} features",
        backbone.kind(),
        opts.method,
        cal.images,
        int8.len(),
        choice.len()
    );
    let quantized = quantized_layers_model(
        layers,
        &quant,
        &int8,
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
        method: opts.method,
        images: cal.images,
        layers: choice,
        sensitivity_images: subset.len(),
        simulated_rel_l2,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20,000 values in a bell shape on [-1, 1] (sum of uniforms), 20 outliers up to 40 and
    /// down to -15, and 5,000 exact zeros (a ReLU's).
    fn long_tailed() -> Vec<f32> {
        let mut v = Vec::new();
        let mut s = 12345u64;
        let mut u = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        for _ in 0..20_000 {
            v.push(u() + u() - 1.0);
        }
        for i in 0..20 {
            v.push(if i % 2 == 0 {
                40.0 - i as f32
            } else {
                -15.0 + i as f32 * 0.1
            });
        }
        v.extend(std::iter::repeat_n(0.0, 5_000));
        v
    }

    #[test]
    fn histogram_counts_every_value_and_zeros_apart() {
        let v = long_tailed();
        let h = Histogram::of_values(&v, HIST_BINS);
        assert_eq!(h.total(), v.len() as f64);
        assert_eq!(h.zeros, 5_000.0);
        assert_eq!((h.lo, h.hi), (-15.0f32 + 0.1f32, 40.0));
    }

    #[test]
    fn percentile_range_lies_inside_minmax_and_drops_the_outliers() {
        let h = Histogram::of_values(&long_tailed(), HIST_BINS);
        let full = h.range();
        assert_eq!(h.percentile_range(100.0), full);
        let r = h.percentile_range(99.9);
        assert!(r.min >= full.min && r.max <= full.max, "{r:?} vs {full:?}");
        // 20 outliers are 0.08% of the values: the 99.9th percentile is inside the bell.
        assert!(
            r.max <= 1.0 + h.width() && r.min >= -1.0 - h.width(),
            "{r:?}"
        );
        assert!(r.max > 0.8 && r.min < -0.8, "{r:?}");
        // A lower percentile is never wider.
        let r2 = h.percentile_range(99.0);
        assert!(r2.max <= r.max && r2.min >= r.min, "{r2:?} vs {r:?}");
    }

    #[test]
    fn mse_range_clips_no_wider_than_max_and_beats_minmax() {
        let h = Histogram::of_values(&long_tailed(), HIST_BINS);
        let full = h.range();
        let r = h.mse_range();
        assert!(r.min >= full.min && r.max <= full.max, "{r:?} vs {full:?}");
        assert!(r.max < full.max, "the outliers should be clipped: {r:?}");
        assert!(h.quantization_mse(r) < h.quantization_mse(full));
        // Without outliers (a uniform spread) clipping only adds error: (nearly) the full range.
        let flat: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0 * 6.0).collect();
        let hf = Histogram::of_values(&flat, HIST_BINS);
        let rf = hf.mse_range();
        assert!(rf.max >= 0.97 * 6.0 && rf.max <= 6.0, "{rf:?}");
    }

    #[test]
    fn mse_of_a_range_grows_when_it_clips_the_data() {
        let flat: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        let h = Histogram::of_values(&flat, HIST_BINS);
        let full = h.quantization_mse(h.range());
        // Rounding error of a uniform spread is step^2 / 12.
        let step = 1.0 / 255.0f64;
        assert!((full / (step * step / 12.0) - 1.0).abs() < 0.1, "{full}");
        let half = h.quantization_mse(Range { min: 0.0, max: 0.5 });
        assert!(half > 100.0 * full, "{half} vs {full}");
    }

    fn sens(name: &str, kind: &'static str, rel_l2: f64) -> LayerSensitivity {
        LayerSensitivity {
            name: name.into(),
            kind,
            rel_l2,
        }
    }

    #[test]
    fn layer_choice_keeps_named_depthwise_and_most_sensitive_fp32() {
        let s = vec![
            sens("stem", "dense", 0.05),
            sens("b0.dw", "depthwise", 0.30),
            sens("b0.pw", "pointwise", 0.01),
            sens("b1.ex", "pointwise", 0.08),
            sens("b1.pw", "pointwise", 0.02),
        ];
        let c = choose_layers(&s, &["b1.pw".to_string()], 1).unwrap();
        let got: Vec<(&str, Option<&str>)> = c.iter().map(|l| (l.precision, l.reason)).collect();
        assert_eq!(
            got,
            vec![
                ("int8", None),
                ("fp32", Some("depthwise")),
                ("int8", None),
                ("fp32", Some("--fp32-auto")),
                ("fp32", Some("--fp32-layers")),
            ]
        );
        let e = choose_layers(&s, &["nope".to_string()], 0).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("--fp32-layers nope") && msg.contains("b1.ex"),
            "{msg}"
        );
        assert!(!msg.contains("b0.dw"), "{msg}");
    }
}
