//! Image backbones: EfficientNet-Lite0, MobileNetV2 (ImageNet weights converted to safetensors at
//! set-up) and the PANet VGG-16 variant.
//!
//! A backbone is a flat list of explicit [`crate::layers::Layer`]s (the trunk), a few feature taps (the
//! trunk outputs at stride 4/8/16/32) and, only when asked for, the ImageNet classifier head. The
//! same layer structs run forward in tch and can be walked to emit ONNX nodes.
//!
//! ```no_run
//! use host::backbone::{Backbone, BackboneKind, BackboneOptions, default_weights_path};
//! # fn main() -> anyhow::Result<()> {
//! let vs = tch::nn::VarStore::new(tch::Device::Cpu);
//! let kind: BackboneKind = "efficientnet-lite0".parse()?;
//! let bb = Backbone::new(&vs.root().sub("backbone"), kind, BackboneOptions::default())?;
//! bb.load_weights(&default_weights_path(kind))?;
//! let x = tch::Tensor::zeros([1, 3, 320, 576], (tch::Kind::Float, tch::Device::Cpu));
//! let f16 = bb.forward_to(&x, 16, false)?; // [1, 112, 20, 36]
//! # Ok(()) }
//! ```

pub mod efficientnet_lite;
pub mod mobilenetv2;
pub mod vgg;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::layers::{Layer, Scope};

/// Environment variable that overrides the weights directory.
pub const WEIGHTS_DIR_ENV: &str = "FSS_WEIGHTS_DIR";

/// The backbones this project knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackboneKind {
    EfficientNetLite0,
    MobileNetV2,
    Vgg16Panet,
}

impl BackboneKind {
    pub const ALL: [BackboneKind; 3] = [
        BackboneKind::EfficientNetLite0,
        BackboneKind::MobileNetV2,
        BackboneKind::Vgg16Panet,
    ];

    /// The CLI / config name: `efficientnet-lite0`, `mobilenetv2`, `vgg16`.
    pub fn name(self) -> &'static str {
        match self {
            BackboneKind::EfficientNetLite0 => "efficientnet-lite0",
            BackboneKind::MobileNetV2 => "mobilenetv2",
            BackboneKind::Vgg16Panet => "vgg16",
        }
    }

    /// Per-channel (mean, std) on RGB in [0, 1]: `x' = (x - mean) / std`.
    pub fn normalization(self) -> ([f32; 3], [f32; 3]) {
        match self {
            BackboneKind::EfficientNetLite0 => ([0.498; 3], [0.502; 3]),
            BackboneKind::MobileNetV2 | BackboneKind::Vgg16Panet => {
                ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
            }
        }
    }

    /// File name of the converted weights inside the weights directory.
    pub fn weights_file_name(self) -> &'static str {
        match self {
            BackboneKind::EfficientNetLite0 => "efficientnet-lite0.safetensors",
            BackboneKind::MobileNetV2 => "mobilenetv2.safetensors",
            BackboneKind::Vgg16Panet => "vgg16.safetensors",
        }
    }

    /// Whether an ImageNet classifier head exists for this kind.
    pub fn has_classifier(self) -> bool {
        !matches!(self, BackboneKind::Vgg16Panet)
    }

    /// Strides of the feature levels, shallow to deep.
    pub fn feature_strides(self) -> &'static [i64] {
        match self {
            BackboneKind::Vgg16Panet => &[4, 8],
            _ => &[4, 8, 16, 32],
        }
    }

    /// Channels of the feature level at `stride` (`None` if the kind has no such level).
    pub fn feature_channels(self, stride: i64) -> Option<i64> {
        let table: &[(i64, i64)] = match self {
            BackboneKind::EfficientNetLite0 => &[(4, 24), (8, 40), (16, 112), (32, 320)],
            BackboneKind::MobileNetV2 => &[(4, 24), (8, 32), (16, 96), (32, 320)],
            BackboneKind::Vgg16Panet => &[(4, 256), (8, 512)],
        };
        table.iter().find(|(s, _)| *s == stride).map(|(_, c)| *c)
    }

    /// What to tell a user whose weight file is missing.
    fn weights_hint(self) -> &'static str {
        match self {
            BackboneKind::Vgg16Panet => {
                "convert a torchvision vgg16 .pth with `scripts/convert_weights.py weights --only none \
                 --torchvision-vgg16 PATH`, or train from scratch"
            }
            _ => "run scripts/setup.sh to install and convert the ImageNet weights",
        }
    }
}

