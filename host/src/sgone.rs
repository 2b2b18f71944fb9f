//! SG-One (similarity guidance; methods.md §4) in tch: the head on top of any backbone of the
//! project, its training loss, and the guided pass that the shared inference
//! ([`fss_core::sgone`]) runs.
//!
//! The paper's network is VGG-16 blocks 1-3 as a stem (`out3`), then conv4 and conv5 blocks
//! (`out4`, `out5`) that feed both branches. On the project's backbones the encoder output
//! (stride 16) plays `out3`, and two conv3x3 + ReLU layers of width `W` play the conv4 and
//! conv5 blocks:
//! * guidance branch: `g1 = ReLU(conv3x3 C -> W (F))`, `g2 = ReLU(conv3x3 W -> W (g1))`,
//!   `G = cls(g2)`, a conv3x3 W -> W **without ReLU** (so that cosines span [-1, 1]);
//! * segmentation branch: `s3 = ReLU(conv3x3 C -> W (F))`,
//!   `s4 = ReLU(conv3x3 2W -> W (concat[s3, g1]))`, `s5 = conv3x3 2W -> W (concat[s4, g2])`,
//!   no ReLU;
//! * guidance: `v = MAP(G_support, M)` (the cached vector), `S = cos(G_query, v)`,
//!   `Z = s5 * S`;
//! * head: `ReLU(conv3x3 W -> W (Z))`, then `conv1x1 W -> 2`.
//!
//! The paper uses W = 512 for the guidance branch and 128 for the segmentation branch with
//! VGG-16 at stride 8; here one width serves both (`--head-width`, default 96). Initialisation
//! is Xavier-uniform with zero biases, as in the official code.
//!
//! Variants ([`SgOneVariant`]): `paper` (the default) is the paper's model; `code` reproduces
//! three quirks of the official code (methods.md §10.2): the exit 1x1 conv has padding 1 (the
//! logits are `(h + 2) x (w + 2)` before upsampling), the support vector divides by the mask
//! sum of the whole batch (here: the K shots of an episode), and label value 255 counts as
//! foreground in training (the COCO label maps the project trains on carry no 255, so that
//! one changes nothing here). The `code` variant trains and evaluates on the host; it cannot
//! be exported, since its logits do not sit on the feature grid the edge head contract needs.
//!
//! Cosine: `dot / (|G| |v| + 1e-8)`, written the same way in the exported graph.

use crate::layers::{
    emit_conv, emit_conv_relu, Activation, Conv2d, Conv2dConfig, ConvInit, Padding, Scope,
};
use crate::onnx::{self, binary, concat, reshape, GraphBuilder};
use crate::panet::{masked_average_pool, IGNORE};
use anyhow::Result;
use fss_core::method::{port, Method};
use tch::{nn, Kind, Reduction, Tensor};
use tract_onnx::pb::ModelProto;

/// The parameter scope of the head inside a checkpoint.
pub const SCOPE: &str = "sgone_head";
/// Cosine epsilon of the similarity map.
pub const COSINE_EPS: f64 = 1e-8;

/// Which SG-One the model follows (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SgOneVariant {
    /// The paper: plain 1x1 exit conv, per-shot masked average pooling, 255 ignored.
    #[default]
    Paper,
    /// The official code's quirks: exit conv padding 1, batch-wide mask sum, 255 as foreground.
    Code,
}

fss_core::choices!(SgOneVariant {
    Paper => "paper", "The paper: plain 1x1 exit conv, per-shot masked average pooling, 255 ignored";
    Code => "code", "The official code's quirks: exit conv padding 1, batch-wide mask sum, 255 as foreground";
});

/// Shape of an SG-One head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SgOneShape {
    /// Encoder feature channels C.
    pub feature_channels: i64,
    /// Width W of both branches (and of the guidance vector).
    pub width: i64,
    pub variant: SgOneVariant,
}

fn conv(scope: &Scope, name: &str, cin: i64, cout: i64, k: i64) -> Conv2d {
    let cfg = Conv2dConfig::new(cin, cout, k)
        .bias(true)
        .init(ConvInit::XavierUniform);
    Conv2d::new(&scope.sub(name), cfg)
}

