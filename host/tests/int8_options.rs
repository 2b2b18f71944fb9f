//! Int8 export options on fixtures only (no weights, no datasets): a randomly initialised
//! (seeded) EfficientNet-Lite0 calibrated on `tests/fixtures/photos` at 64x96.
//!
//! - `--fp32-layers` / `--fp32-auto`: the named and the most sensitive convs are plain `Conv`
//!   nodes in the written graph, every other dense/pointwise conv is a `QLinearConv`, and the
//!   manifest records the mix (precision, reason, sensitivity of every conv).
//! - The calibration methods give ranges inside the min-max ones on the same activations.
//! - The host's int8 simulation (used for the per-layer sensitivity) computes what the ONNX
//!   graph computes in tract.
//! - Bad int8 inputs end in one clear error line.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use fss_core::bundle::Manifest;
use fss_core::preprocess::InputSize;
use fss_tests::TempDir;
use host::backbone::{Backbone, BackboneKind, BackboneOptions};
use host::cli::Method;
use host::export::{self, quant, BundleOptions};
use prost::Message;
use tch::{nn, Device};

const SIZE: InputSize = InputSize {
    height: 64,
    width: 96,
};

fn photos() -> PathBuf {
    fss_tests::workspace_root().join("tests/fixtures/photos")
}

/// A seeded random EfficientNet-Lite0 (no weight file needed).
fn random_effl0() -> (nn::VarStore, Backbone) {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let bb = Backbone::new(
        &vs.root(),
        BackboneKind::EfficientNetLite0,
        BackboneOptions::default(),
    )
    .unwrap();
    (vs, bb)
}

fn opts(q: quant::Int8Options) -> BundleOptions {
    let stride = export::encoder_stride(BackboneKind::EfficientNetLite0);
    let prov = fss_core::bundle::Provenance {
        data: "random".into(),
        ..Default::default()
    };
    let mut o = BundleOptions::new(Method::Panet, stride, SIZE, prov);
    o.int8 = Some(q);
    o
}

fn graph(path: &Path) -> tract_onnx::pb::GraphProto {
    let bytes = std::fs::read(path).unwrap();
    tract_onnx::pb::ModelProto::decode(bytes.as_slice())
        .unwrap()
        .graph
        .unwrap()
}

/// The conv whose weight initializer a `Conv` / `QLinearConv` node reads: `<name>.weight` or
/// `<name>.weight_q`.
fn conv_nodes(g: &tract_onnx::pb::GraphProto) -> (HashSet<String>, HashSet<String>) {
    let (mut fp32, mut int8) = (HashSet::new(), HashSet::new());
    for n in &g.node {
        match n.op_type.as_str() {
            "Conv" => {
                fp32.insert(n.input[1].trim_end_matches(".weight").to_string());
            }
            "QLinearConv" => {
                int8.insert(n.input[3].trim_end_matches(".weight_q").to_string());
            }
            _ => {}
        }
    }
    (fp32, int8)
}

/// The fixture photos prepared for `bb` at [`SIZE`].
fn photo_inputs(bb: &Backbone) -> Vec<Vec<f32>> {
    quant::calibration_images(&photos())
        .unwrap()
        .iter()
        .map(|p| quant::prepared_image(bb, p, SIZE).unwrap())
        .collect()
}

/// The convs the manifest records at `precision`.
fn precision_set(q: &fss_core::bundle::Quantization, precision: &str) -> HashSet<String> {
    q.layers
        .iter()
        .filter(|l| l.precision == precision)
        .map(|l| l.name.clone())
        .collect()
}

