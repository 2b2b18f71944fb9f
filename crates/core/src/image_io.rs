//! Image and label-PNG reading with one-line errors that name the file.
//!
//! * [`load_rgb`]: any image the `image` crate decodes (PNG, JPEG; grayscale, palette, RGBA,
//!   16-bit) converted to 8-bit RGB.
//! * [`load_label_png`]: the raw *values* of a mask PNG, never its colours: the luma value of a
//!   grayscale PNG, the palette **index** of a palette PNG (DAVIS-2017 object ids), the common
//!   value of an RGB PNG whose three channels are equal. Decoded with the `png` crate and no
//!   transformations, so indexed data stays indexed; bit depths below 8 are unpacked to their
//!   raw values (a 1-bit mask reads 0/1), 16-bit values must fit in 0..=255.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use image::RgbImage;

use crate::error::{EdgeError, Result};
use crate::tensor::Mask;

fn image_error(path: &Path, reason: impl std::fmt::Display) -> EdgeError {
    EdgeError::Image {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn open_file(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| EdgeError::io(path, e))
}

/// Loads any supported image (by content, not by extension) as 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let file = open_file(path)?;
    let reader = image::ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| EdgeError::io(path, e))?;
    if reader.format().is_none() {
        return Err(image_error(path, "unknown image format"));
    }
    let img = reader.decode().map_err(|e| image_error(path, e))?;
    Ok(img.to_rgb8())
}

/// Width and height of an image, read from its header only.
pub fn image_size(path: &Path) -> Result<(u32, u32)> {
    let file = open_file(path)?;
    let reader = image::ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| EdgeError::io(path, e))?;
    if reader.format().is_none() {
        return Err(image_error(path, "unknown image format"));
    }
    reader.into_dimensions().map_err(|e| image_error(path, e))
}

/// Header facts of a label PNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelPngInfo {
    pub width: u32,
    pub height: u32,
    /// Palette ("P" mode) PNG: values are palette indices.
    pub palette: bool,
}

fn png_reader(path: &Path) -> Result<png::Reader<BufReader<File>>> {
    let file = open_file(path)?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    decoder
        .read_info()
        .map_err(|e| image_error(path, format!("not a PNG label image: {e}")))
}

/// Reads a label PNG's header (size and whether it is a palette PNG) without decoding pixels.
pub fn label_png_info(path: &Path) -> Result<LabelPngInfo> {
    let reader = png_reader(path)?;
    let info = reader.info();
    Ok(LabelPngInfo {
        width: info.width,
        height: info.height,
        palette: info.color_type == png::ColorType::Indexed,
    })
}

