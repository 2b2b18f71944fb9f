//! Temporal memory for video: the frames just segmented help segment the next one.
//!
//! Each frame is first segmented against the support **and** the remembered recent frames,
//! which enter the method as extra support shots (so every method uses its own K-shot rule:
//! PANet and SMCP average the shots' prototypes, SG-One its guidance vectors, DPNet also keeps
//! their memories). A remembered frame is the query's features with the model's own confident
//! prediction as its mask: pixels whose foreground probability (the sigmoid of the head's
//! foreground margin, upsampled to the input) is above [`TemporalOptions::confidence`] are its
//! foreground, those below `1 - confidence` its background, and the uncertain band between is
//! left out of both. The support itself is never forgotten; the memory holds at most
//! [`TemporalOptions::window`] frames, the oldest leaving first.
//!
//! Optionally ([`TemporalOptions::reach`]), a location prior: cells far from the previous
//! frame's foreground (farther than `reach` times the square root of its cell count) cannot be
//! foreground, so a look-alike elsewhere in the frame is not picked up.
//!
//! Guards against drift: when the prediction made with the memory has no confident foreground,
//! or its foreground area jumps against the recent frames' median by more than
//! [`TemporalOptions::max_area_change`] (either way), the frame is segmented again with the
//! support alone and the memory is emptied ([`TemporalEvent::Fallback`]). A frame without
//! confident foreground is not remembered ([`TemporalEvent::Uncertain`]).
//!
//! Nothing here sees ground truth: only the support's mask (frame 0) and the model's outputs.

use crate::error::{EdgeError, Result};
use crate::method::SupportState;
use crate::model::FeatureEncoder;
use crate::preprocess::{resize_bilinear, InputSize};
use crate::prototype::{foreground_margins, SupportShot};
use crate::tensor::{FeatureMap, Mask};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The settings of the temporal memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TemporalOptions {
    /// Recent frames kept as extra support shots (0: none, the location prior alone).
    pub window: usize,
    /// Foreground probability above which a pixel of a remembered frame is its foreground
    /// (below `1 - confidence`: its background), in (0.5, 1).
    pub confidence: f32,
    /// Largest accepted ratio between a prediction's foreground area and the median of the
    /// remembered frames' (either way), above 1.
    pub max_area_change: f32,
    /// Location prior: feature cells farther from the previous frame's foreground than this
    /// many times the square root of its cell count (at least 2 cells; Chebyshev distance)
    /// cannot be foreground. 0 turns the prior off.
    #[serde(default)]
    pub reach: f32,
}

impl Default for TemporalOptions {
    fn default() -> Self {
        // Chosen on the held-out davis2016-train sequences boat, hike and rhino with the shipped
        // default (docs/results.md, "Temporal memory"): remembered frames as extra shots lowered
        // J there (window 1, 3, 6), the location prior alone raised it.
        TemporalOptions {
            window: 0,
            confidence: 0.8,
            max_area_change: 2.0,
            reach: 0.5,
        }
    }
}

impl TemporalOptions {
    /// Refuses settings that cannot work, naming the flag.
    pub fn validate(&self) -> Result<()> {
        if self.window == 0 && self.reach == 0.0 {
            return Err(EdgeError::input(
                "--temporal-window 0 with --temporal-reach 0 leaves the memory nothing to do: \
                 remember at least one frame or use the location prior",
            ));
        }
        if !(self.confidence > 0.5 && self.confidence < 1.0) {
            return Err(EdgeError::input(format!(
                "--temporal-confidence must be in (0.5, 1), got {}",
                self.confidence
            )));
        }
        check_reach(self.reach).map_err(|e| EdgeError::input(format!("--temporal-reach: {e}")))?;
        if !(self.max_area_change > 1.0 && self.max_area_change.is_finite()) {
            return Err(EdgeError::input(format!(
                "--temporal-max-area-change must be a finite ratio above 1, got {}",
                self.max_area_change
            )));
        }
        Ok(())
    }
}

