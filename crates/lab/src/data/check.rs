//! Dataset checks (`host data check`): every problem of a dataset folder, one line each,
//! without stopping at the first (the readers stop at the first problem they meet).
//!
//! What is checked, per format:
//!
//! * **davis** (`JPEGImages/480p/<seq>/*`, `Annotations/480p/<seq>/*.png`): the two folders; a
//!   sequence listed in `sequences.txt` without a folder; per sequence, frames that do not
//!   decode, a frame without its annotation, an annotation without its frame, annotations that
//!   do not decode or have another size than their frame, fewer than 2 frames, an empty
//!   first-frame mask; label values: grayscale (DAVIS-2016) masks must use one object value
//!   (0/255 or 0/1), palette (DAVIS-2017) masks object indices below 128 or 255 (void).
//! * **coco** (COCO128 layout, see `data::coco`): `annotations/instances_train2017.json`
//!   (readable, 80 categories); per split, images that do not decode or whose name is not an
//!   integer id, masks without an image, masks that do not decode or have another size, label
//!   values other than 0, the thing ids of `categories` and the stuff ids 92..=200, masks with
//!   no labelled pixel at all. Images without a mask are allowed (not in the pool).
//! * **folder** (`data::folder`): class folders with `images/` and `masks/`; images that do not
//!   decode, images without a mask, masks without an image, masks that do not decode or have
//!   another size, empty masks, masks with more than one non-zero value (anti-aliased or
//!   multi-label masks; the reader takes `> 0`), classes with fewer than 2 images (no 1-shot
//!   episode possible).
//!
//! * **pascal** (VOC2012 layout, see `data::pascal`): `JPEGImages/`, the labels folder
//!   (`SegmentationClassAug`, else `SegmentationClass`), the lists
//!   `ImageSets/Segmentation/{train,val,trainaug}.txt` (at least one); per listed name, an image
//!   that is missing or does not decode, a label that is missing, does not decode, has another
//!   size than its image, or has values other than 0..=20 and 255.
//!
//! Images are fully decoded (a truncated JPEG is found), masks are decoded as label values.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use super::folder::{sorted_images, sorted_subdirs};
use fss_core::choice::Choice;
use fss_core::error::EdgeError;
use fss_core::image_io::{label_png_info, load_label_png, load_rgb};
use fss_core::tensor::Mask;

/// The dataset layouts that can be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    Davis,
    Coco,
    Folder,
    Pascal,
}

fss_core::choices!(DataFormat {
    Davis => "davis", "";
    Coco => "coco", "";
    Folder => "folder", "";
    Pascal => "pascal", "";
});

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One problem: the file (or folder) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    /// One line, `<path>: <what is wrong>`.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The outcome of [`check_dataset`].
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub root: PathBuf,
    pub format: DataFormat,
    pub images: usize,
    pub masks: usize,
    pub problems: Vec<Problem>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The summary line.
    pub fn summary(&self) -> String {
        format!(
            "{} ({}): {} images, {} masks checked, {} problem{}",
            self.root.display(),
            self.format,
            self.images,
            self.masks,
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )
    }
}

struct Checker {
    report: CheckReport,
}

impl Checker {
    fn problem(&mut self, path: &Path, what: impl fmt::Display) {
        self.report.problems.push(Problem {
            path: path.to_path_buf(),
            message: format!("{}: {what}", path.display()),
        });
    }

    fn error(&mut self, path: &Path, e: EdgeError) {
        let message = e.to_string().replace('\n', " ");
        self.report.problems.push(Problem {
            path: path.to_path_buf(),
            message,
        });
    }

    fn folder(&mut self, dir: &Path) -> bool {
        if dir.is_dir() {
            true
        } else {
            self.problem(dir, "missing folder");
            false
        }
    }

