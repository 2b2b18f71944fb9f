//! COCO semantic masks, COCO-20i folds and class eligibility (docs/evaluation.md, "COCO
//! few-shot episodes"; methods.md §7.2), from either of two layouts.
//!
//! The COCO128 layout (label PNGs):
//!
//! ```text
//! <root>/annotations/instances_train2017.json   # its `categories` array: the 80 thing classes
//! <root>/images/{train2017,val2017}/<image id>.jpg
//! <root>/masks/{train2017,val2017}/<image id>.png   # mode L, value = COCO category id
//! ```
//!
//! COCO as distributed (the full COCO-20i data; instance annotations rasterised in Rust by
//! [`super::coco_json`], as pycocotools does):
//!
//! ```text
//! <root>/annotations/instances_{train2017,val2017}.json
//! <root>/{train2017,val2017}/<file_name>          # the `file_name` of each `images` entry
//! ```
//!
//! The layout is chosen by what is there: `images/` and `masks/` make the COCO128 layout, else
//! `annotations/instances_<split>.json` next to a `<split>/` folder the distributed one (a split
//! whose JSON or folder is missing is left out). In the distributed layout:
//!
//! * **Labels**: an image's label map is [`CocoInstances::class_mask`] of its annotations
//!   (larger instances painted first, crowd regions included), the same rule the COCO128 PNGs
//!   follow (99.992% pixel agreement on COCO128, see [`super::coco_json`]).
//! * **Pool**: every `images` entry of `instances_train2017.json` then `instances_val2017.json`,
//!   each sorted by `file_name`; an entry whose file is missing is an error naming it. Every
//!   image's annotations are rasterised once at open (on all cores) to count class pixels; the
//!   image's size is the JSON's, checked against the decoded image when it is loaded.
//! * **Categories**: those of `instances_train2017.json` (else `instances_val2017.json`); both
//!   splits must list the same ones.
//!
//! * **Classes**: the 80 categories of `instances_train2017.json`, indexed **1..=80 by the rank
//!   of their category id** (ascending id, whatever the file's order). Class index 0 is
//!   background. Mask values that are not one of these ids (0 unlabelled, 92..200 stuff, gaps)
//!   are background.
//! * **Pool**: every image under `images/train2017` then `images/val2017` (each sorted by file
//!   name) that has `masks/<split>/<stem>.png`; the image id is the file stem as an integer.
//!   Pool indices are positions in this order. Each mask is decoded once at open to count the
//!   pixels of every class at original resolution; mask and image sizes are checked then.
//! * **Eligibility**: a class is eligible in an image where it covers `>= min_pixels` pixels
//!   ([`DEFAULT_MIN_PIXELS`] = 2048) at original resolution.
//! * **Folds** ([`FoldSplit`]): interleaved (FWB / COCO-20i as in evaluation.md): fold f =
//!   class indices with `(index - 1) mod 4 == f`; contiguous (PANet): `20 f + 1 ..= 20 f + 20`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use image::RgbImage;

use super::coco_json::{ClassMaskOptions, CocoInstances};
use crate::episodes::{Eligibility, Episode, EpisodeRecord, EpisodeSource};
use fss_core::davis::check_same_size;
use fss_core::error::{EdgeError, Result};
use fss_core::image_io::{image_size, load_label_png, load_rgb};
use fss_core::preprocess::InputSize;
use fss_core::tensor::Mask;

/// Number of thing classes (class indices 1..=80).
pub const NUM_CLASSES: usize = 80;
/// Number of COCO-20i folds.
pub const NUM_FOLDS: usize = 4;
/// Classes per fold.
pub const CLASSES_PER_FOLD: usize = NUM_CLASSES / NUM_FOLDS;
/// Default eligibility threshold (pixels at original resolution).
pub const DEFAULT_MIN_PIXELS: u64 = 2048;
/// The image splits of the pool, in pool order.
pub const SPLITS: [&str; 2] = ["train2017", "val2017"];

/// How the 80 classes are divided into 4 folds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FoldSplit {
    /// FWB / HSNet / PFENet: fold f = indices with `(index - 1) mod 4 == f` (the project default).
    #[default]
    Interleaved,
    /// PANet / SMCP: fold f = indices `20 f + 1 ..= 20 f + 20`.
    Contiguous,
}

impl FoldSplit {
    /// Fold of a class index (1..=80).
    pub fn fold_of(self, class_index: u8) -> usize {
        let i = class_index as usize - 1;
        match self {
            FoldSplit::Interleaved => i % NUM_FOLDS,
            FoldSplit::Contiguous => i / CLASSES_PER_FOLD,
        }
    }
}

impl fmt::Display for FoldSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FoldSplit::Interleaved => "interleaved",
            FoldSplit::Contiguous => "contiguous",
        })
    }
}

