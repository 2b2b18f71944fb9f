//! The live pipeline of `edge run`:
//!
//! ```text
//! capture thread ──> [latest frame slot] ──> inference (this thread) ──> [latest view slot] ──> sink thread ──> MJPEG hub ──> /stream
//!   (source, reconnect)   newest wins,        encoder, head, post,          newest wins            overlay + JPEG
//!                         stale dropped       events, LED state
//! ```
//!
//! Inference always takes the newest frame; a frame replaced before inference took it is
//! dropped and counted. Sinks (live view, events file, HTTP clients) never block inference:
//! the view goes through a latest-value slot, events through a bounded queue whose overflow is
//! counted. Support shots (web page, GPIO button) come in as commands that inference runs
//! between frames, since they need the encoder.

use super::config::SourceSpec;
use super::observe::{observe, TargetObservation};
use super::slot::{LatestSlot, Taken};
use super::source::{DirectorySource, Frame, FrameSource, SourceError, SyntheticSource};
use super::stats::{Stage, Stats, StatsSnapshot};
use super::targets::{Region, TargetInfo, TargetStore};
use fss_core::error::{EdgeError, Result};
use fss_core::method::{Method, SupportState};
use fss_core::preprocess::{prepare_input, InputSize};
use fss_core::tensor::Mask;
use fss_runtime::cache::CacheKey;
use fss_runtime::BundleEncoder;
use image::RgbImage;
use serde::Serialize;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bounded queue of event lines between inference and the events writer.
pub const EVENT_QUEUE: usize = 256;

/// A request to the inference thread.
pub enum Command {
    AddShot {
        name: String,
        image: Arc<RgbImage>,
        region: Region,
        origin: String,
        replace: bool,
        reply: Sender<std::result::Result<TargetInfo, String>>,
    },
    Remove {
        name: String,
        reply: Sender<std::result::Result<(), String>>,
    },
}

/// The newest encoded JPEG of the live view; readers wait for a newer one.
#[derive(Default)]
pub struct StreamHub {
    state: Mutex<(u64, Option<Arc<Vec<u8>>>)>,
    fresh: Condvar,
}

impl StreamHub {
    pub fn publish(&self, jpeg: Vec<u8>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        s.1 = Some(Arc::new(jpeg));
        drop(s);
        self.fresh.notify_all();
    }

    /// The newest JPEG with sequence number above `seen`, waiting up to `timeout`.
    pub fn wait_newer(&self, seen: u64, timeout: Duration) -> Option<(u64, Arc<Vec<u8>>)> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (s, _) = self
            .fresh
            .wait_timeout_while(s, timeout, |s| s.0 <= seen || s.1.is_none())
            .unwrap_or_else(|p| p.into_inner());
        match &s.1 {
            Some(j) if s.0 > seen => Some((s.0, j.clone())),
            _ => None,
        }
    }

    pub fn latest(&self) -> Option<Arc<Vec<u8>>> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Wakes every waiting reader (shutdown).
    pub fn wake_all(&self) {
        self.fresh.notify_all();
    }
}

/// What the sink renders: a frame and, when targets exist, its labels.
pub struct ViewItem {
    pub image: Arc<RgbImage>,
    pub labels: Option<Mask>,
}

/// A frame frozen for a support capture (web page).
#[derive(Clone)]
pub struct Capture {
    pub id: u64,
    pub frame: Frame,
}

/// Latest per-frame result, for `/api/stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatestResult {
    pub frame: u64,
    pub timestamp_ms: u64,
    pub targets: Vec<TargetObservation>,
}

/// State shared by the pipeline threads and the HTTP server.
pub struct Shared {
    pub stop: Arc<AtomicBool>,
    pub stats: Stats,
    pub frames: LatestSlot<Frame>,
    pub view: LatestSlot<ViewItem>,
    pub stream: StreamHub,
    pub latest_frame: Mutex<Option<Frame>>,
    pub latest_result: Mutex<LatestResult>,
    pub targets: Mutex<Vec<TargetInfo>>,
    pub source: Mutex<(String, String)>,
    pub captures: Mutex<VecDeque<Capture>>,
    next_capture: AtomicU64,
    pub commands: Mutex<Sender<Command>>,
    /// Some target has pixels in the newest processed frame (drives the LED).
    pub target_seen: AtomicBool,
}

