//! Segmentation metrics of docs/evaluation.md ("Metrics") and methods.md §7.3.
//!
//! Everything is accumulated as 64-bit integer intersections and unions and divided only at the
//! end ("pooled"): class IoU and mIoU never average per-episode IoUs, FB-IoU pools foreground and
//! background separately over all episodes (or frames) and averages the two ratios. Only the
//! video J-mean averages per-frame IoUs (that is its definition), with an empty prediction on an
//! empty ground truth counting 1.0.
//!
//! The accumulators return fractions in `0.0..=1.0`; the `*_percent` helpers give the percent
//! values that go into [`crate::report::EvalReport`].
//!
//! Masks are binary by "non-zero = foreground" on both sides. An optional `ignore` value removes
//! the pixels whose *ground truth* equals it from both prediction and ground truth before
//! counting (VOC's 255 boundary; off by default).

use std::collections::BTreeMap;

use crate::error::{EdgeError, Result};
use crate::tensor::Mask;

/// Pooled intersection and union pixel counts of one binary label (foreground or background).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IouCounts {
    pub intersection: u64,
    pub union: u64,
}

impl IouCounts {
    /// `intersection / union`, `None` when the union is empty.
    pub fn iou(&self) -> Option<f64> {
        if self.union == 0 {
            None
        } else {
            Some(self.intersection as f64 / self.union as f64)
        }
    }

    /// Adds another count pair (pooling).
    pub fn add(&mut self, other: IouCounts) {
        self.intersection += other.intersection;
        self.union += other.union;
    }
}

impl std::ops::AddAssign for IouCounts {
    fn add_assign(&mut self, other: IouCounts) {
        self.add(other);
    }
}

fn check_shapes(pred: &Mask, gt: &Mask) -> Result<()> {
    if (pred.height, pred.width) != (gt.height, gt.width)
        || pred.data.len() != gt.data.len()
        || gt.data.len() != gt.height * gt.width
    {
        return Err(EdgeError::input(format!(
            "prediction of {}x{} (HxW) does not match the ground truth of {}x{}",
            pred.height, pred.width, gt.height, gt.width
        )));
    }
    Ok(())
}

/// Foreground and background intersection/union counts of one prediction against one ground
/// truth (non-zero = foreground on both sides). Returns `(foreground, background)`.
/// A shape mismatch is an error.
pub fn binary_counts(pred: &Mask, gt: &Mask) -> Result<(IouCounts, IouCounts)> {
    binary_counts_ignoring(pred, gt, None)
}

/// As [`binary_counts`], but pixels whose ground-truth value equals `ignore` are excluded from
/// both prediction and ground truth (so `Some(255)` removes VOC boundary pixels). With an ignore
/// value, "foreground" in the ground truth means non-zero and not the ignore value.
pub fn binary_counts_ignoring(
    pred: &Mask,
    gt: &Mask,
    ignore: Option<u8>,
) -> Result<(IouCounts, IouCounts)> {
    check_shapes(pred, gt)?;
    // Counts of (pred fg, gt fg) combinations.
    let (mut tp, mut fp, mut fn_, mut tn) = (0u64, 0u64, 0u64, 0u64);
    match ignore {
        None => {
            for (&p, &g) in pred.data.iter().zip(&gt.data) {
                match (p != 0, g != 0) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, true) => fn_ += 1,
                    (false, false) => tn += 1,
                }
            }
        }
        Some(ig) => {
            for (&p, &g) in pred.data.iter().zip(&gt.data) {
                if g == ig {
                    continue;
                }
                match (p != 0, g != 0) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, true) => fn_ += 1,
                    (false, false) => tn += 1,
                }
            }
        }
    }
    Ok((
        IouCounts {
            intersection: tp,
            union: tp + fp + fn_,
        },
        IouCounts {
            intersection: tn,
            union: tn + fp + fn_,
        },
    ))
}

/// Foreground IoU of one frame (a fraction); an empty prediction on an empty ground truth is 1.0.
/// A shape mismatch is an error.
pub fn frame_iou(pred: &Mask, gt: &Mask) -> Result<f64> {
    let (fg, _) = binary_counts(pred, gt)?;
    Ok(fg.iou().unwrap_or(1.0))
}

