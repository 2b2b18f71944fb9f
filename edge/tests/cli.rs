//! The `edge` binary end to end on test bundles (`fss_tests::testkit`) and synthetic fixtures.

use fss_tests::testkit::write_test_bundle;
use fss_tests::{scene, write_davis_like, TempDir};
use image::{GrayImage, Luma};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{edge_cmd, emulator};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run edge");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "edge panicked: {stderr}");
    out
}

fn ok(cmd: &mut Command) -> (String, String) {
    let out = run(cmd);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "edge failed\nstdout: {so}\nstderr: {se}"
    );
    (so, se)
}

/// Runs a command that must fail with one `error:` line mentioning every needle.
fn fails(cmd: &mut Command, needles: &[&str]) -> String {
    let out = run(cmd);
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "edge should have failed; stderr: {se}"
    );
    let lines: Vec<&str> = se.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {se}");
    assert!(lines[0].starts_with("error: "), "{se}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "error {:?} does not mention {n:?}",
            lines[0]
        );
    }
    se
}

struct Fixture {
    tmp: TempDir,
    bundle: PathBuf,
    support: (PathBuf, PathBuf, PathBuf),
    queries: Vec<PathBuf>,
}

fn fixture(tag: &str) -> Fixture {
    let tmp = TempDir::new(tag);
    let bundle = tmp.path().join("bundle");
    write_test_bundle(&bundle, 64, 64);
    let support = fss_tests::write_two_object_scene(tmp.path(), "support", 96, 80, 3, 0.0);
    let q1 = fss_tests::write_two_object_scene(tmp.path(), "q1", 120, 90, 8, 0.04).0;
    // A PNG query of another size.
    let (img, _) = scene(70, 100, 11, &[(1, 0.3, 0.3, 0.2), (2, 0.7, 0.7, 0.2)]);
    let q2 = tmp.path().join("q2.png");
    img.save(&q2).unwrap();
    Fixture {
        tmp,
        bundle,
        support,
        queries: vec![q1, q2],
    }
}

fn segment_two_targets(f: &Fixture, bundle: &Path, out: &Path, cache: Option<&Path>) -> Command {
    let mut c = edge_cmd();
    c.arg("segment").arg("--bundle").arg(bundle);
    c.args(["--target", "red", "--support"])
        .arg(&f.support.0)
        .arg("--support-mask")
        .arg(&f.support.1);
    c.args(["--target", "green", "--support"])
        .arg(&f.support.0)
        .arg("--support-mask")
        .arg(&f.support.2);
    c.arg("--query").args(&f.queries).arg("--out").arg(out);
    if let Some(p) = cache {
        c.arg("--cache").arg(p);
    }
    c
}

