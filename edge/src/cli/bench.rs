//! `edge bench`: per-stage medians of the per-frame pipeline with a cached support, and the
//! ONNX Runtime peer on the same encoder graph with the same input bytes (evaluation.md,
//! "Speed").

use super::{apply_threads, median, ms_since, parse_size};
use anyhow::{bail, Context, Result};
use clap::Args;
use edge::overlay::overlay_in_place;
use edge::preprocess::{prepare_input, resize_mask_nearest, InputSize};
use edge::prototype::{logits_to_labels, SupportShot};
use edge::report::{BenchReport, OrtBench, OrtRatios, StageMs};
use edge::runtime::BundleEncoder;
use edge::tensor::{FeatureMap, Mask};
use image::RgbImage;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const AFTER_HELP: &str = "\
Stages (median over --runs frames after 3 warm-up frames, milliseconds): decode (JPEG bytes ->
RGB), preprocess (resize + normalize), encoder (tract), head (PANet cosine scoring in Rust at
feature resolution), postprocess (bilinear upsampling of the logits to the frame + argmax,
fused), overlay. frame_ms is the median of the per-frame totals. The support prototypes are
computed once before timing (a cached support).

The frame: --frame IMG, else the first JPEG under <bundle>/sample, else a synthetic 480x854 JPEG.

ONNX Runtime: a Python with onnxruntime is looked up as $EDGE_ORT_PYTHON, else .venv/bin/python
in the ancestors of the bundle folder, the working directory and the executable. It runs the
same encoder .onnx on the same input tensor with intra_op_num_threads = --threads; outputs must
agree before its median time is reported: max abs diff <= 1e-4 for fp32 bundles; for int8
bundles <= 32 steps of the encoder output's u8 scale (quantization.output_step in the
manifest), because ONNX Runtime's default session rewrites the DequantizeLinear -> f32 op ->
QuantizeLinear sections between quantized convs into int8 kernels, a different rounding per
layer that compounds (a wrong scale, zero point or layout gives errors of hundreds of steps). ratio_tract_over_ort.end_to_end
compares frame_ms with the same pipeline using ONNX Runtime's encoder time. Without onnxruntime
the `onnxruntime` field is omitted (said on stderr).";

#[derive(Debug, Clone, Args)]
#[command(after_help = AFTER_HELP)]
pub struct BenchArgs {
    /// Bundle folder (bundle.json + ONNX graphs).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Model input size HxW (default: the bundle's).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<InputSize>,
    /// tract threads (and ONNX Runtime's intra-op threads).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Timed frames (evaluation.md asks for at least 30).
    #[arg(long, default_value_t = 30)]
    pub runs: usize,
    /// The frame to time (JPEG recommended: the decode stage decodes its bytes).
    #[arg(long, value_name = "IMG")]
    pub frame: Option<PathBuf>,
    /// Skip the ONNX Runtime comparison.
    #[arg(long)]
    pub no_ort: bool,
    /// Print the report as one JSON line.
    #[arg(long)]
    pub json: bool,
}

const WARMUP: usize = 3;
/// Largest encoder output difference accepted between tract and ONNX Runtime (fp32).
pub const ORT_PARITY_TOL: f32 = 1e-4;
/// Largest int8 encoder output difference accepted between tract and ONNX Runtime, in steps
/// of the output's u8 scale (see the command's help).
pub const ORT_INT8_PARITY_STEPS: f32 = 32.0;

/// The tract vs ONNX Runtime tolerance of a bundle's encoder output, and how it is stated.
pub fn ort_parity_tolerance(m: &edge::bundle::Manifest) -> Result<(f32, String)> {
    if m.precision != "int8" {
        return Ok((ORT_PARITY_TOL, format!("{ORT_PARITY_TOL:e}")));
    }
    let step = m
        .quantization
        .as_ref()
        .and_then(|q| q.output_step)
        .filter(|s| s.is_finite() && *s > 0.0)
        .context(
            "int8 bundle without quantization.output_step in its manifest (the encoder \
             output is not a quantized conv's): no tolerance to compare with onnxruntime",
        )?;
    let tol = ORT_INT8_PARITY_STEPS * step;
    Ok((
        tol,
        format!("{tol:.3e} ({ORT_INT8_PARITY_STEPS} output steps of {step:.3e})"),
    ))
}

