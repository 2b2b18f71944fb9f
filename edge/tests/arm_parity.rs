//! x86_64 vs aarch64 parity of `edge segment` (docs/arm.md): the native binary and the
//! cross-built aarch64 one, run under qemu-user for each CPU model, segment the same queries with
//! the same supports; their masks must agree on >= 99.9% of the pixels and their encoder
//! features and cosine logits (dumped with the hidden `--dump-npy`) within a tolerance.
//!
//! Runs only when `EDGE_ARM_BIN` names the aarch64 `edge` (scripts/test-arm.sh sets it, after
//! building it); otherwise it says so and passes. `EDGE_ARM_CPUS` (default "cortex-a72
//! cortex-a76") picks the qemu CPU models, `EDGE_ARM_QEMU` (default "qemu-aarch64 -L
//! /usr/aarch64-linux-gnu") the emulator command.
//!
//! Cases: the 2-conv test bundle (`fss_tests::testkit`) on synthetic scenes, and the shipped
//! `models/default` (EfficientNet-Lite0) on two sample frames at 64x64 and at its own 320x576
//! (qemu runs this encoder ~100x slower than native: ~7 s per 320x576 frame).

use fss_tests::testkit::write_test_bundle;
use fss_tests::{scene, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Maximum |x86 - aarch64| of the features, relative to the largest |feature| of the run.
const FEATURE_REL_TOL: f32 = 1e-4;
/// Maximum |x86 - aarch64| of the cosine x20 logits (range -20..20).
const LOGIT_ABS_TOL: f32 = 2e-3;
/// Minimum fraction of equal mask pixels.
const PIXEL_AGREEMENT: f64 = 0.999;

struct Case {
    name: &'static str,
    bundle: PathBuf,
    /// Extra `edge segment` arguments (supports, --size).
    args: Vec<String>,
    queries: Vec<PathBuf>,
}

fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    assert!(header.contains("'<f4'"), "{header}");
    let shape_text = header.split("'shape': (").nth(1).unwrap();
    let shape_text = &shape_text[..shape_text.find(')').unwrap()];
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data: Vec<f32> = b[10 + hl..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn segment(runner: &[String], bin: &Path, case: &Case, out: &Path) {
    let (prog, rest) = match runner.split_first() {
        Some((p, r)) => (PathBuf::from(p), {
            let mut v: Vec<String> = r.to_vec();
            v.push(bin.display().to_string());
            v
        }),
        None => (bin.to_path_buf(), Vec::new()),
    };
    let t = std::time::Instant::now();
    let o = Command::new(&prog)
        .args(&rest)
        .arg("segment")
        .arg("--bundle")
        .arg(&case.bundle)
        .args(&case.args)
        .arg("--query")
        .args(&case.queries)
        .arg("--out")
        .arg(out)
        .arg("--dump-npy")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", prog.display()));
    assert!(
        o.status.success(),
        "{} {rest:?} segment failed: {}",
        prog.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "  ran {} in {:.1} s",
        if runner.is_empty() {
            "native".to_string()
        } else {
            runner.join(" ")
        },
        t.elapsed().as_secs_f64()
    );
}

fn stems(case: &Case) -> Vec<String> {
    case.queries
        .iter()
        .map(|q| q.file_stem().unwrap().to_str().unwrap().to_string())
        .collect()
}

/// Compares the run in `arm` with the native run in `native`; returns a summary line.
fn compare(case: &Case, cpu: &str, native: &Path, arm: &Path) -> String {
    let (mut equal, mut total) = (0usize, 0usize);
    let (mut fdiff, mut fmax, mut ldiff) = (0.0f32, 0.0f32, 0.0f32);
    for stem in stems(case) {
        let m = |d: &Path| {
            image::open(d.join(format!("{stem}_mask.png")))
                .unwrap()
                .into_luma8()
        };
        let (a, b) = (m(native), m(arm));
        assert_eq!(a.dimensions(), b.dimensions());
        equal += a.pixels().zip(b.pixels()).filter(|(x, y)| x == y).count();
        total += a.pixels().len();
        for (kind, diff) in [("features", &mut fdiff), ("logits", &mut ldiff)] {
            let (sa, va) = read_npy_f32(&native.join(format!("{stem}_{kind}.npy")));
            let (sb, vb) = read_npy_f32(&arm.join(format!("{stem}_{kind}.npy")));
            assert_eq!(sa, sb, "{kind} shapes of {stem}");
            *diff = diff.max(max_diff(&va, &vb));
            if kind == "features" {
                fmax = fmax.max(max_abs(&va));
            }
        }
    }
    let agreement = equal as f64 / total as f64;
    let line = format!(
        "arm parity {} {cpu}: mask pixels equal {:.4}% ({equal}/{total}), features max|diff| {fdiff:.3e} (max|f| {fmax:.3}), logits max|diff| {ldiff:.3e}",
        case.name,
        100.0 * agreement
    );
    eprintln!("{line}");
    assert!(
        agreement >= PIXEL_AGREEMENT,
        "{line}: below {PIXEL_AGREEMENT}"
    );
    assert!(
        fdiff <= FEATURE_REL_TOL * fmax.max(1.0),
        "{line}: features beyond {FEATURE_REL_TOL} x max|f|"
    );
    assert!(
        ldiff <= LOGIT_ABS_TOL,
        "{line}: logits beyond {LOGIT_ABS_TOL}"
    );
    line
}

fn testkit_case(dir: &Path) -> Case {
    let bundle = dir.join("testkit-bundle");
    write_test_bundle(&bundle, 48, 64);
    let (img, mask) = scene(96, 72, 3, &[(1, 0.35, 0.45, 0.2)]);
    let (s, sm) = (dir.join("s.png"), dir.join("s_mask.png"));
    img.save(&s).unwrap();
    image::GrayImage::from_fn(mask.width(), mask.height(), |x, y| {
        image::Luma([if mask.get_pixel(x, y)[0] == 1 { 255 } else { 0 }])
    })
    .save(&sm)
    .unwrap();
    let mut queries = Vec::new();
    for (i, (cx, cy)) in [(0.5, 0.5), (0.3, 0.6)].iter().enumerate() {
        let q = dir.join(format!("tq{i}.png"));
        scene(80, 60, 10 + i as u32, &[(1, *cx, *cy, 0.18)])
            .0
            .save(&q)
            .unwrap();
        queries.push(q);
    }
    Case {
        name: "testkit-48x64",
        bundle,
        args: vec![
            "--support".into(),
            s.display().to_string(),
            "--support-mask".into(),
            sm.display().to_string(),
        ],
        queries,
    }
}

fn default_cases() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bundle = root.join("models/default");
    let seq = bundle.join("sample");
    let frame =
        |kind: &str, n: u32, ext: &str| seq.join(format!("{kind}/480p/blackswan/{n:05}.{ext}"));
    let support = frame("JPEGImages", 0, "jpg");
    assert!(
        bundle.join("bundle.json").is_file() && support.is_file(),
        "{}: the shipped bundle or its sample frames are missing from the checkout",
        bundle.display()
    );
    let supports: Vec<String> = vec![
        "--support".into(),
        support.display().to_string(),
        "--support-mask".into(),
        frame("Annotations", 0, "png").display().to_string(),
    ];
    let mut small = supports.clone();
    small.extend(["--size".to_string(), "64x64".to_string()]);
    let queries = vec![frame("JPEGImages", 1, "jpg"), frame("JPEGImages", 5, "jpg")];
    vec![
        Case {
            name: "default-64x64",
            bundle: bundle.clone(),
            args: small,
            queries: queries.clone(),
        },
        // The bundle's own size (320x576): ~7 s per frame under qemu.
        Case {
            name: "default-320x576",
            bundle,
            args: supports,
            queries,
        },
    ]
}

#[test]
#[ignore = "needs the aarch64 edge and qemu: scripts/test-arm.sh builds it and runs this test with --ignored"]
fn x86_and_aarch64_segment_alike() {
    let arm_bin = std::env::var_os("EDGE_ARM_BIN").map(PathBuf::from).expect(
        "EDGE_ARM_BIN is not set (scripts/test-arm.sh builds the aarch64 edge and sets it)",
    );
    if cfg!(not(target_arch = "x86_64")) {
        panic!(
            "this test compares a native x86_64 run with emulated aarch64 runs: run it on x86_64"
        );
    }
    assert!(arm_bin.is_file(), "{}: no such binary", arm_bin.display());
    let cpus = std::env::var("EDGE_ARM_CPUS").unwrap_or_else(|_| "cortex-a72 cortex-a76".into());
    let qemu = std::env::var("EDGE_ARM_QEMU")
        .unwrap_or_else(|_| "qemu-aarch64 -L /usr/aarch64-linux-gnu".into());
    let tmp = TempDir::new("edge-arm-parity");
    let mut cases = vec![testkit_case(tmp.path())];
    cases.extend(default_cases());
    let native_bin = PathBuf::from(env!("CARGO_BIN_EXE_edge"));
    let mut lines = Vec::new();
    for case in &cases {
        let native = tmp.path().join(format!("{}-native", case.name));
        segment(&[], &native_bin, case, &native);
        for cpu in cpus.split_whitespace() {
            let mut runner: Vec<String> = qemu.split_whitespace().map(str::to_string).collect();
            runner.splice(1..1, ["-cpu".to_string(), cpu.to_string()]);
            let arm = tmp.path().join(format!("{}-{cpu}", case.name));
            segment(&runner, &arm_bin, case, &arm);
            lines.push(compare(case, cpu, &native, &arm));
        }
    }
    // Printed again together, for the CI log and docs/arm.md.
    for l in &lines {
        println!("{l}");
    }
}
