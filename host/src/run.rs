//! A training run on disk: its record (`run.json`: format, configuration, iteration, sampler
//! state, loss history), its checkpoints (written completely, then committed by rewriting
//! `run.json` atomically) and the model it describes (backbone weights to start from, the
//! method's head). `train`, `eval` and `export` all read runs through this module.

use crate::backbone::{default_weights_path, Backbone, BackboneKind};
use crate::cli::Method;
use crate::dpnet::{DpNetHead, DpNetShape};
use crate::heads::MethodHead;
use crate::optim::Sgd;
use crate::sgone::{SgOneHead, SgOneShape, SgOneVariant};
use crate::smcp::{SmcpHead, SmcpShape, SmcpVariant};
use anyhow::{anyhow, bail, Context, Result};
use fss_core::choice::Choice;
use fss_lab::data::coco::FoldSplit;
use fss_lab::sampler::TrainingSampler;
use fss_lab::video::{SourceMix, VideoSampler};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;

pub const RUN_FORMAT: u32 = 1;
pub const FEATURE_STRIDE: i64 = 16;

/// Everything that defines a training run (recorded in run.json).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub method: Method,
    pub backbone: String,
    pub init_weights: Option<String>,
    /// The first data source's folder (all of them in `sources`).
    pub data: String,
    /// Every data source with its layout and weight (runs written before: `data` alone, a
    /// COCO128 set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<DataSource>,
    pub split: FoldSplit,
    pub fold: usize,
    pub iterations: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub lr_milestones: Vec<usize>,
    pub size: [usize; 2],
    pub shots: usize,
    pub min_pixels: u64,
    pub seed: u64,
    pub align: bool,
    pub train_bn: bool,
    pub hflip: bool,
    pub feature_stride: i64,
    pub checkpoint_every: usize,
    /// How the learning rate moves over the run (runs written before this field: step).
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// The backbone stays at its initial weights; only the head trains.
    #[serde(default)]
    pub freeze_backbone: bool,
    /// SMCP's head (absent for other methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smcp: Option<SmcpConfig>,
    /// SG-One's head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sgone: Option<SgOneConfig>,
    /// DPNet's head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpnet: Option<DpNetConfig>,
    /// Episodes per optimizer step (runs written before this field: 1).
    #[serde(default = "one")]
    pub batch: usize,
    /// Augmentation beyond flips (runs written before this field: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<fss_lab::augment::AugmentSpec>,
}

fn one() -> usize {
    1
}

/// How a training folder is laid out.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataLayout {
    /// COCO128: `images/`, `masks/` (class episodes).
    Coco128,
    /// DAVIS: `JPEGImages/`, `Annotations/` (video episodes).
    Davis,
    /// COCO as distributed: `annotations/instances_<split>.json` and `<split>/` (class
    /// episodes, COCO-20i folds).
    Coco,
    /// PASCAL VOC with `SegmentationClassAug` (SBD) or `SegmentationClass` labels (class
    /// episodes, PASCAL-5i folds; the `trainaug` list, else `train`).
    Pascal,
    /// The user folder format: `<class>/images/`, `<class>/masks/` (class episodes over every
    /// class).
    Folder,
}

impl DataLayout {
    /// The layout of `dir`, or a one-line error naming it.
    pub fn of(dir: &Path) -> Result<DataLayout> {
        let has = |sub: &str| dir.join(sub).is_dir();
        if has("JPEGImages") && (has("SegmentationClassAug") || has("SegmentationClass")) {
            Ok(DataLayout::Pascal)
        } else if has("JPEGImages") && has("Annotations") {
            Ok(DataLayout::Davis)
        } else if has("images") && has("masks") {
            Ok(DataLayout::Coco128)
        } else if fss_lab::data::coco::is_distributed_layout(dir) {
            Ok(DataLayout::Coco)
        } else if !dir.is_dir() {
            bail!("{}: no such data folder", dir.display())
        } else if fss_lab::data::folder::has_class_folders(dir) {
            Ok(DataLayout::Folder)
        } else {
            bail!(
                "{}: no known training layout (DAVIS: JPEGImages/ and Annotations/; COCO128: images/ and masks/; COCO: annotations/instances_train2017.json and train2017/; PASCAL: JPEGImages/ and SegmentationClassAug/; folder: <class>/images/ and <class>/masks/)",
                dir.display()
            )
        }
    }

