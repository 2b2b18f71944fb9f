//! `fss-core`: what the trainer, the evaluation lab and the device must agree on, with no
//! inference engine, no libtorch, no command line and no printing.
//!
//! Tensors ([`tensor`]), the bundle manifest ([`bundle`]), image decoding ([`image_io`]) and
//! preprocessing ([`preprocess`]), masked average pooling and the canonical PANet scoring
//! ([`prototype`]), the methods declared once ([`method`]) and each head method's shared
//! inference ([`smcp`], [`sgone`], [`dpnet`]) over one head runner, the
//! model contract every harness runs ([`model`]), the metrics ([`metrics`]) and report schemas
//! ([`report`]), the DAVIS sequence reader the device replays ([`davis`]), mask overlays
//! ([`overlay`]), atomic file writes ([`fsutil`]) and named settings ([`choice`]).

pub mod bundle;
pub mod choice;
pub mod davis;
pub mod dpnet;
pub mod error;
pub mod fsutil;
pub mod image_io;
pub mod method;
pub mod metrics;
pub mod model;
pub mod overlay;
pub mod preprocess;
pub mod prototype;
pub mod report;
pub mod sgone;
pub mod smcp;
pub mod temporal;
pub mod tensor;

pub use error::{EdgeError, Result};
pub use tensor::FeatureMap;
