//! 1-way K-shot evaluation episodes, written once for every dataset: the one [`Episode`] type
//! and its JSON Lines record ([`EpisodeRecord`]), the [`EpisodeSource`] a dataset implements
//! (COCO with its fold split, PASCAL-5i, class folders), the seeded draw ([`draw_episodes`]) and
//! the plan of a protocol ([`plan_episodes`]: the episodes of every fold and run, sampled or
//! replayed from an episode list). The harness ([`crate::eval::score_episodes`]) scores any
//! plan; the training sampler ([`crate::sampler`]) draws the same way on its own stream.
//!
//! # Seeding
//!
//! Evaluation episodes of fold `f` for run seed `s` come from
//! `ChaCha8Rng::seed_from_u64(seed_for(s, f))` with **`seed_for(s, f) = s * 1000 + f`** (wrapping
//! `u64` arithmetic), ChaCha stream 0 (the default). `--runs R --seed S` uses seeds `S..S+R-1`.
//! The training sampler uses the same derivation on ChaCha **stream 1**.
//!
//! # Draw order (evaluation, per episode, in order)
//!
//! The fold's *taking-part* classes `T` are its classes (ascending key) that have at least K+1
//! eligible images ([`Eligibility`]: `>= min_pixels`, and with `oslsm_grid` the OSLSM grid rule
//! too); each class's eligible images are sorted by index.
//!
//! 1. class: `T[rng.random_range(0..n as u32)]` with `n = |T|`;
//! 2. images: with `E` = the class's eligible images (`m = |E|`), a partial Fisher-Yates shuffle
//!    of the positions `p = [0, 1, .., m-1]`: for `i` in `0..K+1`:
//!    `j = rng.random_range(i as u32..m as u32)`, swap `p[i]` and `p[j]`. The episode's images
//!    are `E[p[0]], .., E[p[K]]`: the first K are the supports (in that order), the last the
//!    query. All K+1 are distinct.
//!
//! Only `random_range` on `u32` ranges is used (value-stable for rand 0.9, pinned by
//! `Cargo.lock`, identical on 32- and 64-bit machines); no shuffling or sampling helpers of
//! rand whose algorithms may change.
//!
//! # Episode lists
//!
//! [`EpisodeRecord`] is the JSON Lines form of evaluation.md:
//! `{"fold": f, "class_id": id, "supports": ["images/train2017/....jpg", ...], "query": "..."}`
//! with paths relative to the dataset root and the dataset's own class id (COCO category id, VOC
//! id, folder position + 1). [`write_jsonl`] writes atomically (temporary file then rename),
//! [`read_jsonl`] reports errors with line numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use fss_core::error::{EdgeError, Result};
use fss_core::preprocess::InputSize;
use fss_core::tensor::Mask;

/// The RNG seed of fold `fold` for run seed `seed`: `seed * 1000 + fold` (wrapping).
pub fn seed_for(seed: u64, fold: usize) -> u64 {
    seed.wrapping_mul(1000).wrapping_add(fold as u64)
}

/// The evaluation RNG of (seed, fold): `ChaCha8Rng::seed_from_u64(seed_for(seed, fold))`.
pub fn eval_rng(seed: u64, fold: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed_for(seed, fold))
}

/// One 1-way K-shot episode, the one episode type of every dataset, sampler and harness: image
/// indices into the dataset's list and the class as the dataset keys it (COCO class index
/// 1..=80, VOC id 1..=20, folder position + 1; see [`crate::episodes::EpisodeSource`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Episode {
    pub fold: usize,
    pub class: u8,
    pub supports: Vec<usize>,
    pub query: usize,
}

/// One line of an episode list (JSON Lines), paths relative to the dataset root; `class_id` is
/// the dataset's own id (COCO category id, VOC id, folder position + 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeRecord {
    pub fold: usize,
    pub class_id: u32,
    pub supports: Vec<String>,
    pub query: String,
}

