//! Export tests: the ONNX graphs written from Rust agree with tch in tract (pinned and symbolic
//! shapes) and in onnxruntime, pass `onnx.checker.check_model(full_check=True)`, and `host
//! export` writes a bundle the edge manifest reader accepts.
//!
//! The ImageNet backbones need the converted weights in `weights/` and the onnxruntime check
//! needs the venv's python (`.venv/bin/python` with onnx and onnxruntime); both come from
//! `scripts/setup.sh`, and the tests fail, not skip, without them.

use std::path::Path;
use std::process::Command;

use fss_core::bundle::{sha256_file, Dim, Manifest};
use fss_tests::{assert_clean_error, write_coco_like, TempDir};
use host::backbone::{self, Backbone, BackboneKind, BackboneOptions};
use host::export;
use host::layers::{
    self, Activation, BatchNorm2d, Conv2d, Conv2dConfig, ConvBnAct, Layer, Padding, Scope,
};
use host::onnx;
use tch::{nn, Device, Kind, Tensor};

mod common;
use common::{det, host, repo_root, venv_python, weights};

/// `scripts/onnx_check.py`: the full ONNX checker, then onnxruntime on `input` compared with
/// `expected`. Returns the max abs diff it reports; panics on any failure.
fn onnx_check(
    model: &Path,
    shape: &[usize],
    input: &[f32],
    expected: &(Vec<usize>, Vec<f32>),
) -> f64 {
    let dir = model.parent().unwrap();
    let tag = format!("{}x{}", shape[2], shape[3]);
    let x = dir.join(format!("input-{tag}.npy"));
    let y = dir.join(format!("expected-{tag}.npy"));
    host::npy::write_f32(&x, shape, input).unwrap();
    host::npy::write_f32(&y, &expected.0, &expected.1).unwrap();
    let out = Command::new(venv_python())
        .arg(repo_root().join("scripts/onnx_check.py"))
        .args([model, &x, &y])
        .output()
        .expect("the venv python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "onnx_check.py failed on {}:\n{stdout}\n{stderr}",
        model.display()
    );
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["checker"], "ok", "{stdout}");
    assert_eq!(
        v["inputs"]["image"],
        serde_json::json!([1, shape[1], "H", "W"]),
        "{stdout}"
    );
    v["max_abs_diff"].as_f64().unwrap()
}

/// Exports `bb` up to `stride`, then at each size: tch vs tract (pinned), tch vs onnxruntime,
/// and at the first size tch vs tract with symbolic H, W. Every diff must be below `tol`.
fn check_backbone(bb: &Backbone, stride: i64, sizes: &[(usize, usize)], tol: f64) {
    let dir = TempDir::new(&format!("export-{}", bb.kind()));
    let path = dir.path().join("encoder.onnx");
    let spec = export::export_encoder(bb, stride, &path).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(spec.file, "encoder.onnx");
    assert_eq!(spec.sha256, sha256_file(&path).unwrap());
    let channels = bb.feature_channels(stride).unwrap() as usize;
    assert_eq!(
        spec.outputs[0].shape,
        vec![
            Dim::Fixed(1),
            Dim::Fixed(channels),
            Dim::Symbol("h".into()),
            Dim::Symbol("w".into())
        ]
    );
    for (i, &(h, w)) in sizes.iter().enumerate() {
        let input = export::seeded_input(h, w, 7 + i as u64);
        let want = export::tch_features(bb, stride, &input, h, w).unwrap();
        let (sh, sw) = (h.div_ceil(stride as usize), w.div_ceil(stride as usize));
        let got =
            export::tract_run(&path, &input, &[1, 3, h, w]).unwrap_or_else(|e| panic!("{e:#}"));
        let d_tract = export::max_abs_diff(&want, &got).unwrap();
        let scale = want.1.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d_ort = onnx_check(&path, &[1, 3, h, w], &input, &want);
        let d_sym = if i == 0 {
            let sym =
                export::tract_run_symbolic(&path, &input, h, w).unwrap_or_else(|e| panic!("{e:#}"));
            Some(export::max_abs_diff(&want, &sym).unwrap())
        } else {
            None
        };
        println!(
            "parity {} s{stride} {h}x{w} -> {:?} (max |x| {scale:.2}): tch vs tract {d_tract:.3e}, tch vs tract symbolic {}, tch vs onnxruntime {d_ort:.3e}",
            bb.kind(),
            want.0,
            d_sym.map(|d| format!("{d:.3e}")).unwrap_or_else(|| "-".into()),
        );
        if bb.kind() != BackboneKind::Vgg16Panet {
            assert_eq!(want.0, vec![1, channels, sh, sw], "tch output shape");
        }
        assert!(
            d_tract < tol,
            "{} {h}x{w}: tch vs tract {d_tract:e}",
            bb.kind()
        );
        assert!(
            d_ort < tol,
            "{} {h}x{w}: tch vs onnxruntime {d_ort:e}",
            bb.kind()
        );
        if let Some(d) = d_sym {
            assert!(
                d < tol,
                "{} {h}x{w}: tch vs tract (symbolic H, W) {d:e}",
                bb.kind()
            );
        }
    }
}