    /// Decodes an image; its `(width, height)` or a recorded problem.
    fn image(&mut self, path: &Path) -> Option<(u32, u32)> {
        self.report.images += 1;
        match load_rgb(path) {
            Ok(img) => Some(img.dimensions()),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    /// Decodes a mask; checks its size against the image's when known.
    fn mask(&mut self, path: &Path, image: Option<(&Path, (u32, u32))>) -> Option<Mask> {
        self.report.masks += 1;
        let mask = match load_label_png(path) {
            Ok(m) => m,
            Err(e) => {
                self.error(path, e);
                return None;
            }
        };
        if let Some((ip, (w, h))) = image {
            if (mask.width as u32, mask.height as u32) != (w, h) {
                self.problem(
                    path,
                    format!(
                        "mask is {}x{} (HxW) but its image {} is {h}x{w}",
                        mask.height,
                        mask.width,
                        ip.display()
                    ),
                );
            }
        }
        Some(mask)
    }

    fn list(&mut self, dir: &Path, images: bool) -> Vec<PathBuf> {
        let r = if images {
            sorted_images(dir)
        } else {
            sorted_pngs(dir)
        };
        r.unwrap_or_else(|e| {
            self.error(dir, e);
            Vec::new()
        })
    }

    fn subdirs(&mut self, dir: &Path) -> Vec<PathBuf> {
        sorted_subdirs(dir).unwrap_or_else(|e| {
            self.error(dir, e);
            Vec::new()
        })
    }

    /// Masks of `mdir` whose stem has no image among `images`.
    fn orphans(&mut self, mdir: &Path, images: &[PathBuf]) {
        let stems: BTreeSet<String> = images.iter().map(|p| stem(p)).collect();
        for m in self.list(mdir, false) {
            if !stems.contains(&stem(&m)) {
                self.problem(&m, "mask without an image");
            }
        }
    }
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

fn sorted_pngs(dir: &Path) -> fss_core::error::Result<Vec<PathBuf>> {
    Ok(sorted_images(dir)?
        .into_iter()
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("png"))
        })
        .collect())
}

fn distinct_values(mask: &Mask) -> Vec<u8> {
    let mut seen = [false; 256];
    for &v in &mask.data {
        seen[v as usize] = true;
    }
    (0..=255u8).filter(|&v| seen[v as usize]).collect()
}

fn show(values: &[u8]) -> String {
    let shown: Vec<String> = values.iter().take(8).map(|v| v.to_string()).collect();
    if values.len() > 8 {
        format!("{}, ... ({} values)", shown.join(", "), values.len())
    } else {
        shown.join(", ")
    }
}

/// Checks a dataset folder in `format` and lists every problem found.
pub fn check_dataset(root: &Path, format: DataFormat) -> CheckReport {
    let mut c = Checker {
        report: CheckReport {
            root: root.to_path_buf(),
            format,
            images: 0,
            masks: 0,
            problems: Vec::new(),
        },
    };
    if !root.is_dir() {
        c.problem(root, "dataset folder does not exist (or is not a folder)");
        return c.report;
    }
    match format {
        DataFormat::Davis => check_davis(&mut c, root),
        DataFormat::Coco => check_coco(&mut c, root),
        DataFormat::Folder => check_folder(&mut c, root),
        DataFormat::Pascal => check_pascal(&mut c, root),
    }
    c.report
}

