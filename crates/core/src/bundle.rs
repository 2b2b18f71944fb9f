//! The bundle: a folder with ONNX graphs and the `bundle.json` manifest that says how to run
//! them. Written by `host export`, read by the edge runtime. design.md, "Bundle manifest".

use crate::error::{EdgeError, Result};
use crate::preprocess::{InputSize, Normalization};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The manifest format this build reads and writes.
pub const BUNDLE_FORMAT: u32 = 1;
pub const MANIFEST_FILE: &str = "bundle.json";

/// One dimension of a graph input or output: a fixed size or a symbol (`"N"`, `"H"`, `"W"`,
/// `"h"`, `"w"`) that the runtime pins per input size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    Symbol(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<Dim>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphSpec {
    /// File name relative to the bundle folder.
    pub file: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// sha256 of the file, hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graphs {
    pub encoder: GraphSpec,
    /// PANet scores in Rust (`crate::prototype`) and needs no head graph.
    pub head: Option<GraphSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Default input size (rows, columns). The graphs have symbolic H and W; the runtime pins
    /// the size it is given (a camera mode, a dataset's size) and optimizes once per size.
    pub height: usize,
    pub width: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// `"rgb"`.
    pub channel_order: String,
    /// `"nchw"`.
    pub layout: String,
}

impl InputSpec {
    pub fn size(&self) -> InputSize {
        InputSize::new(self.height, self.width)
    }
    pub fn normalization(&self) -> Normalization {
        Normalization {
            mean: self.mean,
            std: self.std,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub stride: usize,
    pub channels: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResizeSpec {
    /// `"stretch"` (default), `"letterbox"` or `"crop"`.
    pub mode: String,
    /// `"bilinear"`.
    pub interpolation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrototypeSpec {
    /// `"panet"`: fg prototype per target (mean over shots) and one shared bg prototype.
    /// `"smcp"`: the fg prototype per target (mean over shots) is the head graph's input.
    pub kind: String,
    pub eps: f32,
    /// Cosine scale (PANet; 0 for SMCP, whose head makes the logits).
    pub scale: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    /// Calibration method of the activation ranges: `minmax`, `percentile` or `mse`.
    pub method: String,
    /// The percentile of method `percentile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// The calibration folder and its image count.
    pub calibration: String,
    /// Every conv kept fp32 (depthwise, and dense/pointwise ones kept on purpose).
    pub layers_fp32: Vec<String>,
    /// How weights are quantized (e.g. `int8 symmetric per-tensor, BatchNorm folded`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub weights: String,
    /// How activations are quantized (e.g. `uint8 asymmetric per-tensor`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub activations: String,
    /// One u8 step of the encoder output (the last quantized conv's output scale), when that
    /// conv is the output: the unit of int8 tolerances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_step: Option<f32>,
    /// Every conv of the encoder in graph order: precision, why fp32, measured sensitivity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<QuantizedLayer>,
    /// What the export measured (int8 vs fp32 features).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<QuantizationCheck>,
}

/// One conv of an int8 encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizedLayer {
    pub name: String,
    /// `dense`, `pointwise` or `depthwise`.
    pub kind: String,
    /// `int8` or `fp32`.
    pub precision: String,
    /// Why an fp32 conv is fp32: `depthwise`, `--fp32-layers`, `--fp32-auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Relative L2 error of the encoder output with only this conv int8 (simulated in the
    /// host on calibration images).
    pub rel_l2_alone: f64,
}

/// int8 vs fp32 encoder output, as measured by the export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationCheck {
    /// Relative L2 error of the final mix, simulated in the host, over `sensitivity_images`.
    pub simulated_rel_l2: f64,
    pub sensitivity_images: usize,
    /// The int8 graph in tract vs fp32 (tch) on the first calibration image at the default
    /// size: relative L2 error and cosine.
    pub tract_rel_l2: f64,
    pub tract_cosine: f64,
}

/// How the bundle was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Provenance {
    /// `"imagenet"` for an untrained backbone, else the training data.
    pub data: String,
    pub fold: Option<usize>,
    pub iterations: usize,
    pub seed: Option<u64>,
    pub host_version: String,
    /// The training run (its run.json) or the ImageNet weight file it came from, as a portable
    /// path: relative to where `host export` ran, or the folder and file name.
    pub source: String,
    pub created: String,
    /// How the model was trained, in words (method settings, schedule, what was frozen).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub training: String,
}

/// A measured metric of this bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricCheck {
    pub protocol: String,
    pub data: String,
    pub size: [usize; 2],
    pub j_mean: Option<f64>,
    pub miou: Option<f64>,
    pub fb_iou: Option<f64>,
    /// Which program measured it (`host eval` or `edge eval`).
    pub measured_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Checks {
    /// Max abs difference tch vs tract on the encoder output, random input at the default size.
    pub parity_max_abs_diff: Option<f64>,
    /// Max abs difference tch vs tract on the head graph's logits (seeded features and
    /// prototype at the default size's feature map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_parity_max_abs_diff: Option<f64>,
    pub metrics: Vec<MetricCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub method: String,
    pub backbone: String,
    pub input: InputSpec,
    pub feature: FeatureSpec,
    pub graphs: Graphs,
    /// `"fp32"` or `"int8"`.
    pub precision: String,
    pub quantization: Option<Quantization>,
    pub resize: ResizeSpec,
    pub prototype: PrototypeSpec,
    /// Foreground threshold for 1-way sigmoid heads; `None` = argmax.
    pub threshold: Option<f32>,
    pub provenance: Provenance,
    pub checks: Checks,
    /// The method's head graph, when there is one: what it is and what it costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadInfo>,
}

/// A head graph's description (SMCP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadInfo {
    /// `"smcp"`.
    pub kind: String,
    /// Channels of the head's convolutions.
    pub width: usize,
    /// ASPP dilations.
    pub dilations: Vec<usize>,
    /// `paper` or `code` (methods.md §5.3).
    pub variant: String,
    /// Parameters of the exported head (the training-only multi-class head excluded).
    pub parameters: u64,
    /// Multiply-accumulates of one pass at the default input size (convolutions).
    pub macs_per_pass: u64,
    /// Passes per target and frame (SMCP: 2, first pass + fused second pass).
    pub passes: usize,
    /// Parameters and MACs of the encoder at the default input size, for comparison.
    pub encoder_parameters: u64,
    pub encoder_macs: u64,
}

