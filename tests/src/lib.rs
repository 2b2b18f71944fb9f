//! Small synthetic datasets in the real layouts, generated on the fly for tests (the repository
//! ships no datasets). Objects are coloured, textured shapes on a textured background, so a
//! pretrained backbone can tell them apart and training has something to learn.

pub mod fixture_files;
pub mod testkit;

use image::{GrayImage, Luma, Rgb, RgbImage};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("fss-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
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

/// Deterministic hash noise in 0..1.
fn noise(x: u32, y: u32, seed: u32) -> f32 {
    let mut h =
        x.wrapping_mul(374761393) ^ y.wrapping_mul(668265263) ^ seed.wrapping_mul(2246822519);
    h = (h ^ (h >> 13)).wrapping_mul(1274126177);
    (h >> 8) as f32 / (1u32 << 24) as f32
}

fn class_colour(class: u32) -> [f32; 3] {
    let palette = [
        [220.0, 40.0, 40.0],
        [40.0, 200.0, 60.0],
        [40.0, 60.0, 220.0],
        [230.0, 200.0, 30.0],
        [200.0, 40.0, 200.0],
        [30.0, 200.0, 200.0],
    ];
    palette[class as usize % palette.len()]
}

/// Paints a scene: textured background, and one disk per `(class, cx, cy, r)`; returns the RGB
/// image and the label map (value = class id given, 0 = background).
pub fn scene(w: u32, h: u32, seed: u32, objects: &[(u8, f32, f32, f32)]) -> (RgbImage, GrayImage) {
    let mut img = RgbImage::new(w, h);
    let mut label = GrayImage::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let n = noise(x / 3, y / 3, seed);
            let v = 90.0 + 60.0 * n + 30.0 * ((x as f32 / 7.0).sin());
            let mut px = [v, v * 0.9, v * 0.8];
            for &(class, cx, cy, r) in objects {
                let (dx, dy) = (x as f32 - cx * w as f32, y as f32 - cy * h as f32);
                if dx * dx + dy * dy <= (r * w as f32) * (r * w as f32) {
                    let c = class_colour(class as u32);
                    let stripe = if (x + y) % 6 < 3 { 1.0 } else { 0.7 };
                    px = [c[0] * stripe, c[1] * stripe, c[2] * stripe];
                    label.put_pixel(x, y, Luma([class]));
                }
            }
            img.put_pixel(x, y, Rgb(px.map(|v| v.clamp(0.0, 255.0) as u8)));
        }
    }
    (img, label)
}

/// The 80 COCO thing category ids, ascending.
pub fn coco_thing_ids() -> Vec<u8> {
    let gaps = [12u8, 26, 29, 30, 45, 66, 68, 69, 71, 83];
    (1u8..=90).filter(|i| !gaps.contains(i)).collect()
}

