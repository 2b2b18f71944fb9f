//! Masked average pooling and the canonical PANet scoring (evaluation.md, "Canonical PANet
//! scoring"), written once and used by `host eval`, `edge eval` and the live runtime.
//!
//! Pooling at image resolution over bilinearly upsampled features equals pooling at feature
//! resolution with the transposed bilinear weights, exactly (both are linear in the features):
//! `sum_X up(F)(X) M(X) = sum_x F(x) W(x)` with `W = Uy^T M Ux`. The edge uses the cheap form;
//! a unit test checks it against the literal one.

use crate::error::{EdgeError, Result};
use crate::preprocess::{bilinear_row, linear_taps, resize_bilinear, LinearTap, Placement};
use crate::tensor::{FeatureMap, Mask};
use serde::{Deserialize, Serialize};

/// DPNet's support memory of one target: its downsampled support features and the mask
/// fraction of each cell (computed and used by the DPNet module, whose doc explains it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupportMemory {
    pub channels: usize,
    /// Number of support locations `n` (`K * MEMORY_GRID^2`).
    pub locations: usize,
    /// `[C, n]` row-major.
    pub features: Vec<f32>,
    /// `[n]`: the fraction of each location's cell inside the support mask.
    pub mask: Vec<f32>,
}

/// A 1-way head's foreground margins `fg - bg` per location of its logits `[2, h, w]` (the
/// N-way rule of the module doc; SG-One and DPNet use it too).
pub fn foreground_margins(logits: &FeatureMap) -> impl Iterator<Item = f32> + '_ {
    let (bg, fg) = logits.data.split_at(logits.height * logits.width);
    fg.iter().zip(bg).map(|(f, b)| f - b)
}

/// Denominator epsilon of masked average pooling (PANet, SMCP).
pub const MAP_EPS: f32 = 1e-5;
/// Cosine-similarity epsilon (PyTorch default).
pub const COSINE_EPS: f32 = 1e-8;
/// PANet's cosine scale (`calDist(..., scaler=20)`).
pub const PANET_SCALE: f32 = 20.0;

/// Pooling weights of a binary mask given at input resolution, mapped onto a feature grid of
/// `fh` x `fw` by the transposed half-pixel bilinear upsampling. Returns the weights (row-major
/// `fh * fw`) and the mask's pixel count.
pub fn pooling_weights(mask: &Mask, fh: usize, fw: usize) -> (Vec<f64>, f64) {
    let ty = linear_taps(fh, mask.height);
    let tx = linear_taps(fw, mask.width);
    // Column pass: per input row, spread the mask onto the fw feature columns.
    let mut rows = vec![0.0f64; mask.height * fw];
    let mut total = 0.0f64;
    for y in 0..mask.height {
        let src = &mask.data[y * mask.width..(y + 1) * mask.width];
        let dst = &mut rows[y * fw..(y + 1) * fw];
        for (x, t) in tx.iter().enumerate() {
            if src[x] != 0 {
                total += 1.0;
                dst[t.i0] += 1.0 - t.w1 as f64;
                dst[t.i1] += t.w1 as f64;
            }
        }
    }
    // Row pass: spread input rows onto the fh feature rows.
    let mut weights = vec![0.0f64; fh * fw];
    for (y, t) in ty.iter().enumerate() {
        let src = &rows[y * fw..(y + 1) * fw];
        let w0 = 1.0 - t.w1 as f64;
        let w1 = t.w1 as f64;
        for x in 0..fw {
            weights[t.i0 * fw + x] += w0 * src[x];
            weights[t.i1 * fw + x] += w1 * src[x];
        }
    }
    (weights, total)
}

/// Masked average pooling (methods.md §2.1) of `features` under a binary `mask` given at the
/// model's input resolution: `sum up(F) M / (sum M + eps)`, computed exactly at feature resolution.
pub fn masked_average_pool(features: &FeatureMap, mask: &Mask) -> Vec<f32> {
    let (weights, total) = pooling_weights(mask, features.height, features.width);
    weighted_average_pool(features, &weights, total + MAP_EPS as f64)
}

