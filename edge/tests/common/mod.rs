//! Shared by the `edge` integration tests: how to start the `edge` binary (directly, or through
//! the qemu runner when the tests themselves run emulated on aarch64).

use std::process::Command;

pub fn edge_cmd() -> Command {
    let mut c = match emulator() {
        Some(runner) => {
            let mut c = Command::new(&runner[0]);
            c.args(&runner[1..]).arg(env!("CARGO_BIN_EXE_edge"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_edge")),
    };
    c.env_remove("EDGE_ORT_PYTHON");
    c
}

/// Under `cargo test --target aarch64-unknown-linux-gnu` with a qemu runner (scripts/test-arm.sh)
/// this test binary is emulated, but the `edge` it spawns would be exec'd by the host kernel,
/// which cannot run it without binfmt_misc: spawn it through the same runner.
pub fn emulator() -> Option<Vec<String>> {
    if !cfg!(target_arch = "aarch64") {
        return None;
    }
    let r = std::env::var("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER").ok()?;
    let parts: Vec<String> = r.split_whitespace().map(str::to_string).collect();
    (!parts.is_empty()).then_some(parts)
}
