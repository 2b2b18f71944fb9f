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

/// How a harness feeds an image to the network (methods.md §7.4, "query input to the network").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputGeometry {
    /// Stretched to a fixed size, aspect not kept (PANet 417x417, HSNet 400x400).
    Stretch(InputSize),
    /// Each image at its own size (OSLSM / SG-One).
    Original,
    /// PFENet's and BAM's test resize: the longer side to this many pixels, aspect kept, both
    /// sides rounded down to a multiple of 8, the image in the top-left corner of a square of
    /// this side, black padding ([`Placement::longer_side_padded`]).
    LongerSidePadded(usize),
}

impl InputGeometry {
    /// The network input size when it is the same for every image (`None` for
    /// [`InputGeometry::Original`]).
    pub fn fixed_size(&self) -> Option<InputSize> {
        match *self {
            InputGeometry::Stretch(s) => Some(s),
            InputGeometry::Original => None,
            InputGeometry::LongerSidePadded(side) => Some(InputSize::new(side, side)),
        }
    }

    /// Where an image of `source` size goes in the network input.
    pub fn place(&self, source: InputSize) -> Placement {
        match *self {
            InputGeometry::Stretch(s) => Placement {
                source,
                content: s,
                canvas: s,
            },
            InputGeometry::Original => Placement {
                source,
                content: source,
                canvas: source,
            },
            InputGeometry::LongerSidePadded(side) => Placement::longer_side_padded(source, side),
        }
    }
}

/// Where one image of `source` size sits in the network input: resized to `content` and put in
/// the top-left corner of a `canvas` (the network input); the rest of the canvas is padding.
/// The prediction goes back to the `source` grid (the original label) with
/// [`Placement::source_taps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub source: InputSize,
    pub content: InputSize,
    pub canvas: InputSize,
}

impl Placement {
    /// PFENet's `test_Resize(side)` (`PFENet:util/transform.py`, also BAM's): an image whose
    /// longer side exceeds `side` is scaled so that side is `side` (the other `int(len * side /
    /// longer)`), then both sides are rounded down to a multiple of 8 (so 473 gives 472 and 641
    /// gives 640; never below 1 here); a smaller image keeps its size. The canvas is `side` x
    /// `side`.
    pub fn longer_side_padded(source: InputSize, side: usize) -> Placement {
        let (h, w) = (source.height, source.width);
        let content = if h.max(w) > side {
            let (nh, nw) = if h >= w {
                (side, (w as f64 * (side as f64 / h as f64)) as usize)
            } else {
                ((h as f64 * (side as f64 / w as f64)) as usize, side)
            };
            let floor8 = |v: usize| (v / 8 * 8).max(1);
            InputSize::new(floor8(nh), floor8(nw))
        } else {
            source
        };
        Placement {
            source,
            content,
            canvas: InputSize::new(side, side),
        }
    }

    /// Whether part of the canvas is padding.
    pub fn is_padded(&self) -> bool {
        self.content != self.canvas
    }

    /// The network input (CHW f32 at `canvas`): the image resized to `content` as
    /// [`prepare_input`] does, on a black canvas (0 before normalisation, as PFENet's
    /// `np.zeros` canvas goes through `Normalize`), normalised.
    pub fn prepare_image(&self, image: &RgbImage, norm: &Normalization) -> Vec<f32> {
        if !self.is_padded() {
            return prepare_input(image, self.content, norm);
        }
        let mut canvas = RgbImage::new(self.canvas.width as u32, self.canvas.height as u32);
        imageops::replace(&mut canvas, &resize_rgb(image, self.content), 0, 0);
        normalize_chw(&canvas, norm)
    }

    /// A label given on the `source` grid, on the canvas: nearest-resized to `content`, `pad`
    /// on the padding (PFENet pads labels with 255).
    pub fn mask_to_canvas(&self, mask: &Mask, pad: u8) -> Mask {
        let inner = resize_mask_nearest(mask, self.content.height, self.content.width);
        if !self.is_padded() {
            return inner;
        }
        let (ch, cw) = (self.canvas.height, self.canvas.width);
        let mut data = vec![pad; ch * cw];
        for (y, row) in inner.data.chunks(inner.width).enumerate() {
            data[y * cw..y * cw + inner.width].copy_from_slice(row);
        }
        Mask {
            height: ch,
            width: cw,
            data,
        }
    }