#[test]
fn fp32_layers_and_auto_choice_are_honoured_in_the_graph_and_recorded() {
    let (_vs, bb) = random_effl0();
    let dir = TempDir::new("int8-fp32-layers");
    let keep = "_blocks.1._expand_conv".to_string();
    let mut q = quant::Int8Options::new(photos());
    q.method = quant::CalibrationMethod::Percentile(99.9);
    q.fp32_layers = vec![keep.clone()];
    q.fp32_auto = 2;
    let m = export::export_bundle(&bb, &opts(q), dir.path()).unwrap();
    assert_eq!(m.precision, "int8");
    let rec = m.quantization.as_ref().unwrap();
    assert_eq!(rec.method, "percentile");
    assert_eq!(rec.percentile, Some(99.9));
    assert!(
        rec.calibration.ends_with("(3 images)"),
        "{}",
        rec.calibration
    );

    // EfficientNet-Lite0 up to stride 16: stem, 11 depthwise, 11 projections, 10 expansions.
    assert_eq!(rec.layers.len(), 33);
    let by: BTreeMap<&str, &fss_core::bundle::QuantizedLayer> =
        rec.layers.iter().map(|l| (l.name.as_str(), l)).collect();
    let reason = |r: &str| {
        rec.layers
            .iter()
            .filter(|l| l.reason.as_deref() == Some(r))
            .map(|l| l.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(reason("depthwise").len(), 11);
    assert_eq!(reason("--fp32-layers"), vec![keep.clone()]);
    let auto = reason("--fp32-auto");
    assert_eq!(auto.len(), 2, "{auto:?}");
    // The auto choice is the two most sensitive dense/pointwise convs besides the named one.
    let mut ranked: Vec<_> = rec
        .layers
        .iter()
        .filter(|l| l.kind != "depthwise" && l.name != keep)
        .collect();
    ranked.sort_by(|a, b| b.rel_l2_alone.total_cmp(&a.rel_l2_alone));
    let top: Vec<String> = ranked[..2].iter().map(|l| l.name.clone()).collect();
    assert_eq!(auto.iter().collect::<HashSet<_>>(), top.iter().collect());
    assert!(rec.layers.iter().all(|l| l.rel_l2_alone.is_finite()));
    assert_eq!(by[keep.as_str()].precision, "fp32");
    assert_eq!(by["_conv_stem"].kind, "dense");

    // The written graph has exactly that mix.
    let (fp32, int8) = conv_nodes(&graph(&dir.path().join(export::ENCODER_FILE)));
    let (want_fp32, want_int8) = (precision_set(rec, "fp32"), precision_set(rec, "int8"));
    assert_eq!(fp32, want_fp32);
    assert_eq!(int8, want_int8);
    assert_eq!(int8.len(), 33 - 11 - 1 - 2);
    assert_eq!(
        rec.layers_fp32.iter().cloned().collect::<HashSet<_>>(),
        want_fp32
    );
    // The last conv (block 10's projection) is int8 and is the output: its step is recorded.
    assert!(rec.output_step.is_some_and(|s| s > 0.0));
    let measured = rec.measured.as_ref().unwrap();
    assert!(measured.tract_rel_l2.is_finite() && measured.simulated_rel_l2.is_finite());
    // The reader accepts what was written (floats compared as written: serde_json's default
    // float parsing may differ in the last digit).
    let back = Manifest::read(dir.path()).unwrap().quantization.unwrap();
    let mix = |q: &fss_core::bundle::Quantization| {
        q.layers
            .iter()
            .map(|l| (l.name.clone(), l.precision.clone(), l.reason.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(mix(&back), mix(rec));
    assert_eq!(back.layers_fp32, rec.layers_fp32);
}

#[test]
fn calibration_methods_clip_inside_the_minmax_ranges() {
    let (_vs, bb) = random_effl0();
    let images = photo_inputs(&bb);
    let layers = bb.layers_to(16).unwrap();
    let ranges = |m| {
        quant::calibrate(&bb, layers, &images, SIZE, m)
            .unwrap()
            .ranges()
    };
    let minmax = ranges(quant::CalibrationMethod::MinMax);
    let pct = ranges(quant::CalibrationMethod::Percentile(99.0));
    let mse = ranges(quant::CalibrationMethod::Mse);
    assert_eq!(minmax.len(), 33);
    let inside = |r: quant::Range, outer: quant::Range| {
        // Bin edges are computed in f32 from the min-max range: allow one ulp-sized slack.
        let eps = 1e-6 * (outer.max - outer.min).abs().max(1.0);
        r.min >= outer.min - eps && r.max <= outer.max + eps && r.min <= r.max
    };
    let mut clipped = 0;
    for (name, mm) in &minmax {
        for (r, o, what) in [
            (pct[name].input, mm.input, "percentile input"),
            (pct[name].output, mm.output, "percentile output"),
            (mse[name].input, mm.input, "mse input"),
            (mse[name].output, mm.output, "mse output"),
        ] {
            assert!(inside(r, o), "{name} {what}: {r:?} not inside {o:?}");
            clipped += (r.max < o.max || r.min > o.min) as usize;
        }
    }
    // Real photos through a random net have long tails: most ranges get clipped.
    assert!(clipped > 33, "only {clipped} of 132 ranges clipped");
}

/// The seeded random net has near-vanishing activations deep down (output steps ~1e-9), where
/// f32 rounding noise is of the size of the quantization error itself: this check loads the
/// ImageNet weights from set-up instead.
#[test]
fn simulated_int8_computes_what_tract_runs() {
    let (vs, bb) = random_effl0();
    let w = host::backbone::default_weights_path(BackboneKind::EfficientNetLite0);
    assert!(
        w.is_file(),
        "ImageNet weights not found at {}: run scripts/setup.sh",
        w.display()
    );
    bb.load_weights(&w).unwrap();
    let _vs = vs;
    let dir = TempDir::new("int8-sim");
    let m =
        export::export_bundle(&bb, &opts(quant::Int8Options::new(photos())), dir.path()).unwrap();
    let rec = m.quantization.unwrap();
    let step = rec.output_step.unwrap() as f64;
    // The same calibration, quantized convs and mix, simulated in tch.
    let images = photo_inputs(&bb);
    let layers = bb.layers_to(16).unwrap();
    let cal = quant::calibrate(&bb, layers, &images, SIZE, quant::DEFAULT_METHOD).unwrap();
    let qc = quant::quantize_convs(layers, &cal.ranges()).unwrap();
    let int8 = precision_set(&rec, "int8");
    let x = tch::Tensor::from_slice(&images[1]).view([1, 3, 64, 96]);
    let sim = quant::simulated_forward(layers, &x, &qc, &int8);
    let sim = (
        sim.size().iter().map(|&d| d as usize).collect::<Vec<_>>(),
        Vec::<f32>::try_from(&sim.flatten(0, -1)).unwrap(),
    );
    let got = export::tract_run(
        &dir.path().join(export::ENCODER_FILE),
        &images[1],
        &[1, 3, 64, 96],
    )
    .unwrap();
    let fp32 = export::tch_features(&bb, 16, &images[1], 64, 96).unwrap();
    let d = export::max_abs_diff(&sim, &got).unwrap();
    let e = quant::feature_error(&fp32, &got).unwrap();
    let e_sim = quant::feature_error(&sim, &got).unwrap();
    eprintln!(
        "simulation vs tract: max abs diff {d:.3e} ({:.2} output steps), relative L2 {:.2e}; \
         tract int8 vs fp32 relative L2 {:.4}",
        d / step,
        e_sim.relative_l2,
        e.relative_l2
    );
    // f32 accumulation in the simulation vs int32 in QLinearConv can move a value across a
    // rounding boundary, which shifts it by one step and propagates a little; a wrong scale,
    // zero point, bias or layout is a different computation (errors of the size of the
    // features). The simulation's error must be far below the quantization error itself.
    // Measured with the ImageNet weights: bit-identical (0 steps) on an AVX2 machine, 1.0000013
    // steps on an AVX-512 one. The gate is one output step plus the f32 rounding of the two
    // dequantized values being compared: each of `q * scale` is rounded to within half an ulp,
    // so together they may sit up to `f32::EPSILON * max|value|` further apart than the step.
    let max_abs = sim
        .1
        .iter()
        .chain(&got.1)
        .fold(0f64, |m, v| m.max(v.abs() as f64));
    let gate = step + f32::EPSILON as f64 * max_abs;
    assert!(
        d <= gate,
        "simulation vs tract: {d} > one output step {step} + f32 rounding of values up to {max_abs} \
         (gate {gate})"
    );
    assert!(
        e_sim.relative_l2 < 0.1 * e.relative_l2,
        "{e_sim:?} vs {e:?}"
    );
    assert!(e.relative_l2 > 0.0);
}

/// `host export --no-train` of EfficientNet-Lite0 at 64x96 with `weights` (which need not
/// exist when the options are refused first) and `extra` flags.
fn host_export(out: &Path, weights: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_host"))
        .args([
            "export",
            "--no-train",
            "--backbone",
            "efficientnet-lite0",
            "--weights",
            weights,
            "--size",
            "64x96",
            "--out",
        ])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn int8_option_errors_are_one_line() {
    let dir = TempDir::new("int8-errors");
    let out = dir.path().join("bundle");
    let photos = photos();
    let p = photos.to_str().unwrap();
    for (args, needles) in [
        (
            vec!["--calibration-method", "mse"],
            vec!["--calibration-method", "--int8"],
        ),
        (
            vec!["--fp32-layers", "_conv_stem"],
            vec!["--fp32-layers", "--int8"],
        ),
        (
            vec![
                "--int8",
                "--calibration",
                p,
                "--calibration-method",
                "mse",
                "--percentile",
                "99",
            ],
            vec!["--percentile", "--calibration-method percentile"],
        ),
        (
            vec![
                "--int8",
                "--calibration",
                p,
                "--calibration-method",
                "percentile",
                "--percentile",
                "30",
            ],
            vec!["--percentile 30", "(50, 100]"],
        ),
    ] {
        let o = host_export(&out, "/nonexistent/weights.safetensors", &args);
        fss_tests::assert_clean_error(&o, &needles);
    }
}

/// Errors that need the calibration to start: a random-weight file is written first.
#[test]
fn bad_calibration_inputs_are_one_line_errors() {
    let dir = TempDir::new("int8-bad-calib");
    let (vs, _bb) = random_effl0();
    let weights = dir.path().join("random.safetensors");
    vs.save(&weights).unwrap();
    let out = dir.path().join("bundle");
    let w = weights.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--int8", "--calibration"];
        args.extend_from_slice(extra);
        host_export(&out, w, &args)
    };
    let missing = dir.path().join("no-such-folder");
    fss_tests::assert_clean_error(
        &run(&[missing.to_str().unwrap()]),
        &["--calibration", "no such folder"],
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fss_tests::assert_clean_error(
        &run(&[empty.to_str().unwrap()]),
        &["--calibration", "no .jpg"],
    );
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::copy(photos().join("zebra.jpg"), corrupt.join("a.jpg")).unwrap();
    std::fs::write(corrupt.join("b.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    fss_tests::assert_clean_error(
        &run(&[corrupt.to_str().unwrap()]),
        &["--calibration", "b.jpg"],
    );
    let p = photos();
    fss_tests::assert_clean_error(
        &run(&[
            p.to_str().unwrap(),
            "--fp32-layers",
            "_blocks.99._expand_conv",
        ]),
        &["--fp32-layers _blocks.99._expand_conv", "no such conv"],
    );
    assert!(!out.join("bundle.json").exists());
}
