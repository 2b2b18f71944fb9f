//! SMCP's inference with fused prototype guidance (methods.md §5.4), written once over a
//! [`HeadRunner`] so that `host eval` (the head in tch) and the edge (the head graph in
//! tract) run the very same two-pass logic.
//!
//! Per target:
//! 1. first pass with the support prototype `p` (the mean of the shots' masked average pools);
//! 2. the first pass's logits upsampled (bilinear, half-pixel) to the model input and argmaxed:
//!    the pseudo-mask of the query;
//! 3. the pseudo-prototype `p'` = masked average pool of the query features under the
//!    pseudo-mask (the same exact pooling as the support's, ε = 1e-5);
//! 4. the fused prototype `(p + p') / 2`, and a second pass with it.
//!
//! Decisions where the paper and its code leave a gap:
//! * **Empty pseudo-mask.** The official code would pool nothing (`p' ≈ 0`) and silently halve
//!   the prototype. Here the first pass is the answer: there is no query evidence to fuse, and
//!   the prediction stays the support-prototype prediction (no second pass).
//! * **K shots.** The paper averages "the K support prototypes, then the result with the
//!   pseudo-prototype". This reads as `(mean_k p_k + p') / 2`, which is also the only reading
//!   that needs nothing but the cached (mean) support prototype on the edge. It reduces to the
//!   1-shot code's `(p + p') / 2`.
//! * **N targets at once** (the live runtime): SMCP is 1-way, so each target runs its own two
//!   passes. The N-way logits are `[0, m_1, ..., m_N]` with `m_i = fg_i - bg_i` (target i's
//!   foreground margin): argmax picks background where no target's foreground wins, else the
//!   target with the largest margin. For one target, softmax and argmax of `[0, fg - bg]` equal
//!   those of `[bg, fg]`.

use crate::choice::Choice;
use crate::error::{EdgeError, Result};
use crate::method::HeadRunner;
use crate::preprocess::InputSize;
use crate::prototype::{foreground_margins, logits_to_labels, masked_average_pool, Prototypes};
use crate::tensor::FeatureMap;

/// Which prototype guides the final pass (methods.md §5.5 reports all three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmcpGuidance {
    /// `(p + p') / 2` (the paper's inference).
    #[default]
    Fused,
    /// The support prototype alone: one pass.
    Support,
    /// The pseudo-prototype alone.
    Pseudo,
}

crate::choices!(SmcpGuidance {
    Fused => "fused", "`(p + p') / 2` (the paper's inference)";
    Support => "support", "The support prototype alone: one pass";
    Pseudo => "pseudo", "The pseudo-prototype alone";
});

/// The method as reports name it: `smcp` for the paper's fused inference, `smcp/support` or
/// `smcp/pseudo` for the ablations; other methods unchanged.
pub fn method_label(method: &str, guidance: SmcpGuidance) -> String {
    if method == "smcp" && guidance != SmcpGuidance::Fused {
        format!("smcp/{}", guidance.name())
    } else {
        method.to_string()
    }
}

/// The method as an evaluation report names it: [`method_label`], and `sgone/max` for SG-One's
/// K-shot union with more than one shot.
pub fn report_label(
    method: &str,
    guidance: SmcpGuidance,
    kshot: crate::sgone::SgOneKShot,
    shots: usize,
) -> String {
    if method == "sgone" && shots > 1 && kshot == crate::sgone::SgOneKShot::Max {
        return "sgone/max".into();
    }
    method_label(method, guidance)
}

/// What the two passes did for one target.
#[derive(Debug, Clone)]
pub struct TwoPass {
    /// Logits `[2, h, w]` of the final pass.
    pub logits: FeatureMap,
    /// Foreground pixels of the first pass's pseudo-mask at the model input.
    pub pseudo_pixels: usize,
    /// Whether a second pass ran (not with [`SmcpGuidance::Support`] or an empty pseudo-mask).
    pub second_pass: bool,
}