#[test]
fn segment_two_targets_end_to_end_with_cache() {
    let f = fixture("edge-cli-segment");
    let out = f.tmp.path().join("out");
    let cache = f.tmp.path().join("state/protos.json");
    let (stdout, stderr) = ok(segment_two_targets(&f, &f.bundle, &out, Some(&cache)).arg("--json"));
    assert!(stderr.contains("wrote prototype cache"), "{stderr}");
    assert!(cache.is_file());
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (q, line) in f.queries.iter().zip(&lines) {
        let stem = q.file_stem().unwrap().to_str().unwrap();
        let (qw, qh) = image::image_dimensions(q).unwrap();
        let mask = image::open(out.join(format!("{stem}_mask.png"))).unwrap();
        assert!(
            matches!(mask, image::DynamicImage::ImageLuma8(_)),
            "mask is 8-bit gray"
        );
        let mask = mask.to_luma8();
        assert_eq!(mask.dimensions(), (qw, qh));
        let mut seen = [false; 256];
        for p in mask.pixels() {
            seen[p.0[0] as usize] = true;
        }
        assert!(
            seen.iter().enumerate().all(|(v, &s)| !s || v <= 2),
            "labels outside 0..=2"
        );
        assert!(
            seen[0] && seen[1] && seen[2],
            "{stem}: labels seen {:?}",
            &seen[..3]
        );
        let overlay = image::open(out.join(format!("{stem}_overlay.png"))).unwrap();
        assert_eq!((overlay.width(), overlay.height()), (qw, qh));
        assert_eq!(line["size"], serde_json::json!([qh, qw]));
        assert!(line["pixels"]["red"].as_u64().unwrap() > 0);
        assert!(line["pixels"]["green"].as_u64().unwrap() > 0);
    }
    let first_mask = std::fs::read(out.join("q1_mask.png")).unwrap();

    // Second run: from the cache, same result.
    let (_, stderr) = ok(&mut segment_two_targets(&f, &f.bundle, &out, Some(&cache)));
    assert!(stderr.contains("using cached prototypes"), "{stderr}");
    assert_eq!(std::fs::read(out.join("q1_mask.png")).unwrap(), first_mask);

    // The cache alone (no supports) is enough.
    let out2 = f.tmp.path().join("out2");
    ok(edge_cmd()
        .arg("segment")
        .arg("--bundle")
        .arg(&f.bundle)
        .arg("--cache")
        .arg(&cache)
        .arg("--query")
        .arg(&f.queries[0])
        .arg("--out")
        .arg(&out2));
    assert_eq!(std::fs::read(out2.join("q1_mask.png")).unwrap(), first_mask);

    // Another bundle: the cache is refused, the prototypes recomputed and the cache rewritten.
    let other = f.tmp.path().join("other");
    write_test_bundle(&other, 48, 48);
    let (_, stderr) = ok(&mut segment_two_targets(&f, &other, &out, Some(&cache)));
    assert!(
        stderr.contains("another bundle") && stderr.contains("recomputing"),
        "{stderr}"
    );
    // ... and without supports that refusal is an error.
    let e = fails(
        edge_cmd()
            .arg("segment")
            .arg("--bundle")
            .arg(&f.bundle)
            .arg("--cache")
            .arg(&cache)
            .arg("--query")
            .arg(&f.queries[0])
            .arg("--out")
            .arg(&out2),
        &["protos.json", "another bundle"],
    );
    assert!(e.contains("no --support"), "{e}");
    // A corrupt cache: recomputed.
    std::fs::write(&cache, b"{ not json").unwrap();
    let (_, stderr) = ok(&mut segment_two_targets(&f, &f.bundle, &out, Some(&cache)));
    assert!(
        stderr.contains("not a prototype cache") && stderr.contains("recomputing"),
        "{stderr}"
    );
}

#[test]
fn segment_one_target_several_shots_and_query_folder() {
    let f = fixture("edge-cli-kshot");
    let s2 = fss_tests::write_two_object_scene(f.tmp.path(), "support2", 80, 80, 5, 0.05);
    let qdir = f.tmp.path().join("queries");
    std::fs::create_dir_all(&qdir).unwrap();
    for q in &f.queries {
        std::fs::copy(q, qdir.join(q.file_name().unwrap())).unwrap();
    }
    let out = f.tmp.path().join("out");
    let (stdout, _) = ok(edge_cmd()
        .arg("segment")
        .arg("--bundle")
        .arg(&f.bundle)
        .arg("--support")
        .arg(&f.support.0)
        .arg("--support-mask")
        .arg(&f.support.1)
        .arg("--support")
        .arg(&s2.0)
        .arg("--support-mask")
        .arg(&s2.1)
        .arg("--query")
        .arg(&qdir)
        .arg("--out")
        .arg(&out)
        .args(["--size", "48x56"]));
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.contains("object"), "{stdout}");
    let mask = image::open(out.join("q1_mask.png")).unwrap().to_luma8();
    assert!(mask.pixels().all(|p| p.0[0] <= 1));
    assert!(mask.pixels().any(|p| p.0[0] == 1));
}

