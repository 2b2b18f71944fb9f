//! `edge eval`: the evaluation protocols of evaluation.md on a bundle, through the same
//! harness (`edge::eval`) and scoring as `host eval`; same JSON schema.

use super::{apply_threads, parse_size};
use anyhow::Result;
use clap::Args;
use edge::eval::{progress_bar, run_protocol, Protocol, ProtocolRequest};
use edge::preprocess::InputSize;
use edge::report::EvalReport;
use edge::runtime::BundleEncoder;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Bundle folder (bundle.json + ONNX graphs).
    #[arg(long)]
    pub bundle: PathBuf,
    #[arg(long, value_enum)]
    pub protocol: Protocol,
    /// Dataset root (DAVIS layout for davis, COCO128 layout for coco, class folders for folder,
    /// VOC2012 layout for pascal: the `val` list, 255 ignored).
    #[arg(long)]
    pub data: PathBuf,
    /// Model input size HxW (default: the bundle's).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<InputSize>,
    #[arg(long, default_value_t = 1)]
    pub shots: usize,
    /// COCO: episodes per fold per run.
    #[arg(long, default_value_t = 1000)]
    pub episodes: usize,
    /// COCO: runs (seeds seed..seed+runs-1).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// COCO: folds to evaluate (default: the bundle's training fold, else all four).
    #[arg(long, value_delimiter = ',')]
    pub folds: Option<Vec<usize>>,
    /// COCO: write the sampled episodes as JSON Lines.
    #[arg(long)]
    pub write_episodes: Option<PathBuf>,
    /// COCO: replay episodes from a JSON Lines file instead of sampling.
    #[arg(long)]
    pub episodes_file: Option<PathBuf>,
    #[command(flatten)]
    pub pascal: edge::eval::PascalArgs,
    /// COCO: run a published harness's settings (size, label resolution, episodes, seeds,
    /// split; methods.md §7.4). Replaces --episodes/--runs/--seed; sets --size if not given.
    #[arg(long, value_enum)]
    pub preset: Option<edge::presets::Preset>,
    /// tract threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print one JSON line (evaluation.md schema) on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &EvalArgs) -> Result<()> {
    apply_threads(args.threads)?;
    let mut encoder = BundleEncoder::open(&args.bundle)?;
    encoder.bundle().require_panet()?;
    let preset_size = match args.preset {
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
        args.data.display().to_string(),
        m.method.clone(),
        m.backbone.clone(),
        [size.height, size.width],
        m.precision.clone(),
        args.shots,
    );
    let request = ProtocolRequest {
        protocol: args.protocol,
        data: args.data.clone(),
        shots: args.shots,
        episodes: args.episodes,
        runs: args.runs,
        seed: args.seed,
        folds: args.folds.clone(),
        trained_fold: m.provenance.fold,
        write_episodes: args.write_episodes.clone(),
        episodes_file: args.episodes_file.clone(),
        preset: args.preset,
        pascal: args.pascal.options(),
    };
    let bar = progress_bar(args.protocol.name());
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let report = run_protocol(&mut encoder, input, &request, base, &mut progress)?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", report.to_json_line());
    } else {
        println!("{}", report.human_summary());
    }
    Ok(())
}
