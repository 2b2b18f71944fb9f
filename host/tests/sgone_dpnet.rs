//! SG-One and DPNet end to end on fixtures, one test per method: `host train` lowers the loss
//! and resumes the same curve after a stop; `host export` writes the head graph; the head's
//! prototypes and logits agree between tch and tract on the same features; `edge eval` on the
//! bundle gives the host's numbers (DAVIS one-shot, COCO two-shot); a damaged head graph is a
//! one-line error. SG-One's `code` variant trains and is refused by export with a reason; a
//! DPNet target added for `edge run` keeps its support memory and live frames are segmented.

use fss_core::model::FeatureEncoder;
use fss_core::prototype::SupportShot;
use fss_core::tensor::Mask;
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

fn train_args<'a>(method: &'a str, data: &'a str, out: &'a str, its: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--method",
        method,
        "--backbone",
        "mobilenetv2",
        "--head-width",
        "32",
        "--data",
        data,
        "--out",
        out,
        "--iterations",
        its,
        "--size",
        "64x64",
        "--min-pixels",
        "200",
        "--seed",
        "13",
    ]
}

/// `(iteration, loss, query, aux)` per iteration.
fn history(run: &Path) -> Vec<[f64; 4]> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let f = |k: &str| p[k].as_f64().unwrap();
            [f("iteration"), f("loss"), f("query"), f("aux")]
        })
        .collect()
}

/// Trains 80 iterations (the losses go down), then checks that a run stopped at 3 and resumed
/// follows the same curve as a straight one. Returns the 80-iteration run.
fn train_and_resume(
    method: &str,
    data: &str,
    runs: &Path,
    losses: &[(usize, &str)],
) -> std::path::PathBuf {
    let run = runs.join("long");
    let mut args = train_args(method, data, run.to_str().unwrap(), "80");
    args.extend(["--lr", "0.005", "--checkpoint-every", "40"]);
    ok(&host(&args));
    let h = history(&run);
    assert_eq!(h.len(), 80);
    let (first, last) = (&h[..20], &h[h.len() - 20..]);
    for &(col, name) in losses {
        let column = |rows: &[[f64; 4]]| rows.iter().map(|r| r[col]).collect::<Vec<_>>();
        assert_loss_falls(&format!("{method} {name}"), &column(first), &column(last));
    }
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(rec["config"]["method"], method);
    assert_eq!(rec["config"][method]["width"], 32);

    let (a, b) = (runs.join("straight"), runs.join("stopped"));
    let mut args = train_args(method, data, a.to_str().unwrap(), "5");
    args.extend(["--checkpoint-every", "2"]);
    ok(&host(&args));
    let mut args = train_args(method, data, b.to_str().unwrap(), "5");
    args.extend(["--checkpoint-every", "2", "--stop-after", "3"]);
    ok(&host(&args));
    let mut args = train_args(method, data, b.to_str().unwrap(), "5");
    args.push("--resume");
    ok(&host(&args));
    let (ha, hb) = (history(&a), history(&b));
    assert_eq!(hb.len(), 5, "{hb:?}");
    for (ra, rb) in ha.iter().zip(&hb) {
        for c in 1..4 {
            assert!(
                (ra[c] - rb[c]).abs() <= 1e-4 * ra[c].abs().max(1.0),
                "iteration {}: {:?} vs {:?}",
                ra[0],
                ra,
                rb
            );
        }
    }
    run
}

/// Exports the run and checks the manifest; returns the bundle folder.
fn export(
    run: &Path,
    scratch: &Path,
    method: &str,
    inputs: usize,
    outputs: usize,
) -> std::path::PathBuf {
    let bundle = scratch.join("bundle");
    ok(&host(&[
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
        "--size",
        "64x96",
    ]));
    let m = fss_core::bundle::Manifest::read(&bundle).unwrap();
    assert_eq!(m.method, method);
    let head = m.graphs.head.as_ref().expect("a head graph");
    assert_eq!((head.inputs.len(), head.outputs.len()), (inputs, outputs));
    let info = m.head.as_ref().expect("head info");
    assert_eq!(
        (info.kind.as_str(), info.width, info.passes),
        (method, 32, 1)
    );
    assert!(info.parameters > 0 && info.macs_per_pass > 0);
    let parity = m.checks.head_parity_max_abs_diff.unwrap();
    assert!(parity < 1e-3, "head parity {parity}");
    bundle
}