fn check_davis(c: &mut Checker, root: &Path) {
    let jroot = root.join("JPEGImages/480p");
    let aroot = root.join("Annotations/480p");
    if !(c.folder(&jroot) & c.folder(&aroot)) {
        return;
    }
    let seqs = c.subdirs(&jroot);
    let list = root.join("sequences.txt");
    if let Ok(text) = std::fs::read_to_string(&list) {
        for name in text.lines().map(str::trim) {
            if !name.is_empty() && !name.starts_with('#') && !jroot.join(name).is_dir() {
                c.problem(
                    &list,
                    format!("sequence {name:?} has no folder under {}", jroot.display()),
                );
            }
        }
    }
    if seqs.is_empty() {
        c.problem(&jroot, "no sequence folders");
    }
    for sdir in seqs {
        let name = stem(&sdir);
        let adir = aroot.join(&name);
        if !c.folder(&adir) {
            continue;
        }
        let frames = c.list(&sdir, true);
        if frames.len() < 2 {
            c.problem(
                &sdir,
                format!("{} frame(s); a sequence needs at least 2", frames.len()),
            );
        }
        c.orphans(&adir, &frames);
        for (f, frame) in frames.iter().enumerate() {
            let size = c.image(frame);
            let ann = adir.join(format!("{}.png", stem(frame)));
            if !ann.is_file() {
                c.problem(frame, format!("frame has no annotation {}", ann.display()));
                continue;
            }
            let palette = label_png_info(&ann).map(|i| i.palette).unwrap_or(false);
            let Some(mask) = c.mask(&ann, size.map(|s| (frame.as_path(), s))) else {
                continue;
            };
            let values = distinct_values(&mask);
            let objects: Vec<u8> = values.iter().copied().filter(|&v| v != 0).collect();
            if palette {
                let bad: Vec<u8> = objects
                    .iter()
                    .copied()
                    .filter(|&v| v >= 128 && v != 255)
                    .collect();
                if !bad.is_empty() {
                    c.problem(
                        &ann,
                        format!(
                            "unexpected palette indices {} (objects are 1..127, 255 is void)",
                            show(&bad)
                        ),
                    );
                }
            } else if objects.len() > 1 {
                c.problem(
                    &ann,
                    format!(
                        "unexpected label values {} (a DAVIS-2016 mask is 0 and one object value, 255)",
                        show(&values)
                    ),
                );
            }
            let object_pixels = mask
                .data
                .iter()
                .filter(|&&v| v != 0 && !(palette && v == 255))
                .count();
            if f == 0 && object_pixels == 0 {
                c.problem(&ann, "first-frame mask is empty (it is the support)");
            }
        }
    }
}

fn check_coco(c: &mut Checker, root: &Path) {
    let json = root.join("annotations/instances_train2017.json");
    let mut allowed = [false; 256];
    allowed[0] = true;
    allowed[92..=200].fill(true); // stuff ids
    let mut have_categories = false;
    match std::fs::read(&json) {
        Err(e) => c.error(&json, EdgeError::io(&json, e)),
        Ok(bytes) => match super::coco_json::CocoInstances::from_slice(&json, &bytes) {
            Err(e) => c.error(&json, e),
            Ok(inst) => {
                if inst.categories.len() != super::coco::NUM_CLASSES {
                    c.problem(
                        &json,
                        format!(
                            "expected the {} COCO thing categories, found {}",
                            super::coco::NUM_CLASSES,
                            inst.categories.len()
                        ),
                    );
                }
                for cat in &inst.categories {
                    allowed[cat.id as usize] = true;
                }
                have_categories = true;
            }
        },
    }
    if !c.folder(&root.join("images")) {
        return;
    }
    let mut any_pair = false;
    for split in super::coco::SPLITS {
        let idir = root.join("images").join(split);
        let mdir = root.join("masks").join(split);
        if !idir.is_dir() && !mdir.is_dir() {
            continue;
        }
        if !(c.folder(&idir) & c.folder(&mdir)) {
            continue;
        }
        let images = c.list(&idir, true);
        c.orphans(&mdir, &images);
        for image in &images {
            let size = c.image(image);
            if stem(image).parse::<u64>().is_err() {
                c.problem(image, "image file name is not an integer COCO image id");
            }
            let mp = mdir.join(format!("{}.png", stem(image)));
            if !mp.is_file() {
                continue;
            }
            any_pair = true;
            let Some(mask) = c.mask(&mp, size.map(|s| (image.as_path(), s))) else {
                continue;
            };
            let values = distinct_values(&mask);
            if have_categories {
                let bad: Vec<u8> = values
                    .iter()
                    .copied()
                    .filter(|&v| !allowed[v as usize])
                    .collect();
                if !bad.is_empty() {
                    c.problem(
                        &mp,
                        format!(
                            "unexpected label values {} (not 0, a thing category id or a stuff id 92..=200)",
                            show(&bad)
                        ),
                    );
                }
            }
            if values == [0] {
                c.problem(&mp, "mask is empty (no labelled pixel)");
            }
        }
    }
    if !any_pair {
        c.problem(
            root,
            "no image under images/{train2017,val2017} has a mask under masks/<split>/<id>.png",
        );
    }
}

