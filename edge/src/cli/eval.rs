//! `edge eval`: the evaluation protocols of evaluation.md on a bundle, through the same
//! harness (`edge::eval`) and scoring as `host eval`; same JSON schema.

use super::{apply_threads, parse_size};
use anyhow::{bail, Result};
use clap::Args;
use edge::data::coco::{CocoMaskDataset, FoldSplit, DEFAULT_MIN_PIXELS};
use edge::data::davis::DavisDataset;
use edge::eval::{coco_episodes, coco_report, davis_one_shot, davis_report, CocoEpisodes};
use edge::preprocess::InputSize;
use edge::report::EvalReport;
use edge::runtime::BundleEncoder;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Davis,
    Coco,
}

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Bundle folder (bundle.json + ONNX graphs).
    #[arg(long)]
    pub bundle: PathBuf,
    #[arg(long, value_enum)]
    pub protocol: Protocol,
    /// Dataset root (DAVIS layout for davis, COCO128 layout for coco).
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
    /// tract threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print one JSON line (evaluation.md schema) on stdout.
    #[arg(long)]
    pub json: bool,
}

fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed}}<{{eta}}]"
    )) {
        bar.set_style(style);
    }
    bar
}

pub fn run(args: &EvalArgs) -> Result<()> {
    if args.shots == 0 {
        bail!("--shots must be at least 1");
    }
    apply_threads(args.threads)?;
    let mut encoder = BundleEncoder::open(&args.bundle)?;
    encoder.bundle().require_panet()?;
    let size = args.size.unwrap_or_else(|| encoder.default_size());
    encoder.prepare(size)?;
    let input = encoder.scoring_input(size);
    let m = encoder.manifest().clone();
    let started = Instant::now();
    let mut base = EvalReport::new(
        "",
        args.data.display().to_string(),
        m.method.clone(),
        m.backbone.clone(),
        [size.height, size.width],
        m.precision.clone(),
        args.shots,
    );
    let bar = progress_bar(match args.protocol {
        Protocol::Davis => "davis",
        Protocol::Coco => "coco",
    });
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let mut report = match args.protocol {
        Protocol::Davis => {
            if args.shots != 1 {
                bail!("the DAVIS protocol is one-shot (frame 0); --shots must be 1");
            }
            let dataset = DavisDataset::open(&args.data)?;
            let acc = davis_one_shot(&mut encoder, &dataset, input, &mut progress)?;
            base.seed = args.seed;
            davis_report(base, &acc)
        }
        Protocol::Coco => {
            let dataset = CocoMaskDataset::open(&args.data)?;
            let folds = match (&args.folds, m.provenance.fold) {
                (Some(f), _) => f.clone(),
                (None, Some(f)) => vec![f],
                (None, None) => vec![0, 1, 2, 3],
            };
            for &f in &folds {
                edge::data::coco::check_fold(f)?;
            }
            let settings = CocoEpisodes {
                shots: args.shots,
                episodes: args.episodes,
                runs: args.runs,
                seed: args.seed,
                folds: folds.clone(),
                min_pixels: DEFAULT_MIN_PIXELS,
                split: FoldSplit::Interleaved,
            };
            let replay = match &args.episodes_file {
                Some(p) => Some(edge::sampler::read_jsonl(p)?),
                None => None,
            };
            let result = coco_episodes(
                &mut encoder,
                &dataset,
                input,
                &settings,
                replay.as_deref(),
                &mut progress,
            )?;
            if let Some(p) = &args.write_episodes {
                edge::sampler::write_jsonl(p, &result.episodes)?;
            }
            base.folds = Some(folds);
            base.episodes = Some(args.episodes);
            base.runs = args.runs;
            base.seed = args.seed;
            coco_report(base, &dataset, &result)?
        }
    };
    bar.finish_and_clear();
    report.timing.elapsed_s = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", report.to_json_line());
    } else {
        print_human(&report);
    }
    Ok(())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into())
}

fn print_human(r: &EvalReport) {
    println!(
        "{} {} {} {} {}x{} {}-shot: J-mean {} FB-IoU {} mIoU {} ({:.1}s)",
        r.protocol,
        r.method,
        r.backbone,
        r.precision,
        r.size[0],
        r.size[1],
        r.shots,
        fmt_opt(r.j_mean),
        fmt_opt(r.fb_iou),
        fmt_opt(r.miou),
        r.timing.elapsed_s
    );
    if let Some(seqs) = &r.per_sequence {
        for (name, j) in seqs {
            println!("  {name:<24} J {j:.1}");
        }
    }
    if let Some(folds) = &r.per_fold {
        for f in folds {
            println!(
                "  fold {} mIoU {:.1} ± {:.1} ({} classes)",
                f.fold, f.miou, f.miou_std, f.classes
            );
        }
    }
}
