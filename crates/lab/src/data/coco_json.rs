//! COCO instances JSON (`instances_*.json`) with mask rasterisation in Rust: polygons, RLE
//! (uncompressed `counts` lists and compressed `counts` strings), `iscrowd`.
//!
//! The rasterisation follows pycocotools (`maskApi.c`) step by step, so the masks are the ones
//! the COCO tools (and the published harnesses that read COCO through them) produce:
//!
//! * **Polygons** ([`rle_from_polygon`], pycocotools `rleFrPoly`): the vertices are scaled by 5
//!   and rounded (`(int)(5 x + 0.5)`), the closed boundary is traced on that 5x grid with a
//!   DDA (one point per step along the major axis), and wherever the traced boundary crosses a
//!   pixel-centre column (`x = (u + 0.5) / 5 - 0.5` integral) the crossing row
//!   `ceil((v + 0.5) / 5 - 0.5)` (clamped to `0..=h`) becomes a toggle point of a column-major
//!   run-length code. In effect pixel centres are tested against the polygon column by column
//!   with the even-odd rule, the boundary quantised to 1/5 pixel. Duplicated toggle points are
//!   handled exactly as pycocotools does (a zero-length run merges its neighbours).
//! * **Several polygons** of one annotation are merged by union (pycocotools `merge`,
//!   `intersect = 0`), as in `COCO.annToRLE`.
//! * **RLE**: column-major (Fortran order) runs, starting with a run of zeros. Compressed strings
//!   use COCO's ASCII encoding (`rleFrString`: 5-bit groups + 48, continuation bit 0x20, sign
//!   bit 0x10, each count from the third on stored as the difference to the count two places
//!   back). A code whose counts do not add up to `h * w` is refused.
//!
//! Class masks ([`CocoInstances::class_mask`]): the category id of every *thing* annotation
//! (a category listed in `categories`) painted on a zero background, annotations sorted by
//! decreasing `area` (ties: ascending annotation id) so that small objects stay on top of the
//! large ones they overlap. Crowd regions are painted too unless the options say otherwise.
//!
//! On COCO128 (`annotations/instances_train2017.json` against the 100 train2017 panoptic-id PNG
//! masks) the class masks agree on 99.992% of the pixels that either side labels as a thing
//! (test `real_coco128_json_matches_png_masks`); the rest lies where instances overlap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fss_core::error::{EdgeError, Result};
use fss_core::tensor::Mask;

/// A run-length code in COCO's column-major convention (runs alternate 0, 1, 0, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rle {
    pub height: usize,
    pub width: usize,
    pub counts: Vec<u32>,
}

impl Rle {
    /// Number of foreground pixels (pycocotools `area`).
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| c as u64)
            .sum()
    }

    /// Checks that the runs cover exactly `height * width` pixels.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let total: u64 = self.counts.iter().map(|&c| c as u64).sum();
        let want = self.height as u64 * self.width as u64;
        if total != want {
            return Err(format!(
                "RLE counts add up to {total} pixels, the {}x{} mask has {want}",
                self.height, self.width
            ));
        }
        Ok(())
    }

    /// Paints `value` into a row-major buffer of `height * width` where the code is 1.
    /// The code must be valid ([`Rle::validate`]); extra runs are ignored, never out of bounds.
    pub fn paint(&self, data: &mut [u8], value: u8) {
        let (h, w) = (self.height, self.width);
        let n = (h * w).min(data.len());
        let mut pos = 0usize;
        let mut on = false;
        for &c in &self.counts {
            let end = (pos + c as usize).min(n);
            if on {
                for p in pos..end {
                    // column-major p = x * h + y  ->  row-major y * w + x
                    let (x, y) = (p / h, p % h);
                    data[y * w + x] = value;
                }
            }
            pos = end;
            on = !on;
        }
    }

    /// The decoded 0/1 mask (row-major).
    pub fn to_mask(&self) -> Mask {
        let mut data = vec![0u8; self.height * self.width];
        self.paint(&mut data, 1);
        Mask {
            height: self.height,
            width: self.width,
            data,
        }
    }

    /// Encodes a row-major mask (non-zero = 1), pycocotools `rleEncode`.
    pub fn from_mask(mask: &Mask) -> Rle {
        let (h, w) = (mask.height, mask.width);
        let mut counts = Vec::new();
        let mut cur = false;
        let mut run = 0u32;
        for x in 0..w {
            for y in 0..h {
                let v = mask.data[y * w + x] != 0;
                if v != cur {
                    counts.push(run);
                    run = 0;
                    cur = v;
                }
                run += 1;
            }
        }
        counts.push(run);
        Rle {
            height: h,
            width: w,
            counts,
        }
    }
}

