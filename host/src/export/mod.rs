//! `host export`: writes a deployable bundle — `encoder.onnx` (the backbone up to its feature
//! tap, BatchNorm folded, symbolic H and W) and `bundle.json` (the manifest of
//! `fss_core::bundle`) — and checks the graph against tch before committing it (design.md
//! decisions 2-3, "Bundle manifest").
//!
//! The parity check runs the tch backbone (`Backbone::forward_to`) and tract on the written file
//! on the same seeded random input at the bundle's default size; the export fails when the max
//! abs difference exceeds [`PARITY_TOLERANCE`]. PANet has no head graph: its cosine scoring runs
//! in Rust on the edge (`fss_core::prototype`).
//!
//! With `--int8 --calibration DIR` ([`BundleOptions::int8`]) the encoder is quantized instead
//! ([`quant`]: QLinearConv per-tensor for dense/pointwise convs, depthwise fp32, activation
//! ranges calibrated on the folder's images by `--calibration-method`, named or most
//! sensitive convs kept fp32 with `--fp32-layers` / `--fp32-auto`); its difference to tch fp32
//! is recorded in `checks.parity_max_abs_diff` and `quantization.measured`, and printed with
//! the per-layer sensitivity, not gated.
//!
//! ```no_run
//! use host::backbone::{self, BackboneKind};
//! # fn main() -> anyhow::Result<()> {
//! let kind = BackboneKind::MobileNetV2;
//! let bb = backbone::load(kind, &backbone::default_weights_path(kind), tch::Device::Cpu)?;
//! let spec = host::export::export_encoder(&bb, 16, std::path::Path::new("/tmp/encoder.onnx"))?;
//! let diff = host::export::parity(&bb, 16, std::path::Path::new("/tmp/encoder.onnx"), 64, 80, 0)?;
//! assert!(diff.max_abs_diff < 1e-4, "{spec:?}");
//! # Ok(()) }
//! ```

pub mod head;
pub mod quant;

use fss_core::choice::Choice;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};
use fss_core::bundle::{
    sha256_file, Checks, Dim, FeatureSpec, GraphSpec, Graphs, HeadInfo, InputSpec, Manifest,
    MetricCheck, PrototypeSpec, Provenance, Quantization, QuantizationCheck, QuantizedLayer,
    ResizeSpec, TensorSpec, BUNDLE_FORMAT, MANIFEST_FILE,
};
use fss_core::preprocess::InputSize;
use fss_core::report::EvalReport;
use prost::Message;
use rand::{Rng, SeedableRng};
use tch::{nn::VarStore, Device, Tensor};
use tract_onnx::pb::ModelProto;

use crate::backbone::{default_weights_path, Backbone, BackboneKind, BackboneOptions};
use crate::cli::{ExportArgs, Method};
use crate::heads::MethodHead;
use crate::onnx;
use crate::run::RunRecord;

/// File name of the encoder graph inside a bundle.
pub const ENCODER_FILE: &str = "encoder.onnx";
/// Name of the encoder's input (`[1, 3, "H", "W"]`, normalised RGB, NCHW).
pub const INPUT_NAME: &str = "image";
/// Name of the encoder's output (`[1, C, "h", "w"]`).
pub const OUTPUT_NAME: &str = "features";
/// The largest max abs difference tch vs tract an export accepts.
pub const PARITY_TOLERANCE: f64 = 1e-4;
/// Seed of the random input of the export-time parity check.
pub const PARITY_SEED: u64 = 0x5eed_0e0e;
/// Who measured a metric check, as `--checks-measured-by` accepts it.
pub const MEASURED_BY: [&str; 2] = ["host eval", "edge eval"];

/// The feature stride a bundle's encoder ends at: 16 when the backbone has that level, else
/// its deepest one (VGG-16 PANet: 8).
pub fn encoder_stride(kind: BackboneKind) -> i64 {
    let strides = kind.feature_strides();
    if strides.contains(&16) {
        16
    } else {
        *strides.last().expect("a backbone has feature levels")
    }
}

/// The encoder's input and output as the manifest records them.
pub fn encoder_io(channels: usize) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let input = TensorSpec {
        name: INPUT_NAME.into(),
        shape: vec![
            Dim::Fixed(1),
            Dim::Fixed(3),
            Dim::Symbol("H".into()),
            Dim::Symbol("W".into()),
        ],
    };
    let output = TensorSpec {
        name: OUTPUT_NAME.into(),
        shape: vec![
            Dim::Fixed(1),
            Dim::Fixed(channels),
            Dim::Symbol("h".into()),
            Dim::Symbol("w".into()),
        ],
    };
    (vec![input], vec![output])
}

