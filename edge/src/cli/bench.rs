//! `edge bench`: per-stage medians of the per-frame pipeline with a cached support, and the
//! ONNX Runtime peer on the same encoder graph with the same input bytes (evaluation.md,
//! "Speed").

use super::{apply_threads, median, ms_since, parse_size};
use anyhow::{bail, Context, Result};
use clap::Args;
use fss_core::overlay::overlay_in_place;
use fss_core::preprocess::{prepare_input, resize_mask_nearest, InputSize};
use fss_core::prototype::{logits_to_labels, SupportShot};
use fss_core::report::{BenchReport, OrtBench, OrtRatios, StageMs};
use fss_core::tensor::{FeatureMap, Mask};
use fss_runtime::BundleEncoder;
use image::RgbImage;
use std::path::{Path, PathBuf};
use std::time::Instant;

const AFTER_HELP: &str = "\
Stages (median over --runs frames after 3 warm-up frames, milliseconds): decode (JPEG bytes ->
RGB), preprocess (resize + normalize), encoder (tract), head (PANet cosine scoring in Rust at
feature resolution), temporal (the location prior `edge run` applies from frame to frame,
--temporal-reach; omitted at 0; it follows the support's centred box over the repeated frame),
postprocess (bilinear upsampling of the logits to the frame + argmax,
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
    /// The location prior of `edge run` (`--temporal-reach`; 0: not run, as before it existed).
    #[arg(long, value_name = "R", default_value_t = fss_core::temporal::TemporalOptions::default().reach, allow_negative_numbers = true)]
    pub temporal_reach: f32,
    /// Print the report as one JSON line.
    #[arg(long)]
    pub json: bool,
}

const WARMUP: usize = 3;
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
    temporal: Vec<f64>,
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
            std::fs::read(p).map_err(|e| fss_core::EdgeError::io(p, e))?,
            p.display().to_string(),
        ),
        None => match first_jpeg(&args.bundle.join("sample"), 4) {
            Some(p) => (
                std::fs::read(&p).map_err(|e| fss_core::EdgeError::io(&p, e))?,
                p.display().to_string(),
            ),
            None => (synthetic_frame()?, "synthetic 480x854".to_string()),
        },
    };
    let decode = |bytes: &[u8]| -> Result<RgbImage> {
        Ok(image::load_from_memory(bytes)
            .map_err(|e| fss_core::EdgeError::Image {
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

    let mut prior = fss_core::temporal::LocationPrior::new(args.temporal_reach)
        .map_err(|e| anyhow::anyhow!("--temporal-reach: {e}"))?;
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
        let mut logits = encoder.head_logits(&protos, &features, size)?;
        let d_head = ms_since(t);
        let t = Instant::now();
        prior.apply(&mut logits);
        let d_temporal = ms_since(t);
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
            s.temporal.push(d_temporal);
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
        temporal: (args.temporal_reach > 0.0).then(|| median(&s.temporal)),
        postprocess: Some(median(&s.postprocess)),
        overlay: Some(median(&s.overlay)),
    };
    let tract_encoder = median(&s.encoder);
    let onnxruntime = if args.no_ort {
        None
    } else {
        let features = last_features.expect("at least one run");
        #[cfg(feature = "lab")]
        let compared = super::bench_ort::ort_compare(
            &super::bench_ort::OrtRun {
                bundle: &args.bundle,
                threads: args.threads,
                runs: args.runs,
                warmup: WARMUP,
            },
            &encoder,
            size,
            &last_input,
            &features,
        );
        #[cfg(not(feature = "lab"))]
        let compared: Result<f64> = {
            let _ = (&last_input, &features);
            Err(anyhow::anyhow!(
                "this build has no ONNX Runtime comparison (edge's `lab` feature is off)"
            ))
        };
        match compared {
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
                    fss_runtime::one_line(&format!("{e:#}"))
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
            ("temporal", st.temporal),
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
