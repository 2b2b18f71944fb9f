//! Video training episodes (the trainer's live-camera case): K support frames and one query
//! frame of the same sequence of a DAVIS-layout training set, so a model learns to find the
//! object it was shown across the pose, scale, lighting and background changes of a video. The
//! episodes are class-agnostic (the sequence's object is the foreground), the frame gap is
//! drawn up to the whole sequence, and the draw is seeded and resumable like
//! [`crate::sampler::TrainingSampler`]'s; [`SourceMix`] interleaves several sources by weight.
//!
//! # Draw order (per episode)
//!
//! On ChaCha **stream 2** of `seed_for(seed, 0)`: a sequence uniformly among those with at
//! least K+1 eligible frames, then K+1 distinct eligible frames of it by a partial Fisher-Yates
//! shuffle (the first K are the supports in order, the last the query), then, with flips on,
//! K+1 flip decisions (`rng.next_u32() >> 31 == 1`). [`SourceMix`] draws the source of each
//! episode on stream 3: `rng.random::<f64>() * total weight`, the first source whose cumulative
//! weight exceeds it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::episodes::seed_for;
use crate::sampler::draw_shots;
use fss_core::davis::DavisDataset;
use fss_core::error::{EdgeError, Result};
use fss_core::image_io::load_label_png;

/// Settings of a [`VideoSampler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoSpec {
    pub shots: usize,
    /// Minimum object size (pixels of the mask at its own resolution) for a frame to be drawn.
    pub min_pixels: u64,
    /// Draw K+1 horizontal-flip decisions per episode.
    pub hflip: bool,
}

/// One video episode: frame indices of one sequence, and the flips (supports, then the query).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoEpisode {
    /// Index into [`VideoSampler::sequences`].
    pub sequence: usize,
    pub supports: Vec<usize>,
    pub query: usize,
    pub flips: Vec<bool>,
}

/// Endless 1-way K-shot video episodes over the sequences of a DAVIS-layout set (some held out
/// for selection). Serializable with serde (RNG state included), so a checkpoint resumes the
/// exact episode stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoSampler {
    spec: VideoSpec,
    /// Names of the sequences drawn from (in the dataset's order), each with its eligible frames.
    sequences: Vec<(String, Vec<usize>)>,
    rng: ChaCha8Rng,
    drawn: u64,
}

impl VideoSampler {
    /// Builds the sampler from every sequence of `dataset` not named in `holdout`. Every mask
    /// is read once: a missing or unreadable one is an error naming the file; frames whose
    /// object is absent (an empty mask: occluded or out of view, as on some DAVIS frames) or
    /// covers fewer than `min_pixels` pixels are not drawn; sequences with fewer than K+1 frames
    /// left are skipped, and none left at all is an error.
    pub fn new(
        dataset: &DavisDataset,
        spec: VideoSpec,
        holdout: &[String],
        seed: u64,
    ) -> Result<VideoSampler> {
        if spec.shots == 0 {
            return Err(EdgeError::input("shots must be at least 1"));
        }
        let names: Vec<&str> = dataset
            .sequences()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        if let Some(h) = holdout.iter().find(|h| !names.contains(&h.as_str())) {
            return Err(EdgeError::invalid(
                dataset.root(),
                format!("held-out sequence {h:?} is not in this dataset"),
            ));
        }
        let mut sequences = Vec::new();
        for s in dataset.sequences() {
            if holdout.contains(&s.name) {
                continue;
            }
            let mut eligible = Vec::new();
            for (i, path) in s.annotations.iter().enumerate() {
                let m = load_label_png(path)?;
                let fg = m.data.iter().filter(|&&v| v != 0).count() as u64;
                if fg > 0 && fg >= spec.min_pixels {
                    eligible.push(i);
                }
            }
            if eligible.len() > spec.shots {
                sequences.push((s.name.clone(), eligible));
            }
        }
        if sequences.is_empty() {
            return Err(EdgeError::invalid(
                dataset.root(),
                format!(
                    "no training sequence has {} frames whose object covers >= {} px",
                    spec.shots + 1,
                    spec.min_pixels
                ),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, 0));
        rng.set_stream(2);
        Ok(VideoSampler {
            spec,
            sequences,
            rng,
            drawn: 0,
        })
    }

    pub fn spec(&self) -> &VideoSpec {
        &self.spec
    }

    /// The sequences drawn from (names) with their eligible frames.
    pub fn sequences(&self) -> &[(String, Vec<usize>)] {
        &self.sequences
    }

    /// Eligible frames in all.
    pub fn frames(&self) -> usize {
        self.sequences.iter().map(|(_, f)| f.len()).sum()
    }

    /// Episodes drawn so far.
    pub fn episodes_drawn(&self) -> u64 {
        self.drawn
    }

    /// Draws the next episode.
    pub fn next_episode(&mut self) -> VideoEpisode {
        let n = self.sequences.len();
        let si = self.rng.random_range(0..n as u32) as usize;
        let (picked, query, flips) = draw_shots(
            &mut self.rng,
            &self.sequences[si].1,
            self.spec.shots,
            self.spec.hflip,
        );
        self.drawn += 1;
        VideoEpisode {
            sequence: si,
            supports: picked,
            query,
            flips,
        }
    }
}

/// Which source each training episode comes from, drawn by weight (module doc), resumable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceMix {
    weights: Vec<f64>,
    rng: ChaCha8Rng,
}