fn stride_channels(backbone: &Backbone, stride: i64) -> Result<usize> {
    backbone
        .feature_channels(stride)
        .map(|c| c as usize)
        .ok_or_else(|| {
            let have: Vec<String> = backbone
                .taps()
                .iter()
                .map(|t| t.stride.to_string())
                .collect();
            anyhow!(
                "backbone {} has no feature level at stride {stride} (available: {})",
                backbone.kind(),
                have.join(", ")
            )
        })
}

/// The encoder graph: the trunk layers up to the tap at `stride` (`Backbone::layers_to`).
pub fn encoder_model(backbone: &Backbone, stride: i64) -> Result<ModelProto> {
    let channels = stride_channels(backbone, stride)?;
    let layers = backbone.layers_to(stride)?;
    let doc = format!(
        "{} encoder: normalised RGB image -> stride-{stride} features",
        backbone.kind()
    );
    crate::layers::layers_model(layers, 3, channels, INPUT_NAME, OUTPUT_NAME, &doc)
}

/// Encodes `model` and writes it atomically to `path`.
pub fn write_model(model: &ModelProto, path: &Path) -> Result<()> {
    fss_core::fsutil::write_atomic(path, &model.encode_to_vec())?;
    Ok(())
}

/// Writes the encoder graph to `path` (atomically) and returns its manifest entry (file name,
/// symbolic input/output shapes, sha256).
pub fn export_encoder(backbone: &Backbone, stride: i64, path: &Path) -> Result<GraphSpec> {
    let model = encoder_model(backbone, stride)?;
    write_model(&model, path)?;
    graph_spec(backbone, stride, path)
}

fn graph_spec(backbone: &Backbone, stride: i64, path: &Path) -> Result<GraphSpec> {
    let (inputs, outputs) = encoder_io(stride_channels(backbone, stride)?);
    let file = path
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a file path", path.display()))?
        .to_string_lossy()
        .into_owned();
    Ok(GraphSpec {
        file,
        inputs,
        outputs,
        sha256: sha256_file(path)?,
    })
}

/// A seeded random input `[1, 3, h, w]`, uniform in [-2.5, 2.5) (the range of normalised
/// images), row-major.
pub fn seeded_input(h: usize, w: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..3 * h * w)
        .map(|_| rng.random_range(-2.5f32..2.5f32))
        .collect()
}

/// tch: the backbone's feature level at `stride` for input `[1, 3, h, w]` (BatchNorm in eval
/// mode): `(shape, values)`.
pub fn tch_features(
    backbone: &Backbone,
    stride: i64,
    input: &[f32],
    h: usize,
    w: usize,
) -> Result<(Vec<usize>, Vec<f32>)> {
    if input.len() != 3 * h * w {
        bail!("input has {} values, not 3x{h}x{w}", input.len());
    }
    let x = Tensor::from_slice(input)
        .view([1, 3, h as i64, w as i64])
        .to_device(backbone.device());
    let y = tch::no_grad(|| backbone.forward_to(&x, stride, false))?;
    let shape = y.size().iter().map(|&d| d as usize).collect();
    Ok((shape, onnx::tensor_f32(&y)?))
}

fn tract_output(
    plan: &std::sync::Arc<tract_onnx::prelude::TypedSimplePlan>,
    input: &[f32],
    shape: &[usize],
) -> Result<(Vec<usize>, Vec<f32>)> {
    use tract_onnx::prelude::*;
    let x = Tensor::from_shape(shape, input)?;
    let out = plan.run(tvec!(x.into()))?;
    let first = out
        .first()
        .ok_or_else(|| anyhow!("the graph produced no output"))?;
    let view = first.to_plain_array_view::<f32>()?;
    Ok((view.shape().to_vec(), view.iter().copied().collect()))
}

