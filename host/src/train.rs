//! `host train`: episodic few-shot training, with checkpoints that resume the exact same curve
//! (weights, optimizer momentum, the episode samplers' RNGs). Episodes come from one or two
//! sources mixed by weight: class episodes over the training classes of a fold (COCO128, COCO
//! as distributed, PASCAL VOC with SBD, or class folders: [`crate::class_data`]) and video
//! episodes (K support frames and a query frame of one sequence of a DAVIS-layout set,
//! [`fss_lab::video`]).
//!
//! Run directory layout:
//! - `run.json`: format version, host version, the full configuration, the iteration reached,
//!   the checkpoint it belongs to, the sampler state and the loss history. It is written last
//!   and atomically: it is the commit point of a checkpoint.
//! - `checkpoints/iter-NNNNNNN/{model,optimizer}.safetensors`: weights (BatchNorm statistics
//!   included) and momentum buffers. Older checkpoint folders are removed once a newer one is
//!   committed.
//! - `loss.csv`, `loss.png`: the curve so far.

use crate::backbone::{Backbone, BackboneKind, BackboneOptions};
use crate::class_data::{smcp_class_count, ClassData};
use crate::cli::{Method, TrainArgs};
use crate::optim::Sgd;
use crate::panet::{self, EpisodeTensors, LossParts, IGNORE};
use crate::smcp::{SemanticLabels, SmcpVariant};
use anyhow::{anyhow, bail, Result};
use fss_core::davis::DavisDataset;
use fss_core::preprocess::{
    normalize_chw, resize_mask_nearest, resize_rgb, InputSize, Normalization,
};
use fss_core::tensor::Mask;
use fss_lab::augment::{AugmentSpec, Augmentation};
use fss_lab::data::coco::FoldSplit;
use fss_lab::sampler::TrainingSpec;
use fss_lab::video::{SourceMix, VideoEpisode, VideoSampler, VideoSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::run::save_checkpoint;
use crate::run::{
    initial_weights, method_head, DataLayout, DataSource, DpNetConfig, LossPoint, LrSchedule,
    RunRecord, SgOneConfig, SmcpConfig, TrainConfig, FEATURE_STRIDE, RUN_FORMAT,
};

fn lr_at(cfg: &TrainConfig, iteration: usize) -> f64 {
    match cfg.lr_schedule {
        LrSchedule::Step => {
            let passed = cfg
                .lr_milestones
                .iter()
                .filter(|&&m| iteration >= m)
                .count();
            cfg.lr * 0.1f64.powi(passed as i32)
        }
        LrSchedule::Poly { power } => {
            let left = 1.0 - iteration as f64 / cfg.iterations.max(1) as f64;
            cfg.lr * left.max(0.0).powf(power)
        }
        LrSchedule::Constant => cfg.lr,
    }
}

/// Decoded training images and their class-key label maps, resized to the training size
/// (nearest for labels) and kept in memory (each file is decoded once per run; a large dataset
/// grows this cache by about 4 bytes per training pixel of every image drawn), and an episode's
/// binary masks and SMCP's multi-class targets both come from the maps.
struct ImageCache {
    size: InputSize,
    images: HashMap<usize, image::RgbImage>,
    labels: HashMap<usize, Mask>,
}

impl ImageCache {
    fn new(size: InputSize) -> ImageCache {
        ImageCache {
            size,
            images: HashMap::new(),
            labels: HashMap::new(),
        }
    }

    fn image(&mut self, dataset: &ClassData, idx: usize) -> Result<&image::RgbImage> {
        if !self.images.contains_key(&idx) {
            let img = resize_rgb(&dataset.load_image(idx)?, self.size);
            self.images.insert(idx, img);
        }
        Ok(&self.images[&idx])
    }

    /// Class keys (0 background) at the training size, flipped when asked.
    fn label_map(&mut self, dataset: &ClassData, idx: usize, flip: bool) -> Result<Mask> {
        if !self.labels.contains_key(&idx) {
            let m = dataset.label_map(idx)?;
            let m = resize_mask_nearest(&m, self.size.height, self.size.width);
            self.labels.insert(idx, m);
        }
        let m = &self.labels[&idx];
        Ok(if flip { flip_mask(m) } else { m.clone() })
    }
}

fn flip_mask(m: &Mask) -> Mask {
    let mut out = m.clone();
    for row in out.data.chunks_mut(m.width) {
        row.reverse();
    }
    out
}

/// An episode label (0 background, 1 object, [`IGNORE`] void) as an f32 `[h, w]` tensor.
fn mask_tensor(m: &Mask) -> Tensor {
    let v: Vec<f32> = m.data.iter().map(|&x| x as f32).collect();
    Tensor::from_slice(&v).view([m.height as i64, m.width as i64])
}

/// The binary episode label of `class` from a label map: 1 on the class, [`IGNORE`] on the
/// dataset's void label, 0 elsewhere (other classes, the fold's novel ones included).
fn episode_label(map: &mut Mask, class: u8, void: Option<u8>) {
    for v in map.data.iter_mut() {
        *v = if *v == class {
            1
        } else if Some(*v) == void {
            IGNORE as u8
        } else {
            0
        };
    }
}

/// How the images of this iteration's episode are augmented (`--augment`).
#[derive(Clone, Copy)]
struct EpisodeAugment<'a> {
    spec: Option<&'a AugmentSpec>,
    seed: u64,
    iteration: usize,
    /// The colour that normalises to (about) zero: what comes in from outside the image.
    fill: [u8; 3],
}

