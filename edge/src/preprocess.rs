//! Image preprocessing shared by host and edge (evaluation.md, "Canonical PANet scoring", step 1-2):
//! RGB -> resize H x W (bilinear, triangle filter) -> /255 -> (x - mean) / std, CHW f32;
//! masks resized with nearest neighbour (pixel centres); feature maps upsampled bilinearly with
//! half-pixel centres (PyTorch `align_corners=False`).

use crate::error::{EdgeError, Result};
use crate::tensor::{FeatureMap, Mask};
use image::{imageops, RgbImage};
use serde::{Deserialize, Serialize};

/// Per-channel normalisation applied to RGB values scaled to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// torchvision ImageNet statistics (MobileNetV2, VGG-16, ResNet).
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    /// EfficientNet-Lite: (x - 127) / 128 on 0..255, i.e. mean 0.498 and std 0.502 on [0, 1].
    pub const EFFICIENTNET_LITE: Normalization = Normalization {
        mean: [0.498, 0.498, 0.498],
        std: [0.502, 0.502, 0.502],
    };
}

/// Model input size, rows x columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSize {
    pub height: usize,
    pub width: usize,
}

impl InputSize {
    pub fn new(height: usize, width: usize) -> Self {
        InputSize { height, width }
    }
}

impl std::str::FromStr for InputSize {
    type Err = EdgeError;
    /// Parses `HxW` (rows x columns), e.g. `320x576`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            EdgeError::input(format!(
                "size '{s}' is not HxW (rows x columns, e.g. 320x576)"
            ))
        };
        let (h, w) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let h: usize = h.trim().parse().map_err(|_| bad())?;
        let w: usize = w.trim().parse().map_err(|_| bad())?;
        if h < 16 || w < 16 || h > 8192 || w > 8192 {
            return Err(EdgeError::input(format!(
                "size {h}x{w} is out of range (each side 16..8192)"
            )));
        }
        Ok(InputSize::new(h, w))
    }
}

impl std::fmt::Display for InputSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.height, self.width)
    }
}

/// Bilinear (triangle-filter) resize of an RGB image to `size`; a no-op when it already fits.
pub fn resize_rgb(image: &RgbImage, size: InputSize) -> RgbImage {
    if image.height() as usize == size.height && image.width() as usize == size.width {
        return image.clone();
    }
    imageops::resize(
        image,
        size.width as u32,
        size.height as u32,
        imageops::FilterType::Triangle,
    )
}

/// RGB8 -> CHW f32, `/255` then `(x - mean) / std`.
pub fn normalize_chw(image: &RgbImage, norm: &Normalization) -> Vec<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let n = w * h;
    let mut out = vec![0.0f32; 3 * n];
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * norm.std[c]));
    let offset: [f32; 3] = std::array::from_fn(|c| norm.mean[c] / norm.std[c]);
    for (i, px) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = px.0[c] as f32 * scale[c] - offset[c];
        }
    }
    out
}

/// The whole input path of step 1: resize to `size`, then normalise. Returns CHW f32.
pub fn prepare_input(image: &RgbImage, size: InputSize, norm: &Normalization) -> Vec<f32> {
    normalize_chw(&resize_rgb(image, size), norm)
}

/// Nearest-neighbour resize with pixel centres (PIL `NEAREST`): source index
/// `floor((i + 0.5) * in / out)`.
pub fn resize_mask_nearest(mask: &Mask, height: usize, width: usize) -> Mask {
    if mask.height == height && mask.width == width {
        return mask.clone();
    }
    let src_x: Vec<usize> = (0..width)
        .map(|x| {
            (((x as f64 + 0.5) * mask.width as f64 / width as f64) as usize).min(mask.width - 1)
        })
        .collect();
    let mut data = Vec::with_capacity(height * width);
    for y in 0..height {
        let sy =
            (((y as f64 + 0.5) * mask.height as f64 / height as f64) as usize).min(mask.height - 1);
        let row = &mask.data[sy * mask.width..(sy + 1) * mask.width];
        data.extend(src_x.iter().map(|&sx| row[sx]));
    }
    Mask {
        height,
        width,
        data,
    }
}

