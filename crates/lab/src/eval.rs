//! The evaluation harnesses of evaluation.md, written once over a [`FeatureEncoder`] so that
//! `host eval` (tch) and `edge eval` (tract) run the very same protocol and scoring code: the
//! DAVIS one-shot protocol, and one harness loop ([`score_episodes`]) for every episode
//! protocol (COCO-20i, PASCAL-5i, class folders), over any [`EpisodeSource`] and plan, with the
//! scoring geometry ([`Scoring`]) as its one parameter: the canonical stretch, or a published
//! harness's (`crate::presets`).

use crate::data::coco::{CocoFolds, CocoMaskDataset, FoldSplit};
use crate::data::folder::{FolderDataset, FOLDER_MIN_PIXELS};
use crate::data::pascal::{
    pascal_fold_classes, PascalDataset, PascalOptions, VoidLabel, PASCAL_FOLDS, VOID,
};
use crate::episodes::{
    plan_episodes, Eligibility, Episode, EpisodePlan, EpisodeRecord, EpisodeSource, Sampling,
};
use crate::presets::{Benchmark, Preset};
use fss_core::choice::Choice;
use fss_core::davis::{check_same_size, DavisDataset};
use fss_core::error::{EdgeError, Result};
use fss_core::image_io::image_size;
use fss_core::metrics::{mean_and_population_std, percent, ClassIouAccumulator, VideoJAccumulator};
use fss_core::model::{predict_labels, FeatureEncoder, Progress, ScoringInput};
use fss_core::preprocess::{
    prepare_input, resize_mask_nearest, InputGeometry, InputSize, Normalization, Placement,
};
use fss_core::prototype::{logits_to_labels, logits_to_labels_placed, SupportShot};
use fss_core::report::{ClassEntry, EvalReport, FoldEntry, TemporalReport};
use fss_core::temporal::{TemporalCounts, TemporalMemory, TemporalOptions};
use fss_core::tensor::{FeatureMap, Mask};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

/// DAVIS one-shot protocol: per target the support is frame 0 with its mask, frames 1..N-1 are
/// queries scored independently at the annotation's resolution.
///
/// With `temporal`, each target keeps a [`TemporalMemory`] of its recent frames, segmented in
/// order; the model sees frame 0's mask and its own predictions, never a later ground truth.
/// The events of every target's memory are summed in the returned counts.
pub fn davis_one_shot(
    encoder: &mut dyn FeatureEncoder,
    dataset: &DavisDataset,
    input: ScoringInput,
    temporal: Option<TemporalOptions>,
    progress: Progress,
) -> Result<(VideoJAccumulator, TemporalCounts)> {
    let mut acc = VideoJAccumulator::new();
    let mut counts = TemporalCounts::default();
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
            temporal,
            &mut counts,
            &mut |name, _, pred, gt| acc.add(name, pred, gt).map(|_| ()),
        )?;
    }
    Ok((acc, counts))
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
/// `sink(target name, frame, prediction, ground truth)`. With `temporal`, frames are
/// segmented in order with a fresh memory per target, whose events are added to `counts`; the
/// ground truth of a query frame is read for its size and the sink only.
#[allow(clippy::too_many_arguments)]
fn davis_predictions(
    model: &mut dyn FeatureEncoder,
    dataset: &DavisDataset,
    si: usize,
    features: &[FeatureMap],
    input: ScoringInput,
    temporal: Option<TemporalOptions>,
    counts: &mut TemporalCounts,
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
        let support = vec![SupportShot::from_foreground(
            features[0].clone(),
            support_mask,
        )];
        let protos = model.prototypes(std::slice::from_ref(&support))?;
        let mut memory = temporal.map(TemporalMemory::new).transpose()?;
        for (f, query) in features.iter().enumerate().skip(1) {
            let gt = dataset.ground_truth(si, f, object)?;
            let pred = match memory.as_mut() {
                None => predict_labels(model, &protos, query, input.size, (gt.height, gt.width))?,
                Some(memory) => {
                    let step = memory.step(model, &support, &protos, query, input.size)?;
                    logits_to_labels(&step.logits, gt.height, gt.width)
                }
            };
            sink(&name, f, &pred, &gt)?;
        }
        if let Some(memory) = &memory {
            counts.merge(memory.counts());
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
        let mut none = TemporalCounts::default();
        davis_predictions(
            a,
            dataset,
            si,
            &fa,
            input,
            None,
            &mut none,
            &mut |_, _, pred, _| {
                masks_a.push(pred.clone());
                Ok(())
            },
        )?;
        let mut k = 0;
        davis_predictions(
            b,
            dataset,
            si,
            &fb,
            input,
            None,
            &mut none,
            &mut |name, f, pred, _| {
                out.add(name, f, &masks_a[k], pred)?;
                k += 1;
                Ok(())
            },
        )?;
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

/// How a protocol's images enter the network and where its labels are scored: the scoring
/// geometry of a harness (a preset's, or the model input stretched for the plain protocols).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scoring {
    pub normalization: Normalization,
    /// Where each image goes in the network input.
    pub geometry: InputGeometry,
    /// Score on the label nearest-resized to the network input (PANet's 417² and HSNet's 400²
    /// harnesses) instead of the label's own resolution.
    pub label_at_input: bool,
}

impl Scoring {
    /// The plain protocols: every image stretched to the model input, scored at its label's
    /// resolution (the canonical scoring of evaluation.md).
    pub fn canonical(input: ScoringInput) -> Scoring {
        Scoring {
            normalization: input.normalization,
            geometry: InputGeometry::Stretch(input.size),
            label_at_input: false,
        }
    }
}

/// What an episode protocol measured: per (fold, run) one accumulator keyed by the source's
/// class keys, the classes taking part per fold, and the scored episodes in order (JSON Lines
/// form).
pub struct EpisodeResult {
    pub runs: BTreeMap<(usize, usize), ClassIouAccumulator>,
    pub taking_part: BTreeMap<usize, usize>,
    pub episodes: Vec<EpisodeRecord>,
}

/// Images encoded once each (evaluation computes each image's encoder features once, not once
/// per episode), placed in the network input by the scoring geometry.
struct PlacedFeatures<'a> {
    encoder: &'a mut dyn FeatureEncoder,
    scoring: Scoring,
    cache: HashMap<usize, (FeatureMap, Placement)>,
}

