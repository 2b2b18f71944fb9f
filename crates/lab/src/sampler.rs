//! Seeded, reproducible 1-way K-shot episodes over a [`CocoMaskDataset`] (docs/evaluation.md,
//! "COCO few-shot episodes"; methods.md §11.4): the COCO-20i evaluation episodes
//! ([`generate_episodes`], drawn by [`crate::episodes::draw_episodes`], whose module doc gives
//! the seeding and the draw order) and the resumable [`TrainingSampler`].
//!
//! # Draw order (training, per episode)
//!
//! The evaluation draw (class, then K+1 distinct images by a partial Fisher-Yates shuffle) over
//! the sampler's base classes and image subset, on ChaCha **stream 1** of the same seed
//! derivation (training and evaluation never share a random sequence); then, only if
//! horizontal flips are on, K+1 flip decisions (supports in order, then the query), each
//! `rng.next_u32() >> 31 == 1` (a fair coin from the top bit; no rand distribution involved).
//!
//! # Labels
//!
//! An episode of class c is labelled binary: support foreground = class c, background =
//! everything else; the query label is the binary mask of c. Pixels of any other class (novel
//! classes of the fold included) are background ([`episode_labels`]).

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::coco::{base_classes, check_fold, CocoFolds, CocoMaskDataset, FoldSplit};
use crate::episodes::{
    draw_distinct, draw_episodes, seed_for, Eligibility, Episode, EpisodeSource,
};
use fss_core::error::{EdgeError, Result};
use fss_core::tensor::Mask;

/// What to generate for one fold and one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeSpec {
    /// K (supports per episode).
    pub shots: usize,
    /// Number of episodes.
    pub episodes: usize,
    /// Eligibility threshold in pixels at original resolution (2048 in evaluation.md).
    pub min_pixels: u64,
    /// Also require the OSLSM small-object rule ([`crate::data::OSLSM_MIN_CELLS`]).
    #[serde(default)]
    pub oslsm_grid: bool,
    pub split: FoldSplit,
    pub fold: usize,
}

impl EpisodeSpec {
    /// evaluation.md defaults: interleaved split, 1,000 episodes, 2,048 px.
    pub fn new(shots: usize, fold: usize) -> Self {
        EpisodeSpec {
            shots,
            episodes: 1000,
            min_pixels: crate::data::coco::DEFAULT_MIN_PIXELS,
            oslsm_grid: false,
            split: FoldSplit::Interleaved,
            fold,
        }
    }
}

/// The classes of `classes` (kept in ascending order) that have at least `shots + 1` eligible
/// images (`>= min_pixels`) in the whole pool: the fold's taking-part classes.
pub fn taking_part_classes(
    dataset: &CocoMaskDataset,
    classes: &[u8],
    shots: usize,
    min_pixels: u64,
) -> Vec<u8> {
    // Eligibility does not depend on the fold split.
    let source = CocoFolds {
        dataset,
        split: FoldSplit::Interleaved,
    };
    let mut classes = classes.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let rule = Eligibility::min_pixels(min_pixels);
    crate::episodes::taking_part(&source, &classes, shots, rule)
        .into_iter()
        .map(|(c, _)| c)
        .collect()
}

/// The episodes of one fold and run, and the fold's taking-part classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeSet {
    /// Classes with at least K+1 eligible images (ascending); their count is reported.
    pub taking_part: Vec<u8>,
    pub episodes: Vec<Episode>,
}

/// Generates `spec.episodes` evaluation episodes of `spec.fold` for run seed `seed` over the
/// whole pool (see the module doc for the exact draw order; [`draw_episodes`] draws them).
pub fn generate_episodes(
    dataset: &CocoMaskDataset,
    spec: &EpisodeSpec,
    seed: u64,
) -> Result<EpisodeSet> {
    let source = CocoFolds {
        dataset,
        split: spec.split,
    };
    let rule = Eligibility {
        min_pixels: spec.min_pixels,
        oslsm_grid: spec.oslsm_grid,
    };
    let (taking_part, episodes) =
        draw_episodes(&source, spec.fold, spec.shots, spec.episodes, rule, seed)?;
    Ok(EpisodeSet {
        taking_part,
        episodes,
    })
}

/// The binary labels of an episode at original resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeLabels {
    /// Support masks (1 = the episode's class, 0 = everything else), in support order.
    pub supports: Vec<Mask>,
    /// Query mask (1 = the episode's class).
    pub query: Mask,
}

