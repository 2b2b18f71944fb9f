//! The trained head of a method (SMCP, SG-One, DPNet; PANet has none): one type for training,
//! `host eval` and export to hold whichever the run has, and one adapter ([`TchHead`]) that runs
//! it as the shared inference's [`HeadRunner`] (the edge runs the head graph through the same
//! trait).

use crate::dpnet::DpNetHead;
use crate::panet::{EpisodeTensors, LossParts};
use crate::sgone::SgOneHead;
use crate::smcp::{SemanticLabels, SmcpHead};
use crate::tensors::{feature_tensor, first_map};
use fss_core::dpnet::SupportMemory;
use fss_core::method::{HeadRunner, Method};
use fss_core::{EdgeError, FeatureMap};
use tch::{Device, Tensor};

#[derive(Debug)]
pub enum MethodHead {
    Smcp(SmcpHead),
    SgOne(SgOneHead),
    DpNet(DpNetHead),
}

impl MethodHead {
    /// Every parameter with its checkpoint name (training-only parts included).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        match self {
            MethodHead::Smcp(h) => h.named_parameters(),
            MethodHead::SgOne(h) => h.named_parameters(),
            MethodHead::DpNet(h) => h.named_parameters(),
        }
    }

    /// Loads the head's parameters from a checkpoint's `model.safetensors`.
    pub fn load_weights(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let what = match self {
            MethodHead::Smcp(_) => "SMCP head",
            MethodHead::SgOne(_) => "SG-One head",
            MethodHead::DpNet(_) => "DPNet head",
        };
        crate::backbone::load_named(&self.named_parameters(), path, what)
    }

    /// Parameters of the exported (inference) head.
    pub fn inference_parameters(&self) -> i64 {
        match self {
            MethodHead::Smcp(h) => h.inference_parameters(),
            MethodHead::SgOne(h) => h.inference_parameters(),
            MethodHead::DpNet(h) => h.inference_parameters(),
        }
    }

    /// One training episode's losses, given the encoder features of the supports `[K, C, h, w]`
    /// and the query `[1, C, h, w]`: the total to back-propagate and the loss curve's parts.
    /// `semantic` gives the episode's multi-class labels (`None` for an episode without class
    /// labels, a video episode); only the methods that train on them (SMCP) call it.
    pub fn episode_losses(
        &self,
        support_features: &Tensor,
        query_features: &Tensor,
        ep: &EpisodeTensors,
        semantic: impl FnOnce() -> anyhow::Result<Option<SemanticLabels>>,
    ) -> anyhow::Result<(Tensor, LossParts)> {
        let (s, q) = (support_features, query_features);
        Ok(match self {
            MethodHead::Smcp(h) => {
                crate::smcp::losses(h, s, q, ep, semantic()?.as_ref()).into_parts()
            }
            MethodHead::SgOne(h) => crate::sgone::losses(h, s, q, ep).into_parts(),
            MethodHead::DpNet(h) => crate::dpnet::losses(h, s, q, ep).into_parts(),
        })
    }

    /// The head graph, written beside each head's tch forward.
    pub fn onnx_model(&self) -> anyhow::Result<tract_onnx::pb::ModelProto> {
        match self {
            MethodHead::Smcp(h) => h.onnx_model(),
            MethodHead::SgOne(h) => h.onnx_model(),
            MethodHead::DpNet(h) => h.onnx_model(),
        }
    }

    /// The feature channels and the prototype length the head takes (SG-One's prototype is
    /// its guidance vector, of the head width).
    pub fn port_sizes(&self) -> (usize, usize) {
        match self {
            MethodHead::Smcp(h) => {
                let c = h.shape.feature_channels as usize;
                (c, c)
            }
            MethodHead::SgOne(h) => (h.shape.feature_channels as usize, h.shape.width as usize),
            MethodHead::DpNet(h) => {
                let c = h.shape.feature_channels as usize;
                (c, c)
            }
        }
    }

    /// The method the head belongs to.
    pub fn method(&self) -> Method {
        match self {
            MethodHead::Smcp(_) => Method::Smcp,
            MethodHead::SgOne(_) => Method::SgOne,
            MethodHead::DpNet(_) => Method::DpNet,
        }
    }
}

/// A head in tch (eval mode, no gradients) as the shared inference's [`HeadRunner`].
pub struct TchHead<'a> {
    pub head: &'a MethodHead,
    pub device: Device,
}

impl HeadRunner for TchHead<'_> {
    fn pass(
        &mut self,
        query: &FeatureMap,
        prototype: &[f32],
        memory: Option<&SupportMemory>,
    ) -> fss_core::Result<FeatureMap> {
        let d = self.device;
        let f = feature_tensor(query, d);
        let p = Tensor::from_slice(prototype)
            .view([1, prototype.len() as i64])
            .to_device(d);
        let (logits, what) = match self.head {
            MethodHead::Smcp(h) => (tch::no_grad(|| h.pass(&f, &p, true)), "SMCP head"),
            MethodHead::SgOne(h) => (tch::no_grad(|| h.pass(&f, &p)), "SG-One head"),
            MethodHead::DpNet(h) => {
                let m = memory.ok_or_else(|| {
                    EdgeError::input("the DPNet head needs the target's support memory")
                })?;
                let n = m.locations as i64;
                let mf = Tensor::from_slice(&m.features)
                    .view([1, m.channels as i64, n])
                    .to_device(d);
                let mm = Tensor::from_slice(&m.mask).view([1, n]).to_device(d);
                let logits = tch::no_grad(|| h.pass(&f, &p, &mf, &mm, false).logits);
                (logits, "DPNet head")
            }
        };
        first_map(&logits, what)
    }

    fn guidance(&mut self, features: &FeatureMap) -> fss_core::Result<FeatureMap> {
        match self.head {
            MethodHead::SgOne(h) => {
                let f = feature_tensor(features, self.device);
                first_map(&tch::no_grad(|| h.guidance(&f)), "SG-One guidance")
            }
            other => Err(EdgeError::input(format!(
                "the {} head has no guidance output",
                other.method()
            ))),
        }
    }
}
