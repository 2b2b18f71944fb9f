//! Overlays and mask files: each target tinted in its own colour (a fixed palette), label
//! masks written as 8-bit PNGs (0 = background, i = i-th target).

use crate::error::{EdgeError, Result};
use crate::fsutil::write_atomic_with;
use crate::tensor::Mask;
use image::{GrayImage, ImageFormat, RgbImage};
use std::path::Path;

/// Colours of targets 1, 2, ... (cycled beyond its length).
pub const PALETTE: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [255, 225, 25],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
];

/// Weight of the target colour in the tint (out of 256).
pub const TINT_ALPHA: u16 = 128;

/// The colour of label `label` (>= 1).
pub fn target_colour(label: u8) -> [u8; 3] {
    PALETTE[(label.max(1) as usize - 1) % PALETTE.len()]
}

/// The frame with each labelled pixel blended with its target's colour. `labels` must be the
/// frame's size.
pub fn overlay(frame: &RgbImage, labels: &Mask) -> Result<RgbImage> {
    let mut out = frame.clone();
    overlay_in_place(&mut out, labels)?;
    Ok(out)
}

/// [`overlay`] without the copy.
pub fn overlay_in_place(frame: &mut RgbImage, labels: &Mask) -> Result<()> {
    if (frame.width() as usize, frame.height() as usize) != (labels.width, labels.height) {
        return Err(EdgeError::input(format!(
            "overlay: labels are {}x{} but the frame is {}x{}",
            labels.height,
            labels.width,
            frame.height(),
            frame.width()
        )));
    }
    let a = TINT_ALPHA;
    for (px, &l) in frame.pixels_mut().zip(&labels.data) {
        if l != 0 {
            let c = target_colour(l);
            for (v, &ck) in px.0.iter_mut().zip(&c) {
                *v = ((*v as u16 * (256 - a) + ck as u16 * a) >> 8) as u8;
            }
        }
    }
    Ok(())
}

/// A label mask as an 8-bit grayscale image.
pub fn mask_image(labels: &Mask) -> Result<GrayImage> {
    GrayImage::from_raw(
        labels.width as u32,
        labels.height as u32,
        labels.data.clone(),
    )
    .ok_or_else(|| EdgeError::input("mask buffer does not match its size"))
}

/// Lets `save` write a PNG at a temporary path, then renames it over `path` (errors name `path`).
pub fn save_png_atomic(
    path: &Path,
    save: impl FnOnce(&Path) -> image::ImageResult<()>,
) -> Result<()> {
    write_atomic_with(path, |tmp| {
        save(tmp).map_err(|e| EdgeError::invalid(path, format!("cannot write PNG: {e}")))
    })
}

/// Writes `labels` as an 8-bit PNG (values = labels), atomically.
pub fn write_mask_png(path: &Path, labels: &Mask) -> Result<()> {
    let img = mask_image(labels)?;
    save_png_atomic(path, |tmp| img.save_with_format(tmp, ImageFormat::Png))
}

/// Writes an RGB image as PNG, atomically.
pub fn write_rgb_png(path: &Path, image: &RgbImage) -> Result<()> {
    save_png_atomic(path, |tmp| image.save_with_format(tmp, ImageFormat::Png))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tints_only_labelled_pixels() {
        let frame = RgbImage::from_pixel(3, 1, image::Rgb([100, 100, 100]));
        let labels = Mask::new(1, 3, vec![0, 1, 2]).unwrap();
        let o = overlay(&frame, &labels).unwrap();
        assert_eq!(o.get_pixel(0, 0).0, [100, 100, 100]);
        assert_ne!(o.get_pixel(1, 0).0, o.get_pixel(2, 0).0);
        assert_eq!(o.get_pixel(1, 0).0, [165, 62, 87]);
        let wrong = Mask::new(1, 2, vec![0, 1]).unwrap();
        assert!(overlay(&frame, &wrong).is_err());
    }
}