/// Labels an episode: foreground is the episode's class only; every other class (novel classes
/// included) and stuff/unlabelled pixels are background.
pub fn episode_labels(dataset: &CocoMaskDataset, episode: &Episode) -> Result<EpisodeLabels> {
    Ok(EpisodeLabels {
        supports: episode
            .supports
            .iter()
            .map(|&i| dataset.class_mask(i, episode.class))
            .collect::<Result<_>>()?,
        query: dataset.class_mask(episode.query, episode.class)?,
    })
}

/// Settings of a [`TrainingSampler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingSpec {
    pub split: FoldSplit,
    /// The fold being held out: training draws from its base classes.
    pub fold: usize,
    pub shots: usize,
    pub min_pixels: u64,
    /// Draw K+1 horizontal-flip decisions per episode.
    pub hflip: bool,
}

/// A training episode and its flip decisions (supports in order, then the query; all `false`
/// when flips are off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingEpisode {
    pub episode: Episode,
    pub flips: Vec<bool>,
}

/// K supports and a query, distinct, from `pool` (a partial Fisher-Yates shuffle; the last one
/// drawn is the query), then, with `hflip`, K+1 flip decisions (`rng.next_u32() >> 31 == 1`,
/// supports in order, then the query): the draw of every training sampler after it has chosen
/// its class or sequence.
pub fn draw_shots(
    rng: &mut ChaCha8Rng,
    pool: &[usize],
    shots: usize,
    hflip: bool,
) -> (Vec<usize>, usize, Vec<bool>) {
    let pos = draw_distinct(rng, pool.len(), shots + 1);
    let mut picked: Vec<usize> = pos.into_iter().map(|p| pool[p]).collect();
    let query = picked.pop().expect("shots + 1 >= 1 items");
    let flips = if hflip {
        (0..=shots).map(|_| rng.next_u32() >> 31 == 1).collect()
    } else {
        vec![false; shots + 1]
    };
    (picked, query, flips)
}

/// Endless 1-way K-shot episodes over the base classes of a fold, from an image subset (e.g.
/// train2017 only). Serializable with serde (RNG state included), so a checkpoint resumes the
/// exact episode stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSampler {
    spec: TrainingSpec,
    /// Base classes with at least K+1 eligible images in the subset (ascending).
    classes: Vec<u8>,
    /// Per class, eligible pool indices of the subset (ascending).
    eligible: Vec<Vec<usize>>,
    rng: ChaCha8Rng,
    drawn: u64,
}

impl TrainingSampler {
    /// Builds the sampler over a COCO pool (the base classes of the fold in `spec.split`, from
    /// `subset`): [`TrainingSampler::over`] with those classes.
    pub fn new(
        dataset: &CocoMaskDataset,
        spec: TrainingSpec,
        subset: &[usize],
        seed: u64,
    ) -> Result<TrainingSampler> {
        check_fold(spec.fold)?;
        let source = CocoFolds {
            dataset,
            split: spec.split,
        };
        Self::over(
            &source,
            &base_classes(spec.split, spec.fold),
            Some(subset),
            spec,
            seed,
        )
    }