impl EpisodeAugment<'_> {
    /// Image `slot` (supports first, then the query) and its object mask, augmented: the
    /// augmentation, the image's tensor and the moved mask. A support whose object the geometry
    /// would push out of the frame keeps only the colour changes (a support needs its object; a
    /// query may lose it).
    fn apply(
        &self,
        slot: usize,
        image: &image::RgbImage,
        object: &Mask,
        support: bool,
        norm: &Normalization,
    ) -> (Augmentation, Tensor, Mask) {
        let (a, moved) = match self.spec {
            None => (Augmentation::IDENTITY, object.clone()),
            Some(spec) => {
                let a = Augmentation::draw(spec, self.seed, self.iteration, slot);
                let moved = a.warp_labels(object);
                if support && !moved.data.contains(&1) {
                    (a.photometric_only(), object.clone())
                } else {
                    (a, moved)
                }
            }
        };
        (
            a,
            image_tensor(&a.apply_image(image, self.fill), norm),
            moved,
        )
    }
}

/// The normalised CHW tensor `[1, 3, h, w]` of an image at the training size.
fn image_tensor(img: &image::RgbImage, norm: &Normalization) -> Tensor {
    let (w, h) = img.dimensions();
    Tensor::from_slice(&normalize_chw(img, norm)).view([1, 3, h as i64, w as i64])
}

/// Builds the tensors of one episode at the training size, and each image's augmentation
/// (SMCP's class labels move with them).
fn episode_tensors(
    dataset: &ClassData,
    cache: &mut ImageCache,
    norm: &Normalization,
    ep: &fss_lab::sampler::TrainingEpisode,
    augment: EpisodeAugment,
    device: Device,
) -> Result<(EpisodeTensors, Vec<Augmentation>)> {
    // The episode class's binary mask (nearest resize commutes with picking the class).
    let class = ep.episode.class;
    let k = ep.episode.supports.len();
    let slots: Vec<usize> = ep
        .episode
        .supports
        .iter()
        .copied()
        .chain(std::iter::once(ep.episode.query))
        .collect();
    let mut imgs = Vec::with_capacity(k + 1);
    let mut masks = Vec::with_capacity(k + 1);
    let mut augs = Vec::with_capacity(k + 1);
    for (i, &idx) in slots.iter().enumerate() {
        let flip = ep.flips[i];
        let mut img = cache.image(dataset, idx)?.clone();
        if flip {
            image::imageops::flip_horizontal_in_place(&mut img);
        }
        let mut m = cache.label_map(dataset, idx, flip)?;
        episode_label(&mut m, class, dataset.ignore_label());
        let (a, tensor, moved) = augment.apply(i, &img, &m, i < k, norm);
        imgs.push(tensor);
        masks.push(mask_tensor(&moved));
        augs.push(a);
    }
    let query = imgs.pop().expect("an episode has a query");
    let qmask = masks.pop().expect("an episode has a query");
    Ok((assemble(&imgs, &masks, query, &qmask, device), augs))
}

