//! DAVIS video object segmentation reader (docs/evaluation.md, "DAVIS one-shot").
//!
//! Layout (both editions):
//!
//! ```text
//! <root>/JPEGImages/480p/<sequence>/00000.jpg ...
//! <root>/Annotations/480p/<sequence>/00000.png ...
//! ```
//!
//! * **DAVIS-2016** ([`DavisKind::SingleObject`]): grayscale masks, 0 = background, 255 = the
//!   object; ground truth is `value > 0`. One target per sequence, named `<seq>`.
//! * **DAVIS-2017** ([`DavisKind::MultiObject`]): palette PNGs whose palette *index* k is object k
//!   (read as indices, never as colours). Each object present in frame 0 is its own 1-way target,
//!   named `<seq>:<k>`; its ground truth is `value == k`. Index 255 (void, where present) is never
//!   an object.
//!
//! The edition is detected from the first annotation of the first sequence (palette PNG → 2017,
//! otherwise 2016) unless [`DavisOptions::kind`] says which.
//!
//! Sequence list, first that exists: [`DavisOptions::sequence_list`]; `<root>/sequences.txt`;
//! `<root>/ImageSets/2017/val.txt`, `ImageSets/2016/val.txt`, `ImageSets/480p/val.txt` (lines are
//! either a sequence name or DAVIS-2016's `/JPEGImages/480p/<seq>/00000.jpg /Annotations/...`
//! pairs); otherwise every folder under `JPEGImages/480p`, sorted. List files keep their order
//! (duplicates dropped, blank lines and `#` comments skipped).
//!
//! Frames are the `.jpg`/`.jpeg`/`.png` files of the sequence folder sorted by file name; frame
//! `<stem>.jpg` must have `Annotations/480p/<seq>/<stem>.png`. Opening validates the layout:
//! missing root or folders, a listed sequence without a folder or without frames, a frame without
//! its annotation (the frame is named), fewer than 2 frames.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::{EdgeError, Result};
use crate::image_io::{label_png_info, load_label_png, load_rgb};
use crate::tensor::Mask;

/// Which DAVIS edition (mask convention) a dataset follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DavisKind {
    /// DAVIS-2016: one object, mask `> 0`.
    SingleObject,
    /// DAVIS-2017: palette index k = object k.
    MultiObject,
}

/// Options of [`DavisDataset::open_with`].
#[derive(Debug, Clone)]
pub struct DavisOptions {
    /// Force the edition instead of detecting it.
    pub kind: Option<DavisKind>,
    /// Resolution folder under `JPEGImages` and `Annotations` (default `480p`).
    pub resolution: String,
    /// A sequence-list file (one name per line) to use instead of the default search.
    pub sequence_list: Option<PathBuf>,
}

impl Default for DavisOptions {
    fn default() -> Self {
        DavisOptions {
            kind: None,
            resolution: "480p".to_string(),
            sequence_list: None,
        }
    }
}

/// One video: its frames and their annotation PNGs (same length, same order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub name: String,
    pub frames: Vec<PathBuf>,
    pub annotations: Vec<PathBuf>,
}

impl Sequence {
    pub fn len(&self) -> usize {
        self.frames.len()
    }
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// One 1-way evaluation target: a DAVIS-2016 sequence (`object_id: None`) or one object of a
/// DAVIS-2017 sequence (`object_id: Some(k)`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub sequence: String,
    pub object_id: Option<u8>,
}

impl Target {
    /// The key used for per-sequence J: `<seq>` or `<seq>:<k>`.
    pub fn name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.object_id {
            None => write!(f, "{}", self.sequence),
            Some(k) => write!(f, "{}:{}", self.sequence, k),
        }
    }
}

/// A validated DAVIS dataset.
#[derive(Debug, Clone)]
pub struct DavisDataset {
    root: PathBuf,
    kind: DavisKind,
    sequences: Vec<Sequence>,
}

const FRAME_EXTS: [&str; 3] = ["jpg", "jpeg", "png"];

fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| EdgeError::io(path, e))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or(line);
        // DAVIS-2016 ImageSets lines: "/JPEGImages/480p/<seq>/00000.jpg /Annotations/...".
        let name = if first.contains('/') {
            let comps: Vec<&str> = first.split('/').filter(|c| !c.is_empty()).collect();
            if comps.len() >= 2 {
                comps[comps.len() - 2].to_string()
            } else {
                return Err(EdgeError::invalid(
                    path,
                    format!("cannot read a sequence name from line {line:?}"),
                ));
            }
        } else {
            first.to_string()
        };
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    Ok(out)
}

