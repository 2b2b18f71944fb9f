//! `host eval`: the protocols of evaluation.md with the backbone running in tch and the
//! canonical scoring of the shared library (the same code `edge eval` runs).

use crate::backbone::{Backbone, BackboneKind, BackboneOptions};
use crate::cli::{EvalArgs, Method};
use crate::heads::{MethodHead, TchHead};
use crate::run::{initial_weights, method_head, RunRecord, FEATURE_STRIDE};
use crate::tensors::tensor_to_maps;
use anyhow::{bail, Result};
use fss_core::choice::Choice;
use fss_core::method::{HeadRunner, MethodOptions, SupportState};
use fss_core::model::{FeatureEncoder, ScoringInput};
use fss_core::preprocess::{InputSize, Normalization};
use fss_core::prototype::SupportShot;
use fss_core::report::EvalReport;
use fss_core::sgone::SgOneKShot;
use fss_core::smcp::SmcpGuidance;
use fss_core::tensor::FeatureMap;
use std::path::Path;
use tch::{nn::VarStore, Device, Tensor};

/// The backbone in tch as a [`FeatureEncoder`] for the shared harness, with the method's head
/// (PANet: the shared cosine scoring; SMCP, SG-One, DPNet: their heads in tch, run through
/// [`TchHead`] by the method's shared inference, [`fss_core::method::Method`]).
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

    /// The model's method: its head's, or PANet without one.
    pub fn method(&self) -> Method {
        self.head.as_ref().map_or(Method::Panet, MethodHead::method)
    }

    pub fn normalization(&self) -> Normalization {
        let (mean, std) = self.backbone.normalization();
        Normalization { mean, std }
    }
}

impl FeatureEncoder for TchEncoder {
    fn encode_batch(
        &mut self,
        inputs: &[Vec<f32>],
        size: InputSize,
    ) -> fss_core::Result<Vec<FeatureMap>> {
        let (h, w) = (size.height as i64, size.width as i64);
        let flat: Vec<f32> = inputs.iter().flat_map(|v| v.iter().copied()).collect();
        let x = Tensor::from_slice(&flat)
            .view([inputs.len() as i64, 3, h, w])
            .to_device(self.backbone.device());
        let feats = tch::no_grad(|| self.backbone.forward_to(&x, self.stride, false))
            .map_err(|e| fss_core::EdgeError::input(format!("encoder: {e}")))?;
        tensor_to_maps(&feats).map_err(|e| fss_core::EdgeError::input(e.to_string()))
    }

    fn batch_size(&self) -> usize {
        self.batch
    }

    fn head_logits(
        &mut self,
        support: &SupportState,
        query: &FeatureMap,
        input: InputSize,
    ) -> fss_core::Result<FeatureMap> {
        let options = MethodOptions {
            smcp_guidance: self.guidance,
            sgone_kshot: self.sgone_kshot,
            ..MethodOptions::default()
        };
        let device = self.backbone.device();
        let mut runner = self.head.as_ref().map(|head| TchHead { head, device });
        self.method().logits(
            runner.as_mut().map(|r| r as &mut dyn HeadRunner),
            &options,
            support,
            query,
            input,
        )
    }

    fn prototypes(&mut self, ways: &[Vec<SupportShot>]) -> fss_core::Result<SupportState> {
        let device = self.backbone.device();
        let mut runner = self.head.as_ref().map(|head| TchHead { head, device });
        self.method()
            .prototypes(runner.as_mut().map(|r| r as &mut dyn HeadRunner), ways)
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
        fss_core::smcp::report_label(
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