/// An episode's tensors on `device` from its support images `[1, 3, h, w]` and labels `[h, w]`
/// (0 background, 1 object, [`IGNORE`] void: in neither the foreground nor the background of a
/// support, ignored by the query's loss), the query image and its label.
fn assemble(
    imgs: &[Tensor],
    labels: &[Tensor],
    query: Tensor,
    query_mask: &Tensor,
    device: Device,
) -> EpisodeTensors {
    let qlabel = query_mask.to_kind(Kind::Int64).unsqueeze(0);
    let support = Tensor::stack(labels, 0);
    let support_fg = support.eq(1.0).to_kind(Kind::Float);
    EpisodeTensors {
        supports: Tensor::cat(imgs, 0).to_device(device),
        support_bg: support.eq(0.0).to_kind(Kind::Float).to_device(device),
        support_fg: support_fg.to_device(device),
        query: query.to_device(device),
        query_label: qlabel.to_device(device),
    }
}

/// Decoded video frames and their binary masks at the training size, kept in memory (a
/// training set of a few thousand frames fits), each file decoded once per run.
struct VideoCache {
    size: InputSize,
    frames: HashMap<(usize, usize), (image::RgbImage, Mask)>,
}

/// The video source of a run: the dataset, and for each sequence of the sampler its index in
/// the dataset.
struct VideoSource {
    dataset: DavisDataset,
    index: Vec<usize>,
    cache: VideoCache,
}

impl VideoSource {
    fn new(dataset: DavisDataset, sampler: &VideoSampler, size: InputSize) -> Result<VideoSource> {
        let index = sampler
            .sequences()
            .iter()
            .map(|(name, _)| {
                dataset
                    .sequences()
                    .iter()
                    .position(|s| &s.name == name)
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: sequence {name:?} of the run is no longer in the data",
                            dataset.root().display()
                        )
                    })
            })
            .collect::<Result<_>>()?;
        Ok(VideoSource {
            dataset,
            index,
            cache: VideoCache {
                size,
                frames: HashMap::new(),
            },
        })
    }

    /// A frame at the training size and its binary mask, flipped when asked.
    fn frame(&mut self, seq: usize, frame: usize, flip: bool) -> Result<(image::RgbImage, Mask)> {
        let size = self.cache.size;
        let key = (self.index[seq], frame);
        if !self.cache.frames.contains_key(&key) {
            let (img, gt) = self.dataset.load_frame(key.0, key.1, None)?;
            let img = resize_rgb(&img, size);
            let gt = resize_mask_nearest(&gt, size.height, size.width);
            self.cache.frames.insert(key, (img, gt));
        }
        let (img, gt) = &self.cache.frames[&key];
        Ok(if flip {
            let mut i = img.clone();
            image::imageops::flip_horizontal_in_place(&mut i);
            (i, flip_mask(gt))
        } else {
            (img.clone(), gt.clone())
        })
    }

    /// The tensors of one video episode at the training size.
    fn episode_tensors(
        &mut self,
        norm: &Normalization,
        ep: &VideoEpisode,
        augment: EpisodeAugment,
        device: Device,
    ) -> Result<EpisodeTensors> {
        let k = ep.supports.len();
        let mut imgs = Vec::with_capacity(k + 1);
        let mut masks = Vec::with_capacity(k + 1);
        for (i, &f) in ep.supports.iter().chain([&ep.query]).enumerate() {
            let (img, m) = self.frame(ep.sequence, f, ep.flips[i])?;
            let (_, tensor, moved) = augment.apply(i, &img, &m, i < k, norm);
            imgs.push(tensor);
            masks.push(mask_tensor(&moved));
        }
        let query = imgs.pop().expect("an episode has a query");
        let qmask = masks.pop().expect("an episode has a query");
        Ok(assemble(&imgs, &masks, query, &qmask, device))
    }
}

/// One training episode and the source it came from.
enum Draw {
    Class(fss_lab::sampler::TrainingEpisode),
    Video(VideoEpisode),
}

