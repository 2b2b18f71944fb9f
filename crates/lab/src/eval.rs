//! The evaluation harnesses of evaluation.md, written once over a [`FeatureEncoder`] so that
//! `host eval` (tch) and `edge eval` (tract) run the very same protocol and scoring code.

use crate::data::coco::{CocoMaskDataset, FoldSplit};
use crate::data::folder::{
    generate_folder_episodes, FolderDataset, FolderEpisode, FOLDER_MIN_PIXELS,
};
use crate::data::pascal::VOID;
use crate::data::pascal::{
    pascal_fold_classes, PascalDataset, PascalOptions, PASCAL_FOLDS, VOC_CLASSES,
};
use crate::presets::{Benchmark, Preset, PresetHarness};
use crate::sampler::{Episode, EpisodeRecord};
use fss_core::davis::{check_same_size, DavisDataset};
use fss_core::error::{EdgeError, Result};
use fss_core::image_io::image_size;
use fss_core::metrics::{mean_and_population_std, percent, ClassIouAccumulator, VideoJAccumulator};
use fss_core::preprocess::{
    prepare_input, resize_mask_nearest, InputGeometry, InputSize, Normalization, Placement,
};
use fss_core::prototype::{logits_to_labels, logits_to_labels_placed, Prototypes, SupportShot};
use fss_core::report::{ClassEntry, EvalReport, FoldEntry};
use fss_core::tensor::{FeatureMap, Mask};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use fss_core::model::{predict_labels, FeatureEncoder, Progress, ScoringInput};

/// DAVIS one-shot protocol: per target the support is frame 0 with its mask, frames 1..N-1 are
/// queries scored independently at the annotation's resolution.
pub fn davis_one_shot(
    encoder: &mut dyn FeatureEncoder,
    dataset: &DavisDataset,
    input: ScoringInput,
    progress: Progress,
) -> Result<VideoJAccumulator> {
    let mut acc = VideoJAccumulator::new();
    let total: usize = dataset.sequences().iter().map(|s| s.len()).sum();
    let mut done = 0;
    for si in 0..dataset.sequences().len() {
        let features = davis_encode_sequence(encoder, dataset, si, input, &mut |n| {
            done += n;
            progress(done, total)
        })?;
        davis_predictions(
            encoder,
            dataset,
            si,
            &features,
            input,
            &mut |name, _, pred, gt| acc.add(name, pred, gt).map(|_| ()),
        )?;
    }
    Ok(acc)
}

/// The features of every frame of sequence `si` (each frame encoded once; every target
/// reuses them); `encoded(n)` after each batch of `n` frames.
fn davis_encode_sequence(
    encoder: &mut dyn FeatureEncoder,
    dataset: &DavisDataset,
    si: usize,
    input: ScoringInput,
    encoded: &mut dyn FnMut(usize),
) -> Result<Vec<FeatureMap>> {
    let seq = &dataset.sequences()[si];
    let batch = encoder.batch_size().max(1);
    let mut features = Vec::with_capacity(seq.len());
    for start in (0..seq.len()).step_by(batch) {
        let end = (start + batch).min(seq.len());
        let inputs = (start..end)
            .map(|f| {
                let image = dataset.load_image(si, f)?;
                // A mask of another size than its frame is a broken dataset, not a resize.
                let ann = &seq.annotations[f];
                check_same_size(&seq.frames[f], image.dimensions(), ann, image_size(ann)?)?;
                Ok(prepare_input(&image, input.size, &input.normalization))
            })
            .collect::<Result<Vec<_>>>()?;
        features.extend(encoder.encode_batch(&inputs, input.size)?);
        encoded(end - start);
    }
    Ok(features)
}

/// The one-shot predictions of sequence `si` from its frames' `features`: for each target
/// (the sequence, or each object of a multi-object dataset) and each query frame,
/// `sink(target name, frame, prediction, ground truth)`.
fn davis_predictions(
    model: &mut dyn FeatureEncoder,
    dataset: &DavisDataset,
    si: usize,
    features: &[FeatureMap],
    input: ScoringInput,
    sink: &mut dyn FnMut(&str, usize, &Mask, &Mask) -> Result<()>,
) -> Result<()> {
    let seq = &dataset.sequences()[si];
    let objects = dataset.objects(si)?;
    let targets: Vec<Option<u8>> = match dataset.kind() {
        fss_core::davis::DavisKind::SingleObject => vec![None],
        fss_core::davis::DavisKind::MultiObject => objects.into_iter().map(Some).collect(),
    };
    for object in targets {
        let name = match object {
            None => seq.name.clone(),
            Some(k) => format!("{}:{k}", seq.name),
        };
        let support_gt = dataset.ground_truth(si, 0, object)?;
        let support_mask = resize_mask_nearest(&support_gt, input.size.height, input.size.width);
        if support_mask.count_nonzero() == 0 {
            return Err(EdgeError::invalid(
                &seq.annotations[0],
                format!(
                    "the first-frame mask of target {name} is empty at {}",
                    input.size
                ),
            ));
        }
        let protos = model.prototypes(&[vec![SupportShot::from_foreground(
            features[0].clone(),
            support_mask,
        )]])?;
        for (f, query) in features.iter().enumerate().skip(1) {
            let gt = dataset.ground_truth(si, f, object)?;
            let pred = predict_labels(model, &protos, query, input.size, (gt.height, gt.width))?;
            sink(&name, f, &pred, &gt)?;
        }
    }
    Ok(())
}

/// How far the masks of two models agree on the same inputs (e.g. an int8 bundle and its
/// fp32 twin): every query mask of the DAVIS one-shot protocol, pixel by pixel.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MaskAgreement {
    /// Query masks compared.
    pub masks: usize,
    pub pixels: u64,
    /// Pixels with the same label in both.
    pub equal: u64,
    /// Foreground (label > 0) in both / in either.
    pub fg_intersection: u64,
    pub fg_union: u64,
    /// Percent of pixels with the same label.
    pub pixel_agreement: f64,
    /// Pooled IoU of the two foregrounds, percent.
    pub iou: f64,
    /// Mean over masks of the per-mask IoU of the two foregrounds (100 when both are empty).
    pub mean_mask_iou: f64,
    /// The lowest per-mask pixel agreement, percent, and where.
    pub worst_pixel_agreement: f64,
    pub worst_mask: String,
}

impl MaskAgreement {
    fn add(&mut self, name: &str, frame: usize, a: &Mask, b: &Mask) -> Result<()> {
        if (a.height, a.width) != (b.height, b.width) {
            return Err(EdgeError::input(format!(
                "{name} frame {frame}: masks of different sizes"
            )));
        }
        let (mut eq, mut i, mut u) = (0u64, 0u64, 0u64);
        for (x, y) in a.data.iter().zip(&b.data) {
            eq += (x == y) as u64;
            i += (*x > 0 && *y > 0) as u64;
            u += (*x > 0 || *y > 0) as u64;
        }
        let n = a.data.len() as u64;
        let agree = 100.0 * eq as f64 / n.max(1) as f64;
        let iou = if u == 0 {
            100.0
        } else {
            100.0 * i as f64 / u as f64
        };
        if self.masks == 0 || agree < self.worst_pixel_agreement {
            self.worst_pixel_agreement = agree;
            self.worst_mask = format!("{name} frame {frame}");
        }
        self.mean_mask_iou =
            (self.mean_mask_iou * self.masks as f64 + iou) / (self.masks + 1) as f64;
        self.masks += 1;
        self.pixels += n;
        self.equal += eq;
        self.fg_intersection += i;
        self.fg_union += u;
        self.pixel_agreement = 100.0 * self.equal as f64 / self.pixels.max(1) as f64;
        self.iou = if self.fg_union == 0 {
            100.0
        } else {
            100.0 * self.fg_intersection as f64 / self.fg_union as f64
        };
        Ok(())
    }
}

