//! Frame sources behind one trait: a V4L2 camera (`camera` feature, [`super::camera`]), a
//! folder of images or a DAVIS sequence replayed at a given rate, and a synthetic scene for
//! tests and soak runs.

use fss_core::error::{EdgeError, Result};
use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One captured frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Index in capture order (0, 1, ...; for a replayed folder, counts on across loops).
    pub index: u64,
    /// Milliseconds since the Unix epoch when the frame was captured.
    pub timestamp_ms: u64,
    pub image: Arc<RgbImage>,
    /// Time spent getting the bytes (device dequeue, file read), ms.
    pub capture_ms: f64,
    /// Time spent decoding them to RGB, ms.
    pub decode_ms: f64,
    /// Which file it came from, for replayed folders (the DAVIS frame number is its stem).
    pub source_name: Option<String>,
}

impl Frame {
    /// A frame captured now.
    pub fn new(
        index: u64,
        image: RgbImage,
        capture_ms: f64,
        decode_ms: f64,
        source_name: Option<String>,
    ) -> Frame {
        Frame {
            index,
            timestamp_ms: now_ms(),
            image: Arc::new(image),
            capture_ms,
            decode_ms,
            source_name,
        }
    }
}

/// Why a source gave no frame.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device went away or stopped answering; [`FrameSource::reconnect`] may bring it back.
    #[error("{0}")]
    Disconnected(String),
    /// Cannot go on (bad configuration, unreadable file).
    #[error("{0}")]
    Fatal(String),
}

impl From<EdgeError> for SourceError {
    fn from(e: EdgeError) -> Self {
        SourceError::Fatal(e.to_string())
    }
}

