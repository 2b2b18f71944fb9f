//! Live segmentation (`edge run`): frame sources (V4L2 camera, replayed folders, synthetic),
//! the always-newest-frame pipeline, named targets with persistent support shots, the HTTP page
//! and JSON API, GPIO button and LED, JSON Lines events. docs/live.md describes it for users.

#[cfg(feature = "camera")]
pub mod camera;
pub mod config;
pub mod convert;
pub mod gpio;
pub mod http;
pub mod observe;
pub mod pipeline;
pub mod slot;
pub mod source;
pub mod stats;
pub mod targets;

/// A line on stderr that never panics: `eprintln!` panics when stderr is closed (a parent
/// that stopped reading), which must not take a long-running pipeline thread down.
#[macro_export]
macro_rules! live_note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