impl FromStr for FoldSplit {
    type Err = EdgeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "interleaved" | "fwb" => Ok(FoldSplit::Interleaved),
            "contiguous" | "panet" => Ok(FoldSplit::Contiguous),
            _ => Err(EdgeError::input(format!(
                "unknown fold split {s:?} (expected interleaved or contiguous)"
            ))),
        }
    }
}

/// Errors unless `fold` is 0..4.
pub fn check_fold(fold: usize) -> Result<()> {
    if fold >= NUM_FOLDS {
        return Err(EdgeError::input(format!(
            "fold {fold} out of range (folds are 0..{})",
            NUM_FOLDS - 1
        )));
    }
    Ok(())
}

/// The 20 novel class indices (ascending) of `fold`. Panics if `fold >= 4`
/// (validate user input with [`check_fold`]).
pub fn fold_classes(split: FoldSplit, fold: usize) -> Vec<u8> {
    assert!(fold < NUM_FOLDS, "fold {fold} out of range");
    (1..=NUM_CLASSES as u8)
        .filter(|&c| split.fold_of(c) == fold)
        .collect()
}

/// The 60 base class indices (ascending) of `fold`: every class not in [`fold_classes`].
/// Panics if `fold >= 4`.
pub fn base_classes(split: FoldSplit, fold: usize) -> Vec<u8> {
    assert!(fold < NUM_FOLDS, "fold {fold} out of range");
    (1..=NUM_CLASSES as u8)
        .filter(|&c| split.fold_of(c) != fold)
        .collect()
}

/// One thing category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category {
    /// COCO category id (1..90).
    pub id: u8,
    pub name: String,
}

/// One image of the pool.
#[derive(Debug, Clone)]
pub struct PoolImage {
    /// Full path of the image.
    pub image_path: PathBuf,
    /// Path relative to the dataset root with `/` separators, e.g. `images/train2017/000000000009.jpg`
    /// (the form used in episode JSON Lines).
    pub rel_path: String,
    /// The label PNG (COCO128 layout) or the instances JSON the image's labels come from.
    pub mask_path: PathBuf,
    /// `train2017` or `val2017`.
    pub split: String,
    pub image_id: u64,
    pub width: u32,
    pub height: u32,
    /// Pixels per class index at original resolution; `[0]` is background (length 81).
    pub class_pixels: Vec<u64>,
    /// OSLSM grid cells per class index ([`super::oslsm_grid_histogram`]; length 81).
    pub oslsm_cells: Vec<u32>,
}

/// Where a pool's labels come from (see the module doc).
#[derive(Debug, Clone)]
enum LabelSource {
    /// COCO128: one label PNG per image (`PoolImage::mask_path`), value = COCO category id.
    Pngs,
    /// COCO as distributed: the parsed instances file of each split, by split name.
    Instances(HashMap<String, Arc<CocoInstances>>),
}

/// A COCO mask pool (COCO128 or distributed layout).
#[derive(Debug, Clone)]
pub struct CocoMaskDataset {
    root: PathBuf,
    /// `categories[i]` is class index `i + 1`.
    categories: Vec<Category>,
    /// COCO id (mask value) -> class index (0 = background).
    id_to_class: [u8; 256],
    images: Vec<PoolImage>,
    by_rel_path: HashMap<String, usize>,
    labels: LabelSource,
}

#[derive(serde::Deserialize)]
struct InstancesFile {
    categories: Vec<CategoryJson>,
}

#[derive(serde::Deserialize)]
struct CategoryJson {
    id: u64,
    name: String,
}

fn read_categories(path: &Path) -> Result<Vec<Category>> {
    let file = std::fs::File::open(path).map_err(|e| EdgeError::io(path, e))?;
    let parsed: InstancesFile = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| EdgeError::invalid(path, format!("not a COCO instances file: {e}")))?;
    thing_categories(path, parsed.categories.into_iter().map(|c| (c.id, c.name)))
}

/// The 80 thing categories of an instances file, sorted by id, checked.
fn thing_categories(
    path: &Path,
    categories: impl Iterator<Item = (u64, String)>,
) -> Result<Vec<Category>> {
    let mut cats = Vec::new();
    for (raw_id, name) in categories {
        let id = u8::try_from(raw_id)
            .ok()
            .filter(|&id| id > 0)
            .ok_or_else(|| {
                EdgeError::invalid(
                    path,
                    format!("category id {raw_id} of {name:?} is not in 1..=255"),
                )
            })?;
        cats.push(Category { id, name });
    }
    cats.sort_by_key(|c| c.id);
    if cats.windows(2).any(|w| w[0].id == w[1].id) {
        return Err(EdgeError::invalid(path, "duplicate category ids"));
    }
    if cats.len() != NUM_CLASSES {
        return Err(EdgeError::invalid(
            path,
            format!(
                "expected the {NUM_CLASSES} COCO thing categories, found {}",
                cats.len()
            ),
        ));
    }
    Ok(cats)
}

