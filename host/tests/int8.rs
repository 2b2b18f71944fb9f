//! Int8 export (`host export --int8 --calibration calibration/`, `host::export::quant`):
//! MobileNetV2 with its ImageNet weights exported in fp32 and int8 at 96x128; both graphs pass
//! the full ONNX checker and run in tract and onnxruntime, the manifest reader accepts the int8
//! bundle, the int8 features stay close to fp32 and PANet masks from them agree with fp32's.
//!
//! Needs `weights/mobilenetv2.safetensors` and the venv's python (`scripts/setup.sh`), the
//! repo's `calibration/` folder and `../shared/data/davis2016` beside the checkout (`blackswan`); missing ones
//! fail the test with the fix.

use std::path::{Path, PathBuf};
use std::process::Command;

use fss_core::bundle::Manifest;
use fss_core::preprocess::InputSize;
use fss_core::prototype::{panet_predict, panet_prototypes, SupportShot};
use fss_core::tensor::{FeatureMap, Mask};
use fss_tests::TempDir;
use host::backbone::{self, Backbone, BackboneKind, BackboneOptions};
use host::cli::Method;
use host::export::{self, quant, BundleOptions};
use prost::Message;
use tch::{nn, Device};

mod common;
use common::{repo_root, venv_python};

fn mobilenetv2() -> (nn::VarStore, Backbone) {
    let kind = BackboneKind::MobileNetV2;
    let w = backbone::default_weights_path(kind);
    assert!(
        w.is_file(),
        "ImageNet weights for {kind} not found at {}: run scripts/setup.sh",
        w.display()
    );
    let vs = nn::VarStore::new(Device::Cpu);
    let bb = Backbone::new(&vs.root(), kind, BackboneOptions::default()).unwrap();
    bb.load_weights(&w).unwrap();
    (vs, bb)
}

/// `scripts/onnx_check.py` with `--atol`: the full checker, then onnxruntime vs `expected`.
/// Returns the report; panics when the checker fails or the diff exceeds `atol`.
fn onnx_check(
    model: &Path,
    tag: &str,
    shape: &[usize],
    input: &[f32],
    expected: &(Vec<usize>, Vec<f32>),
    atol: f64,
) -> serde_json::Value {
    let dir = model.parent().unwrap();
    let x = dir.join(format!("input-{tag}.npy"));
    let y = dir.join(format!("expected-{tag}.npy"));
    host::npy::write_f32(&x, shape, input).unwrap();
    host::npy::write_f32(&y, &expected.0, &expected.1).unwrap();
    let out = Command::new(venv_python())
        .arg(repo_root().join("scripts/onnx_check.py"))
        .args([model, &x, &y])
        .arg("--atol")
        .arg(format!("{atol:e}"))
        .output()
        .expect("the venv python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "onnx_check.py failed on {} (atol {atol:e}):\n{stdout}\n{stderr}",
        model.display()
    );
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["checker"], "ok", "{stdout}");
    v
}

