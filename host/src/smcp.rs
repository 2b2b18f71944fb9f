//! SMCP (semantically meaningful class prototypes; methods.md §5) in tch: the head on top of
//! any backbone of the project, its three training losses, and the head pass that the shared
//! fused-prototype inference ([`fss_core::smcp`]) runs twice.
//!
//! Head (one pass, query features `F` `[B, C, h, w]` and a prototype `p` `[B, C]`):
//! `feat_rd` = ReLU(conv3x3 2C -> W)(concat[F, tile(p)]); the pyramid feature fusion (PFF:
//! three scales read from the input pyramid, summed, `feat_fuse` = two conv3x3 + ReLU, then two
//! residual bottlenecks W -> W/8 -> W); the binary head, an ASPP-v2 sum of four dilated 3x3
//! convs W -> 2. The multi-class head (training only) is the same kind of ASPP on the encoder
//! features, C -> 1 + base classes.
//!
//! The width `W` is a parameter: 512 is the paper's (with VGG-16 at stride 8); the edge default
//! is 128 on EfficientNet-Lite0 / MobileNetV2 at stride 16. The ASPP dilations scale with the
//! stride so that they cover the same image distance as the paper's 6/12/18/24 at stride 8
//! (3/6/9/12 at stride 16).
//!
//! Variants ([`SmcpVariant`]): `paper` applies PFF on the support's self-prototype branch as
//! the paper says; `code` reproduces the official code, whose support branch skips PFF
//! (methods.md §10.3). The training schedule of each variant is set by the trainer (`train.rs`).

use crate::layers::{emit_conv, emit_conv_relu, Activation, Conv2d, Conv2dConfig, ConvInit, Scope};
use crate::onnx::{attr_int, avg_pool, resize_like, GraphBuilder};
use crate::panet::{masked_average_pool, IGNORE};
use anyhow::Result;
use fss_core::method::{port, Method};
use tch::{nn, Kind, Reduction, Tensor};
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::ModelProto;

/// Weight of the multi-class loss (λ_mcl, methods.md §5.2).
pub const MCL_WEIGHT: f64 = 0.1;
/// The parameter scope of the head inside a checkpoint.
pub const SCOPE: &str = "smcp_head";

/// Which SMCP the model follows (methods.md §5.3, §10.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmcpVariant {
    /// The paper: PFF shared by the support branch, poly lr (power 0.9), weight decay 1e-4.
    #[default]
    Paper,
    /// The official code: the support branch skips PFF, constant lr, weight decay 5e-4.
    Code,
}

fss_core::choices!(SmcpVariant {
    Paper => "paper", "The paper: PFF shared by the support branch, poly lr (power 0.9), weight decay 1e-4";
    Code => "code", "The official code: the support branch skips PFF, constant lr, weight decay 5e-4";
});

/// Shape of an SMCP head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SmcpShape {
    /// Encoder feature channels C.
    pub feature_channels: i64,
    /// Head width W.
    pub width: i64,
    /// ASPP dilations.
    pub dilations: [i64; 4],
    /// Multi-class head outputs: background + base classes.
    pub classes: i64,
    pub variant: SmcpVariant,
}

impl SmcpShape {
    /// The paper's dilations (6/12/18/24 at stride 8) scaled to `stride`.
    pub fn dilations_for_stride(stride: i64) -> [i64; 4] {
        [6, 12, 18, 24].map(|d| (d * 8 / stride).max(1))
    }
}

/// A 3x3 (or 1x1) conv with bias, PyTorch's default initialisation (as the SMCP code).
pub(crate) fn conv(
    scope: &Scope,
    name: &str,
    cin: i64,
    cout: i64,
    k: i64,
    dilation: i64,
) -> Conv2d {
    let cfg = Conv2dConfig::new(cin, cout, k)
        .dilation(dilation)
        .bias(true)
        .init(ConvInit::TorchDefault);
    Conv2d::new(&scope.sub(name), cfg)
}

/// ASPP-v2: the sum of four dilated 3x3 convs, weights N(0, 0.01), bias 0.
#[derive(Debug)]
pub struct Aspp {
    pub branches: Vec<Conv2d>,
}

impl Aspp {
    fn new(scope: &Scope, cin: i64, cout: i64, dilations: [i64; 4]) -> Aspp {
        let branches = dilations
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let c = conv(scope, &i.to_string(), cin, cout, 3, d);
                tch::no_grad(|| {
                    let _ = c.weight.shallow_clone().normal_(0.0, 0.01);
                });
                c
            })
            .collect();
        Aspp { branches }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut out = self.branches[0].forward(x, false);
        for b in &self.branches[1..] {
            out = out.g_add(&b.forward(x, false));
        }
        out
    }
}