/// The `categories` entries of an instances file: the 80 thing ids, named `class<id>`.
fn coco_categories_json() -> Vec<String> {
    coco_thing_ids()
        .iter()
        .map(|id| format!(r#"{{"supercategory": "x", "id": {id}, "name": "class{id}"}}"#))
        .collect()
}

/// A COCO128-layout dataset: `annotations/instances_train2017.json` (the 80 categories),
/// `images/{train2017,val2017}/<id>.jpg` and `masks/<split>/<id>.png` with COCO ids as values.
/// Images hold objects of a few classes: class indices 2, 3, 4 (base classes of fold 0 in the
/// interleaved split) and 1 (a novel class of fold 0), each image two objects.
pub fn write_coco_like(root: &Path, n_train: usize, n_val: usize, side: u32) {
    let ids = coco_thing_ids();
    let cats = coco_categories_json();
    std::fs::create_dir_all(root.join("annotations")).unwrap();
    std::fs::write(
        root.join("annotations/instances_train2017.json"),
        format!(
            r#"{{"images": [], "annotations": [], "categories": [{}]}}"#,
            cats.join(", ")
        ),
    )
    .unwrap();
    let classes = [ids[1], ids[2], ids[3], ids[0]];
    let mut k = 0u32;
    for (split, n) in [("train2017", n_train), ("val2017", n_val)] {
        std::fs::create_dir_all(root.join(format!("images/{split}"))).unwrap();
        std::fs::create_dir_all(root.join(format!("masks/{split}"))).unwrap();
        for _ in 0..n {
            let a = classes[(k % 4) as usize];
            let b = classes[((k + 1) % 4) as usize];
            let (img, label) = scene(
                side,
                side,
                k,
                &[
                    (a, 0.3 + 0.05 * (k % 3) as f32, 0.35, 0.22),
                    (b, 0.72, 0.7 - 0.05 * (k % 2) as f32, 0.2),
                ],
            );
            let stem = format!("{:012}", 100 + k);
            img.save(root.join(format!("images/{split}/{stem}.jpg")))
                .unwrap();
            label
                .save(root.join(format!("masks/{split}/{stem}.png")))
                .unwrap();
            k += 1;
        }
    }
}

/// The column-major run-length counts (COCO's uncompressed RLE, starting with a run of zeros)
/// of the pixels of `label` equal to `value`.
pub fn rle_counts(label: &GrayImage, value: u8) -> Vec<u32> {
    let (w, h) = label.dimensions();
    let mut counts = Vec::new();
    let (mut current, mut run) = (false, 0u32);
    for x in 0..w {
        for y in 0..h {
            let on = label.get_pixel(x, y).0[0] == value;
            if on != current {
                counts.push(run);
                current = on;
                run = 0;
            }
            run += 1;
        }
    }
    counts.push(run);
    counts
}

/// COCO as distributed (`annotations/instances_{train2017,val2017}.json` and
/// `{train2017,val2017}/<file>.jpg`) with the very images and labels of [`write_coco_like`]
/// (same arguments): each object is one annotation with an uncompressed RLE of its pixels, so
/// the rasterised label maps equal that layout's PNGs pixel for pixel.
pub fn write_coco_distributed(root: &Path, n_train: usize, n_val: usize, side: u32) {
    let staging = root.join(".coco128-staging");
    write_coco_like(&staging, n_train, n_val, side);
    let cats = coco_categories_json();
    std::fs::create_dir_all(root.join("annotations")).unwrap();
    let mut ann_id = 1u32;
    for split in ["train2017", "val2017"] {
        let dir = root.join(split);
        std::fs::create_dir_all(&dir).unwrap();
        let mut images = Vec::new();
        let mut anns = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(staging.join("images").join(split))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let stem = f.file_stem().unwrap().to_str().unwrap().to_string();
            let image_id: u64 = stem.parse().unwrap();
            let file_name = format!("{stem}.jpg");
            std::fs::copy(&f, dir.join(&file_name)).unwrap();
            let label = image::open(staging.join(format!("masks/{split}/{stem}.png")))
                .unwrap()
                .to_luma8();
            let (w, h) = label.dimensions();
            images.push(format!(
                r#"{{"id": {image_id}, "file_name": "{file_name}", "width": {w}, "height": {h}}}"#
            ));
            let mut values: Vec<u8> = label.pixels().map(|p| p.0[0]).filter(|&v| v != 0).collect();
            values.sort_unstable();
            values.dedup();
            for v in values {
                let counts = rle_counts(&label, v);
                let area = label.pixels().filter(|p| p.0[0] == v).count();
                let counts: Vec<String> = counts.iter().map(|c| c.to_string()).collect();
                anns.push(format!(
                    r#"{{"id": {ann_id}, "image_id": {image_id}, "category_id": {v}, "iscrowd": 0, "area": {area}, "segmentation": {{"size": [{h}, {w}], "counts": [{}]}}}}"#,
                    counts.join(", ")
                ));
                ann_id += 1;
            }
        }
        std::fs::write(
            root.join(format!("annotations/instances_{split}.json")),
            format!(
                r#"{{"images": [{}], "annotations": [{}], "categories": [{}]}}"#,
                images.join(", "),
                anns.join(", "),
                cats.join(", ")
            ),
        )
        .unwrap();
    }
    std::fs::remove_dir_all(&staging).unwrap();
}

/// A PASCAL VOC2012-layout dataset with SBD-style labels: `JPEGImages/<name>.jpg`,
/// `SegmentationClassAug/<name>.png` (grayscale VOC ids, a 255 ring around each object) and
/// `ImageSets/Segmentation/{train,val}.txt` (even images train, odd val). Image `k` holds two
/// objects cycling through VOC ids 6, 7, 8 (base classes of PASCAL-5i fold 0) and 1 (novel).
pub fn write_pascal_like(root: &Path, n: usize, side: u32) {
    std::fs::create_dir_all(root.join("JPEGImages")).unwrap();
    std::fs::create_dir_all(root.join("SegmentationClassAug")).unwrap();
    std::fs::create_dir_all(root.join("ImageSets/Segmentation")).unwrap();
    let classes = [6u8, 7, 8, 1];
    let (mut train, mut val) = (String::new(), String::new());
    for k in 0..n {
        let a = classes[k % 4];
        let b = classes[(k + 1) % 4];
        let (img, label) = scene(
            side,
            side,
            200 + k as u32,
            &[
                (a, 0.3 + 0.05 * (k % 3) as f32, 0.35, 0.22),
                (b, 0.72, 0.7 - 0.05 * (k % 2) as f32, 0.2),
            ],
        );
        // The void ring: background pixels next to an object.
        let voided = GrayImage::from_fn(side, side, |x, y| {
            let v = label.get_pixel(x, y).0[0];
            if v != 0 {
                return Luma([v]);
            }
            let near = [(1i32, 0i32), (-1, 0), (0, 1), (0, -1)]
                .iter()
                .any(|(dx, dy)| {
                    let (nx, ny) = (x as i32 + dx, y as i32 + dy);
                    nx >= 0
                        && ny >= 0
                        && (nx as u32) < side
                        && (ny as u32) < side
                        && label.get_pixel(nx as u32, ny as u32).0[0] != 0
                });
            Luma([if near { 255 } else { 0 }])
        });
        let name = format!("2010_{k:06}");
        img.save(root.join(format!("JPEGImages/{name}.jpg")))
            .unwrap();
        voided
            .save(root.join(format!("SegmentationClassAug/{name}.png")))
            .unwrap();
        let list = if k % 2 == 0 { &mut train } else { &mut val };
        list.push_str(&name);
        list.push('\n');
    }
    std::fs::write(root.join("ImageSets/Segmentation/train.txt"), train).unwrap();
    std::fs::write(root.join("ImageSets/Segmentation/val.txt"), val).unwrap();
}

/// A DAVIS-2016-layout dataset with `sequences` sequences of `frames` frames of `w` x `h`: a
/// disk moving across a textured background, masks 0/255.
pub fn write_davis_like(root: &Path, sequences: usize, frames: usize, w: u32, h: u32) {
    let mut names = Vec::new();
    for s in 0..sequences {
        let name = format!("seq{s}");
        let jdir = root.join("JPEGImages/480p").join(&name);
        let adir = root.join("Annotations/480p").join(&name);
        std::fs::create_dir_all(&jdir).unwrap();
        std::fs::create_dir_all(&adir).unwrap();
        for f in 0..frames {
            let t = f as f32 / frames.max(1) as f32;
            let (img, label) = scene(
                w,
                h,
                7 + s as u32,
                &[(1 + s as u8, 0.3 + 0.4 * t, 0.5, 0.15)],
            );
            let mask = GrayImage::from_fn(w, h, |x, y| {
                Luma([if label.get_pixel(x, y).0[0] > 0 {
                    255
                } else {
                    0
                }])
            });
            img.save(jdir.join(format!("{f:05}.jpg"))).unwrap();
            mask.save(adir.join(format!("{f:05}.png"))).unwrap();
        }
        names.push(name);
    }
    std::fs::write(root.join("sequences.txt"), names.join("\n") + "\n").unwrap();
}

/// A dataset in the user folder format (`fss_lab::data::folder`): for each `(class, n)`, `n` images
/// `<class>/images/imgNN.jpg` of `side` x `side` with one disk of that class and binary masks
/// `<class>/masks/imgNN.png` (0 / 255).
pub fn write_folder_like(root: &Path, classes: &[(&str, usize)], side: u32) {
    for (ci, (name, n)) in classes.iter().enumerate() {
        let idir = root.join(name).join("images");
        let mdir = root.join(name).join("masks");
        std::fs::create_dir_all(&idir).unwrap();
        std::fs::create_dir_all(&mdir).unwrap();
        for k in 0..*n {
            let (img, label) = scene(
                side,
                side,
                31 * ci as u32 + k as u32,
                &[(
                    1 + ci as u8,
                    0.35 + 0.1 * (k % 3) as f32,
                    0.5,
                    0.18 + 0.03 * (k % 2) as f32,
                )],
            );
            let mask = GrayImage::from_fn(side, side, |x, y| {
                Luma([if label.get_pixel(x, y).0[0] > 0 {
                    255
                } else {
                    0
                }])
            });
            img.save(idir.join(format!("img{k:02}.jpg"))).unwrap();
            mask.save(mdir.join(format!("img{k:02}.png"))).unwrap();
        }
    }
}

/// The workspace root (this crate sits in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `../shared/data` next to the workspace, if present.
pub fn shared_data() -> Option<PathBuf> {
    let p = workspace_root().parent()?.join("shared/data");
    p.is_dir().then_some(p)
}

/// `../shared/data/<rel>` beside the checkout, for the tests that read the real data (named
/// `real_*`). Missing, it fails the test with the reason: a fresh clone has `../shared` beside
/// it, as CI has; without it, `cargo test -- --skip real_` leaves these tests out, visibly.
pub fn require_shared(rel: &str) -> PathBuf {
    let p = workspace_root().join("../shared/data").join(rel);
    assert!(
        p.exists(),
        "{} not found: the real-data tests read ../shared/data beside the checkout (without \
         it, leave them out with `cargo test -- --skip real_`)",
        p.display()
    );
    p
}

/// A failed run of one of the project's binaries: non-zero exit, no panic, and a first stderr
/// line `error: ...` that contains every needle.
pub fn assert_clean_error(out: &std::process::Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "panic instead of an error: {stderr}"
    );
    let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(
        first.starts_with("error:"),
        "first line is not an error line: {stderr}"
    );
    for n in needles {
        assert!(
            first.contains(n),
            "'{n}' missing from the error line: {first}"
        );
    }
}