#[test]
fn segment_bad_inputs_give_one_line_errors() {
    let f = fixture("edge-cli-bad");
    let out = f.tmp.path().join("out");
    let seg = |support: &Path, mask: &Path, query: &Path| {
        let mut c = edge_cmd();
        c.arg("segment")
            .arg("--bundle")
            .arg(&f.bundle)
            .arg("--support")
            .arg(support)
            .arg("--support-mask")
            .arg(mask)
            .arg("--query")
            .arg(query)
            .arg("--out")
            .arg(&out);
        c
    };
    let (img, m1, _) = &f.support;
    let q = &f.queries[0];
    // Empty support mask.
    let empty = f.tmp.path().join("empty_mask.png");
    GrayImage::new(96, 80).save(&empty).unwrap();
    fails(&mut seg(img, &empty, q), &["empty_mask.png", "empty"]);
    // Support mask of another size: names both files.
    let small = f.tmp.path().join("small_mask.png");
    GrayImage::from_pixel(48, 40, Luma([255]))
        .save(&small)
        .unwrap();
    fails(
        &mut seg(img, &small, q),
        &["small_mask.png", "support.jpg", "80x96"],
    );
    // Not an image as support, as mask, as query.
    let text = f.tmp.path().join("readme.jpg");
    std::fs::write(&text, "plain text, not a picture").unwrap();
    fails(&mut seg(&text, m1, q), &["readme.jpg"]);
    fails(&mut seg(img, &text, q), &["readme.jpg"]);
    fails(&mut seg(img, m1, &text), &["readme.jpg"]);
    // Missing query.
    fails(
        &mut seg(img, m1, &f.tmp.path().join("nope.jpg")),
        &["nope.jpg"],
    );
    // Missing bundle folder.
    fails(
        edge_cmd()
            .arg("segment")
            .arg("--bundle")
            .arg(f.tmp.path().join("no-bundle"))
            .arg("--support")
            .arg(img)
            .arg("--support-mask")
            .arg(m1)
            .arg("--query")
            .arg(q)
            .arg("--out")
            .arg(&out),
        &["no-bundle", "does not exist"],
    );
    // Unpaired support and mask.
    fails(
        edge_cmd()
            .arg("segment")
            .arg("--bundle")
            .arg(&f.bundle)
            .arg("--support")
            .arg(img)
            .arg("--query")
            .arg(q)
            .arg("--out")
            .arg(&out),
        &["--support-mask"],
    );
    // A support before the first --target.
    fails(
        edge_cmd()
            .arg("segment")
            .arg("--bundle")
            .arg(&f.bundle)
            .arg("--support")
            .arg(img)
            .arg("--support-mask")
            .arg(m1)
            .args(["--target", "red"])
            .arg("--query")
            .arg(q)
            .arg("--out")
            .arg(&out),
        &["before the first --target"],
    );
    // A target without supports.
    fails(
        edge_cmd()
            .arg("segment")
            .arg("--bundle")
            .arg(&f.bundle)
            .args(["--target", "red", "--support"])
            .arg(img)
            .arg("--support-mask")
            .arg(m1)
            .args(["--target", "green"])
            .arg("--query")
            .arg(q)
            .arg("--out")
            .arg(&out),
        &["green", "no support"],
    );
    // Truncated graph.
    let g = f.bundle.join("encoder.onnx");
    let bytes = std::fs::read(&g).unwrap();
    std::fs::write(&g, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        &mut seg(img, m1, q),
        &["encoder.onnx", "not a valid ONNX model"],
    );
    // Unknown bundle format.
    std::fs::write(&g, &bytes).unwrap();
    let mpath = f.bundle.join("bundle.json");
    let text = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(&mpath, text.replacen("\"format\": 1", "\"format\": 99", 1)).unwrap();
    fails(&mut seg(img, m1, q), &["bundle.json", "format 99"]);
    assert!(
        !out.join("q1_mask.png").exists(),
        "nothing written on errors"
    );
}

