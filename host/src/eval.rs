//! `host eval`: the protocols of evaluation.md with the backbone running in tch and the
//! canonical scoring of the shared library (the same code `edge eval` runs).

use crate::backbone::{Backbone, BackboneKind, BackboneOptions};
use crate::cli::{EvalArgs, Method};
use crate::dpnet::TchDualHead;
use crate::heads::MethodHead;
use crate::sgone::TchGuidedHead;
use crate::smcp::TchPrototypeHead;
use crate::train::{initial_weights, method_head, RunRecord, FEATURE_STRIDE};
use anyhow::{anyhow, bail, Result};
use edge::dpnet::{dpnet_logits, dpnet_prototypes};
use edge::eval::{FeatureEncoder, ScoringInput};
use edge::preprocess::{InputSize, Normalization};
use edge::prototype::{cosine_logits, panet_prototypes, Prototypes, SupportShot, PANET_SCALE};
use edge::report::EvalReport;
use edge::sgone::{sgone_logits, sgone_prototypes, SgOneKShot};
use edge::smcp::{smcp_logits, SmcpGuidance};
use edge::tensor::FeatureMap;
use std::path::Path;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// The backbone in tch as a [`FeatureEncoder`] for the shared harness, with the method's head
/// (PANet: the shared cosine scoring; SMCP, SG-One, DPNet: their heads in tch under the shared
/// inference of `edge::smcp`, `edge::sgone`, `edge::dpnet`).
pub struct TchEncoder {
    pub backbone: Backbone,
    pub stride: i64,
    pub batch: usize,
    pub head: Option<MethodHead>,
    pub guidance: SmcpGuidance,
    pub sgone_kshot: SgOneKShot,
    vs: VarStore,
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
            head: None,
            guidance: SmcpGuidance::default(),
            sgone_kshot: SgOneKShot::default(),
            vs,
        })
    }

    /// A trained model of a run: its backbone and its method's head (from the run's
    /// checkpoint).
    pub fn from_run(
        record: &RunRecord,
        dir: &Path,
        device: Device,
        batch: usize,
    ) -> Result<TchEncoder> {
        let kind = record.backbone_kind()?;
        let model = record.model_path(dir);
        let mut enc = TchEncoder::load(kind, Some(&model), device, batch)?;
        enc.head = method_head(&enc.vs, &enc.backbone, &record.config)?;
        if let Some(h) = &enc.head {
            h.load_weights(&model)?;
        }
        Ok(enc)
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

/// A feature map as a `[1, C, h, w]` tensor on `device`.
pub fn feature_tensor(f: &FeatureMap, device: Device) -> Tensor {
    Tensor::from_slice(&f.data)
        .view([1, f.channels as i64, f.height as i64, f.width as i64])
        .to_device(device)
}

/// The first map of a `[N, C, h, w]` tensor (a head's output), errors naming `what`.
pub fn first_map(t: &Tensor, what: &str) -> edge::Result<FeatureMap> {
    let maps = tensor_to_maps(t).map_err(|e| edge::EdgeError::input(format!("{what}: {e}")))?;
    maps.into_iter()
        .next()
        .ok_or_else(|| edge::EdgeError::input(format!("{what}: no output")))
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

    fn head_logits(
        &mut self,
        prototypes: &Prototypes,
        query: &FeatureMap,
        input: InputSize,
    ) -> edge::Result<FeatureMap> {
        let device = self.backbone.device();
        match &self.head {
            None => cosine_logits(query, &prototypes.ordered(), PANET_SCALE),
            Some(MethodHead::Smcp(head)) => {
                let mut pass = TchPrototypeHead { head, device };
                smcp_logits(&mut pass, prototypes, query, input, self.guidance)
            }
            Some(MethodHead::SgOne(head)) => {
                let mut pass = TchGuidedHead { head, device };
                sgone_logits(&mut pass, prototypes, query, self.sgone_kshot)
            }
            Some(MethodHead::DpNet(head)) => {
                let mut pass = TchDualHead { head, device };
                dpnet_logits(&mut pass, prototypes, query)
            }
        }
    }

    fn prototypes(&mut self, ways: &[Vec<SupportShot>]) -> edge::Result<Prototypes> {
        let device = self.backbone.device();
        match &self.head {
            None | Some(MethodHead::Smcp(_)) => panet_prototypes(ways),
            Some(MethodHead::SgOne(head)) => {
                sgone_prototypes(&mut TchGuidedHead { head, device }, ways)
            }
            Some(MethodHead::DpNet(_)) => dpnet_prototypes(ways),
        }
    }
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let (mut encoder, kind, method, trained_fold) = match &args.checkpoint {
        Some(ckpt) => {
            let (rec, dir) = RunRecord::read(ckpt)?;
            let enc = TchEncoder::from_run(&rec, &dir, device, args.batch)?;
            (
                enc,
                rec.backbone_kind()?,
                rec.config.method,
                Some(rec.config.fold),
            )
        }
        None => {
            if !args.no_train {
                bail!("give --checkpoint RUN_DIR to evaluate a trained model, or --no-train for the ImageNet backbone");
            }
            if args.method != Method::Panet {
                bail!("--no-train evaluates PANet's scoring on the ImageNet backbone; method {} needs a trained --checkpoint", args.method);
            }
            let weights = initial_weights(args.backbone, &args.weights)?;
            let enc = TchEncoder::load(args.backbone, weights.as_deref(), device, args.batch)?;
            (enc, args.backbone, args.method, None)
        }
    };
    encoder.guidance = args.eval.smcp_guidance;
    encoder.sgone_kshot = args.eval.sgone_kshot;
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
        edge::smcp::report_label(
            method.name(),
            args.eval.smcp_guidance,
            args.eval.sgone_kshot,
            args.eval.shots,
        ),
        kind.name(),
        [size.height, size.width],
        "fp32",
        args.eval.shots,
    );
    args.eval
        .run_and_print(&mut encoder, input, base, trained_fold)?;
    Ok(())
}