impl EpisodeRecord {
    /// The record of `episode` in fold `fold` with the dataset's `class_id`, each image named by
    /// `path(index)`.
    pub fn of(
        episode: &Episode,
        fold: usize,
        class_id: u32,
        path: impl Fn(usize) -> Result<String>,
    ) -> Result<EpisodeRecord> {
        Ok(EpisodeRecord {
            fold,
            class_id,
            supports: episode
                .supports
                .iter()
                .map(|&i| path(i))
                .collect::<Result<_>>()?,
            query: path(episode.query)?,
        })
    }

    /// The supports' and the query's image indices, each found by `find(path)`; a record
    /// without supports is an error.
    pub fn images(&self, find: impl Fn(&str) -> Result<usize>) -> Result<(Vec<usize>, usize)> {
        if self.supports.is_empty() {
            return Err(EdgeError::input("episode has no support images"));
        }
        let supports = self
            .supports
            .iter()
            .map(|p| find(p))
            .collect::<Result<_>>()?;
        Ok((supports, find(&self.query)?))
    }
}

/// Writes an episode list as JSON Lines, atomically (a temporary file in the same folder, then
/// rename).
pub fn write_jsonl(path: &Path, records: &[EpisodeRecord]) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| EdgeError::invalid(path, "not a file path"))?;
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let file = std::fs::File::create(&tmp).map_err(|e| EdgeError::io(&tmp, e))?;
        let mut w = std::io::BufWriter::new(file);
        for r in records {
            let line =
                serde_json::to_string(r).map_err(|e| EdgeError::invalid(path, e.to_string()))?;
            w.write_all(line.as_bytes())
                .and_then(|_| w.write_all(b"\n"))
                .map_err(|e| EdgeError::io(&tmp, e))?;
        }
        let file = w
            .into_inner()
            .map_err(|e| EdgeError::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| EdgeError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| EdgeError::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads an episode list (JSON Lines; blank lines skipped, unknown keys ignored). Errors name
/// the file and the line number.
pub fn read_jsonl(path: &Path) -> Result<Vec<EpisodeRecord>> {
    let file = std::fs::File::open(path).map_err(|e| EdgeError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| EdgeError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let r: EpisodeRecord = serde_json::from_str(&line)
            .map_err(|e| EdgeError::invalid(path, format!("line {}: {e}", i + 1)))?;
        out.push(r);
    }
    Ok(out)
}

/// Draws `k` distinct positions out of `0..m` by a partial Fisher-Yates shuffle (see the module
/// doc). Requires `k <= m <= u32::MAX`.
pub fn draw_distinct<R: Rng>(rng: &mut R, m: usize, k: usize) -> Vec<usize> {
    assert!(k <= m && m <= u32::MAX as usize);
    let mut p: Vec<usize> = (0..m).collect();
    for i in 0..k {
        let j = rng.random_range(i as u32..m as u32) as usize;
        p.swap(i, j);
    }
    p.truncate(k);
    p
}

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
/// (those with at least `shots + 1` eligible images), in the draw order of the module doc.
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
    let (taking_part, eligible): (Vec<u8>, Vec<Vec<usize>>) =
        taking_part(source, &classes, shots, rule)
            .into_iter()
            .unzip();
    if taking_part.is_empty() && episodes > 0 {
        return Err(source.no_class_error(fold, shots, rule));
    }
    let mut rng = eval_rng(seed, fold);
    let mut out = Vec::with_capacity(episodes);
    for _ in 0..episodes {
        let ci = rng.random_range(0..taking_part.len() as u32) as usize;
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

/// The classes of `classes` (in their order) with at least `shots + 1` images eligible under
/// `rule`, each with those images: the taking-part classes of a fold.
pub fn taking_part(
    source: &(impl EpisodeSource + ?Sized),
    classes: &[u8],
    shots: usize,
    rule: Eligibility,
) -> Vec<(u8, Vec<usize>)> {
    classes
        .iter()
        .map(|&c| (c, source.eligible_images(c, rule)))
        .filter(|(_, images)| images.len() > shots)
        .collect()
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
