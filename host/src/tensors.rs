//! Conversions between tch tensors and the shared [`FeatureMap`]: what every tch head and the
//! tch encoder hand to the shared inference of `fss-core`.

use anyhow::{anyhow, bail, Result};
use fss_core::tensor::FeatureMap;
use tch::{Device, Kind, Tensor};

/// `[N, C, h, w]` float tensor -> feature maps.
pub fn tensor_to_maps(t: &Tensor) -> Result<Vec<FeatureMap>> {
    let s = t.size();
    if s.len() != 4 {
        bail!("expected a 4-d feature tensor, got shape {s:?}");
    }
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let all: Vec<f32> =
        Vec::try_from(&t.flatten(0, -1)).map_err(|e| anyhow!("feature tensor: {e}"))?;
    let per = (s[1] * s[2] * s[3]) as usize;
    all.chunks(per)
        .map(|c| {
            FeatureMap::new(s[1] as usize, s[2] as usize, s[3] as usize, c.to_vec())
                .map_err(Into::into)
        })
        .collect()
}

/// A feature map as a `[1, C, h, w]` tensor on `device`.
pub fn feature_tensor(f: &FeatureMap, device: Device) -> Tensor {
    Tensor::from_slice(&f.data)
        .view([1, f.channels as i64, f.height as i64, f.width as i64])
        .to_device(device)
}

/// The first map of a `[N, C, h, w]` tensor (a head's output), errors naming `what`.
pub fn first_map(t: &Tensor, what: &str) -> fss_core::Result<FeatureMap> {
    let maps = tensor_to_maps(t).map_err(|e| fss_core::EdgeError::input(format!("{what}: {e}")))?;
    maps.into_iter()
        .next()
        .ok_or_else(|| fss_core::EdgeError::input(format!("{what}: no output")))
}