/// The fused-prototype inference for one target (module doc): `input` is the model input size
/// the pseudo-mask is taken at.
pub fn two_pass(
    head: &mut dyn HeadRunner,
    prototype: &[f32],
    query: &FeatureMap,
    input: InputSize,
    guidance: SmcpGuidance,
) -> Result<TwoPass> {
    if prototype.len() != query.channels {
        return Err(EdgeError::input(format!(
            "the SMCP prototype has {} values, the query features {} channels",
            prototype.len(),
            query.channels
        )));
    }
    let first = head.pass(query, prototype, None)?;
    check_logits(&first, query)?;
    if guidance == SmcpGuidance::Support {
        return Ok(TwoPass {
            logits: first,
            pseudo_pixels: 0,
            second_pass: false,
        });
    }
    let pseudo = logits_to_labels(&first, input.height, input.width);
    let pseudo_pixels = pseudo.count_nonzero();
    if pseudo_pixels == 0 {
        return Ok(TwoPass {
            logits: first,
            pseudo_pixels,
            second_pass: false,
        });
    }
    let pseudo_proto = masked_average_pool(query, &pseudo);
    let guide: Vec<f32> = match guidance {
        SmcpGuidance::Pseudo => pseudo_proto,
        _ => prototype
            .iter()
            .zip(&pseudo_proto)
            .map(|(a, b)| 0.5 * (a + b))
            .collect(),
    };
    let logits = head.pass(query, &guide, None)?;
    check_logits(&logits, query)?;
    Ok(TwoPass {
        logits,
        pseudo_pixels,
        second_pass: true,
    })
}

fn check_logits(logits: &FeatureMap, query: &FeatureMap) -> Result<()> {
    if logits.channels != 2 || logits.height != query.height || logits.width != query.width {
        return Err(EdgeError::input(format!(
            "the SMCP head returned logits {}x{}x{} for features {}x{}x{} (expected 2x{}x{})",
            logits.channels,
            logits.height,
            logits.width,
            query.channels,
            query.height,
            query.width,
            query.height,
            query.width
        )));
    }
    Ok(())
}