/// FB-IoU from pooled foreground and background counts: the mean of the two IoUs. When one of
/// the two unions is empty (every pixel foreground, or none, in both prediction and ground truth)
/// only the defined one counts; `None` when neither is defined (no pixels at all).
pub fn fb_iou(fg: IouCounts, bg: IouCounts) -> Option<f64> {
    match (fg.iou(), bg.iou()) {
        (Some(f), Some(b)) => Some((f + b) / 2.0),
        (Some(f), None) => Some(f),
        (None, Some(b)) => Some(b),
        (None, None) => None,
    }
}

/// Fraction to percent.
pub fn percent(x: f64) -> f64 {
    x * 100.0
}

/// Mean and population standard deviation (divide by n) of several runs; `None` for no values.
pub fn mean_and_population_std(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    Some((mean, var.sqrt()))
}

#[derive(Debug, Clone, Copy, Default)]
struct SequenceJ {
    sum: f64,
    frames: usize,
}

/// Video J accumulator (DAVIS protocol): per-frame foreground IoU averaged over the frames of a
/// sequence (or target, e.g. `"<seq>:<k>"` for a DAVIS-2017 object), then over sequences; plus
/// FB-IoU pooled over all frames of all sequences.
#[derive(Debug, Clone, Default)]
pub struct VideoJAccumulator {
    sequences: BTreeMap<String, SequenceJ>,
    fg: IouCounts,
    bg: IouCounts,
}

impl VideoJAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one query frame of `sequence`. Returns the frame's IoU (fraction).
    pub fn add(&mut self, sequence: &str, pred: &Mask, gt: &Mask) -> Result<f64> {
        let (fg, bg) = binary_counts(pred, gt)?;
        let j = fg.iou().unwrap_or(1.0);
        let entry = self.sequences.entry(sequence.to_string()).or_default();
        entry.sum += j;
        entry.frames += 1;
        self.fg += fg;
        self.bg += bg;
        Ok(j)
    }

    /// Number of frames added for a sequence.
    pub fn frames(&self, sequence: &str) -> usize {
        self.sequences.get(sequence).map_or(0, |s| s.frames)
    }

    /// Total number of frames added.
    pub fn total_frames(&self) -> usize {
        self.sequences.values().map(|s| s.frames).sum()
    }

    /// Mean frame IoU of one sequence (fraction), `None` if it has no frames.
    pub fn sequence_j(&self, sequence: &str) -> Option<f64> {
        self.sequences
            .get(sequence)
            .filter(|s| s.frames > 0)
            .map(|s| s.sum / s.frames as f64)
    }

    /// Per-sequence J (fractions), sorted by name.
    pub fn per_sequence(&self) -> BTreeMap<String, f64> {
        self.sequences
            .iter()
            .filter(|(_, s)| s.frames > 0)
            .map(|(k, s)| (k.clone(), s.sum / s.frames as f64))
            .collect()
    }

    /// Mean over sequences of the per-sequence J (fraction); `None` with no frames.
    pub fn j_mean(&self) -> Option<f64> {
        let per = self.per_sequence();
        if per.is_empty() {
            None
        } else {
            Some(per.values().sum::<f64>() / per.len() as f64)
        }
    }

    /// Pooled foreground and background counts over all frames.
    pub fn pooled(&self) -> (IouCounts, IouCounts) {
        (self.fg, self.bg)
    }

    /// FB-IoU pooled over all frames of all sequences (fraction).
    pub fn fb_iou(&self) -> Option<f64> {
        fb_iou(self.fg, self.bg)
    }

    /// Per-sequence J in percent (for `EvalReport::per_sequence`).
    pub fn per_sequence_percent(&self) -> BTreeMap<String, f64> {
        self.per_sequence()
            .into_iter()
            .map(|(k, v)| (k, percent(v)))
            .collect()
    }

    /// J-mean in percent.
    pub fn j_mean_percent(&self) -> Option<f64> {
        self.j_mean().map(percent)
    }

    /// FB-IoU in percent.
    pub fn fb_iou_percent(&self) -> Option<f64> {
        self.fb_iou().map(percent)
    }
}