impl fmt::Display for BackboneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackboneKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let found = BackboneKind::ALL
            .into_iter()
            .find(|k| k.name() == t)
            .or(match t.as_str() {
                "efficientnet_lite0" | "effl0" => Some(BackboneKind::EfficientNetLite0),
                "mobilenet_v2" | "mnv2" => Some(BackboneKind::MobileNetV2),
                "vgg16-panet" | "vgg" => Some(BackboneKind::Vgg16Panet),
                _ => None,
            });
        found.ok_or_else(|| {
            let known: Vec<_> = BackboneKind::ALL.iter().map(|k| k.name()).collect();
            anyhow!("unknown backbone `{s}` (known: {})", known.join(", "))
        })
    }
}

/// Where the trunk output of one feature level is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureTap {
    /// `s4`, `s8`, `s16`, `s32`.
    pub name: &'static str,
    pub stride: i64,
    pub channels: i64,
    /// Index into the trunk: the level is the output of `trunk[layer]`.
    pub layer: usize,
}

/// What an architecture module builds.
pub(crate) struct Net {
    trunk: Vec<Layer>,
    taps: Vec<FeatureTap>,
    head: Option<Vec<Layer>>,
}

/// One computed feature level.
#[derive(Debug)]
pub struct FeatureLevel {
    pub name: &'static str,
    pub stride: i64,
    pub tensor: Tensor,
}

/// The feature levels of one forward pass, shallow to deep.
#[derive(Debug)]
pub struct FeatureLevels {
    pub levels: Vec<FeatureLevel>,
}

impl FeatureLevels {
    /// The level at `stride`.
    pub fn get(&self, stride: i64) -> Option<&Tensor> {
        self.levels
            .iter()
            .find(|l| l.stride == stride)
            .map(|l| &l.tensor)
    }
    /// The level named `name` (`s16`).
    pub fn by_name(&self, name: &str) -> Option<&Tensor> {
        self.levels
            .iter()
            .find(|l| l.name == name)
            .map(|l| &l.tensor)
    }
    /// The deepest level computed.
    pub fn last(&self) -> Option<&Tensor> {
        self.levels.last().map(|l| &l.tensor)
    }
}

/// Construction options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackboneOptions {
    /// Build the ImageNet classifier head (needed only by [`Backbone::classify`]).
    pub with_classifier: bool,
    /// BatchNorm uses running statistics even when `train` is true (see
    /// [`Backbone::set_bn_frozen`]). Default: true.
    pub bn_frozen: bool,
}

impl Default for BackboneOptions {
    fn default() -> Self {
        BackboneOptions {
            with_classifier: false,
            bn_frozen: true,
        }
    }
}

/// A backbone network: trunk layers, feature taps, optional classifier head.
#[derive(Debug)]
pub struct Backbone {
    kind: BackboneKind,
    trunk: Vec<Layer>,
    taps: Vec<FeatureTap>,
    head: Option<Vec<Layer>>,
    bn_frozen: bool,
    device: Device,
}

impl Backbone {
    /// Creates the backbone's variables under `path` (trainable parameters, BatchNorm running
    /// statistics as non-trainable variables), randomly initialised. Variable names below `path`
    /// are the source state-dict keys. Errors if a classifier is asked for a kind without one.
    pub fn new(path: &nn::Path, kind: BackboneKind, opts: BackboneOptions) -> Result<Backbone> {
        if opts.with_classifier && !kind.has_classifier() {
            bail!("backbone {kind} has no ImageNet classifier head");
        }
        let root = Scope::root(path);
        let net = match kind {
            BackboneKind::EfficientNetLite0 => {
                efficientnet_lite::build(&root, opts.with_classifier)
            }
            BackboneKind::MobileNetV2 => mobilenetv2::build(&root, opts.with_classifier),
            BackboneKind::Vgg16Panet => vgg::build(&root),
        };
        Ok(Backbone {
            kind,
            trunk: net.trunk,
            taps: net.taps,
            head: net.head,
            bn_frozen: opts.bn_frozen,
            device: path.device(),
        })
    }