/// Prototypes and logits of the tch model and the bundle on the same features: two-shot
/// supports whose masks mark different regions of a synthetic input.
fn same_features_agree(run: &Path, bundle: &Path) {
    let size = fss_core::preprocess::InputSize::new(64, 96);
    let (rec, dir) = host::run::RunRecord::read(run).unwrap();
    let mut tch_model = host::eval::TchEncoder::from_run(&rec, &dir, tch::Device::Cpu, 1).unwrap();
    let mut tract_model = fss_runtime::BundleEncoder::open(bundle).unwrap();
    let image = |seed: usize| -> Vec<f32> {
        (0..3 * size.height * size.width)
            .map(|i| (((i + seed) * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect()
    };
    let feats: Vec<_> = (0..3)
        .map(|s| {
            tch_model
                .encode_batch(&[image(s * 31)], size)
                .unwrap()
                .remove(0)
        })
        .collect();
    let rect = |y0: usize, x0: usize| {
        let data = (0..size.height * size.width)
            .map(|i| {
                let (y, x) = (i / size.width, i % size.width);
                (y >= y0 && y < y0 + 24 && x >= x0 && x < x0 + 40) as u8
            })
            .collect();
        Mask::new(size.height, size.width, data).unwrap()
    };
    let ways = vec![vec![
        SupportShot::from_foreground(feats[0].clone(), rect(8, 10)),
        SupportShot::from_foreground(feats[1].clone(), rect(30, 50)),
    ]];
    let a = tch_model.prototypes(&ways).unwrap();
    let b = FeatureEncoder::prototypes(&mut tract_model, &ways).unwrap();
    assert_eq!(a.method(), b.method());
    for (x, y) in a.prototypes().foreground[0]
        .iter()
        .zip(&b.prototypes().foreground[0])
    {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{x} vs {y}");
    }
    // DPNet's memories are pooled from the same features on both sides: equal.
    assert_eq!(a.stored().memories, b.stored().memories);
    for kshot in [
        fss_core::sgone::SgOneKShot::Avg,
        fss_core::sgone::SgOneKShot::Max,
    ] {
        tch_model.sgone_kshot = kshot;
        tract_model.set_sgone_kshot(kshot);
        let la = tch_model.head_logits(&a, &feats[2], size).unwrap();
        let lb = FeatureEncoder::head_logits(&mut tract_model, &b, &feats[2], size).unwrap();
        let scale = la.data.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = la.max_abs_diff(&lb).unwrap();
        assert!(
            diff <= 1e-4 * scale,
            "{kshot:?}: logits differ by {diff} (scale {scale})"
        );
    }
}

/// `host eval` vs `edge eval`: DAVIS one-shot J and COCO two-shot mIoU within 0.5.
fn host_and_edge_agree(run: &Path, bundle: &Path, coco: &str, method: &str) {
    let davis = TempDir::new("sgdp-davis");
    write_davis_like(davis.path(), 2, 4, 96, 64);
    let dv = davis.path().to_str().unwrap();
    let (r, b) = (run.to_str().unwrap(), bundle.to_str().unwrap());
    let davis_args = [
        "--protocol",
        "davis",
        "--data",
        dv,
        "--size",
        "64x96",
        "--json",
    ];
    let coco_args = [
        "--protocol",
        "coco",
        "--data",
        coco,
        "--size",
        "64x96",
        "--shots",
        "2",
        "--episodes",
        "12",
        "--folds",
        "0",
        "--sgone-kshot",
        "max",
        "--json",
    ];
    for (name, key, args) in [
        ("davis", "j_mean", &davis_args[..]),
        ("coco", "miou", &coco_args[..]),
    ] {
        let mut h_args = vec!["eval", "--checkpoint", r];
        h_args.extend(args);
        let out = host(&h_args);
        ok(&out);
        let hr: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut e_args = vec!["eval", "--bundle", b];
        e_args.extend(args);
        let out = edge(&e_args);
        ok(&out);
        let er: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (vh, ve) = (hr[key].as_f64().unwrap(), er[key].as_f64().unwrap());
        eprintln!("{method} {name}: host {vh:.3}, edge {ve:.3}");
        assert!((vh - ve).abs() <= 0.5, "{name}: host {vh} vs edge {ve}");
        assert_eq!(hr["method"], er["method"]);
        let want = if method == "sgone" && name == "coco" {
            "sgone/max"
        } else {
            method
        };
        assert_eq!(hr["method"], want);
    }
    // A damaged head graph: one line naming it.
    let head_path = bundle.join("head.onnx");
    let bytes = std::fs::read(&head_path).unwrap();
    std::fs::write(&head_path, &bytes[..bytes.len() / 2]).unwrap();
    let out = edge(&["eval", "--bundle", b, "--protocol", "davis", "--data", dv]);
    assert_clean_error(&out, &["head.onnx"]);
    std::fs::write(&head_path, &bytes).unwrap();
    // A manifest that lists fewer head inputs than the method needs: one line naming the graph.
    let manifest_path = bundle.join("bundle.json");
    let original = std::fs::read(&manifest_path).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&original).unwrap();
    v["graphs"]["head"]["inputs"].as_array_mut().unwrap().pop();
    std::fs::write(&manifest_path, serde_json::to_vec(&v).unwrap()).unwrap();
    let out = edge(&["eval", "--bundle", b, "--protocol", "davis", "--data", dv]);
    assert_clean_error(&out, &["head.onnx", "must name"]);
    std::fs::write(&manifest_path, &original).unwrap();
}

/// `edge segment` with a support image and mask, twice: computed, then from the prototype
/// cache, with the same mask.
fn segment_with_cache(bundle: &Path, scratch: &Path) {
    let (img, label) = fss_tests::scene(96, 64, 5, &[(1, 0.4, 0.45, 0.18)]);
    let (query, _) = fss_tests::scene(96, 64, 6, &[(1, 0.6, 0.5, 0.2)]);
    let (i, m, q) = (
        scratch.join("seg_support.png"),
        scratch.join("seg_support_mask.png"),
        scratch.join("seg_query.png"),
    );
    img.save(&i).unwrap();
    label.save(&m).unwrap();
    query.save(&q).unwrap();
    let cache = scratch.join("seg.cache");
    let mut pixels = Vec::new();
    for _ in 0..2 {
        let out = edge(&[
            "segment",
            "--bundle",
            bundle.to_str().unwrap(),
            "--support",
            i.to_str().unwrap(),
            "--support-mask",
            m.to_str().unwrap(),
            "--query",
            q.to_str().unwrap(),
            "--out",
            scratch.join("seg").to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
            "--json",
        ]);
        ok(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        pixels.push(v["pixels"].clone());
    }
    assert_eq!(pixels[0], pixels[1]);
}

#[test]
fn sgone_trains_resumes_exports_and_runs_in_edge_with_the_hosts_results() {
    let data = TempDir::new("sgone-data");
    write_coco_like(data.path(), 16, 4, 160);
    let d = data.path().to_str().unwrap();
    let runs = TempDir::new("sgone-runs");
    let run = train_and_resume("sgone", d, runs.path(), &[(2, "query")]);
    let bundle = export(&run, runs.path(), "sgone", 2, 2);
    same_features_agree(&run, &bundle);
    host_and_edge_agree(&run, &bundle, d, "sgone");
    segment_with_cache(&bundle, runs.path());

    // The code variant trains (logits on a grown grid) and export refuses it with the reason.
    let code = runs.path().join("code");
    let mut args = train_args("sgone", d, code.to_str().unwrap(), "3");
    args.extend(["--sgone-variant", "code"]);
    ok(&host(&args));
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(code.join("run.json")).unwrap()).unwrap();
    assert_eq!(rec["config"]["sgone"]["variant"], "code");
    let out = host(&[
        "export",
        "--checkpoint",
        code.to_str().unwrap(),
        "--out",
        runs.path().join("code-bundle").to_str().unwrap(),
    ]);
    assert_clean_error(&out, &["code", "padding"]);
}

#[test]
fn dpnet_trains_resumes_exports_and_runs_in_edge_with_the_hosts_results() {
    let data = TempDir::new("dpnet-data");
    write_coco_like(data.path(), 16, 4, 160);
    let d = data.path().to_str().unwrap();
    let runs = TempDir::new("dpnet-runs");
    let run = train_and_resume("dpnet", d, runs.path(), &[(2, "query"), (3, "auxiliary")]);
    let bundle = export(&run, runs.path(), "dpnet", 4, 1);
    same_features_agree(&run, &bundle);
    host_and_edge_agree(&run, &bundle, d, "dpnet");
    // Live: a target added from a file keeps its support memory, and `edge run` segments
    // frames with it.
    let (img, label) = fss_tests::scene(96, 64, 7, &[(1, 0.4, 0.45, 0.18)]);
    let (i, m) = (
        runs.path().join("shot.png"),
        runs.path().join("shot_mask.png"),
    );
    img.save(&i).unwrap();
    label.save(&m).unwrap();
    let state = runs.path().join("state");
    let (s, b) = (state.to_str().unwrap(), bundle.to_str().unwrap());
    ok(&edge(&[
        "support",
        "add",
        "--state",
        s,
        "--bundle",
        b,
        "--name",
        "disk",
        "--image",
        i.to_str().unwrap(),
        "--mask",
        m.to_str().unwrap(),
    ]));
    let targets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("targets.json")).unwrap()).unwrap();
    let memory = &targets["targets"][0]["shots"][0]["memory"];
    let cells = fss_core::dpnet::MEMORY_GRID * fss_core::dpnet::MEMORY_GRID;
    assert_eq!(memory["locations"], cells, "{memory}");
    let summary = runs.path().join("summary.json");
    ok(&edge(&[
        "run",
        "--bundle",
        b,
        "--source",
        "synthetic:96x64",
        "--frames",
        "3",
        "--state",
        s,
        "--summary",
        summary.to_str().unwrap(),
    ]));
    let sum: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert!(
        sum["stats"]["frames_processed"].as_u64().unwrap() >= 1,
        "{sum}"
    );
    segment_with_cache(&bundle, runs.path());
}