/// What the memory did with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TemporalEvent {
    /// Segmented with the support and the memory (or the support alone while the memory is
    /// empty); the frame is remembered.
    Remembered { memory: usize },
    /// No pixel was confidently foreground: segmented, not remembered (the object may be
    /// occluded or gone).
    Uncertain { memory: usize },
    /// The prediction with the memory failed a drift guard (`area_ratio` against the recent
    /// median, 0 when no foreground was confident): segmented again with the support alone,
    /// and the memory emptied.
    Fallback { area_ratio: f32 },
}

/// Counts of [`TemporalEvent`]s, as reports carry them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TemporalCounts {
    /// Frames whose prediction had confident foreground (kept when the window is above 0).
    pub remembered: usize,
    pub uncertain: usize,
    pub fallbacks: usize,
}

impl TemporalCounts {
    pub fn add(&mut self, event: &TemporalEvent) {
        match event {
            TemporalEvent::Remembered { .. } => self.remembered += 1,
            TemporalEvent::Uncertain { .. } => self.uncertain += 1,
            TemporalEvent::Fallback { .. } => self.fallbacks += 1,
        }
    }

    /// Adds another memory's counts (several targets, sequences).
    pub fn merge(&mut self, other: TemporalCounts) {
        self.remembered += other.remembered;
        self.uncertain += other.uncertain;
        self.fallbacks += other.fallbacks;
    }
}

/// A location-prior reach must be a finite factor of at least 0.
fn check_reach(reach: f32) -> Result<()> {
    if reach >= 0.0 && reach.is_finite() {
        Ok(())
    } else {
        Err(EdgeError::input(format!(
            "the temporal reach must be a finite factor of at least 0, got {reach}"
        )))
    }
}

/// The location prior on channel `channel` of `logits` `[N + 1, h, w]` (0 = background):
/// every cell farther (Chebyshev) from the `previous` foreground cells than `reach` times the
/// square root of their count (at least 2 cells) gets the channel's logit set just below the
/// background's, so it cannot win the argmax. Nothing happens for `reach` 0, an empty
/// `previous`, or a grid of another size.
pub fn gate_far_cells(logits: &mut FeatureMap, channel: usize, previous: &[bool], reach: f32) {
    let (h, w) = (logits.height, logits.width);
    let n = previous.iter().filter(|&&c| c).count();
    if reach <= 0.0
        || n == 0
        || previous.len() != h * w
        || channel == 0
        || channel >= logits.channels
    {
        return;
    }
    let r = ((reach * (n as f32).sqrt()).ceil() as usize).max(2);
    // Chebyshev dilation by r: along rows, then along columns.
    let mut rows = vec![false; h * w];
    for y in 0..h {
        let row = &previous[y * w..(y + 1) * w];
        let near = &mut rows[y * w..(y + 1) * w];
        let mut last: Option<usize> = None;
        for x in 0..w {
            if row[x] {
                last = Some(x);
            }
            near[x] = last.is_some_and(|l| x - l <= r);
        }
        let mut next: Option<usize> = None;
        for x in (0..w).rev() {
            if row[x] {
                next = Some(x);
            }
            near[x] |= next.is_some_and(|n| n - x <= r);
        }
    }
    let plane = h * w;
    for y in 0..h {
        let (lo, hi) = (y.saturating_sub(r), (y + r).min(h - 1));
        for x in 0..w {
            if !(lo..=hi).any(|yy| rows[yy * w + x]) {
                let i = y * w + x;
                let bg = logits.data[i];
                let v = &mut logits.data[channel * plane + i];
                *v = v.min(bg - 1e-3);
            }
        }
    }
}

/// The location prior alone over N-way logits, one previous foreground per target: what a live
/// run keeps from frame to frame (several targets, no ground truth, no extra head pass).
#[derive(Debug, Clone)]
pub struct LocationPrior {
    reach: f32,
    /// Per target (channel 1..), its foreground cells in the previous frame.
    previous: Vec<Vec<bool>>,
}

impl LocationPrior {
    /// `reach` as in [`TemporalOptions::reach`]; 0 turns it off.
    pub fn new(reach: f32) -> Result<Self> {
        check_reach(reach)?;
        Ok(LocationPrior {
            reach,
            previous: Vec::new(),
        })
    }

    /// Forgets the previous frame (targets changed).
    pub fn reset(&mut self) {
        self.previous.clear();
    }