/// How many frozen captures the server keeps.
pub const CAPTURES_KEPT: usize = 8;

impl Shared {
    /// Freezes the newest captured frame for a support shot.
    pub fn capture_now(&self) -> Option<Capture> {
        let frame = self
            .latest_frame
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let id = self.next_capture.fetch_add(1, Ordering::Relaxed) + 1;
        let c = Capture { id, frame };
        let mut q = self.captures.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == CAPTURES_KEPT {
            q.pop_front();
        }
        q.push_back(c.clone());
        Some(c)
    }

    pub fn capture(&self, id: u64) -> Option<Capture> {
        self.captures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|c| c.id == id)
            .cloned()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let (desc, state) = self
            .source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.stats.snapshot(&desc, &state, self.frames.dropped())
    }

    /// Sends a command to inference and waits for its answer (errors as one line).
    pub fn add_shot(
        &self,
        name: &str,
        image: Arc<RgbImage>,
        region: Region,
        origin: &str,
        replace: bool,
    ) -> std::result::Result<TargetInfo, String> {
        let (reply, rx) = mpsc::channel();
        let cmd = Command::AddShot {
            name: name.to_string(),
            image,
            region,
            origin: origin.to_string(),
            replace,
            reply,
        };
        self.send(cmd)?;
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| "the pipeline did not answer (stopping?)".to_string())?
    }

    pub fn remove_target(&self, name: &str) -> std::result::Result<(), String> {
        let (reply, rx) = mpsc::channel();
        self.send(Command::Remove {
            name: name.to_string(),
            reply,
        })?;
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| "the pipeline did not answer (stopping?)".to_string())?
    }

    fn send(&self, cmd: Command) -> std::result::Result<(), String> {
        self.commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(cmd)
            .map_err(|_| "the pipeline has stopped".to_string())
    }
}

/// Everything `edge run` needs, resolved from config and flags.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub bundle: PathBuf,
    pub size: Option<InputSize>,
    pub source: SourceSpec,
    pub state_dir: PathBuf,
    /// JSON Lines events (`-` = stdout).
    pub events: Option<PathBuf>,
    /// Render the live view (JPEG) for the HTTP page.
    pub render_view: bool,
    /// Stop after this many processed frames.
    pub max_frames: Option<u64>,
    /// Write each processed frame's label mask (8-bit PNG, 0 = background, i = i-th target)
    /// into this folder, named by the source frame (or the frame index).
    pub masks: Option<PathBuf>,
    /// The location prior from frame to frame (`fss_core::temporal::LocationPrior`; 0: off).
    pub temporal_reach: f32,
}

/// The end-of-run report.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub stats: StatsSnapshot,
    pub rss_start_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    /// `[frames captured, resident KiB]` every [`RSS_SAMPLE_EVERY`] captured frames (at most
    /// [`RSS_SAMPLES_KEPT`], evenly thinned): memory over the run.
    pub rss_samples: Vec<[u64; 2]>,
    pub ended_by: String,
}

/// Resident memory is sampled every this many captured frames.
pub const RSS_SAMPLE_EVERY: u64 = 500;
/// At most this many samples are kept (every other one is dropped when full).
pub const RSS_SAMPLES_KEPT: usize = 200;

/// Opens the source a spec describes (on the capture thread: camera streams stay there).
pub fn open_source(spec: &SourceSpec) -> std::result::Result<Box<dyn FrameSource>, SourceError> {
    match spec {
        SourceSpec::Folder { dir, fps, looping } => {
            Ok(Box::new(DirectorySource::open(dir, *fps, *looping)?))
        }
        SourceSpec::Synthetic {
            width,
            height,
            fps,
            frames,
        } => Ok(Box::new(SyntheticSource::new(
            *width, *height, *fps, *frames,
        )?)),
        #[cfg(feature = "camera")]
        SourceSpec::Camera {
            device,
            width,
            height,
            fps,
            format,
        } => Ok(Box::new(super::camera::V4lCamera::open(
            &super::camera::CameraRequest {
                device: device.clone(),
                width: *width,
                height: *height,
                fps: *fps,
                format: *format,
            },
        )?)),
        #[cfg(not(feature = "camera"))]
        SourceSpec::Camera { device, .. } => Err(SourceError::Fatal(format!(
            "{}: this edge was built without the `camera` feature",
            device.display()
        ))),
    }
}