/// The residual bottleneck of PFF: ReLU(x + [1x1 W -> W/8, ReLU, 3x3, ReLU, 1x1 W/8 -> W](x)).
#[derive(Debug)]
pub struct Bottleneck {
    pub reduce: Conv2d,
    pub mid: Conv2d,
    pub expand: Conv2d,
}

impl Bottleneck {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.reduce.forward(x, false).relu();
        let h = self.mid.forward(&h, false).relu();
        (x + self.expand.forward(&h, false)).relu()
    }
}

/// Pyramid feature fusion (methods.md §5.1).
#[derive(Debug)]
pub struct Pff {
    /// Full, 1/2 and 1/4 scale convs.
    pub scales: [Conv2d; 3],
    pub fuse: [Conv2d; 2],
    pub residual: [Bottleneck; 2],
}

/// `AvgPool(k3, s2, p1)` with zero padding counted (torch's default).
pub fn pyramid_pool(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [2, 2], [1, 1], false, true, None::<i64>)
}

impl Pff {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (h, w) = (x.size()[2], x.size()[3]);
        let x2 = pyramid_pool(x);
        let x3 = pyramid_pool(&x2);
        let a1 = self.scales[0].forward(x, false).relu();
        let up = |t: Tensor| t.upsample_bilinear2d([h, w], false, None, None);
        let a2 = up(self.scales[1].forward(&x2, false).relu());
        let a3 = up(self.scales[2].forward(&x3, false).relu());
        let mut y = a1 + a2 + a3;
        for f in &self.fuse {
            y = f.forward(&y, false).relu();
        }
        for r in &self.residual {
            y = r.forward(&y);
        }
        y
    }
}

/// The SMCP head (module doc).
#[derive(Debug)]
pub struct SmcpHead {
    pub shape: SmcpShape,
    pub feat_rd: Conv2d,
    pub pff: Pff,
    pub binary: Aspp,
    /// Training only.
    pub multi: Aspp,
}

/// `p` `[B, C]` tiled over `[B, C, h, w]`.
pub fn tile(prototype: &Tensor, h: i64, w: i64) -> Tensor {
    let s = prototype.size();
    prototype
        .view([s[0], s[1], 1, 1])
        .expand([s[0], s[1], h, w], false)
}

impl SmcpHead {
    pub fn new(path: &nn::Path, shape: SmcpShape) -> SmcpHead {
        let root = Scope::root(path).sub(SCOPE);
        let (c, w) = (shape.feature_channels, shape.width);
        let inner = (w / 8).max(1);
        let s = root.sub("pff");
        let bottleneck = |i: usize| {
            let b = s.sub(&format!("residual{i}"));
            Bottleneck {
                reduce: conv(&b, "reduce", w, inner, 1, 1),
                mid: conv(&b, "mid", inner, inner, 3, 1),
                expand: conv(&b, "expand", inner, w, 1, 1),
            }
        };
        let pff = Pff {
            scales: [
                conv(&s, "scale1", w, w, 3, 1),
                conv(&s, "scale2", w, w, 3, 1),
                conv(&s, "scale4", w, w, 3, 1),
            ],
            fuse: [conv(&s, "fuse0", w, w, 3, 1), conv(&s, "fuse1", w, w, 3, 1)],
            residual: [bottleneck(0), bottleneck(1)],
        };
        SmcpHead {
            shape,
            feat_rd: conv(&root, "feat_rd", 2 * c, w, 3, 1),
            pff,
            binary: Aspp::new(&root.sub("binary"), w, 2, shape.dilations),
            multi: Aspp::new(&root.sub("multi"), c, shape.classes, shape.dilations),
        }
    }

    /// One head pass: features `[B, C, h, w]`, prototypes `[B, C]` -> logits `[B, 2, h, w]`.
    pub fn pass(&self, features: &Tensor, prototype: &Tensor, with_pff: bool) -> Tensor {
        let (h, w) = (features.size()[2], features.size()[3]);
        let x = Tensor::cat(&[features, &tile(prototype, h, w)], 1);
        let x = self.feat_rd.forward(&x, false).relu();
        let x = if with_pff { self.pff.forward(&x) } else { x };
        self.binary.forward(&x)
    }

