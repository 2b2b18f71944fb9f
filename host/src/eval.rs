//! `host eval`: the protocols of evaluation.md with the backbone running in tch and the
//! canonical scoring of the shared library (the same code `edge eval` runs).

use crate::backbone::{Backbone, BackboneKind, BackboneOptions};
use crate::cli::{EvalArgs, Method, Protocol};
use crate::train::{initial_weights, RunRecord, FEATURE_STRIDE};
use anyhow::{anyhow, bail, Result};
use edge::data::coco::{CocoMaskDataset, FoldSplit, DEFAULT_MIN_PIXELS};
use edge::data::davis::DavisDataset;
use edge::eval::{
    coco_episodes, coco_report, davis_one_shot, davis_report, CocoEpisodes, FeatureEncoder,
    ScoringInput,
};
use edge::preprocess::{InputSize, Normalization};
use edge::report::EvalReport;
use edge::tensor::FeatureMap;
use std::path::Path;
use std::time::Instant;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// The backbone in tch as a [`FeatureEncoder`] for the shared harness.
pub struct TchEncoder {
    pub backbone: Backbone,
    pub stride: i64,
    pub batch: usize,
    _vs: VarStore,
}

impl TchEncoder {
    /// A backbone with weights from `weights` (ImageNet or a checkpoint), BatchNorm in eval mode.
    pub fn load(
        kind: BackboneKind,
        weights: Option<&Path>,
        device: Device,
        batch: usize,
    ) -> Result<TchEncoder> {
        let vs = VarStore::new(device);
        let backbone = Backbone::new(&vs.root(), kind, BackboneOptions::default())?;
        match weights {
            Some(w) => backbone.load_weights(w)?,
            None => eprintln!(
                "warning: {kind} has no weights: evaluating a randomly initialised backbone"
            ),
        }
        Ok(TchEncoder {
            backbone,
            stride: FEATURE_STRIDE,
            batch: batch.max(1),
            _vs: vs,
        })
    }

    pub fn normalization(&self) -> Normalization {
        let (mean, std) = self.backbone.normalization();
        Normalization { mean, std }
    }
}

/// `[N, C, h, w]` float tensor -> feature maps.
pub fn tensor_to_maps(t: &Tensor) -> Result<Vec<FeatureMap>> {
    let s = t.size();
    if s.len() != 4 {
        bail!("expected a 4-d feature tensor, got shape {s:?}");
    }
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let all: Vec<f32> =
        Vec::try_from(&t.flatten(0, -1)).map_err(|e| anyhow!("feature tensor: {e}"))?;
    let per = (s[1] * s[2] * s[3]) as usize;
    all.chunks(per)
        .map(|c| {
            FeatureMap::new(s[1] as usize, s[2] as usize, s[3] as usize, c.to_vec())
                .map_err(Into::into)
        })
        .collect()
}

impl FeatureEncoder for TchEncoder {
    fn encode_batch(
        &mut self,
        inputs: &[Vec<f32>],
        size: InputSize,
    ) -> edge::Result<Vec<FeatureMap>> {
        let (h, w) = (size.height as i64, size.width as i64);
        let flat: Vec<f32> = inputs.iter().flat_map(|v| v.iter().copied()).collect();
        let x = Tensor::from_slice(&flat)
            .view([inputs.len() as i64, 3, h, w])
            .to_device(self.backbone.device());
        let feats = tch::no_grad(|| self.backbone.forward_to(&x, self.stride, false))
            .map_err(|e| edge::EdgeError::input(format!("encoder: {e}")))?;
        tensor_to_maps(&feats).map_err(|e| edge::EdgeError::input(e.to_string()))
    }

    fn batch_size(&self) -> usize {
        self.batch
    }
}

fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed}}<{{eta}}]"
        ))
        .unwrap(),
    );
    bar
}

pub fn run(args: &EvalArgs) -> Result<()> {
    if args.shots == 0 {
        bail!("--shots must be at least 1");
    }
    let device = args.device.resolve()?;
    let (kind, weights, method, trained_fold) = match &args.checkpoint {
        Some(ckpt) => {
            let (rec, dir) = RunRecord::read(ckpt)?;
            (
                rec.backbone_kind()?,
                Some(rec.model_path(&dir)),
                rec.config.method,
                Some(rec.config.fold),
            )
        }
        None => {
            if !args.no_train {
                bail!("give --checkpoint RUN_DIR to evaluate a trained model, or --no-train for the ImageNet backbone");
            }
            (
                args.backbone,
                initial_weights(args.backbone, &args.weights)?,
                args.method,
                None,
            )
        }
    };
    if method != Method::Panet {
        bail!("method {method} cannot be evaluated yet");
    }
    let mut encoder = TchEncoder::load(kind, weights.as_deref(), device, args.batch)?;
    let size = match args.preset {
        Some(p) => p.settings().coco()?.size,
        None => args.size,
    };
    let input = ScoringInput {
        size,
        normalization: encoder.normalization(),
    };
    let started = Instant::now();
    let mut base = EvalReport::new(
        "",
        args.data.display().to_string(),
        method.name(),
        kind.name(),
        [size.height, size.width],
        "fp32",
        args.shots,
    );
    let bar = progress_bar(args.protocol.name());
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let mut report = match args.protocol {
        Protocol::Folder | Protocol::Pascal => {
            shared_harness(args, trained_fold, &mut encoder, input, base, &mut progress)?
        }
        Protocol::Coco if args.preset.is_some() => {
            shared_harness(args, trained_fold, &mut encoder, input, base, &mut progress)?
        }
        Protocol::Davis => {
            if args.preset.is_some() {
                bail!("--preset applies to the COCO protocol only");
            }
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
            let folds = match (&args.folds, trained_fold) {
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
                label_at_input: false,
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

/// The folder and PASCAL-5i protocols and COCO presets through the shared `edge::eval::run_protocol`.
fn shared_harness(
    args: &EvalArgs,
    trained_fold: Option<usize>,
    encoder: &mut TchEncoder,
    input: ScoringInput,
    base: EvalReport,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let request = edge::eval::ProtocolRequest {
        protocol: args.protocol,
        data: args.data.clone(),
        shots: args.shots,
        episodes: args.episodes,
        runs: args.runs,
        seed: args.seed,
        folds: args.folds.clone(),
        trained_fold,
        write_episodes: args.write_episodes.clone(),
        episodes_file: args.episodes_file.clone(),
        preset: args.preset,
        pascal: args.pascal.options(),
    };
    Ok(edge::eval::run_protocol(
        encoder, input, &request, base, progress,
    )?)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into())
}

fn print_human(r: &EvalReport) {
    println!(
        "{} {} {} {}x{} {}-shot: J-mean {} FB-IoU {} mIoU {} ({:.1}s)",
        r.protocol,
        r.method,
        r.backbone,
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
