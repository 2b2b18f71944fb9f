//! host -> checkpoint -> bundle -> edge, through the real binaries: a few training iterations,
//! export, then `edge eval` must agree with `host eval` on the same model and data, and
//! `edge segment` must produce masks. Also the shipped default bundle through `edge demo`.

use fss_tests::{workspace_binary, workspace_root, write_coco_like, write_davis_like, TempDir};
use std::path::PathBuf;
use std::process::{Command, Output};

fn binary(name: &str) -> PathBuf {
    workspace_binary(name)
}

fn run(bin: &str, args: &[&str]) -> Output {
    let out = Command::new(binary(bin)).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{bin} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn train_export_and_edge_agree_with_host() {
    let coco = TempDir::new("e2e-coco");
    write_coco_like(coco.path(), 12, 4, 96);
    let davis = TempDir::new("e2e-davis");
    write_davis_like(davis.path(), 2, 5, 112, 80);
    let work = TempDir::new("e2e-work");
    let run_dir = work.path().join("run");
    let bundle = work.path().join("bundle");
    let (c, d, r, b) = (
        coco.path().to_str().unwrap(),
        davis.path().to_str().unwrap(),
        run_dir.to_str().unwrap(),
        bundle.to_str().unwrap(),
    );
    run(
        "host",
        &[
            "train",
            "--backbone",
            "mobilenetv2",
            "--data",
            c,
            "--out",
            r,
            "--iterations",
            "3",
            "--size",
            "64x64",
            "--min-pixels",
            "200",
        ],
    );
    run(
        "host",
        &["export", "--checkpoint", r, "--out", b, "--size", "80x112"],
    );
    let host_eval = json(&run(
        "host",
        &[
            "eval",
            "--protocol",
            "davis",
            "--data",
            d,
            "--checkpoint",
            r,
            "--size",
            "80x112",
            "--json",
        ],
    ));
    let edge_eval = json(&run(
        "edge",
        &[
            "eval",
            "--bundle",
            b,
            "--protocol",
            "davis",
            "--data",
            d,
            "--json",
        ],
    ));
    let (jh, je) = (
        host_eval["j_mean"].as_f64().unwrap(),
        edge_eval["j_mean"].as_f64().unwrap(),
    );
    eprintln!("host J {jh:.3}, edge J {je:.3}");
    assert!((jh - je).abs() < 0.5, "host {jh} vs edge {je}");
    for key in [
        "protocol",
        "method",
        "backbone",
        "size",
        "precision",
        "shots",
    ] {
        assert_eq!(host_eval[key], edge_eval[key], "{key}");
    }

    let out_dir = work.path().join("masks");
    let frame = |f: usize| {
        davis
            .path()
            .join(format!("JPEGImages/480p/seq0/{f:05}.jpg"))
    };
    let mask0 = davis.path().join("Annotations/480p/seq0/00000.png");
    run(
        "edge",
        &[
            "segment",
            "--bundle",
            b,
            "--support",
            frame(0).to_str().unwrap(),
            "--support-mask",
            mask0.to_str().unwrap(),
            "--query",
            frame(3).to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    let mask = image::open(out_dir.join("00003_mask.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(mask.dimensions(), (112, 80));
    assert!(mask.pixels().all(|p| p.0[0] <= 1));
}

#[test]
fn shipped_default_bundle_runs_the_demo() {
    let bundle = workspace_root().join("models/default");
    assert!(
        bundle.join("bundle.json").is_file(),
        "the default bundle is missing from models/default"
    );
    let out = TempDir::new("e2e-demo");
    let o = run(
        "edge",
        &["demo", "--out", out.path().to_str().unwrap(), "--json"],
    );
    let summary = json(&o);
    let j = summary["j_mean"].as_f64().unwrap();
    eprintln!("demo: {summary}");
    // The shipped model segments its shipped sample sequence: far better than chance.
    assert!(j > 40.0, "demo J {j}");
    // The temporal J (the location prior of `edge run`) is scored on the same frames.
    let jt = summary["j_mean_temporal"].as_f64().unwrap();
    assert!(jt > 40.0, "demo temporal J {jt}");
    assert_eq!(summary["temporal_reach"].as_f64(), Some(0.5));
    let overlays = walk(out.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("_overlay.png"))
        .count();
    assert!(overlays >= 9, "{overlays} overlays");
}

/// The shipped SMCP bundle on the shipped blackswan sample: the demo runs it, and the fused
/// second pass changes the prediction against the support prototype alone (docs/methods.md, "SMCP":
/// whether it helps is measured there, on all of DAVIS).
#[test]
fn shipped_smcp_bundle_runs_and_its_second_pass_changes_the_masks() {
    let root = workspace_root();
    let bundle = root.join("models/smcp");
    let sample = root.join("models/default/sample");
    let (b, d) = (bundle.to_str().unwrap(), sample.to_str().unwrap());
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("bundle.json")).unwrap()).unwrap();
    assert_eq!(m["method"], "smcp");
    assert_eq!(m["head"]["passes"], 2);
    let (head_macs, encoder_macs) = (
        m["head"]["macs_per_pass"].as_u64().unwrap(),
        m["head"]["encoder_macs"].as_u64().unwrap(),
    );
    assert!(
        2 * head_macs < encoder_macs,
        "two head passes ({head_macs} MAC each) cost more than the encoder ({encoder_macs})"
    );
    let out = TempDir::new("e2e-smcp-demo");
    let o = run(
        "edge",
        &[
            "demo",
            "--bundle",
            b,
            "--frames",
            d,
            "--out",
            out.path().to_str().unwrap(),
            "--json",
        ],
    );
    eprintln!("smcp demo: {}", json(&o));
    let mut j = Vec::new();
    for guidance in ["fused", "support"] {
        let o = run(
            "edge",
            &[
                "eval",
                "--bundle",
                b,
                "--protocol",
                "davis",
                "--data",
                d,
                "--smcp-guidance",
                guidance,
                "--json",
            ],
        );
        let r = json(&o);
        j.push(r["j_mean"].as_f64().unwrap());
    }
    eprintln!(
        "blackswan sample: J fused {:.2}, support only {:.2}",
        j[0], j[1]
    );
    assert!(
        (j[0] - j[1]).abs() > 0.01,
        "the second pass changed nothing: J {} vs {}",
        j[0],
        j[1]
    );
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
