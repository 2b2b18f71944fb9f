//! The few-shot methods, declared once: each one's name, its head graph contract, what a support
//! shot keeps, how many head passes a frame costs, and its inference over a [`HeadRunner`] (the
//! head in tch on the host, the head graph in tract on the edge). The bundle manifest, the
//! runtime, the prototype cache, the live target store, the harnesses and the command lines all
//! find a method here; each method's own inference is its module ([`crate::prototype`] for
//! PANet, [`crate::smcp`], [`crate::sgone`], [`crate::dpnet`]).
//!
//! Adding a method: a variant with its name below, its inference module in this crate, its head
//! (training, export) in `host`.

use serde::{Deserialize, Serialize};

use crate::bundle::{Dim, TensorSpec};
use crate::dpnet::{dpnet_logits, dpnet_prototypes, SupportMemory};
use crate::error::{EdgeError, Result};
use crate::preprocess::InputSize;
use crate::prototype::{cosine_logits, panet_prototypes, Prototypes, SupportShot, PANET_SCALE};
use crate::sgone::{sgone_logits, sgone_prototypes, SgOneKShot};
use crate::smcp::{smcp_logits, SmcpGuidance};
use crate::tensor::FeatureMap;

/// A few-shot segmentation method (names as bundles, runs and reports write them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Panet,
    Smcp,
    SgOne,
    DpNet,
}

crate::choices!(Method {
    Panet => "panet", "PANet: cosine x20 against masked-average prototypes, no head graph";
    Smcp => "smcp", "SMCP: a head pass with the support prototype, then one with the fused prototype";
    SgOne => "sgone", "SG-One: guidance vectors pooled from the supports, one guided head pass";
    DpNet => "dpnet", "DPNet: the support prototype and the query's pseudo-prototype, one head pass with the support memory";
});

impl std::str::FromStr for Method {
    type Err = String;
    /// A method by name, any case; `sg-one` is SG-One too.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        let name = if lower == "sg-one" { "sgone" } else { &lower };
        <Method as crate::choice::Choice>::from_name(name).ok_or_else(|| {
            format!(
                "unknown method '{s}' (known: {})",
                <Method as crate::choice::Choice>::names()
            )
        })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::choice::Choice::name(*self))
    }
}

/// The inputs a head graph takes, in the order the manifest's `graphs.head.inputs` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadInputs {
    /// `features` `[1, C, h, w]`, `prototype` `[1, D]` (SMCP, SG-One).
    Prototype,
    /// ... and `support_features` `[1, C, n]`, `support_mask` `[1, n]` (DPNet).
    PrototypeAndMemory,
}

impl HeadInputs {
    /// The inputs' names, as the manifest lists them.
    pub fn names(self) -> &'static str {
        match self {
            HeadInputs::Prototype => "features, prototype",
            HeadInputs::PrototypeAndMemory => "features, prototype, support_features, support_mask",
        }
    }

    pub fn count(self) -> usize {
        match self {
            HeadInputs::Prototype => 2,
            HeadInputs::PrototypeAndMemory => 4,
        }
    }
}

/// A method's head graph contract (design.md "Per-method head contracts"): its inputs, and how
/// many outputs it has (1: logits `[1, 2, h, w]`; 2: also the guidance features).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadContract {
    pub inputs: HeadInputs,
    pub outputs: usize,
}

/// The port names of the head graphs.
pub mod port {
    /// Query features `[1, C, h, w]`.
    pub const FEATURES: &str = "features";
    /// The prototype `[1, D]` (C, or SG-One's guidance width).
    pub const PROTOTYPE: &str = "prototype";
    /// DPNet's support memory: features `[1, C, n]` and mask cover `[1, n]`.
    pub const SUPPORT_FEATURES: &str = "support_features";
    pub const SUPPORT_MASK: &str = "support_mask";
    /// Logits `[1, 2, h, w]` (background, foreground) at feature resolution.
    pub const LOGITS: &str = "logits";
    /// SG-One's guidance features `[1, D, h, w]`.
    pub const GUIDANCE: &str = "guidance";
}

