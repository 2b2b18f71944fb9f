//! SG-One's inference (similarity guidance; methods.md §4.4), written once over a
//! [`HeadRunner`] (its `guidance` and one guided `pass`) so that `host eval` (the head in tch) and the edge (the head graph in tract)
//! run the same logic.
//!
//! * The support side: the guidance features `G` of each shot, masked-average-pooled under its
//!   mask into a guidance vector `v_k` (the cached "prototype" of an SG-One target).
//! * The query side: one head pass per vector: `cos(G_q, v)` weights the segmentation-branch
//!   features, and the 2-class head scores them.
//! * **K shots** ([`SgOneKShot`]): `avg` (the paper's better variant) averages the `v_k` and
//!   runs one pass; `max` runs one pass per shot and takes the pixel-wise union of the binary
//!   predictions. The union is computed on margins: a pixel is foreground when any shot's
//!   `fg - bg` is positive, i.e. when `max_k (fg_k - bg_k) > 0`, so the N-way logits carry
//!   `max_k` margins and the shared argmax gives the union exactly.
//! * **N targets** (the live runtime): SG-One is 1-way; each target runs its own pass(es) and
//!   the N-way logits are `[0, m_1, ..., m_N]` with `m_i` target i's foreground margin, as for
//!   SMCP ([`crate::smcp`]).
//!
//! Masked average pooling uses the project's shared pooling (ε = 1e-5 in the denominator;
//! SG-One's code has no ε, a relative difference below 1e-7 for any mask that survives
//! resizing).

use crate::error::{EdgeError, Result};
use crate::method::HeadRunner;
use crate::prototype::{
    foreground_margins, masked_average_pool, panet_prototypes, Prototypes, SupportShot,
};
use crate::tensor::FeatureMap;

/// How K support shots guide the query (methods.md §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SgOneKShot {
    /// Average the shots' guidance vectors, one pass (the paper's better variant).
    #[default]
    Avg,
    /// One pass per shot, union of the binary predictions.
    Max,
}

crate::choices!(SgOneKShot {
    Avg => "avg", "Average the shots' guidance vectors, one pass (the paper's better variant)";
    Max => "max", "One pass per shot, union of the binary predictions";
});

/// SG-One's support state: the guidance vectors of N targets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GuidanceVectors {
    /// Per target the mean of its shots' vectors (`foreground`); `background` is the mean over
    /// all shots' background pools (unused by SG-One's head, kept so that the vectors'
    /// dimension is known).
    pub vectors: Prototypes,
    /// Per target, each shot's vector (the K-shot "max"); empty when only the means are kept.
    pub per_shot: Vec<Vec<Vec<f32>>>,
}

/// The guidance vectors of N targets of K shots (shots hold encoder features). Empty masks are
/// errors, as for PANet.
pub fn sgone_prototypes(
    head: &mut dyn HeadRunner,
    ways: &[Vec<SupportShot>],
) -> Result<GuidanceVectors> {
    let mut guided = Vec::with_capacity(ways.len());
    for shots in ways {
        let mut g = Vec::with_capacity(shots.len());
        for shot in shots {
            g.push(SupportShot {
                features: head.guidance(&shot.features)?,
                foreground: shot.foreground.clone(),
                background: shot.background.clone(),
            });
        }
        guided.push(g);
    }
    let vectors = panet_prototypes(&guided)?;
    let per_shot = guided
        .iter()
        .map(|shots| {
            shots
                .iter()
                .map(|s| masked_average_pool(&s.features, &s.foreground))
                .collect()
        })
        .collect();
    Ok(GuidanceVectors { vectors, per_shot })
}