/// tract on an ONNX file with the input pinned to `shape` (`into_optimized`, the edge's fast
/// path): `(output shape, values)` of the first output.
pub fn tract_run(path: &Path, input: &[f32], shape: &[usize]) -> Result<(Vec<usize>, Vec<f32>)> {
    use tract_onnx::prelude::*;
    let plan = tract_onnx::onnx()
        .model_for_path(path)
        .with_context(|| format!("{}: tract cannot load it", path.display()))?
        .with_input_fact(0, f32::fact(shape).into())?
        .into_optimized()
        .with_context(|| format!("{}: tract cannot optimize it", path.display()))?
        .into_runnable()?;
    tract_output(&plan, input, shape)
}

/// tract on an ONNX file with symbolic `H` and `W` (one optimized plan for every size), run at
/// `[1, 3, h, w]`.
pub fn tract_run_symbolic(
    path: &Path,
    input: &[f32],
    h: usize,
    w: usize,
) -> Result<(Vec<usize>, Vec<f32>)> {
    use tract_onnx::prelude::*;
    let mut m = tract_onnx::onnx()
        .model_for_path(path)
        .with_context(|| format!("{}: tract cannot load it", path.display()))?;
    let (sh, sw) = (m.sym("H"), m.sym("W"));
    let fact = f32::fact([1.to_dim(), 3.to_dim(), TDim::from(sh), TDim::from(sw)]);
    m = m.with_input_fact(0, fact.into())?;
    let plan = m
        .into_typed()?
        .into_decluttered()?
        .into_optimized()
        .with_context(|| {
            format!(
                "{}: tract cannot optimize it with symbolic H, W",
                path.display()
            )
        })?
        .into_runnable()?;
    tract_output(&plan, input, &[1, 3, h, w])
}

/// Max abs difference of two outputs (NaN if either has a NaN); errors on a shape mismatch.
pub fn max_abs_diff(a: &(Vec<usize>, Vec<f32>), b: &(Vec<usize>, Vec<f32>)) -> Result<f64> {
    if a.0 != b.0 || a.1.len() != b.1.len() {
        bail!("output shapes differ: {:?} vs {:?}", a.0, b.0);
    }
    let mut m = 0f64;
    for (x, y) in a.1.iter().zip(&b.1) {
        let d = (*x as f64 - *y as f64).abs();
        if d.is_nan() {
            return Ok(f64::NAN);
        }
        m = m.max(d);
    }
    Ok(m)
}

/// The result of a parity check.
#[derive(Debug, Clone, PartialEq)]
pub struct Parity {
    /// Max abs difference tch vs tract.
    pub max_abs_diff: f64,
    /// Largest |value| of the tch output (for scale).
    pub max_abs_value: f64,
    /// The output shape.
    pub shape: Vec<usize>,
}

/// tch `forward_to(stride)` vs tract on the ONNX file at `path`, same seeded random input
/// `[1, 3, h, w]`.
pub fn parity(
    backbone: &Backbone,
    stride: i64,
    path: &Path,
    h: usize,
    w: usize,
    seed: u64,
) -> Result<Parity> {
    let input = seeded_input(h, w, seed);
    let want = tch_features(backbone, stride, &input, h, w)?;
    let got = tract_run(path, &input, &[1, 3, h, w])?;
    let max_abs_diff = max_abs_diff(&want, &got)?;
    let max_abs_value = want.1.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    Ok(Parity {
        max_abs_diff,
        max_abs_value,
        shape: want.0,
    })
}

/// What a bundle is made of besides the backbone.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    pub method: Method,
    /// Feature stride of the encoder output.
    pub stride: i64,
    /// Default input size recorded in the manifest; the parity check runs at it.
    pub size: InputSize,
    pub provenance: Provenance,
    pub metrics: Vec<MetricCheck>,
    pub parity_seed: u64,
    /// The export fails when tch vs tract differ by more (fp32 only).
    pub tolerance: f64,
    /// `Some(..)`: write an int8 encoder calibrated on the images of a folder ([`quant`]);
    /// its tch-vs-tract difference is recorded, not gated.
    pub int8: Option<quant::Int8Options>,
}

impl BundleOptions {
    pub fn new(method: Method, stride: i64, size: InputSize, provenance: Provenance) -> Self {
        BundleOptions {
            method,
            stride,
            size,
            provenance,
            metrics: Vec::new(),
            parity_seed: PARITY_SEED,
            tolerance: PARITY_TOLERANCE,
            int8: None,
        }
    }
}