impl HeadContract {
    /// The ports with their shapes, as the manifest's `graphs.head` lists them, for
    /// `channels`-channel features and `prototype_dim`-value prototypes: `h`, `w` (and DPNet's
    /// memory length `n`) symbolic, so one graph serves every input size.
    pub fn ports(
        self,
        channels: usize,
        prototype_dim: usize,
    ) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let map = |name: &str, c: usize| TensorSpec {
            name: name.into(),
            shape: vec![
                Dim::Fixed(1),
                Dim::Fixed(c),
                Dim::Symbol("h".into()),
                Dim::Symbol("w".into()),
            ],
        };
        let n = || Dim::Symbol("n".into());
        let mut inputs = vec![
            map(port::FEATURES, channels),
            TensorSpec {
                name: port::PROTOTYPE.into(),
                shape: vec![Dim::Fixed(1), Dim::Fixed(prototype_dim)],
            },
        ];
        if self.inputs == HeadInputs::PrototypeAndMemory {
            inputs.push(TensorSpec {
                name: port::SUPPORT_FEATURES.into(),
                shape: vec![Dim::Fixed(1), Dim::Fixed(channels), n()],
            });
            inputs.push(TensorSpec {
                name: port::SUPPORT_MASK.into(),
                shape: vec![Dim::Fixed(1), n()],
            });
        }
        let mut outputs = vec![map(port::LOGITS, 2)];
        if self.outputs == 2 {
            outputs.push(map(port::GUIDANCE, prototype_dim));
        }
        (inputs, outputs)
    }
}

/// A method's head, run by whoever holds it: the head in tch on the host, the head graph in
/// tract on the edge. One pass scores query features against one prototype.
pub trait HeadRunner {
    /// Query features `[C, h, w]`, a prototype `[D]` and, for a head that takes one
    /// ([`HeadInputs::PrototypeAndMemory`]), the target's support memory -> logits `[2, h, w]`
    /// (background, foreground).
    fn pass(
        &mut self,
        query: &FeatureMap,
        prototype: &[f32],
        memory: Option<&SupportMemory>,
    ) -> Result<FeatureMap>;

    /// The guidance features `[D, h, w]` of encoder features `[C, h, w]` (SG-One's second
    /// output); heads without one say so.
    fn guidance(&mut self, features: &FeatureMap) -> Result<FeatureMap> {
        let _ = features;
        Err(EdgeError::input("this head has no guidance output"))
    }
}

/// The inference settings of the methods that have them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MethodOptions {
    /// PANet's cosine scale (the manifest's `prototype.scale`; 20 in the paper).
    pub panet_scale: f32,
    /// Which prototype guides SMCP's final pass.
    pub smcp_guidance: SmcpGuidance,
    /// How SG-One combines K shots.
    pub sgone_kshot: SgOneKShot,
}

impl Default for MethodOptions {
    fn default() -> Self {
        MethodOptions {
            panet_scale: PANET_SCALE,
            smcp_guidance: SmcpGuidance::default(),
            sgone_kshot: SgOneKShot::default(),
        }
    }
}

impl Method {
    /// The head graph contract, or `None` for a method scored without a head (PANet).
    pub fn head(self) -> Option<HeadContract> {
        let inputs = HeadInputs::Prototype;
        match self {
            Method::Panet => None,
            Method::Smcp => Some(HeadContract { inputs, outputs: 1 }),
            Method::SgOne => Some(HeadContract { inputs, outputs: 2 }),
            Method::DpNet => Some(HeadContract {
                inputs: HeadInputs::PrototypeAndMemory,
                outputs: 1,
            }),
        }
    }

    /// The head graph's ports with their shapes ([`HeadContract::ports`]), or `None` for a
    /// method without a head.
    pub fn head_ports(
        self,
        channels: usize,
        prototype_dim: usize,
    ) -> Option<(Vec<TensorSpec>, Vec<TensorSpec>)> {
        self.head().map(|h| h.ports(channels, prototype_dim))
    }

    /// Head passes per target for one frame, at most (SMCP: two, the second skipped when the
    /// first finds nothing; SG-One `max`: one per shot).
    pub fn passes_per_target(self) -> usize {
        match self {
            Method::Panet => 0,
            Method::Smcp => 2,
            Method::SgOne | Method::DpNet => 1,
        }
    }