fn check_pascal(c: &mut Checker, root: &Path) {
    let jdir = root.join("JPEGImages");
    let aug = root.join("SegmentationClassAug");
    let ldir = if aug.is_dir() {
        aug
    } else {
        root.join("SegmentationClass")
    };
    let folders_ok = c.folder(&jdir) & c.folder(&ldir);
    let sets = root.join("ImageSets/Segmentation");
    let lists: Vec<PathBuf> = ["train.txt", "val.txt", "trainaug.txt"]
        .iter()
        .map(|n| sets.join(n))
        .filter(|p| p.is_file())
        .collect();
    if lists.is_empty() {
        c.problem(&sets, "no list (train.txt, val.txt or trainaug.txt)");
    }
    if !folders_ok {
        return;
    }
    let mut names = BTreeSet::new();
    for list in &lists {
        match super::pascal::read_list(list) {
            Ok(n) => names.extend(n),
            Err(e) => c.error(list, e),
        }
    }
    for name in names {
        let ipath = jdir.join(format!("{name}.jpg"));
        if !ipath.is_file() {
            c.problem(&ipath, "listed image is missing");
            continue;
        }
        let dims = c.image(&ipath);
        let lpath = ldir.join(format!("{name}.png"));
        if !lpath.is_file() {
            c.problem(&lpath, format!("label of {} is missing", ipath.display()));
            continue;
        }
        if let Some(mask) = c.mask(&lpath, dims.map(|d| (ipath.as_path(), d))) {
            let bad: Vec<u8> = distinct_values(&mask)
                .into_iter()
                .filter(|&v| v > 20 && v != 255)
                .collect();
            if !bad.is_empty() {
                c.problem(
                    &lpath,
                    format!(
                        "unexpected label values {} (VOC uses 0..=20 and 255)",
                        show(&bad)
                    ),
                );
            }
        }
    }
}