const IMAGE_EXTS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Whether `root` holds COCO as distributed: `annotations/instances_<split>.json` next to a
/// `<split>/` folder for at least one split.
pub fn is_distributed_layout(root: &Path) -> bool {
    SPLITS.iter().any(|split| {
        root.join(format!("annotations/instances_{split}.json"))
            .is_file()
            && root.join(split).is_dir()
    })
}

/// Pixels per class index and OSLSM cells per class index of a label map of COCO ids.
fn class_counts(mask: &Mask, id_to_class: &[u8; 256]) -> (Vec<u64>, Vec<u32>) {
    let mut hist = [0u64; 256];
    for &v in &mask.data {
        hist[v as usize] += 1;
    }
    let mut class_pixels = vec![0u64; NUM_CLASSES + 1];
    for (v, &n) in hist.iter().enumerate() {
        class_pixels[id_to_class[v] as usize] += n;
    }
    let mut oslsm_cells = vec![0u32; NUM_CLASSES + 1];
    for (v, &n) in super::oslsm_grid_histogram(mask).iter().enumerate() {
        oslsm_cells[id_to_class[v] as usize] += n;
    }
    (class_pixels, oslsm_cells)
}

impl CocoMaskDataset {
    /// Opens the pool under `root` (either layout, see the module doc) and counts class pixels
    /// once.
    pub fn open(root: &Path) -> Result<CocoMaskDataset> {
        if !root.is_dir() {
            return Err(EdgeError::invalid(
                root,
                "COCO root folder does not exist (or is not a folder)",
            ));
        }
        if !(root.join("images").is_dir() && root.join("masks").is_dir())
            && is_distributed_layout(root)
        {
            return Self::open_distributed(root);
        }
        let categories = read_categories(&root.join("annotations/instances_train2017.json"))?;
        let mut id_to_class = [0u8; 256];
        for (i, c) in categories.iter().enumerate() {
            id_to_class[c.id as usize] = (i + 1) as u8;
        }
        let images_dir = root.join("images");
        if !images_dir.is_dir() {
            return Err(EdgeError::invalid(&images_dir, "missing folder"));
        }

        let mut images = Vec::new();
        for split in SPLITS {
            let idir = images_dir.join(split);
            let mdir = root.join("masks").join(split);
            if !idir.is_dir() || !mdir.is_dir() {
                continue;
            }
            let mut files: Vec<PathBuf> = Vec::new();
            for entry in std::fs::read_dir(&idir).map_err(|e| EdgeError::io(&idir, e))? {
                let p = entry.map_err(|e| EdgeError::io(&idir, e))?.path();
                let ok = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()));
                if ok && p.is_file() {
                    files.push(p);
                }
            }
            files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
            for image_path in files {
                let stem = image_path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string();
                let mask_path = mdir.join(format!("{stem}.png"));
                if !mask_path.is_file() {
                    continue;
                }
                let image_id: u64 = stem.parse().map_err(|_| {
                    EdgeError::invalid(
                        &image_path,
                        "image file name is not an integer COCO image id",
                    )
                })?;
                let mask = load_label_png(&mask_path)?;
                let (w, h) = image_size(&image_path)?;
                check_same_size(
                    &image_path,
                    (w, h),
                    &mask_path,
                    (mask.width as u32, mask.height as u32),
                )?;
                let (class_pixels, oslsm_cells) = class_counts(&mask, &id_to_class);
                let file_name = image_path
                    .file_name()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                images.push(PoolImage {
                    rel_path: format!("images/{split}/{file_name}"),
                    image_path,
                    mask_path,
                    split: split.to_string(),
                    image_id,
                    width: w,
                    height: h,
                    class_pixels,
                    oslsm_cells,
                });
            }
        }
        if images.is_empty() {
            return Err(EdgeError::invalid(
                root,
                "no image under images/{train2017,val2017} has a mask under masks/<split>/<id>.png \
                 (and no annotations/instances_<split>.json with a <split>/ folder: COCO as distributed)",
            ));
        }
        Ok(Self::assemble(
            root,
            categories,
            id_to_class,
            images,
            LabelSource::Pngs,
        ))
    }

    fn assemble(
        root: &Path,
        categories: Vec<Category>,
        id_to_class: [u8; 256],
        images: Vec<PoolImage>,
        labels: LabelSource,
    ) -> CocoMaskDataset {
        let by_rel_path = images
            .iter()
            .enumerate()
            .map(|(i, im)| (im.rel_path.clone(), i))
            .collect();
        CocoMaskDataset {
            root: root.to_path_buf(),
            categories,
            id_to_class,
            images,
            by_rel_path,
            labels,
        }
    }

    /// COCO as distributed (see the module doc).
    fn open_distributed(root: &Path) -> Result<CocoMaskDataset> {
        let mut instances: Vec<(&str, Arc<CocoInstances>)> = Vec::new();
        for split in SPLITS {
            let json = root.join(format!("annotations/instances_{split}.json"));
            if json.is_file() && root.join(split).is_dir() {
                instances.push((split, Arc::new(CocoInstances::open(&json)?)));
            }
        }
        let (_, first) = instances.first().ok_or_else(|| {
            EdgeError::invalid(
                root,
                "no annotations/instances_<split>.json with a <split>/ folder",
            )
        })?;
        let categories = thing_categories(
            first.path(),
            first.categories.iter().map(|c| (c.id, c.name.clone())),
        )?;
        for (_, inst) in &instances[1..] {
            if inst.categories.len() != categories.len()
                || inst
                    .categories
                    .iter()
                    .zip(&categories)
                    .any(|(a, b)| a.id != b.id as u64)
            {
                return Err(EdgeError::invalid(
                    inst.path(),
                    format!(
                        "its categories differ from those of {}",
                        first.path().display()
                    ),
                ));
            }
        }
        let mut id_to_class = [0u8; 256];
        for (i, c) in categories.iter().enumerate() {
            id_to_class[c.id as usize] = (i + 1) as u8;
        }
        let mut images = Vec::new();
        for (split, inst) in &instances {
            let mut entries: Vec<_> = inst.images.iter().collect();
            entries.sort_by(|a, b| a.file_name.cmp(&b.file_name));
            for e in &entries {
                let image_path = root.join(split).join(&e.file_name);
                if !image_path.is_file() {
                    return Err(EdgeError::invalid(
                        &image_path,
                        format!(
                            "image {} listed in {} is missing",
                            e.id,
                            inst.path().display()
                        ),
                    ));
                }
            }
            let counts = rasterise_all(inst, &entries, &id_to_class)?;
            for (e, (class_pixels, oslsm_cells)) in entries.iter().zip(counts) {
                images.push(PoolImage {
                    image_path: root.join(split).join(&e.file_name),
                    rel_path: format!("{split}/{}", e.file_name),
                    mask_path: inst.path().to_path_buf(),
                    split: split.to_string(),
                    image_id: e.id,
                    width: e.width,
                    height: e.height,
                    class_pixels,
                    oslsm_cells,
                });
            }
        }
        if images.is_empty() {
            return Err(EdgeError::invalid(
                root,
                "the instances files list no image",
            ));
        }
        let labels = LabelSource::Instances(
            instances
                .into_iter()
                .map(|(split, inst)| (split.to_string(), inst))
                .collect(),
        );
        Ok(Self::assemble(
            root,
            categories,
            id_to_class,
            images,
            labels,
        ))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The 80 categories; `categories()[i]` is class index `i + 1`.
    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    fn category(&self, class_index: u8) -> Result<&Category> {
        (class_index as usize)
            .checked_sub(1)
            .and_then(|i| self.categories.get(i))
            .ok_or_else(|| {
                EdgeError::input(format!(
                    "class index {class_index} out of range (1..={NUM_CLASSES})"
                ))
            })
    }

    /// COCO category id of a class index.
    pub fn class_id(&self, class_index: u8) -> Result<u8> {
        Ok(self.category(class_index)?.id)
    }

    /// Category name of a class index.
    pub fn class_name(&self, class_index: u8) -> Result<&str> {
        Ok(&self.category(class_index)?.name)
    }

    /// Class index (1..=80) of a COCO category id, `None` for stuff / unknown ids.
    pub fn class_index_of(&self, coco_id: u32) -> Option<u8> {
        if coco_id > 255 {
            return None;
        }
        let c = self.id_to_class[coco_id as usize];
        (c != 0).then_some(c)
    }

    /// The pool, in pool-index order.
    pub fn images(&self) -> &[PoolImage] {
        &self.images
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The image at a pool index (error if out of range).
    pub fn image(&self, image_idx: usize) -> Result<&PoolImage> {
        self.images.get(image_idx).ok_or_else(|| {
            EdgeError::input(format!(
                "image index {image_idx} out of range ({} images)",
                self.images.len()
            ))
        })
    }

    /// Pool index of an image by its root-relative path (`images/<split>/<file>`; `\` accepted).
    pub fn find_image(&self, rel_path: &str) -> Option<usize> {
        let norm = rel_path.replace('\\', "/");
        let norm = norm.trim_start_matches("./");
        self.by_rel_path.get(norm).copied()
    }

    /// Pool indices of one split (`train2017` / `val2017`), ascending.
    pub fn indices_of_split(&self, split: &str) -> Vec<usize> {
        (0..self.images.len())
            .filter(|&i| self.images[i].split == split)
            .collect()
    }

    /// Pixels of a class index (0 = background) in an image at original resolution.
    pub fn pixels(&self, image_idx: usize, class_index: u8) -> u64 {
        self.images
            .get(image_idx)
            .and_then(|im| im.class_pixels.get(class_index as usize))
            .copied()
            .unwrap_or(0)
    }

    /// Whether a class covers `>= min_pixels` in an image.
    pub fn is_eligible(&self, image_idx: usize, class_index: u8, min_pixels: u64) -> bool {
        class_index != 0 && {
            let n = self.pixels(image_idx, class_index);
            n > 0 && n >= min_pixels
        }
    }

    /// Pool indices (ascending) where the class is eligible.
    pub fn eligible_images(&self, class_index: u8, min_pixels: u64) -> Vec<usize> {
        self.eligible_images_with(class_index, min_pixels, false)
    }

    /// [`Self::eligible_images`], and with `oslsm_grid` also holding at least
    /// [`super::OSLSM_MIN_CELLS`] cells of the OSLSM grid.
    pub fn eligible_images_with(
        &self,
        class_index: u8,
        min_pixels: u64,
        oslsm_grid: bool,
    ) -> Vec<usize> {
        (0..self.images.len())
            .filter(|&i| {
                self.is_eligible(i, class_index, min_pixels)
                    && (!oslsm_grid
                        || self.images[i].oslsm_cells[class_index as usize]
                            >= super::OSLSM_MIN_CELLS)
            })
            .collect()
    }

    /// Pool indices (ascending, deduplicated) of `subset` where the class is eligible.
    pub fn eligible_images_in(
        &self,
        class_index: u8,
        min_pixels: u64,
        subset: &[usize],
    ) -> Vec<usize> {
        let mut v: Vec<usize> = subset
            .iter()
            .copied()
            .filter(|&i| self.is_eligible(i, class_index, min_pixels))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The image's labels at original resolution as COCO category ids (0 unlabelled; stuff ids
    /// in the COCO128 PNGs).
    fn raw_labels(&self, image_idx: usize) -> Result<Mask> {
        let im = self.image(image_idx)?;
        match &self.labels {
            LabelSource::Pngs => load_label_png(&im.mask_path),
            LabelSource::Instances(by_split) => {
                let inst = by_split.get(&im.split).ok_or_else(|| {
                    EdgeError::input(format!("no instances file for split {}", im.split))
                })?;
                inst.class_mask(im.image_id, ClassMaskOptions::default())
            }
        }
    }

    /// The image's label map at original resolution: class index 1..=80, 0 background.
    pub fn label_map(&self, image_idx: usize) -> Result<Mask> {
        let raw = self.raw_labels(image_idx)?;
        Ok(Mask {
            height: raw.height,
            width: raw.width,
            data: raw
                .data
                .iter()
                .map(|&v| self.id_to_class[v as usize])
                .collect(),
        })
    }

    /// Binary (0/1) mask of one class index at original resolution.
    pub fn class_mask(&self, image_idx: usize, class_index: u8) -> Result<Mask> {
        let coco_id = self.class_id(class_index)?;
        Ok(self.raw_labels(image_idx)?.binary_of(coco_id))
    }

    /// The image as RGB (grayscale JPEGs converted).
    pub fn load_image(&self, image_idx: usize) -> Result<RgbImage> {
        load_rgb(&self.image(image_idx)?.image_path)
    }

    /// Image and binary class mask, sizes checked.
    pub fn load_pair(&self, image_idx: usize, class_index: u8) -> Result<(RgbImage, Mask)> {
        let im = self.image(image_idx)?;
        let img = load_rgb(&im.image_path)?;
        let mask = self.class_mask(image_idx, class_index)?;
        check_same_size(
            &im.image_path,
            img.dimensions(),
            &im.mask_path,
            (mask.width as u32, mask.height as u32),
        )?;
        Ok((img, mask))
    }
}

/// Every image's class pixel and OSLSM cell counts, rasterised on all cores (in `entries` order).
fn rasterise_all(
    inst: &CocoInstances,
    entries: &[&super::coco_json::ImageInfo],
    id_to_class: &[u8; 256],
) -> Result<Vec<(Vec<u64>, Vec<u32>)>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16);
    let chunk = entries.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|e| {
                            let mask = inst.class_mask(e.id, ClassMaskOptions::default())?;
                            Ok(class_counts(&mask, id_to_class))
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(entries.len());
        for w in workers {
            out.extend(w.join().expect("a rasterising thread panicked")?);
        }
        Ok(out)
    })
}