/// The SG-One head (module doc).
#[derive(Debug)]
pub struct SgOneHead {
    pub shape: SgOneShape,
    /// conv4 and conv5 stand-ins (ReLU after each).
    pub guide: [Conv2d; 2],
    /// The guidance conv, no ReLU.
    pub cls: Conv2d,
    /// s3, s4, s5.
    pub seg: [Conv2d; 3],
    /// conv3x3 + ReLU on the fused features.
    pub fuse: Conv2d,
    /// conv1x1 -> 2 (padding 1 in the `code` variant).
    pub exit: Conv2d,
}

/// `cos(x, v)` over channels: `x` `[B, W, h, w]`, `v` `[B, W]` -> `[B, 1, h, w]`.
pub fn cosine_map(x: &Tensor, v: &Tensor) -> Tensor {
    let s = v.size();
    let v4 = v.view([s[0], s[1], 1, 1]);
    let dot = (x * &v4).sum_dim_intlist([1i64].as_slice(), true, Kind::Float);
    let nx = (x * x)
        .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
        .sqrt();
    let nv = (&v4 * &v4)
        .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
        .sqrt();
    dot / (nx * nv + COSINE_EPS)
}

impl SgOneHead {
    pub fn new(path: &nn::Path, shape: SgOneShape) -> SgOneHead {
        let root = Scope::root(path).sub(SCOPE);
        let (c, w) = (shape.feature_channels, shape.width);
        let exit_cfg = Conv2dConfig::new(w, 2, 1)
            .bias(true)
            .init(ConvInit::XavierUniform)
            .padding(match shape.variant {
                SgOneVariant::Paper => Padding::none(),
                SgOneVariant::Code => Padding::symmetric(1, 1),
            });
        SgOneHead {
            shape,
            guide: [
                conv(&root, "guide4", c, w, 3),
                conv(&root, "guide5", w, w, 3),
            ],
            cls: conv(&root, "cls", w, w, 3),
            seg: [
                conv(&root, "seg3", c, w, 3),
                conv(&root, "seg4", 2 * w, w, 3),
                conv(&root, "seg5", 2 * w, w, 3),
            ],
            fuse: conv(&root, "fuse", w, w, 3),
            exit: Conv2d::new(&root.sub("exit"), exit_cfg),
        }
    }

    fn trunk(&self, features: &Tensor) -> (Tensor, Tensor) {
        let g1 = self.guide[0].forward(features, false).relu();
        let g2 = self.guide[1].forward(&g1, false).relu();
        (g1, g2)
    }

    /// Guidance features `G` `[B, W, h, w]` of encoder features `[B, C, h, w]`.
    pub fn guidance(&self, features: &Tensor) -> Tensor {
        let (_, g2) = self.trunk(features);
        self.cls.forward(&g2, false)
    }

    /// One pass: features `[B, C, h, w]`, guidance vectors `[B, W]` -> logits `[B, 2, h, w]`
    /// (`[B, 2, h + 2, w + 2]` in the `code` variant). Also returns the guidance features.
    pub fn pass_with_guidance(&self, features: &Tensor, vector: &Tensor) -> (Tensor, Tensor) {
        let (g1, g2) = self.trunk(features);
        let g = self.cls.forward(&g2, false);
        let s3 = self.seg[0].forward(features, false).relu();
        let s4 = self.seg[1]
            .forward(&Tensor::cat(&[&s3, &g1], 1), false)
            .relu();
        let s5 = self.seg[2].forward(&Tensor::cat(&[&s4, &g2], 1), false);
        let z = s5 * cosine_map(&g, vector);
        let h = self.fuse.forward(&z, false).relu();
        (self.exit.forward(&h, false), g)
    }

    pub fn pass(&self, features: &Tensor, vector: &Tensor) -> Tensor {
        self.pass_with_guidance(features, vector).0
    }