/// The masks of `a` and `b` under the DAVIS one-shot protocol, compared query by query.
pub fn davis_agreement(
    a: &mut dyn FeatureEncoder,
    b: &mut dyn FeatureEncoder,
    dataset: &DavisDataset,
    input: ScoringInput,
    progress: Progress,
) -> Result<MaskAgreement> {
    let mut out = MaskAgreement::default();
    let total: usize = 2 * dataset.sequences().iter().map(|s| s.len()).sum::<usize>();
    let mut done = 0;
    for si in 0..dataset.sequences().len() {
        let mut encoded = |n| {
            done += n;
            progress(done, total)
        };
        let fa = davis_encode_sequence(a, dataset, si, input, &mut encoded)?;
        let fb = davis_encode_sequence(b, dataset, si, input, &mut encoded)?;
        let mut masks_a = Vec::new();
        davis_predictions(a, dataset, si, &fa, input, &mut |_, _, pred, _| {
            masks_a.push(pred.clone());
            Ok(())
        })?;
        let mut k = 0;
        davis_predictions(b, dataset, si, &fb, input, &mut |name, f, pred, _| {
            out.add(name, f, &masks_a[k], pred)?;
            k += 1;
            Ok(())
        })?;
    }
    Ok(out)
}

/// Fills a report from a DAVIS accumulator.
pub fn davis_report(mut base: EvalReport, acc: &VideoJAccumulator) -> EvalReport {
    base.protocol = "davis".into();
    base.j_mean = acc.j_mean_percent();
    base.fb_iou = acc.fb_iou_percent();
    base.per_sequence = Some(acc.per_sequence_percent());
    base
}

/// Settings of the COCO few-shot episodes protocol.
#[derive(Debug, Clone)]
pub struct CocoEpisodes {
    pub shots: usize,
    pub episodes: usize,
    pub runs: usize,
    pub seed: u64,
    pub folds: Vec<usize>,
    pub min_pixels: u64,
    /// Also the OSLSM small-object rule ([`crate::data::OSLSM_MIN_CELLS`]).
    pub oslsm_grid: bool,
    pub split: FoldSplit,
    /// Score at the input size (ground truth nearest-resized to it, as PANet's 417² and
    /// HSNet's 400² harnesses do) instead of the label's own size.
    pub label_at_input: bool,
}

/// Per fold and run: one accumulator. Returned so callers can report and compare.
pub struct CocoResult {
    /// `(fold, run) -> accumulator`.
    pub runs: BTreeMap<(usize, usize), ClassIouAccumulator>,
    /// Classes taking part per fold.
    pub taking_part: BTreeMap<usize, usize>,
    /// The episodes that were scored, in order.
    pub episodes: Vec<EpisodeRecord>,
}

/// Encodes pool images once and keeps their features (evaluation computes each image's encoder
/// features once, not once per episode).
struct FeatureCache<'a> {
    encoder: &'a mut dyn FeatureEncoder,
    input: ScoringInput,
    cache: HashMap<usize, FeatureMap>,
}

impl FeatureCache<'_> {
    /// The model's prediction for the cached query image `query` (see [`predict_labels`]).
    fn predict(
        &mut self,
        prototypes: &Prototypes,
        query: usize,
        label_size: (usize, usize),
    ) -> Result<Mask> {
        let features = self.cache.get(&query).ok_or_else(|| {
            EdgeError::input(format!("image {query} was not encoded before scoring"))
        })?;
        predict_labels(
            &mut *self.encoder,
            prototypes,
            features,
            self.input.size,
            label_size,
        )
    }

    fn ensure(&mut self, dataset: &CocoMaskDataset, wanted: &[usize]) -> Result<()> {
        self.ensure_with(wanted, |i| dataset.load_image(i))
    }

    /// Encodes the `wanted` images not cached yet, loading each with `load`.
    fn ensure_with(
        &mut self,
        wanted: &[usize],
        load: impl Fn(usize) -> Result<image::RgbImage>,
    ) -> Result<()> {
        let (size, norm) = (self.input.size, self.input.normalization);
        let missing = wanted
            .iter()
            .filter(|i| !self.cache.contains_key(i))
            .map(|&i| (size, i))
            .collect();
        let cache = &mut self.cache;
        encode_grouped(
            self.encoder,
            missing,
            |i| Ok(prepare_input(&load(i)?, size, &norm)),
            |i, f| {
                cache.insert(i, f);
            },
        )
    }
}

/// Encodes images given as `(network input size, index)`, each once: sorted by size then index
/// and deduplicated, batched within one size (so an encoder that pins a plan per size, as the
/// tract backend does, builds it once per size); `prepare(i)` gives image `i`'s input,
/// `store(i, features)` takes its features.
fn encode_grouped(
    encoder: &mut dyn FeatureEncoder,
    mut missing: Vec<(InputSize, usize)>,
    prepare: impl Fn(usize) -> Result<Vec<f32>>,
    mut store: impl FnMut(usize, FeatureMap),
) -> Result<()> {
    missing.sort_unstable_by_key(|&(s, i)| (s.height, s.width, i));
    missing.dedup();
    let batch = encoder.batch_size().max(1);
    for group in missing.chunk_by(|a, b| a.0 == b.0) {
        let size = group[0].0;
        for chunk in group.chunks(batch) {
            let inputs = chunk
                .iter()
                .map(|&(_, i)| prepare(i))
                .collect::<Result<Vec<_>>>()?;
            for (&(_, i), f) in chunk.iter().zip(encoder.encode_batch(&inputs, size)?) {
                store(i, f);
            }
        }
    }
    Ok(())
}

/// Scores one 1-way K-shot episode; returns the prediction and ground truth at the query's size.
fn score_episode(
    cache: &mut FeatureCache,
    dataset: &CocoMaskDataset,
    episode: &Episode,
    input: ScoringInput,
    label_at_input: bool,
) -> Result<(fss_core::tensor::Mask, fss_core::tensor::Mask)> {
    let shots = episode
        .supports
        .iter()
        .map(|&s| {
            let mask = dataset.class_mask(s, episode.class_index)?;
            let mask = resize_mask_nearest(&mask, input.size.height, input.size.width);
            Ok(SupportShot::from_foreground(cache.cache[&s].clone(), mask))
        })
        .collect::<Result<Vec<_>>>()?;
    let protos = cache.encoder.prototypes(&[shots])?;
    let mut gt = dataset.class_mask(episode.query, episode.class_index)?;
    if label_at_input {
        gt = resize_mask_nearest(&gt, input.size.height, input.size.width);
    }
    let pred = cache.predict(&protos, episode.query, (gt.height, gt.width))?;
    Ok((pred, gt))
}

/// Episodes per (fold, run), and the taking-part classes per fold.
type Plan<E> = (Vec<((usize, usize), Vec<E>)>, BTreeMap<usize, usize>);

/// The episodes of the COCO protocol, sampled from the seeds or replayed from `replay` (one run
/// per fold).
fn coco_plan(
    dataset: &CocoMaskDataset,
    settings: &CocoEpisodes,
    replay: Option<&[EpisodeRecord]>,
) -> Result<Plan<Episode>> {
    let mut plan: Vec<((usize, usize), Vec<Episode>)> = Vec::new();
    let mut taking_part = BTreeMap::new();
    match replay {
        Some(records) => {
            let mut by_fold: BTreeMap<usize, Vec<Episode>> = BTreeMap::new();
            for r in records {
                let e = Episode::from_record(r, dataset)?;
                by_fold.entry(e.fold).or_default().push(e);
            }
            for (fold, eps) in by_fold {
                let classes: std::collections::BTreeSet<u8> =
                    eps.iter().map(|e| e.class_index).collect();
                taking_part.insert(fold, classes.len());
                plan.push(((fold, 0), eps));
            }
        }
        None => {
            for &fold in &settings.folds {
                let spec = crate::sampler::EpisodeSpec {
                    shots: settings.shots,
                    episodes: settings.episodes,
                    min_pixels: settings.min_pixels,
                    oslsm_grid: settings.oslsm_grid,
                    split: settings.split,
                    fold,
                };
                for run in 0..settings.runs {
                    let set = crate::sampler::generate_episodes(
                        dataset,
                        &spec,
                        settings.seed + run as u64,
                    )?;
                    taking_part.insert(fold, set.taking_part.len());
                    plan.push(((fold, run), set.episodes));
                }
            }
        }
    }
    Ok((plan, taking_part))
}