#[test]
fn eval_davis_json_line() {
    let tmp = TempDir::new("edge-cli-eval");
    let bundle = tmp.path().join("bundle");
    let m = write_test_bundle(&bundle, 48, 64);
    let data = tmp.path().join("davis");
    write_davis_like(&data, 2, 4, 64, 48);
    let (stdout, _) = ok(edge_cmd()
        .arg("eval")
        .arg("--bundle")
        .arg(&bundle)
        .args(["--protocol", "davis", "--data"])
        .arg(&data)
        .arg("--json"));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let o = v.as_object().unwrap();
    for k in [
        "protocol",
        "data",
        "method",
        "backbone",
        "size",
        "precision",
        "shots",
        "folds",
        "episodes",
        "runs",
        "seed",
        "j_mean",
        "fb_iou",
        "miou",
        "per_sequence",
        "per_class",
        "per_fold",
        "temporal",
        "timing",
    ] {
        assert!(o.contains_key(k), "missing key {k}: {stdout}");
    }
    assert_eq!(o.len(), 19);
    assert_eq!(v["protocol"], "davis");
    assert_eq!(v["method"], m.method.as_str());
    assert_eq!(v["backbone"], m.backbone.as_str());
    assert_eq!(v["precision"], "fp32");
    assert_eq!(v["size"], serde_json::json!([48, 64]));
    assert_eq!(v["shots"], 1);
    let j = v["j_mean"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&j));
    assert!(v["fb_iou"].as_f64().is_some());
    assert!(v["miou"].is_null());
    let per = v["per_sequence"].as_object().unwrap();
    assert_eq!(per.keys().collect::<Vec<_>>(), vec!["seq0", "seq1"]);
    assert!(v["timing"]["elapsed_s"].as_f64().is_some());

    // --size overrides the manifest's; the same result comes out of the same size twice.
    let (a, _) = ok(edge_cmd()
        .arg("eval")
        .arg("--bundle")
        .arg(&bundle)
        .args(["--protocol", "davis", "--size", "32x48", "--json", "--data"])
        .arg(&data));
    let a: serde_json::Value = serde_json::from_str(a.trim()).unwrap();
    assert_eq!(a["size"], serde_json::json!([32, 48]));
    // Human output.
    let (h, _) = ok(edge_cmd()
        .arg("eval")
        .arg("--bundle")
        .arg(&bundle)
        .args(["--protocol", "davis", "--data"])
        .arg(&data));
    assert!(h.contains("J-mean") && h.contains("seq0"), "{h}");
    // A bad dataset path is one line.
    fails(
        edge_cmd()
            .arg("eval")
            .arg("--bundle")
            .arg(&bundle)
            .args(["--protocol", "davis", "--data"])
            .arg(tmp.path().join("no-data")),
        &["no-data"],
    );
}

fn bench_keys(v: &serde_json::Value) {
    for k in ["bundle", "size", "threads", "frame_ms", "fps", "stage_ms"] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }
    let st = v["stage_ms"].as_object().unwrap();
    for k in [
        "decode",
        "preprocess",
        "encoder",
        "head",
        "temporal",
        "postprocess",
        "overlay",
    ] {
        assert!(st[k].as_f64().unwrap() >= 0.0, "stage {k}: {v}");
    }
    assert!(!st.contains_key("capture"));
    assert!(v["frame_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_json_with_and_without_onnxruntime() {
    let tmp = TempDir::new("edge-cli-bench");
    let bundle = tmp.path().join("bundle");
    write_test_bundle(&bundle, 64, 96);
    // No onnxruntime: the field is omitted and stderr says so.
    let (stdout, stderr) = ok(edge_cmd()
        .arg("bench")
        .arg("--bundle")
        .arg(&bundle)
        .args(["--runs", "3", "--json"])
        .env("EDGE_ORT_PYTHON", tmp.path().join("no-python")));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    bench_keys(&v);
    assert_eq!(v["size"], serde_json::json!([64, 96]));
    assert_eq!(v["threads"], 1);
    assert!(v.get("onnxruntime").is_none());
    assert!(
        stderr.contains("onnxruntime comparison skipped"),
        "{stderr}"
    );
    // Without the location prior its stage is not run, and not reported.
    let (stdout, _) = ok(edge_cmd().arg("bench").arg("--bundle").arg(&bundle).args([
        "--runs",
        "3",
        "--json",
        "--no-ort",
        "--temporal-reach",
        "0",
    ]));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["stage_ms"].get("temporal").is_none(), "{v}");

    // With the repository's Python (scripts/setup.sh installs onnxruntime in .venv, found from
    // the working directory up): parity checked, ratio reported. Under aarch64 emulation the
    // x86 venv is not this binary's peer, so there the comparison is switched off the same way
    // as above and its absence is asserted.
    let mut c = edge_cmd();
    c.arg("bench").arg("--bundle").arg(&bundle).args([
        "--runs",
        "3",
        "--threads",
        "2",
        "--size",
        "48x64",
        "--json",
    ]);
    if cfg!(target_arch = "aarch64") {
        c.env("EDGE_ORT_PYTHON", tmp.path().join("no-python"));
    }
    let (stdout, stderr) = ok(&mut c);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    bench_keys(&v);
    assert_eq!(v["threads"], 2);
    assert_eq!(v["size"], serde_json::json!([48, 64]));
    if cfg!(target_arch = "aarch64") {
        assert!(v.get("onnxruntime").is_none(), "{v}");
        assert!(
            stderr.contains("onnxruntime comparison skipped"),
            "{stderr}"
        );
    } else {
        let o = v.get("onnxruntime").unwrap_or_else(|| {
            panic!("no onnxruntime comparison (run scripts/setup.sh for .venv): {stderr}")
        });
        assert!(o["encoder_ms"].as_f64().unwrap() > 0.0, "{v}");
        assert!(
            o["ratio_tract_over_ort"]["encoder"].as_f64().unwrap() > 0.0,
            "{v}"
        );
        assert!(stderr.contains("matches tract"), "{stderr}");
    }
    // A frame given on the command line, human output.
    let frame = tmp.path().join("frame.jpg");
    scene(120, 80, 2, &[(1, 0.5, 0.5, 0.2)])
        .0
        .save(&frame)
        .unwrap();
    let (stdout, _) = ok(edge_cmd()
        .arg("bench")
        .arg("--bundle")
        .arg(&bundle)
        .args(["--runs", "2", "--no-ort", "--frame"])
        .arg(&frame));
    assert!(
        stdout.contains("ms/frame") && stdout.contains("encoder"),
        "{stdout}"
    );
    fails(
        edge_cmd()
            .arg("bench")
            .arg("--bundle")
            .arg(&bundle)
            .args(["--threads", "0"]),
        &["--threads"],
    );
}

