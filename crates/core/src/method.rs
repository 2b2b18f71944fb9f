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
use crate::dpnet::{dpnet_logits, dpnet_prototypes, DualSupport, SupportMemory};
use crate::error::{EdgeError, Result};
use crate::preprocess::InputSize;
use crate::prototype::{cosine_logits, panet_prototypes, Prototypes, SupportShot, PANET_SCALE};
use crate::sgone::{sgone_logits, sgone_prototypes, GuidanceVectors, SgOneKShot};
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

/// What the supports leave for scoring, one type per method: PANet's and SMCP's prototypes,
/// SG-One's guidance vectors, DPNet's prototypes with the support memories. Every state has the
/// shared vectors ([`SupportState::prototypes`]: one background and one foreground vector per
/// target); caches store it in one form ([`StoredSupport`]).
#[derive(Debug, Clone, PartialEq)]
pub enum SupportState {
    Panet(Prototypes),
    Smcp(Prototypes),
    SgOne(GuidanceVectors),
    DpNet(DualSupport),
}

impl SupportState {
    /// The method the state belongs to.
    pub fn method(&self) -> Method {
        match self {
            SupportState::Panet(_) => Method::Panet,
            SupportState::Smcp(_) => Method::Smcp,
            SupportState::SgOne(_) => Method::SgOne,
            SupportState::DpNet(_) => Method::DpNet,
        }
    }

    /// The vectors every method's state has: one background and one foreground vector per
    /// target (SG-One: its guidance vectors; DPNet: its prototypes `P`).
    pub fn prototypes(&self) -> &Prototypes {
        match self {
            SupportState::Panet(p) | SupportState::Smcp(p) => p,
            SupportState::SgOne(g) => &g.vectors,
            SupportState::DpNet(d) => &d.prototypes,
        }
    }

    /// How many targets the state scores.
    pub fn targets(&self) -> usize {
        self.prototypes().foreground.len()
    }

    /// Length of the vectors.
    pub fn dim(&self) -> usize {
        self.prototypes().dim()
    }

    /// The state in its stored form.
    pub fn stored(&self) -> StoredSupport {
        let p = self.prototypes();
        let mut s = StoredSupport {
            background: p.background.clone(),
            foreground: p.foreground.clone(),
            ..StoredSupport::default()
        };
        match self {
            SupportState::SgOne(g) => s.per_shot = g.per_shot.clone(),
            SupportState::DpNet(d) => s.memories = d.memories.clone(),
            SupportState::Panet(_) | SupportState::Smcp(_) => {}
        }
        s
    }

    /// `method`'s state from its stored form. Parts another method keeps, and DPNet without a
    /// memory per target, are errors.
    pub fn from_stored(method: Method, s: StoredSupport) -> Result<SupportState> {
        let targets = s.foreground.len();
        let foreign = |what: &str| {
            Err(EdgeError::input(format!(
                "stored {method} prototypes carry {what}, which {method} does not keep"
            )))
        };
        if !s.per_shot.is_empty() && method != Method::SgOne {
            return foreign("per-shot vectors");
        }
        if !s.memories.is_empty() && method != Method::DpNet {
            return foreign("support memories");
        }
        let prototypes = Prototypes {
            background: s.background,
            foreground: s.foreground,
        };
        Ok(match method {
            Method::Panet => SupportState::Panet(prototypes),
            Method::Smcp => SupportState::Smcp(prototypes),
            Method::SgOne => {
                if !s.per_shot.is_empty() && s.per_shot.len() != targets {
                    return Err(EdgeError::input(format!(
                        "stored SG-One vectors: {targets} targets, per-shot vectors of {}",
                        s.per_shot.len()
                    )));
                }
                SupportState::SgOne(GuidanceVectors {
                    vectors: prototypes,
                    per_shot: s.per_shot,
                })
            }
            Method::DpNet => {
                if s.memories.len() != targets {
                    return Err(EdgeError::input(format!(
                        "stored DPNet prototypes: {targets} targets, {} support memories",
                        s.memories.len()
                    )));
                }
                SupportState::DpNet(DualSupport {
                    prototypes,
                    memories: s.memories,
                })
            }
        })
    }
}