/// The COCO episodes protocol (sampled from the seeds, or replayed from `replay`).
pub fn coco_episodes(
    encoder: &mut dyn FeatureEncoder,
    dataset: &CocoMaskDataset,
    input: ScoringInput,
    settings: &CocoEpisodes,
    replay: Option<&[EpisodeRecord]>,
    progress: Progress,
) -> Result<CocoResult> {
    // The episode lists first (cheap), then encode every image they use once.
    let (plan, taking_part) = coco_plan(dataset, settings, replay)?;
    let total: usize = plan.iter().map(|(_, e)| e.len()).sum();
    let mut cache = FeatureCache {
        encoder,
        input,
        cache: HashMap::new(),
    };
    let mut result = CocoResult {
        runs: BTreeMap::new(),
        taking_part,
        episodes: Vec::with_capacity(total),
    };
    let mut done = 0;
    for ((fold, run), episodes) in plan {
        let mut acc = ClassIouAccumulator::new();
        for chunk in episodes.chunks(64) {
            let wanted: Vec<usize> = chunk
                .iter()
                .flat_map(|e| e.supports.iter().copied().chain(std::iter::once(e.query)))
                .collect();
            cache.ensure(dataset, &wanted)?;
            for e in chunk {
                let (pred, gt) =
                    score_episode(&mut cache, dataset, e, input, settings.label_at_input)?;
                acc.add(e.class_index, &pred, &gt)?;
                result.episodes.push(e.to_record(dataset)?);
                done += 1;
                progress(done, total);
            }
        }
        result.runs.insert((fold, run), acc);
    }
    Ok(result)
}

/// Fills a report from a COCO result: per fold mean and population std over runs, the mean
/// over folds, FB-IoU averaged likewise, per-class IoU pooled over the runs (keyed by COCO id).
pub fn coco_report(
    base: EvalReport,
    dataset: &CocoMaskDataset,
    result: &CocoResult,
) -> Result<EvalReport> {
    fold_runs_report(base, "coco", &result.runs, &result.taking_part, |class| {
        Ok(Some((
            dataset.class_id(class)?.to_string(),
            dataset.class_name(class)?.to_string(),
        )))
    })
}

/// The report of fold x run accumulators, shared by the COCO, PASCAL and folder protocols: per
/// fold mean and population std of the runs' mIoU, the mean over folds, FB-IoU averaged the same
/// way, and per-class IoU pooled over all runs of a fold. `class_entry` maps a class to its
/// `per_class` key and name (`None` leaves it out).
pub fn fold_runs_report(
    mut base: EvalReport,
    protocol: &str,
    runs: &BTreeMap<(usize, usize), ClassIouAccumulator>,
    taking_part: &BTreeMap<usize, usize>,
    class_entry: impl Fn(u8) -> Result<Option<(String, String)>>,
) -> Result<EvalReport> {
    base.protocol = protocol.into();
    let mut per_fold = Vec::new();
    let mut fold_mious = Vec::new();
    let mut fold_fbs = Vec::new();
    let mut per_class = BTreeMap::new();
    let folds: std::collections::BTreeSet<usize> = runs.keys().map(|(f, _)| *f).collect();
    for fold in folds {
        let accs: Vec<&ClassIouAccumulator> = runs
            .iter()
            .filter(|((f, _), _)| *f == fold)
            .map(|(_, a)| a)
            .collect();
        let mious: Vec<f64> = accs.iter().filter_map(|a| a.miou_percent()).collect();
        let fbs: Vec<f64> = accs.iter().filter_map(|a| a.fb_iou_percent()).collect();
        let (m, s) = mean_and_population_std(&mious).unwrap_or((f64::NAN, 0.0));
        let fb = mean_and_population_std(&fbs);
        per_fold.push(FoldEntry {
            fold,
            miou: m,
            miou_std: s,
            classes: taking_part.get(&fold).copied().unwrap_or(0),
            fb_iou: fb.map(|(m, _)| m),
            fb_iou_std: fb.map(|(_, s)| s),
        });
        fold_mious.push(m);
        if let Some((fb, _)) = fb {
            fold_fbs.push(fb);
        }
        let mut merged = ClassIouAccumulator::new();
        for a in &accs {
            merged.merge(a);
        }
        for (class, iou) in merged.per_class() {
            if let Some((key, name)) = class_entry(class)? {
                per_class.insert(
                    key,
                    ClassEntry {
                        name,
                        iou: percent(iou),
                    },
                );
            }
        }
    }
    base.miou = mean_and_population_std(&fold_mious).map(|(m, _)| m);
    base.fb_iou = mean_and_population_std(&fold_fbs).map(|(m, _)| m);
    base.per_fold = Some(per_fold);
    base.per_class = Some(per_class);
    Ok(base)
}

/// The protocols of evaluation.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Protocol {
    Davis,
    Coco,
    /// A user dataset in the folder format (`data::folder`): 1-way K-shot episodes over its
    /// class folders.
    Folder,
    /// PASCAL-5i on a VOC2012-layout folder (`data::pascal`): 1-way K-shot episodes on each
    /// fold's novel classes, the `val` list, 255 ignored.
    Pascal,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Davis => "davis",
            Protocol::Coco => "coco",
            Protocol::Folder => "folder",
            Protocol::Pascal => "pascal",
        }
    }
}

/// One evaluation as `host eval` and `edge eval` ask for it.
#[derive(Debug, Clone)]
pub struct ProtocolRequest {
    pub protocol: Protocol,
    pub data: PathBuf,
    pub shots: usize,
    /// Episodes per fold per run (coco, pascal, folder); `None`: [`DEFAULT_EPISODES`], or the
    /// preset's.
    pub episodes: Option<usize>,
    /// COCO: runs (seeds `seed..seed + runs`).
    pub runs: usize,
    pub seed: u64,
    /// COCO: folds; `None` = the model's training fold if it has one, else all four.
    pub folds: Option<Vec<usize>>,
    /// The fold the model was trained for (its novel classes are the ones to test).
    pub trained_fold: Option<usize>,
    pub write_episodes: Option<PathBuf>,
    pub episodes_file: Option<PathBuf>,
    /// PASCAL: list, labels folder and 255 handling.
    pub pascal: PascalOptions,
    /// COCO or PASCAL-5i: a published harness's settings (`crate::presets`); they replace
    /// `runs`, `seed`, the 255 handling and (unless given) `episodes`; `input.size` must be the
    /// preset's fixed input size, if it has one.
    pub preset: Option<Preset>,
}

/// Episodes per fold per run when neither `--episodes` nor a preset says.
pub const DEFAULT_EPISODES: usize = 1000;

impl ProtocolRequest {
    /// `episodes`, or [`DEFAULT_EPISODES`].
    pub fn episodes(&self) -> usize {
        self.episodes.unwrap_or(DEFAULT_EPISODES)
    }
}

