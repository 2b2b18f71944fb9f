//! PASCAL VOC 2012 semantic segmentation in the PASCAL-5i setting (methods.md §7.1, §7.5, §10.4).
//!
//! Layout (VOC2012 as distributed, plus the usual SBD-augmented labels):
//!
//! ```text
//! <root>/JPEGImages/<name>.jpg
//! <root>/SegmentationClassAug/<name>.png     # grayscale, values 0..20 and 255 (or:)
//! <root>/SegmentationClass/<name>.png        # palette PNG, indices 0..20 and 255
//! <root>/ImageSets/Segmentation/{train,val}.txt   # one name per line
//! ```
//!
//! * **Labels folder**: [`PascalOptions::labels`] if given, else `SegmentationClassAug` when it
//!   exists, else `SegmentationClass`. Values are read as raw values / palette indices.
//! * **List lines**: a name (`2007_000032`), or PFENet-style `JPEGImages/<name>.jpg
//!   SegmentationClassAug/<name>.png` pairs (the first path's stem is the name). Duplicates are
//!   dropped, order kept, blank lines skipped.
//! * **Classes**: VOC ids 1..=20 ([`VOC_CLASSES`]); fold i of PASCAL-5i has the novel ids
//!   `5i+1 ..= 5i+5` ([`pascal_fold_classes`]).
//! * **Label 255** (object boundaries / void): [`VoidLabel::Ignore`] keeps 255 in the masks so a
//!   `ClassIouAccumulator::with_ignore(Some(255))` drops those pixels from P and G (PANet,
//!   PFENet, BAM, HSNet); [`VoidLabel::Background`] turns them into background (OSLSM / SG-One).
//! * Any other value (21..=254) is an error naming the file. Each label is decoded once at open
//!   to count class pixels at original resolution (eligibility, e.g. PFENet's 2,048 px rule).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::RgbImage;

use crate::episodes::{Eligibility, Episode, EpisodeRecord, EpisodeSource};
use fss_core::choice::Choice;
use fss_core::davis::check_same_size;
use fss_core::error::{EdgeError, Result};
use fss_core::image_io::{image_size, load_label_png, load_rgb};
use fss_core::preprocess::InputSize;
use fss_core::tensor::Mask;

/// The 20 VOC classes; `VOC_CLASSES[i]` is id `i + 1`.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];
/// The void / boundary label.
pub const VOID: u8 = 255;
/// PASCAL-5i folds.
pub const PASCAL_FOLDS: usize = 4;

/// The 5 novel class ids of PASCAL-5i fold `fold` (`5 fold + 1 ..= 5 fold + 5`).
pub fn pascal_fold_classes(fold: usize) -> Result<Vec<u8>> {
    if fold >= PASCAL_FOLDS {
        return Err(EdgeError::input(format!(
            "PASCAL-5i fold {fold} out of range (folds are 0..3)"
        )));
    }
    let first = 5 * fold as u8 + 1;
    Ok((first..first + 5).collect())
}

/// The 15 base class ids of fold `fold`.
pub fn pascal_base_classes(fold: usize) -> Result<Vec<u8>> {
    let novel = pascal_fold_classes(fold)?;
    Ok((1..=20).filter(|c| !novel.contains(c)).collect())
}

/// What label 255 becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoidLabel {
    /// Kept as 255 in masks: excluded from prediction and ground truth when scoring.
    #[default]
    Ignore,
    /// Turned into background (0).
    Background,
}

fss_core::choices!(VoidLabel {
    Ignore => "ignore", "Kept as 255 in masks: excluded from prediction and ground truth when scoring";
    Background => "background", "Turned into background (0)";
});

impl FromStr for VoidLabel {
    type Err = EdgeError;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_name(s).ok_or_else(|| {
            EdgeError::input(format!(
                "unknown 255 handling {s:?} (expected {})",
                Self::names()
            ))
        })
    }
}

/// Options of [`PascalDataset::open`].
#[derive(Debug, Clone)]
pub struct PascalOptions {
    /// List name under `ImageSets/Segmentation` (`train`, `val`, ...), or a path to a list file.
    pub list: String,
    /// Labels folder name under the root (default: see the module doc).
    pub labels: Option<String>,
    pub void: VoidLabel,
}

impl Default for PascalOptions {
    fn default() -> Self {
        PascalOptions::val()
    }
}

impl PascalOptions {
    /// `val` list, default labels folder, 255 ignored.
    pub fn val() -> Self {
        PascalOptions {
            list: "val".into(),
            labels: None,
            void: VoidLabel::Ignore,
        }
    }
}