    pub fn convs(&self) -> Vec<&Conv2d> {
        let mut v: Vec<&Conv2d> = self.guide.iter().collect();
        v.push(&self.cls);
        v.extend(self.seg.iter());
        v.push(&self.fuse);
        v.push(&self.exit);
        v
    }

    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for c in self.convs() {
            c.named_parameters(&mut out);
        }
        out
    }

    pub fn inference_parameters(&self) -> i64 {
        self.convs().into_iter().map(Conv2d::parameter_count).sum()
    }

    /// Multiply-accumulates of one pass on an `h` x `w` feature map (convolutions).
    pub fn macs_per_pass(&self, h: i64, w: i64) -> i64 {
        let pad = match self.shape.variant {
            SgOneVariant::Paper => 0,
            SgOneVariant::Code => 2,
        };
        self.convs()
            .iter()
            .map(|c| {
                let cells = if std::ptr::eq(*c, &self.exit) {
                    (h + pad) * (w + pad)
                } else {
                    h * w
                };
                c.weight.numel() as i64 * cells
            })
            .sum()
    }

    /// The support vector `[1, W]` of K shots: guidance features `[K, W, h, w]` pooled under
    /// the masks `[K, H, W]` at image resolution. `paper`: the mean of the shots' vectors
    /// (each pool divides by its own mask sum + 1e-5); `code`: one pool over all shots divided
    /// by the batch's whole mask sum (no ε).
    pub fn support_vector(&self, guidance: &Tensor, masks: &Tensor) -> Tensor {
        match self.shape.variant {
            SgOneVariant::Paper => {
                masked_average_pool(guidance, masks).mean_dim(0, true, Kind::Float)
            }
            SgOneVariant::Code => {
                let (h, w) = (masks.size()[1], masks.size()[2]);
                let up = guidance.upsample_bilinear2d([h, w], false, None, None);
                let m = masks.unsqueeze(1);
                let num = (up * &m).sum_dim_intlist([0i64, 2, 3].as_slice(), false, Kind::Float);
                (num / m.sum(Kind::Float)).unsqueeze(0)
            }
        }
    }
}

/// Loss of one SG-One step.
pub struct SgOneLosses {
    pub total: Tensor,
    pub query: f64,
}

impl SgOneLosses {
    /// The total to back-propagate and the parts the loss curve records.
    pub fn into_parts(self) -> (Tensor, crate::panet::LossParts) {
        let parts = crate::panet::LossParts {
            loss: self.query,
            query: self.query,
            ..Default::default()
        };
        (self.total, parts)
    }
}

/// Pixel-wise 2-class cross-entropy of the upsampled query logits (methods.md §4.2) for one
/// 1-way K-shot episode, given encoder features of the supports `[K, C, h, w]` and of the
/// query `[1, C, h, w]`. `paper`: 255 ignored; `code`: 255 is foreground, no ignore label.
pub fn losses(
    head: &SgOneHead,
    support_features: &Tensor,
    query_features: &Tensor,
    ep: &crate::panet::EpisodeTensors,
) -> SgOneLosses {
    let (h, w) = (ep.query_label.size()[1], ep.query_label.size()[2]);
    let v = head.support_vector(&head.guidance(support_features), &ep.support_fg);
    let logits = head
        .pass(query_features, &v)
        .upsample_bilinear2d([h, w], false, None, None);
    let (label, ignore) = match head.shape.variant {
        SgOneVariant::Paper => (ep.query_label.shallow_clone(), IGNORE),
        SgOneVariant::Code => (ep.query_label.gt(0).to_kind(Kind::Int64), -100),
    };
    let total = logits.cross_entropy_loss::<Tensor>(&label, None, Reduction::Mean, ignore, 0.0);
    SgOneLosses {
        query: total.double_value(&[]),
        total,
    }
}