/// Writes the bundle into `out` (created if needed): `encoder.onnx`, checked against tch, then
/// `bundle.json`. Both files are written atomically; the encoder replaces an older one only
/// after its parity check passed, and the manifest is written last.
pub fn export_bundle(backbone: &Backbone, opts: &BundleOptions, out: &Path) -> Result<Manifest> {
    export_bundle_with_head(backbone, None, opts, out)
}

/// [`export_bundle`] for a method with a head graph (SMCP, SG-One, DPNet: `head.onnx`, checked
/// against the tch head like the encoder, before the manifest is written).
pub fn export_bundle_with_head(
    backbone: &Backbone,
    method_head: Option<&MethodHead>,
    opts: &BundleOptions,
    out: &Path,
) -> Result<Manifest> {
    if out.exists() && !out.is_dir() {
        bail!("{}: is a file, not a bundle folder", out.display());
    }
    match (opts.method, method_head) {
        (Method::Panet, None) => {}
        (Method::Panet, Some(_)) => bail!("a PANet bundle has no head graph"),
        (m, None) => {
            bail!("a {m} bundle needs its trained head (export a --checkpoint of a {m} run)")
        }
        (m, Some(h)) if h.method() != m => {
            bail!("a {m} bundle cannot carry a {} head", h.method())
        }
        _ => {}
    }
    if let Some(MethodHead::SgOne(h)) = method_head {
        if h.shape.variant == crate::sgone::SgOneVariant::Code {
            bail!(
                "an SG-One model of the `code` variant cannot be exported: its padding-1 exit conv gives (h + 2) x (w + 2) logits, off the feature grid the edge head contract needs (train with --sgone-variant paper)"
            );
        }
    }
    std::fs::create_dir_all(out).map_err(|e| anyhow!("{}: cannot create: {e}", out.display()))?;
    let channels = stride_channels(backbone, opts.stride)?;
    let model = encoder_model(backbone, opts.stride)?;
    let path = out.join(ENCODER_FILE);
    let tmp = out.join(format!(".{ENCODER_FILE}.tmp-{}", std::process::id()));
    let mut int8: Option<quant::Int8Report> = None;
    let checked = (|| -> Result<Parity> {
        if let Some(q) = &opts.int8 {
            let r = quant::export_int8_encoder(backbone, opts.stride, opts.size, q, &tmp)
                .with_context(|| format!("int8 export of {}", path.display()))?;
            let p = Parity {
                max_abs_diff: r.error.max_abs_diff,
                max_abs_value: f64::NAN,
                shape: Vec::new(),
            };
            std::fs::rename(&tmp, &path)
                .map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))?;
            int8 = Some(r);
            return Ok(p);
        }
        std::fs::write(&tmp, model.encode_to_vec())
            .map_err(|e| anyhow!("{}: cannot write: {e}", tmp.display()))?;
        let (h, w) = (opts.size.height, opts.size.width);
        let p = parity(backbone, opts.stride, &tmp, h, w, opts.parity_seed)
            .with_context(|| format!("parity check of {}", path.display()))?;
        if p.max_abs_diff.is_nan() || p.max_abs_diff > opts.tolerance {
            bail!(
                "{}: parity check failed: tch vs tract max abs diff {:e} > {:e} at {h}x{w}",
                path.display(),
                p.max_abs_diff,
                opts.tolerance
            );
        }
        std::fs::rename(&tmp, &path)
            .map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))?;
        Ok(p)
    })();
    let _ = std::fs::remove_file(&tmp);
    let parity = checked?;
    let (mean, std) = backbone.normalization();
    let encoder = graph_spec(backbone, opts.stride, &path)?;
    let fh = opts.size.height.div_ceil(opts.stride as usize);
    let fw = opts.size.width.div_ceil(opts.stride as usize);
    let (head_graph, head_info, head_parity) = match method_head {
        None => (None, None, None),
        Some(h) => {
            let spec = head::export_head(h, out)?;
            let hp = out.join(head::HEAD_FILE);
            let (diff, scale) = head::head_parity(h, &hp, fh, fw, opts.parity_seed)
                .with_context(|| format!("parity check of {}", hp.display()))?;
            // The head's logits reach |x| ~ 10-100: the tolerance is relative to them.
            let tol = opts.tolerance * scale.max(1.0);
            if diff.is_nan() || diff > tol {
                let _ = std::fs::remove_file(&hp);
                bail!(
                    "{}: parity check failed: tch vs tract max abs diff {diff:e} > {tol:e} at a {fh}x{fw} feature map",
                    hp.display()
                );
            }
            let (fh, fw) = (fh as i64, fw as i64);
            let (width, dilations, variant, macs, passes) = match h {
                MethodHead::Smcp(s) => (
                    s.shape.width,
                    s.shape.dilations.iter().map(|&d| d as usize).collect(),
                    s.shape.variant.name(),
                    s.macs_per_pass(fh, fw),
                    2,
                ),
                MethodHead::SgOne(s) => (
                    s.shape.width,
                    vec![],
                    s.shape.variant.name(),
                    s.macs_per_pass(fh, fw),
                    1,
                ),
                MethodHead::DpNet(d) => {
                    let n = (fss_core::dpnet::MEMORY_GRID * fss_core::dpnet::MEMORY_GRID) as i64;
                    (
                        d.shape.width,
                        vec![],
                        "reconstruction",
                        d.macs_per_pass(fh, fw, n),
                        1,
                    )
                }
            };
            let info = HeadInfo {
                kind: h.method().name().into(),
                width: width as usize,
                dilations,
                variant: variant.into(),
                parameters: h.inference_parameters() as u64,
                macs_per_pass: macs as u64,
                passes,
                encoder_parameters: encoder_parameters(backbone, opts.stride)?,
                encoder_macs: encoder_macs(backbone, opts.stride, opts.size)?,
            };
            (Some(spec), Some(info), Some(diff))
        }
    };
    let manifest = Manifest {
        format: BUNDLE_FORMAT,
        method: opts.method.name().into(),
        backbone: backbone.kind().name().into(),
        input: InputSpec {
            height: opts.size.height,
            width: opts.size.width,
            mean,
            std,
            channel_order: "rgb".into(),
            layout: "nchw".into(),
        },
        feature: FeatureSpec {
            stride: opts.stride as usize,
            channels,
        },
        graphs: Graphs {
            encoder,
            head: head_graph,
        },
        precision: if int8.is_some() { "int8" } else { "fp32" }.into(),
        quantization: int8.as_ref().map(|r| quantization_record(r, opts)),
        resize: ResizeSpec {
            mode: "stretch".into(),
            interpolation: "bilinear".into(),
        },
        prototype: PrototypeSpec {
            kind: opts.method.name().into(),
            eps: crate::panet::MAP_EPS as f32,
            scale: match opts.method {
                Method::Panet => crate::panet::SCALE as f32,
                _ => 0.0,
            },
        },
        threshold: None,
        provenance: opts.provenance.clone(),
        checks: Checks {
            parity_max_abs_diff: Some(parity.max_abs_diff),
            head_parity_max_abs_diff: head_parity,
            metrics: opts.metrics.clone(),
        },
        head: head_info,
    };
    manifest.write(out)?;
    if let Some(r) = &int8 {
        eprintln!(
            "per-layer sensitivity (relative L2 error of the encoder output with only that conv \
             int8, {} calibration images at {}):",
            r.sensitivity_images, opts.size
        );
        for l in &r.layers {
            eprintln!(
                "  {:<28} {:<9} {:>8.5}  {}{}",
                l.name,
                l.kind,
                l.rel_l2_alone,
                l.precision,
                l.reason.map(|r| format!(" ({r})")).unwrap_or_default()
            );
        }
        eprintln!(
            "int8 encoder ({} calibration): {} convs int8, {} kept fp32; simulated relative L2 \
             error of the mix {:.4}; features in tract vs tch fp32 on the first calibration \
             image at {}: relative L2 error {:.4}, cosine {:.5}, max abs diff {:.3e}",
            r.method,
            r.quantized.layers_int8.len(),
            r.quantized.layers_fp32.len(),
            r.simulated_rel_l2,
            opts.size,
            r.error.relative_l2,
            r.error.cosine,
            r.error.max_abs_diff
        );
    }
    Ok(manifest)
}