impl PlacedFeatures<'_> {
    /// Encodes the `wanted` images not cached yet, grouped by network input size.
    fn ensure(&mut self, source: &dyn EpisodeSource, wanted: &[usize]) -> Result<()> {
        let mut placements = HashMap::new();
        for &i in wanted {
            if !self.cache.contains_key(&i) && !placements.contains_key(&i) {
                placements.insert(i, self.scoring.geometry.place(source.source_size(i)?));
            }
        }
        let missing = placements.iter().map(|(&i, p)| (p.canvas, i)).collect();
        let norm = self.scoring.normalization;
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
}

/// Image `i`'s features and placement from the cache (a field of [`PlacedFeatures`], taken
/// apart from its encoder so the features are borrowed, not copied, while the head runs).
fn encoded(
    cache: &HashMap<usize, (FeatureMap, Placement)>,
    i: usize,
) -> Result<&(FeatureMap, Placement)> {
    cache
        .get(&i)
        .ok_or_else(|| EdgeError::input(format!("image {i} was not encoded before scoring")))
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

/// Scores one episode; returns the prediction and the ground truth. Support labels go onto the
/// canvas (255 on padding: neither foreground nor background, like ignored pixels); a class
/// that vanishes from a support label there is an error naming the label file. The query is
/// scored on its own label (the prediction read back through its placement: for a stretch,
/// exactly the canonical bilinear upsampling), or with `label_at_input` on the label
/// nearest-resized to the canvas. Ignored ground-truth pixels are set ignored in the prediction
/// too (HSNet / PFENet style; the counts skip them either way).
fn score_episode(
    features: &mut PlacedFeatures,
    source: &dyn EpisodeSource,
    e: &Episode,
) -> Result<(Mask, Mask)> {
    let shots = e
        .supports
        .iter()
        .map(|&s| {
            let (f, placement) = encoded(&features.cache, s)?;
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
    let prototypes = features.encoder.prototypes(&[shots])?;
    let (query, placement) = encoded(&features.cache, e.query)?;
    let placement = *placement;
    let logits = features
        .encoder
        .head_logits(&prototypes, query, placement.canvas)?;
    let label = source.class_mask(e.query, e.class)?;
    let (mut pred, gt) = if features.scoring.label_at_input {
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

/// The harness of every episode protocol (COCO, PASCAL-5i, class folders; plain or with a
/// preset's geometry): scores a plan episode by episode, encoding the images of each block of
/// 64 episodes first (each image once over the whole plan). One accumulator per (fold, run),
/// keyed by the source's class keys, ignoring its ignore label.
pub fn score_episodes(
    encoder: &mut dyn FeatureEncoder,
    source: &dyn EpisodeSource,
    scoring: Scoring,
    plan: EpisodePlan,
    progress: Progress,
) -> Result<EpisodeResult> {
    let total = plan.len();
    let mut features = PlacedFeatures {
        encoder,
        scoring,
        cache: HashMap::new(),
    };
    let mut result = EpisodeResult {
        runs: BTreeMap::new(),
        taking_part: plan.taking_part,
        episodes: Vec::with_capacity(total),
    };
    let mut done = 0;
    for (key, episodes) in plan.runs {
        let mut acc = ClassIouAccumulator::with_ignore(source.ignore_label());
        for chunk in episodes.chunks(64) {
            let wanted: Vec<usize> = chunk
                .iter()
                .flat_map(|e| e.supports.iter().copied().chain([e.query]))
                .collect();
            features.ensure(source, &wanted)?;
            for e in chunk {
                let (pred, gt) = score_episode(&mut features, source, e)?;
                acc.add(e.class, &pred, &gt)?;
                result.episodes.push(source.record(e)?);
                done += 1;
                progress(done, total);
            }
        }
        result.runs.insert(key, acc);
    }
    Ok(result)
}

/// Fills a report from an episode result ([`fold_runs_report`]; `per_class` keyed as the
/// source says).
pub fn episodes_report(
    base: EvalReport,
    protocol: &str,
    source: &dyn EpisodeSource,
    result: &EpisodeResult,
) -> Result<EvalReport> {
    fold_runs_report(base, protocol, &result.runs, &result.taking_part, |class| {
        source.class_entry(class)
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

fss_core::choices!(Protocol {
    Davis => "davis", "";
    Coco => "coco", "";
    Folder => "folder", "A user dataset in the folder format: 1-way K-shot episodes over its class folders";
    Pascal => "pascal", "PASCAL-5i on a VOC2012-layout folder: 1-way K-shot episodes on each fold's novel classes, the `val` list, 255 ignored";
});

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
    /// DAVIS: segment each target's frames in order with a temporal memory of recent frames
    /// (`fss_core::temporal`); `None` is the per-frame protocol.
    pub temporal: Option<TemporalOptions>,
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
/// the metrics and the elapsed time. The episode protocols (COCO, PASCAL-5i, folders) all run
/// [`score_episodes`]: a preset only changes the scoring geometry, the sampling settings and the
/// 255 handling.
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
    let started = Instant::now();
    if request.protocol == Protocol::Davis {
        if let Some(preset) = request.preset {
            return Err(preset_protocol_error(preset, request.protocol));
        }
        if request.shots != 1 {
            return Err(EdgeError::input(
                "the DAVIS protocol is one-shot (frame 0); --shots must be 1",
            ));
        }
        if let Some(t) = &request.temporal {
            t.validate()?;
        }
        base.seed = request.seed;
        let dataset = DavisDataset::open(&request.data)?;
        let (acc, events) = davis_one_shot(encoder, &dataset, input, request.temporal, progress)?;
        let mut report = davis_report(base, &acc);
        report.temporal = request
            .temporal
            .map(|options| TemporalReport { options, events });
        report.timing.elapsed_s = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    if request.temporal.is_some() {
        return Err(EdgeError::input(format!(
            "--temporal segments video in frame order: it applies to --protocol davis, not {}",
            request.protocol.name()
        )));
    }
    let setup = EpisodeSetup::of(request, input)?;
    if request.preset.is_some() {
        // The preset's input size; [0, 0]: each image at its own size.
        let size = setup.size.unwrap_or(InputSize::new(0, 0));
        base.size = [size.height, size.width];
    }
    base.seed = setup.sampling.seed;
    base.runs = setup.sampling.runs;
    base.episodes = Some(setup.sampling.episodes);
    if request.protocol != Protocol::Folder {
        base.folds = Some(setup.sampling.folds.clone());
    }
    let replay = match &request.episodes_file {
        Some(p) => Some(crate::episodes::read_jsonl(p)?),
        None => None,
    };
    let mut run = |source: &dyn EpisodeSource, base: EvalReport| -> Result<EvalReport> {
        let plan = plan_episodes(source, &setup.sampling, replay.as_deref())?;
        let result = score_episodes(&mut *encoder, source, setup.scoring, plan, &mut *progress)?;
        if let Some(p) = &request.write_episodes {
            crate::episodes::write_jsonl(p, &result.episodes)?;
        }
        episodes_report(base, &setup.protocol, source, &result)
    };
    let mut report = match request.protocol {
        Protocol::Coco => {
            let dataset = CocoMaskDataset::open(&request.data)?;
            let source = CocoFolds {
                dataset: &dataset,
                split: setup.split,
            };
            run(&source, base)?
        }
        Protocol::Pascal => {
            let options = PascalOptions {
                void: setup.void,
                ..request.pascal.clone()
            };
            run(&PascalDataset::open(&request.data, &options)?, base)?
        }
        Protocol::Folder => run(&FolderDataset::open(&request.data)?, base)?,
        Protocol::Davis => unreachable!("DAVIS returned above"),
    };
    report.timing.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// An episode protocol's settings from a request: the plain protocol's, or a preset's.
struct EpisodeSetup {
    /// The report's protocol name (`coco`, or `coco-pfenet` with a preset).
    protocol: String,
    sampling: Sampling,
    scoring: Scoring,
    /// COCO's class split.
    split: FoldSplit,
    /// PASCAL's 255 handling.
    void: VoidLabel,
    /// The network input size, `None` when each image has its own.
    size: Option<InputSize>,
}

impl EpisodeSetup {
    fn of(request: &ProtocolRequest, input: ScoringInput) -> Result<EpisodeSetup> {
        let benchmark = match (request.preset, request.protocol) {
            (None, _) => None,
            (Some(_), Protocol::Coco) => Some(Benchmark::Coco),
            (Some(_), Protocol::Pascal) => Some(Benchmark::Pascal),
            (Some(preset), other) => return Err(preset_protocol_error(preset, other)),
        };
        let folds = match request.protocol {
            Protocol::Coco => coco_folds(request)?,
            Protocol::Pascal => pascal_folds(request)?,
            Protocol::Folder => {
                if request.folds.is_some() {
                    return Err(EdgeError::input(
                        "the folder protocol has no folds (every class folder takes part); drop --folds",
                    ));
                }
                vec![0]
            }
            Protocol::Davis => unreachable!("DAVIS has no episodes"),
        };
        let (Some(preset), Some(benchmark)) = (request.preset, benchmark) else {
            let min_pixels = match request.protocol {
                Protocol::Coco => crate::data::coco::DEFAULT_MIN_PIXELS,
                Protocol::Pascal => PASCAL_MIN_PIXELS,
                _ => FOLDER_MIN_PIXELS,
            };
            return Ok(EpisodeSetup {
                protocol: request.protocol.name().into(),
                sampling: Sampling {
                    shots: request.shots,
                    episodes: request.episodes(),
                    runs: request.runs,
                    seed: request.seed,
                    folds,
                    rule: Eligibility::min_pixels(min_pixels),
                },
                scoring: Scoring::canonical(input),
                split: FoldSplit::Interleaved,
                void: request.pascal.void,
                size: Some(input.size),
            });
        };
        let h = preset.settings().harness(benchmark);
        if let Some(size) = h.size().filter(|&s| s != input.size) {
            return Err(EdgeError::input(format!(
                "preset {} evaluates at {size}; the model input is {} (give --size {size} or leave --size out)",
                preset.name(),
                input.size,
            )));
        }
        Ok(EpisodeSetup {
            protocol: format!("{}-{}", request.protocol.name(), preset.name()),
            sampling: Sampling {
                shots: request.shots,
                episodes: request.episodes.unwrap_or(h.episodes),
                runs: h.runs,
                seed: h.seed,
                folds,
                rule: Eligibility {
                    min_pixels: h.min_pixels,
                    oslsm_grid: h.oslsm_grid,
                },
            },
            scoring: Scoring {
                normalization: input.normalization,
                geometry: h.geometry,
                label_at_input: h.label_at_input,
            },
            split: h.split,
            void: h.void,
            size: h.size(),
        })
    }
}

/// Presets are published harnesses of the COCO and PASCAL-5i benchmarks only.
fn preset_protocol_error(preset: Preset, protocol: Protocol) -> EdgeError {
    EdgeError::input(format!(
        "--preset {} applies to the COCO and PASCAL-5i protocols (coco, pascal), not {}",
        preset.name(),
        protocol.name()
    ))
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

/// Default eligibility of the PASCAL-5i protocol: the class is present (PANet; PFENet's
/// 2,048 px rule is `min_pixels = 2048`).
pub const PASCAL_MIN_PIXELS: u64 = 1;

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
            temporal: None,
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
            crate::episodes::read_jsonl(&episodes_path).unwrap().len(),
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

    /// The COCO fixture's plan of `folds` (2,048 px rule replaced by `min_pixels`).
    fn coco_plan(
        ds: &CocoMaskDataset,
        shots: usize,
        episodes: usize,
        runs: usize,
        seed: u64,
        folds: Vec<usize>,
    ) -> EpisodePlan {
        let sampling = Sampling {
            shots,
            episodes,
            runs,
            seed,
            folds,
            rule: Eligibility::min_pixels(16),
        };
        let source = CocoFolds {
            dataset: ds,
            split: FoldSplit::Interleaved,
        };
        plan_episodes(&source, &sampling, None).unwrap()
    }

    #[test]
    fn coco_label_at_input_scores_at_the_input_size() {
        let dir = TempDir::new("eval_coco_label");
        crate::data::coco::fixture::write(dir.path(), 6, 2);
        let ds = CocoMaskDataset::open(dir.path()).unwrap();
        let source = CocoFolds {
            dataset: &ds,
            split: FoldSplit::Interleaved,
        };
        let input = ScoringInput {
            size: InputSize::new(4, 4),
            normalization: Normalization::IMAGENET,
        };
        for (label_at_input, pixels) in [(false, 64u64), (true, 16)] {
            let scoring = Scoring {
                label_at_input,
                ..Scoring::canonical(input)
            };
            let plan = coco_plan(&ds, 1, 5, 1, 0, vec![0]);
            let r = score_episodes(&mut IdentityEncoder, &source, scoring, plan, &mut |_, _| {})
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
            temporal: None,
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

    /// The harness with the canonical geometry scores exactly as the canonical scoring of
    /// evaluation.md, written out here on its own: each image stretched to the input, support
    /// masks nearest-resized to it, PANet prototypes, the logits upsampled bilinearly to the
    /// label's resolution and argmaxed (so the COCO, PASCAL and folder numbers did not move when
    /// their three loops became one).
    #[test]
    fn the_harness_with_a_stretch_scores_as_the_canonical_scoring() {
        let dir = TempDir::new("eval_canonical");
        crate::data::coco::fixture::write(dir.path(), 24, 8);
        let ds = CocoMaskDataset::open(dir.path()).unwrap();
        let source = CocoFolds {
            dataset: &ds,
            split: FoldSplit::Interleaved,
        };
        let input = ScoringInput {
            size: InputSize::new(6, 5),
            normalization: Normalization::IMAGENET,
        };
        let plan = coco_plan(&ds, 2, 7, 2, 4, vec![0, 1]);
        let result = score_episodes(
            &mut IdentityEncoder,
            &source,
            Scoring::canonical(input),
            plan.clone(),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(result.runs.len(), 4);
        let mut records = Vec::new();
        for (key, episodes) in &plan.runs {
            let mut acc = ClassIouAccumulator::new();
            for e in episodes {
                let features = |i: usize| {
                    let x =
                        prepare_input(&ds.load_image(i).unwrap(), input.size, &input.normalization);
                    IdentityEncoder
                        .encode_batch(&[x], input.size)
                        .unwrap()
                        .remove(0)
                };
                let shots: Vec<SupportShot> = e
                    .supports
                    .iter()
                    .map(|&s| {
                        let m = ds.class_mask(s, e.class).unwrap();
                        let m = fss_core::preprocess::resize_mask_nearest(
                            &m,
                            input.size.height,
                            input.size.width,
                        );
                        SupportShot::from_foreground(features(s), m)
                    })
                    .collect();
                let protos = IdentityEncoder.prototypes(&[shots]).unwrap();
                let gt = ds.class_mask(e.query, e.class).unwrap();
                let pred = predict_labels(
                    &mut IdentityEncoder,
                    &protos,
                    &features(e.query),
                    input.size,
                    (gt.height, gt.width),
                )
                .unwrap();
                acc.add(e.class, &pred, &gt).unwrap();
                records.push(source.record(e).unwrap());
            }
            assert_eq!(acc.pooled(), result.runs[key].pooled(), "{key:?}");
            assert_eq!(acc.per_class(), result.runs[key].per_class(), "{key:?}");
        }
        assert_eq!(records, result.episodes);
    }

    /// Every query mask of the DAVIS protocol on `root`, in order (per frame or temporal).
    fn davis_masks(root: &std::path::Path, temporal: Option<TemporalOptions>) -> Vec<Mask> {
        let dataset = DavisDataset::open(root).unwrap();
        let input = ScoringInput {
            size: InputSize::new(24, 32),
            normalization: Normalization::IMAGENET,
        };
        let mut masks = Vec::new();
        let mut counts = TemporalCounts::default();
        for si in 0..dataset.sequences().len() {
            let features =
                davis_encode_sequence(&mut IdentityEncoder, &dataset, si, input, &mut |_| {})
                    .unwrap();
            davis_predictions(
                &mut IdentityEncoder,
                &dataset,
                si,
                &features,
                input,
                temporal,
                &mut counts,
                &mut |_, _, pred, _| {
                    masks.push(pred.clone());
                    Ok(())
                },
            )
            .unwrap();
        }
        if temporal.is_some() {
            assert!(counts.remembered > 0, "{counts:?}");
        }
        masks
    }

    #[test]
    fn temporal_davis_sees_frame_0s_mask_and_no_later_ground_truth() {
        let dir = TempDir::new("eval_temporal_gt");
        let root = dir.path().join("davis");
        fss_tests::write_davis_like(&root, 2, 6, 32, 24);
        let temporal = Some(TemporalOptions {
            window: 2,
            reach: 1.0,
            ..TemporalOptions::default()
        });
        let before = davis_masks(&root, temporal);
        assert_eq!(before.len(), 2 * 5);
        // Replace every later annotation by another mask of the same size (its complement):
        // the predictions must not change, while frame 0's mask still matters.
        for s in 0..2 {
            for f in 1..6 {
                let p = root.join(format!("Annotations/480p/seq{s}/{f:05}.png"));
                let mut m = image::open(&p).unwrap().to_luma8();
                m.pixels_mut().for_each(|v| v.0[0] = 255 - v.0[0]);
                m.save(&p).unwrap();
            }
        }
        assert_eq!(davis_masks(&root, temporal), before);
        let p = root.join("Annotations/480p/seq0/00000.png");
        let mut m = image::open(&p).unwrap().to_luma8();
        m.pixels_mut().for_each(|v| v.0[0] = 255 - v.0[0]);
        m.save(&p).unwrap();
        assert_ne!(davis_masks(&root, temporal), before);
    }

    #[test]
    fn temporal_applies_to_davis_only_and_checks_its_settings() {
        let dir = TempDir::new("eval_temporal_refusals");
        let root = dir.path().join("davis");
        fss_tests::write_davis_like(&root, 1, 3, 32, 24);
        let input = ScoringInput {
            size: InputSize::new(24, 32),
            normalization: Normalization::IMAGENET,
        };
        let mut request = ProtocolRequest {
            pascal: PascalOptions::val(),
            protocol: Protocol::Davis,
            data: root.clone(),
            shots: 1,
            episodes: None,
            runs: 1,
            seed: 0,
            folds: None,
            trained_fold: None,
            write_episodes: None,
            episodes_file: None,
            preset: None,
            temporal: Some(TemporalOptions::default()),
        };
        let base = EvalReport::new("", "d", "panet", "id", [24, 32], "fp32", 1);
        let report = run_protocol(
            &mut IdentityEncoder,
            input,
            &request,
            base.clone(),
            &mut |_, _| {},
        )
        .unwrap();
        let t = report.temporal.unwrap();
        assert_eq!(t.options, TemporalOptions::default());
        assert_eq!(
            t.events.remembered + t.events.uncertain + t.events.fallbacks,
            2
        );
        request.temporal = Some(TemporalOptions {
            confidence: 1.5,
            ..TemporalOptions::default()
        });
        let e = run_protocol(
            &mut IdentityEncoder,
            input,
            &request,
            base.clone(),
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--temporal-confidence"), "{e}");
        request.temporal = Some(TemporalOptions::default());
        request.protocol = Protocol::Folder;
        let e = run_protocol(&mut IdentityEncoder, input, &request, base, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("--temporal") && e.contains("folder"), "{e}");
    }
}