/// N-way logits `[N + 1, h, w]` for the targets of `prototypes` (their foreground prototypes;
/// SMCP has no background prototype): channel 0 is 0, channel i target i's foreground margin
/// after its two passes (module doc).
pub fn smcp_logits(
    head: &mut dyn HeadRunner,
    prototypes: &Prototypes,
    query: &FeatureMap,
    input: InputSize,
    guidance: SmcpGuidance,
) -> Result<FeatureMap> {
    let mut out = FeatureMap::zeros(prototypes.foreground.len() + 1, query.height, query.width);
    for (i, p) in prototypes.foreground.iter().enumerate() {
        let t = two_pass(head, p, query, input, guidance)?;
        for (d, m) in out
            .plane_mut(i + 1)
            .iter_mut()
            .zip(foreground_margins(&t.logits))
        {
            *d = m;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head whose foreground logit is the dot product of the features with the prototype
    /// minus a threshold, and which counts its passes.
    struct DotHead {
        threshold: f32,
        passes: Vec<Vec<f32>>,
    }

    fn dot_head(threshold: f32) -> DotHead {
        DotHead {
            threshold,
            passes: vec![],
        }
    }

    impl HeadRunner for DotHead {
        fn pass(
            &mut self,
            query: &FeatureMap,
            prototype: &[f32],
            _: Option<&crate::dpnet::SupportMemory>,
        ) -> Result<FeatureMap> {
            self.passes.push(prototype.to_vec());
            let hw = query.height * query.width;
            let mut out = FeatureMap::zeros(2, query.height, query.width);
            for x in 0..hw {
                let dot: f32 = (0..query.channels)
                    .map(|c| query.plane(c)[x] * prototype[c])
                    .sum();
                out.plane_mut(1)[x] = dot - self.threshold;
            }
            Ok(out)
        }
    }

    fn query() -> FeatureMap {
        // 2 channels on a 4x4 grid: the left half is [1, 0], the right half [0, 1].
        let mut f = FeatureMap::zeros(2, 4, 4);
        for y in 0..4 {
            for x in 0..4 {
                let c = if x < 2 { 0 } else { 1 };
                f.plane_mut(c)[y * 4 + x] = 1.0;
            }
        }
        f
    }

    #[test]
    fn fused_prototype_averages_support_and_pseudo_prototypes() {
        let mut head = dot_head(0.5);
        let q = query();
        let p = [0.9f32, 0.1];
        let t = two_pass(
            &mut head,
            &p,
            &q,
            InputSize::new(16, 16),
            SmcpGuidance::Fused,
        )
        .unwrap();
        assert!(t.second_pass);
        assert_eq!(head.passes.len(), 2);
        // First pass: the left half is foreground; its pooled features are ~[1, 0] (bilinear
        // upsampling blurs the border a little), so the fused prototype is ~[0.95, 0.05].
        let pseudo = masked_average_pool(&q, &logits_to_labels(&head_logits(&q, &p, 0.5), 16, 16));
        let fused = &head.passes[1];
        for c in 0..2 {
            assert!((fused[c] - 0.5 * (p[c] + pseudo[c])).abs() < 1e-6);
        }
        assert!(fused[0] > 0.9 && fused[1] < 0.1, "{fused:?}");
        assert_eq!(t.pseudo_pixels, 16 * 8);
    }

    fn head_logits(q: &FeatureMap, p: &[f32], threshold: f32) -> FeatureMap {
        DotHead {
            threshold,
            passes: vec![],
        }
        .pass(q, p, None)
        .unwrap()
    }

    #[test]
    fn empty_pseudo_mask_keeps_the_first_pass() {
        let mut head = dot_head(5.0);
        let q = query();
        let t = two_pass(
            &mut head,
            &[1.0, 1.0],
            &q,
            InputSize::new(8, 8),
            SmcpGuidance::Fused,
        )
        .unwrap();
        assert!(!t.second_pass);
        assert_eq!(t.pseudo_pixels, 0);
        assert_eq!(head.passes.len(), 1);
        assert_eq!(t.logits, head_logits(&q, &[1.0, 1.0], 5.0));
    }

    #[test]
    fn support_guidance_is_one_pass_and_pseudo_guidance_uses_the_query_alone() {
        let q = query();
        let mut head = dot_head(0.5);
        two_pass(
            &mut head,
            &[0.9, 0.1],
            &q,
            InputSize::new(8, 8),
            SmcpGuidance::Support,
        )
        .unwrap();
        assert_eq!(head.passes.len(), 1);
        let mut head = dot_head(0.5);
        two_pass(
            &mut head,
            &[0.9, 0.1],
            &q,
            InputSize::new(8, 8),
            SmcpGuidance::Pseudo,
        )
        .unwrap();
        let pseudo = masked_average_pool(
            &q,
            &logits_to_labels(&head_logits(&q, &[0.9, 0.1], 0.5), 8, 8),
        );
        assert_eq!(head.passes[1], pseudo);
    }

    #[test]
    fn n_way_logits_give_each_target_its_region_and_background_elsewhere() {
        // Channel 0 left, channel 1 right; a third target matches nothing.
        let q = query();
        let protos = Prototypes {
            background: vec![0.0, 0.0],
            foreground: vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![-1.0, -1.0]],
        };
        let mut head = dot_head(0.5);
        let l = smcp_logits(
            &mut head,
            &protos,
            &q,
            InputSize::new(8, 8),
            SmcpGuidance::Fused,
        )
        .unwrap();
        assert_eq!(l.channels, 4);
        let labels = logits_to_labels(&l, 4, 4);
        assert_eq!(labels.data[0], 1);
        assert_eq!(labels.data[3], 2);
        assert!(labels.data.iter().all(|&v| v != 3));
        // Target 3's pseudo-mask is empty: one pass only (2 + 2 + 1).
        assert_eq!(head.passes.len(), 5);
    }

    #[test]
    fn a_wrong_prototype_length_is_an_error() {
        let mut head = dot_head(0.0);
        let e = two_pass(
            &mut head,
            &[1.0],
            &query(),
            InputSize::new(8, 8),
            SmcpGuidance::Fused,
        )
        .unwrap_err();
        assert!(e.to_string().contains("1 values"), "{e}");
    }
}