/// Pooled per-class IoU over the episodes of one fold (and one run): per class, intersections
/// and unions are summed over that class's episodes and divided at the end; mIoU is the mean over
/// the classes that had episodes; FB-IoU pools foreground and background over all episodes
/// (classes merged).
#[derive(Debug, Clone, Default)]
pub struct ClassIouAccumulator {
    ignore: Option<u8>,
    classes: BTreeMap<u8, (IouCounts, usize)>,
    fg: IouCounts,
    bg: IouCounts,
}

impl ClassIouAccumulator {
    /// No ignore label.
    pub fn new() -> Self {
        Self::default()
    }

    /// With an ignore value in the ground truth (e.g. `Some(255)` for a VOC preset).
    pub fn with_ignore(ignore: Option<u8>) -> Self {
        ClassIouAccumulator {
            ignore,
            ..Self::default()
        }
    }

    /// Adds one episode of `class` (any class key, e.g. the class index 1..80): `pred` and `gt`
    /// are binary (non-zero = the episode's class). Returns the episode's `(fg, bg)` counts.
    pub fn add(&mut self, class: u8, pred: &Mask, gt: &Mask) -> Result<(IouCounts, IouCounts)> {
        let (fg, bg) = binary_counts_ignoring(pred, gt, self.ignore)?;
        self.add_counts(class, fg, bg);
        Ok((fg, bg))
    }

    /// Adds pre-computed counts of one episode.
    pub fn add_counts(&mut self, class: u8, fg: IouCounts, bg: IouCounts) {
        let e = self.classes.entry(class).or_default();
        e.0 += fg;
        e.1 += 1;
        self.fg += fg;
        self.bg += bg;
    }

    /// Merges another accumulator (same fold and run) into this one.
    pub fn merge(&mut self, other: &ClassIouAccumulator) {
        for (&c, &(counts, n)) in &other.classes {
            let e = self.classes.entry(c).or_default();
            e.0 += counts;
            e.1 += n;
        }
        self.fg += other.fg;
        self.bg += other.bg;
    }

    /// Classes that had at least one episode, ascending.
    pub fn classes(&self) -> Vec<u8> {
        self.classes.keys().copied().collect()
    }

    /// Number of episodes of a class.
    pub fn episodes(&self, class: u8) -> usize {
        self.classes.get(&class).map_or(0, |e| e.1)
    }

    /// Total episodes added.
    pub fn total_episodes(&self) -> usize {
        self.classes.values().map(|e| e.1).sum()
    }

    /// Pooled foreground counts of a class.
    pub fn class_counts(&self, class: u8) -> Option<IouCounts> {
        self.classes.get(&class).map(|e| e.0)
    }

    /// Pooled IoU of a class (fraction). `None` if the class had no episodes; a class whose
    /// pooled union is empty (empty prediction on empty ground truth in every episode) counts 1.0.
    pub fn class_iou(&self, class: u8) -> Option<f64> {
        self.classes.get(&class).map(|e| e.0.iou().unwrap_or(1.0))
    }

    /// Pooled IoU of every class that had episodes (fractions).
    pub fn per_class(&self) -> BTreeMap<u8, f64> {
        self.classes
            .iter()
            .map(|(&c, e)| (c, e.0.iou().unwrap_or(1.0)))
            .collect()
    }

    /// Mean of the pooled class IoUs over the classes that had episodes (fraction).
    pub fn miou(&self) -> Option<f64> {
        let per = self.per_class();
        if per.is_empty() {
            None
        } else {
            Some(per.values().sum::<f64>() / per.len() as f64)
        }
    }

    /// Pooled foreground and background counts over all episodes.
    pub fn pooled(&self) -> (IouCounts, IouCounts) {
        (self.fg, self.bg)
    }

    /// FB-IoU pooled over all episodes, classes merged (fraction).
    pub fn fb_iou(&self) -> Option<f64> {
        fb_iou(self.fg, self.bg)
    }

    /// mIoU in percent.
    pub fn miou_percent(&self) -> Option<f64> {
        self.miou().map(percent)
    }

    /// FB-IoU in percent.
    pub fn fb_iou_percent(&self) -> Option<f64> {
        self.fb_iou().map(percent)
    }

