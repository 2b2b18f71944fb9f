//! The trained head of a method (SMCP, SG-One, DPNet; PANet has none): one type for training,
//! `host eval` and export to hold whichever the run has.

use crate::dpnet::DpNetHead;
use crate::panet::{EpisodeTensors, LossParts};
use crate::sgone::SgOneHead;
use crate::smcp::{SemanticLabels, SmcpHead};
use tch::Tensor;

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
    /// `semantic` gives the query's multi-class labels; only the methods that train on them
    /// (SMCP) call it.
    pub fn episode_losses(
        &self,
        support_features: &Tensor,
        query_features: &Tensor,
        ep: &EpisodeTensors,
        semantic: impl FnOnce() -> anyhow::Result<SemanticLabels>,
    ) -> anyhow::Result<(Tensor, LossParts)> {
        let (s, q) = (support_features, query_features);
        Ok(match self {
            MethodHead::Smcp(h) => crate::smcp::losses(h, s, q, ep, &semantic()?).into_parts(),
            MethodHead::SgOne(h) => crate::sgone::losses(h, s, q, ep).into_parts(),
            MethodHead::DpNet(h) => crate::dpnet::losses(h, s, q, ep).into_parts(),
        })
    }

    /// The method's name as bundles and reports write it.
    pub fn method_name(&self) -> &'static str {
        match self {
            MethodHead::Smcp(_) => "smcp",
            MethodHead::SgOne(_) => "sgone",
            MethodHead::DpNet(_) => "dpnet",
        }
    }
}