#[test]
fn efficientnet_lite0_encoder_matches_tch() {
    let kind = BackboneKind::EfficientNetLite0;
    let bb = backbone::load(kind, &weights(kind), Device::Cpu).unwrap();
    // 320x576: the bundle default; 100x140: not multiples of 16 (asymmetric SAME padding,
    // both parities of the intermediate sizes).
    check_backbone(&bb, 16, &[(320, 576), (100, 140)], 1e-4);
}

#[test]
fn mobilenetv2_encoder_matches_tch() {
    let kind = BackboneKind::MobileNetV2;
    let bb = backbone::load(kind, &weights(kind), Device::Cpu).unwrap();
    check_backbone(&bb, 16, &[(320, 576), (100, 140)], 1e-4);
}

#[test]
fn vgg16_encoder_matches_tch() {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let bb = Backbone::new(
        &vs.root(),
        BackboneKind::Vgg16Panet,
        BackboneOptions::default(),
    )
    .unwrap();
    let stride = export::encoder_stride(BackboneKind::Vgg16Panet);
    assert_eq!(stride, 8);
    check_backbone(&bb, stride, &[(64, 80), (50, 70)], 1e-4);
}

/// A single depthwise ConvBnAct with BatchNorm statistics far from identity, ReLU6, stride 2,
/// TF "SAME" padding: the BN folding, the Clip and `SAME_UPPER` against tch.
#[test]
fn conv_bn_relu6_depthwise_tf_same_layer_matches_tch() {
    for kernel in [3i64, 5] {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = Scope::root(&vs.root());
        let c = 8;
        let cfg = Conv2dConfig::new(c, c, kernel)
            .stride(2)
            .padding(Padding::TfSame)
            .depthwise();
        let conv = Conv2d::new(&root.sub("conv"), cfg);
        let bn = BatchNorm2d::new(&root.sub("bn"), c, 1e-3, 0.01);
        tch::no_grad(|| {
            let wshape = conv.weight.size();
            conv.weight
                .shallow_clone()
                .copy_(&det(&wshape, 1 + kernel as u32, 1.2, 0.05));
            bn.weight.shallow_clone().copy_(&det(&[c], 2, 2.0, 1.5));
            bn.bias.shallow_clone().copy_(&det(&[c], 3, 1.0, 0.0));
            bn.running_mean
                .shallow_clone()
                .copy_(&det(&[c], 4, 0.6, 0.0));
            bn.running_var
                .shallow_clone()
                .copy_(&det(&[c], 5, 3.0, 1.55));
        });
        let layer = Layer::ConvBnAct(ConvBnAct {
            conv,
            bn: Some(bn),
            act: Activation::Relu6,
        });
        let model = layers::layers_model(
            std::slice::from_ref(&layer),
            c as usize,
            c as usize,
            "image",
            "features",
            "one layer",
        )
        .unwrap();
        let dir = TempDir::new("export-layer");
        let path = dir.path().join("layer.onnx");
        export::write_model(&model, &path).unwrap();
        // Even and odd sizes: the odd pixel of SAME padding goes to the bottom/right.
        for (h, w) in [(16usize, 20usize), (17, 23), (9, 12)] {
            let x = det(&[1, c, h as i64, w as i64], (h * 100 + w) as u32, 8.0, 0.0);
            let input = onnx::tensor_f32(&x).unwrap();
            let y = tch::no_grad(|| layer.forward(&x, false));
            let want = (
                y.size().iter().map(|&d| d as usize).collect::<Vec<_>>(),
                onnx::tensor_f32(&y).unwrap(),
            );
            assert_eq!(want.0, vec![1, c as usize, h.div_ceil(2), w.div_ceil(2)]);
            let clipped = want.1.iter().filter(|&&v| v == 6.0).count();
            assert!(clipped > 0, "the test input should reach the ReLU6 ceiling");
            let got = export::tract_run(&path, &input, &[1, c as usize, h, w])
                .unwrap_or_else(|e| panic!("{e:#}"));
            let d = export::max_abs_diff(&want, &got).unwrap();
            let d_ort = onnx_check(&path, &[1, c as usize, h, w], &input, &want);
            println!(
                "layer k{kernel} s2 {h}x{w}: tch vs tract {d:.3e}, tch vs onnxruntime {d_ort:.3e}"
            );
            assert!(d < 1e-5, "k{kernel} {h}x{w}: tch vs tract {d:e}");
            assert!(
                d_ort < 1e-5,
                "k{kernel} {h}x{w}: tch vs onnxruntime {d_ort:e}"
            );
        }
        // The check has teeth: the padding shifted by one pixel (SAME_LOWER) is far off.
        let mut shifted = model.clone();
        let conv = &mut shifted.graph.as_mut().unwrap().node[0];
        let pad = conv
            .attribute
            .iter_mut()
            .find(|a| a.name == "auto_pad")
            .expect("stride-2 SAME conv uses auto_pad");
        pad.s = b"SAME_LOWER".to_vec();
        let lower = dir.path().join("lower.onnx");
        export::write_model(&shifted, &lower).unwrap();
        let x = Tensor::randn([1, c, 16, 20], (Kind::Float, Device::Cpu));
        let input = onnx::tensor_f32(&x).unwrap();
        let y = tch::no_grad(|| layer.forward(&x, false));
        let want = (vec![1, c as usize, 8, 10], onnx::tensor_f32(&y).unwrap());
        let got = export::tract_run(&lower, &input, &[1, c as usize, 16, 20]).unwrap();
        assert!(
            export::max_abs_diff(&want, &got).unwrap() > 1e-2,
            "a half-pixel shift went unnoticed"
        );
    }
}