/// Reads a mask PNG's raw values (see the module doc). Errors name the file.
pub fn load_label_png(path: &Path) -> Result<Mask> {
    let mut reader = png_reader(path)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| image_error(path, "image too large"))?;
    let mut buf = vec![0u8; size];
    let out = reader
        .next_frame(&mut buf)
        .map_err(|e| image_error(path, format!("corrupt PNG data: {e}")))?;
    let (w, h) = (out.width as usize, out.height as usize);
    let bits = out.bit_depth as usize;
    let samples = out.color_type.samples();
    let line = out.line_size;
    let mut data = Vec::with_capacity(w * h);

    // Raw sample `s` (0-based within the row) of row `y`.
    let sample = |row: &[u8], s: usize| -> u16 {
        match bits {
            16 => u16::from_be_bytes([row[2 * s], row[2 * s + 1]]),
            8 => row[s] as u16,
            1 | 2 | 4 => {
                let bit = s * bits;
                let byte = row[bit / 8];
                let shift = 8 - bits - (bit % 8);
                ((byte >> shift) & ((1u8 << bits) - 1)) as u16
            }
            _ => unreachable!("PNG bit depths are 1, 2, 4, 8, 16"),
        }
    };
    let to_u8 = |v: u16, x: usize, y: usize| -> Result<u8> {
        u8::try_from(v).map_err(|_| {
            EdgeError::invalid(
                path,
                format!("label value {v} at (x {x}, y {y}) does not fit in 0..=255"),
            )
        })
    };

    for y in 0..h {
        let row = &buf[y * line..(y + 1) * line];
        match out.color_type {
            png::ColorType::Grayscale
            | png::ColorType::Indexed
            | png::ColorType::GrayscaleAlpha => {
                // Gray (or index) is the first sample of each pixel; alpha is ignored.
                for x in 0..w {
                    data.push(to_u8(sample(row, x * samples), x, y)?);
                }
            }
            png::ColorType::Rgb | png::ColorType::Rgba => {
                for x in 0..w {
                    let r = sample(row, x * samples);
                    let g = sample(row, x * samples + 1);
                    let b = sample(row, x * samples + 2);
                    if r != g || g != b {
                        return Err(EdgeError::invalid(
                            path,
                            format!(
                                "colour label PNG: pixel (x {x}, y {y}) is ({r}, {g}, {b}); \
                                 a label PNG must be grayscale, palette, or RGB with equal channels"
                            ),
                        ));
                    }
                    data.push(to_u8(r, x, y)?);
                }
            }
        }
    }
    Mask::new(h, w, data).map_err(|e| EdgeError::invalid(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_tests::fixture_files::{write_palette_png, write_png_raw, TempDir};
    use image::{GrayImage, ImageBuffer, Luma, Rgb, Rgba};

    #[test]
    fn rgb_from_any_mode() {
        let dir = TempDir::new("image_io_rgb");
        let gray = dir.path().join("g.png");
        GrayImage::from_pixel(3, 2, Luma([100]))
            .save(&gray)
            .unwrap();
        let img = load_rgb(&gray).unwrap();
        assert_eq!(img.dimensions(), (3, 2));
        assert_eq!(img.get_pixel(1, 1).0, [100, 100, 100]);

        let rgba = dir.path().join("a.png");
        ImageBuffer::<Rgba<u8>, _>::from_pixel(2, 2, Rgba([1, 2, 3, 4]))
            .save(&rgba)
            .unwrap();
        assert_eq!(load_rgb(&rgba).unwrap().get_pixel(0, 0).0, [1, 2, 3]);

        let g16 = dir.path().join("g16.png");
        ImageBuffer::<Luma<u16>, _>::from_pixel(2, 2, Luma([65535]))
            .save(&g16)
            .unwrap();
        assert_eq!(load_rgb(&g16).unwrap().get_pixel(0, 0).0, [255, 255, 255]);

        let pal = dir.path().join("p.png");
        write_palette_png(&pal, 2, 1, &[0, 1], 8);
        // palette: index 0 -> black, 1 -> (128, 0, 0)
        assert_eq!(load_rgb(&pal).unwrap().get_pixel(1, 0).0, [128, 0, 0]);

        let jpg = dir.path().join("c.jpg");
        image::RgbImage::from_pixel(8, 8, Rgb([200, 10, 10]))
            .save(&jpg)
            .unwrap();
        let j = load_rgb(&jpg).unwrap();
        assert_eq!(j.dimensions(), (8, 8));
        assert!(j.get_pixel(4, 4).0[0] > 180);
        assert_eq!(image_size(&jpg).unwrap(), (8, 8));
    }

    #[test]
    fn rgb_errors_name_the_file() {
        let dir = TempDir::new("image_io_err");
        let missing = dir.path().join("missing.jpg");
        let e = load_rgb(&missing).unwrap_err().to_string();
        assert!(e.contains("missing.jpg"), "{e}");
        let junk = dir.path().join("junk.jpg");
        std::fs::write(&junk, b"this is not an image").unwrap();
        let e = load_rgb(&junk).unwrap_err().to_string();
        assert!(e.contains("junk.jpg"), "{e}");
        // Truncated PNG.
        let good = dir.path().join("good.png");
        GrayImage::from_pixel(16, 16, Luma([7]))
            .save(&good)
            .unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let trunc = dir.path().join("trunc.png");
        std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_rgb(&trunc).unwrap_err().to_string();
        assert!(e.contains("trunc.png"), "{e}");
        let e = load_label_png(&trunc).unwrap_err().to_string();
        assert!(e.contains("trunc.png"), "{e}");
        let e = load_label_png(&junk).unwrap_err().to_string();
        assert!(e.contains("junk.jpg"), "{e}");
        let e = load_label_png(&missing).unwrap_err().to_string();
        assert!(e.contains("missing.jpg"), "{e}");
    }

    #[test]
    fn label_gray_and_palette_indices() {
        let dir = TempDir::new("image_io_label");
        let l = dir.path().join("l.png");
        GrayImage::from_raw(3, 1, vec![0, 255, 17])
            .unwrap()
            .save(&l)
            .unwrap();
        let m = load_label_png(&l).unwrap();
        assert_eq!((m.height, m.width), (1, 3));
        assert_eq!(m.data, vec![0, 255, 17]);
        assert!(!label_png_info(&l).unwrap().palette);

        // Palette PNG: indices survive (not colours).
        let p = dir.path().join("p.png");
        write_palette_png(&p, 3, 2, &[0, 1, 2, 2, 1, 0], 8);
        let m = load_label_png(&p).unwrap();
        assert_eq!((m.height, m.width), (2, 3));
        assert_eq!(m.data, vec![0, 1, 2, 2, 1, 0]);
        let info = label_png_info(&p).unwrap();
        assert!(info.palette);
        assert_eq!((info.width, info.height), (3, 2));

        // Low bit depths: 2-bit palette with an odd width (row padding), 1-bit grayscale.
        let p2 = dir.path().join("p2.png");
        let idx = vec![0, 1, 2, 3, 3, 2, 1, 0, 1, 2];
        write_palette_png(&p2, 5, 2, &idx, 2);
        assert_eq!(load_label_png(&p2).unwrap().data, idx);
        let g1 = dir.path().join("g1.png");
        // 1-bit gray, width 9: row bytes = 2.
        let vals = vec![1u8, 0, 1, 1, 0, 0, 0, 1, 1];
        let mut packed = vec![0u8; 2];
        for (i, &v) in vals.iter().enumerate() {
            packed[i / 8] |= v << (7 - i % 8);
        }
        write_png_raw(
            &g1,
            9,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::One,
            &packed,
        );
        assert_eq!(load_label_png(&g1).unwrap().data, vals);
    }

    #[test]
    fn label_rgb_and_16bit() {
        let dir = TempDir::new("image_io_label_rgb");
        let eq = dir.path().join("eq.png");
        image::RgbImage::from_raw(2, 1, vec![5, 5, 5, 0, 0, 0])
            .unwrap()
            .save(&eq)
            .unwrap();
        assert_eq!(load_label_png(&eq).unwrap().data, vec![5, 0]);
        let col = dir.path().join("colour.png");
        image::RgbImage::from_raw(2, 1, vec![5, 5, 5, 0, 9, 0])
            .unwrap()
            .save(&col)
            .unwrap();
        let e = load_label_png(&col).unwrap_err().to_string();
        assert!(
            e.contains("colour.png") && e.contains("equal channels"),
            "{e}"
        );

        let g16 = dir.path().join("g16.png");
        ImageBuffer::<Luma<u16>, _>::from_raw(2, 1, vec![3, 200])
            .unwrap()
            .save(&g16)
            .unwrap();
        assert_eq!(load_label_png(&g16).unwrap().data, vec![3, 200]);
        let big = dir.path().join("big16.png");
        ImageBuffer::<Luma<u16>, _>::from_raw(2, 1, vec![3, 300])
            .unwrap()
            .save(&big)
            .unwrap();
        let e = load_label_png(&big).unwrap_err().to_string();
        assert!(e.contains("big16.png") && e.contains("300"), "{e}");
    }
}