fn first_jpeg(dir: &Path, depth: usize) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in &entries {
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        if p.is_file() && matches!(ext.as_deref(), Some("jpg" | "jpeg")) {
            return Some(p.clone());
        }
    }
    if depth == 0 {
        return None;
    }
    entries
        .iter()
        .filter(|p| p.is_dir())
        .find_map(|d| first_jpeg(d, depth - 1))
}

fn synthetic_frame() -> Result<Vec<u8>> {
    let (w, h) = (854u32, 480u32);
    let img = RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - 427.0, y as f32 - 240.0);
        if dx * dx + dy * dy < 120.0 * 120.0 {
            image::Rgb([210, 40 + (x % 7) as u8 * 5, 40])
        } else {
            let v = 90 + ((x / 4 + y / 3) % 50) as u8;
            image::Rgb([v, v - 10, v - 20])
        }
    });
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&img)
        .context("encoding the synthetic frame")?;
    Ok(bytes)
}

/// A centred box over the middle third of the frame: the support mask of the bench.
fn centre_mask(h: usize, w: usize) -> Mask {
    let mut data = vec![0u8; h * w];
    for y in h / 3..(2 * h / 3).max(h / 3 + 1) {
        for x in w / 3..(2 * w / 3).max(w / 3 + 1) {
            data[y * w + x] = 1;
        }
    }
    Mask {
        height: h,
        width: w,
        data,
    }
}

#[derive(Default)]
struct Samples {
    decode: Vec<f64>,
    preprocess: Vec<f64>,
    encoder: Vec<f64>,
    head: Vec<f64>,
    postprocess: Vec<f64>,
    overlay: Vec<f64>,
    total: Vec<f64>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.runs < 30 {
        eprintln!(
            "note: --runs {} is below the 30 frames evaluation.md asks for",
            args.runs
        );
    }
    apply_threads(args.threads)?;
    let mut encoder = BundleEncoder::open(&args.bundle)?;
    encoder.bundle().require_supported_method()?;
    let size = args.size.unwrap_or_else(|| encoder.default_size());
    let norm = encoder.bundle().normalization();
    let (jpeg, source) = match &args.frame {
        Some(p) => (
            std::fs::read(p).map_err(|e| edge::EdgeError::io(p, e))?,
            p.display().to_string(),
        ),
        None => match first_jpeg(&args.bundle.join("sample"), 4) {
            Some(p) => (
                std::fs::read(&p).map_err(|e| edge::EdgeError::io(&p, e))?,
                p.display().to_string(),
            ),
            None => (synthetic_frame()?, "synthetic 480x854".to_string()),
        },
    };
    let decode = |bytes: &[u8]| -> Result<RgbImage> {
        Ok(image::load_from_memory(bytes)
            .map_err(|e| edge::EdgeError::Image {
                path: PathBuf::from(&source),
                reason: e.to_string(),
            })?
            .to_rgb8())
    };
    let frame = decode(&jpeg)?;
    let (fh, fw) = (frame.height() as usize, frame.width() as usize);
    // The cached support: computed once, outside the timing.
    encoder.prepare(size)?;
    let support_input = prepare_input(&frame, size, &norm);
    let support_features = encoder.encode(&support_input, size)?;
    let mask = resize_mask_nearest(&centre_mask(fh, fw), size.height, size.width);
    let protos =
        encoder.prototypes(&[vec![SupportShot::from_foreground(support_features, mask)]])?;

