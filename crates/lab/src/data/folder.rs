//! The user folder format: one folder per class, images with binary masks.
//!
//! ```text
//! <root>/<class>/images/<name>.<jpg|jpeg|png>
//! <root>/<class>/masks/<name>.png        # same size as the image; value > 0 = object
//! ```
//!
//! * **Classes**: the sub-folders of `<root>` (hidden ones, starting with `.`, skipped) sorted by
//!   name; class `i` (0-based) in that order. At most 255 classes.
//! * **Images**: per class, the files of `images/` with a jpg/jpeg/png extension, sorted by file
//!   name. Every image needs its mask `masks/<stem>.png`; a missing mask or a mask of another
//!   size is an error at open (use `data::check` to list every problem at once). Masks are
//!   decoded once at open to count their object pixels.
//! * **Pool indices**: the images of class 0, then class 1, ..., in that order.
//! * **Episodes** (the dataset is an [`EpisodeSource`] of one fold, 0, drawn by
//!   [`crate::episodes::draw_episodes`]): 1-way K-shot, the draw order of [`crate::episodes`]
//!   with the RNG of fold 0 (`eval_rng(seed, 0)`): the class uniform over the *taking-part*
//!   classes (those with at least K+1 images whose mask has `>= min_pixels` object pixels;
//!   [`FOLDER_MIN_PIXELS`] = 1, i.e. non-empty, by default), then K+1 distinct images of that
//!   class by a partial Fisher-Yates shuffle (K supports in order, then the query). The
//!   episode's class key is the class position + 1.
//! * **Episode lists**: the [`EpisodeRecord`] JSON Lines form with `fold` 0, `class_id` = class
//!   position + 1 and paths relative to the root (`<class>/images/<file>`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::episodes::{Eligibility, Episode, EpisodeRecord, EpisodeSource};
use fss_core::davis::check_same_size;
use fss_core::error::{EdgeError, Result};
use fss_core::image_io::{image_size, load_label_png, load_rgb};
use fss_core::preprocess::InputSize;
use fss_core::tensor::Mask;

/// Default eligibility threshold of user folders: any non-empty mask.
pub const FOLDER_MIN_PIXELS: u64 = 1;
/// Image extensions looked for (case-insensitive).
pub const IMAGE_EXTS: [&str; 3] = ["jpg", "jpeg", "png"];

/// One image of a class folder.
#[derive(Debug, Clone)]
pub struct FolderImage {
    pub image_path: PathBuf,
    pub mask_path: PathBuf,
    /// `<class>/images/<file>` with `/` separators.
    pub rel_path: String,
    /// Class position (0-based).
    pub class: usize,
    pub width: u32,
    pub height: u32,
    /// Object pixels (mask > 0) at original resolution.
    pub object_pixels: u64,
}

/// One class folder.
#[derive(Debug, Clone)]
pub struct FolderClass {
    pub name: String,
    /// Pool indices of its images, ascending.
    pub images: Vec<usize>,
}

/// A dataset in the folder format.
#[derive(Debug, Clone)]
pub struct FolderDataset {
    root: PathBuf,
    classes: Vec<FolderClass>,
    images: Vec<FolderImage>,
    by_rel_path: HashMap<String, usize>,
}