/// Runs a protocol end to end and fills `base` (identification fields set by the caller) with
/// the metrics and the elapsed time.
pub fn run_protocol(
    encoder: &mut dyn FeatureEncoder,
    input: ScoringInput,
    request: &ProtocolRequest,
    mut base: EvalReport,
    progress: Progress,
) -> Result<EvalReport> {
    if request.shots == 0 {
        return Err(EdgeError::input("--shots must be at least 1"));
    }
    if let Some(preset) = request.preset {
        return run_preset(encoder, input, request, base, preset, progress);
    }
    let started = Instant::now();
    base.seed = request.seed;
    // Episode lists: replayed from a file if given; the scored ones written if asked.
    let replay = match &request.episodes_file {
        Some(p) => Some(crate::sampler::read_jsonl(p)?),
        None => None,
    };
    let mut scored: Vec<EpisodeRecord> = Vec::new();
    let mut report = match request.protocol {
        Protocol::Davis => {
            if request.shots != 1 {
                return Err(EdgeError::input(
                    "the DAVIS protocol is one-shot (frame 0); --shots must be 1",
                ));
            }
            let dataset = DavisDataset::open(&request.data)?;
            let acc = davis_one_shot(encoder, &dataset, input, progress)?;
            davis_report(base, &acc)
        }
        Protocol::Coco => {
            let dataset = CocoMaskDataset::open(&request.data)?;
            let folds = coco_folds(request)?;
            let settings = CocoEpisodes {
                shots: request.shots,
                episodes: request.episodes(),
                runs: request.runs,
                seed: request.seed,
                folds: folds.clone(),
                min_pixels: crate::data::coco::DEFAULT_MIN_PIXELS,
                oslsm_grid: false,
                split: FoldSplit::Interleaved,
                label_at_input: false,
            };
            let mut result = coco_episodes(
                encoder,
                &dataset,
                input,
                &settings,
                replay.as_deref(),
                progress,
            )?;
            scored = std::mem::take(&mut result.episodes);
            base.folds = Some(folds);
            base.episodes = Some(settings.episodes);
            base.runs = settings.runs;
            coco_report(base, &dataset, &result)?
        }
        Protocol::Folder => {
            if request.folds.is_some() {
                return Err(EdgeError::input(
                    "the folder protocol has no folds (every class folder takes part); drop --folds",
                ));
            }
            let dataset = FolderDataset::open(&request.data)?;
            let settings = FolderEpisodes {
                shots: request.shots,
                episodes: request.episodes(),
                runs: request.runs,
                seed: request.seed,
                min_pixels: FOLDER_MIN_PIXELS,
            };
            let mut result = folder_episodes(
                encoder,
                &dataset,
                input,
                &settings,
                replay.as_deref(),
                progress,
            )?;
            scored = std::mem::take(&mut result.episodes);
            base.episodes = Some(request.episodes());
            base.runs = request.runs;
            folder_report(base, &dataset, &result)?
        }
        Protocol::Pascal => {
            let dataset = PascalDataset::open(&request.data, &request.pascal)?;
            let folds = pascal_folds(request)?;
            let settings = PascalEpisodes {
                shots: request.shots,
                episodes: request.episodes(),
                runs: request.runs,
                seed: request.seed,
                folds: folds.clone(),
                min_pixels: PASCAL_MIN_PIXELS,
                oslsm_grid: false,
            };
            let mut result = pascal_episodes(
                encoder,
                &dataset,
                input,
                &settings,
                replay.as_deref(),
                progress,
            )?;
            scored = std::mem::take(&mut result.episodes);
            base.folds = Some(folds);
            base.episodes = Some(settings.episodes);
            base.runs = settings.runs;
            pascal_report(base, &result)?
        }
    };
    if let Some(p) = request
        .write_episodes
        .as_ref()
        .filter(|_| request.protocol != Protocol::Davis)
    {
        crate::sampler::write_jsonl(p, &scored)?;
    }
    report.timing.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The COCO folds of a request: `--folds`, else the model's training fold, else all four.
fn coco_folds(request: &ProtocolRequest) -> Result<Vec<usize>> {
    let folds = match (&request.folds, request.trained_fold) {
        (Some(f), _) => f.clone(),
        (None, Some(f)) => vec![f],
        (None, None) => vec![0, 1, 2, 3],
    };
    for &f in &folds {
        crate::data::coco::check_fold(f)?;
    }
    Ok(folds)
}

/// The PASCAL-5i folds of a request: `--folds`, else all four (a model's training fold is a
/// COCO-20i fold: it says nothing about PASCAL-5i).
fn pascal_folds(request: &ProtocolRequest) -> Result<Vec<usize>> {
    let folds = request
        .folds
        .clone()
        .unwrap_or_else(|| (0..PASCAL_FOLDS).collect());
    for &f in &folds {
        pascal_fold_classes(f)?;
    }
    Ok(folds)
}

/// Settings of the folder protocol (`Protocol::Folder`).
#[derive(Debug, Clone)]
pub struct FolderEpisodes {
    pub shots: usize,
    /// Episodes per run.
    pub episodes: usize,
    pub runs: usize,
    pub seed: u64,
    /// Object pixels a mask needs for its image to be drawn ([`FOLDER_MIN_PIXELS`] = 1).
    pub min_pixels: u64,
}

/// Per run: one accumulator keyed by class position + 1.
pub struct FolderResult {
    /// `run -> accumulator`.
    pub runs: BTreeMap<usize, ClassIouAccumulator>,
    /// Classes taking part.
    pub taking_part: usize,
    /// The episodes that were scored, in order (JSON Lines form).
    pub episodes: Vec<EpisodeRecord>,
}

/// The folder protocol: the same scoring as the COCO episodes, over a [`FolderDataset`]
/// (sampled with the seeds of [`crate::sampler`] on fold 0, or replayed from `replay`).
pub fn folder_episodes(
    encoder: &mut dyn FeatureEncoder,
    dataset: &FolderDataset,
    input: ScoringInput,
    settings: &FolderEpisodes,
    replay: Option<&[EpisodeRecord]>,
    progress: Progress,
) -> Result<FolderResult> {
    let mut plan: Vec<(usize, Vec<FolderEpisode>)> = Vec::new();
    let taking_part;
    match replay {
        Some(records) => {
            let eps = records
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    FolderEpisode::from_record(r, dataset)
                        .map_err(|e| EdgeError::input(format!("episode {}: {e}", i + 1)))
                })
                .collect::<Result<Vec<_>>>()?;
            let classes: std::collections::BTreeSet<usize> = eps.iter().map(|e| e.class).collect();
            taking_part = classes.len();
            plan.push((0, eps));
        }
        None => {
            let mut tp = 0;
            for run in 0..settings.runs {
                let (classes, eps) = generate_folder_episodes(
                    dataset,
                    settings.shots,
                    settings.episodes,
                    settings.min_pixels,
                    settings.seed + run as u64,
                )?;
                tp = classes.len();
                plan.push((run, eps));
            }
            taking_part = tp;
        }
    }
    let total: usize = plan.iter().map(|(_, e)| e.len()).sum();
    let mut cache = FeatureCache {
        encoder,
        input,
        cache: HashMap::new(),
    };
    let mut result = FolderResult {
        runs: BTreeMap::new(),
        taking_part,
        episodes: Vec::with_capacity(total),
    };
    let mut done = 0;
    for (run, episodes) in plan {
        let mut acc = ClassIouAccumulator::new();
        for chunk in episodes.chunks(64) {
            let wanted: Vec<usize> = chunk
                .iter()
                .flat_map(|e| e.supports.iter().copied().chain(std::iter::once(e.query)))
                .collect();
            cache.ensure_with(&wanted, |i| dataset.load_image(i))?;
            for e in chunk {
                let shots = e
                    .supports
                    .iter()
                    .map(|&s| {
                        let mask = dataset.load_mask(s)?;
                        let mask = resize_mask_nearest(&mask, input.size.height, input.size.width);
                        if mask.count_nonzero() == 0 {
                            return Err(EdgeError::invalid(
                                &dataset.image(s)?.mask_path,
                                format!("support mask is empty at {}", input.size),
                            ));
                        }
                        Ok(SupportShot::from_foreground(cache.cache[&s].clone(), mask))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let protos = cache.encoder.prototypes(&[shots])?;
                let gt = dataset.load_mask(e.query)?;
                let pred = cache.predict(&protos, e.query, (gt.height, gt.width))?;
                acc.add((e.class + 1) as u8, &pred, &gt)?;
                result.episodes.push(e.to_record(dataset)?);
                done += 1;
                progress(done, total);
            }
        }
        result.runs.insert(run, acc);
    }
    Ok(result)
}

/// Fills a report from a folder result: mIoU mean and population std over runs (one
/// `per_fold` entry, fold 0), FB-IoU averaged over runs, per-class IoU pooled over the runs and
/// keyed by the class folder name.
pub fn folder_report(
    base: EvalReport,
    dataset: &FolderDataset,
    result: &FolderResult,
) -> Result<EvalReport> {
    let runs: BTreeMap<(usize, usize), ClassIouAccumulator> = result
        .runs
        .iter()
        .map(|(&run, acc)| ((0, run), acc.clone()))
        .collect();
    let taking_part = BTreeMap::from([(0, result.taking_part)]);
    fold_runs_report(base, "folder", &runs, &taking_part, |key| {
        Ok(dataset
            .classes()
            .get((key as usize).wrapping_sub(1))
            .map(|c| (c.name.clone(), c.name.clone())))
    })
}

/// Settings of the PASCAL-5i protocol (`Protocol::Pascal`; methods.md §7.1).
#[derive(Debug, Clone)]
pub struct PascalEpisodes {
    pub shots: usize,
    /// Episodes per fold per run.
    pub episodes: usize,
    pub runs: usize,
    pub seed: u64,
    pub folds: Vec<usize>,
    /// Class pixels (at the label's resolution) an image needs to be drawn for that class
    /// ([`PASCAL_MIN_PIXELS`] = 1: any pixel of the class, as PANet's pools).
    pub min_pixels: u64,
    /// Also the OSLSM small-object rule ([`crate::data::OSLSM_MIN_CELLS`]).
    pub oslsm_grid: bool,
}

impl PascalEpisodes {
    /// The episode settings of `coco` (shots, episodes, runs, seed, eligibility) on PASCAL-5i
    /// `folds`.
    pub fn from_coco(coco: &CocoEpisodes, folds: Vec<usize>) -> PascalEpisodes {
        PascalEpisodes {
            shots: coco.shots,
            episodes: coco.episodes,
            runs: coco.runs,
            seed: coco.seed,
            folds,
            min_pixels: coco.min_pixels,
            oslsm_grid: coco.oslsm_grid,
        }
    }
}

/// Default eligibility of the PASCAL-5i protocol: the class is present (PANet; PFENet's
/// 2,048 px rule is `min_pixels = 2048`).
pub const PASCAL_MIN_PIXELS: u64 = 1;

/// One 1-way K-shot PASCAL-5i episode (indices into the [`PascalDataset`]'s list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PascalEpisode {
    pub fold: usize,
    /// VOC class id 1..=20.
    pub class: u8,
    pub supports: Vec<usize>,
    pub query: usize,
}