/// Parameters of the encoder up to the tap at `stride` (BatchNorm buffers excluded).
pub fn encoder_parameters(backbone: &Backbone, stride: i64) -> Result<u64> {
    let mut params = Vec::new();
    for l in backbone.layers_to(stride)? {
        l.named_parameters(&mut params);
    }
    Ok(params
        .iter()
        .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
        .map(|(_, t)| t.numel() as u64)
        .sum())
}

/// Multiply-accumulates of the encoder's convolutions at input `size`, measured by running it
/// once: each conv costs `weight elements x output pixels`.
pub fn encoder_macs(backbone: &Backbone, stride: i64, size: InputSize) -> Result<u64> {
    let layers = backbone.layers_to(stride)?;
    let x = Tensor::zeros(
        [1, 3, size.height as i64, size.width as i64],
        (tch::Kind::Float, backbone.device()),
    );
    let mut total = 0u64;
    let _ = tch::no_grad(|| {
        quant::forward_with_conv_hook(layers, &x, &mut |l, _, y| {
            let s = y.size();
            total += l.conv.weight.numel() as u64 * (s[2] * s[3]) as u64;
        })
    });
    Ok(total)
}

/// The manifest's `quantization` record of an int8 export.
fn quantization_record(r: &quant::Int8Report, opts: &BundleOptions) -> Quantization {
    let dir = opts
        .int8
        .as_ref()
        .map(|q| q.calibration.display().to_string())
        .unwrap_or_default();
    // The output step is the unit of int8 tolerances only when the last conv is int8 and is
    // the graph's output (no fp32 op after its DequantizeLinear but a no-op activation).
    let last_is_output = r.layers.last().is_some_and(|l| l.precision == "int8");
    Quantization {
        method: r.method.name().into(),
        percentile: r.method.percentile(),
        calibration: format!("{dir} ({} images)", r.images),
        layers_fp32: r.quantized.layers_fp32.clone(),
        weights: "int8 symmetric per-tensor (BatchNorm folded), QLinearConv".into(),
        activations: "uint8 asymmetric per-tensor".into(),
        output_step: r.quantized.last_output_scale.filter(|_| last_is_output),
        layers: r
            .layers
            .iter()
            .map(|l| QuantizedLayer {
                name: l.name.clone(),
                kind: l.kind.into(),
                precision: l.precision.into(),
                reason: l.reason.map(Into::into),
                rel_l2_alone: l.rel_l2_alone,
            })
            .collect(),
        measured: Some(QuantizationCheck {
            simulated_rel_l2: r.simulated_rel_l2,
            sensitivity_images: r.sensitivity_images,
            tract_rel_l2: r.error.relative_l2,
            tract_cosine: r.error.cosine,
        }),
    }
}