/// `sum_xy F(x, y) w(x, y) / denom` per channel, for pooling weights `w` on the feature grid
/// (row-major, as [`pooling_weights`] gives them).
pub fn weighted_average_pool(features: &FeatureMap, weights: &[f64], denom: f64) -> Vec<f32> {
    (0..features.channels)
        .map(|c| {
            let s: f64 = features
                .plane(c)
                .iter()
                .zip(weights)
                .map(|(&f, &w)| f as f64 * w)
                .sum();
            (s / denom) as f32
        })
        .collect()
}

/// The literal definition (upsample features to the mask's size, then pool); for tests.
pub fn masked_average_pool_literal(features: &FeatureMap, mask: &Mask) -> Vec<f32> {
    let up = resize_bilinear(features, mask.height, mask.width);
    let total = mask.count_nonzero() as f64 + MAP_EPS as f64;
    (0..up.channels)
        .map(|c| {
            let s: f64 = up
                .plane(c)
                .iter()
                .zip(&mask.data)
                .filter(|(_, &m)| m != 0)
                .map(|(&f, _)| f as f64)
                .sum();
            (s / total) as f32
        })
        .collect()
}

/// One support shot: its features and its binary foreground and background masks at the
/// model's input resolution.
#[derive(Debug, Clone)]
pub struct SupportShot {
    pub features: FeatureMap,
    pub foreground: Mask,
    pub background: Mask,
}

impl SupportShot {
    /// A 1-way shot: background is everything that is not foreground.
    pub fn from_foreground(features: FeatureMap, foreground: Mask) -> Self {
        let background = Mask {
            height: foreground.height,
            width: foreground.width,
            data: foreground.data.iter().map(|&v| (v == 0) as u8).collect(),
        };
        SupportShot {
            features,
            foreground: foreground.binarized(),
            background,
        }
    }
}

/// One shared background prototype and one foreground prototype per way (target), in that
/// order when scoring: PANet's (and SMCP's) support state, and the vectors every method's
/// support state has ([`crate::method::SupportState`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Prototypes {
    pub background: Vec<f32>,
    pub foreground: Vec<Vec<f32>>,
}

impl Prototypes {
    /// `[background, foreground_1, ..., foreground_N]`.
    pub fn ordered(&self) -> Vec<&[f32]> {
        std::iter::once(self.background.as_slice())
            .chain(self.foreground.iter().map(|p| p.as_slice()))
            .collect()
    }

    pub fn dim(&self) -> usize {
        self.background.len()
    }
}

/// PANet prototypes (methods.md §3.2) for N ways of K shots: each way's foreground prototype is
/// the mean of its per-shot prototypes; the background prototype is the mean over all N*K shots.
/// An empty foreground mask is an error (its prototype would be a silent zero vector).
pub fn panet_prototypes(ways: &[Vec<SupportShot>]) -> Result<Prototypes> {
    if ways.is_empty() || ways.iter().any(|w| w.is_empty()) {
        return Err(EdgeError::input(
            "every target needs at least one support shot",
        ));
    }
    let dim = ways[0][0].features.channels;
    let mut pooled = Vec::with_capacity(ways.len());
    for (way, shots) in ways.iter().enumerate() {
        let mut way_pooled = Vec::with_capacity(shots.len());
        for (k, shot) in shots.iter().enumerate() {
            if shot.features.channels != dim {
                return Err(EdgeError::input(format!(
                    "support shot {k} of target {way} has {} channels, expected {dim}",
                    shot.features.channels
                )));
            }
            if shot.foreground.count_nonzero() == 0 {
                return Err(EdgeError::input(format!(
                    "support mask {k} of target {way} is empty at {}x{}: nothing to learn the object from",
                    shot.foreground.height, shot.foreground.width
                )));
            }
            way_pooled.push((
                masked_average_pool(&shot.features, &shot.foreground),
                masked_average_pool(&shot.features, &shot.background),
            ));
        }
        pooled.push(way_pooled);
    }
    let ways: Vec<Vec<PooledShot>> = pooled
        .iter()
        .map(|shots| {
            shots
                .iter()
                .map(|(foreground, background)| PooledShot {
                    foreground,
                    background,
                })
                .collect()
        })
        .collect();
    average_pooled_shots(&ways)
}

