//! From logits to what `edge run` reports per frame: the label map at frame resolution and,
//! per target, its area, bounding box and score.

use fss_core::preprocess::{bilinear_row, linear_taps};
use fss_core::tensor::{FeatureMap, Mask};
use serde::Serialize;

/// One target in one frame (the JSON Lines event schema, see docs/live.md).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetObservation {
    pub name: String,
    /// Pixels labelled as this target, at frame resolution.
    pub area_px: u64,
    /// `area_px` over the frame's pixel count.
    pub area_fraction: f64,
    /// `[x, y, w, h]` in frame pixels of the labelled pixels; `None` when there are none.
    pub bbox: Option<[u32; 4]>,
    /// Mean foreground probability (softmax over background and all targets of the upsampled
    /// logits) over the target's pixels; 0 when it has none.
    pub score: f64,
}

/// Labels (argmax of the bilinearly upsampled logits, as
/// [`logits_to_labels`](fss_core::prototype::logits_to_labels)) and per-label observations.
/// `names[i]` is label `i + 1`.
pub fn observe(
    logits: &FeatureMap,
    height: usize,
    width: usize,
    names: &[String],
) -> (Mask, Vec<TargetObservation>) {
    let ty = linear_taps(logits.height, height);
    let tx = linear_taps(logits.width, width);
    let fw = logits.width;
    let c = logits.channels;
    let mut data = vec![0u8; height * width];
    let mut vals = vec![0f32; c * width];
    let n = names.len().min(c.saturating_sub(1));
    let mut area = vec![0u64; n + 1];
    let mut prob_sum = vec![0f64; n + 1];
    let mut bbox = vec![[u32::MAX, u32::MAX, 0u32, 0u32]; n + 1];
    for (y, t) in ty.iter().enumerate() {
        for ch in 0..c {
            let dst = &mut vals[ch * width..(ch + 1) * width];
            bilinear_row(logits.plane(ch), fw, t, &tx, dst);
        }
        let row = &mut data[y * width..(y + 1) * width];
        for (x, out) in row.iter_mut().enumerate() {
            let mut best = 0usize;
            let mut best_v = vals[x];
            for ch in 1..c {
                let v = vals[ch * width + x];
                if v > best_v {
                    best_v = v;
                    best = ch;
                }
            }
            *out = best as u8;
            if best == 0 || best > n {
                continue;
            }
            let denom: f32 = (0..c).map(|ch| (vals[ch * width + x] - best_v).exp()).sum();
            area[best] += 1;
            prob_sum[best] += (1.0 / denom) as f64;
            let b = &mut bbox[best];
            let (xu, yu) = (x as u32, y as u32);
            b[0] = b[0].min(xu);
            b[1] = b[1].min(yu);
            b[2] = b[2].max(xu);
            b[3] = b[3].max(yu);
        }
    }
    let total = (height * width).max(1) as f64;
    let obs = (1..=n)
        .map(|l| TargetObservation {
            name: names[l - 1].clone(),
            area_px: area[l],
            area_fraction: area[l] as f64 / total,
            bbox: (area[l] > 0).then(|| {
                let b = bbox[l];
                [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1]
            }),
            score: if area[l] > 0 {
                prob_sum[l] / area[l] as f64
            } else {
                0.0
            },
        })
        .collect();
    (
        Mask {
            height,
            width,
            data,
        },
        obs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_core::prototype::logits_to_labels;

    #[test]
    fn labels_match_the_canonical_scoring_and_stats_are_consistent() {
        let mut s = 7u32;
        let data: Vec<f32> = (0..3 * 5 * 6)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 8.0
            })
            .collect();
        let logits = FeatureMap::new(3, 5, 6, data).unwrap();
        let names = vec!["a".to_string(), "b".to_string()];
        let (labels, obs) = observe(&logits, 37, 41, &names);
        assert_eq!(labels, logits_to_labels(&logits, 37, 41));
        for (i, o) in obs.iter().enumerate() {
            let l = (i + 1) as u8;
            let count = labels.data.iter().filter(|&&v| v == l).count() as u64;
            assert_eq!(o.area_px, count);
            if count > 0 {
                let [x, y, w, h] = o.bbox.unwrap();
                for yy in 0..37 {
                    for xx in 0..41 {
                        if labels.data[yy * 41 + xx] == l {
                            assert!(xx as u32 >= x && (xx as u32) < x + w);
                            assert!(yy as u32 >= y && (yy as u32) < y + h);
                        }
                    }
                }
                // The winner of three classes has probability in (1/3, 1].
                assert!(o.score > 1.0 / 3.0 && o.score <= 1.0, "{}", o.score);
            }
        }
    }

    #[test]
    fn absent_target_has_no_box() {
        let logits =
            FeatureMap::new(2, 2, 2, vec![5.0, 5.0, 5.0, 5.0, 0.0, 0.0, 0.0, 0.0]).unwrap();
        let (labels, obs) = observe(&logits, 4, 4, &["x".to_string()]);
        assert_eq!(labels.count_nonzero(), 0);
        assert_eq!(obs[0].bbox, None);
        assert_eq!((obs[0].area_px, obs[0].score), (0, 0.0));
    }
}