/// The data sources of `--data` (layouts told apart), `--data-weights` and
/// `--holdout-sequences`.
fn sources_from_args(args: &TrainArgs) -> Result<Vec<DataSource>> {
    if args.data.is_empty() {
        bail!("--data: give at least one training folder");
    }
    let weights = match &args.data_weights {
        Some(w) if w.len() != args.data.len() => bail!(
            "--data-weights gives {} weights for {} --data folders",
            w.len(),
            args.data.len()
        ),
        Some(w) => w.clone(),
        None => vec![1.0; args.data.len()],
    };
    // The same checks the sampler makes when the run starts, here before any model work.
    SourceMix::new(&weights, 0).map_err(|e| anyhow!("--data-weights: {e}"))?;
    let mut sources = Vec::new();
    for (path, weight) in args.data.iter().zip(weights) {
        let layout = DataLayout::of(path)?;
        if let Some(other) = sources
            .iter()
            .find(|s: &&DataSource| s.layout.is_class() == layout.is_class())
        {
            bail!(
                "{}: a second {} source next to {}; give at most one class dataset and one DAVIS video folder",
                path.display(),
                if layout.is_class() { "class-episode" } else { "video" },
                other.path
            );
        }
        sources.push(DataSource {
            path: path.display().to_string(),
            layout,
            weight,
            holdout: match layout {
                DataLayout::Davis => args.holdout_sequences.clone(),
                _ => Vec::new(),
            },
        });
    }
    if !args.holdout_sequences.is_empty() && !sources.iter().any(|s| s.layout == DataLayout::Davis)
    {
        bail!("--holdout-sequences needs a DAVIS-layout --data folder");
    }
    Ok(sources)
}

fn config_from_args(args: &TrainArgs, weights: &Option<PathBuf>) -> Result<TrainConfig> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    if args.shots == 0 {
        bail!("--shots must be at least 1");
    }
    if args.checkpoint_every == 0 {
        bail!("--checkpoint-every must be at least 1");
    }
    let milestones = args
        .lr_milestones
        .clone()
        .unwrap_or_else(|| vec![args.iterations / 3, 2 * args.iterations / 3]);
    let split = FoldSplit::Interleaved;
    if args.method != Method::Panet && args.head_width < 8 {
        bail!("--head-width must be at least 8");
    }
    let (sgone, dpnet) = match args.method {
        Method::SgOne => (
            Some(SgOneConfig {
                width: args.head_width,
                variant: args.sgone_variant,
            }),
            None,
        ),
        Method::DpNet => (
            None,
            Some(DpNetConfig {
                width: args.head_width,
            }),
        ),
        _ => (None, None),
    };
    let (weight_decay, lr_schedule, mut smcp) = match args.method {
        Method::Panet | Method::SgOne | Method::DpNet => {
            (args.weight_decay.unwrap_or(5e-4), LrSchedule::Step, None)
        }
        Method::Smcp => {
            let (wd, schedule) = match args.smcp_variant {
                SmcpVariant::Paper => (1e-4, LrSchedule::Poly { power: 0.9 }),
                SmcpVariant::Code => (5e-4, LrSchedule::Constant),
            };
            let schedule = if args.lr_milestones.is_some() {
                LrSchedule::Step
            } else {
                schedule
            };
            fss_lab::data::coco::check_fold(args.fold)?;
            let classes = fss_lab::data::coco::base_classes(split, args.fold).len() as i64 + 1;
            let smcp = SmcpConfig {
                width: args.head_width,
                variant: args.smcp_variant,
                classes,
            };
            (args.weight_decay.unwrap_or(wd), schedule, Some(smcp))
        }
    };
    if args.freeze_backbone && args.method == Method::Panet {
        bail!(
            "--freeze-backbone: method {} has nothing to train besides the backbone",
            args.method
        );
    }
    // The data last: every argument error is reported without reading the data.
    let sources = sources_from_args(args)?;
    if let Some(smcp) = &mut smcp {
        // The head's classes are those of the run's class dataset.
        smcp.classes = smcp_class_count(&sources, split, args.fold)?;
    }
    Ok(TrainConfig {
        method: args.method,
        backbone: args.backbone.name().to_string(),
        init_weights: weights.as_ref().map(|p| p.display().to_string()),
        data: sources[0].path.clone(),
        sources,
        split,
        fold: args.fold,
        iterations: args.iterations,
        lr: args.lr,
        momentum: args.momentum,
        weight_decay,
        lr_milestones: milestones.into_iter().filter(|&m| m > 0).collect(),
        size: [args.size.height, args.size.width],
        shots: args.shots,
        min_pixels: args.min_pixels,
        seed: args.seed,
        align: !args.no_align,
        train_bn: args.train_bn,
        hflip: true,
        feature_stride: FEATURE_STRIDE,
        checkpoint_every: args.checkpoint_every,
        lr_schedule,
        smcp,
        sgone,
        dpnet,
        freeze_backbone: args.freeze_backbone,
        augment: (args.augment == "standard").then_some(AugmentSpec::STANDARD),
        batch: args.batch as usize,
    })
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let dir = args.out.clone();
    let existing = dir.join("run.json");
    let (cfg, resume) = if args.resume {
        let (mut rec, _) = RunRecord::read(&dir)?;
        if args.iterations > rec.config.iterations {
            rec.config.iterations = args.iterations;
        }
        (rec.config.clone(), Some(rec))
    } else {
        if existing.exists() {
            bail!("{}: a run already exists there; pass --resume to continue it or choose another --out", dir.display());
        }
        let weights = initial_weights(args.backbone, &args.weights)?;
        (config_from_args(args, &weights)?, None)
    };
    train(&cfg, &dir, device, resume, args.stop_after)
}