fn list_dirs(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| EdgeError::io(dir, e))? {
        let entry = entry.map_err(|e| EdgeError::io(dir, e))?;
        if entry.path().is_dir() {
            if let Some(name) = entry.file_name().to_str() {
                out.push(name.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Errors unless an image and its mask have the same size (`(width, height)` each).
pub fn check_same_size(
    image_path: &Path,
    image_wh: (u32, u32),
    mask_path: &Path,
    mask_wh: (u32, u32),
) -> Result<()> {
    if image_wh != mask_wh {
        return Err(EdgeError::invalid(
            mask_path,
            format!(
                "mask is {}x{} (HxW) but its image {} is {}x{}",
                mask_wh.1,
                mask_wh.0,
                image_path.display(),
                image_wh.1,
                image_wh.0
            ),
        ));
    }
    Ok(())
}

impl DavisDataset {
    /// Opens and validates a DAVIS root with default options (edition detected, `480p`).
    pub fn open(root: &Path) -> Result<DavisDataset> {
        Self::open_with(root, &DavisOptions::default())
    }

    /// Opens and validates a DAVIS root.
    pub fn open_with(root: &Path, options: &DavisOptions) -> Result<DavisDataset> {
        if !root.is_dir() {
            return Err(EdgeError::invalid(
                root,
                "DAVIS root folder does not exist (or is not a folder)",
            ));
        }
        let images_dir = root.join("JPEGImages").join(&options.resolution);
        let ann_dir = root.join("Annotations").join(&options.resolution);
        for d in [&images_dir, &ann_dir] {
            if !d.is_dir() {
                return Err(EdgeError::invalid(
                    d,
                    "missing folder: not a DAVIS layout (expected JPEGImages/<res>/<seq> and Annotations/<res>/<seq>)",
                ));
            }
        }

        let names = if let Some(list) = &options.sequence_list {
            read_list(list)?
        } else if root.join("sequences.txt").is_file() {
            read_list(&root.join("sequences.txt"))?
        } else if let Some(list) = ["2017", "2016", "480p"]
            .iter()
            .map(|y| root.join("ImageSets").join(y).join("val.txt"))
            .find(|p| p.is_file())
        {
            read_list(&list)?
        } else {
            list_dirs(&images_dir)?
        };
        if names.is_empty() {
            return Err(EdgeError::invalid(root, "no sequences found"));
        }

        let mut sequences = Vec::with_capacity(names.len());
        for name in names {
            let fdir = images_dir.join(&name);
            if !fdir.is_dir() {
                return Err(EdgeError::invalid(
                    &fdir,
                    format!("sequence {name:?} has no frame folder"),
                ));
            }
            let mut frames: Vec<PathBuf> = Vec::new();
            for entry in std::fs::read_dir(&fdir).map_err(|e| EdgeError::io(&fdir, e))? {
                let p = entry.map_err(|e| EdgeError::io(&fdir, e))?.path();
                let ext_ok = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| FRAME_EXTS.contains(&e.to_ascii_lowercase().as_str()));
                if ext_ok && p.is_file() {
                    frames.push(p);
                }
            }
            frames.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
            if frames.is_empty() {
                return Err(EdgeError::invalid(
                    &fdir,
                    format!("sequence {name:?} has no frames"),
                ));
            }
            if frames.len() < 2 {
                return Err(EdgeError::invalid(
                    &fdir,
                    format!(
                        "sequence {name:?} has {} frame; at least 2 are needed (a support and a query)",
                        frames.len()
                    ),
                ));
            }
            let adir = ann_dir.join(&name);
            let mut annotations = Vec::with_capacity(frames.len());
            for f in &frames {
                let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                let a = adir.join(format!("{stem}.png"));
                if !a.is_file() {
                    return Err(EdgeError::invalid(
                        f,
                        format!("frame has no annotation (expected {})", a.display()),
                    ));
                }
                annotations.push(a);
            }
            sequences.push(Sequence {
                name,
                frames,
                annotations,
            });
        }

        let kind = match options.kind {
            Some(k) => k,
            None => {
                if label_png_info(&sequences[0].annotations[0])?.palette {
                    DavisKind::MultiObject
                } else {
                    DavisKind::SingleObject
                }
            }
        };
        Ok(DavisDataset {
            root: root.to_path_buf(),
            kind,
            sequences,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn kind(&self) -> DavisKind {
        self.kind
    }

    pub fn sequences(&self) -> &[Sequence] {
        &self.sequences
    }

    pub fn len(&self) -> usize {
        self.sequences.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Index of a sequence by name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.sequences.iter().position(|s| s.name == name)
    }

    /// The sequence at `seq` (error if out of range).
    pub fn sequence(&self, seq: usize) -> Result<&Sequence> {
        self.sequences.get(seq).ok_or_else(|| {
            EdgeError::input(format!(
                "sequence index {seq} out of range ({} sequences)",
                self.sequences.len()
            ))
        })
    }

    fn annotation_path(&self, seq: usize, frame: usize) -> Result<&Path> {
        let s = self.sequence(seq)?;
        s.annotations
            .get(frame)
            .map(|p| p.as_path())
            .ok_or_else(|| {
                EdgeError::input(format!(
                    "frame index {frame} out of range (sequence {:?} has {} frames)",
                    s.name,
                    s.len()
                ))
            })
    }

    /// Raw annotation values of a frame (0/255 for 2016, object ids for 2017).
    pub fn label(&self, seq: usize, frame: usize) -> Result<Mask> {
        load_label_png(self.annotation_path(seq, frame)?)
    }

    /// Object ids of a sequence: for 2017 the ids present in frame 0 (ascending, 255 excluded);
    /// for 2016 always `[1]` (the single object, addressed as `None` or `Some(1)`).
    pub fn objects(&self, seq: usize) -> Result<Vec<u8>> {
        match self.kind {
            DavisKind::SingleObject => {
                self.sequence(seq)?;
                Ok(vec![1])
            }
            DavisKind::MultiObject => {
                let label = self.label(seq, 0)?;
                let mut present = [false; 256];
                for &v in &label.data {
                    present[v as usize] = true;
                }
                Ok((1u8..255).filter(|&k| present[k as usize]).collect())
            }
        }
    }

    /// Every 1-way target: one per 2016 sequence (`object_id: None`), one per object in frame 0
    /// of each 2017 sequence (`object_id: Some(k)`), in sequence order.
    pub fn targets(&self) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        for (i, s) in self.sequences.iter().enumerate() {
            match self.kind {
                DavisKind::SingleObject => out.push(Target {
                    sequence: s.name.clone(),
                    object_id: None,
                }),
                DavisKind::MultiObject => {
                    for k in self.objects(i)? {
                        out.push(Target {
                            sequence: s.name.clone(),
                            object_id: Some(k),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    fn binarize(&self, label: &Mask, object: Option<u8>, path: &Path) -> Result<Mask> {
        match (self.kind, object) {
            (DavisKind::SingleObject, None | Some(1)) => Ok(label.binarized()),
            (DavisKind::SingleObject, Some(k)) => Err(EdgeError::invalid(
                path,
                format!("DAVIS-2016 masks have a single object; object {k} was asked for"),
            )),
            (DavisKind::MultiObject, Some(k)) => Ok(label.binary_of(k)),
            (DavisKind::MultiObject, None) => Ok(Mask {
                height: label.height,
                width: label.width,
                data: label
                    .data
                    .iter()
                    .map(|&v| (v != 0 && v != 255) as u8)
                    .collect(),
            }),
        }
    }

    /// Binary (0/1) ground truth of a frame: 2016 `> 0`; 2017 `== object` (with `None`: any
    /// object, i.e. `1..=254`).
    pub fn ground_truth(&self, seq: usize, frame: usize, object: Option<u8>) -> Result<Mask> {
        let path = self.annotation_path(seq, frame)?;
        let label = load_label_png(path)?;
        self.binarize(&label, object, path)
    }

    /// Frame image (RGB) and its binary ground truth for `object`; errors if their sizes differ.
    pub fn load_frame(
        &self,
        seq: usize,
        frame: usize,
        object: Option<u8>,
    ) -> Result<(RgbImage, Mask)> {
        let apath = self.annotation_path(seq, frame)?;
        let ipath = &self.sequences[seq].frames[frame];
        let img = load_rgb(ipath)?;
        let label = load_label_png(apath)?;
        check_same_size(
            ipath,
            img.dimensions(),
            apath,
            (label.width as u32, label.height as u32),
        )?;
        let gt = self.binarize(&label, object, apath)?;
        Ok((img, gt))
    }

    /// Frame image only (RGB).
    pub fn load_image(&self, seq: usize, frame: usize) -> Result<RgbImage> {
        let s = self.sequence(seq)?;
        let p = s.frames.get(frame).ok_or_else(|| {
            EdgeError::input(format!(
                "frame index {frame} out of range (sequence {:?} has {} frames)",
                s.name,
                s.len()
            ))
        })?;
        load_rgb(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_tests::fixture_files::{write_gray_png, write_jpeg, write_palette_png, TempDir};

    /// DAVIS-2016-like fixture: sequences with `n` frames of 6x4 (WxH), masks 0/255.
    fn davis2016(root: &Path, seqs: &[(&str, usize)]) {
        for (name, n) in seqs {
            for i in 0..*n {
                write_jpeg(
                    &root.join(format!("JPEGImages/480p/{name}/{i:05}.jpg")),
                    6,
                    4,
                    [10, 20, 30],
                );
                let mut v = vec![0u8; 24];
                v[i % 24] = 255;
                write_gray_png(
                    &root.join(format!("Annotations/480p/{name}/{i:05}.png")),
                    6,
                    4,
                    &v,
                );
            }
        }
    }

    #[test]
    fn opens_2016_layout_sorted_dirs() {
        let dir = TempDir::new("davis16");
        let root = dir.path();
        davis2016(root, &[("zeta", 3), ("alpha", 2)]);
        let ds = DavisDataset::open(root).unwrap();
        assert_eq!(ds.kind(), DavisKind::SingleObject);
        let names: Vec<_> = ds.sequences().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["alpha", "zeta"]);
        let z = &ds.sequences()[1];
        assert_eq!(z.len(), 3);
        assert!(z.frames[2].ends_with("00002.jpg"));
        assert!(z.annotations[2].ends_with("00002.png"));
        assert_eq!(ds.objects(1).unwrap(), vec![1]);
        let t = ds.targets().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].name(), "zeta");
        let gt = ds.ground_truth(1, 2, None).unwrap();
        assert_eq!((gt.height, gt.width), (4, 6));
        assert_eq!(gt.data[2], 1);
        assert_eq!(gt.count_nonzero(), 1);
        assert_eq!(ds.ground_truth(1, 2, Some(1)).unwrap(), gt);
        assert!(ds.ground_truth(1, 2, Some(2)).is_err());
        let (img, m) = ds.load_frame(0, 1, None).unwrap();
        assert_eq!(img.dimensions(), (6, 4));
        assert_eq!(m.data[1], 1);
        assert!(ds.ground_truth(0, 5, None).is_err());
        assert!(ds.ground_truth(7, 0, None).is_err());
    }

    #[test]
    fn sequence_list_file_order_and_imagesets() {
        let dir = TempDir::new("davis_list");
        let root = dir.path();
        davis2016(root, &[("a", 2), ("b", 2), ("c", 2)]);
        // ImageSets (2016 path-pair form) when there is no sequences.txt.
        std::fs::create_dir_all(root.join("ImageSets/480p")).unwrap();
        std::fs::write(
            root.join("ImageSets/480p/val.txt"),
            "/JPEGImages/480p/c/00000.jpg /Annotations/480p/c/00000.png\n\
             /JPEGImages/480p/c/00001.jpg /Annotations/480p/c/00001.png\n\
             /JPEGImages/480p/a/00000.jpg /Annotations/480p/a/00000.png\n",
        )
        .unwrap();
        let ds = DavisDataset::open(root).unwrap();
        let names: Vec<_> = ds.sequences().iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, vec!["c", "a"]);
        // sequences.txt wins.
        std::fs::write(root.join("sequences.txt"), "b\n\n# comment\na\n").unwrap();
        let ds = DavisDataset::open(root).unwrap();
        let names: Vec<_> = ds.sequences().iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, vec!["b", "a"]);
        assert_eq!(ds.find("a"), Some(1));
        // A listed sequence that does not exist.
        std::fs::write(root.join("sequences.txt"), "a\nnope\n").unwrap();
        let e = DavisDataset::open(root).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn validation_errors() {
        let dir = TempDir::new("davis_err");
        let root = dir.path();
        let e = DavisDataset::open(&root.join("absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent") && e.contains("does not exist"), "{e}");

        std::fs::create_dir_all(root.join("JPEGImages/480p")).unwrap();
        let e = DavisDataset::open(root).unwrap_err().to_string();
        assert!(e.contains("Annotations"), "{e}");

        davis2016(root, &[("one", 1)]);
        let e = DavisDataset::open(root).unwrap_err().to_string();
        assert!(e.contains("at least 2"), "{e}");

        davis2016(root, &[("one", 3)]);
        std::fs::remove_file(root.join("Annotations/480p/one/00001.png")).unwrap();
        let e = DavisDataset::open(root).unwrap_err().to_string();
        assert!(
            e.contains("00001.jpg") && e.contains("no annotation"),
            "{e}"
        );

        std::fs::remove_dir_all(root.join("JPEGImages/480p/one")).unwrap();
        std::fs::create_dir_all(root.join("JPEGImages/480p/one")).unwrap();
        let e = DavisDataset::open(root).unwrap_err().to_string();
        assert!(e.contains("no frames"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }

    #[test]
    fn size_mismatch_is_reported() {
        let dir = TempDir::new("davis_size");
        let root = dir.path();
        davis2016(root, &[("s", 2)]);
        write_gray_png(&root.join("Annotations/480p/s/00001.png"), 3, 2, &[0; 6]);
        let ds = DavisDataset::open(root).unwrap();
        let e = ds.load_frame(0, 1, None).unwrap_err().to_string();
        assert!(e.contains("00001.png") && e.contains("00001.jpg"), "{e}");
        assert!(ds.load_frame(0, 0, None).is_ok());
    }

    #[test]
    fn opens_2017_palette_objects() {
        let dir = TempDir::new("davis17");
        let root = dir.path();
        for i in 0..3 {
            write_jpeg(
                &root.join(format!("JPEGImages/480p/multi/{i:05}.jpg")),
                4,
                2,
                [0, 0, 0],
            );
            // objects 1 and 3 in frame 0, object 2 appears later only.
            let idx = if i == 0 {
                vec![0, 1, 1, 0, 3, 3, 0, 0]
            } else {
                vec![0, 1, 2, 0, 3, 0, 0, 0]
            };
            write_palette_png(
                &root.join(format!("Annotations/480p/multi/{i:05}.png")),
                4,
                2,
                &idx,
                8,
            );
        }
        let ds = DavisDataset::open(root).unwrap();
        assert_eq!(ds.kind(), DavisKind::MultiObject);
        assert_eq!(ds.objects(0).unwrap(), vec![1, 3]);
        let t = ds.targets().unwrap();
        let names: Vec<_> = t.iter().map(|t| t.name()).collect();
        assert_eq!(names, vec!["multi:1", "multi:3"]);
        let gt = ds.ground_truth(0, 1, Some(3)).unwrap();
        assert_eq!(gt.data, vec![0, 0, 0, 0, 1, 0, 0, 0]);
        let any = ds.ground_truth(0, 1, None).unwrap();
        assert_eq!(any.data, vec![0, 1, 1, 0, 1, 0, 0, 0]);
        assert_eq!(ds.label(0, 0).unwrap().data[4], 3);
        // Forcing 2016 semantics on the same files.
        let forced = DavisDataset::open_with(
            root,
            &DavisOptions {
                kind: Some(DavisKind::SingleObject),
                ..DavisOptions::default()
            },
        )
        .unwrap();
        assert_eq!(forced.ground_truth(0, 1, None).unwrap(), any);
    }

    /// Real data (`../shared/data/davis2016`).
    #[test]
    fn real_davis2016() {
        let root = fss_tests::require_shared("davis2016");
        let ds = DavisDataset::open(&root).unwrap();
        assert_eq!(ds.kind(), DavisKind::SingleObject);
        let counts: Vec<usize> = ds.sequences().iter().map(|s| s.len()).collect();
        assert_eq!(counts, vec![50, 84, 75, 104, 60, 50, 50, 49, 80, 43]);
        assert_eq!(ds.sequences()[0].name, "blackswan");
        let (img, gt) = ds.load_frame(0, 0, None).unwrap();
        assert_eq!(img.dimensions(), (854, 480));
        assert_eq!((gt.height, gt.width), (480, 854));
        assert!(gt.data.iter().all(|&v| v <= 1));
        assert!(gt.count_nonzero() > 0);
    }
}