impl PascalEpisode {
    /// The JSON Lines form: `class_id` = VOC id, paths `JPEGImages/<name>.jpg`.
    pub fn to_record(&self, dataset: &PascalDataset) -> Result<EpisodeRecord> {
        let path = |i: usize| {
            dataset
                .image(i)
                .map(|im| format!("JPEGImages/{}.jpg", im.name))
        };
        Ok(EpisodeRecord {
            fold: self.fold,
            class_id: self.class as u32,
            supports: self
                .supports
                .iter()
                .map(|&i| path(i))
                .collect::<Result<_>>()?,
            query: path(self.query)?,
        })
    }

    /// Resolves a record against the dataset's list (images by name; `JPEGImages/` optional).
    pub fn from_record(record: &EpisodeRecord, dataset: &PascalDataset) -> Result<PascalEpisode> {
        if !(1..=20).contains(&record.class_id) {
            return Err(EdgeError::input(format!(
                "episode class_id {} is not a VOC class id (1..=20)",
                record.class_id
            )));
        }
        if record.supports.is_empty() {
            return Err(EdgeError::input("episode has no support images"));
        }
        let find = |p: &str| {
            let name = std::path::Path::new(p)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("");
            dataset
                .images()
                .iter()
                .position(|im| im.name == name)
                .ok_or_else(|| {
                    EdgeError::input(format!(
                        "episode image {p:?} is not in the list of {}",
                        dataset.root().display()
                    ))
                })
        };
        Ok(PascalEpisode {
            fold: record.fold,
            class: record.class_id as u8,
            supports: record
                .supports
                .iter()
                .map(|p| find(p))
                .collect::<Result<_>>()?,
            query: find(&record.query)?,
        })
    }
}

/// The fold's novel classes (ascending VOC ids) with at least `shots + 1` eligible images.
pub fn pascal_taking_part(
    dataset: &PascalDataset,
    fold: usize,
    shots: usize,
    min_pixels: u64,
) -> Result<Vec<u8>> {
    pascal_taking_part_with(dataset, fold, shots, (min_pixels, false))
}

/// [`pascal_taking_part`] with `(min_pixels, oslsm_grid)` eligibility.
fn pascal_taking_part_with(
    dataset: &PascalDataset,
    fold: usize,
    shots: usize,
    (min_pixels, oslsm_grid): (u64, bool),
) -> Result<Vec<u8>> {
    Ok(pascal_fold_classes(fold)?
        .into_iter()
        .filter(|&c| {
            dataset
                .eligible_images_with(c, min_pixels, oslsm_grid)
                .len()
                > shots
        })
        .collect())
}

/// The episodes of one fold and run: exactly the draw order of [`crate::sampler`] (RNG
/// `eval_rng(seed, fold)`, the class uniform over the taking-part classes, then
/// `draw_distinct` over the class's eligible images: K supports in order, then the query).
/// Returns the taking-part classes and the episodes.
pub fn generate_pascal_episodes(
    dataset: &PascalDataset,
    fold: usize,
    shots: usize,
    episodes: usize,
    min_pixels: u64,
    seed: u64,
) -> Result<(Vec<u8>, Vec<PascalEpisode>)> {
    generate_pascal_episodes_with(dataset, fold, shots, episodes, (min_pixels, false), seed)
}

/// [`generate_pascal_episodes`] with `(min_pixels, oslsm_grid)` eligibility.
fn generate_pascal_episodes_with(
    dataset: &PascalDataset,
    fold: usize,
    shots: usize,
    episodes: usize,
    (min_pixels, oslsm_grid): (u64, bool),
    seed: u64,
) -> Result<(Vec<u8>, Vec<PascalEpisode>)> {
    if shots == 0 {
        return Err(EdgeError::input("shots must be at least 1"));
    }
    let taking_part = pascal_taking_part_with(dataset, fold, shots, (min_pixels, oslsm_grid))?;
    if taking_part.is_empty() && episodes > 0 {
        return Err(EdgeError::invalid(
            dataset.root(),
            format!(
                "PASCAL-5i fold {fold} has no class with at least {} images of >= {min_pixels} px{} in the list",
                shots + 1,
                crate::data::oslsm_rule_text(oslsm_grid)
            ),
        ));
    }
    let eligible: Vec<Vec<usize>> = taking_part
        .iter()
        .map(|&c| dataset.eligible_images_with(c, min_pixels, oslsm_grid))
        .collect();
    let mut rng = crate::sampler::eval_rng(seed, fold);
    let mut out = Vec::with_capacity(episodes);
    for _ in 0..episodes {
        let ci = rand::Rng::random_range(&mut rng, 0..taking_part.len() as u32) as usize;
        let e = &eligible[ci];
        let mut imgs: Vec<usize> = crate::sampler::draw_distinct(&mut rng, e.len(), shots + 1)
            .into_iter()
            .map(|p| e[p])
            .collect();
        let query = imgs.pop().expect("shots + 1 >= 1 images");
        out.push(PascalEpisode {
            fold,
            class: taking_part[ci],
            supports: imgs,
            query,
        });
    }
    Ok((taking_part, out))
}

/// Per fold and run: one accumulator keyed by VOC id (255 ignored when the dataset ignores it).
pub struct PascalResult {
    /// `(fold, run) -> accumulator`.
    pub runs: BTreeMap<(usize, usize), ClassIouAccumulator>,
    /// Classes taking part per fold.
    pub taking_part: BTreeMap<usize, usize>,
    /// The episodes that were scored, in order (JSON Lines form).
    pub episodes: Vec<EpisodeRecord>,
}

/// The episodes of the PASCAL-5i protocol, sampled from the seeds or replayed from `replay`
/// (one run per fold).
fn pascal_plan(
    dataset: &PascalDataset,
    settings: &PascalEpisodes,
    replay: Option<&[EpisodeRecord]>,
) -> Result<Plan<PascalEpisode>> {
    let mut plan: Vec<((usize, usize), Vec<PascalEpisode>)> = Vec::new();
    let mut taking_part = BTreeMap::new();
    match replay {
        Some(records) => {
            let mut by_fold: BTreeMap<usize, Vec<PascalEpisode>> = BTreeMap::new();
            for (i, r) in records.iter().enumerate() {
                let e = PascalEpisode::from_record(r, dataset)
                    .map_err(|e| EdgeError::input(format!("episode {}: {e}", i + 1)))?;
                by_fold.entry(e.fold).or_default().push(e);
            }
            for (fold, eps) in by_fold {
                let classes: std::collections::BTreeSet<u8> = eps.iter().map(|e| e.class).collect();
                taking_part.insert(fold, classes.len());
                plan.push(((fold, 0), eps));
            }
        }
        None => {
            for &fold in &settings.folds {
                for run in 0..settings.runs {
                    let (classes, eps) = generate_pascal_episodes_with(
                        dataset,
                        fold,
                        settings.shots,
                        settings.episodes,
                        (settings.min_pixels, settings.oslsm_grid),
                        settings.seed + run as u64,
                    )?;
                    taking_part.insert(fold, classes.len());
                    plan.push(((fold, run), eps));
                }
            }
        }
    }
    Ok((plan, taking_part))
}