/// Trains (or continues) the run in `dir` with `cfg`.
pub fn train(
    cfg: &TrainConfig,
    dir: &Path,
    device: Device,
    resume: Option<RunRecord>,
    stop_after: Option<usize>,
) -> Result<()> {
    if cfg.freeze_backbone && cfg.method == Method::Panet {
        bail!(
            "--freeze-backbone: method {} has nothing to train besides the backbone",
            cfg.method
        );
    }
    let kind: BackboneKind = cfg.backbone.parse().map_err(|e| anyhow!("{e}"))?;
    let sources = cfg.data_sources();
    let mut coco: Option<ClassData> = None;
    let mut davis: Option<(DavisDataset, &DataSource)> = None;
    for s in &sources {
        match s.layout {
            DataLayout::Davis => davis = Some((DavisDataset::open(Path::new(&s.path))?, s)),
            _ => coco = Some(ClassData::open(s, cfg.split)?),
        }
    }
    tch::manual_seed(cfg.seed as i64);
    let vs = VarStore::new(device);
    let mut backbone = Backbone::new(
        &vs.root(),
        kind,
        BackboneOptions {
            with_classifier: false,
            bn_frozen: !cfg.train_bn,
        },
    )?;
    backbone.set_bn_frozen(!cfg.train_bn);
    let head = method_head(&vs, &backbone, cfg)?;
    let semantic_lut = semantic_lut(&match &coco {
        Some(data) => data.training_classes(cfg.fold)?,
        None => fss_lab::data::coco::base_classes(cfg.split, cfg.fold),
    });
    if cfg.freeze_backbone {
        for (_, t) in backbone.named_parameters() {
            let _ = t.set_requires_grad(false);
        }
    }
    let mut opt;
    let (mut record, start) = match resume {
        Some(rec) => {
            backbone.load_weights(&rec.model_path(dir))?;
            if let Some(h) = &head {
                h.load_weights(&rec.model_path(dir))?;
            }
            opt = Sgd::new(&vs, cfg.lr, cfg.momentum, cfg.weight_decay);
            opt.load(&dir.join(&rec.checkpoint).join("optimizer.safetensors"))?;
            let start = rec.iteration;
            eprintln!("resuming {} at iteration {start}", dir.display());
            (
                RunRecord {
                    config: cfg.clone(),
                    ..rec
                },
                start,
            )
        }
        None => {
            if let Some(w) = &cfg.init_weights {
                backbone.load_weights(Path::new(w))?;
            }
            opt = Sgd::new(&vs, cfg.lr, cfg.momentum, cfg.weight_decay);
            let spec = TrainingSpec {
                split: cfg.split,
                fold: cfg.fold,
                shots: cfg.shots,
                min_pixels: cfg.min_pixels,
                hflip: cfg.hflip,
            };
            let sampler = coco
                .as_ref()
                .map(|data| data.sampler(spec, cfg.seed))
                .transpose()?;
            let video = davis
                .as_ref()
                .map(|(dataset, source)| {
                    let spec = VideoSpec {
                        shots: cfg.shots,
                        min_pixels: cfg.min_pixels,
                        hflip: cfg.hflip,
                    };
                    VideoSampler::new(dataset, spec, &source.holdout, cfg.seed)
                })
                .transpose()?;
            let mix = if sources.len() > 1 {
                let w: Vec<f64> = sources.iter().map(|s| s.weight).collect();
                Some(SourceMix::new(&w, cfg.seed)?)
            } else {
                None
            };
            let mut parts = Vec::new();
            if let (Some(s), Some(data)) = (&sampler, &coco) {
                parts.push(data.describe(s, cfg.fold));
            }
            if let Some(v) = &video {
                parts.push(format!(
                    "{} video sequences ({} frames)",
                    v.sequences().len(),
                    v.frames()
                ));
            }
            eprintln!(
                "training {} / {} on {}, {} iterations",
                cfg.method,
                kind,
                parts.join(" and "),
                cfg.iterations
            );
            let rec = RunRecord {
                format: RUN_FORMAT,
                host_version: env!("CARGO_PKG_VERSION").to_string(),
                config: cfg.clone(),
                iteration: 0,
                checkpoint: String::new(),
                sampler,
                video,
                mix,
                history: Vec::new(),
                device: format!("{device:?}"),
                elapsed_s: 0.0,
            };
            (rec, 0)
        }
    };
    let norm = Normalization {
        mean: kind.normalization().0,
        std: kind.normalization().1,
    };
    let size = InputSize::new(cfg.size[0], cfg.size[1]);
    let fill = norm
        .mean
        .map(|m| (m * 255.0).round().clamp(0.0, 255.0) as u8);
    let mut cache = ImageCache::new(size);
    let mut video_source = match (davis, &record.video) {
        (Some((dataset, _)), Some(sampler)) => Some(VideoSource::new(dataset, sampler, size)?),
        (Some(_), None) => bail!("the run record has no video sampler for its DAVIS source"),
        _ => None,
    };
    let started = Instant::now();
    let elapsed_before = record.elapsed_s;
    let end = match stop_after {
        Some(n) => (start + n).min(cfg.iterations),
        None => cfg.iterations,
    };
    let bar = indicatif::ProgressBar::new((end - start) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}<{eta}]")
            .unwrap(),
    );
    let batch = cfg.batch.max(1);
    for it in start..end {
        let lr = lr_at(cfg, it);
        opt.lr = lr;
        // The iteration's episodes (`--batch`), drawn in order from the samplers.
        let mut episodes = Vec::with_capacity(batch);
        for b in 0..batch {
            let source = record.mix.as_mut().map_or(0, SourceMix::next_source);
            let draw = match sources.get(source).map(|s| s.layout) {
                Some(DataLayout::Davis) => Draw::Video(
                    record
                        .video
                        .as_mut()
                        .ok_or_else(|| anyhow!("the run record has no video sampler"))?
                        .next_episode(),
                ),
                Some(_) => Draw::Class(
                    record
                        .sampler
                        .as_mut()
                        .ok_or_else(|| anyhow!("the run record has no class sampler"))?
                        .next_episode(),
                ),
                None => bail!("data source {source} of the mix is not in the run"),
            };
            let augment = EpisodeAugment {
                spec: cfg.augment.as_ref(),
                seed: cfg.seed,
                // One augmentation stream per episode (batch 1: the iteration).
                iteration: it * batch + b,
                fill,
            };
            let (t, augs) = match &draw {
                Draw::Class(ep) => {
                    let dataset = coco.as_ref().expect("a class sampler has its dataset");
                    episode_tensors(dataset, &mut cache, &norm, ep, augment, device)?
                }
                Draw::Video(ep) => (
                    video_source
                        .as_mut()
                        .expect("a video sampler has its dataset")
                        .episode_tensors(&norm, ep, augment, device)?,
                    Vec::new(),
                ),
            };
            episodes.push((draw, t, augs));
        }
        // One backbone pass over every image of the batch (supports, then query, per episode).
        let images: Vec<&Tensor> = episodes
            .iter()
            .flat_map(|(_, t, _)| [&t.supports, &t.query])
            .collect();
        let images = Tensor::cat(&images, 0);
        let feats = if cfg.freeze_backbone {
            tch::no_grad(|| backbone.forward_to(&images, cfg.feature_stride, false))?
        } else {
            backbone.forward_to(&images, cfg.feature_stride, true)?
        };
        let mut offset = 0;
        let mut totals = Vec::with_capacity(batch);
        let mut parts = LossParts::default();
        for (draw, t, augs) in &episodes {
            let k = t.supports.size()[0];
            let (support_f, query_f) = (feats.narrow(0, offset, k), feats.narrow(0, offset + k, 1));
            offset += k + 1;
            let (total, p) = match &head {
                None => panet::losses(&support_f, &query_f, t, cfg.align).into_parts(),
                Some(h) => h.episode_losses(&support_f, &query_f, t, || match draw {
                    Draw::Class(ep) => {
                        let dataset = coco.as_ref().expect("a class sampler has its dataset");
                        semantic_labels(dataset, &mut cache, ep, augs, &semantic_lut, device)
                            .map(Some)
                    }
                    Draw::Video(_) => Ok(None),
                })?,
            };
            totals.push(total);
            parts.add_scaled(&p, 1.0 / batch as f64);
        }
        // The batch's loss is the mean of its episodes' (batch 1: the episode's, unchanged).
        let total = if batch == 1 {
            totals.pop().expect("one episode")
        } else {
            Tensor::stack(&totals, 0).mean(Kind::Float)
        };
        let mut point = LossPoint {
            iteration: it + 1,
            loss: parts.loss,
            query: parts.query,
            align: parts.align,
            support: parts.support,
            multi_class: parts.multi_class,
            aux: parts.aux,
            lr,
        };
        if !point.loss.is_finite() {
            bail!(
                "the loss became {} at iteration {} (lr {lr}); lower --lr",
                point.loss,
                it + 1
            );
        }
        opt.zero_grad();
        total.backward();
        opt.step();
        point.iteration = it + 1;
        record.history.push(point);
        bar.inc(1);
        bar.set_message(format!("loss {:.4}", point.loss));
        // A stop from `--stop-after` behaves like a kill: nothing after the last checkpoint is kept.
        if (it + 1) % cfg.checkpoint_every == 0 || it + 1 == cfg.iterations {
            record.iteration = it + 1;
            record.checkpoint = format!("checkpoints/iter-{:07}", it + 1);
            record.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
            save_checkpoint(dir, &vs, &opt, &record)?;
        }
    }
    bar.finish_and_clear();
    let n = record.history.len();
    let head = mean_loss(&record.history[..n.min(50)]);
    let tail = mean_loss(&record.history[n.saturating_sub(50)..]);
    eprintln!(
        "{}: {} iterations, mean loss first 50 {:.4} -> last 50 {:.4}; checkpoint {}",
        dir.display(),
        record.iteration,
        head,
        tail,
        record.checkpoint
    );
    Ok(())
}