    /// Whether the layout gives class episodes (every layout but DAVIS's video).
    pub fn is_class(self) -> bool {
        self != DataLayout::Davis
    }

    /// The layout's name in messages.
    pub fn describe(self) -> &'static str {
        match self {
            DataLayout::Coco128 => "COCO128",
            DataLayout::Davis => "DAVIS",
            DataLayout::Coco => "COCO",
            DataLayout::Pascal => "PASCAL VOC",
            DataLayout::Folder => "folder",
        }
    }
}

/// One training data source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataSource {
    pub path: String,
    pub layout: DataLayout,
    /// Share of the episodes (relative to the other sources').
    pub weight: f64,
    /// Video sequences kept out of training.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holdout: Vec<String>,
}

impl TrainConfig {
    /// The run's data sources (a run written before `sources`: its `data`, a COCO128 set).
    pub fn data_sources(&self) -> Vec<DataSource> {
        if self.sources.is_empty() {
            vec![DataSource {
                path: self.data.clone(),
                layout: DataLayout::Coco128,
                weight: 1.0,
                holdout: Vec::new(),
            }]
        } else {
            self.sources.clone()
        }
    }
}

/// The SG-One head of a run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct SgOneConfig {
    pub width: i64,
    pub variant: SgOneVariant,
}

/// The DPNet head of a run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct DpNetConfig {
    pub width: i64,
}

/// Learning-rate schedules.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum LrSchedule {
    /// x0.1 at each of `lr_milestones` (PANet).
    #[default]
    Step,
    /// `lr * (1 - iteration / iterations)^power` (SMCP paper, power 0.9).
    Poly { power: f64 },
    /// `lr` throughout (the official SMCP code: its milestone is never reached).
    Constant,
}

/// The SMCP head of a run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct SmcpConfig {
    pub width: i64,
    pub variant: SmcpVariant,
    /// Multi-class head outputs: background + the fold's base classes.
    pub classes: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LossPoint {
    pub iteration: usize,
    pub loss: f64,
    pub query: f64,
    /// PANet's prototype alignment loss.
    pub align: f64,
    /// SMCP's support self-prototype loss.
    #[serde(default)]
    pub support: f64,
    /// SMCP's multi-class loss (before its 0.1 weight).
    #[serde(default)]
    pub multi_class: f64,
    /// DPNet's auxiliary loss (mean over scales, before its weight).
    #[serde(default)]
    pub aux: f64,
    pub lr: f64,
}

/// run.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub format: u32,
    pub host_version: String,
    pub config: TrainConfig,
    /// Iterations completed by the committed checkpoint.
    pub iteration: usize,
    /// Checkpoint folder relative to the run directory.
    pub checkpoint: String,
    /// The class-episode sampler (COCO sources; absent for a video-only run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<TrainingSampler>,
    /// The video-episode sampler (a DAVIS-layout source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoSampler>,
    /// Which source each episode comes from (several sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<SourceMix>,
    pub history: Vec<LossPoint>,
    pub device: String,
    pub elapsed_s: f64,
}

impl RunRecord {
    /// Reads `run.json` from a run directory (or the file itself).
    pub fn read(path: &Path) -> Result<(RunRecord, PathBuf)> {
        let file = if path.is_dir() {
            path.join("run.json")
        } else {
            path.to_path_buf()
        };
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let text = std::fs::read_to_string(&file)
            .map_err(|e| anyhow!("{}: cannot read the run record: {e}", file.display()))?;
        let record: RunRecord = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}: not a valid run record: {e}", file.display()))?;
        if record.format != RUN_FORMAT {
            bail!(
                "{}: run format {} is not supported (this host reads {RUN_FORMAT})",
                file.display(),
                record.format
            );
        }
        Ok((record, dir))
    }

    pub fn model_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.checkpoint).join("model.safetensors")
    }

    pub fn backbone_kind(&self) -> Result<BackboneKind> {
        self.config
            .backbone
            .parse::<BackboneKind>()
            .map_err(|e| anyhow!("run record: {e}"))
    }
}