#[test]
fn demo_runs_on_a_bundle_and_refuses_a_missing_one() {
    let tmp = TempDir::new("edge-cli-demo");
    let bundle = tmp.path().join("bundle");
    write_test_bundle(&bundle, 48, 64);
    // Sample frames inside the bundle, as shipped.
    write_davis_like(&bundle.join("sample"), 1, 4, 64, 48);
    let out = tmp.path().join("demo");
    let (stdout, _) = ok(edge_cmd()
        .arg("demo")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--out")
        .arg(&out));
    assert!(
        stdout.contains("mean J") && stdout.contains("fps") && stdout.contains("seq0"),
        "{stdout}"
    );
    for f in 1..4 {
        let p = out.join(format!("seq0/{f:05}_overlay.png"));
        assert_eq!(image::image_dimensions(&p).unwrap(), (64, 48));
    }
    let (stdout, _) = ok(edge_cmd()
        .arg("demo")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--out")
        .arg(&out)
        .arg("--json"));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["frames_processed"], 3);
    assert!(v["j_mean"].as_f64().is_some() && v["fps"].as_f64().unwrap() > 0.0);
    // Missing bundle, missing frames: one line naming the path.
    fails(
        edge_cmd()
            .arg("demo")
            .arg("--bundle")
            .arg(tmp.path().join("models/default")),
        &["models/default", "does not exist"],
    );
    let bare = tmp.path().join("bare");
    write_test_bundle(&bare, 48, 64);
    fails(
        edge_cmd().arg("demo").arg("--bundle").arg(&bare),
        &["bare/sample", "--frames"],
    );
    // A negative location-prior reach, in the demo and the bench: one line naming the flag.
    for cmd in ["demo", "bench"] {
        fails(
            edge_cmd()
                .arg(cmd)
                .arg("--bundle")
                .arg(&bundle)
                .args(["--temporal-reach", "-1"]),
            &["--temporal-reach", "-1"],
        );
    }
}

#[test]
fn help_documents_the_commands() {
    let (stdout, _) = ok(edge_cmd().arg("--help"));
    for c in ["segment", "eval", "bench", "demo"] {
        assert!(stdout.contains(c), "{stdout}");
    }
    let (stdout, _) = ok(edge_cmd().args(["segment", "--help"]));
    for s in ["--target", "--support-mask", "--cache", "--size", "N-way"] {
        assert!(stdout.contains(s), "{s}: {stdout}");
    }
    let (stdout, _) = ok(edge_cmd().args(["bench", "--help"]));
    assert!(
        stdout.contains("EDGE_ORT_PYTHON") && stdout.contains("--threads"),
        "{stdout}"
    );
}