fn set_source_state(shared: &Shared, desc: Option<String>, state: &str) {
    let mut s = shared.source.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = desc {
        s.0 = d;
    }
    s.1 = state.to_string();
}

/// The capture loop: opens the source, pushes frames into the slot, reconnects with backoff
/// (0.5 s doubling to 5 s) after [`SourceError::Disconnected`], ends on the stream's end or a
/// fatal error (closing the slot). `ready` gets the outcome of the first open.
fn capture_loop(
    spec: SourceSpec,
    shared: Arc<Shared>,
    ready: Sender<std::result::Result<(), String>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(500);
    let describe_spec = match &spec {
        SourceSpec::Camera { device, .. } => format!("camera {}", device.display()),
        SourceSpec::Folder { dir, .. } => format!("folder {}", dir.display()),
        SourceSpec::Synthetic { .. } => "synthetic".to_string(),
    };
    let mut source: Option<Box<dyn FrameSource>> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        if source.is_none() {
            match open_source(&spec) {
                Ok(s) => {
                    set_source_state(&shared, Some(s.describe()), "ok");
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    } else {
                        crate::live_note!("{}: reconnected", s.describe());
                    }
                    backoff = Duration::from_millis(500);
                    source = Some(s);
                }
                Err(SourceError::Disconnected(msg)) => {
                    if let Some(r) = ready.take() {
                        // Not fatal: a camera may be plugged in later.
                        let _ = r.send(Ok(()));
                    }
                    shared.stats.source_errors.fetch_add(1, Ordering::Relaxed);
                    let state = format!("reconnecting in {:.1} s: {msg}", backoff.as_secs_f64());
                    crate::live_note!("{state}");
                    set_source_state(&shared, Some(describe_spec.clone()), &state);
                    sleep_unless_stopped(&shared.stop, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(SourceError::Fatal(msg)) => {
                    set_source_state(
                        &shared,
                        Some(describe_spec.clone()),
                        &format!("failed: {msg}"),
                    );
                    match ready.take() {
                        Some(r) => {
                            let _ = r.send(Err(msg));
                        }
                        None => crate::live_note!("frame source failed: {msg}"),
                    }
                    break;
                }
            }
        }
        let Some(src) = source.as_mut() else { continue };
        match src.next_frame() {
            Ok(Some(frame)) => {
                shared.stats.frames_captured.fetch_add(1, Ordering::Relaxed);
                *shared
                    .latest_frame
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(frame.clone());
                shared.frames.put(frame);
            }
            Ok(None) => {
                set_source_state(&shared, None, "ended");
                break;
            }
            Err(SourceError::Disconnected(msg)) => {
                shared.stats.source_errors.fetch_add(1, Ordering::Relaxed);
                crate::live_note!("{msg}; reconnecting");
                set_source_state(&shared, None, &format!("reconnecting: {msg}"));
                // Drop the source; the next iteration reopens it with backoff.
                if src.reconnect().is_err() {
                    source = None;
                    sleep_unless_stopped(&shared.stop, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                } else {
                    set_source_state(&shared, Some(src.describe()), "ok");
                }
            }
            Err(SourceError::Fatal(msg)) => {
                crate::live_note!("frame source failed: {msg}");
                set_source_state(&shared, None, &format!("failed: {msg}"));
                break;
            }
        }
    }
    if let Some(r) = ready.take() {
        let _ = r.send(Ok(()));
    }
    shared.frames.close();
}

fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
}

