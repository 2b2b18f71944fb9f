//! `host` library: everything the `host` binary and its integration tests share.

pub mod backbone;
pub mod class_data;
pub mod cli;
pub mod data_check;
pub mod doctor;
pub mod dpnet;
pub mod eval;
pub mod export;
pub mod heads;
pub mod imagenet_classes;
pub mod layers;
pub mod npy;
pub mod onnx;
pub mod optim;
pub mod panet;
pub mod plot;
pub mod run;
pub mod sgone;
pub mod smcp;
pub mod tensors;
pub mod train;
