//! `fss-lab`: the evaluation lab shared by `host` and `edge eval`. Dataset readers and checks
//! ([`data`]), the one episode type and the seeded sampler of training and evaluation
//! ([`sampler`]), the episode source every dataset implements and the plans drawn from it
//! ([`episodes`]), the published harnesses' settings ([`presets`]) and the evaluation protocols
//! written once over [`fss_core::model::FeatureEncoder`] ([`eval`]). None of it ships in the
//! device binary.

pub mod augment;
pub mod data;
pub mod episodes;
pub mod eval;
pub mod presets;
pub mod sampler;
pub mod video;
