//! Dataset readers: image and label-PNG decoding ([`image_io`]), DAVIS video segmentation
//! ([`davis`]), COCO semantic masks in the COCO128 layout ([`coco`]), COCO instances JSON with
//! rasterisation following pycocotools ([`coco_json`]), PASCAL VOC / PASCAL-5i ([`pascal`]), the user
//! folder format ([`folder`]) and whole-dataset checks listing every problem ([`check`]).
//!
//! Every reader validates its layout when it is opened and reports problems as one-line errors
//! that name the offending file or folder.

pub mod check;
pub mod coco;
pub mod coco_json;
pub mod davis;
pub mod folder;
pub mod image_io;
pub mod pascal;

pub use coco::{base_classes, fold_classes, CocoMaskDataset, FoldSplit, PoolImage};
pub use davis::{DavisDataset, DavisKind, DavisOptions, Sequence, Target};
pub use image_io::{image_size, label_png_info, load_label_png, load_rgb, LabelPngInfo};

/// OSLSM / SG-One's small-object rule keeps an (image, class) pair when the class holds more
/// than 2 cells of a 1/32 grid (methods.md §4.5): `SGOne:util.py change_coordinates(mask, 32,
/// 0)` pads the mask by 15 px (top and left; bottom and right up to a multiple of 32) and
/// nearest-downsamples it by 32, which samples the padded mask at `32 i + 16`, i.e. the original
/// pixel `(32 i + 1, 32 j + 1)` (samples that fall in the padding are background).
pub const OSLSM_MIN_CELLS: u32 = 3;

/// How many of the OSLSM grid samples ([`OSLSM_MIN_CELLS`]) inside the image hold each value.
pub fn oslsm_grid_histogram(mask: &crate::tensor::Mask) -> [u32; 256] {
    let mut hist = [0u32; 256];
    for y in (1..mask.height).step_by(32) {
        let row = &mask.data[y * mask.width..(y + 1) * mask.width];
        for x in (1..mask.width).step_by(32) {
            hist[row[x] as usize] += 1;
        }
    }
    hist
}

/// " and >= 3 OSLSM grid cells" when the rule is on (for eligibility messages), else "".
pub fn oslsm_rule_text(oslsm_grid: bool) -> String {
    if oslsm_grid {
        format!(" and >= {OSLSM_MIN_CELLS} OSLSM grid cells")
    } else {
        String::new()
    }
}

/// Where the shared real data lives relative to this crate (`/work/shared/data` style layout:
/// `<repo>/../shared/data`), if it exists. Tests on real data use this and skip (saying so)
/// when it is absent.
pub fn shared_data_dir() -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    p.is_dir().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Mask;

    #[test]
    fn oslsm_grid_samples_original_pixels_32i_plus_1() {
        // 70 x 70: samples at rows and columns 1, 33, 65 (nine cells).
        let mut m = Mask::new(70, 70, vec![0; 4900]).unwrap();
        let h = oslsm_grid_histogram(&m);
        assert_eq!((h[0], h[7]), (9, 0));
        for (y, x) in [(1, 1), (33, 65), (65, 33)] {
            m.data[y * 70 + x] = 7;
        }
        // Next to a sample is not a sample.
        m.data[2 * 70 + 1] = 7;
        m.data[32 * 70 + 33] = 7;
        let h = oslsm_grid_histogram(&m);
        assert_eq!((h[0], h[7]), (6, 3));
        assert!(h[7] >= OSLSM_MIN_CELLS);
        // A 1-pixel image has no sample (row 1 does not exist).
        assert_eq!(
            oslsm_grid_histogram(&Mask::new(1, 1, vec![7]).unwrap())[7],
            0
        );
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Small synthetic fixtures written to a private temporary folder.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A temporary folder removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let p = std::env::temp_dir().join(format!(
                "edge-test-{tag}-{}-{n}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

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
}