    /// Gates each target's channel by where it was in the previous frame, then remembers where
    /// each target is now (cells it wins the argmax of).
    pub fn apply(&mut self, logits: &mut FeatureMap) {
        self.gate(logits);
        self.observe(logits);
    }

    /// Gates each target's channel by where it was in the previous frame.
    fn gate(&self, logits: &mut FeatureMap) {
        if self.previous.len() == logits.channels.saturating_sub(1) {
            for (t, previous) in self.previous.iter().enumerate() {
                gate_far_cells(logits, t + 1, previous, self.reach);
            }
        }
    }

    /// Remembers where each target is in `logits` (nothing when the prior is off).
    fn observe(&mut self, logits: &FeatureMap) {
        if self.reach <= 0.0 {
            return;
        }
        let targets = logits.channels.saturating_sub(1);
        let plane = logits.height * logits.width;
        let mut now = vec![vec![false; plane]; targets];
        for (i, &background) in logits.data[..plane].iter().enumerate() {
            let mut best = (0, background);
            for c in 1..logits.channels {
                let v = logits.data[c * plane + i];
                if v > best.1 {
                    best = (c, v);
                }
            }
            if best.0 > 0 {
                now[best.0 - 1][i] = true;
            }
        }
        self.previous = now;
    }
}

/// One remembered frame.
#[derive(Debug, Clone)]
struct MemoryFrame {
    shot: SupportShot,
    /// Fraction of the input predicted foreground.
    area: f64,
}

/// The memory of one target (several targets keep one each).
#[derive(Debug, Clone)]
pub struct TemporalMemory {
    options: TemporalOptions,
    frames: VecDeque<MemoryFrame>,
    prior: LocationPrior,
    counts: TemporalCounts,
}

/// One frame's head output and what the memory did.
#[derive(Debug, Clone)]
pub struct TemporalStep {
    /// The method's logits `[2, h, w]` at feature resolution.
    pub logits: FeatureMap,
    pub event: TemporalEvent,
}

impl TemporalMemory {
    pub fn new(options: TemporalOptions) -> Result<Self> {
        options.validate()?;
        Ok(TemporalMemory {
            options,
            frames: VecDeque::with_capacity(options.window + 1),
            prior: LocationPrior::new(options.reach)?,
            counts: TemporalCounts::default(),
        })
    }

    pub fn options(&self) -> TemporalOptions {
        self.options
    }

    /// Frames remembered now.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Events so far.
    pub fn counts(&self) -> TemporalCounts {
        self.counts
    }