    /// Per-class IoU in percent.
    pub fn per_class_percent(&self) -> BTreeMap<u8, f64> {
        self.per_class()
            .into_iter()
            .map(|(k, v)| (k, percent(v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(h: usize, w: usize, ones: &[usize]) -> Mask {
        let mut data = vec![0u8; h * w];
        for &i in ones {
            data[i] = 1;
        }
        Mask::new(h, w, data).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn counts_and_iou() {
        // 2x3: pred {0,1,2}, gt {1,2,3}
        let p = mask(2, 3, &[0, 1, 2]);
        let g = mask(2, 3, &[1, 2, 3]);
        let (fg, bg) = binary_counts(&p, &g).unwrap();
        assert_eq!(
            fg,
            IouCounts {
                intersection: 2,
                union: 4
            }
        );
        assert_eq!(
            bg,
            IouCounts {
                intersection: 2,
                union: 4
            }
        );
        assert!(close(frame_iou(&p, &g).unwrap(), 0.5));
    }

    #[test]
    fn nonzero_is_foreground() {
        let p = Mask::new(1, 3, vec![0, 7, 255]).unwrap();
        let g = Mask::new(1, 3, vec![0, 255, 1]).unwrap();
        let (fg, bg) = binary_counts(&p, &g).unwrap();
        assert_eq!(fg.intersection, 2);
        assert_eq!(fg.union, 2);
        assert_eq!(bg.iou(), Some(1.0));
    }

    #[test]
    fn empty_on_empty_is_one() {
        let p = mask(2, 2, &[]);
        let g = mask(2, 2, &[]);
        assert_eq!(frame_iou(&p, &g).unwrap(), 1.0);
        let g1 = mask(2, 2, &[0]);
        assert_eq!(frame_iou(&p, &g1).unwrap(), 0.0);
    }

    #[test]
    fn shape_mismatch_is_error() {
        let p = mask(2, 3, &[]);
        let g = mask(3, 2, &[]);
        assert!(binary_counts(&p, &g).is_err());
        assert!(frame_iou(&p, &g).is_err());
        let mut acc = VideoJAccumulator::new();
        assert!(acc.add("s", &p, &g).is_err());
        assert_eq!(acc.total_frames(), 0);
    }

    #[test]
    fn ignore_value_excluded_from_both() {
        // gt: [1, 255, 0, 255]; pred: [1, 1, 0, 0]
        let p = Mask::new(1, 4, vec![1, 1, 0, 0]).unwrap();
        let g = Mask::new(1, 4, vec![1, 255, 0, 255]).unwrap();
        let (fg, bg) = binary_counts_ignoring(&p, &g, Some(255)).unwrap();
        assert_eq!(
            fg,
            IouCounts {
                intersection: 1,
                union: 1
            }
        );
        assert_eq!(
            bg,
            IouCounts {
                intersection: 1,
                union: 1
            }
        );
        // Without ignore, 255 is foreground.
        let (fg, _) = binary_counts_ignoring(&p, &g, None).unwrap();
        assert_eq!(
            fg,
            IouCounts {
                intersection: 2,
                union: 3
            }
        );
    }

    /// methods.md §11.3: one class, two episodes with different foreground sizes; the mIoU is
    /// the pooled ratio, not the mean of the per-episode IoUs.
    #[test]
    fn miou_is_pooled_not_mean_of_episodes() {
        // Episode 1: 10x10, gt 50 px (0..50), pred 0..25 -> I 25, U 50, IoU 0.5
        let g1 = mask(10, 10, &(0..50).collect::<Vec<_>>());
        let p1 = mask(10, 10, &(0..25).collect::<Vec<_>>());
        // Episode 2: 10x10, gt 4 px (0..4), pred 0..4 plus 4 more -> I 4, U 8, IoU 0.5...
        // use a different IoU: pred 0..1 -> I 1, U 4, IoU 0.25
        let g2 = mask(10, 10, &[0, 1, 2, 3]);
        let p2 = mask(10, 10, &[0]);
        let mut acc = ClassIouAccumulator::new();
        acc.add(3, &p1, &g1).unwrap();
        acc.add(3, &p2, &g2).unwrap();
        let pooled = (25.0 + 1.0) / (50.0 + 4.0);
        let mean_of_episodes = (0.5 + 0.25) / 2.0;
        assert!(close(acc.class_iou(3).unwrap(), pooled));
        assert!(close(acc.miou().unwrap(), pooled));
        assert!(!close(acc.miou().unwrap(), mean_of_episodes));
        assert_eq!(acc.episodes(3), 2);
        assert_eq!(acc.total_episodes(), 2);
        // FB-IoU: fg pooled as above; bg: ep1 I 50 U 75, ep2 I 96 U 99.
        let bg = (50.0 + 96.0) / (75.0 + 99.0);
        assert!(close(acc.fb_iou().unwrap(), (pooled + bg) / 2.0));
        assert!(close(acc.miou_percent().unwrap(), pooled * 100.0));
    }

    #[test]
    fn miou_is_mean_over_classes_with_episodes() {
        let g = mask(2, 2, &[0, 1]);
        let p_full = mask(2, 2, &[0, 1]);
        let p_half = mask(2, 2, &[0]);
        let mut acc = ClassIouAccumulator::new();
        acc.add(1, &p_full, &g).unwrap();
        acc.add(5, &p_half, &g).unwrap();
        assert_eq!(acc.classes(), vec![1, 5]);
        assert!(close(acc.miou().unwrap(), 0.75));
        assert_eq!(acc.class_iou(9), None);
        let mut other = ClassIouAccumulator::new();
        other.add(5, &p_full, &g).unwrap();
        acc.merge(&other);
        // class 5: I 1+2, U 2+2
        assert!(close(acc.class_iou(5).unwrap(), 0.75));
        assert_eq!(acc.total_episodes(), 3);
        assert!(ClassIouAccumulator::new().miou().is_none());
    }

    #[test]
    fn video_j_per_sequence_and_pooled_fb() {
        let mut acc = VideoJAccumulator::new();
        // seq a: frames IoU 1.0 and 0.5
        let g = mask(2, 2, &[0, 1]);
        acc.add("a", &mask(2, 2, &[0, 1]), &g).unwrap();
        acc.add("a", &mask(2, 2, &[0]), &g).unwrap();
        // seq b: empty on empty (1.0) and miss (0.0)
        acc.add("b", &mask(2, 2, &[]), &mask(2, 2, &[])).unwrap();
        acc.add("b", &mask(2, 2, &[]), &mask(2, 2, &[3])).unwrap();
        assert!(close(acc.sequence_j("a").unwrap(), 0.75));
        assert!(close(acc.sequence_j("b").unwrap(), 0.5));
        assert!(close(acc.j_mean().unwrap(), 0.625));
        assert_eq!(acc.frames("a"), 2);
        assert_eq!(acc.total_frames(), 4);
        // pooled fg: I 2+1+0+0 = 3, U 2+2+0+1 = 5; bg: I 2+2+4+3 = 11, U 2+3+4+4 = 13
        let (fg, bg) = acc.pooled();
        assert_eq!(
            fg,
            IouCounts {
                intersection: 3,
                union: 5
            }
        );
        assert_eq!(
            bg,
            IouCounts {
                intersection: 11,
                union: 13
            }
        );
        assert!(close(acc.fb_iou().unwrap(), (0.6 + 11.0 / 13.0) / 2.0));
        let pct = acc.per_sequence_percent();
        assert!(close(pct["a"], 75.0));
        assert!(close(acc.j_mean_percent().unwrap(), 62.5));
        assert!(VideoJAccumulator::new().j_mean().is_none());
    }

    #[test]
    fn fb_iou_one_side_undefined() {
        let all = IouCounts {
            intersection: 4,
            union: 4,
        };
        assert_eq!(fb_iou(all, IouCounts::default()), Some(1.0));
        assert_eq!(fb_iou(IouCounts::default(), IouCounts::default()), None);
    }

    #[test]
    fn mean_std() {
        let (m, s) = mean_and_population_std(&[1.0, 3.0]).unwrap();
        assert!(close(m, 2.0));
        assert!(close(s, 1.0));
        assert!(mean_and_population_std(&[]).is_none());
    }
}