/// Class index -> SMCP multi-class target: 0 background, `i + 1` for the i-th base class,
/// 255 for every other (novel) class.
fn semantic_lut(base_classes: &[u8]) -> [u8; 256] {
    let mut lut = [IGNORE as u8; 256];
    lut[0] = 0;
    for (i, &c) in base_classes.iter().enumerate() {
        lut[c as usize] = (i + 1) as u8;
    }
    lut
}

/// SMCP's multi-class targets of an episode at the training size (flipped like the images),
/// through [`semantic_lut`].
fn semantic_labels(
    dataset: &ClassData,
    cache: &mut ImageCache,
    ep: &fss_lab::sampler::TrainingEpisode,
    augs: &[Augmentation],
    lut: &[u8; 256],
    device: Device,
) -> Result<SemanticLabels> {
    let size = cache.size;
    let mut label = |idx: usize, flip: bool, slot: usize| -> Result<Tensor> {
        let m = cache.label_map(dataset, idx, flip)?;
        let m = match augs.get(slot) {
            Some(a) => a.warp_labels(&m),
            None => m,
        };
        let v: Vec<i64> = m.data.iter().map(|&c| lut[c as usize] as i64).collect();
        Ok(Tensor::from_slice(&v).view([1, size.height as i64, size.width as i64]))
    };
    let k = ep.episode.supports.len();
    let supports = ep
        .episode
        .supports
        .iter()
        .enumerate()
        .map(|(i, &s)| label(s, ep.flips[i], i))
        .collect::<Result<Vec<_>>>()?;
    Ok(SemanticLabels {
        supports: Tensor::cat(&supports, 0).to_device(device),
        query: label(ep.episode.query, ep.flips[k], k)?.to_device(device),
    })
}

fn mean_loss(points: &[LossPoint]) -> f64 {
    points.iter().map(|p| p.loss).sum::<f64>() / points.len().max(1) as f64
}
