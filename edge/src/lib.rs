//! `edge`: the few-shot segmentation runtime and everything host and edge must agree on.
//!
//! The library part is shared with `host` (which depends on it with default features off):
//! image preprocessing, masked average pooling and the canonical PANet scoring, the metrics,
//! the seeded episode sampler and the dataset readers. It never depends on libtorch.

pub mod bundle;
pub mod data;
pub mod dpnet;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod metrics;
pub mod preprocess;
pub mod presets;
pub mod prototype;
pub mod report;
pub mod sampler;
pub mod sgone;
pub mod smcp;
pub mod tensor;

pub use error::{EdgeError, Result};
pub use tensor::FeatureMap;
pub mod cache;
pub mod live;
pub mod overlay;
pub mod runtime;
pub mod testkit;
