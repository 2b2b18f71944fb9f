//! Where 1-way K-shot evaluation episodes come from, written once for every dataset: the
//! [`EpisodeSource`] a dataset implements (COCO with its fold split, PASCAL-5i, class folders),
//! the seeded draw ([`draw_episodes`], the draw order of [`crate::sampler`]'s module doc) and the
//! plan of a protocol ([`plan_episodes`]: the episodes of every fold and run, sampled or replayed
//! from an episode list). The harness ([`crate::eval::score_episodes`]) scores any plan.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use image::RgbImage;

use crate::sampler::{draw_distinct, eval_rng, Episode, EpisodeRecord};
use fss_core::error::{EdgeError, Result};
use fss_core::preprocess::InputSize;
use fss_core::tensor::Mask;

/// Which (image, class) pairs an episode may draw: the class covers at least `min_pixels`
/// pixels of the label at its own resolution and, with `oslsm_grid`, also the OSLSM small-object
/// rule ([`crate::data::OSLSM_MIN_CELLS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eligibility {
    pub min_pixels: u64,
    pub oslsm_grid: bool,
}

impl Eligibility {
    /// `min_pixels` without the OSLSM rule.
    pub fn min_pixels(min_pixels: u64) -> Eligibility {
        Eligibility {
            min_pixels,
            oslsm_grid: false,
        }
    }
}

/// A dataset as the episode protocols see it: classes keyed by a `u8` (COCO class index 1..=80,
/// VOC id 1..=20, folder position + 1), images by their index in the dataset's list.
pub trait EpisodeSource {
    /// The classes fold `fold` tests, ascending (an unknown fold is an error).
    fn fold_classes(&self, fold: usize) -> Result<Vec<u8>>;
    /// The images `class` may be drawn from under `rule`, ascending.
    fn eligible_images(&self, class: u8, rule: Eligibility) -> Vec<usize>;
    /// The error when no class of `fold` has `shots + 1` eligible images.
    fn no_class_error(&self, fold: usize, shots: usize, rule: Eligibility) -> EdgeError;
    /// An episode's JSON Lines record (paths relative to the dataset root).
    fn record(&self, episode: &Episode) -> Result<EpisodeRecord>;
    /// The episode a record names, resolved against the dataset.
    fn episode(&self, record: &EpisodeRecord) -> Result<Episode>;
    /// Image `i`'s size (= its label's).
    fn source_size(&self, i: usize) -> Result<InputSize>;
    fn load_image(&self, i: usize) -> Result<RgbImage>;
    /// Image `i`'s label for `class` at its own resolution: 1 on the class, 0 elsewhere, the
    /// [`EpisodeSource::ignore_label`] on ignored pixels.
    fn class_mask(&self, i: usize, class: u8) -> Result<Mask>;
    /// Image `i`'s label file and the name of `class`, for errors.
    fn describe(&self, i: usize, class: u8) -> Result<(PathBuf, String)>;
    /// The label value excluded from prediction and ground truth (PASCAL's 255 when ignored).
    fn ignore_label(&self) -> Option<u8> {
        None
    }
    /// The key and name a report's `per_class` gives `class` (`None` leaves it out).
    fn class_entry(&self, class: u8) -> Result<Option<(String, String)>>;
}

/// The episodes of one fold and run for run seed `seed`, and the fold's taking-part classes
/// (those with at least `shots + 1` eligible images): the RNG `eval_rng(seed, fold)`, per
/// episode the class uniform over the taking-part classes, then `draw_distinct` over its
/// eligible images, K supports in order and the query last ([`crate::sampler`]'s module doc).
pub fn draw_episodes(
    source: &(impl EpisodeSource + ?Sized),
    fold: usize,
    shots: usize,
    episodes: usize,
    rule: Eligibility,
    seed: u64,
) -> Result<(Vec<u8>, Vec<Episode>)> {
    let classes = source.fold_classes(fold)?;
    if shots == 0 {
        return Err(EdgeError::input("shots must be at least 1"));
    }
    let (taking_part, eligible): (Vec<u8>, Vec<Vec<usize>>) = classes
        .into_iter()
        .map(|c| (c, source.eligible_images(c, rule)))
        .filter(|(_, images)| images.len() > shots)
        .unzip();
    if taking_part.is_empty() && episodes > 0 {
        return Err(source.no_class_error(fold, shots, rule));
    }
    let mut rng = eval_rng(seed, fold);
    let mut out = Vec::with_capacity(episodes);
    for _ in 0..episodes {
        let ci = rand::Rng::random_range(&mut rng, 0..taking_part.len() as u32) as usize;
        let e = &eligible[ci];
        let mut images: Vec<usize> = draw_distinct(&mut rng, e.len(), shots + 1)
            .into_iter()
            .map(|p| e[p])
            .collect();
        let query = images.pop().expect("shots + 1 >= 1 images");
        out.push(Episode {
            fold,
            class: taking_part[ci],
            supports: images,
            query,
        });
    }
    Ok((taking_part, out))
}

/// What a protocol samples: per fold in `folds` and run `r` in `0..runs`, `episodes` episodes
/// of `shots` supports drawn with run seed `seed + r` under `rule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampling {
    pub shots: usize,
    pub episodes: usize,
    pub runs: usize,
    pub seed: u64,
    pub folds: Vec<usize>,
    pub rule: Eligibility,
}

/// The episodes of a protocol: per (fold, run) its episodes in scoring order, and the number of
/// classes taking part per fold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodePlan {
    pub runs: Vec<((usize, usize), Vec<Episode>)>,
    pub taking_part: BTreeMap<usize, usize>,
}

impl EpisodePlan {
    /// How many episodes the plan scores.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|(_, e)| e.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The plan of a protocol: sampled as `sampling` says, or replayed from `replay` (one run per
/// fold, in the records' order within each fold; a fold's taking-part classes are the classes
/// its records use). Record errors name the record (1-based).
pub fn plan_episodes(
    source: &(impl EpisodeSource + ?Sized),
    sampling: &Sampling,
    replay: Option<&[EpisodeRecord]>,
) -> Result<EpisodePlan> {
    let mut plan = EpisodePlan {
        runs: Vec::new(),
        taking_part: BTreeMap::new(),
    };
    match replay {
        Some(records) => {
            let mut by_fold: BTreeMap<usize, Vec<Episode>> = BTreeMap::new();
            for (i, r) in records.iter().enumerate() {
                let e = source
                    .episode(r)
                    .map_err(|e| EdgeError::input(format!("episode {}: {e}", i + 1)))?;
                by_fold.entry(e.fold).or_default().push(e);
            }
            for (fold, episodes) in by_fold {
                let classes: BTreeSet<u8> = episodes.iter().map(|e| e.class).collect();
                plan.taking_part.insert(fold, classes.len());
                plan.runs.push(((fold, 0), episodes));
            }
        }
        None => {
            for &fold in &sampling.folds {
                for run in 0..sampling.runs {
                    let (classes, episodes) = draw_episodes(
                        source,
                        fold,
                        sampling.shots,
                        sampling.episodes,
                        sampling.rule,
                        sampling.seed + run as u64,
                    )?;
                    plan.taking_part.insert(fold, classes.len());
                    plan.runs.push(((fold, run), episodes));
                }
            }
        }
    }
    Ok(plan)
}