    /// Forgets the recent frames (the support stays with the caller).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.prior.reset();
    }

    /// Segments one query frame of a 1-way target: `support` are the target's own shots,
    /// `support_state` the method's state of those shots alone (what the frame falls back to),
    /// `query` the frame's features encoded at `input`. Then remembers the frame if its
    /// prediction is confident.
    pub fn step(
        &mut self,
        model: &mut dyn FeatureEncoder,
        support: &[SupportShot],
        support_state: &SupportState,
        query: &FeatureMap,
        input: InputSize,
    ) -> Result<TemporalStep> {
        // The logits, the fallback if a guard tripped, and the confident masks when already
        // computed for the guard on these very logits.
        let (logits, fallback, confident) = if self.frames.is_empty() {
            let mut logits = model.head_logits(support_state, query, input)?;
            self.prior.gate(&mut logits);
            (logits, None, None)
        } else {
            let shots: Vec<SupportShot> = support
                .iter()
                .cloned()
                .chain(self.frames.iter().map(|f| f.shot.clone()))
                .collect();
            let state = model.prototypes(&[shots])?;
            let mut logits = model.head_logits(&state, query, input)?;
            self.prior.gate(&mut logits);
            let confident = self.confident_masks(&logits, input);
            match self.drift(&confident) {
                None => (logits, None, Some(confident)),
                Some(area_ratio) => {
                    // The prior is reset with the memory, so the support-alone pass is ungated.
                    self.clear();
                    let logits = model.head_logits(support_state, query, input)?;
                    (logits, Some(TemporalEvent::Fallback { area_ratio }), None)
                }
            }
        };
        self.prior.observe(&logits);
        let confident = confident.unwrap_or_else(|| self.confident_masks(&logits, input));
        // After a fallback the support-alone prediction may still be remembered.
        let remembered = self.remember(query, confident);
        let memory = self.frames.len();
        let event = fallback.unwrap_or(if remembered {
            TemporalEvent::Remembered { memory }
        } else {
            TemporalEvent::Uncertain { memory }
        });
        self.counts.add(&event);
        Ok(TemporalStep { logits, event })
    }

    /// The area ratio that trips a guard, if one does: no confident foreground, or an area
    /// off the recent median by more than the allowed change.
    fn drift(&self, confident: &Confident) -> Option<f32> {
        if confident.foreground.count_nonzero() == 0 {
            return Some(0.0);
        }
        let mut recent: Vec<f64> = self.frames.iter().map(|f| f.area).collect();
        recent.sort_by(|a, b| a.total_cmp(b));
        let median = recent[recent.len() / 2];
        let ratio = if median > 0.0 {
            confident.area / median
        } else {
            f64::INFINITY
        };
        let limit = self.options.max_area_change as f64;
        (ratio > limit || ratio < 1.0 / limit).then_some(ratio as f32)
    }

    /// Remembers the frame when its prediction has confident foreground; says whether it had.
    /// With a window of 0 nothing is kept.
    fn remember(&mut self, query: &FeatureMap, confident: Confident) -> bool {
        if confident.foreground.count_nonzero() == 0 {
            return false;
        }
        if self.options.window > 0 {
            if self.frames.len() == self.options.window {
                self.frames.pop_front();
            }
            self.frames.push_back(MemoryFrame {
                shot: SupportShot {
                    features: query.clone(),
                    foreground: confident.foreground,
                    background: confident.background,
                },
                area: confident.area,
            });
        }
        true
    }

    /// The confident foreground and background masks of a 1-way prediction at the input size,
    /// and the fraction of the input predicted foreground (margin above 0).
    fn confident_masks(&self, logits: &FeatureMap, input: InputSize) -> Confident {
        let margins = FeatureMap {
            channels: 1,
            height: logits.height,
            width: logits.width,
            data: foreground_margins(logits).collect(),
        };
        let up = resize_bilinear(&margins, input.height, input.width);
        // sigmoid(m) > c  <=>  m > ln(c / (1 - c)).
        let c = self.options.confidence;
        let threshold = (c / (1.0 - c)).ln();
        let fg: Vec<u8> = up.data.iter().map(|&m| (m > threshold) as u8).collect();
        let bg: Vec<u8> = up.data.iter().map(|&m| (m < -threshold) as u8).collect();
        let area =
            up.data.iter().filter(|&&m| m > 0.0).count() as f64 / up.data.len().max(1) as f64;
        let mask = |data| Mask {
            height: input.height,
            width: input.width,
            data,
        };
        Confident {
            foreground: mask(fg),
            background: mask(bg),
            area,
        }
    }
}

/// A 1-way prediction's confident pixels at the input size and its foreground fraction.
struct Confident {
    foreground: Mask,
    background: Mask,
    area: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prototype::{cosine_logits, panet_prototypes, PANET_SCALE};

    /// PANet's default scoring over the features themselves.
    struct Panet;
    impl FeatureEncoder for Panet {
        fn encode_batch(&mut self, _: &[Vec<f32>], _: InputSize) -> Result<Vec<FeatureMap>> {
            unreachable!("the tests pass features")
        }
    }

    /// 2 channels on a 4x4 grid: "object" cells are (1, 0) at `fg` cells, background (0, 1).
    fn frame(fg: &[(usize, usize)], object: [f32; 2]) -> FeatureMap {
        let mut f = FeatureMap::zeros(2, 4, 4);
        for y in 0..4 {
            for x in 0..4 {
                let v = if fg.contains(&(y, x)) {
                    object
                } else {
                    [0.0, 1.0]
                };
                f.data[y * 4 + x] = v[0];
                f.data[16 + y * 4 + x] = v[1];
            }
        }
        f
    }

