//! Command-line arguments of `host train` and `host eval`.

use crate::backbone::BackboneKind;
use clap::Args;
use fss_core::preprocess::InputSize;
use std::path::PathBuf;

/// The few-shot methods, declared once in the core ([`fss_core::method`]).
pub use fss_core::method::Method;

/// `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceArg(pub tch::Device);

impl std::str::FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceArg(tch::Device::Cpu)),
            "cuda" => Ok(DeviceArg(tch::Device::Cuda(0))),
            _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => Ok(DeviceArg(tch::Device::Cuda(n))),
                None => Err(format!("unknown device '{s}' (cpu, cuda or cuda:N)")),
            },
        }
    }
}

impl DeviceArg {
    /// The device, after checking that CUDA is there when asked for.
    pub fn resolve(self) -> anyhow::Result<tch::Device> {
        if let tch::Device::Cuda(n) = self.0 {
            let count = tch::Cuda::device_count() as usize;
            if count == 0 {
                anyhow::bail!(
                    "--device cuda: no CUDA device is visible to libtorch (see `host doctor`)"
                );
            }
            if n >= count {
                anyhow::bail!("--device cuda:{n}: only {count} CUDA device(s) are visible");
            }
        }
        Ok(self.0)
    }
}

fn parse_size(s: &str) -> Result<InputSize, String> {
    s.parse::<InputSize>().map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Few-shot method.
    #[arg(long, default_value = "panet")]
    pub method: Method,
    /// Backbone: efficientnet-lite0, mobilenetv2 or vgg16.
    #[arg(long, default_value = "efficientnet-lite0")]
    pub backbone: BackboneKind,
    /// ImageNet weights of the backbone (default: weights/<backbone>.safetensors from set-up).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Training data, told apart by layout: a class dataset (COCO128: images/, masks/; COCO as
    /// distributed: annotations/instances_train2017.json, train2017/; PASCAL VOC:
    /// JPEGImages/, SegmentationClassAug/; class folders: <class>/images/, <class>/masks/)
    /// and/or a DAVIS-layout video set (JPEGImages/, Annotations/: K support frames and a
    /// query frame of one sequence). Repeat to mix one of each.
    #[arg(long, default_value = "../shared/data/coco128")]
    pub data: Vec<PathBuf>,
    /// With several --data: each source's share of the episodes, in --data order
    /// (e.g. 0.7,0.3; default equal shares).
    #[arg(long, value_delimiter = ',')]
    pub data_weights: Option<Vec<f64>>,
    /// Video sequences kept out of training (to choose checkpoints on them), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub holdout_sequences: Vec<String>,
    /// Fold whose classes are held out (novel); training sees the other folds' classes only.
    #[arg(long, default_value_t = 0)]
    pub fold: usize,
    /// Run directory: checkpoints, run.json, loss.csv, loss.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (same curve as an uninterrupted run).
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 1000)]
    pub iterations: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay [default: 5e-4; SMCP: 1e-4 for --smcp-variant paper, 5e-4 for code].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Iterations at which the learning rate is multiplied by 0.1 (default: 1/3 and 2/3 of the
    /// run). SMCP's schedule comes from --smcp-variant instead (poly 0.9 or constant) unless
    /// this is given.
    #[arg(long, value_delimiter = ',')]
    pub lr_milestones: Option<Vec<usize>>,
    /// SMCP: follow the paper (PFF on the support branch, poly lr, wd 1e-4) or the official
    /// code (support branch without PFF, constant lr, wd 5e-4).
    #[arg(long, value_parser = fss_cli::choice::<crate::smcp::SmcpVariant>(), default_value = "paper")]
    pub smcp_variant: crate::smcp::SmcpVariant,
    /// SG-One: follow the paper (plain 1x1 exit conv, per-shot pooling, 255 ignored) or the
    /// official code's quirks (exit conv padding 1, batch-wide mask sum, 255 as foreground;
    /// host only: not exportable).
    #[arg(long, value_parser = fss_cli::choice::<crate::sgone::SgOneVariant>(), default_value = "paper")]
    pub sgone_variant: crate::sgone::SgOneVariant,
    /// SMCP, SG-One, DPNet: head width (SMCP 512 and SG-One 512/128 in the papers with
    /// VGG-16). The default 96 keeps a frame's head passes below the cost of the
    /// EfficientNet-Lite0 encoder at stride 16.
    #[arg(long, default_value_t = 96)]
    pub head_width: i64,
    /// Training input size, rows x columns.
    #[arg(long, default_value = "320x320", value_parser = parse_size)]
    pub size: InputSize,
    #[arg(long, default_value_t = 1)]
    pub shots: usize,
    /// Minimum object size (pixels at original resolution) for an image to be used for a class.
    #[arg(long, default_value_t = 2048)]
    pub min_pixels: u64,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Turn off PANet's prototype alignment loss.
    #[arg(long)]
    pub no_align: bool,
    /// Train BatchNorm statistics too (default: frozen, as episodes are batch 1).
    #[arg(long)]
    pub train_bn: bool,
    /// Keep the ImageNet backbone fixed and train only the method's head (SMCP; the paper's
    /// "frozen encoder" ablation). PANet has nothing else to train.
    #[arg(long)]
    pub freeze_backbone: bool,
    /// Augmentation on top of the horizontal flips: standard (random scale 0.8-1.25, rotation
    /// up to 10 degrees, shift, blur on a quarter of the images, brightness/contrast/saturation
    /// jitter of 20%) or none (flips only, as runs before it).
    #[arg(long, value_parser = ["standard", "none"], default_value = "standard")]
    pub augment: String,
    /// Episodes per optimizer step: their images go through the backbone in one batch and the
    /// loss is their mean.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// Stop after this many iterations of this invocation without a final checkpoint, as a kill
    /// would (for testing resume).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub eval: fss_cli::ProtocolArgs,
    #[arg(long, default_value = "panet")]
    pub method: Method,
    /// Backbone (ignored with --checkpoint, which records its own).
    #[arg(long, default_value = "efficientnet-lite0")]
    pub backbone: BackboneKind,
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// A training run directory (or its run.json) to evaluate.
    #[arg(long, conflicts_with = "no_train")]
    pub checkpoint: Option<PathBuf>,
    /// Evaluate the ImageNet backbone without few-shot training.
    #[arg(long)]
    pub no_train: bool,
    /// Model input size, rows x columns (a --preset sets its own; `oslsm` feeds each image at
    /// its own size).
    #[arg(long, default_value = "320x576", value_parser = parse_size)]
    pub size: InputSize,
    /// Encoder batch size.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// A training run directory (or its run.json) to export; backbone and method come from it.
    #[arg(long, conflicts_with = "no_train")]
    pub checkpoint: Option<PathBuf>,
    /// Export the ImageNet backbone without few-shot training.
    #[arg(long)]
    pub no_train: bool,
    /// Backbone with --no-train (default efficientnet-lite0); with --checkpoint it must match
    /// the run's.
    #[arg(long)]
    pub backbone: Option<BackboneKind>,
    /// Backbone weights with --no-train (default: weights/<backbone>.safetensors from set-up).
    #[arg(long, conflicts_with = "checkpoint")]
    pub weights: Option<PathBuf>,
    /// Method with --no-train (a checkpoint records its own).
    #[arg(long, default_value = "panet")]
    pub method: Method,
    /// Bundle folder: encoder.onnx and bundle.json are written there (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// Default model input size recorded in the manifest, rows x columns; the tch vs tract
    /// parity check runs at it. The graph itself accepts any size.
    #[arg(long, default_value = "320x576", value_parser = parse_size)]
    pub size: InputSize,
    /// JSON Lines of `host eval --json` / `edge eval --json`; each report becomes a metric
    /// check in the manifest (repeatable).
    #[arg(long)]
    pub checks_from: Vec<PathBuf>,
    /// Who measured the --checks-from reports: "host eval" or "edge eval".
    #[arg(long, default_value = "host eval")]
    pub checks_measured_by: String,
    /// Write an int8 encoder (QLinearConv per-tensor for dense/pointwise convs, depthwise kept
    /// fp32) calibrated with --calibration; precision "int8" in the manifest.
    #[arg(long)]
    pub int8: bool,
    /// Folder of calibration images (*.jpg, *.png) for --int8, e.g. calibration/.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// How --int8 chooses activation ranges from the calibration images: min-max, a
    /// percentile (--percentile), or the clipping that minimises the quantization MSE
    /// [default: percentile].
    #[arg(long, value_enum)]
    pub calibration_method: Option<CalibrationMethodArg>,
    /// Percentile of --calibration-method percentile, in (50, 100] [default: 99.99].
    #[arg(long)]
    pub percentile: Option<f64>,
    /// Dense/pointwise convs to keep fp32 with --int8 (names as printed and in the manifest's
    /// quantization.layers, e.g. _blocks.1._expand_conv), comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    pub fp32_layers: Vec<String>,
    /// With --int8, also keep the N dense/pointwise convs with the largest measured
    /// sensitivity fp32.
    #[arg(long, value_name = "N")]
    pub fp32_auto: Option<usize>,
}

/// `--calibration-method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CalibrationMethodArg {
    Minmax,
    Percentile,
    Mse,
}

impl CalibrationMethodArg {
    /// The method used when none is given.
    pub const DEFAULT: CalibrationMethodArg = CalibrationMethodArg::Percentile;
}

pub use fss_lab::data::check::DataFormat;

/// `host data`: dataset tools.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

/// Subcommands of `host data`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DataCommand {
    /// List every problem of a dataset folder (missing or unreadable files, masks of another
    /// size, unexpected label values, empty masks), then a summary; exit 1 if any.
    Check(DataCheckArgs),
}

/// `host data check PATH --format davis|coco|folder`.
#[derive(Debug, Clone, Args)]
pub struct DataCheckArgs {
    /// Dataset root folder.
    pub path: PathBuf,
    /// Layout of the dataset.
    #[arg(long, value_parser = fss_cli::choice::<DataFormat>())]
    pub format: DataFormat,
}
