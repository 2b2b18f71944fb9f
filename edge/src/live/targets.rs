//! Named targets of the live pipeline and their support shots, kept on disk in a state folder
//! so they survive restarts:
//!
//! ```text
//! <state>/targets.json        the commit point (format, cache key, targets, per-shot prototypes)
//! <state>/shots/<id>.png      each shot's frame (lossless, to recompute prototypes)
//! <state>/shots/<id>_mask.png its support mask (255 = target)
//! ```
//!
//! Every file is written atomically and `targets.json` last, so a crash leaves the previous
//! state (plus, at worst, an unreferenced shot file). Prototypes are valid for one bundle,
//! input size and preprocessing (the [`CacheKey`]); when the key differs, they are recomputed
//! from the stored frames and masks ([`TargetStore::refresh`]).
//!
//! Scoring is PANet's N-way rule: target i's foreground prototype is the mean over its shots;
//! one background prototype is the mean over all shots of all targets.

use fss_core::dpnet::SupportMemory;
use fss_core::error::{EdgeError, Result};
use fss_core::fsutil::write_atomic;
use fss_core::method::{Method, StoredSupport, SupportState};
use fss_core::overlay::{save_png_atomic, target_colour};
use fss_core::preprocess::{resize_mask_nearest, InputSize};
use fss_core::prototype::{
    average_pooled_shots, cosine_logits, masked_average_pool, pooling_weights,
    weighted_average_pool, PooledShot, MAP_EPS,
};
use fss_core::tensor::{FeatureMap, Mask};
use fss_runtime::cache::CacheKey;
use fss_runtime::BundleEncoder;
use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const TARGETS_FORMAT: u32 = 1;
pub const TARGETS_FILE: &str = "targets.json";

/// Where the target is in a support frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Region {
    /// `[x, y, w, h]` in frame pixels (a box is a valid weak support, as PANet's bbox mode).
    Box([i64; 4]),
    /// Non-zero = target; the frame's size.
    Mask(Mask),
}

impl Region {
    /// The region as a mask of a `width` x `height` frame. A box is clipped to the frame and
    /// must keep some area; a mask must be the frame's size and mark something.
    pub fn to_mask(&self, width: u32, height: u32) -> Result<Mask> {
        let (w, h) = (width as i64, height as i64);
        match self {
            Region::Box([x, y, bw, bh]) => {
                if *bw <= 0 || *bh <= 0 {
                    return Err(EdgeError::input(format!(
                        "box [{x}, {y}, {bw}, {bh}] has no area: width and height must be positive"
                    )));
                }
                let (x0, y0) = ((*x).clamp(0, w), (*y).clamp(0, h));
                let (x1, y1) = ((x + bw).clamp(0, w), (y + bh).clamp(0, h));
                if x1 <= x0 || y1 <= y0 {
                    return Err(EdgeError::input(format!(
                        "box [{x}, {y}, {bw}, {bh}] lies outside the {width}x{height} frame"
                    )));
                }
                let mut data = vec![0u8; (w * h) as usize];
                for yy in y0..y1 {
                    data[(yy * w + x0) as usize..(yy * w + x1) as usize].fill(1);
                }
                Mask::new(height as usize, width as usize, data)
            }
            Region::Mask(m) => {
                if (m.width, m.height) != (width as usize, height as usize) {
                    return Err(EdgeError::input(format!(
                        "support mask is {}x{} but the frame is {}x{} (width x height)",
                        m.width, m.height, width, height
                    )));
                }
                if m.count_nonzero() == 0 {
                    return Err(EdgeError::input(
                        "support mask is empty: mark the object (non-zero pixels)",
                    ));
                }
                Ok(m.binarized())
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Region::Box(b) => format!("box {b:?}"),
            Region::Mask(m) => format!("mask of {} pixels", m.count_nonzero()),
        }
    }
}

/// One stored support shot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredShot {
    pub id: String,
    /// Frame and mask files, relative to the state folder.
    pub image: String,
    pub mask: String,
    /// How it was taken, e.g. `web: box [10, 20, 50, 40]`, `gpio: centre box`, `file a.jpg`.
    pub origin: String,
    /// The mask is a box: prototypes are refined ([`refined_box_prototypes`]).
    #[serde(default)]
    pub is_box: bool,
    pub created_ms: u64,
    pub foreground: Vec<f32>,
    pub background: Vec<f32>,
    /// DPNet: the shot's support memory ([`fss_core::dpnet`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<SupportMemory>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredTarget {
    pub name: String,
    pub shots: Vec<StoredShot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TargetsFile {
    format: u32,
    key: CacheKey,
    method: String,
    targets: Vec<StoredTarget>,
}

/// What the API and `edge support list` show of a target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetInfo {
    pub name: String,
    /// Its label in masks (1-based) and colour in overlays.
    pub label: u8,
    pub colour: String,
    pub shots: usize,
    pub origins: Vec<String>,
}