impl SourceMix {
    /// Weights must be finite, non-negative and not all zero.
    pub fn new(weights: &[f64], seed: u64) -> Result<SourceMix> {
        if weights.is_empty() {
            return Err(EdgeError::input("no data source to train on"));
        }
        if let Some(w) = weights.iter().find(|w| !w.is_finite() || **w < 0.0) {
            return Err(EdgeError::input(format!(
                "data weight {w} is not a finite non-negative number"
            )));
        }
        if weights.iter().sum::<f64>() <= 0.0 {
            return Err(EdgeError::input("the data weights are all zero"));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, 0));
        rng.set_stream(3);
        Ok(SourceMix {
            weights: weights.to_vec(),
            rng,
        })
    }

    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The source of the next episode.
    pub fn next_source(&mut self) -> usize {
        if self.weights.len() == 1 {
            return 0;
        }
        let total: f64 = self.weights.iter().sum();
        let x = self.rng.random::<f64>() * total;
        let mut acc = 0.0;
        for (i, w) in self.weights.iter().enumerate() {
            acc += w;
            if x < acc {
                return i;
            }
        }
        self.weights
            .iter()
            .rposition(|&w| w > 0.0)
            .expect("a positive weight")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_tests::fixture_files::TempDir;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    /// A DAVIS-layout set of `seqs` sequences of `frames` 16x12 frames, the object a square
    /// whose size grows with the frame index (frame 0: `first` px across).
    fn write_set(dir: &Path, seqs: &[&str], frames: usize, first: u32) {
        for s in seqs {
            let jd = dir.join("JPEGImages/480p").join(s);
            let ad = dir.join("Annotations/480p").join(s);
            std::fs::create_dir_all(&jd).unwrap();
            std::fs::create_dir_all(&ad).unwrap();
            for f in 0..frames {
                RgbImage::from_pixel(16, 12, Rgb([f as u8 * 10, 50, 90]))
                    .save(jd.join(format!("{f:05}.jpg")))
                    .unwrap();
                let side = first + f as u32;
                GrayImage::from_fn(16, 12, |x, y| {
                    Luma([if x < side && y < side { 255 } else { 0 }])
                })
                .save(ad.join(format!("{f:05}.png")))
                .unwrap();
            }
        }
    }

    use std::path::Path;

    fn spec(shots: usize, min_pixels: u64) -> VideoSpec {
        VideoSpec {
            shots,
            min_pixels,
            hflip: true,
        }
    }

    #[test]
    fn episodes_are_seeded_within_one_sequence_and_resume_exactly() {
        let dir = TempDir::new("video-sampler");
        write_set(dir.path(), &["a", "b", "c"], 6, 1);
        let ds = DavisDataset::open(dir.path()).unwrap();
        // Frames 0 and 1 (1 and 4 px) are below 5 px; "c" is held out.
        let mut s = VideoSampler::new(&ds, spec(2, 5), &["c".into()], 7).unwrap();
        assert_eq!(s.sequences().len(), 2);
        assert_eq!(s.sequences()[0].1, vec![2, 3, 4, 5]);
        let mut same = VideoSampler::new(&ds, spec(2, 5), &["c".into()], 7).unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 0..40 {
            if i == 20 {
                // Resume from the serialized state: the same stream continues.
                same = serde_json::from_str(&serde_json::to_string(&same).unwrap()).unwrap();
            }
            let e = s.next_episode();
            assert_eq!(e, same.next_episode());
            let frames = &s.sequences()[e.sequence].1;
            let mut all = e.supports.clone();
            all.push(e.query);
            assert!(all.iter().all(|f| frames.contains(f)), "{e:?}");
            all.sort();
            all.dedup();
            assert_eq!(all.len(), 3, "distinct frames: {e:?}");
            assert_eq!(e.flips.len(), 3);
            seen.insert(e.sequence);
        }
        assert_eq!(seen.len(), 2, "both sequences drawn");
        let other: Vec<VideoEpisode> = {
            let mut o = VideoSampler::new(&ds, spec(2, 5), &["c".into()], 8).unwrap();
            (0..5).map(|_| o.next_episode()).collect()
        };
        let mut again = VideoSampler::new(&ds, spec(2, 5), &["c".into()], 7).unwrap();
        let first: Vec<VideoEpisode> = (0..5).map(|_| again.next_episode()).collect();
        assert_ne!(other, first, "another seed draws other episodes");
    }

    #[test]
    fn bad_training_videos_are_one_line_errors() {
        let dir = TempDir::new("video-bad");
        write_set(dir.path(), &["a"], 3, 0);
        let ds = DavisDataset::open(dir.path()).unwrap();
        // Frame 0's object is absent: not drawn.
        let s = VideoSampler::new(&ds, spec(1, 1), &[], 1).unwrap();
        assert_eq!(s.sequences()[0].1, vec![1, 2]);
        std::fs::write(dir.path().join("Annotations/480p/a/00001.png"), b"").unwrap();
        let e = VideoSampler::new(&ds, spec(1, 1), &[], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("00001.png"), "{e}");
        let dir = TempDir::new("video-small");
        write_set(dir.path(), &["a"], 3, 1);
        let ds = DavisDataset::open(dir.path()).unwrap();
        let e = VideoSampler::new(&ds, spec(1, 1000), &[], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains(">= 1000 px"), "{e}");
        let e = VideoSampler::new(&ds, spec(1, 1), &["zz".into()], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"zz\""), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn sources_mix_by_weight_and_refuse_bad_weights() {
        let mut m = SourceMix::new(&[0.7, 0.3], 5).unwrap();
        let n = 4000;
        let first = (0..n).filter(|_| m.next_source() == 0).count() as f64 / n as f64;
        // Binomial: 4 standard deviations of 0.7 over 4000 draws is 0.029.
        assert!((first - 0.7).abs() < 0.029, "{first}");
        let mut z = SourceMix::new(&[0.0, 1.0], 5).unwrap();
        assert!((0..100).all(|_| z.next_source() == 1));
        for bad in [vec![-1.0, 2.0], vec![0.0, 0.0], vec![f64::NAN], vec![]] {
            assert!(SourceMix::new(&bad, 1).is_err(), "{bad:?}");
        }
    }
}
