//! `host`: trains few-shot segmenters with libtorch, evaluates them under the standard protocols
//! and (next) exports bundles for the edge runtime.

use clap::{Parser, Subcommand};
use host::cli::{DataArgs, EvalArgs, ExportArgs, TrainArgs};

#[derive(Parser)]
#[command(
    name = "host",
    version,
    about = "Few-shot segmentation: train, evaluate and export (libtorch)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the libtorch version, the CUDA devices seen and where the ImageNet weights are.
    Doctor,
    /// Train a few-shot model episodically on the base classes of a fold (resumable).
    Train(TrainArgs),
    /// Evaluate a checkpoint (or the untrained ImageNet backbone) under a standard protocol.
    Eval(EvalArgs),
    /// Export a bundle (encoder.onnx + bundle.json) from a checkpoint or the ImageNet backbone.
    Export(ExportArgs),
    /// Dataset tools: `host data check PATH --format davis|coco|folder`.
    Data(DataArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor => host::doctor::run(),
        Command::Train(args) => host::train::run(&args),
        Command::Eval(args) => host::eval::run(&args),
        Command::Export(args) => host::export::run(&args),
        Command::Data(args) => host::data_check::run(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}