/// Reads metric checks from a JSON Lines file of `host eval --json` / `edge eval --json`
/// reports (blank lines skipped). Each report must be of `method`, `backbone` and fp32.
pub fn read_metric_checks(
    path: &Path,
    measured_by: &str,
    method: Method,
    backbone: BackboneKind,
) -> Result<Vec<MetricCheck>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("--checks-from {}: cannot read it: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("--checks-from {}:{}", path.display(), i + 1);
        let r: EvalReport = serde_json::from_str(line)
            .map_err(|e| anyhow!("{at}: not an eval report (host/edge eval --json): {e}"))?;
        let kind: BackboneKind = r.backbone.parse().map_err(|e| anyhow!("{at}: {e}"))?;
        if kind != backbone {
            bail!(
                "{at}: report is for backbone {}, the bundle is {backbone}",
                r.backbone
            );
        }
        if !r.method.eq_ignore_ascii_case(method.name()) {
            bail!(
                "{at}: report is for method {}, the bundle is {method}",
                r.method
            );
        }
        if r.precision != "fp32" {
            bail!(
                "{at}: report is for precision {}, the bundle is fp32",
                r.precision
            );
        }
        out.push(MetricCheck {
            protocol: r.protocol,
            data: r.data,
            size: r.size,
            j_mean: r.j_mean,
            miou: r.miou,
            fb_iou: r.fb_iou,
            measured_by: measured_by.to_string(),
        });
    }
    if out.is_empty() {
        bail!("--checks-from {}: no report in it", path.display());
    }
    Ok(out)
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) of a system time; times before 1970 print as the epoch.
/// The time a bundle records as `provenance.created`: now, or `SOURCE_DATE_EPOCH` (seconds
/// since 1970, the reproducible-builds convention) when set, so that exporting the same
/// checkpoint again gives a byte-identical bundle.
fn export_time() -> Result<SystemTime> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(secs) => Ok(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)),
            Err(_) => bail!("SOURCE_DATE_EPOCH={v:?}: not a number of seconds since 1970"),
        },
        Err(_) => Ok(SystemTime::now()),
    }
}