    pub fn kind(&self) -> BackboneKind {
        self.kind
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn normalization(&self) -> ([f32; 3], [f32; 3]) {
        self.kind.normalization()
    }
    /// The trunk layers, in order (for export).
    pub fn trunk(&self) -> &[Layer] {
        &self.trunk
    }
    /// The feature taps, shallow to deep.
    pub fn taps(&self) -> &[FeatureTap] {
        &self.taps
    }
    /// The classifier head (conv/BN/act, global average pool, linear), if built.
    pub fn head(&self) -> Option<&[Layer]> {
        self.head.as_deref()
    }
    pub fn has_classifier(&self) -> bool {
        self.head.is_some()
    }
    /// The tap at `stride`.
    pub fn tap(&self, stride: i64) -> Option<&FeatureTap> {
        self.taps.iter().find(|t| t.stride == stride)
    }
    /// Channels of the level at `stride`.
    pub fn feature_channels(&self, stride: i64) -> Option<i64> {
        self.tap(stride).map(|t| t.channels)
    }
    /// The trunk layers that produce the level at `stride` (`trunk[..=tap.layer]`), for export.
    pub fn layers_to(&self, stride: i64) -> Result<&[Layer]> {
        let tap = self.tap_or_err(stride)?;
        Ok(&self.trunk[..=tap.layer])
    }

    /// Freezes (true) or unfreezes BatchNorm: when frozen, BN always uses its running statistics
    /// and never updates them, even in training (few-shot episodes have batch 1).
    pub fn set_bn_frozen(&mut self, frozen: bool) {
        self.bn_frozen = frozen;
    }
    pub fn bn_frozen(&self) -> bool {
        self.bn_frozen
    }

    fn bn_train(&self, train: bool) -> bool {
        train && !self.bn_frozen
    }

    fn tap_or_err(&self, stride: i64) -> Result<&FeatureTap> {
        self.tap(stride).ok_or_else(|| {
            let have: Vec<String> = self.taps.iter().map(|t| t.stride.to_string()).collect();
            anyhow!(
                "backbone {} has no feature level at stride {stride} (available: {})",
                self.kind,
                have.join(", ")
            )
        })
    }

    /// All feature levels (`x`: normalised `[N, 3, H, W]` float).
    pub fn features(&self, x: &Tensor, train: bool) -> FeatureLevels {
        let bn_train = self.bn_train(train);
        let last = self.taps.iter().map(|t| t.layer).max().unwrap_or(0);
        let mut levels = Vec::with_capacity(self.taps.len());
        let mut h = x.shallow_clone();
        for (i, layer) in self.trunk[..=last].iter().enumerate() {
            h = layer.forward(&h, bn_train);
            for tap in self.taps.iter().filter(|t| t.layer == i) {
                levels.push(FeatureLevel {
                    name: tap.name,
                    stride: tap.stride,
                    tensor: h.shallow_clone(),
                });
            }
        }
        FeatureLevels { levels }
    }

    /// The feature level at `stride` only, without running deeper layers.
    pub fn forward_to(&self, x: &Tensor, stride: i64, train: bool) -> Result<Tensor> {
        let tap = *self.tap_or_err(stride)?;
        let bn_train = self.bn_train(train);
        let mut h = x.shallow_clone();
        for layer in &self.trunk[..=tap.layer] {
            h = layer.forward(&h, bn_train);
        }
        Ok(h)
    }

    /// ImageNet logits `[N, 1000]` (the whole trunk, then the head; no dropout).
    pub fn classify(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let head = self.head.as_ref().ok_or_else(|| {
            anyhow!(
                "backbone {} was built without its classifier head",
                self.kind
            )
        })?;
        let bn_train = self.bn_train(train);
        let mut h = x.shallow_clone();
        for layer in self.trunk.iter().chain(head.iter()) {
            h = layer.forward(&h, bn_train);
        }
        Ok(h)
    }

    /// Every parameter and BatchNorm buffer as `(state-dict name, tensor)` (shallow clones that
    /// share storage with the variables).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for layer in self.trunk.iter().chain(self.head.iter().flatten()) {
            layer.named_parameters(&mut out);
        }
        out
    }

    /// Copies the tensors of a safetensors file into this backbone's variables. Every parameter
    /// and buffer must be present with the same shape and dtype F32 (extra tensors in the file,
    /// such as `num_batches_tracked` or an unused classifier, are ignored). Validates everything
    /// before copying anything; errors are one line naming the file.
    pub fn load_weights(&self, weights_path: &Path) -> Result<()> {
        let file = weights_path.display();
        if let Err(e) = std::fs::metadata(weights_path) {
            bail!(
                "weight file {file}: cannot read it: {e} ({})",
                self.kind.weights_hint()
            );
        }
        load_named(&self.named_parameters(), weights_path, self.kind.name())
    }
}