/// A COCO pool with its fold split: the [`EpisodeSource`] of the COCO-20i protocol (classes
/// keyed by class index 1..=80; records name the COCO category id).
#[derive(Clone, Copy)]
pub struct CocoFolds<'a> {
    pub dataset: &'a CocoMaskDataset,
    pub split: FoldSplit,
}

impl EpisodeSource for CocoFolds<'_> {
    fn fold_classes(&self, fold: usize) -> Result<Vec<u8>> {
        check_fold(fold)?;
        let mut classes = fold_classes(self.split, fold);
        classes.sort_unstable();
        classes.dedup();
        Ok(classes)
    }

    fn eligible_images(&self, class: u8, rule: Eligibility) -> Vec<usize> {
        self.dataset
            .eligible_images_with(class, rule.min_pixels, rule.oslsm_grid)
    }

    fn no_class_error(&self, fold: usize, shots: usize, rule: Eligibility) -> EdgeError {
        EdgeError::input(format!(
            "fold {fold} ({} split) has no class with at least {} images of >= {} px{}",
            self.split,
            shots + 1,
            rule.min_pixels,
            super::oslsm_rule_text(rule.oslsm_grid)
        ))
    }

    fn record(&self, episode: &Episode) -> Result<EpisodeRecord> {
        let class_id = self.dataset.class_id(episode.class)? as u32;
        EpisodeRecord::of(episode, episode.fold, class_id, |i| {
            self.dataset.image(i).map(|im| im.rel_path.clone())
        })
    }

    /// Unknown class ids (stuff, ids of no category) and image paths are errors.
    fn episode(&self, record: &EpisodeRecord) -> Result<Episode> {
        let class = self
            .dataset
            .class_index_of(record.class_id)
            .ok_or_else(|| {
                EdgeError::input(format!(
                    "episode class_id {} is not one of the dataset's 80 thing categories",
                    record.class_id
                ))
            })?;
        let (supports, query) = record.images(|p| {
            self.dataset.find_image(p).ok_or_else(|| {
                EdgeError::input(format!(
                    "episode image {p:?} is not in the pool under {}",
                    self.dataset.root().display()
                ))
            })
        })?;
        Ok(Episode {
            fold: record.fold,
            class,
            supports,
            query,
        })
    }

    fn source_size(&self, i: usize) -> Result<InputSize> {
        let im = self.dataset.image(i)?;
        Ok(InputSize::new(im.height as usize, im.width as usize))
    }

    fn load_image(&self, i: usize) -> Result<RgbImage> {
        self.dataset.load_image(i)
    }

    fn class_mask(&self, i: usize, class: u8) -> Result<Mask> {
        self.dataset.class_mask(i, class)
    }

    fn describe(&self, i: usize, class: u8) -> Result<(PathBuf, String)> {
        Ok((
            self.dataset.image(i)?.mask_path.clone(),
            self.dataset.class_name(class)?.into(),
        ))
    }

    /// Keyed by COCO category id.
    fn class_entry(&self, class: u8) -> Result<Option<(String, String)>> {
        Ok(Some((
            self.dataset.class_id(class)?.to_string(),
            self.dataset.class_name(class)?.to_string(),
        )))
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A synthetic COCO128-like pool for tests.

    use std::path::Path;

    use fss_tests::fixture_files::{write_gray_png, write_jpeg};

    /// The 80 COCO thing category ids (ascending).
    pub fn coco_thing_ids() -> Vec<u8> {
        let gaps = [12u8, 26, 29, 30, 45, 66, 68, 69, 71, 83];
        (1u8..=90).filter(|i| !gaps.contains(i)).collect()
    }

    /// Writes `annotations/instances_train2017.json` (the 80 categories in reversed id order,
    /// named `cat<id>`) and `n_train` + `n_val` images of 8x8 pixels with masks. Pool image `k`
    /// has class index `1 + k % 8` on 32 px, class index `9 + k % 4` on 16 px, stuff (id 150) on
    /// 8 px and 8 unlabelled px. Plus one train image without a mask (not in the pool).
    pub fn write(root: &Path, n_train: usize, n_val: usize) {
        let ids = coco_thing_ids();
        let mut cats: Vec<String> = ids
            .iter()
            .map(|id| format!(r#"{{"supercategory": "x", "id": {id}, "name": "cat{id}"}}"#))
            .collect();
        cats.reverse();
        std::fs::create_dir_all(root.join("annotations")).unwrap();
        std::fs::write(
            root.join("annotations/instances_train2017.json"),
            format!(
                r#"{{"images": [], "annotations": [], "categories": [{}]}}"#,
                cats.join(", ")
            ),
        )
        .unwrap();
        let mut k = 0usize;
        for (split, n) in [("train2017", n_train), ("val2017", n_val)] {
            for _ in 0..n {
                let id = 1000 + k;
                let stem = format!("{id:012}");
                write_jpeg(
                    &root.join(format!("images/{split}/{stem}.jpg")),
                    8,
                    8,
                    [50, 60, 70],
                );
                // 64 px: rows 0-3 (32 px) class A, rows 4-5 (16 px) class B, row 6 (8 px)
                // stuff id 150, row 7 unlabelled.
                let a = ids[k % 8]; // classes 1..8 cycle
                let b = ids[8 + (k % 4)]; // classes 9..12 cycle
                let mut v = vec![0u8; 64];
                v[..32].fill(a);
                v[32..48].fill(b);
                v[48..56].fill(150);
                write_gray_png(&root.join(format!("masks/{split}/{stem}.png")), 8, 8, &v);
                k += 1;
            }
        }
        // An image without a mask (not in the pool).
        write_jpeg(
            &root.join("images/train2017/000000000001.jpg"),
            8,
            8,
            [0, 0, 0],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_tests::fixture_files::TempDir;

    #[test]
    fn folds() {
        let f0 = fold_classes(FoldSplit::Interleaved, 0);
        assert_eq!(f0.len(), 20);
        assert_eq!(&f0[..3], &[1, 5, 9]);
        assert_eq!(*f0.last().unwrap(), 77);
        let f3 = fold_classes(FoldSplit::Interleaved, 3);
        assert_eq!(&f3[..2], &[4, 8]);
        assert_eq!(*f3.last().unwrap(), 80);
        let c1 = fold_classes(FoldSplit::Contiguous, 1);
        assert_eq!(c1, (21..=40).collect::<Vec<u8>>());
        for split in [FoldSplit::Interleaved, FoldSplit::Contiguous] {
            let mut all = Vec::new();
            for f in 0..4 {
                let novel = fold_classes(split, f);
                let base = base_classes(split, f);
                assert_eq!(base.len(), 60);
                assert!(base.iter().all(|c| !novel.contains(c)));
                assert!(novel.iter().all(|&c| split.fold_of(c) == f));
                all.extend(novel);
            }
            all.sort();
            assert_eq!(all, (1..=80).collect::<Vec<u8>>());
        }
        assert!(check_fold(4).is_err());
        assert_eq!(
            "contiguous".parse::<FoldSplit>().unwrap(),
            FoldSplit::Contiguous
        );
        assert!("x".parse::<FoldSplit>().is_err());
    }

    #[test]
    fn opens_fixture_and_counts() {
        let dir = TempDir::new("coco_fixture");
        fixture::write(dir.path(), 6, 3);
        let ds = CocoMaskDataset::open(dir.path()).unwrap();
        assert_eq!(ds.len(), 9);
        assert_eq!(ds.categories().len(), 80);
        // Rank by id despite the reversed file order; id 13 (after gap 12) is class 12.
        assert_eq!(ds.class_id(1).unwrap(), 1);
        assert_eq!(ds.class_id(12).unwrap(), 13);
        assert_eq!(ds.class_id(80).unwrap(), 90);
        assert_eq!(ds.class_name(12).unwrap(), "cat13");
        assert_eq!(ds.class_index_of(90), Some(80));
        assert_eq!(ds.class_index_of(12), None);
        assert_eq!(ds.class_index_of(150), None);
        assert!(ds.class_id(0).is_err() && ds.class_id(81).is_err());

        let im0 = &ds.images()[0];
        assert_eq!(im0.rel_path, "images/train2017/000000001000.jpg");
        assert_eq!(im0.image_id, 1000);
        assert_eq!(im0.split, "train2017");
        assert_eq!((im0.width, im0.height), (8, 8));
        assert_eq!(ds.images()[6].split, "val2017");
        assert_eq!(ds.indices_of_split("val2017"), vec![6, 7, 8]);
        // image 0: class 1 (32 px), class 9 (16 px), background 16 px.
        assert_eq!(ds.pixels(0, 1), 32);
        assert_eq!(ds.pixels(0, 9), 16);
        assert_eq!(ds.pixels(0, 0), 16);
        assert_eq!(im0.class_pixels.iter().sum::<u64>(), 64);
        assert!(ds.is_eligible(0, 9, 16) && !ds.is_eligible(0, 9, 17));
        // class 1 in images 0 and 8 (k % 8 == 0)
        assert_eq!(ds.eligible_images(1, 32), vec![0, 8]);
        assert_eq!(ds.eligible_images_in(1, 32, &[8, 3, 0, 8]), vec![0, 8]);
        assert_eq!(ds.find_image("images/val2017/000000001008.jpg"), Some(8));
        assert_eq!(ds.find_image("images/train2017/000000000001.jpg"), None);

        let m = ds.class_mask(0, 1).unwrap();
        assert_eq!(m.count_nonzero(), 32);
        assert!(m.data.iter().all(|&v| v <= 1));
        let lm = ds.label_map(0).unwrap();
        assert_eq!(lm.data[0], 1);
        assert_eq!(lm.data[40], 9);
        assert_eq!(lm.data[50], 0); // stuff -> background
        let (img, mask) = ds.load_pair(1, 2).unwrap();
        assert_eq!(img.dimensions(), (8, 8));
        assert_eq!(mask.count_nonzero(), 32);
    }

    #[test]
    fn open_errors() {
        let dir = TempDir::new("coco_err");
        let e = CocoMaskDataset::open(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none"), "{e}");
        let e = CocoMaskDataset::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("instances_train2017.json"), "{e}");
        fixture::write(dir.path(), 2, 0);
        // Mask size differs from the image.
        fss_tests::fixture_files::write_gray_png(
            &dir.path().join("masks/train2017/000000001001.png"),
            4,
            4,
            &[0; 16],
        );
        let e = CocoMaskDataset::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("000000001001.png"), "{e}");
        // Wrong number of categories.
        std::fs::write(
            dir.path().join("annotations/instances_train2017.json"),
            r#"{"categories": [{"id": 1, "name": "person"}]}"#,
        )
        .unwrap();
        let e = CocoMaskDataset::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("80"), "{e}");
    }

    /// Real data (`../shared/data/coco128`).
    #[test]
    fn real_coco128() {
        let root = fss_tests::require_shared("coco128");
        let ds = CocoMaskDataset::open(&root).unwrap();
        assert_eq!(ds.len(), 200);
        assert_eq!(ds.indices_of_split("train2017").len(), 100);
        assert_eq!(ds.class_name(1).unwrap(), "person");
        assert_eq!(ds.class_name(80).unwrap(), "toothbrush");
        assert_eq!(ds.class_id(80).unwrap(), 90);
        // COCO id 18 (dog) is class index 17 (id 12 is a gap).
        assert_eq!(ds.class_name(17).unwrap(), "dog");
        assert_eq!(ds.class_id(17).unwrap(), 18);
        assert_eq!(ds.class_index_of(18), Some(17));
        // Every image loads as RGB of its mask's size (two of them are grayscale JPEGs).
        for i in 0..ds.len() {
            let im = &ds.images()[i];
            let img = ds.load_image(i).unwrap();
            assert_eq!(img.dimensions(), (im.width, im.height));
            assert_eq!(
                im.class_pixels.iter().sum::<u64>(),
                im.width as u64 * im.height as u64
            );
        }
    }

    /// COCO as distributed gives the pool of the COCO128 layout it was made from: the same
    /// images in the same order, class pixel and OSLSM counts, label maps and class masks.
    #[test]
    fn distributed_layout_matches_the_coco128_layout() {
        let dir = TempDir::new("coco_distributed");
        let (png_root, json_root) = (dir.path().join("png"), dir.path().join("json"));
        fss_tests::write_coco_like(&png_root, 5, 3, 32);
        fss_tests::write_coco_distributed(&json_root, 5, 3, 32);
        assert!(is_distributed_layout(&json_root) && !is_distributed_layout(&png_root));
        let (png, json) = (
            CocoMaskDataset::open(&png_root).unwrap(),
            CocoMaskDataset::open(&json_root).unwrap(),
        );
        assert_eq!(json.len(), 8);
        assert_eq!(
            json.indices_of_split("train2017"),
            (0..5).collect::<Vec<_>>()
        );
        assert_eq!(json.categories(), png.categories());
        for i in 0..png.len() {
            let (a, b) = (&png.images()[i], &json.images()[i]);
            assert_eq!(b.rel_path, a.rel_path.trim_start_matches("images/"));
            assert_eq!(
                (a.image_id, a.split.as_str()),
                (b.image_id, b.split.as_str())
            );
            assert_eq!((a.width, a.height), (b.width, b.height));
            assert_eq!(a.class_pixels, b.class_pixels, "image {i}");
            assert_eq!(a.oslsm_cells, b.oslsm_cells, "image {i}");
            assert_eq!(png.label_map(i).unwrap(), json.label_map(i).unwrap());
            for c in 1..=4 {
                assert_eq!(
                    png.class_mask(i, c).unwrap(),
                    json.class_mask(i, c).unwrap()
                );
            }
            assert_eq!(json.load_pair(i, 2).unwrap().0, png.load_image(i).unwrap());
            assert_eq!(json.find_image(&b.rel_path), Some(i));
        }
        // A few pixels are painted by the objects of the fixture: the counts are not all zero.
        assert!(json.eligible_images(2, 16).len() >= 2);
    }

    #[test]
    fn distributed_layout_names_a_missing_image() {
        let dir = TempDir::new("coco_distributed_missing");
        fss_tests::write_coco_distributed(dir.path(), 3, 1, 16);
        let gone = dir.path().join("train2017/000000000101.jpg");
        std::fs::remove_file(&gone).unwrap();
        let e = CocoMaskDataset::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("000000000101.jpg")
                && e.contains("instances_train2017.json")
                && e.contains("missing"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}