/// A support shot reduced to what PANet keeps of it: its foreground and background prototypes
/// (masked average pools of its features).
#[derive(Debug, Clone, Copy)]
pub struct PooledShot<'a> {
    pub foreground: &'a [f32],
    pub background: &'a [f32],
}

/// PANet's averaging of pooled shots (the second half of [`panet_prototypes`], also what the
/// live target store scores with): per way the mean of its shots' foreground prototypes, and
/// one background prototype, the mean over all N*K shots' (accumulated in f64, in order).
/// Ways without shots and prototypes of unequal length are errors.
pub fn average_pooled_shots(ways: &[Vec<PooledShot>]) -> Result<Prototypes> {
    if ways.is_empty() || ways.iter().any(|w| w.is_empty()) {
        return Err(EdgeError::input(
            "every target needs at least one support shot",
        ));
    }
    let dim = ways[0][0].foreground.len();
    let mut background = vec![0.0f64; dim];
    let mut foreground = Vec::with_capacity(ways.len());
    let mut n_shots = 0usize;
    for (way, shots) in ways.iter().enumerate() {
        let mut fg = vec![0.0f64; dim];
        for (k, shot) in shots.iter().enumerate() {
            if shot.foreground.len() != dim || shot.background.len() != dim {
                return Err(EdgeError::input(format!(
                    "support shot {k} of target {way} has prototypes of {} and {} values, expected {dim}",
                    shot.foreground.len(),
                    shot.background.len()
                )));
            }
            for (acc, &v) in fg.iter_mut().zip(shot.foreground) {
                *acc += v as f64;
            }
            for (acc, &v) in background.iter_mut().zip(shot.background) {
                *acc += v as f64;
            }
            n_shots += 1;
        }
        let k = shots.len() as f64;
        foreground.push(fg.into_iter().map(|v| (v / k) as f32).collect());
    }
    Ok(Prototypes {
        background: background
            .into_iter()
            .map(|v| (v / n_shots as f64) as f32)
            .collect(),
        foreground,
    })
}

/// `scale * cos(F(x), p_j)` for every feature location and prototype: a map with one channel per
/// prototype, at feature resolution.
pub fn cosine_logits(query: &FeatureMap, prototypes: &[&[f32]], scale: f32) -> Result<FeatureMap> {
    let hw = query.height * query.width;
    let c = query.channels;
    for (j, p) in prototypes.iter().enumerate() {
        if p.len() != c {
            return Err(EdgeError::input(format!(
                "prototype {j} has {} values, the features have {c} channels",
                p.len()
            )));
        }
    }
    // Squared norm of each feature vector.
    let mut fnorm2 = vec![0.0f32; hw];
    for ch in 0..c {
        for (acc, v) in fnorm2.iter_mut().zip(query.plane(ch)) {
            *acc += v * v;
        }
    }
    let mut out = FeatureMap::zeros(prototypes.len(), query.height, query.width);
    for (j, p) in prototypes.iter().enumerate() {
        let pnorm = p.iter().map(|v| v * v).sum::<f32>().sqrt();
        let dst = out.plane_mut(j);
        for (ch, &pv) in p.iter().enumerate() {
            if pv == 0.0 {
                continue;
            }
            for (acc, v) in dst.iter_mut().zip(query.plane(ch)) {
                *acc += v * pv;
            }
        }
        for (d, n2) in dst.iter_mut().zip(&fnorm2) {
            *d = scale * *d / (n2.sqrt() * pnorm).max(COSINE_EPS);
        }
    }
    Ok(out)
}

/// Step 4 of the canonical scoring: logits bilinearly upsampled (half-pixel) to `height` x
/// `width`, then argmax over channels (ties go to the lower index). Values are 0..channels-1.
/// The upsampling is fused with the argmax so no full-resolution logit tensor is materialised.
pub fn logits_to_labels(logits: &FeatureMap, height: usize, width: usize) -> Mask {
    let ty = linear_taps(logits.height, height);
    let tx = linear_taps(logits.width, width);
    labels_from_taps(logits, &ty, &tx)
}