/// Writes a checkpoint folder completely, then commits it by rewriting run.json atomically,
/// then removes older checkpoint folders.
pub fn save_checkpoint(dir: &Path, vs: &VarStore, opt: &Sgd, record: &RunRecord) -> Result<()> {
    let ckpt = dir.join(&record.checkpoint);
    let partial = dir.join(format!("{}.partial", record.checkpoint));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)
        .with_context(|| format!("{}: cannot create", partial.display()))?;
    vs.save(partial.join("model.safetensors"))
        .map_err(|e| anyhow!("{}: cannot write the model: {e}", partial.display()))?;
    opt.save(&partial.join("optimizer.safetensors"))?;
    let _ = std::fs::remove_dir_all(&ckpt);
    std::fs::rename(&partial, &ckpt)
        .with_context(|| format!("{}: cannot commit", ckpt.display()))?;
    let json = serde_json::to_vec_pretty(record)?;
    fss_core::fsutil::write_atomic(&dir.join("run.json"), &json)?;
    // Older checkpoints are now unreferenced.
    if let Ok(entries) = std::fs::read_dir(dir.join("checkpoints")) {
        for e in entries.flatten() {
            let p = e.path();
            if p != ckpt {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
    write_csv(&record.history, &dir.join("loss.csv"))?;
    let pts: Vec<(usize, f64)> = record
        .history
        .iter()
        .map(|p| (p.iteration, p.loss))
        .collect();
    crate::plot::write_loss_png(&pts, &dir.join("loss.png"))?;
    Ok(())
}

/// The ImageNet weights to start from: `--weights`, else the set-up's file; VGG-16 without
/// weights trains from scratch.
pub fn initial_weights(kind: BackboneKind, given: &Option<PathBuf>) -> Result<Option<PathBuf>> {
    if let Some(p) = given {
        return Ok(Some(p.clone()));
    }
    if kind == BackboneKind::Vgg16Panet {
        return Ok(None);
    }
    Ok(Some(default_weights_path(kind)))
}

/// A run's training recipe in one line (for bundle manifests).
pub fn describe(cfg: &TrainConfig, iterations: usize) -> String {
    let schedule = match cfg.lr_schedule {
        LrSchedule::Step => format!("lr {:e} x0.1 at {:?}", cfg.lr, cfg.lr_milestones),
        LrSchedule::Poly { power } => format!("lr {:e} poly {power}", cfg.lr),
        LrSchedule::Constant => format!("lr {:e} constant", cfg.lr),
    };
    let method = match (&cfg.smcp, &cfg.sgone, &cfg.dpnet) {
        (Some(s), _, _) => format!(
            "smcp ({} variant, head width {}, losses query + support + 0.1 x multi-class over {} classes)",
            s.variant.name(),
            s.width,
            s.classes
        ),
        (_, Some(s), _) => format!(
            "sgone ({} variant, head width {}, loss query cross-entropy)",
            s.variant.name(),
            s.width
        ),
        (_, _, Some(d)) => format!(
            "dpnet (reconstruction, head width {}, losses query + {} x auxiliary)",
            d.width,
            crate::dpnet::AUX_WEIGHT
        ),
        _ => format!("{}{}", cfg.method, if cfg.align { " with PAR" } else { "" }),
    };
    let sources = cfg.data_sources();
    let data = sources
        .iter()
        .map(|s| {
            let what = match s.layout {
                DataLayout::Coco128 | DataLayout::Coco => format!(
                    "{}, base classes of fold {} ({:?} split)",
                    s.path, cfg.fold, cfg.split
                ),
                DataLayout::Pascal => format!(
                    "{} (PASCAL VOC), base classes of PASCAL-5i fold {}",
                    s.path, cfg.fold
                ),
                DataLayout::Folder => format!("{} (class folders, every class)", s.path),
                DataLayout::Davis if s.holdout.is_empty() => format!("{} (video)", s.path),
                DataLayout::Davis => format!(
                    "{} (video; sequences {} held out)",
                    s.path,
                    s.holdout.join(",")
                ),
            };
            if sources.len() > 1 {
                format!("{what} with weight {}", s.weight)
            } else {
                what
            }
        })
        .collect::<Vec<_>>()
        .join(" + ");
    format!(
        "{method}; {}; {iterations} iterations of {} 1-way {}-shot episode{} at {}x{} ({}) on {data}, SGD momentum {}, {schedule}, weight decay {:e}, seed {}",
        if cfg.freeze_backbone { "backbone frozen at its ImageNet weights" } else { "backbone fine-tuned (BatchNorm frozen)" },
        cfg.batch,
        cfg.shots,
        if cfg.batch == 1 { "" } else { "s" },
        cfg.size[0],
        cfg.size[1],
        if cfg.augment.is_some() {
            "flips, random scale, rotation, shift, blur and colour jitter"
        } else {
            "flips"
        },
        cfg.momentum,
        cfg.weight_decay,
        cfg.seed
    )
}

/// The data of a run as a bundle's provenance names it: its sources' paths joined by " + ".
pub fn data_paths(cfg: &TrainConfig) -> String {
    cfg.data_sources()
        .iter()
        .map(|s| s.path.as_str())
        .collect::<Vec<_>>()
        .join(" + ")
}

/// The head of a run's method (None for PANet), created in `vs` next to the backbone.
pub fn method_head(
    vs: &VarStore,
    backbone: &Backbone,
    cfg: &TrainConfig,
) -> Result<Option<MethodHead>> {
    let channels = || {
        backbone
            .feature_channels(cfg.feature_stride)
            .ok_or_else(|| {
                anyhow!(
                    "{} has no feature level at stride {}",
                    backbone.kind(),
                    cfg.feature_stride
                )
            })
    };
    let missing = |m: &str| anyhow!("a {m} run without its head configuration in run.json");
    Ok(match cfg.method {
        Method::Panet => None,
        Method::Smcp => {
            let s = cfg.smcp.as_ref().ok_or_else(|| missing("SMCP"))?;
            let shape = SmcpShape {
                feature_channels: channels()?,
                width: s.width,
                dilations: SmcpShape::dilations_for_stride(cfg.feature_stride),
                classes: s.classes,
                variant: s.variant,
            };
            Some(MethodHead::Smcp(SmcpHead::new(&vs.root(), shape)))
        }
        Method::SgOne => {
            let s = cfg.sgone.as_ref().ok_or_else(|| missing("SG-One"))?;
            let shape = SgOneShape {
                feature_channels: channels()?,
                width: s.width,
                variant: s.variant,
            };
            Some(MethodHead::SgOne(SgOneHead::new(&vs.root(), shape)))
        }
        Method::DpNet => {
            let d = cfg.dpnet.as_ref().ok_or_else(|| missing("DPNet"))?;
            let shape = DpNetShape {
                feature_channels: channels()?,
                width: d.width,
            };
            Some(MethodHead::DpNet(DpNetHead::new(&vs.root(), shape)))
        }
    })
}

fn write_csv(history: &[LossPoint], path: &Path) -> Result<()> {
    let mut s = String::from(
        "iteration,loss,query_loss,align_loss,support_loss,multiclass_loss,aux_loss,lr\n",
    );
    for p in history {
        s.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:e}\n",
            p.iteration, p.loss, p.query, p.align, p.support, p.multi_class, p.aux, p.lr
        ));
    }
    fss_core::fsutil::write_atomic(path, s.as_bytes())?;
    Ok(())
}