/// N-way logits `[N + 1, h', w']`: channel 0 is 0, channel i target i's foreground margin
/// (module doc).
pub fn sgone_logits(
    head: &mut dyn HeadRunner,
    guidance: &GuidanceVectors,
    query: &FeatureMap,
    kshot: SgOneKShot,
) -> Result<FeatureMap> {
    let prototypes = &guidance.vectors;
    let mut out: Option<FeatureMap> = None;
    let n = prototypes.foreground.len();
    for (i, mean) in prototypes.foreground.iter().enumerate() {
        let vectors: Vec<&[f32]> = match (kshot, guidance.per_shot.get(i)) {
            (SgOneKShot::Max, Some(shots)) if !shots.is_empty() => {
                shots.iter().map(|v| v.as_slice()).collect()
            }
            _ => vec![mean.as_slice()],
        };
        for v in vectors {
            let logits = head.pass(query, v, None)?;
            if logits.channels != 2 {
                return Err(EdgeError::input(format!(
                    "the SG-One head returned {} channels (expected 2)",
                    logits.channels
                )));
            }
            let o = out.get_or_insert_with(|| {
                let mut o = FeatureMap::zeros(n + 1, logits.height, logits.width);
                for c in 1..=n {
                    o.plane_mut(c).fill(f32::NEG_INFINITY);
                }
                o
            });
            if (o.height, o.width) != (logits.height, logits.width) {
                return Err(EdgeError::input(format!(
                    "the SG-One head returned {}x{} logits after {}x{}",
                    logits.height, logits.width, o.height, o.width
                )));
            }
            for (d, m) in o
                .plane_mut(i + 1)
                .iter_mut()
                .zip(foreground_margins(&logits))
            {
                *d = d.max(m);
            }
        }
    }
    out.ok_or_else(|| EdgeError::input("SG-One scoring needs at least one target"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prototype::logits_to_labels;
    use crate::tensor::Mask;

    /// Guidance = the features themselves; foreground logit = dot(F, v) - threshold.
    struct DotHead {
        threshold: f32,
        passes: usize,
    }

    impl HeadRunner for DotHead {
        fn guidance(&mut self, features: &FeatureMap) -> Result<FeatureMap> {
            Ok(features.clone())
        }
        fn pass(
            &mut self,
            query: &FeatureMap,
            v: &[f32],
            _: Option<&crate::dpnet::SupportMemory>,
        ) -> Result<FeatureMap> {
            self.passes += 1;
            let hw = query.height * query.width;
            let mut out = FeatureMap::zeros(2, query.height, query.width);
            for x in 0..hw {
                let dot: f32 = (0..query.channels).map(|c| query.plane(c)[x] * v[c]).sum();
                out.plane_mut(1)[x] = dot - self.threshold;
            }
            Ok(out)
        }
    }

    /// Left half channel 0, right half channel 1, on a 4x4 grid.
    fn halves() -> FeatureMap {
        let mut f = FeatureMap::zeros(2, 4, 4);
        for y in 0..4 {
            for x in 0..4 {
                f.plane_mut(if x < 2 { 0 } else { 1 })[y * 4 + x] = 1.0;
            }
        }
        f
    }

    fn shot(left: bool) -> SupportShot {
        let data = (0..16 * 16).map(|i| ((i % 16 < 8) == left) as u8).collect();
        SupportShot::from_foreground(halves(), Mask::new(16, 16, data).unwrap())
    }

    #[test]
    fn avg_pools_the_mean_vector_and_max_takes_the_union_of_the_shots() {
        let mut head = DotHead {
            threshold: 0.6,
            passes: 0,
        };
        let ways = vec![vec![shot(true), shot(false)]];
        let protos = sgone_prototypes(&mut head, &ways).unwrap();
        assert_eq!(protos.per_shot[0].len(), 2);
        // Each shot's vector is ~[1, 0] or ~[0, 1]; their mean ~[0.5, 0.5] is below the
        // threshold everywhere, while either shot alone marks its own half.
        let avg = sgone_logits(&mut head, &protos, &halves(), SgOneKShot::Avg).unwrap();
        assert_eq!(head.passes, 1);
        assert_eq!(logits_to_labels(&avg, 4, 4).count_nonzero(), 0);
        let max = sgone_logits(&mut head, &protos, &halves(), SgOneKShot::Max).unwrap();
        assert_eq!(head.passes, 3);
        assert_eq!(logits_to_labels(&max, 4, 4).count_nonzero(), 16);
        // The union equals OR of the per-shot binary predictions.
        let one = |v: &[f32], h: &mut DotHead| {
            let p = GuidanceVectors {
                vectors: Prototypes {
                    background: vec![0.0; 2],
                    foreground: vec![v.to_vec()],
                },
                per_shot: Vec::new(),
            };
            logits_to_labels(
                &sgone_logits(h, &p, &halves(), SgOneKShot::Avg).unwrap(),
                4,
                4,
            )
        };
        let a = one(&protos.per_shot[0][0], &mut head);
        let b = one(&protos.per_shot[0][1], &mut head);
        let union: Vec<u8> = a.data.iter().zip(&b.data).map(|(x, y)| x | y).collect();
        assert_eq!(logits_to_labels(&max, 4, 4).data, union);
    }

    #[test]
    fn an_empty_support_mask_is_an_error() {
        let mut head = DotHead {
            threshold: 0.0,
            passes: 0,
        };
        let s = SupportShot::from_foreground(halves(), Mask::new(16, 16, vec![0; 256]).unwrap());
        let e = sgone_prototypes(&mut head, &[vec![s]]).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }
}
