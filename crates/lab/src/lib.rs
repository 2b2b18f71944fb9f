//! `fss-lab`: the evaluation lab shared by `host` and `edge eval`. Dataset readers and checks
//! ([`data`]), the seeded episode sampler of training and evaluation ([`sampler`]), the
//! published harnesses' settings ([`presets`]) and the evaluation protocols written once over
//! [`fss_core::model::FeatureEncoder`] ([`eval`]). None of it ships in the device binary.

#[cfg(feature = "cli")]
pub mod cli;
pub mod data;
pub mod eval;
pub mod presets;
pub mod sampler;
