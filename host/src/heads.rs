//! The trained head of a method (SMCP, SG-One, DPNet; PANet has none): one type for training,
//! `host eval` and export to hold whichever the run has.

use crate::dpnet::DpNetHead;
use crate::sgone::SgOneHead;
use crate::smcp::SmcpHead;
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

    /// The method's name as bundles and reports write it.
    pub fn method_name(&self) -> &'static str {
        match self {
            MethodHead::Smcp(_) => "smcp",
            MethodHead::SgOne(_) => "sgone",
            MethodHead::DpNet(_) => "dpnet",
        }
    }
}