/// A support state as caches store it (JSON): the shared vectors, and the parts of the methods
/// that have them (SG-One's per-shot vectors, DPNet's support memories), each absent when empty
/// (the form prototype caches have always had).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StoredSupport {
    pub background: Vec<f32>,
    pub foreground: Vec<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_shot: Vec<Vec<Vec<f32>>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memories: Vec<SupportMemory>,
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
    ) -> Result<SupportState> {
        Ok(match self {
            Method::Panet => SupportState::Panet(panet_prototypes(ways)?),
            Method::Smcp => SupportState::Smcp(panet_prototypes(ways)?),
            Method::SgOne => SupportState::SgOne(sgone_prototypes(self.need(head)?, ways)?),
            Method::DpNet => SupportState::DpNet(dpnet_prototypes(ways)?),
        })
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
        support: &SupportState,
        query: &FeatureMap,
        input: InputSize,
    ) -> Result<FeatureMap> {
        match (self, support) {
            (Method::Panet, SupportState::Panet(p)) => {
                cosine_logits(query, &p.ordered(), options.panet_scale)
            }
            (Method::Smcp, SupportState::Smcp(p)) => {
                smcp_logits(self.need(head)?, p, query, input, options.smcp_guidance)
            }
            (Method::SgOne, SupportState::SgOne(g)) => {
                sgone_logits(self.need(head)?, g, query, options.sgone_kshot)
            }
            (Method::DpNet, SupportState::DpNet(d)) => dpnet_logits(self.need(head)?, d, query),
            (_, other) => Err(EdgeError::input(format!(
                "{} support state given to a {self} model: compute the supports with its method",
                other.method()
            ))),
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
        };
        let q = FeatureMap::zeros(1, 2, 2);
        let size = InputSize {
            height: 2,
            width: 2,
        };
        let o = MethodOptions::default();
        for m in [Method::Smcp, Method::SgOne, Method::DpNet] {
            let state = SupportState::from_stored(
                m,
                StoredSupport {
                    background: p.background.clone(),
                    foreground: p.foreground.clone(),
                    memories: if m == Method::DpNet {
                        vec![SupportMemory {
                            channels: 1,
                            locations: 1,
                            features: vec![1.0],
                            mask: vec![1.0],
                        }]
                    } else {
                        Vec::new()
                    },
                    ..StoredSupport::default()
                },
            )
            .unwrap();
            let e = m
                .logits(None, &o, &state, &q, size)
                .unwrap_err()
                .to_string();
            assert!(e.contains(m.name()) && e.contains("head"), "{e}");
        }
        let panet = SupportState::Panet(p.clone());
        assert_eq!(
            Method::Panet
                .logits(None, &o, &panet, &q, size)
                .unwrap()
                .channels,
            2
        );
        // Another method's state is refused, not misread.
        let e = Method::Smcp
            .logits(None, &o, &panet, &q, size)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("panet support state given to a smcp model"),
            "{e}"
        );
    }

    #[test]
    fn stored_states_round_trip_and_foreign_parts_are_refused() {
        let p = Prototypes {
            background: vec![0.5, 1.0],
            foreground: vec![vec![1.0, 2.0]],
        };
        let memory = SupportMemory {
            channels: 2,
            locations: 1,
            features: vec![1.0, 2.0],
            mask: vec![1.0],
        };
        let states = [
            SupportState::Panet(p.clone()),
            SupportState::Smcp(p.clone()),
            SupportState::SgOne(GuidanceVectors {
                vectors: p.clone(),
                per_shot: vec![vec![vec![1.0, 2.0]]],
            }),
            SupportState::DpNet(DualSupport {
                prototypes: p.clone(),
                memories: vec![memory],
            }),
        ];
        for s in &states {
            let json = serde_json::to_string(&s.stored()).unwrap();
            let back: StoredSupport = serde_json::from_str(&json).unwrap();
            assert_eq!(&SupportState::from_stored(s.method(), back).unwrap(), s);
        }
        let e = SupportState::from_stored(Method::Panet, states[3].stored())
            .unwrap_err()
            .to_string();
        assert!(e.contains("support memories"), "{e}");
        let e = SupportState::from_stored(Method::DpNet, states[0].stored())
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 targets, 0 support memories"), "{e}");
    }
}
