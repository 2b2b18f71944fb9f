//! Dataset readers: COCO semantic masks in the COCO128 layout ([`coco`]), COCO instances JSON with
//! rasterisation following pycocotools ([`coco_json`]), PASCAL VOC / PASCAL-5i ([`pascal`]), the user
//! folder format ([`folder`]) and whole-dataset checks listing every problem ([`check`]).
//!
//! Every reader validates its layout when it is opened and reports problems as one-line errors
//! that name the offending file or folder. Image and label-PNG decoding
//! (`fss_core::image_io`) and the DAVIS sequence reader (`fss_core::davis`) live in `fss-core`:
//! the device replays DAVIS sequences too.

pub mod check;
pub mod coco;
pub mod coco_json;
pub mod folder;
pub mod pascal;

pub use coco::{base_classes, fold_classes, CocoMaskDataset, FoldSplit, PoolImage};

/// OSLSM / SG-One's small-object rule keeps an (image, class) pair when the class holds more
/// than 2 cells of a 1/32 grid (methods.md §4.5): `SGOne:util.py change_coordinates(mask, 32,
/// 0)` pads the mask by 15 px (top and left; bottom and right up to a multiple of 32) and
/// nearest-downsamples it by 32, which samples the padded mask at `32 i + 16`, i.e. the original
/// pixel `(32 i + 1, 32 j + 1)` (samples that fall in the padding are background).
pub const OSLSM_MIN_CELLS: u32 = 3;

/// How many of the OSLSM grid samples ([`OSLSM_MIN_CELLS`]) inside the image hold each value.
pub fn oslsm_grid_histogram(mask: &fss_core::tensor::Mask) -> [u32; 256] {
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

#[cfg(test)]
mod tests {
    use super::*;
    use fss_core::tensor::Mask;

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