#[test]
fn doctor_reports_the_machine_and_checks_the_bundle() {
    let tmp = TempDir::new("edge-cli-doctor");
    let bundle = tmp.path().join("bundle");
    write_test_bundle(&bundle, 32, 32);
    let (stdout, _) = ok(edge_cmd()
        .arg("doctor")
        .arg("--bundle")
        .arg(&bundle)
        .args(["--size", "32x48", "--json"]));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["arch"], std::env::consts::ARCH);
    assert_eq!(v["bundle"]["ok"], true, "{v}");
    assert_eq!(v["bundle"]["features"], serde_json::json!([16, 8, 12]));
    assert!(v["cameras"].is_array() && v["gpio_chips"].is_array(), "{v}");
    let feature = |name: &str| {
        v["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["present"].as_bool().unwrap())
    };
    if cfg!(target_arch = "aarch64") {
        assert_eq!(feature("neon"), Some(true), "{v}");
        // Under qemu the CPU model is known: Pi 4's A72 has no dotprod, Pi 5's A76 has it.
        let runner = emulator().unwrap_or_default().join(" ");
        if runner.contains("cortex-a72") {
            assert_eq!(feature("dotprod"), Some(false), "{v}");
            assert!(!v["tract_isa"].as_str().unwrap().contains("dotprod"), "{v}");
        } else if runner.contains("cortex-a76") {
            assert_eq!(feature("dotprod"), Some(true), "{v}");
            assert!(v["tract_isa"].as_str().unwrap().contains("dotprod"), "{v}");
        }
    } else if cfg!(target_arch = "x86_64") {
        assert!(feature("avx2").is_some(), "{v}");
    }
    // The human report names every section; no camera is not an error.
    let (stdout, _) = ok(edge_cmd().arg("doctor").arg("--bundle").arg(&bundle));
    for s in [
        "arch:",
        "features:",
        "tract ISA:",
        "cameras:",
        "gpio",
        "bundle:",
        ": ok",
    ] {
        assert!(stdout.contains(s), "{s}: {stdout}");
    }
    // A bundle that fails: one error line, exit 1.
    fails(
        edge_cmd()
            .arg("doctor")
            .arg("--bundle")
            .arg(tmp.path().join("missing")),
        &["missing", "does not exist"],
    );
}

#[test]
fn eval_agree_with_compares_two_bundles_mask_by_mask() {
    let tmp = TempDir::new("edge-cli-agree");
    let a = tmp.path().join("a");
    write_test_bundle(&a, 48, 64);
    // Same graph and manifest, another folder: identical masks.
    let same = tmp.path().join("same");
    write_test_bundle(&same, 48, 64);
    // Another graph (8 output channels): other features, other masks.
    let other = tmp.path().join("other");
    fss_tests::testkit::write_test_bundle_with_channels(&other, 48, 64, 8, 8);
    let data = tmp.path().join("davis");
    write_davis_like(&data, 2, 4, 64, 48);
    let agree = |b: &Path| -> serde_json::Value {
        let (stdout, _) = ok(edge_cmd()
            .arg("eval")
            .arg("--bundle")
            .arg(&a)
            .arg("--agree-with")
            .arg(b)
            .args(["--protocol", "davis", "--data"])
            .arg(&data)
            .arg("--json"));
        serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap()["agreement"].clone()
    };
    let s = agree(&same);
    // 2 sequences x (4 frames - the support frame) query masks of 64x48.
    assert_eq!(s["masks"], 6, "{s}");
    assert_eq!(s["pixels"], 6 * 64 * 48, "{s}");
    assert_eq!(s["pixel_agreement"], 100.0, "{s}");
    assert_eq!(s["equal"], s["pixels"], "{s}");
    let o = agree(&other);
    let pa = o["pixel_agreement"].as_f64().unwrap();
    assert!(pa < 100.0 && pa > 0.0, "{o}");
    assert!(o["iou"].as_f64().unwrap() <= 100.0, "{o}");
    // Only DAVIS is supported.
    fails(
        edge_cmd()
            .arg("eval")
            .arg("--bundle")
            .arg(&a)
            .arg("--agree-with")
            .arg(&same)
            .args(["--protocol", "coco", "--data"])
            .arg(&data),
        &["--agree-with supports --protocol davis only"],
    );
}