    fn mask_of(fg: &[(usize, usize)]) -> Mask {
        let mut m = Mask::new(4, 4, vec![0; 16]).unwrap();
        for &(y, x) in fg {
            m.data[y * 4 + x] = 1;
        }
        m
    }

    /// A support shot of the object (1, 0) at `cells` and its PANet state.
    fn supported(cells: &[(usize, usize)]) -> (Vec<SupportShot>, SupportState) {
        let support = vec![SupportShot::from_foreground(
            frame(cells, [1.0, 0.0]),
            mask_of(cells),
        )];
        let state = SupportState::Panet(panet_prototypes(std::slice::from_ref(&support)).unwrap());
        (support, state)
    }

    fn memory_of(window: usize, reach: f32) -> TemporalMemory {
        TemporalMemory::new(TemporalOptions {
            window,
            reach,
            ..TemporalOptions::default()
        })
        .unwrap()
    }

    /// The 2x2 object in the middle of the 4x4 grid.
    const CENTRE: [(usize, usize); 4] = [(1, 1), (1, 2), (2, 1), (2, 2)];

    #[test]
    fn options_are_checked() {
        for bad in [
            TemporalOptions {
                window: 0,
                reach: 0.0,
                ..Default::default()
            },
            TemporalOptions {
                reach: -1.0,
                ..Default::default()
            },
            TemporalOptions {
                confidence: 0.5,
                ..Default::default()
            },
            TemporalOptions {
                max_area_change: 1.0,
                ..Default::default()
            },
        ] {
            assert!(TemporalMemory::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn confident_frames_are_remembered_up_to_the_window() {
        let input = InputSize::new(4, 4);
        let cells = CENTRE;
        let (support, state) = supported(&cells);
        let mut memory = memory_of(2, 0.0);
        for k in 1..=3 {
            let step = memory
                .step(
                    &mut Panet,
                    &support,
                    &state,
                    &frame(&cells, [1.0, 0.0]),
                    input,
                )
                .unwrap();
            assert_eq!(
                step.event,
                TemporalEvent::Remembered {
                    memory: k.min(2) as usize
                }
            );
        }
        assert_eq!(memory.len(), 2);
        assert_eq!(memory.counts().remembered, 3);
    }

    #[test]
    fn the_memory_follows_a_changing_object_the_support_alone_loses() {
        // The object's features turn from (1, 0), the support's, to 60 degrees, 3.75 degrees
        // a frame, against a background at 90 degrees: the support's prototype alone then
        // finds the object closer to the background (60 vs 30 degrees), while the memory,
        // fed with each frame's confident cells, keeps it.
        let input = InputSize::new(4, 4);
        let cells = CENTRE;
        let (support, state) = supported(&cells);
        let mut memory = memory_of(3, 0.0);
        let mut last = None;
        for k in 1..=16 {
            let angle = (k as f32 * 3.75).to_radians();
            let q = frame(&cells, [angle.cos(), angle.sin()]);
            let step = memory
                .step(&mut Panet, &support, &state, &q, input)
                .unwrap();
            assert!(
                matches!(step.event, TemporalEvent::Remembered { .. }),
                "frame {k}: {:?}",
                step.event
            );
            last = Some((q, step));
        }
        let (q, step) = last.unwrap();
        let with_memory = crate::prototype::logits_to_labels(&step.logits, 4, 4);
        assert_eq!(with_memory, mask_of(&cells));
        let alone = cosine_logits(&q, &state.prototypes().ordered(), PANET_SCALE).unwrap();
        let alone = crate::prototype::logits_to_labels(&alone, 4, 4);
        assert_eq!(alone.count_nonzero(), 0, "{alone:?}");
    }

    #[test]
    fn an_area_jump_falls_back_to_the_support_and_empties_the_memory() {
        let input = InputSize::new(4, 4);
        let cells = CENTRE;
        let (support, state) = supported(&cells);
        let mut memory = memory_of(3, 0.0);
        memory
            .step(
                &mut Panet,
                &support,
                &state,
                &frame(&cells, [1.0, 0.0]),
                input,
            )
            .unwrap();
        assert_eq!(memory.len(), 1);
        // Next frame: every cell looks like the object (area 4 -> 16, ratio 4 > 2).
        let all: Vec<(usize, usize)> = (0..4).flat_map(|y| (0..4).map(move |x| (y, x))).collect();
        let step = memory
            .step(
                &mut Panet,
                &support,
                &state,
                &frame(&all, [1.0, 0.0]),
                input,
            )
            .unwrap();
        assert!(
            matches!(step.event, TemporalEvent::Fallback { area_ratio } if area_ratio > 2.0),
            "{:?}",
            step.event
        );
        assert_eq!(memory.counts().fallbacks, 1);
    }

    #[test]
    fn a_frame_without_confident_foreground_is_not_remembered() {
        let input = InputSize::new(4, 4);
        let cells = CENTRE;
        let (support, state) = supported(&cells);
        let mut memory = TemporalMemory::new(TemporalOptions::default()).unwrap();
        // The object is gone: every cell is background.
        let step = memory
            .step(&mut Panet, &support, &state, &frame(&[], [1.0, 0.0]), input)
            .unwrap();
        assert_eq!(step.event, TemporalEvent::Uncertain { memory: 0 });
        assert!(memory.is_empty());
    }

    #[test]
    fn the_location_prior_drops_a_look_alike_far_from_the_object() {
        let input = InputSize::new(4, 4);
        let cells = [(0, 0)];
        let (support, state) = supported(&cells);
        let options = TemporalOptions {
            window: 0,
            reach: 0.5,
            ..TemporalOptions::default()
        };
        let mut memory = TemporalMemory::new(options).unwrap();
        let step = memory
            .step(
                &mut Panet,
                &support,
                &state,
                &frame(&cells, [1.0, 0.0]),
                input,
            )
            .unwrap();
        assert_eq!(
            crate::prototype::logits_to_labels(&step.logits, 4, 4),
            mask_of(&cells)
        );
        // The object stays at (0, 0); a look-alike appears at (3, 3), 3 cells away (reach:
        // at least 2 cells).
        let both = [(0, 0), (3, 3)];
        let step = memory
            .step(
                &mut Panet,
                &support,
                &state,
                &frame(&both, [1.0, 0.0]),
                input,
            )
            .unwrap();
        assert_eq!(
            crate::prototype::logits_to_labels(&step.logits, 4, 4),
            mask_of(&cells)
        );
        // Without the prior both are foreground.
        let mut plain = memory_of(1, 0.0);
        let step = plain
            .step(
                &mut Panet,
                &support,
                &state,
                &frame(&both, [1.0, 0.0]),
                input,
            )
            .unwrap();
        assert_eq!(
            crate::prototype::logits_to_labels(&step.logits, 4, 4),
            mask_of(&both)
        );
    }

    #[test]
    fn the_live_prior_keeps_each_target_near_itself() {
        // Two targets on a 6x6 grid: target 1 wins (0, 0), target 2 wins (5, 5); next frame
        // both also win a far cell (target 1 at (5, 0), target 2 at (0, 5)), which the prior
        // hands to the background.
        let logits = |cells: &[(usize, usize, usize)]| {
            let mut l = FeatureMap::zeros(3, 6, 6);
            for &(c, y, x) in cells {
                l.data[c * 36 + y * 6 + x] = 5.0;
            }
            l
        };
        let mut prior = LocationPrior::new(0.5).unwrap();
        let mut first = logits(&[(1, 0, 0), (2, 5, 5)]);
        prior.apply(&mut first);
        let labels = |l: &FeatureMap| crate::prototype::logits_to_labels(l, 6, 6).data;
        let mut second = logits(&[(1, 0, 0), (2, 5, 5), (1, 5, 0), (2, 0, 5)]);
        prior.apply(&mut second);
        let got = labels(&second);
        assert_eq!((got[0], got[35], got[30], got[5]), (1, 2, 0, 0), "{got:?}");
        // After a reset (targets changed) nothing is gated.
        prior.reset();
        let mut third = logits(&[(1, 0, 0), (2, 5, 5), (1, 5, 0), (2, 0, 5)]);
        prior.apply(&mut third);
        let got = labels(&third);
        assert_eq!((got[30], got[5]), (1, 2));
        assert!(LocationPrior::new(-1.0).is_err());
    }
}