    let mut s = Samples::default();
    let mut last_input = Vec::new();
    let mut last_features: Option<FeatureMap> = None;
    for i in 0..WARMUP + args.runs {
        let t_frame = Instant::now();
        let t = Instant::now();
        let mut img = decode(&jpeg)?;
        let d_decode = ms_since(t);
        let t = Instant::now();
        let input = prepare_input(&img, size, &norm);
        let d_pre = ms_since(t);
        let t = Instant::now();
        let features = encoder.encode(&input, size)?;
        let d_enc = ms_since(t);
        let t = Instant::now();
        let logits = encoder.head_logits(&protos, &features, size)?;
        let d_head = ms_since(t);
        let t = Instant::now();
        let labels = logits_to_labels(&logits, fh, fw);
        let d_post = ms_since(t);
        let t = Instant::now();
        overlay_in_place(&mut img, &labels)?;
        let d_overlay = ms_since(t);
        let d_total = ms_since(t_frame);
        if i >= WARMUP {
            s.decode.push(d_decode);
            s.preprocess.push(d_pre);
            s.encoder.push(d_enc);
            s.head.push(d_head);
            s.postprocess.push(d_post);
            s.overlay.push(d_overlay);
            s.total.push(d_total);
        }
        if i + 1 == WARMUP + args.runs {
            last_input = input;
            last_features = Some(features);
        }
    }
    let frame_ms = median(&s.total);
    let stage_ms = StageMs {
        capture: None,
        decode: Some(median(&s.decode)),
        preprocess: Some(median(&s.preprocess)),
        encoder: Some(median(&s.encoder)),
        head: Some(median(&s.head)),
        postprocess: Some(median(&s.postprocess)),
        overlay: Some(median(&s.overlay)),
    };
    let tract_encoder = median(&s.encoder);
    let onnxruntime = if args.no_ort {
        None
    } else {
        let features = last_features.expect("at least one run");
        match ort_compare(args, &encoder, size, &last_input, &features) {
            Ok(ort_ms) => Some(OrtBench {
                encoder_ms: Some(ort_ms),
                head_ms: None,
                ratio_tract_over_ort: OrtRatios {
                    encoder: Some(tract_encoder / ort_ms),
                    head: None,
                    end_to_end: Some(frame_ms / (frame_ms - tract_encoder + ort_ms)),
                },
            }),
            Err(e) => {
                eprintln!(
                    "onnxruntime comparison skipped: {}",
                    edge::runtime::one_line(&format!("{e:#}"))
                );
                None
            }
        }
    };
    let report = BenchReport {
        bundle: args.bundle.display().to_string(),
        size: [size.height, size.width],
        threads: args.threads,
        frame_ms,
        fps: 1000.0 / frame_ms,
        stage_ms,
        onnxruntime,
    };
    if args.json {
        println!("{}", report.to_json_line());
    } else {
        println!(
            "{} {} threads {} frame {} ({}x{}): {:.2} ms/frame, {:.1} fps",
            report.bundle, size, report.threads, source, fh, fw, report.frame_ms, report.fps
        );
        let st = &report.stage_ms;
        for (name, v) in [
            ("decode", st.decode),
            ("preprocess", st.preprocess),
            ("encoder", st.encoder),
            ("head", st.head),
            ("postprocess", st.postprocess),
            ("overlay", st.overlay),
        ] {
            if let Some(v) = v {
                println!("  {name:<12} {v:8.3} ms");
            }
        }
        if let Some(o) = &report.onnxruntime {
            println!(
                "  onnxruntime encoder {:.3} ms (tract/ort {:.2}x)",
                o.encoder_ms.unwrap_or(f64::NAN),
                o.ratio_tract_over_ort.encoder.unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}

/// The Python that has onnxruntime, if any: `$EDGE_ORT_PYTHON`, else `.venv/bin/python` in
/// the ancestors of `bundle`, the working directory, the executable.
pub fn find_ort_python(bundle: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EDGE_ORT_PYTHON") {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    let mut starts = Vec::new();
    if let Ok(b) = std::fs::canonicalize(bundle) {
        starts.push(b);
    }
    if let Ok(c) = std::env::current_dir() {
        starts.push(c);
    }
    if let Ok(e) = std::env::current_exe().and_then(std::fs::canonicalize) {
        starts.push(e);
    }
    starts
        .iter()
        .flat_map(|s| s.ancestors())
        .map(|d| d.join(".venv/bin/python"))
        .find(|p| p.is_file())
}

const ORT_SCRIPT: &str = r#"
import sys, json, time
try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:
    print("NO_ORT " + str(e), file=sys.stderr)
    sys.exit(3)
model, inp, shape, threads, runs, warmup, out, name = sys.argv[1:9]
shape = [int(v) for v in shape.split(",")]
x = np.fromfile(inp, dtype="<f4").reshape(shape)
so = ort.SessionOptions()
so.intra_op_num_threads = int(threads)
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
feeds = {name: x}
y = s.run(None, feeds)[0]
np.ascontiguousarray(y, dtype="<f4").tofile(out)
for _ in range(int(warmup)):
    s.run(None, feeds)
ts = []
for _ in range(int(runs)):
    t = time.perf_counter()
    s.run(None, feeds)
    ts.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"times_ms": ts, "shape": list(y.shape), "version": ort.__version__}))
"#;

