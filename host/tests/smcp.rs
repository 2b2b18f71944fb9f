//! SMCP end to end on fixtures: `host train --method smcp` lowers its three losses and resumes
//! the same curve after a stop; `host export` writes the head graph; `edge eval` on the bundle
//! gives the host's numbers; a damaged head graph is a one-line error. (One test: the trained
//! run is reused by the export and edge checks.)

use fss_tests::{assert_clean_error, workspace_binary, write_coco_like, write_davis_like, TempDir};
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{assert_loss_falls, host};

fn edge(args: &[&str]) -> Output {
    Command::new(workspace_binary("edge"))
        .args(args)
        .output()
        .expect("edge runs")
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn train_args<'a>(data: &'a str, out: &'a str, iterations: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--method",
        "smcp",
        "--backbone",
        "mobilenetv2",
        "--head-width",
        "32",
        "--data",
        data,
        "--out",
        out,
        "--iterations",
        iterations,
        "--size",
        "64x64",
        "--min-pixels",
        "200",
        "--seed",
        "11",
    ]
}

/// `(iteration, total, query, support, multi_class)` per iteration.
fn history(run: &Path) -> Vec<[f64; 5]> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let f = |k: &str| p[k].as_f64().unwrap();
            [
                f("iteration"),
                f("loss"),
                f("query"),
                f("support"),
                f("multi_class"),
            ]
        })
        .collect()
}

#[test]
fn smcp_trains_resumes_exports_and_runs_in_edge_with_the_hosts_results() {
    let data = TempDir::new("smcp-data");
    write_coco_like(data.path(), 16, 4, 96);
    let d = data.path().to_str().unwrap();
    let runs = TempDir::new("smcp-runs");
    let run = runs.path().join("long");
    let mut args = train_args(d, run.to_str().unwrap(), "80");
    args.extend(["--lr", "0.005", "--checkpoint-every", "40"]);
    ok(&host(&args));
    let h = history(&run);
    assert_eq!(h.len(), 80);
    let (first, last) = (&h[..20], &h[h.len() - 20..]);
    for (col, name) in [(2, "query"), (3, "support"), (4, "multi-class")] {
        let column = |rows: &[[f64; 5]]| rows.iter().map(|r| r[col]).collect::<Vec<_>>();
        assert_loss_falls(name, &column(first), &column(last));
    }
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(rec["config"]["method"], "smcp");
    assert_eq!(rec["config"]["smcp"]["variant"], "paper");
    assert_eq!(rec["config"]["lr_schedule"]["kind"], "poly");
    assert_eq!(rec["config"]["weight_decay"], 1e-4);

    // Killed after 3 iterations (checkpoint at 2), resumed: the same curve as straight through.
    let (a, b) = (runs.path().join("straight"), runs.path().join("stopped"));
    let mut args = train_args(d, a.to_str().unwrap(), "5");
    args.extend(["--checkpoint-every", "2", "--smcp-variant", "code"]);
    ok(&host(&args));
    let mut args = train_args(d, b.to_str().unwrap(), "5");
    args.extend([
        "--checkpoint-every",
        "2",
        "--smcp-variant",
        "code",
        "--stop-after",
        "3",
    ]);
    ok(&host(&args));
    let mut args = train_args(d, b.to_str().unwrap(), "5");
    args.push("--resume");
    ok(&host(&args));
    let (ha, hb) = (history(&a), history(&b));
    assert_eq!(hb.len(), 5, "{hb:?}");
    for (ra, rb) in ha.iter().zip(&hb) {
        for c in 1..5 {
            assert!(
                (ra[c] - rb[c]).abs() <= 1e-4 * ra[c].abs().max(1.0),
                "iteration {}: {:?} vs {:?}",
                ra[0],
                ra,
                rb
            );
        }
    }
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("run.json")).unwrap()).unwrap();
    assert_eq!(rec["config"]["lr_schedule"]["kind"], "constant");
    assert_eq!(rec["config"]["weight_decay"], 5e-4);

    check_export_and_edge(&run, runs.path());
}