/// pycocotools `rleFrPoly`: the RLE of one polygon `[x0, y0, x1, y1, ...]` in an `h x w` image.
pub fn rle_from_polygon(xy: &[f64], h: usize, w: usize) -> Rle {
    let k = xy.len() / 2;
    if k == 0 || h == 0 || w == 0 {
        return Rle {
            height: h,
            width: w,
            counts: vec![(h * w) as u32],
        };
    }
    let scale = 5.0f64;
    // C's `(int)(v + .5)` truncates toward zero; Rust's `as i64` does the same.
    let mut x: Vec<i64> = (0..k).map(|j| (scale * xy[2 * j] + 0.5) as i64).collect();
    let mut y: Vec<i64> = (0..k)
        .map(|j| (scale * xy[2 * j + 1] + 0.5) as i64)
        .collect();
    x.push(x[0]);
    y.push(y[0]);
    // Dense boundary points on the upsampled grid.
    let mut u: Vec<i64> = Vec::new();
    let mut v: Vec<i64> = Vec::new();
    for j in 0..k {
        let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
        let dx = (xe - xs).abs();
        let dy = (ys - ye).abs();
        let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if flip {
            std::mem::swap(&mut xs, &mut xe);
            std::mem::swap(&mut ys, &mut ye);
        }
        if dx >= dy {
            let s = if dx == 0 {
                0.0
            } else {
                (ye - ys) as f64 / dx as f64
            };
            for d in 0..=dx {
                let t = if flip { dx - d } else { d };
                u.push(t + xs);
                v.push((ys as f64 + s * t as f64 + 0.5) as i64);
            }
        } else {
            let s = (xe - xs) as f64 / dy as f64;
            for d in 0..=dy {
                let t = if flip { dy - d } else { d };
                v.push(t + ys);
                u.push((xs as f64 + s * t as f64 + 0.5) as i64);
            }
        }
    }
    // Points where the boundary crosses a pixel-centre column, downsampled.
    let mut px: Vec<i64> = Vec::new();
    let mut py: Vec<i64> = Vec::new();
    for j in 1..u.len() {
        if u[j] == u[j - 1] {
            continue;
        }
        let xd = if u[j] < u[j - 1] { u[j] } else { u[j] - 1 } as f64;
        let xd = (xd + 0.5) / scale - 0.5;
        if xd.floor() != xd || xd < 0.0 || xd > (w - 1) as f64 {
            continue;
        }
        let yd = if v[j] < v[j - 1] { v[j] } else { v[j - 1] } as f64;
        let mut yd = (yd + 0.5) / scale - 0.5;
        if yd < 0.0 {
            yd = 0.0;
        } else if yd > h as f64 {
            yd = h as f64;
        }
        px.push(xd as i64);
        py.push(yd.ceil() as i64);
    }
    // Toggle positions (column-major) -> run lengths.
    let mut a: Vec<u64> = px
        .iter()
        .zip(&py)
        .map(|(&xx, &yy)| (xx * h as i64 + yy) as u64)
        .collect();
    a.push((h * w) as u64);
    a.sort_unstable();
    let mut prev = 0u64;
    for t in a.iter_mut() {
        let cur = *t;
        *t -= prev;
        prev = cur;
    }
    // pycocotools' merge of zero-length runs, verbatim.
    let mut b: Vec<u32> = Vec::with_capacity(a.len());
    let mut j = 0usize;
    b.push(a[j] as u32);
    j += 1;
    while j < a.len() {
        if a[j] > 0 {
            b.push(a[j] as u32);
            j += 1;
        } else {
            j += 1;
            if j < a.len() {
                if let Some(last) = b.last_mut() {
                    *last += a[j] as u32;
                }
                j += 1;
            }
        }
    }
    Rle {
        height: h,
        width: w,
        counts: b,
    }
}

