//! DPNet's support side and inference (dual prototypes; methods.md §6), shared by `host eval`
//! (the head in tch) and the edge (the head graph in tract).
//!
//! **A reconstruction.** Only the paper's abstract is public (no code, no equations); the
//! model in `host/src/dpnet.rs` documents every choice. What the head needs from the
//! supports, and what this module caches per target:
//! * the support prototype `P`: the mean over shots of the masked average pool of the encoder
//!   features (the shared PANet pooling, ε = 1e-5);
//! * the **support memory** for the cycle comparison: each shot's encoder features
//!   average-pooled to a fixed [`MEMORY_GRID`] x [`MEMORY_GRID`] grid, and the fraction of each
//!   grid cell the support mask covers. The grid is fixed so that the cache and the cost of the
//!   comparison are bounded whatever the support size; K shots are concatenated along the
//!   location axis (the comparison asks only *whether* a query location's nearest support
//!   location lies in the mask, never where it is).
//!
//! Pooling uses PyTorch's `adaptive_avg_pool2d` bins (`floor(i L / n)` to `ceil((i + 1) L / n)`)
//! so that training (tch) and the edge build the same memory.
//!
//! N targets: DPNet is 1-way, one head pass per target; the N-way logits are
//! `[0, m_1, ..., m_N]` with `m_i = fg_i - bg_i` (as SMCP, [`crate::smcp`]).

use crate::error::{EdgeError, Result};
use crate::method::HeadRunner;
pub use crate::prototype::SupportMemory;
use crate::prototype::{foreground_margins, panet_prototypes, Prototypes, SupportShot};
use crate::tensor::{FeatureMap, Mask};

/// Side of the support memory grid per shot.
pub const MEMORY_GRID: usize = 12;

/// PyTorch's adaptive-average-pool bin `[start, end)` of output `i` of `n` over `len` inputs.
fn bin(i: usize, n: usize, len: usize) -> (usize, usize) {
    let start = (i * len) / n;
    let end = ((i + 1) * len).div_ceil(n);
    (start, end.max(start + 1).min(len.max(1)))
}

/// `adaptive_avg_pool2d(features, [n, n])`.
pub fn adaptive_average_pool(features: &FeatureMap, n: usize) -> FeatureMap {
    let (h, w) = (features.height, features.width);
    let mut out = FeatureMap::zeros(features.channels, n, n);
    for c in 0..features.channels {
        let src = features.plane(c);
        let dst = out.plane_mut(c);
        for oy in 0..n {
            let (y0, y1) = bin(oy, n, h);
            for ox in 0..n {
                let (x0, x1) = bin(ox, n, w);
                let mut s = 0f64;
                for y in y0..y1 {
                    for x in x0..x1 {
                        s += src[y * w + x] as f64;
                    }
                }
                dst[oy * n + ox] = (s / ((y1 - y0) * (x1 - x0)) as f64) as f32;
            }
        }
    }
    out
}

/// The fraction of each of `n` x `n` adaptive-pool cells that `mask` (binary) covers.
pub fn mask_fractions(mask: &Mask, n: usize) -> Vec<f32> {
    let f = FeatureMap {
        channels: 1,
        height: mask.height,
        width: mask.width,
        data: mask.data.iter().map(|&v| (v != 0) as u8 as f32).collect(),
    };
    adaptive_average_pool(&f, n).data
}

/// The support memory of one shot: encoder features and the foreground mask at the model
/// input.
pub fn shot_memory(features: &FeatureMap, foreground: &Mask) -> SupportMemory {
    let pooled = adaptive_average_pool(features, MEMORY_GRID);
    SupportMemory {
        channels: features.channels,
        locations: MEMORY_GRID * MEMORY_GRID,
        features: pooled.data,
        mask: mask_fractions(foreground, MEMORY_GRID),
    }
}

/// Memories concatenated along the location axis (per channel: the first memory's
/// locations, then the second's, ...).
pub fn concat_memories(parts: &[&SupportMemory]) -> Result<SupportMemory> {
    let first = parts
        .first()
        .ok_or_else(|| EdgeError::input("a DPNet target needs at least one support shot"))?;
    let c = first.channels;
    let n: usize = parts.iter().map(|m| m.locations).sum();
    let mut features = vec![0f32; c * n];
    let mut mask = Vec::with_capacity(n);
    let mut offset = 0;
    for (k, m) in parts.iter().enumerate() {
        if m.channels != c || m.features.len() != c * m.locations || m.mask.len() != m.locations {
            return Err(EdgeError::input(format!(
                "support memory {k} is {} channels x {} locations ({} values, {} mask cells); expected {c} channels",
                m.channels,
                m.locations,
                m.features.len(),
                m.mask.len()
            )));
        }
        for ch in 0..c {
            features[ch * n + offset..ch * n + offset + m.locations]
                .copy_from_slice(&m.features[ch * m.locations..(ch + 1) * m.locations]);
        }
        mask.extend_from_slice(&m.mask);
        offset += m.locations;
    }
    Ok(SupportMemory {
        channels: c,
        locations: n,
        features,
        mask,
    })
}