impl SgOneHead {
    /// The head graph: query features and a guidance vector -> 2-class logits and the guidance
    /// features, the ports of [`Method::SgOne`]'s contract.
    pub fn onnx_model(&self) -> Result<ModelProto> {
        let head = self;
        if head.shape.variant == SgOneVariant::Code {
            anyhow::bail!(
            "an SG-One model of the `code` variant cannot be exported: its padding-1 exit conv gives (h + 2) x (w + 2) logits, off the feature grid the edge head contract needs (train with --sgone-variant paper)"
        );
        }
        let w = head.shape.width;
        let (inputs, outputs) = Method::SgOne
            .head_ports(head.shape.feature_channels as usize, w as usize)
            .expect("a method with a head graph");
        let mut g = GraphBuilder::new("sgone_head");
        let f = g.input(port::FEATURES, &inputs[0].shape)?;
        let v = g.input(port::PROTOTYPE, &inputs[1].shape)?;
        let g1 = emit_conv_relu(&mut g, &head.guide[0], &f)?;
        let g2 = emit_conv_relu(&mut g, &head.guide[1], &g1)?;
        let guidance = emit_conv(&mut g, &head.cls, None, Activation::None, &g2)?;
        let s3 = emit_conv_relu(&mut g, &head.seg[0], &f)?;
        let c4 = concat(&mut g, &[&s3, &g1], "seg4.input");
        let s4 = emit_conv_relu(&mut g, &head.seg[1], &c4)?;
        let c5 = concat(&mut g, &[&s4, &g2], "seg5.input");
        let s5 = emit_conv(&mut g, &head.seg[2], None, Activation::None, &c5)?;
        let v4 = reshape(&mut g, &v, &[1, w, 1, 1], "vector_4d")?;
        let sim = onnx::cosine_map(&mut g, &guidance, &v4, COSINE_EPS as f32, "similarity")?;
        let z = binary(&mut g, "Mul", &s5, &sim, "guided");
        let h = emit_conv_relu(&mut g, &head.fuse, &z)?;
        let logits = emit_conv(&mut g, &head.exit, None, Activation::None, &h)?;
        g.output(&logits, port::LOGITS, &outputs[0].shape)?;
        g.output(&guidance, port::GUIDANCE, &outputs[1].shape)?;
        Ok(g.into_model(
            "SG-One head: query features + guidance vector -> 2-class logits, guidance features",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    fn head(variant: SgOneVariant) -> (VarStore, SgOneHead) {
        let vs = VarStore::new(Device::Cpu);
        let h = SgOneHead::new(
            &vs.root(),
            SgOneShape {
                feature_channels: 8,
                width: 16,
                variant,
            },
        );
        (vs, h)
    }

    #[test]
    fn shapes_loss_and_gradients() {
        tch::manual_seed(3);
        let (_vs, h) = head(SgOneVariant::Paper);
        let opts = (Kind::Float, Device::Cpu);
        let sf = Tensor::rand([2, 8, 5, 7], opts);
        let qf = Tensor::rand([1, 8, 5, 7], opts);
        assert_eq!(h.guidance(&qf).size(), [1, 16, 5, 7]);
        assert_eq!(
            h.pass(&qf, &Tensor::rand([1, 16], opts)).size(),
            [1, 2, 5, 7]
        );
        let fg = Tensor::rand([2, 40, 56], opts).gt(0.5).to_kind(Kind::Float);
        let ep = crate::panet::EpisodeTensors {
            supports: Tensor::zeros([2, 3, 40, 56], opts),
            support_bg: fg.ones_like().g_sub(&fg),
            support_fg: fg,
            query: Tensor::zeros([1, 3, 40, 56], opts),
            query_label: Tensor::rand([1, 40, 56], opts).gt(0.5).to_kind(Kind::Int64),
        };
        let l = losses(&h, &sf, &qf, &ep);
        assert!(l.query.is_finite() && l.query > 0.0);
        l.total.backward();
        for (name, t) in h.named_parameters() {
            assert!(
                t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name} got no gradient"
            );
        }
    }

    #[test]
    fn code_variant_grows_the_logits_and_pools_over_the_batch() {
        let (_vs, h) = head(SgOneVariant::Code);
        let opts = (Kind::Float, Device::Cpu);
        let qf = Tensor::rand([1, 8, 5, 7], opts);
        assert_eq!(
            h.pass(&qf, &Tensor::rand([1, 16], opts)).size(),
            [1, 2, 7, 9]
        );
        // Two shots, one with a mask three times larger: the batch-wide pool weights it 3:1,
        // the paper's pool 1:1.
        let g = Tensor::cat(
            &[
                Tensor::ones([1, 16, 4, 4], opts),
                Tensor::zeros([1, 16, 4, 4], opts),
            ],
            0,
        );
        let m = Tensor::zeros([2, 8, 8], opts);
        let _ = m.get(0).narrow(0, 0, 2).fill_(1.0);
        let _ = m.get(1).narrow(0, 0, 6).fill_(1.0);
        let code = h.support_vector(&g, &m).double_value(&[0, 0]);
        assert!((code - 0.25).abs() < 1e-6, "{code}");
        let (_vs2, p) = head(SgOneVariant::Paper);
        let paper = p.support_vector(&g, &m).double_value(&[0, 0]);
        assert!((paper - 0.5).abs() < 1e-5, "{paper}");
    }

    #[test]
    fn cosine_map_matches_the_definition() {
        let x = Tensor::from_slice(&[3.0f32, 0.0, 4.0, 1.0]).view([1, 2, 1, 2]);
        let v = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let c = cosine_map(&x, &v);
        // Locations: (3, 4) -> 0.6; (0, 1) -> 0.
        assert!((c.double_value(&[0, 0, 0, 0]) - 0.6).abs() < 1e-6);
        assert!(c.double_value(&[0, 0, 0, 1]).abs() < 1e-6);
    }
}