/// A scene with a red (label 1) and a green (label 2) disk, saved as `<stem>.jpg` with the two
/// masks `<stem>_1.png` and `<stem>_2.png` (0/255); `shift` moves the disks towards each other.
pub fn write_two_object_scene(
    dir: &Path,
    stem: &str,
    w: u32,
    h: u32,
    seed: u32,
    shift: f32,
) -> (PathBuf, PathBuf, PathBuf) {
    let (img, label) = scene(
        w,
        h,
        seed,
        &[(1, 0.28 + shift, 0.35, 0.17), (2, 0.7 - shift, 0.65, 0.17)],
    );
    let image = dir.join(format!("{stem}.jpg"));
    img.save(&image).unwrap();
    let mask = |k: u8| {
        let m = GrayImage::from_fn(w, h, |x, y| {
            Luma([if label.get_pixel(x, y).0[0] == k {
                255
            } else {
                0
            }])
        });
        let p = dir.join(format!("{stem}_{k}.png"));
        m.save(&p).unwrap();
        p
    };
    (image.clone(), mask(1), mask(2))
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), for the live server's
/// API and for WebDriver: returns the status and the body. `body` is sent as JSON.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    // Read the head, then exactly Content-Length bytes (servers such as chromedriver keep the
    // connection open despite `Connection: close`), else a chunked body, else to EOF.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            break raw.len();
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let length: Option<usize> = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse().ok())
    });
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &raw[head_end..];
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let mut bytes = raw[head_end..].to_vec();
    if let Some(n) = length {
        bytes.truncate(n);
    }
    let mut body = String::from_utf8_lossy(&bytes).into_owned();
    if length.is_none() && chunked {
        body = dechunk(&body);
    }
    Ok((status, body))
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A workspace binary built by `cargo test --workspace` next to the running test executable.
/// A missing binary, or one older than any source it is built from (the libraries, its own
/// crate — `host/` or `edge/` —, the manifests, `Cargo.lock`), fails the test: these tests never
/// run a stale build. (`edge` does not depend on `host`, nor `host` on `edge`: cargo leaves one
/// unlinked when only the other's sources change.)
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo test --workspace` (or cargo build -p host -p edge first)",
        p.display()
    );
    let built = std::fs::metadata(&p).and_then(|m| m.modified()).unwrap();
    // The sources are walked once per test process, not once per binary started.
    type Newest = Option<(PathBuf, std::time::SystemTime)>;
    static NEWEST: std::sync::OnceLock<std::sync::Mutex<HashMap<String, Newest>>> =
        std::sync::OnceLock::new();
    let newest = NEWEST
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_insert_with(|| {
            let root = workspace_root();
            let own = if root.join(name).is_dir() {
                name
            } else {
                "crates"
            };
            ["crates", own, "Cargo.lock", "Cargo.toml"]
                .iter()
                .filter_map(|s| newest_source(&root.join(s)))
                .max_by_key(|(_, t)| *t)
        })
        .clone();
    if let Some((newer, _)) = newest.as_ref().filter(|(_, t)| *t > built) {
        panic!(
            "{} is older than {}: rebuild it (`cargo test --workspace` or cargo build -p host -p edge)",
            p.display(),
            newer.display()
        );
    }
    p
}

/// The most recently modified `.rs` / `.toml` / `.lock` file under `path` (a file or a folder;
/// `target` and hidden folders skipped) and its time.
fn newest_source(path: &Path) -> Option<(PathBuf, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        let source = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("rs" | "toml" | "lock")
        );
        return match source {
            true => Some((path.to_path_buf(), meta.modified().ok()?)),
            false => None,
        };
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.') && name != "target" && name != "tests"
        })
        .filter_map(|e| newest_source(&e.path()))
        .max_by_key(|(_, t)| *t)
}

/// Intersection over union of two `[x, y, w, h]` boxes.
pub fn box_iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let ix = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let iy = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    let inter = ix.max(0.0) * iy.max(0.0);
    inter / (a[2] * a[3] + b[2] * b[3] - inter)
}

/// `[x, y, w, h]` of the pixels where `on(x, y)` holds in a `width` x `height` grid (`None` if
/// there are none).
pub fn bbox_where(width: u32, height: u32, on: impl Fn(u32, u32) -> bool) -> Option<[f64; 4]> {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for y in 0..height {
        for x in 0..width {
            if on(x, y) {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
    }
    (x0 != u32::MAX).then(|| {
        [
            x0 as f64,
            y0 as f64,
            (x1 - x0 + 1) as f64,
            (y1 - y0 + 1) as f64,
        ]
    })
}