/// Runs the encoder in ONNX Runtime on `input`; checks its output against tract's; returns
/// ONNX Runtime's median milliseconds.
fn ort_compare(
    args: &BenchArgs,
    encoder: &BundleEncoder,
    size: InputSize,
    input: &[f32],
    tract_features: &FeatureMap,
) -> Result<f64> {
    let python = find_ort_python(&args.bundle)
        .context("no Python with onnxruntime found ($EDGE_ORT_PYTHON or .venv/bin/python)")?;
    let dir = std::env::temp_dir().join(format!("edge-bench-ort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| edge::EdgeError::io(&dir, e))?;
    let result = (|| -> Result<f64> {
        let in_path = dir.join("input.f32");
        let out_path = dir.join("output.f32");
        let bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&in_path, bytes).map_err(|e| edge::EdgeError::io(&in_path, e))?;
        let shape = BundleEncoder::input_shape(size)
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let model = std::fs::canonicalize(encoder.bundle().encoder_path())?;
        let out = Command::new(&python)
            .arg("-c")
            .arg(ORT_SCRIPT)
            .arg(&model)
            .arg(&in_path)
            .arg(&shape)
            .arg(args.threads.to_string())
            .arg(args.runs.to_string())
            .arg(WARMUP.to_string())
            .arg(&out_path)
            .arg(&encoder.manifest().graphs.encoder.inputs[0].name)
            .output()
            .with_context(|| format!("cannot run {}", python.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            if let Some(line) = stderr.lines().find(|l| l.starts_with("NO_ORT")) {
                bail!(
                    "{} has no onnxruntime ({})",
                    python.display(),
                    line.trim_start_matches("NO_ORT ")
                );
            }
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message");
            bail!("onnxruntime failed on {}: {last}", model.display());
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .context("onnxruntime printed no result")?;
        let v: serde_json::Value =
            serde_json::from_str(line).context("onnxruntime result is not JSON")?;
        let times: Vec<f64> = v["times_ms"]
            .as_array()
            .context("onnxruntime result has no times")?
            .iter()
            .filter_map(|t| t.as_f64())
            .collect();
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .context("onnxruntime result has no shape")?
            .iter()
            .filter_map(|d| d.as_u64().map(|d| d as usize))
            .collect();
        let want = vec![
            1,
            tract_features.channels,
            tract_features.height,
            tract_features.width,
        ];
        if shape != want {
            bail!("onnxruntime output shape {shape:?} differs from tract's {want:?}");
        }
        let raw = std::fs::read(&out_path).map_err(|e| edge::EdgeError::io(&out_path, e))?;
        let ort: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if ort.len() != tract_features.data.len() {
            bail!(
                "onnxruntime output has {} values, tract's {}",
                ort.len(),
                tract_features.data.len()
            );
        }
        let diff = ort
            .iter()
            .zip(&tract_features.data)
            .map(|(a, b)| (a - b).abs())
            .fold(
                0.0f32,
                |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
            );
        let (tol, tol_text) = ort_parity_tolerance(encoder.manifest())?;
        if diff.is_nan() || diff > tol {
            bail!("outputs differ: max abs diff tract vs onnxruntime {diff:e} > {tol_text}; timings not compared");
        }
        eprintln!(
            "onnxruntime {}: encoder output matches tract (max abs diff {diff:.2e} <= {tol_text})",
            v["version"].as_str().unwrap_or("?")
        );
        Ok(median(&times))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod parity_tests {
    use super::*;
    use edge::bundle::Quantization;

    fn int8_manifest(step: Option<f32>) -> edge::bundle::Manifest {
        let mut m = edge::testkit::test_manifest(32, 32, 8, String::new());
        m.precision = "int8".to_string();
        m.quantization = Some(Quantization {
            method: "percentile".to_string(),
            percentile: Some(99.99),
            calibration: "calibration/ (32 images)".to_string(),
            layers_fp32: Vec::new(),
            weights: String::new(),
            activations: String::new(),
            output_step: step,
            layers: Vec::new(),
            measured: None,
        });
        m
    }

    #[test]
    fn fp32_bundles_keep_the_absolute_tolerance() {
        let m = edge::testkit::test_manifest(32, 32, 8, String::new());
        assert_eq!(ort_parity_tolerance(&m).unwrap().0, ORT_PARITY_TOL);
    }

    #[test]
    fn int8_tolerance_is_counted_in_output_steps() {
        let (tol, text) = ort_parity_tolerance(&int8_manifest(Some(0.05))).unwrap();
        assert!((tol - ORT_INT8_PARITY_STEPS * 0.05).abs() < 1e-6, "{tol}");
        assert!(text.contains("output steps"), "{text}");
        for bad in [None, Some(0.0), Some(f32::NAN)] {
            let e = ort_parity_tolerance(&int8_manifest(bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains("output_step"), "{e}");
        }
    }
}