/// The fused upsample + argmax of [`logits_to_labels`] over given taps (one per output row and
/// column).
fn labels_from_taps(logits: &FeatureMap, ty: &[LinearTap], tx: &[LinearTap]) -> Mask {
    let (height, width) = (ty.len(), tx.len());
    let mut data = vec![0u8; height * width];
    let mut best = vec![f32::NEG_INFINITY; width];
    let mut vals = vec![0f32; width];
    for (y, t) in ty.iter().enumerate() {
        best.iter_mut().for_each(|b| *b = f32::NEG_INFINITY);
        let row = &mut data[y * width..(y + 1) * width];
        for c in 0..logits.channels {
            bilinear_row(logits.plane(c), logits.width, t, tx, &mut vals);
            for ((v, b), l) in vals.iter().zip(best.iter_mut()).zip(row.iter_mut()) {
                if *v > *b {
                    *b = *v;
                    *l = c as u8;
                }
            }
        }
    }
    Mask {
        height,
        width,
        data,
    }
}

/// The canonical PANet prediction for one query: cosine x20 logits at feature resolution, then
/// upsampled to `label_size` and argmaxed. 0 = background, i = i-th target.
pub fn panet_predict(
    query: &FeatureMap,
    prototypes: &Prototypes,
    label_size: (usize, usize),
) -> Result<Mask> {
    let logits = cosine_logits(query, &prototypes.ordered(), PANET_SCALE)?;
    Ok(logits_to_labels(&logits, label_size.0, label_size.1))
}

