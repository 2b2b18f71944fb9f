//! The `host` binary end to end: linking, doctor, bad inputs, training, resume, evaluation.

use fss_tests::{assert_clean_error, write_coco_like, write_davis_like, TempDir};
use std::path::Path;
use std::process::Command;

mod common;
use common::{assert_loss_falls, host};

#[test]
fn binary_links_libtorch_cuda() {
    // --as-needed would drop libtorch_cuda (nothing references its symbols) and CUDA would then
    // report unavailable on a GPU machine; the build script keeps it.
    let out = Command::new("readelf")
        .args(["-d", env!("CARGO_BIN_EXE_host")])
        .output()
        .expect("readelf (binutils) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("NEEDED") && text.contains("[libtorch_cuda.so]"),
        "libtorch_cuda.so not NEEDED:\n{text}"
    );
    assert!(
        text.contains("RUNPATH") || text.contains("RPATH"),
        "no rpath to libtorch:\n{text}"
    );
}

#[test]
fn doctor_reports_torch_and_weights() {
    let out = host(&["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("torch: 2.11.0"), "{stdout}");
    assert!(stdout.contains("libtorch_cuda: linked"), "{stdout}");
    assert!(stdout.contains("cuda: available="), "{stdout}");
    assert!(stdout.contains("weights efficientnet-lite0:"), "{stdout}");
}

#[test]
fn missing_dataset_folder_is_one_clear_line() {
    let out = host(&[
        "eval",
        "--protocol",
        "davis",
        "--data",
        "/nonexistent/davis",
        "--no-train",
        "--backbone",
        "mobilenetv2",
    ]);
    assert_clean_error(&out, &["/nonexistent/davis"]);
    let out = host(&[
        "train",
        "--data",
        "/nonexistent/coco",
        "--out",
        "/tmp/fss-never-written",
        "--iterations",
        "1",
    ]);
    assert_clean_error(&out, &["/nonexistent/coco"]);
    assert!(!Path::new("/tmp/fss-never-written/run.json").exists());
}

#[test]
fn image_without_mask_is_reported() {
    let dir = TempDir::new("nomask");
    write_davis_like(dir.path(), 1, 3, 64, 48);
    std::fs::remove_file(dir.path().join("Annotations/480p/seq0/00001.png")).unwrap();
    let data = dir.path().to_str().unwrap();
    let out = host(&[
        "eval",
        "--protocol",
        "davis",
        "--data",
        data,
        "--no-train",
        "--backbone",
        "mobilenetv2",
        "--size",
        "32x32",
    ]);
    assert_clean_error(&out, &["00001"]);
}

#[test]
fn mask_of_another_size_is_reported() {
    let dir = TempDir::new("masksize");
    write_davis_like(dir.path(), 1, 3, 64, 48);
    let small = image::GrayImage::new(10, 10);
    small
        .save(dir.path().join("Annotations/480p/seq0/00002.png"))
        .unwrap();
    let data = dir.path().to_str().unwrap();
    let out = host(&[
        "eval",
        "--protocol",
        "davis",
        "--data",
        data,
        "--no-train",
        "--backbone",
        "mobilenetv2",
        "--size",
        "32x32",
    ]);
    assert_clean_error(&out, &["00002"]);
}

#[test]
fn corrupt_weight_file_is_reported() {
    let dir = TempDir::new("badweights");
    write_davis_like(dir.path(), 1, 3, 64, 48);
    let w = dir.path().join("weights.safetensors");
    std::fs::write(&w, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    let out = host(&[
        "eval",
        "--protocol",
        "davis",
        "--data",
        dir.path().to_str().unwrap(),
        "--no-train",
        "--backbone",
        "mobilenetv2",
        "--weights",
        w.to_str().unwrap(),
        "--size",
        "32x32",
    ]);
    assert_clean_error(&out, &["weights.safetensors"]);
}

#[test]
fn unknown_method_and_backbone_are_reported() {
    let out = host(&[
        "eval",
        "--protocol",
        "davis",
        "--data",
        ".",
        "--no-train",
        "--method",
        "magic",
    ]);
    assert_clean_error(&out, &["unknown method 'magic'"]);
    let out = host(&["train", "--out", "/tmp/x", "--backbone", "resnet9000"]);
    assert_clean_error(&out, &["resnet9000"]);
}

fn history(run: &Path) -> Vec<(u64, f64)> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["iteration"].as_u64().unwrap(),
                p["loss"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn train_args<'a>(data: &'a str, out: &'a str, iterations: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--method",
        "panet",
        "--backbone",
        "mobilenetv2",
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
        "7",
    ]
}

#[test]
fn resume_after_a_stop_continues_the_same_curve() {
    let data = TempDir::new("resume-data");
    write_coco_like(data.path(), 12, 4, 96);
    let runs = TempDir::new("resume-runs");
    let (a, b) = (runs.path().join("straight"), runs.path().join("stopped"));
    let d = data.path().to_str().unwrap();
    let mut args = train_args(d, a.to_str().unwrap(), "6");
    args.extend(["--checkpoint-every", "2"]);
    let out = host(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Interrupted after 3 iterations: the last committed checkpoint is at 2.
    let mut args = train_args(d, b.to_str().unwrap(), "6");
    args.extend(["--checkpoint-every", "2", "--stop-after", "3"]);
    let out = host(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = host(&train_args(d, b.to_str().unwrap(), "6"));
    assert_clean_error(&out, &["--resume"]);
    let mut args = train_args(d, b.to_str().unwrap(), "6");
    args.push("--resume");
    let out = host(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ha, hb) = (history(&a), history(&b));
    assert_eq!(ha.len(), 6);
    assert_eq!(hb.len(), 6, "{hb:?}");
    for ((ia, la), (ib, lb)) in ha.iter().zip(&hb) {
        assert_eq!(ia, ib);
        assert!(
            (la - lb).abs() <= 1e-4 * la.abs().max(1.0),
            "iteration {ia}: {la} vs {lb}"
        );
    }
    assert!(b.join("loss.png").is_file() && b.join("loss.csv").is_file());
}

#[test]
fn short_training_lowers_the_loss_and_evaluates() {
    let data = TempDir::new("train-data");
    write_coco_like(data.path(), 16, 4, 96);
    let runs = TempDir::new("train-runs");
    let run = runs.path().join("run");
    let d = data.path().to_str().unwrap();
    let mut args = train_args(d, run.to_str().unwrap(), "60");
    args.extend(["--lr", "0.01", "--checkpoint-every", "30"]);
    let out = host(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = history(&run);
    let losses: Vec<f64> = h.iter().map(|p| p.1).collect();
    assert_loss_falls("PANet", &losses[..30], &losses[30..]);

    let davis = TempDir::new("train-davis");
    write_davis_like(davis.path(), 2, 4, 96, 64);
    let out = host(&[
        "eval",
        "--protocol",
        "davis",
        "--data",
        davis.path().to_str().unwrap(),
        "--checkpoint",
        run.to_str().unwrap(),
        "--size",
        "64x96",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["protocol"], "davis");
    assert_eq!(report["backbone"], "mobilenetv2");
    let j = report["j_mean"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&j));
    assert_eq!(report["per_sequence"].as_object().unwrap().len(), 2);
}
