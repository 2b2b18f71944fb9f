//! The support path: support images and masks (files) -> PANet prototypes, N targets with K
//! shots each (design.md, "Per-method head contracts": one foreground prototype per target,
//! the mean over its shots, and one background prototype shared over all shots).
//!
//! A mask's foreground is its non-zero pixels. The background of a shot is every pixel that is
//! foreground of no shot using the same image file, so that one image with several marked
//! targets does not count target A as background of target B.

use super::BundleEncoder;
use crate::cache::SupportRecord;
use fss_core::bundle::sha256_file;
use fss_core::davis::check_same_size;
use fss_core::error::{EdgeError, Result};
use fss_core::image_io::{load_label_png, load_rgb};
use fss_core::method::SupportState;
use fss_core::preprocess::{resize_mask_nearest, InputSize};
use fss_core::prototype::SupportShot;
use fss_core::tensor::{FeatureMap, Mask};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One support shot: an image and its mask (non-zero = the target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportShotSpec {
    pub image: PathBuf,
    pub mask: PathBuf,
}

/// One target (label i + 1 of the segmentation for the i-th target) and its shots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub name: String,
    pub shots: Vec<SupportShotSpec>,
}

/// Checks names and counts: at least one target, each with at least one shot, names unique,
/// non-empty and at most 254 targets (labels are 8-bit).
pub fn validate_targets(targets: &[TargetSpec]) -> Result<()> {
    if targets.is_empty() {
        return Err(EdgeError::input(
            "no support given: need at least one support image and mask",
        ));
    }
    if targets.len() > 254 {
        return Err(EdgeError::input(format!(
            "{} targets: at most 254 (labels are 8-bit)",
            targets.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for t in targets {
        if t.name.trim().is_empty() {
            return Err(EdgeError::input("a target name is empty"));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(EdgeError::input(format!(
                "target name '{}' is given twice",
                t.name
            )));
        }
        if t.shots.is_empty() {
            return Err(EdgeError::input(format!(
                "target '{}' has no support image and mask",
                t.name
            )));
        }
    }
    Ok(())
}

/// The cache records of the supports: target, file names and contents' sha256.
pub fn support_records(targets: &[TargetSpec]) -> Result<Vec<SupportRecord>> {
    let mut out = Vec::new();
    for t in targets {
        for s in &t.shots {
            out.push(SupportRecord {
                target: t.name.clone(),
                image: s.image.display().to_string(),
                image_sha256: sha256_file(&s.image)?,
                mask: s.mask.display().to_string(),
                mask_sha256: sha256_file(&s.mask)?,
            });
        }
    }
    Ok(out)
}

fn image_key(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Loads a support mask, checks it against its image's size and that it marks something.
pub fn load_support_mask(image: &Path, image_wh: (u32, u32), mask: &Path) -> Result<Mask> {
    let m = load_label_png(mask)?;
    check_same_size(image, image_wh, mask, (m.width as u32, m.height as u32))?;
    let fg = m.binarized();
    if fg.count_nonzero() == 0 {
        return Err(EdgeError::invalid(
            mask,
            "support mask is empty (no non-zero pixel): it marks no object to learn from",
        ));
    }
    Ok(fg)
}

/// Encodes the support images (each distinct file once) and computes the PANet prototypes at
/// `size`. Errors name the offending file: unreadable image, mask of another size, empty
/// mask, an object too small to survive resizing to `size`.
pub fn compute_prototypes(
    encoder: &mut BundleEncoder,
    targets: &[TargetSpec],
    size: InputSize,
) -> Result<SupportState> {
    validate_targets(targets)?;
    struct ImageEntry {
        features: FeatureMap,
        /// Union of the foregrounds of all shots of this image, original resolution.
        union: Mask,
    }
    let mut images: HashMap<PathBuf, ImageEntry> = HashMap::new();
    let mut masks: Vec<Vec<(PathBuf, Mask)>> = Vec::with_capacity(targets.len());
    // Masks first (cheap, and errors before any encoding), then encode each image once.
    let mut sizes: HashMap<PathBuf, (u32, u32)> = HashMap::new();
    for t in targets {
        let mut ms = Vec::with_capacity(t.shots.len());
        for s in &t.shots {
            let key = image_key(&s.image);
            let wh = match sizes.get(&key) {
                Some(wh) => *wh,
                None => {
                    let wh = fss_core::image_io::image_size(&s.image)?;
                    sizes.insert(key.clone(), wh);
                    wh
                }
            };
            ms.push((key, load_support_mask(&s.image, wh, &s.mask)?));
        }
        masks.push(ms);
    }
    for (t, ms) in targets.iter().zip(&masks) {
        for (s, (key, fg)) in t.shots.iter().zip(ms) {
            if !images.contains_key(key) {
                let img = load_rgb(&s.image)?;
                let features = encoder.encode_image(&img, size)?;
                images.insert(
                    key.clone(),
                    ImageEntry {
                        features,
                        union: Mask::new(fg.height, fg.width, vec![0; fg.height * fg.width])?,
                    },
                );
            }
            let entry = images.get_mut(key).expect("inserted above");
            for (u, &v) in entry.union.data.iter_mut().zip(&fg.data) {
                *u |= v;
            }
        }
    }
    let mut ways = Vec::with_capacity(targets.len());
    for (t, ms) in targets.iter().zip(&masks) {
        let mut shots = Vec::with_capacity(ms.len());
        for (s, (key, fg)) in t.shots.iter().zip(ms) {
            let entry = &images[key];
            let foreground = resize_mask_nearest(fg, size.height, size.width);
            if foreground.count_nonzero() == 0 {
                return Err(EdgeError::invalid(
                    &s.mask,
                    format!("the marked object vanishes when the mask is resized to the model input {size}: mark a larger area"),
                ));
            }
            let not_union = Mask {
                height: entry.union.height,
                width: entry.union.width,
                data: entry.union.data.iter().map(|&v| (v == 0) as u8).collect(),
            };
            let background = resize_mask_nearest(&not_union, size.height, size.width);
            shots.push(SupportShot {
                features: entry.features.clone(),
                foreground,
                background,
            });
        }
        ways.push(shots);
    }
    encoder.prototypes(&ways)
}