/// Copies the tensors of a safetensors file into `params` (by name). Every one must be present
/// with the same shape and dtype F32; extra tensors in the file are ignored. Validates
/// everything before copying anything; errors are one line naming the file (`what` names the
/// model part whose tensors are missing).
pub fn load_named(params: &[(String, Tensor)], weights_path: &Path, what: &str) -> Result<()> {
    let file = weights_path.display();
    let bytes = std::fs::read(weights_path)
        .map_err(|e| anyhow!("weight file {file}: cannot read it: {e}"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        anyhow!("weight file {file}: not a valid safetensors file (truncated or corrupt?): {e}")
    })?;
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut views = Vec::with_capacity(params.len());
    for (name, t) in params {
        let want: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        match st.tensor(name) {
            Err(_) => missing.push(name.clone()),
            Ok(v) if v.dtype() != safetensors::Dtype::F32 => {
                wrong.push(format!("`{name}` has dtype {:?}, expected F32", v.dtype()))
            }
            Ok(v) if v.shape() != want.as_slice() => wrong.push(format!(
                "`{name}` has shape {:?}, expected {:?}",
                v.shape(),
                want
            )),
            Ok(v) => views.push((t, v)),
        }
    }
    if !missing.is_empty() || !wrong.is_empty() {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(3).map(|n| format!("`{n}`")).collect();
            let more = if missing.len() > 3 {
                format!(" and {} more", missing.len() - 3)
            } else {
                String::new()
            };
            parts.push(format!("missing tensor(s) {}{more}", shown.join(", ")));
        }
        if !wrong.is_empty() {
            let more = if wrong.len() > 3 {
                format!(" and {} more", wrong.len() - 3)
            } else {
                String::new()
            };
            parts.push(format!(
                "{}{more}",
                wrong.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
        let hint = if missing.len() == params.len() {
            format!(" (none of the {what} tensors is there: a file for another model?)")
        } else {
            String::new()
        };
        bail!("weight file {file}: {}{hint}", parts.join("; "));
    }
    tch::no_grad(|| -> Result<()> {
        for (dst, view) in views {
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let src = Tensor::f_from_data_size(view.data(), &shape, Kind::Float)
                .with_context(|| format!("weight file {file}: cannot read a tensor"))?;
            let mut dst = dst.shallow_clone();
            dst.f_copy_(&src)
                .with_context(|| format!("weight file {file}: cannot copy a tensor"))?;
        }
        Ok(())
    })
}

/// Builds a backbone (no classifier, BatchNorm frozen) in a fresh `VarStore` on `device` and
/// loads `weights_path` into it. The variables stay alive with the returned backbone; create it
/// with [`Backbone::new`] under your own `VarStore` path to train it.
pub fn load(kind: BackboneKind, weights_path: &Path, device: Device) -> Result<Backbone> {
    load_with(kind, weights_path, device, BackboneOptions::default())
}

/// [`load`] with options (e.g. `with_classifier: true` for ImageNet classification).
pub fn load_with(
    kind: BackboneKind,
    weights_path: &Path,
    device: Device,
    opts: BackboneOptions,
) -> Result<Backbone> {
    let vs = nn::VarStore::new(device);
    let bb = Backbone::new(&vs.root(), kind, opts)?;
    bb.load_weights(weights_path)?;
    Ok(bb)
}

/// The string metadata of a safetensors file (the converter records `source_file` and
/// `source_sha256`). Reads only the header.
pub fn weights_metadata(weights_path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let file = weights_path.display();
    let mut f = std::fs::File::open(weights_path)
        .map_err(|e| anyhow!("weight file {file}: cannot read it: {e}"))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| anyhow!("weight file {file}: too short for a safetensors header"))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        bail!("weight file {file}: not a valid safetensors file (header length {n})");
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|_| anyhow!("weight file {file}: truncated safetensors header"))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| anyhow!("weight file {file}: bad safetensors header: {e}"))?;
    let mut out = HashMap::new();
    if let Some(m) = v.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, val) in m {
            if let Some(s) = val.as_str() {
                out.insert(k.clone(), s.to_string());
            }
        }
    }
    Ok(out)
}

/// The weights directory: `$FSS_WEIGHTS_DIR` if set, else the `weights/` directory next to the
/// `Cargo.toml` of the first ancestor of the executable's directory or of the current directory
/// that has both, else the `weights/` next to the nearest workspace `Cargo.toml`, else
/// `./weights`.
pub fn weights_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(WEIGHTS_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let mut starts = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            starts.push(d.to_path_buf());
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    for start in &starts {
        for d in start.ancestors() {
            if d.join("Cargo.toml").is_file() && d.join("weights").is_dir() {
                return d.join("weights");
            }
        }
    }
    for start in &starts {
        for d in start.ancestors() {
            let manifest = d.join("Cargo.toml");
            if manifest.is_file()
                && std::fs::read_to_string(&manifest)
                    .map(|s| s.contains("[workspace]"))
                    .unwrap_or(false)
            {
                return d.join("weights");
            }
        }
    }
    PathBuf::from("weights")
}

/// The default weight file of `kind`: `weights_dir()/<kind file name>`.
pub fn default_weights_path(kind: BackboneKind) -> PathBuf {
    weights_dir().join(kind.weights_file_name())
}