/// Decodes COCO's compressed RLE string (pycocotools `rleFrString`).
pub fn rle_from_string(s: &str, h: usize, w: usize) -> std::result::Result<Rle, String> {
    let bytes = s.as_bytes();
    let mut counts: Vec<u32> = Vec::new();
    let mut p = 0usize;
    while p < bytes.len() {
        let mut x: i64 = 0;
        let mut k = 0u32;
        loop {
            let Some(&ch) = bytes.get(p) else {
                return Err("compressed RLE string ends inside a count".into());
            };
            if !(48..48 + 64).contains(&ch) {
                return Err(format!(
                    "compressed RLE string has an invalid character {:?} at {p}",
                    ch as char
                ));
            }
            if k >= 12 {
                return Err("compressed RLE string has a count of more than 60 bits".into());
            }
            let c = (ch - 48) as i64;
            x |= (c & 0x1f) << (5 * k);
            let more = c & 0x20 != 0;
            p += 1;
            k += 1;
            if !more {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        let m = counts.len();
        if m > 2 {
            x += counts[m - 2] as i64;
        }
        let c = u32::try_from(x)
            .map_err(|_| format!("compressed RLE string decodes to a bad count {x}"))?;
        counts.push(c);
    }
    Ok(Rle {
        height: h,
        width: w,
        counts,
    })
}

/// Encodes an RLE as COCO's compressed string (pycocotools `rleToString`).
pub fn rle_to_string(rle: &Rle) -> String {
    let mut s = String::new();
    for i in 0..rle.counts.len() {
        let mut x = rle.counts[i] as i64;
        if i > 2 {
            x -= rle.counts[i - 2] as i64;
        }
        loop {
            let mut c = (x & 0x1f) as u8;
            x >>= 5;
            let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            s.push((c + 48) as char);
            if !more {
                break;
            }
        }
    }
    s
}

/// One annotation's geometry as written in the file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    /// One or more polygons `[x0, y0, x1, y1, ...]` (pixel coordinates, corner at 0,0).
    Polygons(Vec<Vec<f64>>),
    /// Run-length code with its `[height, width]`.
    Rle { counts: RleCounts, size: [u64; 2] },
}

/// `counts` of an RLE segmentation.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum RleCounts {
    Uncompressed(Vec<u32>),
    Compressed(String),
}

/// An entry of `images`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct ImageInfo {
    pub id: u64,
    pub file_name: String,
    pub height: u32,
    pub width: u32,
}

/// An entry of `annotations`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Annotation {
    pub id: u64,
    pub image_id: u64,
    pub category_id: u64,
    pub segmentation: Segmentation,
    #[serde(default)]
    pub area: f64,
    #[serde(default)]
    pub iscrowd: u8,
}

/// An entry of `categories`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct CategoryInfo {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub supercategory: String,
}

#[derive(serde::Deserialize)]
struct InstancesJson {
    images: Vec<ImageInfo>,
    annotations: Vec<Annotation>,
    categories: Vec<CategoryInfo>,
}

/// How [`CocoInstances::class_mask`] paints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassMaskOptions {
    /// Paint `iscrowd = 1` regions (COCO's panoptic masks label them with their category).
    pub include_crowd: bool,
}

impl Default for ClassMaskOptions {
    fn default() -> Self {
        ClassMaskOptions {
            include_crowd: true,
        }
    }
}

/// A parsed COCO instances file.
#[derive(Debug, Clone)]
pub struct CocoInstances {
    path: PathBuf,
    pub images: Vec<ImageInfo>,
    pub annotations: Vec<Annotation>,
    /// Sorted by ascending id.
    pub categories: Vec<CategoryInfo>,
    by_image: HashMap<u64, Vec<usize>>,
    image_index: HashMap<u64, usize>,
}

impl CocoInstances {
    /// Reads and checks an instances file (ids, references, category ids in 1..=255).
    pub fn open(path: &Path) -> Result<CocoInstances> {
        let bytes = std::fs::read(path).map_err(|e| EdgeError::io(path, e))?;
        Self::from_slice(path, &bytes)
    }