/// Whether a path has one of [`IMAGE_EXTS`].
pub fn has_image_ext(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Sorted sub-folders of `dir` (hidden ones skipped).
pub(crate) fn sorted_subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| EdgeError::io(dir, e))? {
        let p = entry.map_err(|e| EdgeError::io(dir, e))?.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if p.is_dir() && !hidden {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Whether `dir` looks like the folder format: a visible sub-folder with `images/` and `masks/`.
pub fn has_class_folders(dir: &Path) -> bool {
    sorted_subdirs(dir).is_ok_and(|subs| {
        subs.iter()
            .any(|s| s.join("images").is_dir() && s.join("masks").is_dir())
    })
}

/// Sorted image files of `dir` (by extension).
pub(crate) fn sorted_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| EdgeError::io(dir, e))? {
        let p = entry.map_err(|e| EdgeError::io(dir, e))?.path();
        if p.is_file() && has_image_ext(&p) {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

fn file_name_str(p: &Path) -> Result<&str> {
    p.file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| EdgeError::invalid(p, "file name is not valid UTF-8"))
}

impl FolderDataset {
    /// Opens `root` (see the module doc); the first problem found is the error.
    pub fn open(root: &Path) -> Result<FolderDataset> {
        if !root.is_dir() {
            return Err(EdgeError::invalid(
                root,
                "dataset folder does not exist (or is not a folder)",
            ));
        }
        let mut classes = Vec::new();
        let mut images = Vec::new();
        for class_dir in sorted_subdirs(root)? {
            let name = file_name_str(&class_dir)?.to_string();
            let idir = class_dir.join("images");
            let mdir = class_dir.join("masks");
            for d in [&idir, &mdir] {
                if !d.is_dir() {
                    return Err(EdgeError::invalid(
                        d,
                        "missing folder (expected <class>/images and <class>/masks)",
                    ));
                }
            }
            let class = classes.len();
            if class >= 255 {
                return Err(EdgeError::invalid(root, "more than 255 class folders"));
            }
            let mut members = Vec::new();
            for image_path in sorted_images(&idir)? {
                let file = file_name_str(&image_path)?.to_string();
                let stem = image_path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                let mask_path = mdir.join(format!("{stem}.png"));
                if !mask_path.is_file() {
                    return Err(EdgeError::invalid(
                        &image_path,
                        format!("image has no mask {}", mask_path.display()),
                    ));
                }
                let (w, h) = image_size(&image_path)?;
                let mask = load_label_png(&mask_path)?;
                check_same_size(
                    &image_path,
                    (w, h),
                    &mask_path,
                    (mask.width as u32, mask.height as u32),
                )?;
                members.push(images.len());
                images.push(FolderImage {
                    rel_path: format!("{name}/images/{file}"),
                    image_path,
                    mask_path,
                    class,
                    width: w,
                    height: h,
                    object_pixels: mask.count_nonzero() as u64,
                });
            }
            if members.is_empty() {
                return Err(EdgeError::invalid(&idir, "class folder has no images"));
            }
            classes.push(FolderClass {
                name,
                images: members,
            });
        }
        if classes.is_empty() {
            return Err(EdgeError::invalid(
                root,
                "no class folders (expected <class>/images and <class>/masks)",
            ));
        }
        let by_rel_path = images
            .iter()
            .enumerate()
            .map(|(i, im)| (im.rel_path.clone(), i))
            .collect();
        Ok(FolderDataset {
            root: root.to_path_buf(),
            classes,
            images,
            by_rel_path,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Classes in order (sorted folder names).
    pub fn classes(&self) -> &[FolderClass] {
        &self.classes
    }

    /// All images in pool order.
    pub fn images(&self) -> &[FolderImage] {
        &self.images
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The image at a pool index (error if out of range).
    pub fn image(&self, idx: usize) -> Result<&FolderImage> {
        self.images.get(idx).ok_or_else(|| {
            EdgeError::input(format!(
                "image index {idx} out of range ({} images)",
                self.images.len()
            ))
        })
    }

    /// Pool index of `<class>/images/<file>` (`\` and a leading `./` accepted).
    pub fn find_image(&self, rel_path: &str) -> Option<usize> {
        let norm = rel_path.replace('\\', "/");
        self.by_rel_path.get(norm.trim_start_matches("./")).copied()
    }

    /// Pool indices of a class whose masks have `>= min_pixels` object pixels (and at least 1).
    pub fn eligible_images(&self, class: usize, min_pixels: u64) -> Vec<usize> {
        self.classes
            .get(class)
            .map(|c| {
                c.images
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let n = self.images[i].object_pixels;
                        n > 0 && n >= min_pixels
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The image as RGB.
    pub fn load_image(&self, idx: usize) -> Result<RgbImage> {
        load_rgb(&self.image(idx)?.image_path)
    }

    /// The binary (0/1) mask of an image at original resolution.
    pub fn load_mask(&self, idx: usize) -> Result<Mask> {
        let im = self.image(idx)?;
        let raw = load_label_png(&im.mask_path)?;
        check_same_size(
            &im.image_path,
            (im.width, im.height),
            &im.mask_path,
            (raw.width as u32, raw.height as u32),
        )?;
        Ok(Mask {
            height: raw.height,
            width: raw.width,
            data: raw.data.iter().map(|&v| (v > 0) as u8).collect(),
        })
    }
}

/// Folder episodes: classes keyed by position + 1 (1..=255), one fold (0); records name the
/// key as `class_id` and the images by their paths under the root.
impl EpisodeSource for FolderDataset {
    /// Every class folder; fold 0 is the only fold.
    fn fold_classes(&self, fold: usize) -> Result<Vec<u8>> {
        if fold != 0 {
            return Err(EdgeError::input(format!(
                "a folder dataset has one fold (0), not fold {fold}"
            )));
        }
        Ok((1..=self.classes.len()).map(|k| k as u8).collect())
    }

    /// Images whose mask has `>= min_pixels` object pixels (and at least 1); a folder has no
    /// OSLSM grid rule.
    fn eligible_images(&self, class: u8, rule: Eligibility) -> Vec<usize> {
        (class as usize)
            .checked_sub(1)
            .map(|c| FolderDataset::eligible_images(self, c, rule.min_pixels))
            .unwrap_or_default()
    }

    fn no_class_error(&self, _fold: usize, shots: usize, rule: Eligibility) -> EdgeError {
        EdgeError::invalid(
            self.root(),
            format!(
                "no class has at least {} images with a mask of >= {} object pixels",
                shots + 1,
                rule.min_pixels
            ),
        )
    }

    fn record(&self, episode: &Episode) -> Result<EpisodeRecord> {
        EpisodeRecord::of(episode, 0, episode.class as u32, |i| {
            self.image(i).map(|im| im.rel_path.clone())
        })
    }

    /// The class is the query's folder; every support must be of it.
    fn episode(&self, record: &EpisodeRecord) -> Result<Episode> {
        let (supports, query) = record.images(|p| {
            self.find_image(p).ok_or_else(|| {
                EdgeError::input(format!(
                    "episode image {p:?} is not in the dataset under {}",
                    self.root().display()
                ))
            })
        })?;
        let class = self.images[query].class;
        if let Some(&s) = supports.iter().find(|&&s| self.images[s].class != class) {
            return Err(EdgeError::input(format!(
                "episode support {:?} is not of the query's class {:?}",
                self.images[s].rel_path, self.classes[class].name
            )));
        }
        Ok(Episode {
            fold: 0,
            class: class as u8 + 1,
            supports,
            query,
        })
    }

    fn source_size(&self, i: usize) -> Result<InputSize> {
        let im = self.image(i)?;
        Ok(InputSize::new(im.height as usize, im.width as usize))
    }

    fn load_image(&self, i: usize) -> Result<RgbImage> {
        FolderDataset::load_image(self, i)
    }

    /// The image's own mask (every image of an episode is of its class).
    fn class_mask(&self, i: usize, _class: u8) -> Result<Mask> {
        self.load_mask(i)
    }

    fn describe(&self, i: usize, class: u8) -> Result<(PathBuf, String)> {
        let name = self.classes.get((class as usize).wrapping_sub(1));
        Ok((
            self.image(i)?.mask_path.clone(),
            name.map_or("?", |c| c.name.as_str()).into(),
        ))
    }

    /// Keyed by the class folder's name.
    fn class_entry(&self, class: u8) -> Result<Option<(String, String)>> {
        Ok(self
            .classes
            .get((class as usize).wrapping_sub(1))
            .map(|c| (c.name.clone(), c.name.clone())))
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A synthetic folder dataset for tests.

    use std::path::Path;

    use fss_tests::fixture_files::{write_gray_png, write_jpeg};

    /// Writes `classes.len()` class folders; class `c` gets `classes[c].1` images of 8x8 with a
    /// mask whose first `4 + 4 * (k % 4)` pixels (k = image number) are 255.
    pub fn write(root: &Path, classes: &[(&str, usize)]) {
        for (ci, (name, n)) in classes.iter().enumerate() {
            for k in 0..*n {
                let stem = format!("img{k:02}");
                write_jpeg(
                    &root.join(format!("{name}/images/{stem}.jpg")),
                    8,
                    8,
                    [(40 * ci) as u8, 100, (20 * k) as u8],
                );
                let mut v = vec![0u8; 64];
                v[..4 + 4 * (k % 4)].fill(255);
                write_gray_png(&root.join(format!("{name}/masks/{stem}.png")), 8, 8, &v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_tests::fixture_files::{write_gray_png, write_jpeg, TempDir};

    #[test]
    fn opens_and_samples() {
        let dir = TempDir::new("folder_ds");
        fixture::write(dir.path(), &[("zebra", 3), ("apple", 4), ("cup", 1)]);
        std::fs::create_dir_all(dir.path().join(".hidden")).unwrap();
        let ds = FolderDataset::open(dir.path()).unwrap();
        let names: Vec<&str> = ds.classes().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["apple", "cup", "zebra"]);
        assert_eq!(ds.len(), 8);
        assert_eq!(ds.classes()[2].images, vec![5, 6, 7]);
        assert_eq!(ds.images()[0].rel_path, "apple/images/img00.jpg");
        assert_eq!(ds.images()[1].object_pixels, 8);
        assert_eq!(ds.find_image("./zebra/images/img02.jpg"), Some(7));
        let m = ds.load_mask(1).unwrap();
        assert_eq!(m.count_nonzero(), 8);
        assert!(m.data.iter().all(|&v| v <= 1));
        assert_eq!(ds.load_image(0).unwrap().dimensions(), (8, 8));
        assert_eq!(ds.eligible_images(1, 1), vec![4]);
        assert_eq!(ds.eligible_images(0, 9), vec![2, 3]);

        // 1-shot: apple and zebra take part (keys 1 and 3), cup has one image only.
        let draw = |shots, episodes, seed| {
            crate::episodes::draw_episodes(
                &ds,
                0,
                shots,
                episodes,
                Eligibility::min_pixels(1),
                seed,
            )
        };
        let (tp, eps) = draw(1, 200, 7).unwrap();
        assert_eq!(tp, vec![1, 3]);
        assert_eq!(eps.len(), 200);
        let mut seen = [0usize; 3];
        for e in &eps {
            let class = e.class as usize - 1;
            seen[class] += 1;
            assert_eq!(e.supports.len(), 1);
            assert_ne!(e.supports[0], e.query);
            assert!(ds.classes()[class].images.contains(&e.query));
            assert!(ds.classes()[class].images.contains(&e.supports[0]));
            let r = ds.record(e).unwrap();
            assert_eq!(r.class_id, e.class as u32);
            assert_eq!(&ds.episode(&r).unwrap(), e);
        }
        assert!(seen[0] > 60 && seen[2] > 60 && seen[1] == 0, "{seen:?}");
        // Same seed, same episodes; another seed, other episodes.
        assert_eq!(draw(1, 200, 7).unwrap().1, eps);
        assert_ne!(draw(1, 200, 8).unwrap().1, eps);
        // 3-shot: only apple (4 images); every episode uses all 4, distinct.
        let (tp, eps) = draw(3, 10, 0).unwrap();
        assert_eq!(tp, vec![1]);
        for e in eps {
            let mut all = e.supports.clone();
            all.push(e.query);
            all.sort();
            assert_eq!(all, vec![0, 1, 2, 3]);
        }
        let e = draw(4, 10, 0).unwrap_err().to_string();
        assert!(e.contains("at least 5 images"), "{e}");
        assert!(draw(0, 10, 0).is_err());
        // A folder has one fold.
        let e = crate::episodes::draw_episodes(&ds, 1, 1, 1, Eligibility::min_pixels(1), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one fold"), "{e}");
        // A support of another class is refused on replay.
        let bad = EpisodeRecord {
            fold: 0,
            class_id: 1,
            supports: vec!["cup/images/img00.jpg".into()],
            query: "apple/images/img00.jpg".into(),
        };
        let e = ds.episode(&bad).unwrap_err().to_string();
        assert!(e.contains("not of the query's class"), "{e}");
    }

    #[test]
    fn open_errors_name_the_file() {
        let dir = TempDir::new("folder_err");
        let e = FolderDataset::open(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
        let e = FolderDataset::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no class folders"), "{e}");

        fixture::write(dir.path(), &[("cat", 2)]);
        std::fs::create_dir_all(dir.path().join("dog/images")).unwrap();
        let e = FolderDataset::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("dog/masks") && e.contains("missing folder"),
            "{e}"
        );
        std::fs::create_dir_all(dir.path().join("dog/masks")).unwrap();
        let e = FolderDataset::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no images"), "{e}");

        write_jpeg(&dir.path().join("dog/images/a.jpg"), 8, 8, [1, 2, 3]);
        let e = FolderDataset::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("a.jpg") && e.contains("has no mask"), "{e}");
        write_gray_png(&dir.path().join("dog/masks/a.png"), 4, 4, &[1; 16]);
        let e = FolderDataset::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("a.png") && e.contains("4x4"), "{e}");
        std::fs::write(dir.path().join("dog/masks/a.png"), b"not a png").unwrap();
        let e = FolderDataset::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("a.png"), "{e}");
        assert!(!e.contains('\n'));
        write_gray_png(&dir.path().join("dog/masks/a.png"), 8, 8, &[1; 64]);
        assert_eq!(FolderDataset::open(dir.path()).unwrap().len(), 3);
    }
}
