//! `host eval --protocol folder` (user class folders) and `--preset` end to end.

use fss_tests::{assert_clean_error, write_coco_like, write_folder_like, TempDir};

mod common;
use common::host;

#[test]
fn folder_protocol_reports_per_class_iou() {
    let dir = TempDir::new("folder-eval");
    write_folder_like(dir.path(), &[("kiwi", 3), ("mug", 2)], 64);
    let episodes = dir.path().join("eps.jsonl");
    let data = dir.path().to_str().unwrap();
    let out = host(&[
        "eval",
        "--protocol",
        "folder",
        "--data",
        data,
        "--no-train",
        "--backbone",
        "mobilenetv2",
        "--size",
        "64x64",
        "--episodes",
        "6",
        "--seed",
        "5",
        "--write-episodes",
        episodes.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["protocol"], "folder");
    assert_eq!(report["seed"], 5);
    assert_eq!(report["episodes"], 6);
    let miou = report["miou"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&miou));
    assert!(report["fb_iou"].as_f64().is_some());
    let per_class = report["per_class"].as_object().unwrap();
    assert!(
        per_class.keys().all(|k| k == "kiwi" || k == "mug"),
        "{per_class:?}"
    );
    assert_eq!(report["per_fold"][0]["classes"], 2);
    let lines = std::fs::read_to_string(&episodes).unwrap();
    assert_eq!(lines.lines().count(), 6);

    // A folder that is not one is a clean error naming it.
    let out = host(&[
        "eval",
        "--protocol",
        "folder",
        "--data",
        "/nonexistent/folder-ds",
        "--no-train",
        "--backbone",
        "mobilenetv2",
    ]);
    assert_clean_error(&out, &["/nonexistent/folder-ds"]);
}

#[test]
fn presets_outside_coco_and_pascal_are_refused() {
    let dir = TempDir::new("preset-eval");
    write_coco_like(dir.path(), 4, 0, 32);
    let data = dir.path().to_str().unwrap();
    for (protocol, preset, needle) in [
        ("davis", "panet", "COCO and PASCAL-5i protocols"),
        ("folder", "bam", "not folder"),
    ] {
        let out = host(&[
            "eval",
            "--protocol",
            protocol,
            "--data",
            data,
            "--no-train",
            "--backbone",
            "mobilenetv2",
            "--preset",
            preset,
        ]);
        assert_clean_error(&out, &[needle]);
    }
}

/// `host eval --protocol coco --folds 0 --json` on `data` with the ImageNet MobileNetV2 and
/// `--preset`, plus `extra` flags: the JSON report (the run must succeed).
fn coco_preset_eval(data: &str, preset: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "eval",
        "--protocol",
        "coco",
        "--data",
        data,
        "--no-train",
        "--backbone",
        "mobilenetv2",
        "--preset",
        preset,
        "--folds",
        "0",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = host(&args);
    assert!(
        out.status.success(),
        "{preset}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `oslsm` (each image at its own size) and `pfenet` / `bam` (641 x 641 canvas on COCO) run in
/// tch, report their geometry and write the Markdown table.
#[test]
fn original_size_and_padded_presets_run_in_tch() {
    let dir = TempDir::new("preset-geometry");
    // 160 px: the objects cover more than PFENet's 2,048 px and 3 OSLSM grid cells.
    write_coco_like(dir.path(), 12, 8, 160);
    let data = dir.path().to_str().unwrap();
    for (preset, size, runs) in [
        ("oslsm", [0, 0], 1),
        ("pfenet", [641, 641], 1),
        ("bam", [641, 641], 5),
    ] {
        let md = dir.path().join(format!("{preset}.md"));
        let report = coco_preset_eval(
            data,
            preset,
            &["--episodes", "3", "--markdown", md.to_str().unwrap()],
        );
        assert_eq!(report["protocol"], format!("coco-{preset}"));
        assert_eq!(report["size"], serde_json::json!(size));
        assert_eq!(
            (report["episodes"].clone(), report["runs"].clone()),
            (3.into(), runs.into())
        );
        let miou = report["miou"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&miou), "{preset}: {miou}");
        let table = std::fs::read_to_string(&md).unwrap();
        assert!(table.starts_with(&format!("**coco-{preset}**")), "{table}");
        assert!(
            table.contains("\n| 0 | ") && table.contains("\n| mean | | "),
            "{table}"
        );
    }
}

#[test]
fn same_preset_and_seed_give_byte_identical_episodes_and_results() {
    let dir = TempDir::new("preset-repro");
    write_coco_like(dir.path(), 12, 8, 64);
    let data = dir.path().to_str().unwrap();
    let run = |tag: &str| {
        let eps = dir.path().join(format!("{tag}.jsonl"));
        let mut report = coco_preset_eval(
            data,
            "panet",
            &["--size", "64x64", "--write-episodes", eps.to_str().unwrap()],
        );
        report.as_object_mut().unwrap().remove("timing");
        (
            std::fs::read(&eps).unwrap(),
            serde_json::to_string(&report).unwrap(),
        )
    };
    let (eps_a, report_a) = run("a");
    let (eps_b, report_b) = run("b");
    assert!(!eps_a.is_empty());
    assert_eq!(
        eps_a, eps_b,
        "episode lists differ between two runs of the same preset and seed"
    );
    assert_eq!(
        report_a, report_b,
        "results differ between two runs of the same preset and seed"
    );
}
