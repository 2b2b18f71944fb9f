//! Per-stage timings, counters and frame rate of the live pipeline, as served at `/api/stats`
//! and printed when `edge run` ends.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The stages of one frame, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Getting the frame's bytes (device dequeue, file read).
    Capture,
    /// Bytes to RGB (MJPEG/YUYV/file decode).
    Decode,
    /// Resize and normalise to the model input.
    Preprocess,
    /// The encoder graph (tract).
    Encoder,
    /// Scoring against the prototypes at feature resolution.
    Head,
    /// Upsampling to frame size, argmax, per-target area/bbox/score.
    Post,
    /// Tinting the frame and encoding the JPEG of the live view (sink thread).
    Overlay,
}

pub const STAGES: [Stage; 7] = [
    Stage::Capture,
    Stage::Decode,
    Stage::Preprocess,
    Stage::Encoder,
    Stage::Head,
    Stage::Post,
    Stage::Overlay,
];

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Capture => "capture",
            Stage::Decode => "decode",
            Stage::Preprocess => "preprocess",
            Stage::Encoder => "encoder",
            Stage::Head => "head",
            Stage::Post => "post",
            Stage::Overlay => "overlay",
        }
    }
}

/// How many recent samples the timings and the frame rate are computed over.
pub const WINDOW: usize = 120;

#[derive(Debug, Default)]
struct Windows {
    stages: [VecDeque<f64>; 7],
    /// Completion instants of the last processed frames.
    done: VecDeque<Instant>,
}

/// Live counters and timing windows (shared by all pipeline threads; bounded memory).
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    pub frames_captured: AtomicU64,
    pub frames_processed: AtomicU64,
    pub events_dropped: AtomicU64,
    pub masks_dropped: AtomicU64,
    pub source_errors: AtomicU64,
    windows: Mutex<Windows>,
}

/// Timing of one stage over the window, ms.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageSummary {
    pub stage: &'static str,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
}

/// The `/api/stats` document (also the end-of-run summary).
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    pub uptime_s: f64,
    pub source: String,
    pub source_state: String,
    pub frames_captured: u64,
    pub frames_processed: u64,
    /// Frames replaced in the latest-frame slot before inference took them.
    pub frames_dropped: u64,
    pub events_dropped: u64,
    /// `--masks` files not written because the writer fell behind.
    pub masks_dropped: u64,
    pub source_errors: u64,
    /// Processed frames per second over the last [`WINDOW`] frames.
    pub fps: f64,
    pub stages: Vec<StageSummary>,
    pub rss_kib: Option<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            frames_captured: AtomicU64::new(0),
            frames_processed: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            masks_dropped: AtomicU64::new(0),
            source_errors: AtomicU64::new(0),
            windows: Mutex::new(Windows::default()),
        }
    }
}

fn push(q: &mut VecDeque<f64>, v: f64) {
    if q.len() == WINDOW {
        q.pop_front();
    }
    q.push_back(v);
}

impl Stats {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&self, stage: Stage, ms: f64) {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        push(&mut w.stages[stage as usize], ms);
    }

    /// One frame went through inference.
    pub fn frame_done(&self) {
        self.frames_processed.fetch_add(1, Ordering::Relaxed);
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.done.len() == WINDOW {
            w.done.pop_front();
        }
        w.done.push_back(Instant::now());
    }

    pub fn snapshot(&self, source: &str, source_state: &str, frames_dropped: u64) -> StatsSnapshot {
        let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let stages = STAGES
            .iter()
            .map(|&s| {
                let q = &w.stages[s as usize];
                let mut v: Vec<f64> = q.iter().copied().collect();
                v.sort_by(|a, b| a.total_cmp(b));
                let n = v.len();
                StageSummary {
                    stage: s.name(),
                    mean_ms: if n == 0 {
                        0.0
                    } else {
                        v.iter().sum::<f64>() / n as f64
                    },
                    p50_ms: if n == 0 { 0.0 } else { v[n / 2] },
                    max_ms: v.last().copied().unwrap_or(0.0),
                    samples: n,
                }
            })
            .collect();
        let fps = match (w.done.front(), w.done.back()) {
            (Some(a), Some(b)) if w.done.len() > 1 && b > a => {
                (w.done.len() - 1) as f64 / (*b - *a).as_secs_f64()
            }
            _ => 0.0,
        };
        StatsSnapshot {
            uptime_s: self.started.elapsed().as_secs_f64(),
            source: source.to_string(),
            source_state: source_state.to_string(),
            frames_captured: self.frames_captured.load(Ordering::Relaxed),
            frames_processed: self.frames_processed.load(Ordering::Relaxed),
            frames_dropped,
            events_dropped: self.events_dropped.load(Ordering::Relaxed),
            masks_dropped: self.masks_dropped.load(Ordering::Relaxed),
            source_errors: self.source_errors.load(Ordering::Relaxed),
            fps,
            stages,
            rss_kib: resident_kib(),
        }
    }
}

/// Resident set size of this process (Linux `/proc/self/status` `VmRSS`), KiB.
pub fn resident_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_bounded_and_summarised() {
        let s = Stats::new();
        for i in 0..(WINDOW + 30) {
            s.record(Stage::Encoder, i as f64);
        }
        s.record(Stage::Head, 2.0);
        let snap = s.snapshot("synthetic", "ok", 0);
        let enc = snap.stages.iter().find(|x| x.stage == "encoder").unwrap();
        assert_eq!(enc.samples, WINDOW);
        assert_eq!(enc.max_ms, (WINDOW + 29) as f64);
        assert_eq!(enc.p50_ms, (30 + WINDOW / 2) as f64);
        let head = snap.stages.iter().find(|x| x.stage == "head").unwrap();
        assert_eq!((head.samples, head.mean_ms), (1, 2.0));
        assert!(snap.rss_kib.unwrap_or(1) > 0);
    }
}
