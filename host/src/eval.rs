//! `host eval`: the protocols of evaluation.md with the backbone running in tch and the
//! canonical scoring of the shared library (the same code `edge eval` runs).

use crate::backbone::{Backbone, BackboneKind, BackboneOptions};
use crate::cli::{EvalArgs, Method};
use crate::train::{initial_weights, RunRecord, FEATURE_STRIDE};
use anyhow::{anyhow, bail, Result};
use edge::eval::{FeatureEncoder, ScoringInput};
use edge::preprocess::{InputSize, Normalization};
use edge::report::EvalReport;
use edge::tensor::FeatureMap;
use std::path::Path;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// The backbone in tch as a [`FeatureEncoder`] for the shared harness.
pub struct TchEncoder {
    pub backbone: Backbone,
    pub stride: i64,
    pub batch: usize,
    _vs: VarStore,
}

impl TchEncoder {
    /// A backbone with weights from `weights` (ImageNet or a checkpoint), BatchNorm in eval mode.
    pub fn load(
        kind: BackboneKind,
        weights: Option<&Path>,
        device: Device,
        batch: usize,
    ) -> Result<TchEncoder> {
        let vs = VarStore::new(device);
        let backbone = Backbone::new(&vs.root(), kind, BackboneOptions::default())?;
        match weights {
            Some(w) => backbone.load_weights(w)?,
            None => eprintln!(
                "warning: {kind} has no weights: evaluating a randomly initialised backbone"
            ),
        }
        Ok(TchEncoder {
            backbone,
            stride: FEATURE_STRIDE,
            batch: batch.max(1),
            _vs: vs,
        })
    }

    pub fn normalization(&self) -> Normalization {
        let (mean, std) = self.backbone.normalization();
        Normalization { mean, std }
    }
}

/// `[N, C, h, w]` float tensor -> feature maps.
pub fn tensor_to_maps(t: &Tensor) -> Result<Vec<FeatureMap>> {
    let s = t.size();
    if s.len() != 4 {
        bail!("expected a 4-d feature tensor, got shape {s:?}");
    }
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let all: Vec<f32> =
        Vec::try_from(&t.flatten(0, -1)).map_err(|e| anyhow!("feature tensor: {e}"))?;
    let per = (s[1] * s[2] * s[3]) as usize;
    all.chunks(per)
        .map(|c| {
            FeatureMap::new(s[1] as usize, s[2] as usize, s[3] as usize, c.to_vec())
                .map_err(Into::into)
        })
        .collect()
}

impl FeatureEncoder for TchEncoder {
    fn encode_batch(
        &mut self,
        inputs: &[Vec<f32>],
        size: InputSize,
    ) -> edge::Result<Vec<FeatureMap>> {
        let (h, w) = (size.height as i64, size.width as i64);
        let flat: Vec<f32> = inputs.iter().flat_map(|v| v.iter().copied()).collect();
        let x = Tensor::from_slice(&flat)
            .view([inputs.len() as i64, 3, h, w])
            .to_device(self.backbone.device());
        let feats = tch::no_grad(|| self.backbone.forward_to(&x, self.stride, false))
            .map_err(|e| edge::EdgeError::input(format!("encoder: {e}")))?;
        tensor_to_maps(&feats).map_err(|e| edge::EdgeError::input(e.to_string()))
    }

    fn batch_size(&self) -> usize {
        self.batch
    }
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let (kind, weights, method, trained_fold) = match &args.checkpoint {
        Some(ckpt) => {
            let (rec, dir) = RunRecord::read(ckpt)?;
            (
                rec.backbone_kind()?,
                Some(rec.model_path(&dir)),
                rec.config.method,
                Some(rec.config.fold),
            )
        }
        None => {
            if !args.no_train {
                bail!("give --checkpoint RUN_DIR to evaluate a trained model, or --no-train for the ImageNet backbone");
            }
            (
                args.backbone,
                initial_weights(args.backbone, &args.weights)?,
                args.method,
                None,
            )
        }
    };
    if method != Method::Panet {
        bail!("method {method} cannot be evaluated yet");
    }
    let mut encoder = TchEncoder::load(kind, weights.as_deref(), device, args.batch)?;
    // A preset with a fixed input size sets it; `oslsm` feeds every image at its own size.
    let size = args
        .eval
        .preset_harness()
        .and_then(|h| h.size())
        .unwrap_or(args.size);
    let input = ScoringInput {
        size,
        normalization: encoder.normalization(),
    };
    let base = EvalReport::new(
        "",
        args.eval.data.display().to_string(),
        method.name(),
        kind.name(),
        [size.height, size.width],
        "fp32",
        args.eval.shots,
    );
    args.eval
        .run_and_print(&mut encoder, input, base, trained_fold)?;
    Ok(())
}