fn check_folder(c: &mut Checker, root: &Path) {
    let classes = c.subdirs(root);
    if classes.is_empty() {
        c.problem(
            root,
            "no class folders (expected <class>/images and <class>/masks)",
        );
    }
    for cdir in classes {
        let idir = cdir.join("images");
        let mdir = cdir.join("masks");
        if !(c.folder(&idir) & c.folder(&mdir)) {
            continue;
        }
        let images = c.list(&idir, true);
        if images.len() < 2 {
            c.problem(
                &idir,
                format!(
                    "class has {} image(s); a 1-shot episode needs 2",
                    images.len()
                ),
            );
        }
        c.orphans(&mdir, &images);
        for image in &images {
            let size = c.image(image);
            let mp = mdir.join(format!("{}.png", stem(image)));
            if !mp.is_file() {
                c.problem(image, format!("image has no mask {}", mp.display()));
                continue;
            }
            let Some(mask) = c.mask(&mp, size.map(|s| (image.as_path(), s))) else {
                continue;
            };
            let values = distinct_values(&mask);
            if values == [0] {
                c.problem(&mp, "mask is empty (no pixel > 0)");
            } else if values.iter().filter(|&&v| v != 0).count() > 1 {
                c.problem(
                    &mp,
                    format!(
                        "unexpected label values {} (a binary mask has 0 and one object value)",
                        show(&values)
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_tests::fixture_files::{write_gray_png, write_jpeg, write_palette_png, TempDir};

    fn messages(r: &CheckReport) -> Vec<String> {
        r.problems.iter().map(|p| p.message.clone()).collect()
    }

    fn has(r: &CheckReport, path_part: &str, what: &str) -> bool {
        r.problems
            .iter()
            .any(|p| p.message.contains(path_part) && p.message.contains(what))
    }

    #[test]
    fn folder_every_problem_listed() {
        let dir = TempDir::new("check_folder");
        let root = dir.path();
        crate::data::folder::fixture::write(root, &[("cat", 3), ("dog", 2)]);
        let r = check_dataset(root, DataFormat::Folder);
        assert!(r.is_ok(), "{:?}", messages(&r));
        assert_eq!((r.images, r.masks), (5, 5));

        // Break it in many ways at once.
        std::fs::remove_file(root.join("cat/masks/img00.png")).unwrap(); // missing mask
        write_gray_png(&root.join("cat/masks/img01.png"), 4, 4, &[255; 16]); // other size
        write_gray_png(&root.join("cat/masks/img02.png"), 8, 8, &[0; 64]); // empty
        write_gray_png(&root.join("cat/masks/ghost.png"), 8, 8, &[1; 64]); // orphan
        let mut v = vec![0u8; 64];
        v[0] = 3;
        v[1] = 7;
        write_gray_png(&root.join("dog/masks/img00.png"), 8, 8, &v); // two values
        std::fs::write(root.join("dog/images/img01.jpg"), b"\xff\xd8 truncated").unwrap();
        std::fs::create_dir_all(root.join("emu/images")).unwrap(); // no masks folder
        write_jpeg(&root.join("fox/images/a.jpg"), 8, 8, [1, 2, 3]);
        write_gray_png(&root.join("fox/masks/a.png"), 8, 8, &[9; 64]); // only one image
        let r = check_dataset(root, DataFormat::Folder);
        let m = messages(&r);
        assert!(has(&r, "img00.jpg", "has no mask"), "{m:?}");
        assert!(has(&r, "img01.png", "4x4"), "{m:?}");
        assert!(has(&r, "img02.png", "empty"), "{m:?}");
        assert!(has(&r, "ghost.png", "without an image"), "{m:?}");
        assert!(
            has(&r, "dog/masks/img00.png", "unexpected label values 0, 3, 7"),
            "{m:?}"
        );
        assert!(has(&r, "dog/images/img01.jpg", ""), "{m:?}");
        assert!(has(&r, "emu/masks", "missing folder"), "{m:?}");
        assert!(has(&r, "fox/images", "1 image(s)"), "{m:?}");
        assert_eq!(r.problems.len(), 8, "{m:?}");
        assert!(m.iter().all(|l| !l.contains('\n')));
        assert!(r.summary().contains("8 problems"), "{}", r.summary());
    }

    #[test]
    fn davis_problems() {
        let dir = TempDir::new("check_davis");
        let root = dir.path();
        for s in ["a", "b"] {
            for f in 0..3 {
                write_jpeg(
                    &root.join(format!("JPEGImages/480p/{s}/{f:05}.jpg")),
                    6,
                    4,
                    [9, 9, 9],
                );
                let mut v = vec![0u8; 24];
                v[..6].fill(255);
                write_gray_png(
                    &root.join(format!("Annotations/480p/{s}/{f:05}.png")),
                    6,
                    4,
                    &v,
                );
            }
        }
        std::fs::write(root.join("sequences.txt"), "a\nb\n").unwrap();
        let r = check_dataset(root, DataFormat::Davis);
        assert!(r.is_ok(), "{:?}", messages(&r));
        assert_eq!((r.images, r.masks), (6, 6));

        std::fs::write(root.join("sequences.txt"), "a\nb\nc\n").unwrap();
        write_gray_png(&root.join("Annotations/480p/a/00000.png"), 6, 4, &[0; 24]);
        let mut v = vec![0u8; 24];
        v[0] = 128;
        v[1] = 255;
        write_gray_png(&root.join("Annotations/480p/a/00001.png"), 6, 4, &v);
        std::fs::remove_file(root.join("Annotations/480p/b/00002.png")).unwrap();
        write_gray_png(&root.join("Annotations/480p/b/00009.png"), 6, 4, &[0; 24]);
        write_gray_png(&root.join("Annotations/480p/b/00001.png"), 3, 4, &[0; 12]);
        // A palette (2017) mask with a void index is fine; index 200 is not.
        let mut idx = vec![0u8; 24];
        idx[0] = 255;
        idx[1] = 2;
        write_palette_png(&root.join("Annotations/480p/b/00000.png"), 6, 4, &idx, 8);
        let r = check_dataset(root, DataFormat::Davis);
        let m = messages(&r);
        assert!(has(&r, "sequences.txt", "\"c\" has no folder"), "{m:?}");
        assert!(has(&r, "a/00000.png", "first-frame mask is empty"), "{m:?}");
        assert!(
            has(&r, "a/00001.png", "unexpected label values 0, 128, 255"),
            "{m:?}"
        );
        assert!(has(&r, "b/00002.jpg", "has no annotation"), "{m:?}");
        assert!(has(&r, "b/00009.png", "without an image"), "{m:?}");
        assert!(has(&r, "b/00001.png", "4x3"), "{m:?}");
        assert_eq!(r.problems.len(), 6, "{m:?}");
        idx[2] = 200;
        write_palette_png(&root.join("Annotations/480p/b/00000.png"), 6, 4, &idx, 8);
        let r = check_dataset(root, DataFormat::Davis);
        assert!(
            has(&r, "b/00000.png", "palette indices 200"),
            "{:?}",
            messages(&r)
        );

        let r = check_dataset(&root.join("nothing"), DataFormat::Davis);
        assert_eq!(r.problems.len(), 1);
        let empty = TempDir::new("check_davis_empty");
        let r = check_dataset(empty.path(), DataFormat::Davis);
        assert_eq!(r.problems.len(), 2, "{:?}", messages(&r)); // both folders missing
    }

    #[test]
    fn coco_problems() {
        let dir = TempDir::new("check_coco");
        let root = dir.path();
        crate::data::coco::fixture::write(root, 3, 2);
        let r = check_dataset(root, DataFormat::Coco);
        assert!(r.is_ok(), "{:?}", messages(&r));
        assert_eq!((r.images, r.masks), (6, 5)); // one image without a mask is fine

        let mut v = vec![0u8; 64];
        v[0] = 12; // a gap id
        v[1] = 250; // neither thing nor stuff
        write_gray_png(&root.join("masks/train2017/000000001000.png"), 8, 8, &v);
        write_gray_png(
            &root.join("masks/train2017/000000001001.png"),
            8,
            8,
            &[0; 64],
        );
        write_gray_png(&root.join("masks/val2017/000000000077.png"), 8, 8, &[1; 64]);
        write_gray_png(&root.join("masks/val2017/000000001004.png"), 2, 8, &[1; 16]);
        write_jpeg(&root.join("images/val2017/cat.jpg"), 8, 8, [0, 0, 0]);
        let r = check_dataset(root, DataFormat::Coco);
        let m = messages(&r);
        assert!(
            has(&r, "000000001000.png", "unexpected label values 12, 250"),
            "{m:?}"
        );
        assert!(has(&r, "000000001001.png", "empty"), "{m:?}");
        assert!(has(&r, "000000000077.png", "without an image"), "{m:?}");
        assert!(has(&r, "000000001004.png", "8x2"), "{m:?}");
        assert!(has(&r, "cat.jpg", "not an integer"), "{m:?}");
        assert_eq!(r.problems.len(), 5, "{m:?}");

        std::fs::write(root.join("annotations/instances_train2017.json"), "{").unwrap();
        let r = check_dataset(root, DataFormat::Coco);
        assert!(has(
            &r,
            "instances_train2017.json",
            "not a COCO instances file"
        ));
    }

    /// The shared real datasets check clean.
    #[test]
    fn real_data_is_clean() {
        for (name, format) in [
            ("coco128", DataFormat::Coco),
            ("davis2016", DataFormat::Davis),
        ] {
            let root = fss_tests::require_shared(name);
            let r = check_dataset(&root, format);
            eprintln!("{}", r.summary());
            assert!(r.is_ok(), "{:?}", messages(&r));
        }
    }
}
