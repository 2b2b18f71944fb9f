//! Small image files for the unit tests of the readers: raw, palette and grey PNGs and flat
//! JPEGs, written into a [`TempDir`].

pub use crate::TempDir;
use std::path::Path;

/// Writes raw (already packed) PNG sample data.
pub fn write_png_raw(
    path: &Path,
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
) {
    write_png_full(path, width, height, color, depth, None, data);
}

fn write_png_full(
    path: &Path,
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    palette: Option<Vec<u8>>,
    data: &[u8],
) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    enc.set_color(color);
    enc.set_depth(depth);
    if let Some(p) = palette {
        enc.set_palette(p);
    }
    let mut w = enc.write_header().unwrap();
    w.write_image_data(data).unwrap();
    w.finish().unwrap();
}

/// Writes a palette PNG of the given indices (one per pixel, row-major) at `bits` per index
/// (1, 2, 4 or 8). Palette entry k is (128 * (k & 1), 128 * ((k >> 1) & 1), 128 * ((k >> 2) & 1))
/// as in DAVIS.
pub fn write_palette_png(path: &Path, width: u32, height: u32, indices: &[u8], bits: u8) {
    assert_eq!(indices.len(), (width * height) as usize);
    let n = 1usize << bits;
    let mut pal = Vec::with_capacity(3 * n);
    for k in 0..n {
        pal.push(if k & 1 != 0 { 128 } else { 0 });
        pal.push(if k & 2 != 0 { 128 } else { 0 });
        pal.push(if k & 4 != 0 { 128 } else { 0 });
    }
    let bits_us = bits as usize;
    let row_bytes = (width as usize * bits_us).div_ceil(8);
    let mut data = vec![0u8; row_bytes * height as usize];
    for y in 0..height as usize {
        for x in 0..width as usize {
            let v = indices[y * width as usize + x];
            assert!((v as usize) < n);
            let bit = x * bits_us;
            data[y * row_bytes + bit / 8] |= v << (8 - bits_us - bit % 8);
        }
    }
    let depth = match bits {
        1 => png::BitDepth::One,
        2 => png::BitDepth::Two,
        4 => png::BitDepth::Four,
        8 => png::BitDepth::Eight,
        _ => panic!("bad bit depth"),
    };
    write_png_full(
        path,
        width,
        height,
        png::ColorType::Indexed,
        depth,
        Some(pal),
        &data,
    );
}

/// Writes an 8-bit grayscale PNG (mode L).
pub fn write_gray_png(path: &Path, width: u32, height: u32, values: &[u8]) {
    write_png_raw(
        path,
        width,
        height,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        values,
    );
}

/// Writes a flat-colour JPEG.
pub fn write_jpeg(path: &Path, width: u32, height: u32, rgb: [u8; 3]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    image::RgbImage::from_pixel(width, height, image::Rgb(rgb))
        .save(path)
        .unwrap();
}