    /// Every parameter of the head with its checkpoint name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.feat_rd.named_parameters(&mut out);
        for c in self.pff.scales.iter().chain(&self.pff.fuse) {
            c.named_parameters(&mut out);
        }
        for r in &self.pff.residual {
            for c in [&r.reduce, &r.mid, &r.expand] {
                c.named_parameters(&mut out);
            }
        }
        for c in self.binary.branches.iter().chain(&self.multi.branches) {
            c.named_parameters(&mut out);
        }
        out
    }

    /// Parameters of the inference head (`feat_rd`, PFF, binary ASPP; not the multi-class head).
    pub fn inference_parameters(&self) -> i64 {
        let all: i64 = self
            .named_parameters()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum();
        all - self
            .multi
            .branches
            .iter()
            .map(Conv2d::parameter_count)
            .sum::<i64>()
    }

    /// Multiply-accumulates of one inference pass on an `h` x `w` feature map (convolutions
    /// only; pooling, upsampling and additions are a rounding error next to them).
    pub fn macs_per_pass(&self, h: i64, w: i64) -> i64 {
        let conv_macs = |c: &Conv2d, h: i64, w: i64| c.weight.numel() as i64 * h * w;
        let (h2, w2) = ((h + 1) / 2, (w + 1) / 2);
        let (h4, w4) = ((h2 + 1) / 2, (w2 + 1) / 2);
        let p = &self.pff;
        let mut m = conv_macs(&self.feat_rd, h, w)
            + conv_macs(&p.scales[0], h, w)
            + conv_macs(&p.scales[1], h2, w2)
            + conv_macs(&p.scales[2], h4, w4);
        for c in &p.fuse {
            m += conv_macs(c, h, w);
        }
        for r in &p.residual {
            for c in [&r.reduce, &r.mid, &r.expand] {
                m += conv_macs(c, h, w);
            }
        }
        for c in &self.binary.branches {
            m += conv_macs(c, h, w);
        }
        m
    }
}

/// One SMCP training episode beyond PANet's tensors: the multi-class labels.
pub struct SemanticLabels {
    /// `[K, H, W]` int64: 0 background, 1.. base classes, 255 novel classes (ignored).
    pub supports: Tensor,
    /// `[1, H, W]` int64.
    pub query: Tensor,
}

/// Loss terms of one SMCP step.
pub struct SmcpLosses {
    pub total: Tensor,
    pub query: f64,
    pub support: f64,
    pub multi_class: f64,
}

impl SmcpLosses {
    /// The total to back-propagate and the parts the loss curve records.
    pub fn into_parts(self) -> (Tensor, crate::panet::LossParts) {
        let parts = crate::panet::LossParts {
            loss: self.total.double_value(&[]),
            query: self.query,
            support: self.support,
            multi_class: self.multi_class,
            ..Default::default()
        };
        (self.total, parts)
    }
}

/// `L = L_q + L_s + 0.1 L_seg` (methods.md §5.2) for one 1-way K-shot episode, given encoder
/// features of the supports `[K, C, h, w]` and the query `[1, C, h, w]`. An episode without
/// class labels (`labels: None`, a video episode: the same object across frames, of no known
/// class) trains `L_q + L_s` only; its multi-class term is 0.
pub fn losses(
    head: &SmcpHead,
    support_features: &Tensor,
    query_features: &Tensor,
    ep: &crate::panet::EpisodeTensors,
    labels: Option<&SemanticLabels>,
) -> SmcpLosses {
    let (h, w) = (ep.query_label.size()[1], ep.query_label.size()[2]);
    let up = |t: &Tensor| t.upsample_bilinear2d([h, w], false, None, None);
    let ce = |logits: &Tensor, target: &Tensor| {
        up(logits).cross_entropy_loss::<Tensor>(target, None, Reduction::Mean, IGNORE, 0.0)
    };
    // The support prototype: the mean of the shots' MAP (image resolution, eps 1e-5).
    let p = masked_average_pool(support_features, &ep.support_fg).mean_dim(0, true, Kind::Float);
    let query = ce(&head.pass(query_features, &p, true), &ep.query_label);
    // Self-prototype branch: each support shot segmented with the prototype; 0/1 label, no
    // ignore.
    let k = support_features.size()[0];
    let with_pff = head.shape.variant == SmcpVariant::Paper;
    let s_logits = head.pass(support_features, &p.expand([k, -1], false), with_pff);
    let support = ce(&s_logits, &ep.support_fg.to_kind(Kind::Int64));
    // Multi-class loss over background + base classes on supports and query (sum of two).
    let multi = match labels {
        Some(labels) => {
            ce(&head.multi.forward(support_features), &labels.supports)
                + ce(&head.multi.forward(query_features), &labels.query)
        }
        None => Tensor::zeros([], (Kind::Float, query_features.device())),
    };
    let total = &query + &support + &multi * MCL_WEIGHT;
    SmcpLosses {
        query: query.double_value(&[]),
        support: support.double_value(&[]),
        multi_class: multi.double_value(&[]),
        total,
    }
}