/// The targets of a state folder.
#[derive(Debug)]
pub struct TargetStore {
    dir: PathBuf,
    key: CacheKey,
    targets: Vec<StoredTarget>,
    /// Shots whose prototypes were made under another key and must be recomputed.
    stale: bool,
    next_id: u64,
}

/// Target names: 1..64 characters, letters, digits, `-`, `_`, `.` and spaces (they appear in
/// URLs, file listings and JSON events).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.trim().is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '));
    if ok {
        Ok(())
    } else {
        Err(EdgeError::input(format!(
            "target name '{name}' is not allowed: 1-64 letters, digits, '-', '_', '.' or spaces"
        )))
    }
}

/// At most this many refinement passes of a box support; they stop earlier when the kept cells
/// no longer change (see [`refined_box_prototypes`]).
pub const BOX_REFINE_PASSES: usize = 30;
/// A refinement pass that would keep less than this fraction of the box's pooling weight is
/// not applied (the box is then used as it is).
pub const BOX_REFINE_MIN_KEPT: f64 = 0.05;

/// Masked average pooling with pooling weights on the feature grid (MAP's epsilon).
fn weighted_pool(features: &FeatureMap, weights: &[f64]) -> Vec<f32> {
    weighted_average_pool(
        features,
        weights,
        weights.iter().sum::<f64>() + MAP_EPS as f64,
    )
}

/// Cosine of every feature cell with `p`.
fn cell_cosines(features: &FeatureMap, p: &[f32]) -> Result<Vec<f32>> {
    Ok(cosine_logits(features, &[p], 1.0)?.data)
}

/// Prototypes from a box support, refined: a box also covers background, which would pull the
/// foreground prototype towards it. The foreground starts from the box's central part
/// (`seed_weights`: objects fill the middle of their box more than its corners) and the
/// background from everything outside the box; each pass then keeps the cells inside the box
/// that are closer (cosine) to the foreground prototype than to the background one, re-pools the
/// foreground from them and moves the rejected ones to the background. This is the
/// feature-space analogue of GrabCut's box initialisation; PANet's own bbox mode pools the raw
/// box (methods.md §3).
pub fn refined_box_prototypes(
    features: &FeatureMap,
    box_weights: &[f64],
    seed_weights: &[f64],
    outside_weights: &[f64],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let seeded = seed_weights.iter().sum::<f64>() > 0.0;
    let mut fg = weighted_pool(features, if seeded { seed_weights } else { box_weights });
    let mut bg = weighted_pool(features, outside_weights);
    let box_total: f64 = box_weights.iter().sum();
    let mut previous: Vec<f64> = Vec::new();
    for _ in 0..BOX_REFINE_PASSES {
        let cf = cell_cosines(features, &fg)?;
        let cb = cell_cosines(features, &bg)?;
        let kept: Vec<f64> = box_weights
            .iter()
            .zip(cf.iter().zip(&cb))
            .map(|(&w, (f, b))| if w > 0.0 && f > b { w } else { 0.0 })
            .collect();
        if kept == previous || kept.iter().sum::<f64>() < BOX_REFINE_MIN_KEPT * box_total {
            break;
        }
        let moved: Vec<f64> = outside_weights
            .iter()
            .zip(box_weights.iter().zip(&kept))
            .map(|(&o, (&w, &k))| o + (w - k))
            .collect();
        fg = weighted_pool(features, &kept);
        bg = weighted_pool(features, &moved);
        previous = kept;
    }
    Ok((fg, bg))
}