pub fn utc_timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `path` made absolute when it exists (for provenance), else as given.
/// How a bundle names the file it was exported from, without the exporting machine's layout:
/// the path relative to the working directory when the file lies under it (`runs/x/run.json`
/// from a checkout), else its folder and file name (`x/run.json`).
fn portable_source(path: &Path) -> String {
    let file = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let cwd = std::env::current_dir().and_then(std::fs::canonicalize);
    if let Some(rel) = cwd
        .ok()
        .and_then(|d| file.strip_prefix(d).ok().map(Path::to_path_buf))
    {
        return rel.display().to_string();
    }
    let parts: Vec<_> = file.components().rev().take(2).collect();
    parts
        .iter()
        .rev()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// What `host export` resolved from its arguments.
struct Source {
    kind: BackboneKind,
    weights: PathBuf,
    method: Method,
    stride: i64,
    provenance: Provenance,
    /// The training run's configuration (for a method's head).
    config: Option<crate::run::TrainConfig>,
}

fn resolve_source(args: &ExportArgs) -> Result<Source> {
    let host_version = env!("CARGO_PKG_VERSION").to_string();
    let created = utc_timestamp(export_time()?);
    match &args.checkpoint {
        Some(ckpt) => {
            if !ckpt.exists() {
                bail!(
                    "--checkpoint {}: no such run directory or run.json",
                    ckpt.display()
                );
            }
            let (rec, dir) = RunRecord::read(ckpt)?;
            let kind = rec.backbone_kind()?;
            if let Some(b) = args.backbone {
                if b != kind {
                    bail!(
                        "--backbone {b} contradicts the checkpoint, which is a {kind} run ({})",
                        ckpt.display()
                    );
                }
            }
            let weights = rec.model_path(&dir);
            if !weights.is_file() {
                bail!(
                    "{}: the checkpoint weights named by run.json are missing",
                    weights.display()
                );
            }
            let stride = rec.config.feature_stride;
            let run_json = if ckpt.is_dir() {
                ckpt.join("run.json")
            } else {
                ckpt.clone()
            };
            Ok(Source {
                kind,
                weights,
                method: rec.config.method,
                config: Some(rec.config.clone()),
                stride,
                provenance: Provenance {
                    data: crate::run::data_paths(&rec.config),
                    fold: Some(rec.config.fold),
                    iterations: rec.iteration,
                    seed: Some(rec.config.seed),
                    host_version,
                    source: portable_source(&run_json),
                    created,
                    training: crate::run::describe(&rec.config, rec.iteration),
                },
            })
        }
        None => {
            if !args.no_train {
                bail!("give --checkpoint RUN_DIR to export a trained model, or --no-train for the ImageNet backbone");
            }
            if args.method != Method::Panet {
                bail!(
                    "--no-train exports PANet's scoring on the ImageNet backbone; method {} needs a trained --checkpoint",
                    args.method
                );
            }
            let kind = args.backbone.unwrap_or(BackboneKind::EfficientNetLite0);
            let weights = match &args.weights {
                Some(w) => w.clone(),
                None if kind == BackboneKind::Vgg16Panet => bail!(
                    "backbone vgg16 has no ImageNet weights in this project: give --weights PATH \
                     (a converted torchvision file) or export a trained --checkpoint"
                ),
                None => default_weights_path(kind),
            };
            Ok(Source {
                kind,
                weights: weights.clone(),
                method: args.method,
                config: None,
                stride: encoder_stride(kind),
                provenance: Provenance {
                    data: "imagenet".into(),
                    fold: None,
                    iterations: 0,
                    seed: None,
                    host_version,
                    source: portable_source(&weights),
                    created,
                    training: String::new(),
                },
            })
        }
    }
}

/// The int8 options of `host export` (`None` without `--int8`); errors on int8 flags given
/// without `--int8` and on a bad `--percentile`.
fn int8_options(args: &ExportArgs) -> Result<Option<quant::Int8Options>> {
    use crate::cli::CalibrationMethodArg;
    if !args.int8 {
        for (given, flag) in [
            (args.calibration.is_some(), "--calibration"),
            (args.calibration_method.is_some(), "--calibration-method"),
            (args.percentile.is_some(), "--percentile"),
            (!args.fp32_layers.is_empty(), "--fp32-layers"),
            (args.fp32_auto.is_some(), "--fp32-auto"),
        ] {
            if given {
                bail!("{flag} is only used with --int8");
            }
        }
        return Ok(None);
    }
    let dir = args.calibration.clone().ok_or_else(|| {
        anyhow!("--int8 needs --calibration DIR (a folder of images, e.g. calibration/)")
    })?;
    let method = match args
        .calibration_method
        .unwrap_or(CalibrationMethodArg::DEFAULT)
    {
        CalibrationMethodArg::Minmax => quant::CalibrationMethod::MinMax,
        CalibrationMethodArg::Mse => quant::CalibrationMethod::Mse,
        CalibrationMethodArg::Percentile => quant::CalibrationMethod::percentile_checked(
            args.percentile.unwrap_or(quant::DEFAULT_PERCENTILE),
        )?,
    };
    if args.percentile.is_some() && method.percentile().is_none() {
        bail!("--percentile is only used with --calibration-method percentile");
    }
    let mut q = quant::Int8Options::new(dir);
    q.method = method;
    q.fp32_layers = args
        .fp32_layers
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    q.fp32_auto = args.fp32_auto.unwrap_or(0);
    Ok(Some(q))
}

/// `host export`.
pub fn run(args: &ExportArgs) -> Result<()> {
    if args.out.exists() && !args.out.is_dir() {
        bail!(
            "--out {}: is a file, not a bundle folder",
            args.out.display()
        );
    }
    let measured_by = args.checks_measured_by.trim();
    if !MEASURED_BY.contains(&measured_by) {
        bail!(
            "--checks-measured-by '{measured_by}': expected one of {}",
            MEASURED_BY.map(|m| format!("'{m}'")).join(", ")
        );
    }
    let int8 = int8_options(args)?;
    let src = resolve_source(args)?;
    if args.int8 && !args.checks_from.is_empty() {
        bail!(
            "--checks-from records fp32 eval reports; they do not describe an --int8 bundle \
             (evaluate the int8 bundle with `edge eval` first)"
        );
    }
    let mut metrics = Vec::new();
    for f in &args.checks_from {
        metrics.extend(read_metric_checks(f, measured_by, src.method, src.kind)?);
    }
    let vs = VarStore::new(Device::Cpu);
    let backbone = Backbone::new(&vs.root(), src.kind, BackboneOptions::default())?;
    backbone.load_weights(&src.weights)?;
    let head = match &src.config {
        Some(cfg) => crate::run::method_head(&vs, &backbone, cfg)?,
        None => None,
    };
    if let Some(h) = &head {
        h.load_weights(&src.weights)?;
    }
    let mut opts = BundleOptions::new(src.method, src.stride, args.size, src.provenance);
    opts.metrics = metrics;
    opts.int8 = int8;
    let manifest = export_bundle_with_head(&backbone, head.as_ref(), &opts, &args.out)?;
    let bytes = std::fs::metadata(args.out.join(ENCODER_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "wrote {} ({} {} stride {} {}, {ENCODER_FILE} {:.1} MB, parity tch vs tract max abs diff {:.2e} at {}) and {MANIFEST_FILE}",
        args.out.display(),
        manifest.method,
        manifest.backbone,
        manifest.feature.stride,
        manifest.precision,
        bytes as f64 / 1e6,
        manifest.checks.parity_max_abs_diff.unwrap_or(f64::NAN),
        args.size,
    );
    if let (Some(h), Some(d)) = (&manifest.head, manifest.checks.head_parity_max_abs_diff) {
        println!(
            "{} head (width {}, {} variant): {:.2}M parameters, {:.3} GMAC per pass x {} passes per target at {} (encoder: {:.2}M parameters, {:.3} GMAC); parity tch vs tract max abs diff {d:.2e}",
            h.kind,
            h.width,
            h.variant,
            h.parameters as f64 / 1e6,
            h.macs_per_pass as f64 / 1e9,
            h.passes,
            args.size,
            h.encoder_parameters as f64 / 1e6,
            h.encoder_macs as f64 / 1e9,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let at = |s: u64| utc_timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn vgg_exports_its_deepest_level() {
        assert_eq!(encoder_stride(BackboneKind::Vgg16Panet), 8);
        assert_eq!(encoder_stride(BackboneKind::MobileNetV2), 16);
        assert_eq!(encoder_stride(BackboneKind::EfficientNetLite0), 16);
    }
}