/// onnxruntime on `model` with graph optimizations disabled (`ORT_DISABLE_ALL`): the graph
/// exactly as written.
fn ort_unoptimized(model: &Path, input: &[f32], shape: &[usize]) -> (Vec<usize>, Vec<f32>) {
    let dir = model.parent().unwrap();
    let x = dir.join("input-noopt.npy");
    let y = dir.join("output-noopt.npy");
    host::npy::write_f32(&x, shape, input).unwrap();
    let script = "import sys, numpy as np, onnxruntime as ort\n\
                  so = ort.SessionOptions()\n\
                  so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL\n\
                  s = ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])\n\
                  x = np.load(sys.argv[2]).astype(np.float32)\n\
                  np.save(sys.argv[3], s.run(None, {s.get_inputs()[0].name: x})[0].astype(np.float32))\n";
    let out = Command::new(venv_python())
        .arg("-c")
        .arg(script)
        .args([model, &x, &y])
        .output()
        .expect("the venv python runs");
    assert!(
        out.status.success(),
        "onnxruntime (no graph optimization) failed on {}: {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    host::npy::read_f32(&y).unwrap()
}

/// The scale of the graph's last `DequantizeLinear` (one u8 step of the last quantized conv's
/// output), read from the ONNX file.
fn last_dequantize_scale(path: &Path) -> f32 {
    let bytes = std::fs::read(path).unwrap();
    let m = tract_onnx::pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let g = m.graph.unwrap();
    let node = g
        .node
        .iter()
        .rev()
        .find(|n| n.op_type == "DequantizeLinear")
        .expect("the int8 graph has a DequantizeLinear");
    let init = g
        .initializer
        .iter()
        .find(|t| t.name == node.input[1])
        .expect("the scale is an initializer");
    f32::from_le_bytes(init.raw_data[..4].try_into().unwrap())
}

fn davis_frame(bb: &Backbone, i: usize, size: InputSize) -> (Vec<f32>, Mask) {
    // The shared data folder beside the checkout (`../shared/data`), as on every machine.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/davis2016");
    let img = root.join(format!("JPEGImages/480p/blackswan/{i:05}.jpg"));
    let ann = root.join(format!("Annotations/480p/blackswan/{i:05}.png"));
    assert!(
        img.is_file() && ann.is_file(),
        "DAVIS 2016 blackswan not found under {}",
        root.display()
    );
    let x = quant::prepared_image(bb, &img, size).unwrap();
    let mut m = fss_core::image_io::load_label_png(&ann).unwrap();
    for v in &mut m.data {
        *v = (*v > 0) as u8;
    }
    (x, m)
}

fn features(path: &Path, x: &[f32], size: InputSize) -> (Vec<usize>, Vec<f32>) {
    export::tract_run(path, x, &[1, 3, size.height, size.width]).unwrap()
}

fn feature_map(f: &(Vec<usize>, Vec<f32>)) -> FeatureMap {
    FeatureMap::new(f.0[1], f.0[2], f.0[3], f.1.clone()).unwrap()
}

/// PANet 1-way 1-shot: support `s` with mask `m`, query `q`; labels at the mask's size.
fn panet_mask(s: &(Vec<usize>, Vec<f32>), m: &Mask, q: &(Vec<usize>, Vec<f32>)) -> Mask {
    let shot = SupportShot::from_foreground(feature_map(s), m.clone());
    let protos = panet_prototypes(&[vec![shot]]).unwrap();
    panet_predict(&feature_map(q), &protos, (m.height, m.width)).unwrap()
}

enum KeptOrTemp {
    Kept(PathBuf),
    Temp(TempDir),
}

impl KeptOrTemp {
    fn path(&self) -> &Path {
        match self {
            KeptOrTemp::Kept(p) => p,
            KeptOrTemp::Temp(t) => t.path(),
        }
    }
}

fn iou(a: &Mask, b: &Mask) -> f64 {
    let (mut i, mut u) = (0usize, 0usize);
    for (x, y) in a.data.iter().zip(&b.data) {
        i += (*x > 0 && *y > 0) as usize;
        u += (*x > 0 || *y > 0) as usize;
    }
    if u == 0 {
        1.0
    } else {
        i as f64 / u as f64
    }
}

#[test]
fn int8_mobilenetv2_bundle_matches_fp32() {
    let (_vs, bb) = mobilenetv2();
    let calib = repo_root().join("calibration");
    assert!(calib.is_dir(), "{} not found", calib.display());
    let dir = TempDir::new("int8-mobilenetv2");
    let dir = if std::env::var_os("FSS_KEEP_INT8").is_some() {
        // Keep the bundles and .npy files for inspection.
        let kept = dir.path().to_path_buf();
        std::mem::forget(dir);
        KeptOrTemp::Kept(kept)
    } else {
        KeptOrTemp::Temp(dir)
    };
    let size = InputSize {
        height: 96,
        width: 128,
    };
    let stride = export::encoder_stride(BackboneKind::MobileNetV2);
    let prov = fss_core::bundle::Provenance {
        data: "imagenet".into(),
        ..Default::default()
    };
    let fp32_dir = dir.path().join("fp32");
    let int8_dir = dir.path().join("int8");
    let opts = BundleOptions::new(Method::Panet, stride, size, prov);
    export::export_bundle(&bb, &opts, &fp32_dir).unwrap();
    let mut q_opts = opts.clone();
    let mut q = quant::Int8Options::new(calib.clone());
    // The bounds below were measured with min-max ranges.
    q.method = quant::CalibrationMethod::MinMax;
    q_opts.int8 = Some(q);
    export::export_bundle(&bb, &q_opts, &int8_dir).unwrap();

    // The manifest reader accepts the int8 bundle.
    let m = Manifest::read(&int8_dir).unwrap();
    assert_eq!(m.precision, "int8");
    let q = m.quantization.as_ref().expect("quantization recorded");
    assert_eq!(q.method, "minmax");
    assert!(q.calibration.ends_with("(32 images)"), "{}", q.calibration);
    // MobileNetV2 up to stride 16 has 13 depthwise convs, kept fp32.
    assert_eq!(q.layers_fp32.len(), 13, "{:?}", q.layers_fp32);
    assert!(q.layers_fp32.iter().all(|n| n.starts_with("features.")));
    let parity = m.checks.parity_max_abs_diff.unwrap();
    assert!(parity.is_finite());

    let fp32 = fp32_dir.join(export::ENCODER_FILE);
    let int8 = int8_dir.join(export::ENCODER_FILE);
    let (fp32_bytes, int8_bytes) = (
        std::fs::metadata(&fp32).unwrap().len(),
        std::fs::metadata(&int8).unwrap().len(),
    );
    eprintln!("encoder.onnx: fp32 {fp32_bytes} B, int8 {int8_bytes} B");
    assert!(int8_bytes * 2 < fp32_bytes);

    // Both graphs on a real frame at the export size: tract, onnxruntime, the checker.
    let (x, _) = davis_frame(&bb, 10, size);
    let shape = [1, 3, size.height, size.width];
    let want = export::tch_features(&bb, stride, &x, size.height, size.width).unwrap();
    let f_tract = features(&fp32, &x, size);
    assert!(export::max_abs_diff(&want, &f_tract).unwrap() < 1e-4);
    onnx_check(&fp32, "fp32", &shape, &x, &want, 1e-4);
    let q_tract = features(&int8, &x, size);
    // tract vs onnxruntime on the int8 graph, with the tolerance in steps of the last
    // quantized conv's output scale (one u8 code there):
    // - ORT with graph optimizations off runs the graph as written: QLinearConv with integer
    //   accumulation and round-half-to-even requantization, like tract, so the two must agree to
    //   within one output step (measured: bit-identical, 0.0).
    // - ORT's default session (Level 3) rewrites the DequantizeLinear -> fp32 depthwise Conv /
    //   Clip -> QuantizeLinear sections into int8 kernels, a different computation: each layer
    //   may differ by a code and that compounds over the 26 quantized convs (measured on this
    //   frame: 9.1 steps max, relative L2 0.055, while tract and ORT are each 0.106-0.107 from
    //   fp32). It is held to 32 steps, which still catches a wrong scale, zero point or layout
    //   (those give errors of the order of the features themselves, max |fp32| ~ 3.5 = 200 steps).
    let step = last_dequantize_scale(&int8) as f64;
    let exact = ort_unoptimized(&int8, &x, &shape);
    let d_exact = export::max_abs_diff(&q_tract, &exact).unwrap();
    let ort = onnx_check(&int8, "int8", &shape, &x, &q_tract, 32.0 * step);
    eprintln!(
        "int8 tract vs onnxruntime: unoptimized session max abs diff {d_exact:.3e}, default \
         session {} (one output step = {step:.4e})",
        ort["max_abs_diff"]
    );
    // One output step plus the f32 rounding of the two dequantized values compared (each within
    // half an ulp of `max|value|`): a rounding difference of the CPU's kernels, not a bug.
    let max_abs = q_tract
        .1
        .iter()
        .chain(&exact.1)
        .fold(0f64, |m, v| m.max(v.abs() as f64));
    let gate = step + f32::EPSILON as f64 * max_abs;
    assert!(
        d_exact <= gate,
        "tract vs ORT (no graph optimization): {d_exact} > one step {step} + f32 rounding (gate {gate})"
    );
    let err = quant::feature_error(&want, &q_tract).unwrap();
    eprintln!(
        "int8 vs fp32 features at {size} (blackswan 10): relative L2 {:.4}, cosine {:.5}, max abs diff {:.3e}",
        err.relative_l2, err.cosine, err.max_abs_diff
    );
    // Bounds (measured, then given headroom; not a quality claim — the PANet mask agreement
    // below is the end-to-end check): at the calibration size this frame measured relative L2
    // 0.107 (cosine 0.9943), and onnxruntime's own int8 kernels on the same graph give 0.106,
    // so this is the error of the scheme (per-tensor weights after BatchNorm folding, u8
    // min-max activations over 26 convs), not of the implementation. 0.15 leaves ~40% for
    // version drift of libtorch/tract/calibration images and fails on a real regression (an
    // input scale inconsistent with the int32 bias in one layer alone — features.10.conv.2's
    // x_scale doubled — measured 0.47).
    assert!(err.relative_l2 < REL_L2_BOUND, "{err:?}");
    assert!(err.cosine > 0.98, "{err:?}");

    // PANet masks from int8 vs fp32 features: support frame 0, query frame 10 of blackswan,
    // at the default bundle size (the graphs have symbolic H, W).
    let big = InputSize {
        height: 320,
        width: 576,
    };
    let (xs, ms) = davis_frame(&bb, 0, big);
    let (xq, mq) = davis_frame(&bb, 10, big);
    let (fs, fq) = (features(&fp32, &xs, big), features(&fp32, &xq, big));
    let (qs, qq) = (features(&int8, &xs, big), features(&int8, &xq, big));
    let err_big = quant::feature_error(&fq, &qq).unwrap();
    let mask_fp32 = panet_mask(&fs, &ms, &fq);
    let mask_int8 = panet_mask(&qs, &ms, &qq);
    let agree = mask_fp32
        .data
        .iter()
        .zip(&mask_int8.data)
        .filter(|(a, b)| a == b)
        .count() as f64
        / mask_fp32.data.len() as f64;
    eprintln!(
        "int8 vs fp32 at {big}: feature relative L2 {:.4}, cosine {:.5}; PANet masks agree on {:.4} \
         of pixels, IoU(int8, fp32) {:.4}; IoU vs ground truth fp32 {:.4}, int8 {:.4}",
        err_big.relative_l2,
        err_big.cosine,
        agree,
        iou(&mask_int8, &mask_fp32),
        iou(&mask_fp32, &mq),
        iou(&mask_int8, &mq)
    );
    assert!(agree >= 0.95, "mask agreement {agree}");
    // Away from the calibration size the ranges fit less well (measured 0.159 at 320x576 with
    // the 96x128 calibration); same reasoning as above, looser bound.
    assert!(err_big.relative_l2 < 0.25, "{err_big:?}");
}

#[test]
fn cli_int8_export_writes_an_int8_bundle() {
    let w = backbone::default_weights_path(BackboneKind::MobileNetV2);
    assert!(
        w.is_file(),
        "ImageNet weights for mobilenetv2 not found at {}: run scripts/setup.sh",
        w.display()
    );
    let dir = TempDir::new("int8-cli");
    let out = dir.path().join("bundle");
    let host = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_host"))
            .args([
                "export",
                "--no-train",
                "--backbone",
                "mobilenetv2",
                "--size",
                "64x96",
                "--out",
            ])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let calib = repo_root().join("calibration");
    let calib = calib.to_str().unwrap();
    let o = host(&["--int8", "--calibration", calib]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("relative L2 error"), "{stderr}");
    let m = Manifest::read(&out).unwrap();
    assert_eq!(m.precision, "int8");
    let q = m.quantization.unwrap();
    assert_eq!(q.method, "percentile");
    assert_eq!(q.percentile, Some(quant::DEFAULT_PERCENTILE));

    fss_tests::assert_clean_error(&host(&["--int8"]), &["--int8", "--calibration"]);
    fss_tests::assert_clean_error(&host(&["--calibration", calib]), &["--int8"]);
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fss_tests::assert_clean_error(
        &host(&["--int8", "--calibration", empty.to_str().unwrap()]),
        &["--calibration", "no .jpg"],
    );
}

/// Relative L2 bound of int8 vs fp32 features at the calibration size (see the test).
const REL_L2_BOUND: f64 = 0.15;