/// The sink: tints each view frame and encodes it as JPEG for the stream.
fn sink_loop(shared: Arc<Shared>) {
    loop {
        match shared.view.take(Duration::from_millis(200)) {
            Taken::Value(item) => {
                let t0 = Instant::now();
                let mut img = (*item.image).clone();
                if let Some(l) = &item.labels {
                    let _ = fss_core::overlay::overlay_in_place(&mut img, l);
                }
                let mut jpeg = Vec::with_capacity(64 * 1024);
                let ok = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
                    .encode_image(&img)
                    .is_ok();
                if ok {
                    shared.stream.publish(jpeg);
                }
                shared
                    .stats
                    .record(Stage::Overlay, t0.elapsed().as_secs_f64() * 1e3);
            }
            Taken::Timeout => {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            Taken::Closed => break,
        }
    }
    shared.stream.wake_all();
}

/// The events writer: one JSON line per processed frame, flushed per line.
fn events_loop(path: PathBuf, rx: Receiver<String>) {
    let mut out: Box<dyn Write> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                crate::live_note!("{}: cannot write events: {e}", path.display());
                return;
            }
        }
    };
    for line in rx {
        if out
            .write_all(line.as_bytes())
            .and_then(|_| out.write_all(b"\n"))
            .and_then(|_| out.flush())
            .is_err()
        {
            crate::live_note!(
                "{}: cannot write events; stopping the events file",
                path.display()
            );
            return;
        }
    }
}

/// The mask writer: label PNGs written atomically, off the inference thread.
fn masks_loop(dir: PathBuf, rx: Receiver<(String, Mask)>) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        crate::live_note!("{}: cannot create the masks folder: {e}", dir.display());
        return;
    }
    for (name, mask) in rx {
        let path = dir.join(format!("{name}.png"));
        if let Err(e) = fss_core::overlay::write_mask_png(&path, &mask) {
            crate::live_note!("{e}; stopping the masks folder");
            return;
        }
    }
}

/// One per-frame event (the JSON Lines schema in docs/live.md).
#[derive(Debug, Serialize)]
struct Event<'a> {
    frame: u64,
    timestamp_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_frame: Option<&'a str>,
    width: u32,
    height: u32,
    targets: &'a [TargetObservation],
}

/// Starts a named pipeline thread; failing to is a one-line error.
fn spawn_named(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| EdgeError::input(format!("cannot start the {name} thread: {e}")))
}

/// Shows the store's targets to the API and returns what inference scores against: the N-way
/// prototypes (none without targets) and the target names in label order. A store whose shots
/// do not fit together is an error (at start the pipeline does not start; later the previous
/// targets stay in use and the error is noted).
fn publish_targets(
    store: &TargetStore,
    shared: &Shared,
    method: Method,
) -> Result<(Option<SupportState>, Vec<String>)> {
    let prototypes = store.prototypes(method)?;
    *shared.targets.lock().unwrap_or_else(|p| p.into_inner()) = store.list();
    Ok((prototypes, store.names()))
}

/// The running pipeline's handles (inference runs on the caller's thread in [`run`]).
pub struct Pipeline {
    pub shared: Arc<Shared>,
    commands: Receiver<Command>,
}