    /// The inverse mapping: for a map of `map_height` x `map_width` samples spanning the canvas
    /// (logits at feature resolution), the half-pixel bilinear taps (rows, columns) that read it
    /// at every pixel of the `source` grid through the content box: source pixel `y` is canvas
    /// row `(y + 0.5) * content / source`, which is map coordinate `that * map / canvas - 0.5`.
    /// One interpolation, no intermediate canvas-size map; without padding it is exactly the
    /// [`linear_taps`] of the canonical scoring.
    pub fn source_taps(
        &self,
        map_height: usize,
        map_width: usize,
    ) -> (Vec<LinearTap>, Vec<LinearTap>) {
        // Integer products first: when content == canvas the scale is exactly map / source.
        let scale = |map: usize, content: usize, canvas: usize, source: usize| {
            (map * content) as f64 / (canvas * source) as f64
        };
        let (s, c, k) = (self.source, self.content, self.canvas);
        (
            linear_taps_scaled(
                map_height,
                s.height,
                scale(map_height, c.height, k.height, s.height),
            ),
            linear_taps_scaled(
                map_width,
                s.width,
                scale(map_width, c.width, k.width, s.width),
            ),
        )
    }
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
    linear_taps_scaled(input, output, input as f64 / output as f64)
}

/// Taps for `output` samples read from `input` samples at source coordinate
/// `(o + 0.5) * scale - 0.5` (clamped to the input): [`linear_taps`] with a scale that need not
/// be `input / output`, e.g. when only part of the input is the image ([`Placement`]).
pub fn linear_taps_scaled(input: usize, output: usize, scale: f64) -> Vec<LinearTap> {
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
    fn longer_side_padded_follows_pfenet_test_resize() {
        // 375 x 500: the width 500 -> 473 -> 472 (multiple of 8); the height
        // int(375 * 473 / 500) = 354 -> 352.
        let p = Placement::longer_side_padded(InputSize::new(375, 500), 473);
        assert_eq!(
            (p.content, p.canvas),
            (InputSize::new(352, 472), InputSize::new(473, 473))
        );
        // Portrait on COCO's 641: 700 x 427 -> 640 (641 rounded down) x int(427 * 641 / 700)
        // = 391 -> 384.
        let p = Placement::longer_side_padded(InputSize::new(700, 427), 641);
        assert_eq!(p.content, InputSize::new(640, 384));
        // Not larger than the side: kept as it is (PFENet resizes only above), still padded.
        for (h, w, side) in [(120, 160, 473), (473, 300, 473), (640, 427, 641)] {
            let p = Placement::longer_side_padded(InputSize::new(h, w), side);
            assert_eq!(p.content, InputSize::new(h, w));
            assert!(p.is_padded());
        }
        // A sliver never becomes 0 wide.
        let p = Placement::longer_side_padded(InputSize::new(2000, 5), 473);
        assert_eq!(p.content, InputSize::new(472, 1));
        assert_eq!(
            InputGeometry::LongerSidePadded(641).fixed_size(),
            Some(InputSize::new(641, 641))
        );
        assert_eq!(InputGeometry::Original.fixed_size(), None);
        let s = InputSize::new(7, 9);
        assert!(!InputGeometry::Original.place(s).is_padded());
        assert_eq!(InputGeometry::Original.place(s).canvas, s);
    }

    #[test]
    fn padded_input_is_black_before_normalisation_and_labels_get_the_pad_value() {
        let img = RgbImage::from_pixel(3, 2, image::Rgb([255, 255, 255]));
        let p = Placement::longer_side_padded(InputSize::new(2, 3), 4);
        let x = p.prepare_image(&img, &Normalization::IMAGENET);
        assert_eq!(x.len(), 3 * 16);
        for c in 0..3 {
            let n = Normalization::IMAGENET;
            let (white, black) = ((1.0 - n.mean[c]) / n.std[c], -n.mean[c] / n.std[c]);
            for y in 0..4 {
                for xx in 0..4 {
                    let v = x[c * 16 + y * 4 + xx];
                    let want = if y < 2 && xx < 3 { white } else { black };
                    assert!((v - want).abs() < 1e-5, "c{c} ({y},{xx}): {v} vs {want}");
                }
            }
        }
        let m = Mask::new(2, 3, vec![1, 0, 1, 0, 1, 0]).unwrap();
        let on = p.mask_to_canvas(&m, 255);
        assert_eq!(
            on.data,
            vec![1, 0, 1, 255, 0, 1, 0, 255, 255, 255, 255, 255, 255, 255, 255, 255]
        );
        // Without padding the same as the canonical nearest resize.
        let q = InputGeometry::Stretch(InputSize::new(4, 6)).place(InputSize::new(2, 3));
        assert_eq!(q.mask_to_canvas(&m, 255), resize_mask_nearest(&m, 4, 6));
        assert_eq!(
            q.prepare_image(&img, &Normalization::IMAGENET),
            prepare_input(&img, InputSize::new(4, 6), &Normalization::IMAGENET)
        );
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