impl Manifest {
    /// Reads and validates `dir/bundle.json`: known format, known precision, graph files
    /// present. Shape agreement with the graphs is checked by the runtime when it loads them.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        if !dir.is_dir() {
            return Err(EdgeError::invalid(dir, "bundle folder does not exist"));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| EdgeError::io(&path, e))?;
        // Check the version before the full schema, so that a newer manifest gets the right error.
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| EdgeError::invalid(&path, format!("not valid JSON: {e}")))?;
        match value.get("format").and_then(|f| f.as_u64()) {
            Some(f) if f == BUNDLE_FORMAT as u64 => {}
            Some(f) => {
                return Err(EdgeError::invalid(
                    &path,
                    format!(
                    "bundle format {f} is not supported (this edge reads format {BUNDLE_FORMAT})"
                ),
                ))
            }
            None => {
                return Err(EdgeError::invalid(
                    &path,
                    "no \"format\" field: not a bundle manifest",
                ))
            }
        }
        let m: Manifest = serde_json::from_value(value)
            .map_err(|e| EdgeError::invalid(&path, format!("invalid manifest: {e}")))?;
        if m.precision != "fp32" && m.precision != "int8" {
            return Err(EdgeError::invalid(
                &path,
                format!("unknown precision '{}' (fp32 or int8)", m.precision),
            ));
        }
        for g in std::iter::once(&m.graphs.encoder).chain(m.graphs.head.iter()) {
            let f = dir.join(&g.file);
            if !f.is_file() {
                return Err(EdgeError::invalid(
                    &f,
                    "graph file named in bundle.json is missing",
                ));
            }
        }
        Ok(m)
    }

    pub fn graph_path(dir: &Path, g: &GraphSpec) -> PathBuf {
        dir.join(&g.file)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| EdgeError::input(format!("manifest: {e}")))?;
        crate::fsutil::write_atomic(&dir.join(MANIFEST_FILE), &json)
    }
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|e| EdgeError::io(path, e))?;
    Ok(format!("{:x}", sha2::Sha256::digest(&bytes)))
}