#[test]
fn graph_builder_names_are_unique_and_outputs_renamed() {
    let mut g = onnx::GraphBuilder::new("g");
    let x = g
        .input(
            "image",
            &[
                Dim::Fixed(1),
                Dim::Fixed(3),
                Dim::Symbol("H".into()),
                Dim::Symbol("W".into()),
            ],
        )
        .unwrap();
    assert!(g.input("image", &[]).is_err());
    let a = g.node("Relu", "r", &[&x], vec![]);
    let b = g.node("Relu", "r", &[&a], vec![]);
    assert_ne!(a, b);
    let s1 = g.scalar_f32("c", 6.0).unwrap();
    let s2 = g.scalar_f32("c", 6.0).unwrap();
    assert_eq!(s1, s2);
    g.output(&b, "features", &[Dim::Fixed(1)]).unwrap();
    let graph = g.into_graph();
    assert_eq!(
        graph.node.last().unwrap().output,
        vec!["features".to_string()]
    );
    assert_eq!(graph.output[0].name, "features");
    assert_eq!(graph.initializer.len(), 1);
    assert_eq!(graph.initializer[0].raw_data, 6f32.to_le_bytes().to_vec());
}

// ---- the `host export` command --------------------------------------------------------------

fn assert_bundle(dir: &Path, backbone: &str, channels: usize) -> Manifest {
    let m = Manifest::read(dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.format, fss_core::bundle::BUNDLE_FORMAT);
    assert_eq!(m.method, "panet");
    assert_eq!(m.backbone, backbone);
    assert_eq!(m.precision, "fp32");
    assert_eq!(m.feature.stride, 16);
    assert_eq!(m.feature.channels, channels);
    assert!(m.graphs.head.is_none());
    let enc = &m.graphs.encoder;
    assert_eq!(enc.file, "encoder.onnx");
    assert_eq!(
        enc.sha256,
        sha256_file(&dir.join(&enc.file)).unwrap(),
        "manifest sha256 vs file"
    );
    assert_eq!(enc.inputs[0].name, "image");
    assert_eq!(
        enc.inputs[0].shape,
        vec![
            Dim::Fixed(1),
            Dim::Fixed(3),
            Dim::Symbol("H".into()),
            Dim::Symbol("W".into())
        ]
    );
    assert_eq!(enc.outputs[0].name, "features");
    let parity = m.checks.parity_max_abs_diff.expect("parity recorded");
    assert!(parity < 1e-4, "{parity}");
    assert_eq!(m.prototype.kind, "panet");
    assert_eq!(m.prototype.scale, 20.0);
    assert_eq!(m.resize.mode, "stretch");
    assert!(
        m.provenance.created.ends_with('Z') && m.provenance.created.len() == 20,
        "{}",
        m.provenance.created
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    m
}

#[test]
fn export_command_writes_a_bundle_from_a_trained_run() {
    let data = TempDir::new("export-data");
    write_coco_like(data.path(), 12, 4, 96);
    let work = TempDir::new("export-run");
    let run = work.path().join("run");
    let (d, r) = (data.path().to_str().unwrap(), run.to_str().unwrap());
    let out = host(&[
        "train",
        "--method",
        "panet",
        "--backbone",
        "mobilenetv2",
        "--data",
        d,
        "--out",
        r,
        "--iterations",
        "2",
        "--size",
        "64x64",
        "--min-pixels",
        "200",
        "--checkpoint-every",
        "2",
        "--seed",
        "5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A metric check from an eval report line.
    let mut report =
        fss_core::report::EvalReport::new("coco", d, "panet", "mobilenetv2", [96, 128], "fp32", 1);
    report.miou = Some(12.5);
    report.fb_iou = Some(40.0);
    let checks = work.path().join("eval.jsonl");
    std::fs::write(&checks, format!("{}\n\n", report.to_json_line())).unwrap();

    let bundle = work.path().join("bundle");
    let b = bundle.to_str().unwrap();
    let out = host(&[
        "export",
        "--checkpoint",
        r,
        "--out",
        b,
        "--size",
        "96x128",
        "--checks-from",
        checks.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let m = assert_bundle(&bundle, "mobilenetv2", 96);
    assert_eq!((m.input.height, m.input.width), (96, 128));
    assert_eq!(m.input.mean, [0.485, 0.456, 0.406]);
    assert_eq!(m.provenance.data, d);
    assert_eq!(m.provenance.fold, Some(0));
    assert_eq!(m.provenance.iterations, 2);
    assert_eq!(m.provenance.seed, Some(5));
    // The run as a portable path (its folder and run.json), not this machine's layout.
    assert!(
        m.provenance.source.ends_with("/run.json") && !m.provenance.source.starts_with('/'),
        "{}",
        m.provenance.source
    );
    assert_eq!(m.checks.metrics.len(), 1);
    assert_eq!(m.checks.metrics[0].miou, Some(12.5));
    assert_eq!(m.checks.metrics[0].measured_by, "host eval");
    assert_eq!(m.checks.metrics[0].size, [96, 128]);

    // Re-exporting the same checkpoint gives a byte-identical bundle: SOURCE_DATE_EPOCH fixes
    // the one time stamp (`provenance.created`); everything else comes from the checkpoint.
    let export_at = |dir: &Path, epoch: &str| {
        Command::new(env!("CARGO_BIN_EXE_host"))
            .env("SOURCE_DATE_EPOCH", epoch)
            .args(["export", "--checkpoint", r, "--size", "96x128", "--out"])
            .arg(dir)
            .output()
            .expect("host runs")
    };
    let (again, twice) = (work.path().join("again"), work.path().join("twice"));
    for dir in [&again, &twice] {
        let out = export_at(dir, "1700000000");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let files = |dir: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    assert_eq!(files(&again), files(&twice));
    for name in files(&again) {
        assert!(
            std::fs::read(again.join(&name)).unwrap() == std::fs::read(twice.join(&name)).unwrap(),
            "{name:?} differs between two exports of the same checkpoint"
        );
    }
    let m = Manifest::read(&again).unwrap();
    assert_eq!(m.provenance.created, "2023-11-14T22:13:20Z");
    let out = export_at(&work.path().join("bad-epoch"), "yesterday");
    fss_tests::assert_clean_error(&out, &["SOURCE_DATE_EPOCH", "yesterday"]);

    // The bundle's encoder on the trained weights: tract at another size agrees with tch.
    let vs = nn::VarStore::new(Device::Cpu);
    let bb = Backbone::new(
        &vs.root(),
        BackboneKind::MobileNetV2,
        BackboneOptions::default(),
    )
    .unwrap();
    let (rec, dir) = host::run::RunRecord::read(&run).unwrap();
    bb.load_weights(&rec.model_path(&dir)).unwrap();
    let p = export::parity(&bb, 16, &bundle.join("encoder.onnx"), 72, 100, 3).unwrap();
    assert!(p.max_abs_diff < 1e-4, "{p:?}");

    // A report of another backbone is refused, naming the file and line.
    let mut other = report.clone();
    other.backbone = "efficientnet-lite0".into();
    std::fs::write(
        &checks,
        format!("{}\n{}\n", report.to_json_line(), other.to_json_line()),
    )
    .unwrap();
    let out = host(&[
        "export",
        "--checkpoint",
        r,
        "--out",
        b,
        "--size",
        "64x64",
        "--checks-from",
        checks.to_str().unwrap(),
    ]);
    assert_clean_error(&out, &["eval.jsonl:2", "efficientnet-lite0"]);
    std::fs::write(&checks, "{not json\n").unwrap();
    let out = host(&[
        "export",
        "--checkpoint",
        r,
        "--out",
        b,
        "--checks-from",
        checks.to_str().unwrap(),
    ]);
    assert_clean_error(&out, &["eval.jsonl:1"]);
    // The bundle is untouched by the failed runs.
    assert_bundle(&bundle, "mobilenetv2", 96);

    // --backbone must agree with the run.
    let out = host(&[
        "export",
        "--checkpoint",
        r,
        "--backbone",
        "efficientnet-lite0",
        "--out",
        b,
    ]);
    assert_clean_error(&out, &["efficientnet-lite0", "mobilenetv2"]);
}

#[test]
fn export_command_no_train_imagenet_backbone() {
    let kind = BackboneKind::EfficientNetLite0;
    weights(kind);
    let work = TempDir::new("export-notrain");
    let bundle = work.path().join("b");
    let out = host(&[
        "export",
        "--no-train",
        "--backbone",
        "efficientnet-lite0",
        "--out",
        bundle.to_str().unwrap(),
        "--size",
        "80x112",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = assert_bundle(&bundle, "efficientnet-lite0", 112);
    assert_eq!(m.provenance.data, "imagenet");
    assert_eq!(m.provenance.fold, None);
    assert_eq!(m.input.mean, [0.498; 3]);
    let source = &m.provenance.source;
    assert!(
        source.ends_with("efficientnet-lite0.safetensors") && !source.starts_with('/'),
        "{source}"
    );
}

#[test]
fn export_command_bad_inputs_are_one_clear_line() {
    let work = TempDir::new("export-bad");
    let out_dir = work.path().join("bundle");
    let o = out_dir.to_str().unwrap();
    let out = host(&["export", "--checkpoint", "/nonexistent/run", "--out", o]);
    assert_clean_error(&out, &["/nonexistent/run"]);
    let out = host(&[
        "export",
        "--no-train",
        "--backbone",
        "resnet9000",
        "--out",
        o,
    ]);
    assert_clean_error(&out, &["resnet9000"]);
    let file = work.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = host(&[
        "export",
        "--no-train",
        "--backbone",
        "mobilenetv2",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_clean_error(&out, &["a-file", "is a file"]);
    let out = host(&["export", "--out", o]);
    assert_clean_error(&out, &["--checkpoint", "--no-train"]);
    let out = host(&["export", "--no-train", "--backbone", "vgg16", "--out", o]);
    assert_clean_error(&out, &["vgg16", "--weights"]);
    let out = host(&[
        "export",
        "--no-train",
        "--backbone",
        "mobilenetv2",
        "--weights",
        "/nonexistent/w.safetensors",
        "--out",
        o,
    ]);
    assert_clean_error(&out, &["/nonexistent/w.safetensors"]);
    let out = host(&[
        "export",
        "--no-train",
        "--backbone",
        "mobilenetv2",
        "--out",
        o,
        "--checks-measured-by",
        "me",
    ]);
    assert_clean_error(&out, &["--checks-measured-by"]);
    let run = work.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("run.json"), b"{}").unwrap();
    let out = host(&["export", "--checkpoint", run.to_str().unwrap(), "--out", o]);
    assert_clean_error(&out, &["run.json"]);
    assert!(!out_dir.exists(), "nothing written on errors");
}