impl Aspp {
    /// The branches' convs on `x`, summed (`{base}.sum`); returns the output tensor name.
    pub fn emit(&self, g: &mut GraphBuilder, x: &str, base: &str) -> Result<String> {
        let mut acc = emit_conv(g, &self.branches[0], None, Activation::None, x)?;
        for b in &self.branches[1..] {
            let y = emit_conv(g, b, None, Activation::None, x)?;
            acc = g.node("Add", &format!("{base}.sum"), &[&acc, &y], vec![]);
        }
        Ok(acc)
    }
}

impl SmcpHead {
    /// The head graph (its inference part; the multi-class head is training-only): query
    /// features and a prototype -> 2-class logits, the ports of [`Method::Smcp`]'s contract.
    pub fn onnx_model(&self) -> Result<ModelProto> {
        let head = self;
        let c = head.shape.feature_channels as usize;
        let (inputs, outputs) = Method::Smcp
            .head_ports(c, c)
            .expect("a method with a head graph");
        let mut g = GraphBuilder::new("smcp_head");
        let f = g.input(port::FEATURES, &inputs[0].shape)?;
        let p = g.input(port::PROTOTYPE, &inputs[1].shape)?;
        // tile(p) over the feature grid.
        let shape4 = g.initializer_raw(
            "prototype_shape",
            &[4],
            DataType::Int64,
            [1i64, c as i64, 1, 1]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )?;
        let p4 = g.node("Reshape", "prototype_4d", &[&p, &shape4], vec![]);
        let fshape = g.node("Shape", "features_shape", &[&f], vec![]);
        let tiled = g.node("Expand", "prototype_tiled", &[&p4, &fshape], vec![]);
        let x = g.node(
            "Concat",
            "fusion_input",
            &[&f, &tiled],
            vec![attr_int("axis", 1)],
        );
        let x = emit_conv_relu(&mut g, &head.feat_rd, &x)?;
        // PFF.
        let pff = &head.pff;
        let x2 = avg_pool(&mut g, &x, "pff.pool2");
        let x3 = avg_pool(&mut g, &x2, "pff.pool4");
        let a1 = emit_conv_relu(&mut g, &pff.scales[0], &x)?;
        let a2 = emit_conv_relu(&mut g, &pff.scales[1], &x2)?;
        let a2 = resize_like(&mut g, &a2, &a1, "pff.up2");
        let a3 = emit_conv_relu(&mut g, &pff.scales[2], &x3)?;
        let a3 = resize_like(&mut g, &a3, &a1, "pff.up4");
        let y = g.node("Add", "pff.sum", &[&a1, &a2], vec![]);
        let mut y = g.node("Add", "pff.sum", &[&y, &a3], vec![]);
        for conv in &pff.fuse {
            y = emit_conv_relu(&mut g, conv, &y)?;
        }
        for r in &pff.residual {
            let h = emit_conv_relu(&mut g, &r.reduce, &y)?;
            let h = emit_conv_relu(&mut g, &r.mid, &h)?;
            let h = emit_conv(&mut g, &r.expand, None, Activation::None, &h)?;
            let s = g.node("Add", &format!("{}.add", r.expand.name), &[&y, &h], vec![]);
            y = g.node("Relu", &format!("{}.relu", r.expand.name), &[&s], vec![]);
        }
        let logits = head.binary.emit(&mut g, &y, "binary")?;
        g.output(&logits, port::LOGITS, &outputs[0].shape)?;
        Ok(g.into_model("SMCP head: query features + prototype -> 2-class logits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    fn shape() -> SmcpShape {
        SmcpShape {
            feature_channels: 8,
            width: 16,
            dilations: SmcpShape::dilations_for_stride(16),
            classes: 5,
            variant: SmcpVariant::Paper,
        }
    }

    #[test]
    fn head_shapes_and_losses() {
        tch::manual_seed(1);
        let vs = VarStore::new(Device::Cpu);
        // Wide enough that no bottleneck's ReLUs are all dead at init (a dead unit legitimately
        // gets a zero gradient).
        let head = SmcpHead::new(
            &vs.root(),
            SmcpShape {
                width: 64,
                ..shape()
            },
        );
        assert_eq!(head.shape.dilations, [3, 6, 9, 12]);
        let opts = (Kind::Float, Device::Cpu);
        let sf = Tensor::randn([2, 8, 5, 7], opts);
        let qf = Tensor::randn([1, 8, 5, 7], opts);
        let p = Tensor::randn([1, 8], opts);
        assert_eq!(head.pass(&qf, &p, true).size(), [1, 2, 5, 7]);
        assert_eq!(head.multi.forward(&qf).size(), [1, 5, 5, 7]);
        let fg = Tensor::rand([2, 40, 56], opts).gt(0.6).to_kind(Kind::Float);
        let ep = crate::panet::EpisodeTensors {
            supports: Tensor::zeros([2, 3, 40, 56], opts),
            support_bg: fg.ones_like().g_sub(&fg),
            support_fg: fg,
            query: Tensor::zeros([1, 3, 40, 56], opts),
            query_label: Tensor::rand([1, 40, 56], opts).gt(0.5).to_kind(Kind::Int64),
        };
        let labels = SemanticLabels {
            supports: Tensor::randint(5, [2, 40, 56], (Kind::Int64, Device::Cpu)),
            query: Tensor::randint(5, [1, 40, 56], (Kind::Int64, Device::Cpu)),
        };
        // Without class labels (a video episode) the multi-class term is 0 and the rest equal.
        let unlabelled = losses(&head, &sf, &qf, &ep, None);
        let l = losses(&head, &sf, &qf, &ep, Some(&labels));
        for v in [l.query, l.support, l.multi_class] {
            assert!(v.is_finite() && v > 0.0);
        }
        assert_eq!(unlabelled.multi_class, 0.0);
        assert_eq!((unlabelled.query, unlabelled.support), (l.query, l.support));
        assert!((unlabelled.total.double_value(&[]) - (l.query + l.support)).abs() < 1e-4);
        let sum = l.query + l.support + MCL_WEIGHT * l.multi_class;
        assert!((l.total.double_value(&[]) - sum).abs() < 1e-4);
        l.total.backward();
        for (name, t) in head.named_parameters() {
            assert!(
                t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name} got no gradient"
            );
        }
    }

    #[test]
    fn code_variant_support_branch_skips_pff() {
        tch::manual_seed(2);
        let vs = VarStore::new(Device::Cpu);
        let head = SmcpHead::new(
            &vs.root(),
            SmcpShape {
                variant: SmcpVariant::Code,
                ..shape()
            },
        );
        let opts = (Kind::Float, Device::Cpu);
        let sf = Tensor::randn([1, 8, 4, 4], opts);
        let p = Tensor::randn([1, 8], opts);
        let with = head.pass(&sf, &p, true);
        let without = head.pass(&sf, &p, false);
        assert!(
            (with - without).abs().max().double_value(&[]) > 1e-6,
            "PFF must change the output"
        );
    }

    #[test]
    fn parameter_and_mac_counts_follow_the_layers() {
        let vs = VarStore::new(Device::Cpu);
        let head = SmcpHead::new(&vs.root(), shape());
        // feat_rd 16*16*9+16, 5 PFF 3x3 convs 16*16*9+16, bottlenecks 2*(16*2+2 + 2*2*9+2 +
        // 2*16+16), binary ASPP 4*(2*16*9+2).
        let expected = (16 * 16 * 9 + 16)
            + 5 * (16 * 16 * 9 + 16)
            + 2 * ((16 * 2 + 2) + (2 * 2 * 9 + 2) + (2 * 16 + 16))
            + 4 * (2 * 16 * 9 + 2);
        assert_eq!(head.inference_parameters(), expected);
        // 4x4 map: full-res convs on 16 cells, scale2 on 4, scale4 on 1.
        let full = 16 * 16 * 9 * 16;
        let macs = full * 4 // feat_rd, scale1, fuse0, fuse1
            + 16 * 16 * 9 * 4
            + 16 * 16 * 9
            + 2 * 16 * (16 * 2 + 2 * 2 * 9 + 2 * 16)
            + 4 * 16 * (2 * 16 * 9);
        assert_eq!(head.macs_per_pass(4, 4), macs);
    }
}