    /// Builds the sampler over any class source: the `classes` (ascending) that have more than
    /// K eligible images (`>= spec.min_pixels`) among `pool` (the whole source when `None`).
    /// RNG `ChaCha8Rng::seed_from_u64(seed_for(seed, fold))` on stream 1.
    pub fn over(
        source: &(impl EpisodeSource + ?Sized),
        classes: &[u8],
        pool: Option<&[usize]>,
        spec: TrainingSpec,
        seed: u64,
    ) -> Result<TrainingSampler> {
        if spec.shots == 0 {
            return Err(EdgeError::input("shots must be at least 1"));
        }
        let in_pool: Option<std::collections::HashSet<usize>> =
            pool.map(|p| p.iter().copied().collect());
        let rule = Eligibility::min_pixels(spec.min_pixels);
        let mut taking_part = Vec::new();
        let mut eligible = Vec::new();
        for &c in classes {
            let e: Vec<usize> = source
                .eligible_images(c, rule)
                .into_iter()
                .filter(|i| in_pool.as_ref().is_none_or(|p| p.contains(i)))
                .collect();
            if e.len() > spec.shots {
                taking_part.push(c);
                eligible.push(e);
            }
        }
        if taking_part.is_empty() {
            return Err(EdgeError::input(format!(
                "no training class of fold {} has at least {} training images of >= {} px",
                spec.fold,
                spec.shots + 1,
                spec.min_pixels
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, spec.fold));
        rng.set_stream(1);
        Ok(TrainingSampler {
            spec,
            classes: taking_part,
            eligible,
            rng,
            drawn: 0,
        })
    }

    pub fn spec(&self) -> &TrainingSpec {
        &self.spec
    }

    /// The base classes that take part (ascending class indices).
    pub fn classes(&self) -> &[u8] {
        &self.classes
    }

    /// Episodes drawn so far.
    pub fn episodes_drawn(&self) -> u64 {
        self.drawn
    }

    /// Draws the next episode (and its flips when `hflip` is on).
    pub fn next_episode(&mut self) -> TrainingEpisode {
        let n = self.classes.len();
        let ci = self.rng.random_range(0..n as u32) as usize;
        let (imgs, query, flips) = draw_shots(
            &mut self.rng,
            &self.eligible[ci],
            self.spec.shots,
            self.spec.hflip,
        );
        self.drawn += 1;
        TrainingEpisode {
            episode: Episode {
                fold: self.spec.fold,
                class: self.classes[ci],
                supports: imgs,
                query,
            },
            flips,
        }
    }

    /// Checkpoint form (JSON).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| EdgeError::input(format!("sampler state: {e}")))
    }

    /// Restores a checkpoint made by [`TrainingSampler::to_json`].
    pub fn from_json(s: &str) -> Result<TrainingSampler> {
        serde_json::from_str(s).map_err(|e| EdgeError::input(format!("sampler state: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::coco::{fixture, fold_classes};
    use crate::episodes::{read_jsonl, write_jsonl, EpisodeRecord, EpisodeSource};
    use fss_tests::fixture_files::TempDir;

    fn dataset(dir: &TempDir) -> CocoMaskDataset {
        fixture::write(dir.path(), 24, 8);
        CocoMaskDataset::open(dir.path()).unwrap()
    }

    fn spec(fold: usize, shots: usize, episodes: usize) -> EpisodeSpec {
        EpisodeSpec {
            shots,
            episodes,
            min_pixels: 16,
            oslsm_grid: false,
            split: FoldSplit::Interleaved,
            fold,
        }
    }

    #[test]
    fn seed_derivation() {
        assert_eq!(seed_for(0, 0), 0);
        assert_eq!(seed_for(3, 2), 3002);
    }

    #[test]
    fn draw_distinct_is_a_partial_permutation() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut seen_first = [false; 5];
        for _ in 0..200 {
            let d = draw_distinct(&mut rng, 5, 3);
            assert_eq!(d.len(), 3);
            assert!(d.iter().all(|&x| x < 5));
            assert!(d[0] != d[1] && d[1] != d[2] && d[0] != d[2]);
            seen_first[d[0]] = true;
        }
        assert!(seen_first.iter().all(|&s| s));
        assert_eq!(draw_distinct(&mut rng, 4, 4).len(), 4);
    }

    #[test]
    fn taking_part_counts() {
        let dir = TempDir::new("sampler_tp");
        let ds = dataset(&dir);
        // 32 images; class index c in 1..8 on images k with k % 8 == c-1 -> 4 images each;
        // classes 9..12 on 8 images each (16 px).
        let f0 = fold_classes(FoldSplit::Interleaved, 0); // 1, 5, 9, 13, ...
        assert_eq!(taking_part_classes(&ds, &f0, 1, 16), vec![1, 5, 9]);
        assert_eq!(taking_part_classes(&ds, &f0, 4, 16), vec![9]);
        assert_eq!(taking_part_classes(&ds, &f0, 1, 17), vec![1, 5]);
    }

    #[test]
    fn same_seed_same_episodes_different_seed_differs() {
        let dir = TempDir::new("sampler_seed");
        let ds = dataset(&dir);
        let a = generate_episodes(&ds, &spec(0, 1, 50), 0).unwrap();
        let b = generate_episodes(&ds, &spec(0, 1, 50), 0).unwrap();
        let c = generate_episodes(&ds, &spec(0, 1, 50), 1).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.episodes, c.episodes);
        assert_eq!(a.taking_part, vec![1, 5, 9]);
        // Different folds use different streams (and classes).
        let d = generate_episodes(&ds, &spec(1, 1, 50), 0).unwrap();
        assert_eq!(d.taking_part, vec![2, 6, 10]);
    }

    #[test]
    fn episodes_are_valid() {
        let dir = TempDir::new("sampler_valid");
        let ds = dataset(&dir);
        for shots in [1, 3] {
            let set = generate_episodes(&ds, &spec(2, shots, 200), 5).unwrap();
            let mut classes_seen = std::collections::BTreeSet::new();
            for e in &set.episodes {
                assert_eq!(e.fold, 2);
                assert_eq!(e.supports.len(), shots);
                assert!(set.taking_part.contains(&e.class));
                let mut all = e.supports.clone();
                all.push(e.query);
                let mut dedup = all.clone();
                dedup.sort();
                dedup.dedup();
                assert_eq!(dedup.len(), all.len(), "images not distinct: {e:?}");
                for &i in &all {
                    assert!(ds.is_eligible(i, e.class, 16));
                }
                classes_seen.insert(e.class);
            }
            assert_eq!(
                classes_seen.into_iter().collect::<Vec<_>>(),
                set.taking_part
            );
        }
        // Zero shots and bad folds are errors.
        assert!(generate_episodes(&ds, &spec(0, 0, 1), 0).is_err());
        assert!(generate_episodes(&ds, &spec(4, 1, 1), 0).is_err());
        // No class can take part.
        assert!(generate_episodes(&ds, &spec(0, 20, 1), 0).is_err());
    }

    #[test]
    fn jsonl_round_trip_and_replay() {
        let dir = TempDir::new("sampler_jsonl");
        let ds = dataset(&dir);
        let set = generate_episodes(&ds, &spec(0, 2, 30), 9).unwrap();
        let source = CocoFolds {
            dataset: &ds,
            split: FoldSplit::Interleaved,
        };
        let records: Vec<EpisodeRecord> = set
            .episodes
            .iter()
            .map(|e| source.record(e).unwrap())
            .collect();
        // The record names the COCO category id; the episode keeps the class index.
        assert_eq!(
            records[0].class_id,
            ds.class_id(set.episodes[0].class).unwrap() as u32
        );
        assert!(records[0].supports[0].starts_with("images/"));
        let path = dir.path().join("episodes.jsonl");
        write_jsonl(&path, &records).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 30);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let keys: Vec<_> = first.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 4);
        for k in ["fold", "class_id", "supports", "query"] {
            assert!(first.get(k).is_some(), "missing {k}");
        }
        // No temporary file left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        let back = read_jsonl(&path).unwrap();
        assert_eq!(back, records);
        let replay: Vec<Episode> = back.iter().map(|r| source.episode(r).unwrap()).collect();
        assert_eq!(replay, set.episodes);
    }

    #[test]
    fn jsonl_errors() {
        let dir = TempDir::new("sampler_jsonl_err");
        let ds = dataset(&dir);
        let path = dir.path().join("bad.jsonl");
        std::fs::write(
            &path,
            "{\"fold\": 0, \"class_id\": 1, \"supports\": [\"images/train2017/000000001000.jpg\"], \"query\": \"images/train2017/000000001008.jpg\"}\n\n{\"fold\": 0, \"class_id\": }\n",
        )
        .unwrap();
        let e = read_jsonl(&path).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl") && e.contains("line 3"), "{e}");
        let good = EpisodeRecord {
            fold: 0,
            class_id: 1,
            supports: vec!["images/train2017/000000001000.jpg".into()],
            query: "images/train2017/000000001008.jpg".into(),
        };
        let source = CocoFolds {
            dataset: &ds,
            split: FoldSplit::Interleaved,
        };
        let ep = source.episode(&good).unwrap();
        assert_eq!((ep.class, ep.supports.clone(), ep.query), (1, vec![0], 8));
        let mut unknown = good.clone();
        unknown.query = "images/train2017/nope.jpg".into();
        let sampling = crate::episodes::Sampling {
            shots: 1,
            episodes: 0,
            runs: 1,
            seed: 0,
            folds: vec![0],
            rule: Eligibility::min_pixels(1),
        };
        let e = crate::episodes::plan_episodes(&source, &sampling, Some(&[good.clone(), unknown]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("episode 2") && e.contains("nope.jpg"), "{e}");
        let mut stuff = good;
        stuff.class_id = 150;
        assert!(source.episode(&stuff).is_err());
    }

    #[test]
    fn labels_are_binary_of_the_class() {
        let dir = TempDir::new("sampler_labels");
        let ds = dataset(&dir);
        let set = generate_episodes(&ds, &spec(0, 1, 5), 0).unwrap();
        for e in &set.episodes {
            let l = episode_labels(&ds, e).unwrap();
            let expect = ds.pixels(e.query, e.class) as usize;
            assert_eq!(l.query.count_nonzero(), expect);
            assert!(l.query.data.iter().all(|&v| v <= 1));
            assert_eq!(l.supports.len(), 1);
        }
    }

    #[test]
    fn training_sampler_resumes_exactly() {
        let dir = TempDir::new("sampler_train");
        let ds = dataset(&dir);
        let train = ds.indices_of_split("train2017");
        let tspec = TrainingSpec {
            split: FoldSplit::Interleaved,
            fold: 0,
            shots: 1,
            min_pixels: 16,
            hflip: true,
        };
        let mut a = TrainingSampler::new(&ds, tspec, &train, 42).unwrap();
        // Base classes of fold 0 with >= 2 eligible train images: 2,3,4,6,7,8,10,11,12.
        assert_eq!(a.classes(), &[2, 3, 4, 6, 7, 8, 10, 11, 12]);
        for _ in 0..17 {
            let t = a.next_episode();
            assert!(train.contains(&t.episode.query));
            assert!(t.episode.supports.iter().all(|s| train.contains(s)));
            assert_ne!(t.episode.supports[0], t.episode.query);
            assert_eq!(t.flips.len(), 2);
            assert_ne!(t.episode.class % 4, 1, "novel class drawn");
        }
        let saved = a.to_json().unwrap();
        let mut b = TrainingSampler::from_json(&saved).unwrap();
        assert_eq!(b.episodes_drawn(), 17);
        let next_a: Vec<_> = (0..25).map(|_| a.next_episode()).collect();
        let next_b: Vec<_> = (0..25).map(|_| b.next_episode()).collect();
        assert_eq!(next_a, next_b);
        // Flips are not constant.
        let flips: Vec<bool> = next_a.iter().flat_map(|t| t.flips.clone()).collect();
        assert!(flips.iter().any(|&f| f) && flips.iter().any(|&f| !f));
        // Same seed from scratch gives the same stream; another seed differs.
        let mut c = TrainingSampler::new(&ds, tspec, &train, 42).unwrap();
        let mut d = TrainingSampler::new(&ds, tspec, &train, 43).unwrap();
        let c5: Vec<_> = (0..5).map(|_| c.next_episode()).collect();
        let d5: Vec<_> = (0..5).map(|_| d.next_episode()).collect();
        let mut fresh = TrainingSampler::new(&ds, tspec, &train, 42).unwrap();
        assert_eq!(c5, (0..5).map(|_| fresh.next_episode()).collect::<Vec<_>>());
        assert_ne!(c5, d5);
        // No flips: no flip draws, all false.
        let mut nf = TrainingSampler::new(
            &ds,
            TrainingSpec {
                hflip: false,
                ..tspec
            },
            &train,
            42,
        )
        .unwrap();
        let t = nf.next_episode();
        assert_eq!(t.flips, vec![false, false]);
        assert_eq!(t.episode, c5[0].episode);
    }

    /// Real data: taking-part classes per fold, K = 1, 2,048 px, interleaved (evaluation.md
    /// reference: 16 / 18 / 13 / 16).
    #[test]
    fn real_coco128_taking_part() {
        let root = fss_tests::require_shared("coco128");
        let ds = CocoMaskDataset::open(&root).unwrap();
        let counts: Vec<usize> = (0..4)
            .map(|f| {
                taking_part_classes(
                    &ds,
                    &fold_classes(FoldSplit::Interleaved, f),
                    1,
                    crate::data::coco::DEFAULT_MIN_PIXELS,
                )
                .len()
            })
            .collect();
        eprintln!("taking-part classes per fold (K=1, 2048 px, interleaved): {counts:?}");
        assert_eq!(counts, vec![16, 18, 13, 16]);
        let set = generate_episodes(&ds, &EpisodeSpec::new(1, 0), 0).unwrap();
        assert_eq!(set.episodes.len(), 1000);
        assert_eq!(set.taking_part.len(), 16);
    }
}