/// The support memory of one target's shots (module doc).
pub fn support_memory(shots: &[SupportShot]) -> Result<SupportMemory> {
    let parts: Vec<SupportMemory> = shots
        .iter()
        .map(|s| shot_memory(&s.features, &s.foreground))
        .collect();
    concat_memories(&parts.iter().collect::<Vec<_>>())
}

/// DPNet's support state: PANet-style prototypes (the foreground ones are DPNet's `P`) and each
/// target's support memory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DualSupport {
    pub prototypes: Prototypes,
    pub memories: Vec<SupportMemory>,
}

/// The prototypes and the support memory of N targets of K shots.
pub fn dpnet_prototypes(ways: &[Vec<SupportShot>]) -> Result<DualSupport> {
    Ok(DualSupport {
        prototypes: panet_prototypes(ways)?,
        memories: ways
            .iter()
            .map(|shots| support_memory(shots))
            .collect::<Result<_>>()?,
    })
}

/// N-way logits `[N + 1, h, w]` (module doc).
pub fn dpnet_logits(
    head: &mut dyn HeadRunner,
    support: &DualSupport,
    query: &FeatureMap,
) -> Result<FeatureMap> {
    let prototypes = &support.prototypes;
    if support.memories.len() != prototypes.foreground.len() {
        return Err(EdgeError::input(format!(
            "DPNet needs a support memory per target: {} targets, {} memories (prototypes computed for another method?)",
            prototypes.foreground.len(),
            support.memories.len()
        )));
    }
    let mut out = FeatureMap::zeros(prototypes.foreground.len() + 1, query.height, query.width);
    for (i, (p, m)) in prototypes
        .foreground
        .iter()
        .zip(&support.memories)
        .enumerate()
    {
        let logits = head.pass(query, p, Some(m))?;
        if logits.channels != 2 || logits.height != query.height || logits.width != query.width {
            return Err(EdgeError::input(format!(
                "the DPNet head returned logits {}x{}x{} for {}x{} features",
                logits.channels, logits.height, logits.width, query.height, query.width
            )));
        }
        for (d, m) in out
            .plane_mut(i + 1)
            .iter_mut()
            .zip(foreground_margins(&logits))
        {
            *d = m;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_pool_bins_follow_torch() {
        // torch: 5 -> 3 bins are [0,2), [1,4), [3,5).
        assert_eq!(bin(0, 3, 5), (0, 2));
        assert_eq!(bin(1, 3, 5), (1, 4));
        assert_eq!(bin(2, 3, 5), (3, 5));
        // Upsampling (2 -> 3): [0,1), [0,2), [1,2).
        assert_eq!(bin(1, 3, 2), (0, 2));
        let f = FeatureMap::new(1, 1, 5, vec![1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let row = FeatureMap {
            channels: 1,
            height: 3,
            width: 5,
            data: [f.data.clone(), f.data.clone(), f.data].concat(),
        };
        let p = adaptive_average_pool(&row, 3);
        assert_eq!(&p.data[..3], &[1.5, 3.0, 4.5]);
    }

    #[test]
    fn memory_concatenates_shots_and_measures_mask_cover() {
        let f = FeatureMap::new(2, 24, 24, (0..2 * 24 * 24).map(|v| v as f32).collect()).unwrap();
        let top = Mask::new(48, 48, (0..48 * 48).map(|i| (i < 48 * 24) as u8).collect()).unwrap();
        let shots = vec![
            SupportShot::from_foreground(f.clone(), top.clone()),
            SupportShot::from_foreground(f, top),
        ];
        let m = support_memory(&shots).unwrap();
        let per = MEMORY_GRID * MEMORY_GRID;
        assert_eq!(m.locations, 2 * per);
        assert_eq!(m.features.len(), 2 * 2 * per);
        // Top half of each shot fully inside, bottom half outside.
        assert_eq!(m.mask[0], 1.0);
        assert_eq!(m.mask[per - 1], 0.0);
        assert_eq!(m.mask[per], 1.0);
        // Channel 1 of shot 2 starts at 2 * per + per; 2x2 average of the first cell.
        let first = (24 * 24) as f32 + (0.0 + 1.0 + 24.0 + 25.0) / 4.0;
        assert_eq!(m.features[2 * per + per], first);
    }

    #[test]
    fn logits_without_memories_are_an_error() {
        struct Never;
        impl HeadRunner for Never {
            fn pass(
                &mut self,
                _: &FeatureMap,
                _: &[f32],
                _: Option<&SupportMemory>,
            ) -> Result<FeatureMap> {
                unreachable!()
            }
        }
        let p = DualSupport {
            prototypes: Prototypes {
                background: vec![0.0],
                foreground: vec![vec![1.0]],
            },
            memories: Vec::new(),
        };
        let e = dpnet_logits(&mut Never, &p, &FeatureMap::zeros(1, 2, 2)).unwrap_err();
        assert!(e.to_string().contains("support memory"), "{e}");
    }
}