/// Exports the run, then runs the DAVIS protocol on host (tch) and edge (tract) with the fused
/// and the support-only guidance: the same results within 0.5 J; then damages the bundle.
fn check_export_and_edge(run: &Path, scratch: &Path) {
    let bundle = scratch.join("bundle");
    let (r, b) = (run.to_str().unwrap(), bundle.to_str().unwrap());
    ok(&host(&[
        "export",
        "--checkpoint",
        r,
        "--out",
        b,
        "--size",
        "64x96",
    ]));
    let m = fss_core::bundle::Manifest::read(&bundle).unwrap();
    assert_eq!(m.method, "smcp");
    assert_eq!(m.prototype.kind, "smcp");
    let head = m.graphs.head.as_ref().expect("a head graph");
    assert_eq!(head.file, "head.onnx");
    assert_eq!(head.inputs.len(), 2);
    let info = m.head.as_ref().expect("head info");
    assert_eq!((info.width, info.passes), (32, 2));
    assert!(info.parameters > 0 && info.macs_per_pass > 0 && info.encoder_macs > 0);
    let parity = m.checks.head_parity_max_abs_diff.unwrap();
    assert!(parity < 1e-4, "head parity {parity}");

    let davis = TempDir::new("smcp-davis");
    write_davis_like(davis.path(), 2, 4, 96, 64);
    let dv = davis.path().to_str().unwrap();
    let common = [
        "--protocol",
        "davis",
        "--data",
        dv,
        "--size",
        "64x96",
        "--json",
    ];
    let mut methods = Vec::new();
    for guidance in ["fused", "support"] {
        let mut h_args = vec!["eval", "--checkpoint", r, "--smcp-guidance", guidance];
        h_args.extend(common);
        let out = host(&h_args);
        ok(&out);
        let hr: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut e_args = vec!["eval", "--bundle", b, "--smcp-guidance", guidance];
        e_args.extend(common);
        let out = edge(&e_args);
        ok(&out);
        let er: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (jh, je) = (
            hr["j_mean"].as_f64().unwrap(),
            er["j_mean"].as_f64().unwrap(),
        );
        eprintln!("{guidance}: host J {jh:.3}, edge J {je:.3}");
        assert!(
            (jh - je).abs() <= 0.5,
            "{guidance}: host J {jh} vs edge J {je}"
        );
        assert_eq!(hr["method"], er["method"]);
        methods.push(hr["method"].as_str().unwrap().to_string());
    }
    assert_eq!(methods, ["smcp", "smcp/support"]);
    let (rec, dir) = host::run::RunRecord::read(run).unwrap();
    let mut tch_model = host::eval::TchEncoder::from_run(&rec, &dir, tch::Device::Cpu, 1).unwrap();
    let mut tract_model = fss_runtime::BundleEncoder::open(&bundle).unwrap();
    two_pass_logits_agree(
        &mut tch_model,
        &mut tract_model,
        fss_core::preprocess::InputSize::new(64, 96),
    );

    // A damaged head graph or a manifest without one: one line each, naming the file.
    let head_path = bundle.join("head.onnx");
    let bytes = std::fs::read(&head_path).unwrap();
    std::fs::write(&head_path, &bytes[..bytes.len() / 2]).unwrap();
    let out = edge(&["eval", "--bundle", b, "--protocol", "davis", "--data", dv]);
    assert_clean_error(&out, &["head.onnx"]);
    std::fs::write(&head_path, &bytes).unwrap();
    let manifest_path = bundle.join("bundle.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    v["graphs"]["head"] = serde_json::Value::Null;
    std::fs::write(&manifest_path, serde_json::to_vec(&v).unwrap()).unwrap();
    let out = edge(&["eval", "--bundle", b, "--protocol", "davis", "--data", dv]);
    assert_clean_error(&out, &["bundle.json", "needs a head graph"]);
}

/// The final logits of the two-pass inference, host (tch head) vs edge (head graph in tract),
/// on the same features, one prototype per feature cell (the cell's own feature vector).
/// Returns how many of them ran a second pass.
fn two_pass_logits_agree(
    tch_model: &mut host::eval::TchEncoder,
    tract_model: &mut fss_runtime::BundleEncoder,
    size: fss_core::preprocess::InputSize,
) -> usize {
    use fss_core::model::FeatureEncoder;
    use fss_core::prototype::Prototypes;
    let input: Vec<f32> = (0..3 * size.height * size.width)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let features = tch_model
        .encode_batch(std::slice::from_ref(&input), size)
        .unwrap()
        .remove(0);
    let c = features.channels;
    let mut second_passes = 0;
    for cell in 0..features.height * features.width {
        let p: Vec<f32> = (0..c).map(|ch| features.plane(ch)[cell]).collect();
        let protos = fss_core::method::SupportState::Smcp(Prototypes {
            background: vec![0.0; c],
            foreground: vec![p.clone()],
        });
        let a = tch_model.head_logits(&protos, &features, size).unwrap();
        let b = FeatureEncoder::head_logits(tract_model, &protos, &features, size).unwrap();
        let scale = a.data.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = a.max_abs_diff(&b).unwrap();
        assert!(
            diff <= 1e-4 * scale,
            "cell {cell}: logits differ by {diff} (scale {scale})"
        );
        let Some(method_head @ host::heads::MethodHead::Smcp(_)) = &tch_model.head else {
            panic!("an SMCP model")
        };
        let mut head = host::heads::TchHead {
            head: method_head,
            device: tch::Device::Cpu,
        };
        let t =
            fss_core::smcp::two_pass(&mut head, &p, &features, size, Default::default()).unwrap();

        second_passes += t.second_pass as usize;
    }
    eprintln!(
        "two-pass logits agree on {} prototypes ({second_passes} with a second pass)",
        features.height * features.width
    );
    second_passes
}

/// A random head that calls foreground here and background there (unlike a model trained for a
/// few iterations on the fixture, which learns to say background everywhere), exported with the
/// ImageNet backbone: the two-pass logits of tch and tract agree, second passes included.
#[test]
fn two_pass_inference_agrees_between_tch_and_tract() {
    use host::backbone::BackboneKind;
    use host::cli::Method;
    use host::smcp::{SmcpHead, SmcpShape, SmcpVariant};
    tch::manual_seed(5);
    let kind = BackboneKind::MobileNetV2;
    let mut model = host::eval::TchEncoder::load(
        kind,
        Some(&host::backbone::default_weights_path(kind)),
        tch::Device::Cpu,
        1,
    )
    .unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let shape = SmcpShape {
        feature_channels: model.backbone.feature_channels(16).unwrap(),
        width: 32,
        dilations: SmcpShape::dilations_for_stride(16),
        classes: 4,
        variant: SmcpVariant::Paper,
    };
    let head = SmcpHead::new(&vs.root(), shape);
    // The paper's N(0, 0.01) init of the binary ASPP makes the biases decide everywhere. With
    // wider weights the foreground margin varies over the map around -1 (measured), so a +1
    // foreground bias makes the first pass call foreground at some cells only.
    tch::no_grad(|| {
        for (i, b) in head.binary.branches.iter().enumerate() {
            let _ = b.weight.shallow_clone().normal_(0.0, 0.2);
            if let Some(bias) = &b.bias {
                let v = if i == 0 { [0.0f32, 1.0] } else { [0.0, 0.0] };
                bias.shallow_clone().copy_(&tch::Tensor::from_slice(&v));
            }
        }
    });
    let dir = TempDir::new("smcp-random-head");
    let size = fss_core::preprocess::InputSize::new(96, 128);
    let opts = host::export::BundleOptions::new(
        Method::Smcp,
        16,
        size,
        fss_core::bundle::Provenance::default(),
    );
    let head = host::heads::MethodHead::Smcp(head);
    host::export::export_bundle_with_head(&model.backbone, Some(&head), &opts, dir.path()).unwrap();
    model.head = Some(head);
    let mut bundle = fss_runtime::BundleEncoder::open(dir.path()).unwrap();
    let second = two_pass_logits_agree(&mut model, &mut bundle, size);
    assert!(
        second > 0,
        "no prototype made the first pass find foreground"
    );
}

#[test]
fn smcp_bad_arguments_are_one_clear_line() {
    let out = host(&[
        "export",
        "--no-train",
        "--method",
        "smcp",
        "--out",
        "/tmp/never",
    ]);
    assert_clean_error(&out, &["needs a trained --checkpoint"]);
    let out = host(&[
        "eval",
        "--no-train",
        "--method",
        "smcp",
        "--protocol",
        "davis",
        "--data",
        ".",
    ]);
    assert_clean_error(&out, &["needs a trained --checkpoint"]);
    let out = host(&["train", "--method", "unet", "--out", "/tmp/never"]);
    assert_clean_error(&out, &["unknown method 'unet'", "sgone, dpnet"]);
    let out = host(&[
        "train",
        "--method",
        "sgone",
        "--head-width",
        "4",
        "--out",
        "/tmp/never",
    ]);
    assert_clean_error(&out, &["--head-width must be at least 8"]);
    let out = host(&[
        "train",
        "--method",
        "panet",
        "--freeze-backbone",
        "--out",
        "/tmp/never",
    ]);
    assert_clean_error(&out, &["--freeze-backbone", "nothing to train"]);
    let out = host(&[
        "train",
        "--method",
        "smcp",
        "--head-width",
        "4",
        "--out",
        "/tmp/never",
    ]);
    assert_clean_error(&out, &["--head-width must be at least 8"]);
}