/// A producer of frames. `next_frame` blocks until the next frame is due (sources pace
/// themselves); `Ok(None)` is the end of the stream.
pub trait FrameSource {
    /// One line for logs and the stats page, e.g. `camera /dev/video0 640x480 MJPG`.
    fn describe(&self) -> String;
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError>;
    /// Tries to reopen after [`SourceError::Disconnected`].
    fn reconnect(&mut self) -> Result<(), SourceError> {
        Err(SourceError::Fatal(format!(
            "{} cannot reconnect",
            self.describe()
        )))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sleeps so that ticks come `1 / fps` apart (fps 0: no pacing). A late tick does not make the
/// next ones come faster (no burst to catch up).
#[derive(Debug)]
pub struct Pacer {
    period: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(fps: f64) -> Pacer {
        let period = (fps > 0.0 && fps.is_finite()).then(|| Duration::from_secs_f64(1.0 / fps));
        Pacer { period, next: None }
    }

    pub fn wait(&mut self) {
        let Some(period) = self.period else { return };
        let now = Instant::now();
        if let Some(next) = self.next {
            if next > now {
                std::thread::sleep(next - now);
            }
        }
        let tick = Instant::now();
        self.next = Some(match self.next {
            Some(n) if n + period > tick => n + period,
            _ => tick + period,
        });
    }
}

/// Images of a folder (jpg, jpeg, png, sorted by name), or a DAVIS sequence
/// (`<root>/JPEGImages/480p/<sequence>`), replayed at `fps`, once or looping.
pub struct DirectorySource {
    dir: PathBuf,
    files: Vec<PathBuf>,
    position: usize,
    looping: bool,
    pacer: Pacer,
    index: u64,
}

/// The image files of a folder, sorted.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| EdgeError::io(dir, e))? {
        let p = e.map_err(|e| EdgeError::io(dir, e))?.path();
        let ext = p
            .extension()
            .and_then(|x| x.to_str())
            .map(|x| x.to_ascii_lowercase())
            .unwrap_or_default();
        if p.is_file() && matches!(ext.as_str(), "jpg" | "jpeg" | "png") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Resolves a replay folder: a DAVIS root (has `JPEGImages/480p`) gives its `sequence` (or its
/// first sequence by name); any other folder is taken as is.
pub fn resolve_replay_dir(dir: &Path, sequence: Option<&str>) -> Result<PathBuf> {
    let davis = dir.join("JPEGImages").join("480p");
    if !davis.is_dir() {
        if let Some(s) = sequence {
            return Err(EdgeError::invalid(
                dir,
                format!("--sequence {s} given but this is not a DAVIS root (no JPEGImages/480p)"),
            ));
        }
        return Ok(dir.to_path_buf());
    }
    match sequence {
        Some(s) => {
            let p = davis.join(s);
            if p.is_dir() {
                Ok(p)
            } else {
                Err(EdgeError::invalid(
                    dir,
                    format!("no DAVIS sequence named '{s}'"),
                ))
            }
        }
        None => {
            let mut seqs: Vec<PathBuf> = std::fs::read_dir(&davis)
                .map_err(|e| EdgeError::io(&davis, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            seqs.sort();
            seqs.into_iter()
                .next()
                .ok_or_else(|| EdgeError::invalid(&davis, "DAVIS root with no sequence"))
        }
    }
}

impl DirectorySource {
    pub fn open(dir: &Path, fps: f64, looping: bool) -> Result<DirectorySource> {
        if !dir.is_dir() {
            return Err(EdgeError::invalid(
                dir,
                "frame source folder does not exist",
            ));
        }
        let files = image_files(dir)?;
        if files.is_empty() {
            return Err(EdgeError::invalid(
                dir,
                "frame source folder has no jpg/jpeg/png image",
            ));
        }
        Ok(DirectorySource {
            dir: dir.to_path_buf(),
            files,
            position: 0,
            looping,
            pacer: Pacer::new(fps),
            index: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl FrameSource for DirectorySource {
    fn describe(&self) -> String {
        format!(
            "folder {} ({} images{})",
            self.dir.display(),
            self.files.len(),
            if self.looping { ", looping" } else { "" }
        )
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.position >= self.files.len() {
            if !self.looping {
                return Ok(None);
            }
            self.position = 0;
        }
        self.pacer.wait();
        let path = &self.files[self.position];
        self.position += 1;
        let t0 = Instant::now();
        let bytes = std::fs::read(path).map_err(|e| EdgeError::io(path, e))?;
        let capture_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let image = image::load_from_memory(&bytes)
            .map_err(|e| EdgeError::Image {
                path: path.clone(),
                reason: e.to_string(),
            })?
            .to_rgb8();
        let decode_ms = t1.elapsed().as_secs_f64() * 1e3;
        let frame = Frame::new(
            self.index,
            image,
            capture_ms,
            decode_ms,
            path.file_stem().map(|s| s.to_string_lossy().into_owned()),
        );
        self.index += 1;
        Ok(Some(frame))
    }
}

/// A synthetic scene: a textured disc moving on a circle over a textured background. Frames
/// are a pure function of their index ([`SyntheticSource::render`]), so tests know the truth
/// ([`SyntheticSource::truth`]).
pub struct SyntheticSource {
    width: u32,
    height: u32,
    pacer: Pacer,
    limit: Option<u64>,
    index: u64,
}

impl SyntheticSource {
    pub fn new(width: u32, height: u32, fps: f64, limit: Option<u64>) -> Result<SyntheticSource> {
        if width < 16 || height < 16 || width > 4096 || height > 4096 {
            return Err(EdgeError::input(format!(
                "synthetic source size {width}x{height}: each side must be 16..4096"
            )));
        }
        Ok(SyntheticSource {
            width,
            height,
            pacer: Pacer::new(fps),
            limit,
            index: 0,
        })
    }

    /// Centre and radius of the disc in frame `index`.
    pub fn disc(width: u32, height: u32, index: u64) -> (f32, f32, f32) {
        let (w, h) = (width as f32, height as f32);
        let r = w.min(h) / 6.0;
        let phase = index as f32 * 0.05;
        let cx = w / 2.0 + (w / 2.0 - r * 1.5) * phase.cos();
        let cy = h / 2.0 + (h / 2.0 - r * 1.5) * phase.sin();
        (cx, cy, r)
    }

    /// Frame `index` of a `width` x `height` scene.
    pub fn render(width: u32, height: u32, index: u64) -> RgbImage {
        let (cx, cy, r) = Self::disc(width, height, index);
        RgbImage::from_fn(width, height, |x, y| {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            if (fx - cx).powi(2) + (fy - cy).powi(2) <= r * r {
                // Orange disc with fine stripes.
                let s = (((fx - cx) * 0.8).sin() * 30.0) as i32;
                Rgb([
                    (230 + s / 2).clamp(0, 255) as u8,
                    (120 + s).clamp(0, 255) as u8,
                    30,
                ])
            } else {
                // Blue-green checker background.
                let c = ((x / 8 + y / 8) % 2) as u8;
                Rgb([20 + 20 * c, 90 + 30 * c, 140 + 20 * c])
            }
        })
    }

    /// The disc's mask in frame `index` (1 = disc).
    pub fn truth(width: u32, height: u32, index: u64) -> fss_core::tensor::Mask {
        let (cx, cy, r) = Self::disc(width, height, index);
        let mut data = Vec::with_capacity((width * height) as usize);
        for y in 0..height {
            for x in 0..width {
                let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
                data.push(((fx - cx).powi(2) + (fy - cy).powi(2) <= r * r) as u8);
            }
        }
        fss_core::tensor::Mask {
            height: height as usize,
            width: width as usize,
            data,
        }
    }
}

impl FrameSource for SyntheticSource {
    fn describe(&self) -> String {
        format!("synthetic {}x{}", self.width, self.height)
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.limit.is_some_and(|l| self.index >= l) {
            return Ok(None);
        }
        self.pacer.wait();
        let t0 = Instant::now();
        let image = Self::render(self.width, self.height, self.index);
        let frame = Frame::new(
            self.index,
            image,
            t0.elapsed().as_secs_f64() * 1e3,
            0.0,
            None,
        );
        self.index += 1;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_frames_are_deterministic_and_match_their_truth() {
        let mut s = SyntheticSource::new(64, 48, 0.0, Some(3)).unwrap();
        let f0 = s.next_frame().unwrap().unwrap();
        assert_eq!(*f0.image, SyntheticSource::render(64, 48, 0));
        let truth = SyntheticSource::truth(64, 48, 0);
        let n = truth.count_nonzero();
        assert!(n > 100 && n < 64 * 48 / 2, "{n}");
        // Disc pixels are orange, background pixels are not.
        for (p, &t) in f0.image.pixels().zip(&truth.data) {
            assert_eq!(p[0] > 150, t == 1);
        }
        assert!(s.next_frame().unwrap().is_some());
        assert!(s.next_frame().unwrap().is_some());
        assert!(s.next_frame().unwrap().is_none(), "limit of 3 frames");
        assert!(SyntheticSource::new(8, 8, 0.0, None).is_err());
    }

    #[test]
    fn pacer_spaces_ticks() {
        let mut p = Pacer::new(100.0);
        let t0 = Instant::now();
        for _ in 0..6 {
            p.wait();
        }
        // 5 periods of 10 ms at least between the first and the last tick.
        assert!(
            t0.elapsed() >= Duration::from_millis(45),
            "{:?}",
            t0.elapsed()
        );
        let mut free = Pacer::new(0.0);
        let t1 = Instant::now();
        for _ in 0..1000 {
            free.wait();
        }
        assert!(t1.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn folder_source_replays_and_loops() {
        let dir = std::env::temp_dir().join(format!("dirsource-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..2 {
            SyntheticSource::render(32, 24, i)
                .save(dir.join(format!("{i:05}.png")))
                .unwrap();
        }
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        let mut once = DirectorySource::open(&dir, 0.0, false).unwrap();
        assert_eq!(once.len(), 2);
        let a = once.next_frame().unwrap().unwrap();
        assert_eq!(a.source_name.as_deref(), Some("00000"));
        assert!(once.next_frame().unwrap().is_some());
        assert!(once.next_frame().unwrap().is_none());
        let mut looping = DirectorySource::open(&dir, 0.0, true).unwrap();
        let idx: Vec<u64> = (0..5)
            .map(|_| looping.next_frame().unwrap().unwrap().index)
            .collect();
        assert_eq!(idx, vec![0, 1, 2, 3, 4]);
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let err = DirectorySource::open(&empty, 0.0, false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no jpg/jpeg/png"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