    /// Parses instances JSON already in memory; `path` names it in errors.
    pub fn from_slice(path: &Path, bytes: &[u8]) -> Result<CocoInstances> {
        let parsed: InstancesJson = serde_json::from_slice(bytes)
            .map_err(|e| EdgeError::invalid(path, format!("not a COCO instances file: {e}")))?;
        let mut categories = parsed.categories;
        categories.sort_by_key(|c| c.id);
        if categories.windows(2).any(|w| w[0].id == w[1].id) {
            return Err(EdgeError::invalid(path, "duplicate category ids"));
        }
        if let Some(c) = categories.iter().find(|c| c.id == 0 || c.id > 255) {
            return Err(EdgeError::invalid(
                path,
                format!("category id {} of {:?} is not in 1..=255", c.id, c.name),
            ));
        }
        let mut image_index = HashMap::new();
        for (i, im) in parsed.images.iter().enumerate() {
            if image_index.insert(im.id, i).is_some() {
                return Err(EdgeError::invalid(
                    path,
                    format!("duplicate image id {}", im.id),
                ));
            }
        }
        let mut by_image: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, a) in parsed.annotations.iter().enumerate() {
            if !image_index.contains_key(&a.image_id) {
                return Err(EdgeError::invalid(
                    path,
                    format!(
                        "annotation {} refers to unknown image id {}",
                        a.id, a.image_id
                    ),
                ));
            }
            if !(1..=255).contains(&a.category_id) {
                return Err(EdgeError::invalid(
                    path,
                    format!(
                        "annotation {} has category id {} (not in 1..=255)",
                        a.id, a.category_id
                    ),
                ));
            }
            by_image.entry(a.image_id).or_default().push(i);
        }
        Ok(CocoInstances {
            path: path.to_path_buf(),
            images: parsed.images,
            annotations: parsed.annotations,
            categories,
            by_image,
            image_index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image entry of an id.
    pub fn image(&self, image_id: u64) -> Option<&ImageInfo> {
        self.image_index.get(&image_id).map(|&i| &self.images[i])
    }

    /// The annotations of an image, in file order.
    pub fn annotations_of(&self, image_id: u64) -> Vec<&Annotation> {
        self.by_image
            .get(&image_id)
            .map(|v| v.iter().map(|&i| &self.annotations[i]).collect())
            .unwrap_or_default()
    }

    /// The RLE of one annotation in its image (`COCO.annToRLE`).
    pub fn annotation_rle(&self, ann: &Annotation) -> Result<Rle> {
        let im = self.image(ann.image_id).ok_or_else(|| {
            EdgeError::invalid(
                &self.path,
                format!(
                    "annotation {} refers to unknown image id {}",
                    ann.id, ann.image_id
                ),
            )
        })?;
        let (h, w) = (im.height as usize, im.width as usize);
        let bad = |reason: String| {
            EdgeError::invalid(&self.path, format!("annotation {}: {reason}", ann.id))
        };
        match &ann.segmentation {
            Segmentation::Polygons(polys) => {
                let mut mask = vec![0u8; h * w];
                for poly in polys {
                    if poly.len() % 2 != 0 || poly.iter().any(|v| !v.is_finite()) {
                        return Err(bad(format!(
                            "polygon of {} coordinates is not a list of finite x, y pairs",
                            poly.len()
                        )));
                    }
                    rle_from_polygon(poly, h, w).paint(&mut mask, 1);
                }
                Ok(Rle::from_mask(&Mask {
                    height: h,
                    width: w,
                    data: mask,
                }))
            }
            Segmentation::Rle { counts, size } => {
                if size[0] != h as u64 || size[1] != w as u64 {
                    return Err(bad(format!(
                        "RLE size {}x{} differs from the image's {h}x{w}",
                        size[0], size[1]
                    )));
                }
                let rle = match counts {
                    RleCounts::Uncompressed(c) => Rle {
                        height: h,
                        width: w,
                        counts: c.clone(),
                    },
                    RleCounts::Compressed(s) => rle_from_string(s, h, w).map_err(bad)?,
                };
                rle.validate().map_err(bad)?;
                Ok(rle)
            }
        }
    }

    /// The 0/1 mask of one annotation (`COCO.annToMask`).
    pub fn annotation_mask(&self, ann: &Annotation) -> Result<Mask> {
        Ok(self.annotation_rle(ann)?.to_mask())
    }

    /// Whether a category id is one of `categories`.
    pub fn is_category(&self, category_id: u64) -> bool {
        self.categories
            .binary_search_by_key(&category_id, |c| c.id)
            .is_ok()
    }

    /// The class mask of an image: category id where a thing annotation covers the pixel, 0
    /// elsewhere; larger annotations painted first (see the module doc).
    pub fn class_mask(&self, image_id: u64, options: ClassMaskOptions) -> Result<Mask> {
        let im = self.image(image_id).ok_or_else(|| {
            EdgeError::invalid(&self.path, format!("no image with id {image_id}"))
        })?;
        let (h, w) = (im.height as usize, im.width as usize);
        let mut anns: Vec<&Annotation> = self
            .annotations_of(image_id)
            .into_iter()
            .filter(|a| self.is_category(a.category_id))
            .filter(|a| options.include_crowd || a.iscrowd == 0)
            .collect();
        anns.sort_by(|a, b| b.area.total_cmp(&a.area).then(a.id.cmp(&b.id)));
        let mut data = vec![0u8; h * w];
        for a in anns {
            self.annotation_rle(a)?
                .paint(&mut data, a.category_id as u8);
        }
        Ok(Mask {
            height: h,
            width: w,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_core::image_io::load_label_png;

    fn mask_of(rle: &Rle) -> Vec<Vec<u8>> {
        let m = rle.to_mask();
        m.data.chunks(m.width).map(|r| r.to_vec()).collect()
    }

    #[test]
    fn polygon_square_covers_pixel_centres() {
        // Square with corners (1,1)-(4,4): pixel centres 1.5, 2.5, 3.5 are inside -> 3x3 pixels
        // at columns/rows 1..=3.
        let rle = rle_from_polygon(&[1.0, 1.0, 4.0, 1.0, 4.0, 4.0, 1.0, 4.0], 6, 6);
        rle.validate().unwrap();
        assert_eq!(rle.area(), 9);
        let m = mask_of(&rle);
        for (y, row) in m.iter().enumerate() {
            for (x, &v) in row.iter().enumerate() {
                let inside = (1..=3).contains(&x) && (1..=3).contains(&y);
                assert_eq!(v, inside as u8, "pixel ({x},{y})");
            }
        }
        // pycocotools: frPyObjects([[1,1,4,1,4,4,1,4]], 6, 6) -> counts [7, 3, 3, 3, 3, 3, 14].
        assert_eq!(rle.counts, vec![7, 3, 3, 3, 3, 3, 14]);
    }

    #[test]
    fn polygon_outside_and_degenerate() {
        let rle = rle_from_polygon(&[-5.0, -5.0, 100.0, -5.0, 100.0, 100.0, -5.0, 100.0], 4, 5);
        rle.validate().unwrap();
        assert_eq!(rle.area(), 20);
        let rle = rle_from_polygon(&[1.0, 1.0], 4, 5);
        rle.validate().unwrap();
        assert_eq!(rle.area(), 0);
        let rle = rle_from_polygon(&[], 4, 5);
        assert_eq!(rle.counts, vec![20]);
        // A triangle: area close to the geometric one.
        let rle = rle_from_polygon(&[0.0, 0.0, 40.0, 0.0, 0.0, 40.0], 50, 50);
        rle.validate().unwrap();
        let a = rle.area() as f64;
        assert!((a - 800.0).abs() < 40.0, "{a}");
    }

    #[test]
    fn rle_string_roundtrip() {
        let rle = Rle {
            height: 7,
            width: 9,
            counts: vec![3, 10, 0, 1, 40, 2, 7],
        };
        let s = rle_to_string(&rle);
        assert_eq!(rle_from_string(&s, 7, 9).unwrap(), rle);
        // Known pycocotools string: encode(np.asfortranarray(ones((2,2)))) == b"04" style:
        // a 2x2 all-ones mask is counts [0, 4] -> "04".
        let ones = Rle {
            height: 2,
            width: 2,
            counts: vec![0, 4],
        };
        assert_eq!(rle_to_string(&ones), "04");
        // Large counts and negative deltas survive.
        let big = Rle {
            height: 1000,
            width: 1000,
            counts: vec![500_000, 1, 400_000, 99_998, 1],
        };
        big.validate().unwrap();
        assert_eq!(
            rle_from_string(&rle_to_string(&big), 1000, 1000).unwrap(),
            big
        );
        assert!(rle_from_string("0 4", 2, 2).is_err());
        assert!(rle_from_string("o", 2, 2).is_err()); // continuation without an end
    }

    #[test]
    fn encode_decode_mask() {
        let m = Mask {
            height: 3,
            width: 4,
            data: vec![0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1, 1],
        };
        let rle = Rle::from_mask(&m);
        rle.validate().unwrap();
        assert_eq!(rle.to_mask(), m);
        assert_eq!(rle.area(), 7);
    }

    fn write_json(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("instances.json");
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn instances_file_and_class_mask() {
        let dir = fss_tests::fixture_files::TempDir::new("coco_json");
        // 6x6 image; a big square of cat 1 (area 25), a small crowd RLE of cat 2 on top, an
        // annotation of a non-thing category 200 (ignored by class_mask).
        let small = Rle::from_mask(&Mask {
            height: 6,
            width: 6,
            data: (0..36).map(|i| (i == 14 || i == 15) as u8).collect(),
        });
        let body = format!(
            r#"{{"images": [{{"id": 7, "file_name": "a.jpg", "height": 6, "width": 6}}],
             "annotations": [
               {{"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 25,
                 "segmentation": [[0,0,5,0,5,5,0,5]]}},
               {{"id": 2, "image_id": 7, "category_id": 2, "iscrowd": 1, "area": 2,
                 "segmentation": {{"counts": {:?}, "size": [6, 6]}}}},
               {{"id": 3, "image_id": 7, "category_id": 200, "iscrowd": 0, "area": 1,
                 "segmentation": {{"counts": "{}", "size": [6, 6]}}}}
             ],
             "categories": [{{"id": 2, "name": "b"}}, {{"id": 1, "name": "a"}}]}}"#,
            small.counts,
            rle_to_string(&small)
        );
        let p = write_json(dir.path(), &body);
        let inst = CocoInstances::open(&p).unwrap();
        assert_eq!(inst.categories[0].name, "a");
        assert_eq!(inst.annotations_of(7).len(), 3);
        let a3 = inst.annotation_mask(&inst.annotations[2]).unwrap();
        assert_eq!(a3.count_nonzero(), 2);
        let m = inst.class_mask(7, ClassMaskOptions::default()).unwrap();
        assert_eq!(m.data.iter().filter(|&&v| v == 1).count(), 23);
        assert_eq!(m.data[14], 2);
        assert_eq!(m.data[15], 2);
        assert!(m.data[30..].iter().all(|&v| v == 0)); // row 5 is outside the square
        let m = inst
            .class_mask(
                7,
                ClassMaskOptions {
                    include_crowd: false,
                },
            )
            .unwrap();
        assert_eq!(m.data.iter().filter(|&&v| v == 1).count(), 25);
        assert!(inst.class_mask(8, ClassMaskOptions::default()).is_err());
    }

    #[test]
    fn bad_files_give_one_line_errors() {
        let dir = fss_tests::fixture_files::TempDir::new("coco_json_bad");
        let cases = [
            ("{", "not a COCO instances file"),
            (
                r#"{"images": [], "annotations": [{"id": 1, "image_id": 3, "category_id": 1, "segmentation": []}], "categories": []}"#,
                "unknown image id",
            ),
            (
                r#"{"images": [], "annotations": [], "categories": [{"id": 300, "name": "x"}]}"#,
                "not in 1..=255",
            ),
        ];
        for (body, want) in cases {
            let p = write_json(dir.path(), body);
            let e = CocoInstances::open(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("instances.json"), "{e}");
            assert!(!e.contains('\n'));
        }
        let body = r#"{"images": [{"id": 1, "file_name": "a.jpg", "height": 2, "width": 2}],
            "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "segmentation": {"counts": [1, 1], "size": [2, 2]}},
              {"id": 2, "image_id": 1, "category_id": 1, "segmentation": {"counts": [4], "size": [3, 2]}},
              {"id": 3, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 1]]}
            ],
            "categories": [{"id": 1, "name": "a"}]}"#;
        let p = write_json(dir.path(), body);
        let inst = CocoInstances::open(&p).unwrap();
        for (i, want) in ["add up to 2", "differs from", "finite x, y pairs"]
            .iter()
            .enumerate()
        {
            let e = inst
                .annotation_rle(&inst.annotations[i])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(want) && e.contains(&format!("annotation {}", i + 1)),
                "{e}"
            );
        }
        assert!(CocoInstances::open(&dir.path().join("missing.json")).is_err());
    }

    /// Rasterises `coco128/annotations/instances_train2017.json` and compares thing pixels
    /// with the PNG masks (COCO panoptic category ids) of every train2017 image that has one.
    #[test]
    fn real_coco128_json_matches_png_masks() {
        let root = fss_tests::require_shared("coco128");
        let json = fss_tests::require_shared("coco128/annotations/instances_train2017.json");
        let inst = CocoInstances::open(&json).unwrap();
        assert_eq!(inst.categories.len(), 80);
        let thing = |v: u8| inst.is_category(v as u64);
        let (mut images, mut union, mut agree, mut total, mut equal) = (0, 0u64, 0u64, 0u64, 0u64);
        let (mut union_nc, mut agree_nc) = (0u64, 0u64);
        // Differing thing pixels covered by 0, 1, >= 2 annotations.
        let mut differ = [0u64; 3];
        for im in &inst.images {
            let stem = im.file_name.trim_end_matches(".jpg");
            let png = root.join(format!("masks/train2017/{stem}.png"));
            if !png.is_file() {
                continue;
            }
            images += 1;
            let gt = load_label_png(&png).unwrap();
            let ours = inst.class_mask(im.id, ClassMaskOptions::default()).unwrap();
            assert_eq!((gt.height, gt.width), (ours.height, ours.width));
            let no_crowd = inst
                .class_mask(
                    im.id,
                    ClassMaskOptions {
                        include_crowd: false,
                    },
                )
                .unwrap();
            for (&g, &o) in gt.data.iter().zip(&no_crowd.data) {
                let g = if thing(g) { g } else { 0 };
                if g != 0 || o != 0 {
                    union_nc += 1;
                    agree_nc += (g == o) as u64;
                }
            }
            // How many thing annotations cover each pixel (to explain disagreements).
            let mut cover = vec![0u8; ours.data.len()];
            for a in inst.annotations_of(im.id) {
                if inst.is_category(a.category_id) {
                    let m = inst.annotation_mask(a).unwrap();
                    for (c, &v) in cover.iter_mut().zip(&m.data) {
                        *c = c.saturating_add(v);
                    }
                }
            }
            for ((&g, &o), &c) in gt.data.iter().zip(&ours.data).zip(&cover) {
                let (g, o) = (if thing(g) { g } else { 0 }, o);
                total += 1;
                equal += (g == o) as u64;
                if g != 0 || o != 0 {
                    union += 1;
                    agree += (g == o) as u64;
                    if g != o {
                        differ[(c as usize).min(2)] += 1;
                    }
                }
            }
        }
        let thing_agreement = agree as f64 / union as f64;
        let pixel_agreement = equal as f64 / total as f64;
        eprintln!(
            "COCO JSON vs PNG: {images} images, thing-pixel agreement {:.5} ({agree}/{union}), \
             all-pixel agreement {:.5}",
            thing_agreement, pixel_agreement
        );
        eprintln!(
            "  without crowd regions: thing-pixel agreement {:.5} ({agree_nc}/{union_nc})",
            agree_nc as f64 / union_nc as f64
        );
        eprintln!(
            "  differing pixels covered by 0 / 1 / >= 2 annotations: {} / {} / {}",
            differ[0], differ[1], differ[2]
        );
        assert_eq!(images, 100);
        // Measured 0.99992: 739 differing pixels of 9.35 M, 725 of them where two or more
        // instances overlap (the panoptic PNGs resolved those overlaps otherwise than the
        // largest-first order), 14 on single-instance pixels, none outside every instance.
        // Painting crowd regions matters: without them 0.99449.
        assert!(thing_agreement >= 0.999, "{thing_agreement}");
    }
}