/// One image of the list.
#[derive(Debug, Clone)]
pub struct PascalImage {
    pub name: String,
    pub image_path: PathBuf,
    pub label_path: PathBuf,
    pub width: u32,
    pub height: u32,
    /// Pixels per value: `[0]` background, `[1..=20]` classes, `[21]` void (255).
    pub class_pixels: [u64; 22],
    /// OSLSM grid cells per value 0..=20 ([`super::oslsm_grid_histogram`]).
    pub oslsm_cells: [u32; 21],
}

/// A VOC2012-layout dataset read through one image list.
#[derive(Debug, Clone)]
pub struct PascalDataset {
    root: PathBuf,
    labels_dir: PathBuf,
    void: VoidLabel,
    images: Vec<PascalImage>,
}

/// The image names of a list file (see the module doc for the accepted line forms).
pub(crate) fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| EdgeError::io(path, e))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        let name = Path::new(first)
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                EdgeError::invalid(path, format!("line {}: no image name in {line:?}", i + 1))
            })?
            .to_string();
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    Ok(out)
}

impl PascalDataset {
    /// Opens the list of `options` under `root`, checks every image and label, counts pixels.
    pub fn open(root: &Path, options: &PascalOptions) -> Result<PascalDataset> {
        if !root.is_dir() {
            return Err(EdgeError::invalid(
                root,
                "VOC root folder does not exist (or is not a folder)",
            ));
        }
        let labels_dir = match &options.labels {
            Some(l) => root.join(l),
            None => {
                let aug = root.join("SegmentationClassAug");
                if aug.is_dir() {
                    aug
                } else {
                    root.join("SegmentationClass")
                }
            }
        };
        let jdir = root.join("JPEGImages");
        for d in [&jdir, &labels_dir] {
            if !d.is_dir() {
                return Err(EdgeError::invalid(d, "missing folder"));
            }
        }
        let list_path = {
            let p = Path::new(&options.list);
            if p.extension().is_some() || p.components().count() > 1 {
                p.to_path_buf()
            } else {
                root.join("ImageSets/Segmentation")
                    .join(format!("{}.txt", options.list))
            }
        };
        let names = read_list(&list_path)?;
        if names.is_empty() {
            return Err(EdgeError::invalid(&list_path, "image list is empty"));
        }
        let mut images = Vec::with_capacity(names.len());
        for name in names {
            let image_path = jdir.join(format!("{name}.jpg"));
            let label_path = labels_dir.join(format!("{name}.png"));
            if !image_path.is_file() {
                return Err(EdgeError::invalid(
                    &image_path,
                    format!("listed in {} but missing", list_path.display()),
                ));
            }
            if !label_path.is_file() {
                return Err(EdgeError::invalid(
                    &image_path,
                    format!("image has no label {}", label_path.display()),
                ));
            }
            let (w, h) = image_size(&image_path)?;
            let label = load_label_png(&label_path)?;
            check_same_size(
                &image_path,
                (w, h),
                &label_path,
                (label.width as u32, label.height as u32),
            )?;
            let mut hist = [0u64; 256];
            for &v in &label.data {
                hist[v as usize] += 1;
            }
            if let Some(bad) = (21..255).find(|&v| hist[v] > 0) {
                return Err(EdgeError::invalid(
                    &label_path,
                    format!("unexpected label value {bad} (VOC labels are 0..=20 and 255)"),
                ));
            }
            let mut class_pixels = [0u64; 22];
            class_pixels[..21].copy_from_slice(&hist[..21]);
            class_pixels[21] = hist[255];
            let mut oslsm_cells = [0u32; 21];
            oslsm_cells.copy_from_slice(&super::oslsm_grid_histogram(&label)[..21]);
            images.push(PascalImage {
                name,
                image_path,
                label_path,
                width: w,
                height: h,
                class_pixels,
                oslsm_cells,
            });
        }
        Ok(PascalDataset {
            root: root.to_path_buf(),
            labels_dir,
            void: options.void,
            images,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The labels folder in use.
    pub fn labels_dir(&self) -> &Path {
        &self.labels_dir
    }

    pub fn void(&self) -> VoidLabel {
        self.void
    }

    /// The value to pass to `ClassIouAccumulator::with_ignore`: `Some(255)` when 255 is ignored.
    pub fn ignore_label(&self) -> Option<u8> {
        (self.void == VoidLabel::Ignore).then_some(VOID)
    }

    pub fn images(&self) -> &[PascalImage] {
        &self.images
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn image(&self, idx: usize) -> Result<&PascalImage> {
        self.images.get(idx).ok_or_else(|| {
            EdgeError::input(format!(
                "image index {idx} out of range ({} images)",
                self.images.len()
            ))
        })
    }

    /// Pixels of class `id` (1..=20) in image `idx`.
    pub fn pixels(&self, idx: usize, id: u8) -> u64 {
        match (self.images.get(idx), id) {
            (Some(im), 1..=20) => im.class_pixels[id as usize],
            _ => 0,
        }
    }

    /// Indices (ascending) of images where class `id` covers `>= min_pixels` (and at least 1).
    pub fn eligible_images(&self, id: u8, min_pixels: u64) -> Vec<usize> {
        self.eligible_images_with(id, min_pixels, false)
    }

    /// [`Self::eligible_images`], and with `oslsm_grid` also holding at least
    /// [`super::OSLSM_MIN_CELLS`] cells of the OSLSM grid (methods.md §4.5).
    pub fn eligible_images_with(&self, id: u8, min_pixels: u64, oslsm_grid: bool) -> Vec<usize> {
        (0..self.images.len())
            .filter(|&i| {
                let n = self.pixels(i, id);
                n > 0
                    && n >= min_pixels
                    && (!oslsm_grid
                        || self.images[i]
                            .oslsm_cells
                            .get(id as usize)
                            .copied()
                            .unwrap_or(0)
                            >= super::OSLSM_MIN_CELLS)
            })
            .collect()
    }

    /// The label map: 0..=20, and 255 (void) or 0 per [`VoidLabel`].
    pub fn label_map(&self, idx: usize) -> Result<Mask> {
        let im = self.image(idx)?;
        let mut m = load_label_png(&im.label_path)?;
        if self.void == VoidLabel::Background {
            m.data
                .iter_mut()
                .filter(|v| **v == VOID)
                .for_each(|v| *v = 0);
        }
        Ok(m)
    }

    /// Binary mask of class `id`: 1 on the class, 0 elsewhere, 255 on void pixels when they are
    /// ignored.
    pub fn class_mask(&self, idx: usize, id: u8) -> Result<Mask> {
        if !(1..=20).contains(&id) {
            return Err(EdgeError::input(format!(
                "VOC class id {id} out of range (1..=20)"
            )));
        }
        let mut m = self.label_map(idx)?;
        for v in m.data.iter_mut() {
            *v = if *v == id {
                1
            } else if *v == VOID {
                VOID
            } else {
                0
            };
        }
        Ok(m)
    }

    /// The image as RGB.
    pub fn load_image(&self, idx: usize) -> Result<RgbImage> {
        load_rgb(&self.image(idx)?.image_path)
    }
}

/// PASCAL-5i episodes: classes keyed by VOC id 1..=20; records name the VOC id and the image
/// as `JPEGImages/<name>.jpg`.
impl EpisodeSource for PascalDataset {
    fn fold_classes(&self, fold: usize) -> Result<Vec<u8>> {
        pascal_fold_classes(fold)
    }

    fn eligible_images(&self, class: u8, rule: Eligibility) -> Vec<usize> {
        self.eligible_images_with(class, rule.min_pixels, rule.oslsm_grid)
    }

    fn no_class_error(&self, fold: usize, shots: usize, rule: Eligibility) -> EdgeError {
        EdgeError::invalid(
            self.root(),
            format!(
                "PASCAL-5i fold {fold} has no class with at least {} images of >= {} px{} in the list",
                shots + 1,
                rule.min_pixels,
                super::oslsm_rule_text(rule.oslsm_grid)
            ),
        )
    }

    fn record(&self, episode: &Episode) -> Result<EpisodeRecord> {
        EpisodeRecord::of(episode, episode.fold, episode.class as u32, |i| {
            self.image(i)
                .map(|im| format!("JPEGImages/{}.jpg", im.name))
        })
    }

    /// Images are found by name in the list (`JPEGImages/` and the extension optional).
    fn episode(&self, record: &EpisodeRecord) -> Result<Episode> {
        if !(1..=20).contains(&record.class_id) {
            return Err(EdgeError::input(format!(
                "episode class_id {} is not a VOC class id (1..=20)",
                record.class_id
            )));
        }
        let (supports, query) = record.images(|p| {
            let name = Path::new(p)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("");
            self.images()
                .iter()
                .position(|im| im.name == name)
                .ok_or_else(|| {
                    EdgeError::input(format!(
                        "episode image {p:?} is not in the list of {}",
                        self.root().display()
                    ))
                })
        })?;
        Ok(Episode {
            fold: record.fold,
            class: record.class_id as u8,
            supports,
            query,
        })
    }

    fn source_size(&self, i: usize) -> Result<InputSize> {
        let im = self.image(i)?;
        Ok(InputSize::new(im.height as usize, im.width as usize))
    }

    fn load_image(&self, i: usize) -> Result<RgbImage> {
        PascalDataset::load_image(self, i)
    }

    fn class_mask(&self, i: usize, class: u8) -> Result<Mask> {
        PascalDataset::class_mask(self, i, class)
    }

    fn describe(&self, i: usize, class: u8) -> Result<(PathBuf, String)> {
        let name = VOC_CLASSES.get((class as usize).wrapping_sub(1)).copied();
        Ok((
            self.image(i)?.label_path.clone(),
            name.unwrap_or("?").into(),
        ))
    }

    fn ignore_label(&self) -> Option<u8> {
        PascalDataset::ignore_label(self)
    }

    /// Keyed by VOC id.
    fn class_entry(&self, class: u8) -> Result<Option<(String, String)>> {
        Ok(VOC_CLASSES
            .get((class as usize).wrapping_sub(1))
            .map(|name| (class.to_string(), name.to_string())))
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A tiny VOC-layout folder from synthetic images (the repository ships no VOC images).

    use std::path::Path;

    use fss_tests::fixture_files::{write_gray_png, write_jpeg, write_palette_png};

    /// Writes `n` images `2008_0000NN` (8x6) with labels: image k has class `1 + k % 20` on the
    /// first `8 * (1 + k % 3)` pixels, a void (255) row below, background elsewhere.
    /// `aug = true` writes grayscale `SegmentationClassAug`, else palette `SegmentationClass`.
    /// Lists: `train.txt` = even k (names), `val.txt` = odd k (PFENet-style path pairs).
    pub fn write(root: &Path, n: usize, aug: bool) {
        let mut train = String::new();
        let mut val = String::new();
        for k in 0..n {
            let name = format!("2008_{k:06}");
            write_jpeg(
                &root.join(format!("JPEGImages/{name}.jpg")),
                8,
                6,
                [10 * k as u8, 50, 50],
            );
            let mut v = vec![0u8; 48];
            let rows = 1 + k % 3;
            v[..8 * rows].fill(1 + (k % 20) as u8);
            v[8 * rows..8 * rows + 8].fill(255);
            if aug {
                write_gray_png(
                    &root.join(format!("SegmentationClassAug/{name}.png")),
                    8,
                    6,
                    &v,
                );
            } else {
                write_palette_png(
                    &root.join(format!("SegmentationClass/{name}.png")),
                    8,
                    6,
                    &v,
                    8,
                );
            }
            if k % 2 == 0 {
                train.push_str(&format!("{name}\n"));
            } else {
                val.push_str(&format!(
                    "JPEGImages/{name}.jpg SegmentationClassAug/{name}.png\n"
                ));
            }
        }
        let sets = root.join("ImageSets/Segmentation");
        std::fs::create_dir_all(&sets).unwrap();
        std::fs::write(sets.join("train.txt"), train).unwrap();
        std::fs::write(sets.join("val.txt"), val).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_core::metrics::ClassIouAccumulator;
    use fss_tests::fixture_files::{write_gray_png, TempDir};

    #[test]
    fn folds_match_methods_7_1() {
        assert_eq!(pascal_fold_classes(0).unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(pascal_fold_classes(3).unwrap(), vec![16, 17, 18, 19, 20]);
        assert_eq!(VOC_CLASSES[5], "bus");
        assert_eq!(VOC_CLASSES[14], "person");
        assert_eq!(VOC_CLASSES[19], "tvmonitor");
        let base = pascal_base_classes(2).unwrap();
        assert_eq!(base.len(), 15);
        assert!(!base.contains(&11) && base.contains(&10) && base.contains(&16));
        assert!(pascal_fold_classes(4).is_err());
        assert_eq!(
            "background".parse::<VoidLabel>().unwrap(),
            VoidLabel::Background
        );
        assert!("x".parse::<VoidLabel>().is_err());
    }

    #[test]
    fn reads_both_label_kinds_and_both_list_forms() {
        for aug in [true, false] {
            let dir = TempDir::new("pascal");
            fixture::write(dir.path(), 8, aug);
            let ds = PascalDataset::open(dir.path(), &PascalOptions::val()).unwrap();
            let want = if aug {
                "SegmentationClassAug"
            } else {
                "SegmentationClass"
            };
            assert!(ds.labels_dir().ends_with(want));
            // val = odd k (path pairs).
            let names: Vec<&str> = ds.images().iter().map(|i| i.name.as_str()).collect();
            assert_eq!(
                names,
                ["2008_000001", "2008_000003", "2008_000005", "2008_000007"]
            );
            let im = &ds.images()[0]; // k = 1: class 2 on 16 px, 8 void
            assert_eq!((im.width, im.height), (8, 6));
            assert_eq!(ds.pixels(0, 2), 16);
            assert_eq!(im.class_pixels[21], 8);
            assert_eq!(im.class_pixels[0], 24);
            assert_eq!(ds.eligible_images(2, 16), vec![0]);
            assert!(ds.eligible_images(2, 17).is_empty());

            // 255 ignored: kept in the class mask and dropped from the scores.
            assert_eq!(ds.ignore_label(), Some(255));
            let m = ds.class_mask(0, 2).unwrap();
            assert_eq!(m.data.iter().filter(|&&v| v == 1).count(), 16);
            assert_eq!(m.data.iter().filter(|&&v| v == 255).count(), 8);
            let mut pred = m.clone();
            pred.data.iter_mut().for_each(|v| *v = (*v != 0) as u8); // predicts void as object
            let mut acc = ClassIouAccumulator::with_ignore(ds.ignore_label());
            acc.add(2, &pred, &m).unwrap();
            assert_eq!(acc.class_iou(2), Some(1.0));

            // 255 as background.
            let opts = PascalOptions {
                list: "train".into(),
                labels: None,
                void: VoidLabel::Background,
            };
            let ds = PascalDataset::open(dir.path(), &opts).unwrap();
            assert_eq!(ds.len(), 4);
            assert_eq!(ds.ignore_label(), None);
            let m = ds.class_mask(1, 3).unwrap(); // k = 2: class 3 on 24 px
            assert_eq!(m.count_nonzero(), 24);
            assert!(m.data.iter().all(|&v| v <= 1));
            assert!(ds.label_map(1).unwrap().data.iter().all(|&v| v != 255));
            assert_eq!(ds.load_image(0).unwrap().dimensions(), (8, 6));
            assert!(ds.class_mask(0, 21).is_err());
        }
    }

    #[test]
    fn errors_name_the_file() {
        let dir = TempDir::new("pascal_err");
        let e = PascalDataset::open(&dir.path().join("voc"), &PascalOptions::val())
            .unwrap_err()
            .to_string();
        assert!(e.contains("voc"), "{e}");
        let e = PascalDataset::open(dir.path(), &PascalOptions::val())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("JPEGImages") && e.contains("missing folder"),
            "{e}"
        );
        fixture::write(dir.path(), 4, true);
        let e = PascalDataset::open(
            dir.path(),
            &PascalOptions {
                list: "test".into(),
                ..PascalOptions::val()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("test.txt"), "{e}");
        // Unexpected label value.
        let mut v = vec![0u8; 48];
        v[3] = 77;
        write_gray_png(
            &dir.path().join("SegmentationClassAug/2008_000001.png"),
            8,
            6,
            &v,
        );
        let e = PascalDataset::open(dir.path(), &PascalOptions::val())
            .unwrap_err()
            .to_string();
        assert!(e.contains("2008_000001.png") && e.contains("77"), "{e}");
        // Label of another size; missing label; missing image.
        write_gray_png(
            &dir.path().join("SegmentationClassAug/2008_000001.png"),
            4,
            4,
            &[0; 16],
        );
        let e = PascalDataset::open(dir.path(), &PascalOptions::val())
            .unwrap_err()
            .to_string();
        assert!(e.contains("2008_000001.png") && e.contains("4x4"), "{e}");
        std::fs::remove_file(dir.path().join("SegmentationClassAug/2008_000001.png")).unwrap();
        let e = PascalDataset::open(dir.path(), &PascalOptions::val())
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no label"), "{e}");
        std::fs::remove_file(dir.path().join("JPEGImages/2008_000003.jpg")).unwrap();
        let e = PascalDataset::open(
            dir.path(),
            &PascalOptions {
                labels: Some("SegmentationClassAug".into()),
                list: dir
                    .path()
                    .join("ImageSets/Segmentation/val.txt")
                    .display()
                    .to_string(),
                void: VoidLabel::Ignore,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("2008_00000"), "{e}");
    }
}