/// One output coordinate of a half-pixel bilinear resize: the two source indices and the weight
/// of the second one (PyTorch `align_corners=False`, negative source coordinates clamped to 0).
#[derive(Debug, Clone, Copy)]
pub struct LinearTap {
    pub i0: usize,
    pub i1: usize,
    pub w1: f32,
}

/// Taps for resizing an axis of `input` samples to `output` samples.
pub fn linear_taps(input: usize, output: usize) -> Vec<LinearTap> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|o| {
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            LinearTap {
                i0,
                i1,
                w1: (src - i0 as f64) as f32,
            }
        })
        .collect()
}

/// Bilinear upsampling (or downsampling without antialiasing) of every channel to
/// `height` x `width`, half-pixel centres, as `F.interpolate(mode="bilinear", align_corners=False)`.
pub fn resize_bilinear(map: &FeatureMap, height: usize, width: usize) -> FeatureMap {
    let ty = linear_taps(map.height, height);
    let tx = linear_taps(map.width, width);
    let mut out = FeatureMap::zeros(map.channels, height, width);
    for c in 0..map.channels {
        let src = map.plane(c);
        let dst = out.plane_mut(c);
        for (y, t) in ty.iter().enumerate() {
            bilinear_row(src, map.width, t, &tx, &mut dst[y * width..(y + 1) * width]);
        }
    }
    out
}

/// One output row of the half-pixel bilinear resize of a plane `fw` samples wide: `t` taps the
/// two source rows, `tx` gives each output column's two source columns (`out.len() == tx.len()`).
/// The one interpolation formula of [`resize_bilinear`], the fused upsample + argmax
/// ([`crate::prototype::logits_to_labels`]) and the live observations.
#[inline]
pub fn bilinear_row(plane: &[f32], fw: usize, t: &LinearTap, tx: &[LinearTap], out: &mut [f32]) {
    let r0 = &plane[t.i0 * fw..(t.i0 + 1) * fw];
    let r1 = &plane[t.i1 * fw..(t.i1 + 1) * fw];
    for (o, s) in out.iter_mut().zip(tx) {
        let top = r0[s.i0] + (r0[s.i1] - r0[s.i0]) * s.w1;
        let bottom = r1[s.i0] + (r1[s.i1] - r1[s.i0]) * s.w1;
        *o = top + (bottom - top) * t.w1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_parses_rows_by_columns() {
        let s: InputSize = "320x576".parse().unwrap();
        assert_eq!((s.height, s.width), (320, 576));
        assert!("320".parse::<InputSize>().is_err());
        assert!("0x10".parse::<InputSize>().is_err());
    }

    #[test]
    fn normalization_matches_formula() {
        let img = RgbImage::from_raw(1, 1, vec![255, 0, 128]).unwrap();
        let v = normalize_chw(&img, &Normalization::IMAGENET);
        assert!((v[0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((v[1] - (0.0 - 0.456) / 0.224).abs() < 1e-5);
        assert!((v[2] - (128.0 / 255.0 - 0.406) / 0.225).abs() < 1e-5);
    }

    #[test]
    fn bilinear_matches_pytorch_half_pixel() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0.,1.],[2.,3.]]]]), size=(4,4),
        // mode="bilinear", align_corners=False) first row: 0, 0.25, 0.75, 1
        let m = FeatureMap::new(1, 2, 2, vec![0.0, 1.0, 2.0, 3.0]).unwrap();
        let up = resize_bilinear(&m, 4, 4);
        let row0: Vec<f32> = up.data[0..4].to_vec();
        assert_eq!(row0, vec![0.0, 0.25, 0.75, 1.0]);
        let row1: Vec<f32> = up.data[4..8].to_vec();
        assert_eq!(row1, vec![0.5, 0.75, 1.25, 1.5]);
    }

    #[test]
    fn nearest_mask_uses_pixel_centres() {
        let m = Mask::new(1, 4, vec![1, 2, 3, 4]).unwrap();
        assert_eq!(resize_mask_nearest(&m, 1, 2).data, vec![2, 4]);
        assert_eq!(
            resize_mask_nearest(&m, 1, 8).data,
            vec![1, 1, 2, 2, 3, 3, 4, 4]
        );
    }
}
