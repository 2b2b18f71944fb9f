//! Link the host binary against the venv's libtorch so that it runs without exported variables,
//! and keep libtorch_cuda linked.
//!
//! - rpath: the binary finds `libtorch*.so` in `$LIBTORCH/lib` (the repo-local venv that
//!   scripts/setup.sh creates; `.cargo/config.toml` sets `LIBTORCH`).
//! - `--no-as-needed`: nothing in our code references a `libtorch_cuda` symbol directly (CUDA
//!   kernels register themselves from static initialisers), so the linker's default
//!   `--as-needed` drops the library and CUDA then reports unavailable (tch-rs #907, #980).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set; run scripts/setup.sh (the host binary will need LD_LIBRARY_PATH)");
        return;
    };
    let lib = PathBuf::from(libtorch).join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-search=native={}", lib.display());
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        for name in ["torch_cuda", "c10_cuda"] {
            if lib.join(format!("lib{name}.so")).exists() {
                println!("cargo:rustc-link-arg=-l{name}");
            }
        }
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