impl Pipeline {
    pub fn new(stop: Arc<AtomicBool>) -> Pipeline {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            stop,
            stats: Stats::new(),
            frames: LatestSlot::new(),
            view: LatestSlot::new(),
            stream: StreamHub::default(),
            latest_frame: Mutex::new(None),
            latest_result: Mutex::new(LatestResult::default()),
            targets: Mutex::new(Vec::new()),
            source: Mutex::new((String::new(), "starting".to_string())),
            captures: Mutex::new(VecDeque::new()),
            next_capture: AtomicU64::new(0),
            commands: Mutex::new(tx),
            target_seen: AtomicBool::new(false),
        });
        Pipeline {
            shared,
            commands: rx,
        }
    }

    /// Runs until stopped (flag), the source ends, or `max_frames` frames were processed.
    /// `encoder` must be opened on `opts.bundle`.
    pub fn run(self, mut encoder: BundleEncoder, opts: &LiveOptions) -> Result<RunSummary> {
        let shared = self.shared.clone();
        let rss_start = super::stats::resident_kib();
        encoder.bundle().require_supported_method()?;
        let size = opts.size.unwrap_or_else(|| encoder.default_size());
        encoder.prepare(size)?;
        let norm = encoder.bundle().normalization();
        let key = CacheKey::new(&encoder.bundle().hash, size, &norm);
        let mut store = TargetStore::open(&opts.state_dir, key.clone())?;
        if store.is_stale() {
            crate::live_note!(
                "{}: targets were made for another bundle or input size; recomputing their prototypes",
                opts.state_dir.display()
            );
            store.refresh(&mut encoder, size)?;
        }
        let mut store_mtime = TargetStore::file_mtime(&opts.state_dir);
        let (mut protos, mut names) = publish_targets(&store, &shared, encoder.method())?;
        let mut prior = fss_core::temporal::LocationPrior::new(opts.temporal_reach)?;

        // Capture thread; wait for the first open so a bad folder fails at once.
        let (ready_tx, ready_rx) = mpsc::channel();
        let capture = {
            let shared = shared.clone();
            let spec = opts.source.clone();
            spawn_named("capture", move || capture_loop(spec, shared, ready_tx))?
        };
        if let Ok(Err(msg)) = ready_rx.recv() {
            shared.stop.store(true, Ordering::Relaxed);
            let _ = capture.join();
            return Err(EdgeError::input(msg));
        }
        let sink = if opts.render_view {
            let shared = shared.clone();
            Some(spawn_named("view", move || sink_loop(shared))?)
        } else {
            None
        };
        let (events_tx, events_thread): (Option<SyncSender<String>>, _) = match &opts.events {
            Some(path) => {
                let (tx, rx) = mpsc::sync_channel(EVENT_QUEUE);
                let path = path.clone();
                let h = spawn_named("events", move || events_loop(path, rx))?;
                (Some(tx), Some(h))
            }
            None => (None, None),
        };

        let (masks_tx, masks_thread): (Option<SyncSender<(String, Mask)>>, _) = match &opts.masks {
            Some(dir) => {
                let (tx, rx) = mpsc::sync_channel(8);
                let dir = dir.clone();
                let h = spawn_named("masks", move || masks_loop(dir, rx))?;
                (Some(tx), Some(h))
            }
            None => (None, None),
        };
        let mut rss_samples: Vec<[u64; 2]> = Vec::new();
        let mut next_rss_sample = RSS_SAMPLE_EVERY;
        let mut last_store_check = Instant::now();
        let ended_by;
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                ended_by = "signal".to_string();
                break;
            }
            // Support commands between frames.
            while let Ok(cmd) = self.commands.try_recv() {
                match cmd {
                    Command::AddShot {
                        name,
                        image,
                        region,
                        origin,
                        replace,
                        reply,
                    } => {
                        let r = store
                            .add_shot(&mut encoder, size, &name, &image, &region, &origin, replace)
                            .map_err(|e| e.to_string());
                        match &r {
                            Ok(t) => crate::live_note!(
                                "target '{}' now has {} shot(s) ({origin})",
                                t.name,
                                t.shots
                            ),
                            Err(e) => crate::live_note!("support shot for '{name}' refused: {e}"),
                        }
                        let _ = reply.send(r);
                    }
                    Command::Remove { name, reply } => {
                        let r = store.remove(&name).map_err(|e| e.to_string());
                        if r.is_ok() {
                            crate::live_note!("target '{name}' removed");
                        }
                        let _ = reply.send(r);
                    }
                }
                match publish_targets(&store, &shared, encoder.method()) {
                    Ok(published) => {
                        (protos, names) = published;
                        prior.reset();
                    }
                    Err(e) => crate::live_note!("targets not applied: {e}"),
                }
                store_mtime = TargetStore::file_mtime(&opts.state_dir);
            }
            // Edits by `edge support add|remove` from another process.
            if last_store_check.elapsed() >= Duration::from_secs(1) {
                last_store_check = Instant::now();
                let m = TargetStore::file_mtime(&opts.state_dir);
                if m != store_mtime {
                    match TargetStore::open(&opts.state_dir, key.clone()) {
                        Ok(mut s) => {
                            if s.is_stale() {
                                if let Err(e) = s.refresh(&mut encoder, size) {
                                    crate::live_note!("{e}");
                                }
                            }
                            store = s;
                            match publish_targets(&store, &shared, encoder.method()) {
                                Ok(published) => {
                                    (protos, names) = published;
                                    prior.reset();
                                    crate::live_note!(
                                        "targets reloaded from {}: {}",
                                        opts.state_dir.display(),
                                        names.join(", ")
                                    );
                                }
                                Err(e) => crate::live_note!("targets not reloaded: {e}"),
                            }
                        }
                        Err(e) => crate::live_note!("targets not reloaded: {e}"),
                    }
                    store_mtime = m;
                }
            }
            let frame = match shared.frames.take(Duration::from_millis(100)) {
                Taken::Value(f) => f,
                Taken::Timeout => continue,
                Taken::Closed => {
                    ended_by = "source ended".to_string();
                    break;
                }
            };
            let stats = &shared.stats;
            let captured = stats.frames_captured.load(Ordering::Relaxed);
            if captured >= next_rss_sample {
                if let Some(kib) = super::stats::resident_kib() {
                    if rss_samples.len() == RSS_SAMPLES_KEPT {
                        rss_samples = rss_samples.into_iter().step_by(2).collect();
                    }
                    rss_samples.push([captured, kib]);
                }
                next_rss_sample = captured + RSS_SAMPLE_EVERY;
            }
            stats.record(Stage::Capture, frame.capture_ms);
            stats.record(Stage::Decode, frame.decode_ms);
            let (w, h) = frame.image.dimensions();
            let (labels, observations) = match &protos {
                Some(p) => {
                    let t0 = Instant::now();
                    let input = prepare_input(&frame.image, size, &norm);
                    let t1 = Instant::now();
                    stats.record(Stage::Preprocess, (t1 - t0).as_secs_f64() * 1e3);
                    let features = match encoder.encode(&input, size) {
                        Ok(f) => f,
                        Err(e) => {
                            crate::live_note!("frame {}: {e}", frame.index);
                            continue;
                        }
                    };
                    let t2 = Instant::now();
                    stats.record(Stage::Encoder, (t2 - t1).as_secs_f64() * 1e3);
                    let mut logits = encoder.head_logits(p, &features, size)?;
                    prior.apply(&mut logits);
                    let t3 = Instant::now();
                    stats.record(Stage::Head, (t3 - t2).as_secs_f64() * 1e3);
                    let (labels, obs) = observe(&logits, h as usize, w as usize, &names);
                    stats.record(Stage::Post, t3.elapsed().as_secs_f64() * 1e3);
                    (Some(labels), obs)
                }
                None => (None, Vec::new()),
            };
            shared.target_seen.store(
                observations.iter().any(|o| o.area_px > 0),
                Ordering::Relaxed,
            );
            if let Some(tx) = &events_tx {
                let ev = Event {
                    frame: frame.index,
                    timestamp_ms: frame.timestamp_ms,
                    source_frame: frame.source_name.as_deref(),
                    width: w,
                    height: h,
                    targets: &observations,
                };
                if let Ok(line) = serde_json::to_string(&ev) {
                    if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                        stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if let (Some(tx), Some(l)) = (&masks_tx, &labels) {
                let name = frame
                    .source_name
                    .clone()
                    .unwrap_or_else(|| format!("{:08}", frame.index));
                if let Err(TrySendError::Full(_)) = tx.try_send((name, l.clone())) {
                    stats.masks_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            *shared
                .latest_result
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = LatestResult {
                frame: frame.index,
                timestamp_ms: frame.timestamp_ms,
                targets: observations,
            };
            if opts.render_view {
                shared.view.put(ViewItem {
                    image: frame.image.clone(),
                    labels,
                });
            }
            stats.frame_done();
            if opts
                .max_frames
                .is_some_and(|m| stats.frames_processed.load(Ordering::Relaxed) >= m)
            {
                ended_by = "max frames".to_string();
                break;
            }
        }
        shared.stop.store(true, Ordering::Relaxed);
        shared.frames.close();
        shared.view.close();
        let _ = capture.join();
        if let Some(s) = sink {
            let _ = s.join();
        }
        drop(events_tx);
        if let Some(h) = events_thread {
            let _ = h.join();
        }
        drop(masks_tx);
        if let Some(h) = masks_thread {
            let _ = h.join();
        }
        Ok(RunSummary {
            stats: shared.snapshot(),
            rss_start_kib: rss_start,
            rss_end_kib: super::stats::resident_kib(),
            rss_samples,
            ended_by,
        })
    }
}