    /// Whether a support shot also keeps its support memory (DPNet).
    pub fn keeps_support_memory(self) -> bool {
        self == Method::DpNet
    }

    /// Whether a support's prototype is pooled from the head's guidance features instead of the
    /// encoder features (SG-One).
    pub fn pools_guidance(self) -> bool {
        self == Method::SgOne
    }

    /// The head, or an error naming the method that needs one.
    fn need(self, head: Option<&mut dyn HeadRunner>) -> Result<&mut dyn HeadRunner> {
        head.ok_or_else(|| EdgeError::input(format!("method {self} needs its head")))
    }

    /// What the supports leave for scoring: N targets of K shots holding encoder features ->
    /// the method's prototypes (PANet and SMCP: masked average pools; SG-One: pools of the
    /// head's guidance features; DPNet: with the support memories).
    pub fn prototypes(
        self,
        head: Option<&mut dyn HeadRunner>,
        ways: &[Vec<SupportShot>],
    ) -> Result<Prototypes> {
        match self {
            Method::Panet | Method::Smcp => panet_prototypes(ways),
            Method::SgOne => sgone_prototypes(self.need(head)?, ways),
            Method::DpNet => dpnet_prototypes(ways),
        }
    }

    /// The features a support's prototype is pooled from: SG-One's guidance features, every
    /// other method's encoder features themselves.
    pub fn support_features(
        self,
        head: Option<&mut dyn HeadRunner>,
        features: FeatureMap,
    ) -> Result<FeatureMap> {
        if self.pools_guidance() {
            self.need(head)?.guidance(&features)
        } else {
            Ok(features)
        }
    }

    /// The method's logits `[N + 1, h, w]` at feature resolution (background, then one channel
    /// per target of `prototypes`) for `query` encoded at `input`.
    pub fn logits(
        self,
        head: Option<&mut dyn HeadRunner>,
        options: &MethodOptions,
        prototypes: &Prototypes,
        query: &FeatureMap,
        input: InputSize,
    ) -> Result<FeatureMap> {
        match self {
            Method::Panet => cosine_logits(query, &prototypes.ordered(), options.panet_scale),
            Method::Smcp => smcp_logits(
                self.need(head)?,
                prototypes,
                query,
                input,
                options.smcp_guidance,
            ),
            Method::SgOne => sgone_logits(self.need(head)?, prototypes, query, options.sgone_kshot),
            Method::DpNet => dpnet_logits(self.need(head)?, prototypes, query),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::choice::Choice;

    #[test]
    fn names_parse_in_any_case_and_serde_agrees() {
        for &(m, name, _) in Method::VARIANTS {
            assert_eq!(name.parse::<Method>().unwrap(), m);
            assert_eq!(name.to_uppercase().parse::<Method>().unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{name}\""));
            assert_eq!(m.to_string(), name);
        }
        assert_eq!("SG-One".parse::<Method>().unwrap(), Method::SgOne);
        let e = "pfenet".parse::<Method>().unwrap_err();
        assert!(e.contains("panet, smcp, sgone, dpnet"), "{e}");
    }

    #[test]
    fn head_contracts_match_the_methods() {
        assert_eq!(Method::Panet.head(), None);
        for m in [Method::Smcp, Method::SgOne, Method::DpNet] {
            let h = m.head().unwrap();
            assert_eq!(
                h.inputs == HeadInputs::PrototypeAndMemory,
                m.keeps_support_memory()
            );
            assert_eq!(h.outputs == 2, m.pools_guidance());
        }
    }

    #[test]
    fn a_head_method_without_its_head_is_an_error() {
        let p = Prototypes {
            background: vec![0.0],
            foreground: vec![vec![1.0]],
            ..Prototypes::default()
        };
        let q = FeatureMap::zeros(1, 2, 2);
        let size = InputSize {
            height: 2,
            width: 2,
        };
        let o = MethodOptions::default();
        for m in [Method::Smcp, Method::SgOne, Method::DpNet] {
            let e = m.logits(None, &o, &p, &q, size).unwrap_err().to_string();
            assert!(e.contains(m.name()) && e.contains("head"), "{e}");
        }
        assert_eq!(
            Method::Panet
                .logits(None, &o, &p, &q, size)
                .unwrap()
                .channels,
            2
        );
    }
}
