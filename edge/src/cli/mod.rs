//! The `edge` command line: `segment`, `eval`, `bench`, `demo`, `doctor`, `run`, `support`.

mod bench;
#[cfg(feature = "lab")]
mod bench_ort;
mod demo;
mod doctor;
#[cfg(feature = "lab")]
mod eval;
mod run;
mod segment;
mod support;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use fss_core::preprocess::InputSize;
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(
    name = "edge",
    version,
    about = "Few-shot segmentation runtime: runs exported bundles (ONNX + bundle.json) with tract",
    long_about = "Few-shot segmentation runtime: runs exported bundles (ONNX + bundle.json) with tract.\n\
                  No Python, no libtorch. Sizes are HxW (rows x columns), e.g. --size 320x576."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Segment query images from support images and masks (N targets, K shots each).
    Segment(segment::SegmentArgs),
    /// Evaluate a bundle under a protocol of evaluation.md (same harness and scoring as `host eval`).
    #[cfg(feature = "lab")]
    Eval(eval::EvalArgs),
    /// Time each stage of the per-frame pipeline (median of --runs frames) and compare the
    /// encoder with ONNX Runtime when a Python with onnxruntime is found.
    Bench(bench::BenchArgs),
    /// Run the default bundle on the shipped sample frames: overlays, per-sequence J, frames per second.
    Demo(demo::DemoArgs),
    /// Check this machine: CPU features tract uses, cameras, GPIO chips, and one encoder pass of a bundle.
    Doctor(doctor::DoctorArgs),
    /// Live segmentation from a camera, a replayed folder or a synthetic source: web page,
    /// GPIO button and LED, JSON Lines events.
    Run(run::RunArgs),
    /// List, add or remove the targets `edge run` segments (its --state folder).
    Support(support::SupportArgs),
}

pub fn run() -> Result<()> {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Segment(args) => {
            let sub = matches
                .subcommand_matches("segment")
                .expect("segment subcommand");
            segment::run(&args, sub)
        }
        #[cfg(feature = "lab")]
        Command::Eval(args) => eval::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Support(args) => support::run(&args),
    }
}

pub fn parse_size(s: &str) -> std::result::Result<InputSize, String> {
    s.parse::<InputSize>().map_err(|e| e.to_string())
}

/// Sets tract's thread count (1 = tract's single-threaded default).
pub fn apply_threads(n: usize) -> Result<()> {
    if n == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    fss_runtime::set_threads(n)?;
    Ok(())
}

/// The repository root: the first ancestor of the executable, then of the working directory,
/// that holds a `Cargo.toml` and a `models` folder.
pub fn repo_root() -> Option<PathBuf> {
    let is_root = |d: &Path| d.join("Cargo.toml").is_file() && d.join("models").is_dir();
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|e| std::fs::canonicalize(e).ok())
        .and_then(|e| {
            e.ancestors()
                .skip(1)
                .find(|d| is_root(d))
                .map(Path::to_path_buf)
        });
    from_exe.or_else(|| {
        let cwd = std::env::current_dir().ok()?;
        cwd.ancestors().find(|d| is_root(d)).map(Path::to_path_buf)
    })
}

/// Median of a list of values (mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Milliseconds since `t`.
pub fn ms_since(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Image files (jpg, jpeg, png) of a folder, sorted by name.
pub fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(edge::live::source::image_files(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