/// [`logits_to_labels`] for logits that span a canvas an image was placed on: upsampled onto
/// the image's original grid through the content box ([`Placement::source_taps`]), then
/// argmaxed. Without padding it equals `logits_to_labels(logits, source size)` exactly.
pub fn logits_to_labels_placed(logits: &FeatureMap, placement: &Placement) -> Mask {
    let (ty, tx) = placement.source_taps(logits.height, logits.width);
    labels_from_taps(logits, &ty, &tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn placed_labels_without_padding_equal_the_canonical_upsampling() {
        use crate::preprocess::{InputGeometry, InputSize};
        let logits = FeatureMap::new(3, 5, 4, pseudo_random(60, 7)).unwrap();
        let source = InputSize::new(37, 29);
        for geometry in [
            InputGeometry::Stretch(InputSize::new(20, 16)),
            InputGeometry::Original,
            // A square canvas pads a non-square image even when it is not resized.
            InputGeometry::LongerSidePadded(37),
        ] {
            let p = geometry.place(source);
            if geometry == InputGeometry::LongerSidePadded(37) {
                assert!(p.is_padded());
                continue;
            }
            assert_eq!(
                logits_to_labels_placed(&logits, &p),
                logits_to_labels(&logits, 37, 29),
                "{geometry:?}"
            );
        }
    }

    /// A letterboxed prediction maps back exactly onto the original label grid: logits that
    /// hold a label at canvas resolution (the label scaled into the content box, the padding
    /// set to the opposite class) give back exactly the label.
    #[test]
    fn letterboxed_prediction_maps_back_exactly_onto_the_label_grid() {
        use crate::preprocess::{InputSize, Placement};
        // Labels made of 2x2 blocks, so a 2x downsampling into the content box is lossless.
        let block = |h: usize, w: usize| {
            let data = (0..h * w)
                .map(|i| {
                    let (y, x) = (i / w / 2, i % w / 2);
                    ((y * 3 + x * 5 + y * x) % 4 == 0) as u8
                })
                .collect();
            Mask::new(h, w, data).unwrap()
        };
        for (source, side, content) in [
            // Smaller than the side: kept at its size, padded (PFENet keeps small images).
            ((12, 10), 16, (12, 10)),
            // Longer side 32 -> 16, the other 16 -> 8: exactly half, padded on the right.
            ((32, 16), 16, (16, 8)),
            // Landscape: padded at the bottom.
            ((16, 32), 16, (8, 16)),
        ] {
            let label = block(source.0, source.1);
            let p = Placement::longer_side_padded(InputSize::new(source.0, source.1), side);
            assert_eq!((p.content.height, p.content.width), content);
            assert_eq!((p.canvas.height, p.canvas.width), (side, side));
            // Stride-1 logits over the canvas: one-hot of the label placed in the box, the
            // opposite class (foreground) on the padding.
            let on_canvas = p.mask_to_canvas(&label, 255);
            let mut logits = FeatureMap::zeros(2, side, side);
            for (i, &v) in on_canvas.data.iter().enumerate() {
                let c = if v == 255 { 1 } else { v as usize };
                logits.plane_mut(c)[i] = 1.0;
            }
            let back = logits_to_labels_placed(&logits, &p);
            assert_eq!((back.height, back.width), source);
            assert_eq!(back, label, "{source:?} on {side}");
        }
    }

    #[test]
    fn pooling_at_feature_resolution_equals_literal_definition() {
        let f = FeatureMap::new(3, 5, 7, pseudo_random(105, 1)).unwrap();
        let mask_data: Vec<u8> = (0..80 * 112)
            .map(|i| ((i * 7 + i / 112 * 3) % 5 == 0) as u8)
            .collect();
        let mask = Mask::new(80, 112, mask_data).unwrap();
        let fast = masked_average_pool(&f, &mask);
        let literal = masked_average_pool_literal(&f, &mask);
        for (a, b) in fast.iter().zip(&literal) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn empty_support_mask_is_an_error() {
        let f = FeatureMap::new(2, 2, 2, vec![1.0; 8]).unwrap();
        let shot = SupportShot::from_foreground(f, Mask::new(4, 4, vec![0; 16]).unwrap());
        let err = panet_prototypes(&[vec![shot]]).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn cosine_logits_are_scaled_cosines() {
        let f = FeatureMap::new(2, 1, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let p: Vec<f32> = vec![1.0, 0.0];
        let l = cosine_logits(&f, &[&p], 20.0).unwrap();
        assert!((l.data[0] - 20.0).abs() < 1e-5);
        assert!(l.data[1].abs() < 1e-5);
    }

    #[test]
    fn fused_upsample_argmax_matches_two_step() {
        let logits = FeatureMap::new(3, 4, 5, pseudo_random(60, 9)).unwrap();
        let labels = logits_to_labels(&logits, 17, 23);
        let up = resize_bilinear(&logits, 17, 23);
        for i in 0..17 * 23 {
            let mut best = 0;
            for c in 1..3 {
                if up.data[c * 17 * 23 + i] > up.data[best * 17 * 23 + i] {
                    best = c;
                }
            }
            assert_eq!(labels.data[i] as usize, best);
        }
    }

    #[test]
    fn prototypes_average_shots_and_share_background() {
        let f1 = FeatureMap::new(1, 2, 2, vec![1.0, 1.0, 3.0, 3.0]).unwrap();
        let f2 = FeatureMap::new(1, 2, 2, vec![2.0, 2.0, 5.0, 5.0]).unwrap();
        let m = Mask::new(2, 2, vec![1, 1, 0, 0]).unwrap();
        let p = panet_prototypes(&[vec![
            SupportShot::from_foreground(f1, m.clone()),
            SupportShot::from_foreground(f2, m),
        ]])
        .unwrap();
        assert!((p.foreground[0][0] - 1.5).abs() < 1e-4);
        assert!((p.background[0] - 4.0).abs() < 1e-4);
    }

    /// Two ways of pooled shots: way means and the all-shot background mean, exactly as the
    /// f64 accumulation gives them; a shot of another length is an error, not a truncated zip.
    #[test]
    fn pooled_shots_average_per_way_and_background_over_all_shots() {
        let shot = |foreground: &'static [f32], background: &'static [f32]| PooledShot {
            foreground,
            background,
        };
        let p = average_pooled_shots(&[
            vec![
                shot(&[1.0, 2.0], &[0.0, 4.0]),
                shot(&[3.0, 4.0], &[2.0, 0.0]),
            ],
            vec![shot(&[5.0, 5.0], &[1.0, 2.0])],
        ])
        .unwrap();
        assert_eq!(p.foreground, vec![vec![2.0, 3.0], vec![5.0, 5.0]]);
        assert_eq!(p.background, vec![1.0, 2.0]);
        let e = average_pooled_shots(&[
            vec![shot(&[1.0, 2.0], &[0.0, 4.0])],
            vec![shot(&[1.0], &[1.0])],
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("target 1") && e.contains("expected 2"), "{e}");
        assert!(average_pooled_shots(&[vec![]]).is_err());
    }
}