/// The PASCAL-5i protocol: 1-way K-shot episodes on each fold's novel classes, the canonical
/// scoring at the label's resolution. With [`crate::data::pascal::VoidLabel::Ignore`] the 255 pixels are left out of
/// both support prototypes (neither foreground nor background) and are excluded from prediction
/// and ground truth when counting; with [`crate::data::pascal::VoidLabel::Background`] they are background.
pub fn pascal_episodes(
    encoder: &mut dyn FeatureEncoder,
    dataset: &PascalDataset,
    input: ScoringInput,
    settings: &PascalEpisodes,
    replay: Option<&[EpisodeRecord]>,
    progress: Progress,
) -> Result<PascalResult> {
    let (plan, taking_part) = pascal_plan(dataset, settings, replay)?;
    let total: usize = plan.iter().map(|(_, e)| e.len()).sum();
    let mut cache = FeatureCache {
        encoder,
        input,
        cache: HashMap::new(),
    };
    let mut result = PascalResult {
        runs: BTreeMap::new(),
        taking_part,
        episodes: Vec::with_capacity(total),
    };
    let mut done = 0;
    for ((fold, run), episodes) in plan {
        let mut acc = ClassIouAccumulator::with_ignore(dataset.ignore_label());
        for chunk in episodes.chunks(64) {
            let wanted: Vec<usize> = chunk
                .iter()
                .flat_map(|e| e.supports.iter().copied().chain(std::iter::once(e.query)))
                .collect();
            cache.ensure_with(&wanted, |i| dataset.load_image(i))?;
            for e in chunk {
                let shots = e
                    .supports
                    .iter()
                    .map(|&s| {
                        // 1 = class, 0 = background, 255 = void (only when ignored).
                        let m = dataset.class_mask(s, e.class)?;
                        let m = resize_mask_nearest(&m, input.size.height, input.size.width);
                        let pick = |want: u8| fss_core::tensor::Mask {
                            height: m.height,
                            width: m.width,
                            data: m.data.iter().map(|&v| (v == want) as u8).collect(),
                        };
                        let foreground = pick(1);
                        if foreground.count_nonzero() == 0 {
                            return Err(EdgeError::invalid(
                                &dataset.image(s)?.label_path,
                                format!(
                                    "class {} ({}) vanishes from the support mask at {} (nearest resize); give a larger --size",
                                    e.class,
                                    VOC_CLASSES[e.class as usize - 1],
                                    input.size
                                ),
                            ));
                        }
                        Ok(SupportShot {
                            features: cache.cache[&s].clone(),
                            foreground,
                            background: pick(0),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let protos = cache.encoder.prototypes(&[shots])?;
                let gt = dataset.class_mask(e.query, e.class)?;
                let mut pred = cache.predict(&protos, e.query, (gt.height, gt.width))?;
                if let Some(ig) = dataset.ignore_label() {
                    // Excluded from the prediction too (HSNet / PFENet style; the counts skip
                    // these pixels either way).
                    for (p, &g) in pred.data.iter_mut().zip(&gt.data) {
                        if g == ig {
                            *p = ig;
                        }
                    }
                }
                acc.add(e.class, &pred, &gt)?;
                result.episodes.push(e.to_record(dataset)?);
                done += 1;
                progress(done, total);
            }
        }
        result.runs.insert((fold, run), acc);
    }
    Ok(result)
}

/// Fills a report from a PASCAL-5i result: per fold mean and population std over runs, the mean
/// over folds, FB-IoU averaged likewise, per-class IoU pooled over the runs, keyed by VOC id.
pub fn pascal_report(base: EvalReport, result: &PascalResult) -> Result<EvalReport> {
    fold_runs_report(base, "pascal", &result.runs, &result.taking_part, |class| {
        Ok(VOC_CLASSES
            .get((class as usize).wrapping_sub(1))
            .map(|name| (class.to_string(), name.to_string())))
    })
}

/// What the preset harness ([`run_preset`]) reads from a dataset: COCO masks or PASCAL VOC.
trait PresetSource {
    /// The protocol's episode type.
    type Episode;
    /// An episode's JSON Lines record.
    fn record(&self, e: &Self::Episode) -> Result<EpisodeRecord>;
    /// An episode's class, supports and query.
    fn parts(e: Self::Episode) -> PresetEpisode;
    /// Image `i`'s size (= its label's).
    fn source_size(&self, i: usize) -> Result<InputSize>;
    fn load_image(&self, i: usize) -> Result<image::RgbImage>;
    /// 1 on the class, 0 elsewhere, 255 on ignored pixels, at original resolution.
    fn class_mask(&self, i: usize, class: u8) -> Result<Mask>;
    /// Image `i`'s label file and the name of `class`, for errors.
    fn describe(&self, i: usize, class: u8) -> Result<(PathBuf, String)>;
    /// The label value excluded from prediction and ground truth.
    fn ignore_label(&self) -> Option<u8>;
}

impl PresetSource for CocoMaskDataset {
    type Episode = Episode;
    fn record(&self, e: &Episode) -> Result<EpisodeRecord> {
        e.to_record(self)
    }
    fn parts(e: Episode) -> PresetEpisode {
        PresetEpisode {
            class: e.class_index,
            supports: e.supports,
            query: e.query,
        }
    }
    fn source_size(&self, i: usize) -> Result<InputSize> {
        let im = self.image(i)?;
        Ok(InputSize::new(im.height as usize, im.width as usize))
    }
    fn load_image(&self, i: usize) -> Result<image::RgbImage> {
        CocoMaskDataset::load_image(self, i)
    }
    fn class_mask(&self, i: usize, class: u8) -> Result<Mask> {
        CocoMaskDataset::class_mask(self, i, class)
    }
    fn describe(&self, i: usize, class: u8) -> Result<(PathBuf, String)> {
        Ok((
            self.image(i)?.mask_path.clone(),
            self.class_name(class)?.into(),
        ))
    }
    fn ignore_label(&self) -> Option<u8> {
        None
    }
}

impl PresetSource for PascalDataset {
    type Episode = PascalEpisode;
    fn record(&self, e: &PascalEpisode) -> Result<EpisodeRecord> {
        e.to_record(self)
    }
    fn parts(e: PascalEpisode) -> PresetEpisode {
        PresetEpisode {
            class: e.class,
            supports: e.supports,
            query: e.query,
        }
    }
    fn source_size(&self, i: usize) -> Result<InputSize> {
        let im = self.image(i)?;
        Ok(InputSize::new(im.height as usize, im.width as usize))
    }
    fn load_image(&self, i: usize) -> Result<image::RgbImage> {
        PascalDataset::load_image(self, i)
    }
    fn class_mask(&self, i: usize, class: u8) -> Result<Mask> {
        PascalDataset::class_mask(self, i, class)
    }
    fn describe(&self, i: usize, class: u8) -> Result<(PathBuf, String)> {
        let name = VOC_CLASSES.get((class as usize).wrapping_sub(1)).copied();
        Ok((
            self.image(i)?.label_path.clone(),
            name.unwrap_or("?").into(),
        ))
    }
    fn ignore_label(&self) -> Option<u8> {
        PascalDataset::ignore_label(self)
    }
}

/// One 1-way K-shot episode of the preset harness (indices into the dataset).
struct PresetEpisode {
    class: u8,
    supports: Vec<usize>,
    query: usize,
}

/// Pool images encoded once each, placed in the network input by a preset's geometry.
struct PlacedFeatures<'a> {
    encoder: &'a mut dyn FeatureEncoder,
    normalization: Normalization,
    geometry: InputGeometry,
    cache: HashMap<usize, (FeatureMap, Placement)>,
}

impl PlacedFeatures<'_> {
    /// Encodes the `wanted` images not cached yet, grouped by network input size.
    fn ensure<D: PresetSource>(&mut self, source: &D, wanted: &[usize]) -> Result<()> {
        let mut placements = HashMap::new();
        for &i in wanted {
            if !self.cache.contains_key(&i) && !placements.contains_key(&i) {
                placements.insert(i, self.geometry.place(source.source_size(i)?));
            }
        }
        let missing = placements.iter().map(|(&i, p)| (p.canvas, i)).collect();
        let norm = self.normalization;
        let cache = &mut self.cache;
        encode_grouped(
            self.encoder,
            missing,
            |i| Ok(placements[&i].prepare_image(&source.load_image(i)?, &norm)),
            |i, f| {
                cache.insert(i, (f, placements[&i]));
            },
        )
    }

    /// The model's logits for cached image `i` (encoded at its placement's canvas) and that
    /// placement.
    fn head_logits(
        &mut self,
        prototypes: &Prototypes,
        i: usize,
    ) -> Result<(FeatureMap, Placement)> {
        let (features, placement) = self
            .cache
            .get(&i)
            .ok_or_else(|| EdgeError::input(format!("image {i} was not encoded")))?;
        let logits = self
            .encoder
            .head_logits(prototypes, features, placement.canvas)?;
        Ok((logits, *placement))
    }

    fn get(&self, i: usize) -> Result<&(FeatureMap, Placement)> {
        self.cache
            .get(&i)
            .ok_or_else(|| EdgeError::input(format!("image {i} was not encoded")))
    }
}

/// Scores one episode of the preset harness. Support labels go onto the canvas (255 on the
/// padding: neither foreground nor background, like ignored pixels). The query is scored on
/// its original label (the prediction read back through its placement), or with
/// `label_at_input` on the label nearest-resized to the network input (stretch presets).
/// Ignored ground-truth pixels are set ignored in the prediction too.
fn score_placed_episode<D: PresetSource>(
    features: &mut PlacedFeatures,
    source: &D,
    e: &PresetEpisode,
    label_at_input: bool,
) -> Result<(Mask, Mask)> {
    let shots = e
        .supports
        .iter()
        .map(|&s| {
            let (f, placement) = features.get(s)?;
            let m = placement.mask_to_canvas(&source.class_mask(s, e.class)?, VOID);
            let pick = |want: u8| Mask {
                height: m.height,
                width: m.width,
                data: m.data.iter().map(|&v| (v == want) as u8).collect(),
            };
            let foreground = pick(1);
            if foreground.count_nonzero() == 0 {
                let (label, name) = source.describe(s, e.class)?;
                return Err(EdgeError::invalid(
                    &label,
                    format!(
                        "class {} ({name}) vanishes from the support mask at {} (nearest resize)",
                        e.class, placement.content
                    ),
                ));
            }
            Ok(SupportShot {
                features: f.clone(),
                foreground,
                background: pick(0),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let protos = features.encoder.prototypes(&[shots])?;
    let (logits, placement) = features.head_logits(&protos, e.query)?;
    let label = source.class_mask(e.query, e.class)?;
    let (mut pred, gt) = if label_at_input {
        let gt = placement.mask_to_canvas(&label, VOID);
        (logits_to_labels(&logits, gt.height, gt.width), gt)
    } else {
        (logits_to_labels_placed(&logits, &placement), label)
    };
    if let Some(ig) = source.ignore_label() {
        for (p, &g) in pred.data.iter_mut().zip(&gt.data) {
            if g == ig {
                *p = ig;
            }
        }
    }
    Ok((pred, gt))
}

/// The preset harness over a protocol's plan: every image the plan uses is encoded once, up
/// front (so with `oslsm` each distinct image size is prepared once), then each episode is
/// scored. Returns the accumulators per (fold, run) and the episodes' records in scoring order.
#[allow(clippy::type_complexity)]
fn preset_episodes<D: PresetSource>(
    encoder: &mut dyn FeatureEncoder,
    source: &D,
    normalization: Normalization,
    harness: &PresetHarness,
    plan: Vec<((usize, usize), Vec<D::Episode>)>,
    progress: Progress,
) -> Result<(
    BTreeMap<(usize, usize), ClassIouAccumulator>,
    Vec<EpisodeRecord>,
)> {
    let records = plan
        .iter()
        .flat_map(|(_, eps)| eps)
        .map(|e| source.record(e))
        .collect::<Result<Vec<_>>>()?;
    let plan: Vec<((usize, usize), Vec<PresetEpisode>)> = plan
        .into_iter()
        .map(|(key, eps)| (key, eps.into_iter().map(D::parts).collect()))
        .collect();
    let total = records.len();
    let mut features = PlacedFeatures {
        encoder,
        normalization,
        geometry: harness.geometry,
        cache: HashMap::new(),
    };
    let wanted: Vec<usize> = plan
        .iter()
        .flat_map(|(_, eps)| eps)
        .flat_map(|e| e.supports.iter().copied().chain([e.query]))
        .collect();
    features.ensure(source, &wanted)?;
    let mut runs = BTreeMap::new();
    let mut done = 0;
    for (key, episodes) in plan {
        let mut acc = ClassIouAccumulator::with_ignore(source.ignore_label());
        for e in &episodes {
            let (pred, gt) =
                score_placed_episode(&mut features, source, e, harness.label_at_input)?;
            acc.add(e.class, &pred, &gt)?;
            done += 1;
            progress(done, total);
        }
        runs.insert(key, acc);
    }
    Ok((runs, records))
}

/// `run_protocol` with a preset (COCO or PASCAL-5i): the preset's geometry, label resolution,
/// 255 handling, small-object rule, split, seeds and episodes (`request.episodes` replaces the
/// latter when given).
fn run_preset(
    encoder: &mut dyn FeatureEncoder,
    input: ScoringInput,
    request: &ProtocolRequest,
    mut base: EvalReport,
    preset: Preset,
    progress: Progress,
) -> Result<EvalReport> {
    let started = Instant::now();
    let benchmark = match request.protocol {
        Protocol::Coco => Benchmark::Coco,
        Protocol::Pascal => Benchmark::Pascal,
        other => {
            return Err(EdgeError::input(format!(
                "--preset applies to the COCO and PASCAL-5i protocols (coco, pascal), not {}",
                other.name()
            )))
        }
    };
    let h = preset.settings().harness(benchmark);
    match h.size() {
        Some(size) if size != input.size => {
            return Err(EdgeError::input(format!(
                "preset {} evaluates at {size}; the model input is {} (give --size {size} or leave --size out)",
                preset.name(),
                input.size,
            )))
        }
        Some(size) => base.size = [size.height, size.width],
        // Each image at its own size: no one input size to report.
        None => base.size = [0, 0],
    }
    let replay = match &request.episodes_file {
        Some(p) => Some(crate::sampler::read_jsonl(p)?),
        None => None,
    };
    let episodes = request.episodes.unwrap_or(h.episodes);
    base.seed = h.seed;
    base.runs = h.runs;
    base.episodes = Some(episodes);
    let name = format!("{}-{}", request.protocol.name(), preset.name());
    let coco = CocoEpisodes {
        shots: request.shots,
        episodes,
        runs: h.runs,
        seed: h.seed,
        folds: Vec::new(),
        min_pixels: h.min_pixels,
        oslsm_grid: h.oslsm_grid,
        split: h.split,
        label_at_input: h.label_at_input,
    };
    let norm = input.normalization;
    let (mut report, scored) = match benchmark {
        Benchmark::Coco => {
            let dataset = CocoMaskDataset::open(&request.data)?;
            let settings = CocoEpisodes {
                folds: coco_folds(request)?,
                ..coco
            };
            let (plan, taking_part) = coco_plan(&dataset, &settings, replay.as_deref())?;
            let (runs, episodes) = preset_episodes(encoder, &dataset, norm, &h, plan, progress)?;
            base.folds = Some(settings.folds);
            let result = CocoResult {
                runs,
                taking_part,
                episodes,
            };
            (coco_report(base, &dataset, &result)?, result.episodes)
        }
        Benchmark::Pascal => {
            let options = PascalOptions {
                void: h.void,
                ..request.pascal.clone()
            };
            let dataset = PascalDataset::open(&request.data, &options)?;
            let settings = PascalEpisodes::from_coco(&coco, pascal_folds(request)?);
            let (plan, taking_part) = pascal_plan(&dataset, &settings, replay.as_deref())?;
            let (runs, episodes) = preset_episodes(encoder, &dataset, norm, &h, plan, progress)?;
            base.folds = Some(settings.folds);
            let result = PascalResult {
                runs,
                taking_part,
                episodes,
            };
            (pascal_report(base, &result)?, result.episodes)
        }
    };
    report.protocol = name;
    if let Some(p) = &request.write_episodes {
        crate::sampler::write_jsonl(p, &scored)?;
    }
    report.timing.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_tests::fixture_files::{write_gray_png, TempDir};

    /// Features = the preprocessed input itself (3 channels, stride 1).
    struct IdentityEncoder;

    impl FeatureEncoder for IdentityEncoder {
        fn encode_batch(
            &mut self,
            inputs: &[Vec<f32>],
            size: InputSize,
        ) -> Result<Vec<FeatureMap>> {
            inputs
                .iter()
                .map(|x| FeatureMap::new(3, size.height, size.width, x.clone()))
                .collect()
        }
    }

    /// Class folders whose objects are red on blue, masks exactly on the red rows.
    fn write_red_on_blue(root: &std::path::Path, classes: &[&str], per_class: usize) {
        for name in classes {
            for k in 0..per_class {
                let rows = 2 + k % 4;
                let img = image::RgbImage::from_fn(8, 8, |_, y| {
                    if (y as usize) < rows {
                        image::Rgb([250, 0, 0])
                    } else {
                        image::Rgb([0, 0, 250])
                    }
                });
                let p = root.join(format!("{name}/images/i{k}.png"));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                img.save(&p).unwrap();
                let mut m = vec![0u8; 64];
                m[..8 * rows].fill(255);
                write_gray_png(&root.join(format!("{name}/masks/i{k}.png")), 8, 8, &m);
            }
        }
    }

    #[test]
    fn folder_protocol_end_to_end() {
        let dir = TempDir::new("eval_folder");
        let data = dir.path().join("data");
        write_red_on_blue(&data, &["kiwi", "mug"], 3);
        let input = ScoringInput {
            size: InputSize::new(8, 8),
            normalization: Normalization::IMAGENET,
        };
        let episodes_path = dir.path().join("eps.jsonl");
        let mut request = ProtocolRequest {
            pascal: PascalOptions::val(),
            protocol: Protocol::Folder,
            data: data.clone(),
            shots: 2,
            episodes: Some(20),
            runs: 2,
            seed: 3,
            folds: None,
            trained_fold: None,
            write_episodes: Some(episodes_path.clone()),
            episodes_file: None,
            preset: None,
        };
        let base = EvalReport::new("", "d", "panet", "id", [8, 8], "fp32", 2);
        let mut calls = 0;
        let report = run_protocol(
            &mut IdentityEncoder,
            input,
            &request,
            base.clone(),
            &mut |_, _| calls += 1,
        )
        .unwrap();
        assert_eq!(calls, 40);
        assert_eq!(report.protocol, "folder");
        assert_eq!(report.miou, Some(100.0));
        assert_eq!(report.fb_iou, Some(100.0));
        let per_class = report.per_class.as_ref().unwrap();
        assert_eq!(per_class.keys().collect::<Vec<_>>(), ["kiwi", "mug"]);
        assert_eq!(per_class["mug"].name, "mug");
        let pf = report.per_fold.as_ref().unwrap();
        assert_eq!((pf.len(), pf[0].classes, pf[0].miou_std), (1, 2, 0.0));
        assert_eq!(report.seed, 3);
        assert_eq!(report.runs, 2);
        assert_eq!(
            crate::sampler::read_jsonl(&episodes_path).unwrap().len(),
            40
        );

        // Replay gives the same metrics.
        request.write_episodes = None;
        request.episodes_file = Some(episodes_path);
        let replayed = run_protocol(
            &mut IdentityEncoder,
            input,
            &request,
            base.clone(),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(replayed.per_class, report.per_class);

        // Folds make no sense for user folders.
        request.episodes_file = None;
        request.folds = Some(vec![0]);
        let e = run_protocol(&mut IdentityEncoder, input, &request, base, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("no folds"), "{e}");
    }

    #[test]
    fn coco_label_at_input_scores_at_the_input_size() {
        let dir = TempDir::new("eval_coco_label");
        crate::data::coco::fixture::write(dir.path(), 6, 2);
        let ds = CocoMaskDataset::open(dir.path()).unwrap();
        let input = ScoringInput {
            size: InputSize::new(4, 4),
            normalization: Normalization::IMAGENET,
        };
        for (label_at_input, pixels) in [(false, 64u64), (true, 16)] {
            let settings = CocoEpisodes {
                shots: 1,
                episodes: 5,
                runs: 1,
                seed: 0,
                folds: vec![0],
                min_pixels: 16,
                oslsm_grid: false,
                split: FoldSplit::Interleaved,
                label_at_input,
            };
            let r = coco_episodes(
                &mut IdentityEncoder,
                &ds,
                input,
                &settings,
                None,
                &mut |_, _| {},
            )
            .unwrap();
            let (fg, bg) = r.runs[&(0, 0)].pooled();
            // Per episode: pixels = |fg union| + |bg intersection|.
            assert_eq!(fg.union + bg.intersection, 5 * pixels);
        }
    }

    #[test]
    fn presets_are_checked() {
        let dir = TempDir::new("eval_preset");
        crate::data::coco::fixture::write(dir.path(), 4, 0);
        let input = ScoringInput {
            size: InputSize::new(8, 8),
            normalization: Normalization::IMAGENET,
        };
        let mut request = ProtocolRequest {
            pascal: PascalOptions::val(),
            protocol: Protocol::Coco,
            data: dir.path().to_path_buf(),
            shots: 1,
            episodes: Some(3),
            runs: 1,
            seed: 0,
            folds: Some(vec![0]),
            trained_fold: None,
            write_episodes: None,
            episodes_file: None,
            preset: Some(Preset::Panet),
        };
        let base = EvalReport::new("", "d", "panet", "id", [8, 8], "fp32", 1);
        let e = run_protocol(
            &mut IdentityEncoder,
            input,
            &request,
            base.clone(),
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("417x417"), "{e}");
        request.preset = Some(Preset::Pfenet);
        let e = run_protocol(
            &mut IdentityEncoder,
            input,
            &request,
            base.clone(),
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pfenet") && e.contains("641"), "{e}");
        request.protocol = Protocol::Davis;
        let e = run_protocol(&mut IdentityEncoder, input, &request, base, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("COCO and PASCAL-5i protocols") && e.contains("davis"),
            "{e}"
        );
    }

    /// The preset harness with a stretch geometry and labels at the input size scores exactly
    /// as the COCO harness with `label_at_input` does (the PANet / HSNet presets' numbers did
    /// not move when they moved to the preset harness).
    #[test]
    fn preset_harness_with_a_stretch_equals_the_coco_harness() {
        let dir = TempDir::new("eval_preset_stretch");
        crate::data::coco::fixture::write(dir.path(), 24, 8);
        let ds = CocoMaskDataset::open(dir.path()).unwrap();
        let input = ScoringInput {
            size: InputSize::new(6, 5),
            normalization: Normalization::IMAGENET,
        };
        let settings = CocoEpisodes {
            shots: 2,
            episodes: 7,
            runs: 2,
            seed: 4,
            folds: vec![0, 1],
            min_pixels: 16,
            oslsm_grid: false,
            split: FoldSplit::Interleaved,
            label_at_input: true,
        };
        let coco = coco_episodes(
            &mut IdentityEncoder,
            &ds,
            input,
            &settings,
            None,
            &mut |_, _| {},
        )
        .unwrap();
        let mut harness = Preset::Hsnet.settings().harness(Benchmark::Coco);
        harness.geometry = InputGeometry::Stretch(input.size);
        let (plan, _) = coco_plan(&ds, &settings, None).unwrap();
        let (runs, records) = preset_episodes(
            &mut IdentityEncoder,
            &ds,
            input.normalization,
            &harness,
            plan,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(records, coco.episodes);
        assert_eq!(runs.len(), 4);
        for (key, acc) in &coco.runs {
            assert_eq!(acc.pooled(), runs[key].pooled(), "{key:?}");
            assert_eq!(acc.per_class(), runs[key].per_class(), "{key:?}");
        }
    }
}