/// The box of a box mask scaled by `factor` around its centre and clipped to the mask (an
/// empty mask if `mask` is empty): 0.5 gives its central part, 2.0 its surroundings.
pub fn box_scaled(mask: &Mask, factor: f64) -> Mask {
    let (w, h) = (mask.width, mask.height);
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..h {
        for x in 0..w {
            if mask.data[y * w + x] != 0 {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
    }
    let mut data = vec![0u8; w * h];
    if x0 != usize::MAX {
        let (cx, cy) = ((x0 + x1 + 1) as f64 / 2.0, (y0 + y1 + 1) as f64 / 2.0);
        let (hw, hh) = (
            (x1 - x0 + 1) as f64 * factor / 2.0,
            (y1 - y0 + 1) as f64 * factor / 2.0,
        );
        let clip = |v: f64, hi: usize| (v.round().max(0.0) as usize).min(hi);
        let (sx0, sx1) = (clip(cx - hw, w), clip(cx + hw, w));
        let (sy0, sy1) = (clip(cy - hh, h), clip(cy + hh, h));
        for y in sy0..sy1 {
            data[y * w + sx0..y * w + sx1].fill(1);
        }
    }
    Mask {
        height: h,
        width: w,
        data,
    }
}

/// What one shot leaves for scoring: foreground and background prototypes, and DPNet's support
/// memory.
pub struct ShotPrototypes {
    pub foreground: Vec<f32>,
    pub background: Vec<f32>,
    pub memory: Option<SupportMemory>,
}

/// The prototypes of one shot: the frame encoded at `size`, the mask resized (nearest) to
/// `size`, masked average pooling of each (of the bundle's support features: SG-One's guidance
/// features); a box support (`is_box`) is refined by [`refined_box_prototypes`]. A DPNet bundle
/// also gets the shot's support memory (of the box itself for a box).
pub fn shot_prototypes(
    encoder: &mut BundleEncoder,
    image: &RgbImage,
    mask: &Mask,
    size: InputSize,
    is_box: bool,
) -> Result<ShotPrototypes> {
    let fg = resize_mask_nearest(mask, size.height, size.width);
    if fg.count_nonzero() == 0 {
        return Err(EdgeError::input(format!(
            "the marked region vanishes at the model input {size}: mark a larger area"
        )));
    }
    let bg = Mask {
        height: fg.height,
        width: fg.width,
        data: fg.data.iter().map(|&v| (v == 0) as u8).collect(),
    };
    if bg.count_nonzero() == 0 {
        return Err(EdgeError::input(
            "the marked region covers the whole frame: leave some background around the object",
        ));
    }
    let features = encoder.encode_image(image, size)?;
    let features = encoder.support_features(features)?;
    let memory = encoder
        .keeps_support_memory()
        .then(|| fss_core::dpnet::shot_memory(&features, &fg));
    let (foreground, background) = if is_box {
        let (fh, fw) = (features.height, features.width);
        let (inside, _) = pooling_weights(&fg, fh, fw);
        let (seed, _) = pooling_weights(&box_scaled(&fg, 0.5), fh, fw);
        let (outside, _) = pooling_weights(&bg, fh, fw);
        refined_box_prototypes(&features, &inside, &seed, &outside)?
    } else {
        (
            masked_average_pool(&features, &fg),
            masked_average_pool(&features, &bg),
        )
    };
    Ok(ShotPrototypes {
        foreground,
        background,
        memory,
    })
}

fn mask_to_png_image(mask: &Mask) -> GrayImage {
    GrayImage::from_fn(mask.width as u32, mask.height as u32, |x, y| {
        image::Luma([if mask.data[y as usize * mask.width + x as usize] != 0 {
            255
        } else {
            0
        }])
    })
}

impl TargetStore {
    /// Opens (or starts) the store of `dir` for `key`. A damaged `targets.json` is an error
    /// naming the file (nothing is overwritten); one made under another key is loaded as
    /// stale: call [`TargetStore::refresh`] before scoring.
    pub fn open(dir: &Path, key: CacheKey) -> Result<TargetStore> {
        Self::open_inner(dir, key, false)
    }

    /// Opens the store under the key its file was written with (listing and removing targets
    /// need no bundle). A store without a file gets an empty key (it matches no bundle).
    pub fn open_as_written(dir: &Path) -> Result<TargetStore> {
        let none = CacheKey {
            bundle_hash: String::new(),
            size: [0, 0],
            mean: [0.0; 3],
            std: [0.0; 3],
        };
        Self::open_inner(dir, none, true)
    }

    fn open_inner(dir: &Path, key: CacheKey, adopt_key: bool) -> Result<TargetStore> {
        let path = dir.join(TARGETS_FILE);
        let mut store = TargetStore {
            dir: dir.to_path_buf(),
            key,
            targets: Vec::new(),
            stale: false,
            next_id: 0,
        };
        if !path.exists() {
            return Ok(store);
        }
        let bytes = std::fs::read(&path).map_err(|e| EdgeError::io(&path, e))?;
        let file: TargetsFile = serde_json::from_slice(&bytes)
            .map_err(|e| EdgeError::invalid(&path, format!("damaged targets file: {e}")))?;
        if file.format != TARGETS_FORMAT {
            return Err(EdgeError::invalid(
                &path,
                format!(
                    "targets file format {} is not supported (this edge reads {TARGETS_FORMAT})",
                    file.format
                ),
            ));
        }
        let dim_ok = |v: &Vec<f32>| v.iter().all(|x| x.is_finite());
        for t in &file.targets {
            check_name(&t.name).map_err(|e| EdgeError::invalid(&path, e.to_string()))?;
            if t.shots.is_empty()
                || t.shots
                    .iter()
                    .any(|s| !dim_ok(&s.foreground) || !dim_ok(&s.background))
            {
                return Err(EdgeError::invalid(
                    &path,
                    format!(
                        "damaged targets file: target '{}' has no valid shot",
                        t.name
                    ),
                ));
            }
        }
        store.stale = file.key != store.key || file.method != "panet";
        if adopt_key {
            store.key = file.key.clone();
            store.stale = file.method != "panet";
        }
        store.next_id = file
            .targets
            .iter()
            .flat_map(|t| &t.shots)
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .map_or(0, |m| m + 1);
        store.targets = file.targets;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_stale(&self) -> bool {
        self.stale
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn names(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.name.clone()).collect()
    }

    pub fn list(&self) -> Vec<TargetInfo> {
        self.targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let label = (i + 1) as u8;
                let [r, g, b] = target_colour(label);
                TargetInfo {
                    name: t.name.clone(),
                    label,
                    colour: format!("#{r:02x}{g:02x}{b:02x}"),
                    shots: t.shots.len(),
                    origins: t.shots.iter().map(|s| s.origin.clone()).collect(),
                }
            })
            .collect()
    }

    /// The N-way support state of `method` (None without targets or while stale): PANet's
    /// averaging of the stored shots ([`average_pooled_shots`]); SG-One keeps each shot's
    /// vector too; DPNet every target's shots' memories concatenated. Shots that do not fit
    /// together (prototypes or memories of different sizes, a DPNet shot stored without its
    /// memory) are an error naming the target, not a silently dropped memory.
    pub fn prototypes(&self, method: Method) -> Result<Option<SupportState>> {
        if self.targets.is_empty() || self.stale {
            return Ok(None);
        }
        let ways: Vec<Vec<PooledShot>> = self
            .targets
            .iter()
            .map(|t| {
                t.shots
                    .iter()
                    .map(|s| PooledShot {
                        foreground: &s.foreground,
                        background: &s.background,
                    })
                    .collect()
            })
            .collect();
        let mut stored = {
            let p = average_pooled_shots(&ways)?;
            StoredSupport {
                background: p.background,
                foreground: p.foreground,
                ..StoredSupport::default()
            }
        };
        if method.pools_guidance() {
            stored.per_shot = self
                .targets
                .iter()
                .map(|t| t.shots.iter().map(|s| s.foreground.clone()).collect())
                .collect();
        }
        if method.keeps_support_memory() {
            for t in &self.targets {
                let parts: Vec<&SupportMemory> = t
                    .shots
                    .iter()
                    .enumerate()
                    .map(|(k, s)| {
                        s.memory.as_ref().ok_or_else(|| {
                            EdgeError::input(format!(
                                "target {:?}: shot {k} has no support memory (stored for another method; refresh the targets)",
                                t.name
                            ))
                        })
                    })
                    .collect::<Result<_>>()?;
                stored.memories.push(
                    fss_core::dpnet::concat_memories(&parts)
                        .map_err(|e| EdgeError::input(format!("target {:?}: {e}", t.name)))?,
                );
            }
        }
        SupportState::from_stored(method, stored).map(Some)
    }

    /// Adds a shot of `name` (a new target if the name is new; with `replace`, the target's
    /// earlier shots are dropped). Encodes the frame, stores frame and mask, commits.
    #[allow(clippy::too_many_arguments)]
    pub fn add_shot(
        &mut self,
        encoder: &mut BundleEncoder,
        size: InputSize,
        name: &str,
        image: &RgbImage,
        region: &Region,
        origin: &str,
        replace: bool,
    ) -> Result<TargetInfo> {
        check_name(name)?;
        if self.stale {
            self.refresh(encoder, size)?;
        }
        if !self.targets.iter().any(|t| t.name == name) && self.targets.len() >= 254 {
            return Err(EdgeError::input("254 targets already: remove one first"));
        }
        let mask = region.to_mask(image.width(), image.height())?;
        let is_box = matches!(region, Region::Box(_));
        let ShotPrototypes {
            foreground,
            background,
            memory,
        } = shot_prototypes(encoder, image, &mask, size, is_box)?;
        let id = format!("{:06}", self.next_id);
        let image_rel = format!("shots/{id}.png");
        let mask_rel = format!("shots/{id}_mask.png");
        save_png_atomic(&self.dir.join(&image_rel), |p| {
            image.save_with_format(p, image::ImageFormat::Png)
        })?;
        let mask_img = mask_to_png_image(&mask);
        save_png_atomic(&self.dir.join(&mask_rel), |p| {
            mask_img.save_with_format(p, image::ImageFormat::Png)
        })?;
        self.next_id += 1;
        let shot = StoredShot {
            id,
            image: image_rel,
            mask: mask_rel,
            origin: origin.to_string(),
            is_box,
            created_ms: super::source::now_ms(),
            foreground,
            background,
            memory,
        };
        let mut previous = Vec::new();
        match self.targets.iter_mut().find(|t| t.name == name) {
            Some(t) if replace => previous = std::mem::replace(&mut t.shots, vec![shot]),
            Some(t) => t.shots.push(shot),
            None => self.targets.push(StoredTarget {
                name: name.to_string(),
                shots: vec![shot],
            }),
        }
        self.commit()?;
        self.remove_files(&previous);
        Ok(self
            .list()
            .into_iter()
            .find(|t| t.name == name)
            .expect("just added"))
    }

    /// Removes a target and its shot files. Errors when there is no such target.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        let Some(i) = self.targets.iter().position(|t| t.name == name) else {
            return Err(EdgeError::input(format!(
                "no target named '{name}' (targets: {})",
                if self.targets.is_empty() {
                    "none".to_string()
                } else {
                    self.names().join(", ")
                }
            )));
        };
        let t = self.targets.remove(i);
        self.commit()?;
        self.remove_files(&t.shots);
        Ok(())
    }

    fn remove_files(&self, shots: &[StoredShot]) {
        for s in shots {
            let _ = std::fs::remove_file(self.dir.join(&s.image));
            let _ = std::fs::remove_file(self.dir.join(&s.mask));
        }
    }

    /// Recomputes every shot's prototypes from its stored frame and mask under this store's
    /// key (after a bundle or input-size change), then commits.
    pub fn refresh(&mut self, encoder: &mut BundleEncoder, size: InputSize) -> Result<()> {
        for t in &mut self.targets {
            for s in &mut t.shots {
                let img_path = self.dir.join(&s.image);
                let image = fss_core::image_io::load_rgb(&img_path)?;
                let mask = fss_core::image_io::load_label_png(&self.dir.join(&s.mask))?;
                let mask = Region::Mask(mask).to_mask(image.width(), image.height())?;
                let p = shot_prototypes(encoder, &image, &mask, size, s.is_box)?;
                s.foreground = p.foreground;
                s.background = p.background;
                s.memory = p.memory;
            }
        }
        self.stale = false;
        self.commit()
    }

    /// Writes `targets.json` atomically (the commit point).
    fn commit(&self) -> Result<()> {
        let file = TargetsFile {
            format: TARGETS_FORMAT,
            key: self.key.clone(),
            method: "panet".to_string(),
            targets: self.targets.clone(),
        };
        let path = self.dir.join(TARGETS_FILE);
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| EdgeError::invalid(&path, format!("cannot encode targets: {e}")))?;
        write_atomic(&path, &json)
    }

    /// Modification time of `targets.json` (to notice another process's `edge support` edits).
    pub fn file_mtime(dir: &Path) -> Option<std::time::SystemTime> {
        std::fs::metadata(dir.join(TARGETS_FILE))
            .and_then(|m| m.modified())
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_become_clipped_masks() {
        let m = Region::Box([2, 1, 3, 2]).to_mask(6, 4).unwrap();
        assert_eq!(m.count_nonzero(), 6);
        assert_eq!(m.data[6 + 2], 1);
        assert_eq!(m.data[6 + 1], 0);
        let clipped = Region::Box([-5, -5, 7, 6]).to_mask(6, 4).unwrap();
        assert_eq!(clipped.count_nonzero(), 2);
        let e = Region::Box([10, 10, 3, 3])
            .to_mask(6, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside"), "{e}");
        let e = Region::Box([1, 1, 0, 3])
            .to_mask(6, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no area"), "{e}");
        let e = Region::Mask(Mask::new(2, 2, vec![0; 4]).unwrap())
            .to_mask(2, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        assert!(Region::Mask(Mask::new(2, 2, vec![1; 4]).unwrap())
            .to_mask(3, 2)
            .is_err());
    }

    #[test]
    fn box_refinement_drops_the_background_inside_the_box() {
        // 1 x 6 feature row: cells 0-3 in the box; cells 0-1 are object ([1, 0]), 2-3 and the
        // outside 4-5 are background ([0, 1]).
        let f = FeatureMap::new(
            2,
            1,
            6,
            vec![1., 1., 0., 0., 0., 0., 0., 0., 1., 1., 1., 1.],
        )
        .unwrap();
        let inside = [1., 1., 1., 1., 0., 0.];
        let outside = [0., 0., 0., 0., 1., 1.];
        let (fg, bg) = refined_box_prototypes(&f, &inside, &[0.0; 6], &outside).unwrap();
        assert!(fg[0] > 0.99 && fg[1] < 0.01, "{fg:?}");
        assert!(bg[1] > 0.99 && bg[0] < 0.01, "{bg:?}");
        // The raw box would mix both halves.
        let raw = weighted_pool(&f, &inside);
        assert!((raw[0] - 0.5).abs() < 1e-3);
        // Seeded from the centre of the box (cells 1-2: half object, half background).
        let (fg, _) =
            refined_box_prototypes(&f, &inside, &[0., 1., 1., 0., 0., 0.], &outside).unwrap();
        assert!(fg[0] > 0.99, "{fg:?}");
    }

    #[test]
    fn scaled_boxes_share_the_centre_and_are_clipped() {
        let m = Region::Box([2, 4, 8, 4]).to_mask(12, 10).unwrap();
        let c = box_scaled(&m, 0.5);
        assert_eq!(c.count_nonzero(), 4 * 2);
        assert_eq!(c.data[5 * 12 + 4], 1);
        assert_eq!(c.data[5 * 12 + 3], 0);
        // Doubled: 16 x 8 around (6, 6), clipped to 12 x 10 from row 2.
        assert_eq!(box_scaled(&m, 2.0).count_nonzero(), 12 * 8);
        assert_eq!(
            box_scaled(&Mask::new(2, 2, vec![0; 4]).unwrap(), 0.5).count_nonzero(),
            0
        );
    }

    fn stored_shot(foreground: Vec<f32>, memory: Option<SupportMemory>) -> StoredShot {
        StoredShot {
            id: "1".into(),
            image: "1.png".into(),
            mask: "1.mask.png".into(),
            origin: "test".into(),
            is_box: false,
            created_ms: 0,
            background: vec![0.0; foreground.len()],
            foreground,
            memory,
        }
    }

    fn store_of(targets: Vec<StoredTarget>) -> TargetStore {
        TargetStore {
            dir: PathBuf::from("unused"),
            key: CacheKey {
                bundle_hash: String::new(),
                size: [0, 0],
                mean: [0.0; 3],
                std: [0.0; 3],
            },
            targets,
            stale: false,
            next_id: 0,
        }
    }

    /// PANet's averaging of the stored shots; DPNet memories concatenated per target; a DPNet
    /// shot without a memory, and memories that do not fit together, are errors naming the
    /// target (they used to vanish silently).
    #[test]
    fn prototypes_average_the_shots_and_refuse_memories_that_do_not_fit() {
        let memory = |channels: usize| SupportMemory {
            channels,
            locations: 1,
            features: vec![1.0; channels],
            mask: vec![1.0],
        };
        let target = |name: &str, shots: Vec<StoredShot>| StoredTarget {
            name: name.into(),
            shots,
        };
        let store = store_of(vec![target(
            "cup",
            vec![
                stored_shot(vec![1.0, 3.0], Some(memory(2))),
                stored_shot(vec![3.0, 5.0], Some(memory(2))),
            ],
        )]);
        let Some(SupportState::DpNet(p)) = store.prototypes(Method::DpNet).unwrap() else {
            panic!("a DPNet support state")
        };
        assert_eq!(p.prototypes.foreground, vec![vec![2.0, 4.0]]);
        assert_eq!((p.memories.len(), p.memories[0].locations), (1, 2));
        // The other methods keep the averaged vectors (SG-One also each shot's).
        let Some(SupportState::SgOne(g)) = store.prototypes(Method::SgOne).unwrap() else {
            panic!("an SG-One support state")
        };
        assert_eq!(g.vectors.foreground, vec![vec![2.0, 4.0]]);
        assert_eq!(g.per_shot, vec![vec![vec![1.0, 3.0], vec![3.0, 5.0]]]);
        assert_eq!(
            store
                .prototypes(Method::Panet)
                .unwrap()
                .unwrap()
                .prototypes(),
            &p.prototypes
        );
        let store = store_of(vec![target(
            "cup",
            vec![
                stored_shot(vec![1.0, 3.0], Some(memory(2))),
                stored_shot(vec![3.0, 5.0], None),
            ],
        )]);
        let e = store.prototypes(Method::DpNet).unwrap_err().to_string();
        assert!(e.contains("cup") && e.contains("no support memory"), "{e}");
        assert!(store.prototypes(Method::Panet).unwrap().is_some());
        let store = store_of(vec![target(
            "cup",
            vec![
                stored_shot(vec![1.0, 3.0], Some(memory(2))),
                stored_shot(vec![3.0, 5.0], Some(memory(3))),
            ],
        )]);
        let e = store.prototypes(Method::DpNet).unwrap_err().to_string();
        assert!(e.contains("cup") && e.contains("support memory 1"), "{e}");
        assert_eq!(
            store_of(Vec::new()).prototypes(Method::Panet).unwrap(),
            None
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("red cup-2").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }
}
