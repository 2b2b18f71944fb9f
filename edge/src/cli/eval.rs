//! `edge eval`: the evaluation protocols of evaluation.md on a bundle, through the same
//! harness (`edge::eval`) and scoring as `host eval`; same JSON schema.

use super::{apply_threads, parse_size};
use anyhow::Result;
use clap::Args;
use edge::eval::ProtocolArgs;
use edge::preprocess::InputSize;
use edge::report::EvalReport;
use edge::runtime::BundleEncoder;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Bundle folder (bundle.json + ONNX graphs).
    #[arg(long)]
    pub bundle: PathBuf,
    #[command(flatten)]
    pub eval: ProtocolArgs,
    /// Model input size HxW (default: the preset's, else the bundle's).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<InputSize>,
    /// tract threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

pub fn run(args: &EvalArgs) -> Result<()> {
    apply_threads(args.threads)?;
    let mut encoder = BundleEncoder::open(&args.bundle)?;
    encoder.bundle().require_panet()?;
    let preset_size = match args.eval.preset {
        Some(p) => Some(p.settings().coco()?.size),
        None => None,
    };
    let size = args
        .size
        .or(preset_size)
        .unwrap_or_else(|| encoder.default_size());
    encoder.prepare(size)?;
    let input = encoder.scoring_input(size);
    let m = encoder.manifest().clone();
    let base = EvalReport::new(
        "",
        args.eval.data.display().to_string(),
        m.method.clone(),
        m.backbone.clone(),
        [size.height, size.width],
        m.precision.clone(),
        args.eval.shots,
    );
    args.eval
        .run_and_print(&mut encoder, input, base, m.provenance.fold)?;
    Ok(())
}
