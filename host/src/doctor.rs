//! `host doctor`: what libtorch this binary runs on, which CUDA devices it sees, where the
//! ImageNet weights are.

use crate::backbone::{default_weights_path, BackboneKind};
use std::path::PathBuf;

/// Shared libraries mapped into this process whose file name contains `needle`.
fn mapped_libraries(needle: &str) -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains(needle))
        .map(PathBuf::from)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The torch version of the libtorch actually loaded (its `version.py` sits next to `lib/`).
pub fn torch_version() -> Option<(String, PathBuf)> {
    let lib = mapped_libraries("libtorch_cpu.so").into_iter().next()?;
    let torch_dir = lib.parent()?.parent()?.to_path_buf();
    let text = std::fs::read_to_string(torch_dir.join("version.py")).ok()?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("__version__ = "))?
        .trim_matches(['\'', '"'])
        .to_string();
    Some((version, torch_dir))
}

pub fn run() -> anyhow::Result<()> {
    println!("host {}", env!("CARGO_PKG_VERSION"));
    // Touch libtorch so that its libraries are mapped.
    let cuda_available = tch::Cuda::is_available();
    match torch_version() {
        Some((v, dir)) => println!("torch: {v} at {}", dir.display()),
        None => println!("torch: loaded, version unknown (no version.py next to libtorch)"),
    }
    let cuda_libs = mapped_libraries("libtorch_cuda.so");
    println!(
        "libtorch_cuda: {}",
        if cuda_libs.is_empty() {
            "NOT linked (CUDA cannot be used)".to_string()
        } else {
            format!("linked ({})", cuda_libs[0].display())
        }
    );
    let n = tch::Cuda::device_count();
    println!(
        "cuda: available={cuda_available} devices={n} cudnn={}",
        tch::Cuda::cudnn_is_available()
    );
    println!("threads: {}", tch::get_num_threads());
    for kind in [BackboneKind::EfficientNetLite0, BackboneKind::MobileNetV2] {
        let path = default_weights_path(kind);
        let state = if path.is_file() {
            "ok"
        } else {
            "MISSING (run scripts/setup.sh)"
        };
        println!("weights {}: {} [{state}]", kind, path.display());
    }
    println!("weights vgg16: supplied by the user (--weights PATH, a torchvision vgg16 file converted by scripts/convert_weights.py)");
    Ok(())
}
