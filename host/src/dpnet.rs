//! DPNet (dual prototype network; Mao et al., AAAI 2022; methods.md §6) in tch: the head on top
//! of any backbone of the project, its losses, and the pass the shared inference
//! ([`fss_core::dpnet`]) runs.
//!
//! **Reconstructed from the abstract.** Neither the paper's equations nor code are available
//! to this project (the PDF could not be fetched from this machine; no official code exists).
//! The abstract fixes the modules and what flows between them; every detail below is a
//! choice, written down with its reason. Numbers from this model are not the paper's method.
//!
//! Inputs of one pass: query encoder features `F_q` `[B, C, h, w]`, the support prototype `P`
//! `[B, C]` (mean over shots of the masked average pool, as PANet), and the support memory
//! (support features average-pooled to 12 x 12 per shot, `[B, C, n]`, and the fraction of
//! each cell inside the support mask, `[B, n]`; see `fss_core::dpnet`).
//!
//! 1. **Cycle comparison (CCM)** -> the pseudo-prototype `P_q`. A query location `x` is a
//!    reliable foreground location when
//!    * *cycle*: its nearest support location (cosine affinity `A = F̂_qᵀ F̂_s`) lies inside the
//!      support mask. Computed as `max_{y in mask} A(x, y) >= max_{y not in mask} A(x, y)`,
//!      which equals "the argmax falls inside" and needs no gather. A support cell is inside
//!      when its mask fraction reaches `min(0.5, the largest fraction)` (so that a small object
//!      still has its best-covered cell);
//!    * *similar to the prototype*: `cos(F_q(x), P)` is at least its mean over the query.
//!      Relative, so that it holds on any backbone without a tuned constant.
//!
//!    `P_q = (sum_x s(x) F_q(x) + ε P) / (sum_x s(x) + ε)`, ε = 1e-5: the mean of the reliable
//!    features, and exactly `P` when no location is reliable (no query evidence, no change).
//!    The selection is piecewise constant (no gradient through it); the gradient reaches the
//!    features through the average, as in masked average pooling.
//! 2. **Prototype interaction (PIM)**: the correlation of the two prototypes, channel by
//!    channel, `c = P ⊙ P_q / (|P| |P_q|) * C` (each channel's share of their cosine, scaled so
//!    that the mean is the cosine), goes through a 1x1 conv C -> C and a sigmoid into a channel
//!    gate `g`; both prototypes and the query features are reinforced by `(1 + g)` (a
//!    residual gate: at `g = 0` nothing changes, so a fresh head starts from the plain
//!    features).
//! 3. **Multi-scale fusion (MSF)**: a 1x1 conv C -> W + ReLU reduces the reinforced features
//!    and both prototypes; at three scales of the query (full, 1/2, 1/4: the average pool
//!    k3 s2 p1 of SMCP's pyramid) `concat[F, tile(P), tile(P_q), cos(F, P), cos(F, P_q)]`
//!    (3W + 2 channels) goes through a 1x1 conv -> W + ReLU and a 3x3 conv + ReLU; the
//!    coarse scales are upsampled (bilinear) and summed with the full one.
//! 4. **Decoder**: two 3x3 convs W -> W + ReLU and a 1x1 conv W -> 2.
//! 5. **Auxiliary branch (training only)**: a 1x1 classifier W -> 2 on each scale's features,
//!    cross-entropy against the query mask, averaged over the scales, weight 1.0 (the
//!    deep supervision of the PFENet family the paper's era used). Not exported.
//!
//! Loss: `CE(logits) + 1.0 * mean_s CE(aux_s)`, both on the upsampled logits, 255 ignored.
//! Initialisation: PyTorch's conv default; the PIM gate's bias starts at -4 (gate ~0.02) so
//! that training starts from the un-gated features.

use crate::layers::{emit_conv, emit_conv_relu, Activation, Conv2d, Scope};
use crate::onnx::{
    self, attr_int, attr_ints, avg_pool, binary, concat, l2_norm, reduce_attr, reduce_sum, reshape,
    resize_like, GraphBuilder,
};
use crate::panet::{masked_average_pool, IGNORE};
use crate::sgone::cosine_map;
use crate::smcp::{pyramid_pool, tile};
use anyhow::Result;
use fss_core::method::{port, Method};
use tch::{nn, Kind, Reduction, Tensor};
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::ModelProto;

pub const SCOPE: &str = "dpnet_head";
/// Added under the square root of L2 norms.
pub const NORM_EPS: f64 = 1e-6;
/// Pseudo-prototype denominator (and the weight of the fallback to `P`).
pub const SELECT_EPS: f64 = 1e-5;
/// Affinity offset that removes locations from a max (affinities are cosines).
pub const MASK_OFFSET: f64 = 1e4;
/// A support cell is inside at this mask fraction (or the largest one, if smaller).
pub const INSIDE_FRACTION: f64 = 0.5;
pub const AUX_WEIGHT: f64 = 1.0;
/// Initial bias of the PIM gate.
pub const GATE_BIAS: f64 = -4.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpNetShape {
    pub feature_channels: i64,
    pub width: i64,
}

fn conv(scope: &Scope, name: &str, cin: i64, cout: i64, k: i64) -> Conv2d {
    crate::smcp::conv(scope, name, cin, cout, k, 1)
}

/// The DPNet head (module doc).
#[derive(Debug)]
pub struct DpNetHead {
    pub shape: DpNetShape,
    /// PIM: 1x1 C -> C.
    pub gate: Conv2d,
    /// 1x1 C -> W.
    pub reduce: Conv2d,
    /// Per scale: 1x1 3W+2 -> W.
    pub merge: [Conv2d; 3],
    /// Per scale: 3x3 W -> W.
    pub refine: [Conv2d; 3],
    pub decoder: [Conv2d; 2],
    /// 1x1 W -> 2.
    pub classifier: Conv2d,
    /// Training only: per scale 1x1 W -> 2.
    pub aux: [Conv2d; 3],
}

/// What one pass computes.
pub struct DpNetPass {
    /// `[B, 2, h, w]`.
    pub logits: Tensor,
    /// Per scale `[B, 2, h_s, w_s]` (training only).
    pub aux: Vec<Tensor>,
    /// `[B, C]`.
    pub pseudo_prototype: Tensor,
    /// `[B, h * w]` 0/1: the reliable query locations.
    pub selected: Tensor,
}

/// `x / sqrt(sum x^2 + eps)` along `dim`.
pub fn l2_normalise(x: &Tensor, dim: i64) -> Tensor {
    x / (x * x)
        .sum_dim_intlist([dim].as_slice(), true, Kind::Float)
        .g_add_scalar(NORM_EPS)
        .sqrt()
}

/// The cycle comparison (module doc, step 1): `(P_q [B, C], selected [B, hw])`.
pub fn pseudo_prototype(
    features: &Tensor,
    prototype: &Tensor,
    memory_features: &Tensor,
    memory_mask: &Tensor,
) -> (Tensor, Tensor) {
    let fq = features.flatten(2, 3);
    let fqn = l2_normalise(&fq, 1);
    let sn = l2_normalise(memory_features, 1);
    let affinity = fqn.transpose(1, 2).matmul(&sn);
    let largest = memory_mask.amax([1i64].as_slice(), true);
    let threshold = largest.clamp_max(INSIDE_FRACTION);
    let inside = memory_mask
        .ge_tensor(&threshold)
        .to_kind(Kind::Float)
        .unsqueeze(1);
    let in_max = (&affinity + (&inside - 1.0) * MASK_OFFSET).amax([2i64].as_slice(), false);
    let out_max = (&affinity - &inside * MASK_OFFSET).amax([2i64].as_slice(), false);
    let cycle = in_max.ge_tensor(&out_max).to_kind(Kind::Float);
    let pn = l2_normalise(&prototype.unsqueeze(2), 1);
    let similarity = (&fqn * pn).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let mean = similarity.mean_dim([1i64].as_slice(), true, Kind::Float);
    let selected = cycle * similarity.ge_tensor(&mean).to_kind(Kind::Float);
    let num = (&fq * selected.unsqueeze(1)).sum_dim_intlist([2i64].as_slice(), false, Kind::Float)
        + prototype * SELECT_EPS;
    let den = selected.sum_dim_intlist([1i64].as_slice(), true, Kind::Float) + SELECT_EPS;
    (num / den, selected)
}

impl DpNetHead {
    pub fn new(path: &nn::Path, shape: DpNetShape) -> DpNetHead {
        let root = Scope::root(path).sub(SCOPE);
        let (c, w) = (shape.feature_channels, shape.width);
        let gate = conv(&root, "pim_gate", c, c, 1);
        if let Some(b) = &gate.bias {
            tch::no_grad(|| {
                let _ = b.shallow_clone().fill_(GATE_BIAS);
            });
        }
        let s = |i: usize| format!("msf{}", 1 << i);
        DpNetHead {
            shape,
            gate,
            reduce: conv(&root, "reduce", c, w, 1),
            merge: [0, 1, 2].map(|i| conv(&root.sub(&s(i)), "merge", 3 * w + 2, w, 1)),
            refine: [0, 1, 2].map(|i| conv(&root.sub(&s(i)), "refine", w, w, 3)),
            decoder: [
                conv(&root, "decoder0", w, w, 3),
                conv(&root, "decoder1", w, w, 3),
            ],
            classifier: conv(&root, "classifier", w, 2, 1),
            aux: [0, 1, 2].map(|i| conv(&root.sub(&s(i)), "aux", w, 2, 1)),
        }
    }

    /// One pass (module doc). `with_aux` also computes the auxiliary logits.
    pub fn pass(
        &self,
        features: &Tensor,
        prototype: &Tensor,
        memory_features: &Tensor,
        memory_mask: &Tensor,
        with_aux: bool,
    ) -> DpNetPass {
        let (b, c) = (prototype.size()[0], prototype.size()[1]);
        let (h, w) = (features.size()[2], features.size()[3]);
        let (pq, selected) = pseudo_prototype(features, prototype, memory_features, memory_mask);
        // PIM.
        let norms = (prototype * prototype)
            .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
            .g_add_scalar(NORM_EPS)
            .sqrt()
            * (&pq * &pq)
                .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
                .g_add_scalar(NORM_EPS)
                .sqrt();
        let corr = (prototype * &pq) / norms * (c as f64);
        let gain = self
            .gate
            .forward(&corr.view([b, c, 1, 1]), false)
            .sigmoid()
            .g_add_scalar(1.0);
        let f2 = features * &gain;
        let p2 = prototype.view([b, c, 1, 1]) * &gain;
        let pq2 = pq.view([b, c, 1, 1]) * &gain;
        // MSF.
        let x = self.reduce.forward(&f2, false).relu();
        let pr = self.reduce.forward(&p2, false).relu().flatten(1, 3);
        let pqr = self.reduce.forward(&pq2, false).relu().flatten(1, 3);
        let x2 = pyramid_pool(&x);
        let x3 = pyramid_pool(&x2);
        let mut fused: Option<Tensor> = None;
        let mut aux = Vec::new();
        for (i, xs) in [x, x2, x3].iter().enumerate() {
            let (hs, ws) = (xs.size()[2], xs.size()[3]);
            let cat = Tensor::cat(
                &[
                    xs.shallow_clone(),
                    tile(&pr, hs, ws),
                    tile(&pqr, hs, ws),
                    cosine_map(xs, &pr),
                    cosine_map(xs, &pqr),
                ],
                1,
            );
            let y = self.merge[i].forward(&cat, false).relu();
            let y = self.refine[i].forward(&y, false).relu();
            if with_aux {
                aux.push(self.aux[i].forward(&y, false));
            }
            let y = if i == 0 {
                y
            } else {
                y.upsample_bilinear2d([h, w], false, None, None)
            };
            fused = Some(match fused {
                None => y,
                Some(f) => f + y,
            });
        }
        let mut d = fused.expect("three scales");
        for conv in &self.decoder {
            d = conv.forward(&d, false).relu();
        }
        DpNetPass {
            logits: self.classifier.forward(&d, false),
            aux,
            pseudo_prototype: pq,
            selected,
        }
    }

    fn inference_convs(&self) -> Vec<&Conv2d> {
        let mut v = vec![&self.gate, &self.reduce];
        v.extend(self.merge.iter());
        v.extend(self.refine.iter());
        v.extend(self.decoder.iter());
        v.push(&self.classifier);
        v
    }

    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for c in self.inference_convs().into_iter().chain(self.aux.iter()) {
            c.named_parameters(&mut out);
        }
        out
    }

    /// Parameters of the exported head (the auxiliary classifiers excluded).
    pub fn inference_parameters(&self) -> i64 {
        self.inference_convs()
            .into_iter()
            .map(Conv2d::parameter_count)
            .sum()
    }

    /// Multiply-accumulates of one pass on an `h` x `w` map with `n` support locations
    /// (convolutions and the affinity matmul).
    pub fn macs_per_pass(&self, h: i64, w: i64, n: i64) -> i64 {
        let m = |c: &Conv2d, cells: i64| c.weight.numel() as i64 * cells;
        let (h2, w2) = ((h + 1) / 2, (w + 1) / 2);
        let (h4, w4) = ((h2 + 1) / 2, (w2 + 1) / 2);
        let cells = [h * w, h2 * w2, h4 * w4];
        let mut total =
            self.shape.feature_channels * h * w * n + m(&self.gate, 1) + m(&self.reduce, h * w + 2);
        for ((merge, refine), &n) in self.merge.iter().zip(&self.refine).zip(&cells) {
            total += m(merge, n) + m(refine, n);
        }
        for c in &self.decoder {
            total += m(c, h * w);
        }
        total + m(&self.classifier, h * w)
    }
}

/// The support memory of K shots in training: features `[K, C, h, w]` and masks `[K, H, W]`
/// -> `([1, C, K*G*G], [1, K*G*G])`, laid out like `fss_core::dpnet::support_memory`.
pub fn support_memory(support_features: &Tensor, support_fg: &Tensor) -> (Tensor, Tensor) {
    let g = fss_core::dpnet::MEMORY_GRID as i64;
    let (k, c) = (support_features.size()[0], support_features.size()[1]);
    let f = support_features
        .adaptive_avg_pool2d([g, g])
        .permute([1, 0, 2, 3])
        .reshape([1, c, k * g * g]);
    let m = support_fg
        .unsqueeze(1)
        .adaptive_avg_pool2d([g, g])
        .reshape([1, k * g * g]);
    (f, m)
}

pub struct DpNetLosses {
    pub total: Tensor,
    pub query: f64,
    pub aux: f64,
}

impl DpNetLosses {
    /// The total to back-propagate and the parts the loss curve records.
    pub fn into_parts(self) -> (Tensor, crate::panet::LossParts) {
        let parts = crate::panet::LossParts {
            loss: self.total.double_value(&[]),
            query: self.query,
            aux: self.aux,
            ..Default::default()
        };
        (self.total, parts)
    }
}

/// `CE(logits) + 1.0 * mean_s CE(aux_s)` for one 1-way K-shot episode (module doc).
pub fn losses(
    head: &DpNetHead,
    support_features: &Tensor,
    query_features: &Tensor,
    ep: &crate::panet::EpisodeTensors,
) -> DpNetLosses {
    let (h, w) = (ep.query_label.size()[1], ep.query_label.size()[2]);
    let ce = |logits: &Tensor| {
        logits
            .upsample_bilinear2d([h, w], false, None, None)
            .cross_entropy_loss::<Tensor>(&ep.query_label, None, Reduction::Mean, IGNORE, 0.0)
    };
    let p = masked_average_pool(support_features, &ep.support_fg).mean_dim(0, true, Kind::Float);
    let (mf, mm) = support_memory(support_features, &ep.support_fg);
    let out = head.pass(query_features, &p, &mf, &mm, true);
    let query = ce(&out.logits);
    let n = out.aux.len() as f64;
    let aux = out
        .aux
        .iter()
        .map(ce)
        .reduce(|a, b| a + b)
        .expect("three scales")
        / n;
    let total = &query + &aux * AUX_WEIGHT;
    DpNetLosses {
        query: query.double_value(&[]),
        aux: aux.double_value(&[]),
        total,
    }
}

impl DpNetHead {
    /// The head graph (the auxiliary classifiers are training-only): query features, the
    /// prototype and the support memory -> 2-class logits, the ports of [`Method::DpNet`]'s
    /// contract.
    pub fn onnx_model(&self) -> Result<ModelProto> {
        let head = self;
        let c = head.shape.feature_channels;
        let (inputs, outputs) = Method::DpNet
            .head_ports(c as usize, c as usize)
            .expect("a method with a head graph");
        let mut g = GraphBuilder::new("dpnet_head");
        let f = g.input(port::FEATURES, &inputs[0].shape)?;
        let p = g.input(port::PROTOTYPE, &inputs[1].shape)?;
        let sf = g.input(port::SUPPORT_FEATURES, &inputs[2].shape)?;
        let sm = g.input(port::SUPPORT_MASK, &inputs[3].shape)?;
        let norm_eps = Some(NORM_EPS as f32);
        // Cycle comparison.
        let fq = reshape(&mut g, &f, &[1, c, -1], "ccm.fq")?;
        let nq = l2_norm(&mut g, &fq, 1, norm_eps, "ccm.fq_norm")?;
        let fqn = binary(&mut g, "Div", &fq, &nq, "ccm.fqn");
        let ns = l2_norm(&mut g, &sf, 1, norm_eps, "ccm.fs_norm")?;
        let sn = binary(&mut g, "Div", &sf, &ns, "ccm.fsn");
        let fqt = g.node(
            "Transpose",
            "ccm.fqn_t",
            &[&fqn],
            vec![attr_ints("perm", &[0, 2, 1])],
        );
        let a = binary(&mut g, "MatMul", &fqt, &sn, "ccm.affinity");
        let largest = reduce_attr(&mut g, "ReduceMax", &sm, 1, true, "ccm.mask_max");
        let half = g.scalar_f32("ccm.inside_fraction", INSIDE_FRACTION as f32)?;
        let thr = binary(&mut g, "Min", &largest, &half, "ccm.inside_threshold");
        let inside = binary(&mut g, "GreaterOrEqual", &sm, &thr, "ccm.inside_bool");
        let inside = g.node(
            "Cast",
            "ccm.inside",
            &[&inside],
            vec![attr_int("to", DataType::Float as i64)],
        );
        let inside3 = reshape(&mut g, &inside, &[1, 1, -1], "ccm.inside3")?;
        let big = g.scalar_f32("ccm.offset", MASK_OFFSET as f32)?;
        let one = g.scalar_f32("ccm.one", 1.0)?;
        let outside_neg = binary(&mut g, "Sub", &inside3, &one, "ccm.inside_minus_one");
        let off_in = binary(&mut g, "Mul", &outside_neg, &big, "ccm.off_in");
        let a_in = binary(&mut g, "Add", &a, &off_in, "ccm.a_in");
        let in_max = reduce_attr(&mut g, "ReduceMax", &a_in, 2, false, "ccm.in_max");
        let off_out = binary(&mut g, "Mul", &inside3, &big, "ccm.off_out");
        let a_out = binary(&mut g, "Sub", &a, &off_out, "ccm.a_out");
        let out_max = reduce_attr(&mut g, "ReduceMax", &a_out, 2, false, "ccm.out_max");
        let cycle = binary(
            &mut g,
            "GreaterOrEqual",
            &in_max,
            &out_max,
            "ccm.cycle_bool",
        );
        let cycle = g.node(
            "Cast",
            "ccm.cycle",
            &[&cycle],
            vec![attr_int("to", DataType::Float as i64)],
        );
        let p3 = reshape(&mut g, &p, &[1, c, 1], "ccm.p3")?;
        let np3 = l2_norm(&mut g, &p3, 1, norm_eps, "ccm.p_norm")?;
        let pn = binary(&mut g, "Div", &p3, &np3, "ccm.pn");
        let prod = binary(&mut g, "Mul", &fqn, &pn, "ccm.sim_prod");
        let sim = reduce_sum(&mut g, &prod, 1, false, "ccm.similarity")?;
        let mean = reduce_attr(&mut g, "ReduceMean", &sim, 1, true, "ccm.similarity_mean");
        let above = binary(&mut g, "GreaterOrEqual", &sim, &mean, "ccm.above_bool");
        let above = g.node(
            "Cast",
            "ccm.above",
            &[&above],
            vec![attr_int("to", DataType::Float as i64)],
        );
        let sel = binary(&mut g, "Mul", &cycle, &above, "ccm.selected");
        let sel3 = reshape(&mut g, &sel, &[1, 1, -1], "ccm.selected3")?;
        let weighted = binary(&mut g, "Mul", &fq, &sel3, "ccm.weighted");
        let num = reduce_sum(&mut g, &weighted, 2, false, "ccm.num_sum")?;
        let eps = g.scalar_f32("ccm.select_eps", SELECT_EPS as f32)?;
        let pe = binary(&mut g, "Mul", &p, &eps, "ccm.p_eps");
        let num = binary(&mut g, "Add", &num, &pe, "ccm.num");
        let den = reduce_sum(&mut g, &sel, 1, true, "ccm.count")?;
        let den = binary(&mut g, "Add", &den, &eps, "ccm.den");
        let pq = binary(&mut g, "Div", &num, &den, "pseudo_prototype");
        // Prototype interaction.
        let np = l2_norm(&mut g, &p, 1, norm_eps, "pim.p_norm")?;
        let npq = l2_norm(&mut g, &pq, 1, norm_eps, "pim.pq_norm")?;
        let norms = binary(&mut g, "Mul", &np, &npq, "pim.norms");
        let ppq = binary(&mut g, "Mul", &p, &pq, "pim.p_pq");
        let corr = binary(&mut g, "Div", &ppq, &norms, "pim.corr_unit");
        let cs = g.scalar_f32("pim.channels", c as f32)?;
        let corr = binary(&mut g, "Mul", &corr, &cs, "pim.corr");
        let corr4 = reshape(&mut g, &corr, &[1, c, 1, 1], "pim.corr4")?;
        let gate = emit_conv(&mut g, &head.gate, None, Activation::None, &corr4)?;
        let gate = g.node("Sigmoid", "pim.sigmoid", &[&gate], vec![]);
        let gain = binary(&mut g, "Add", &gate, &one, "pim.gain");
        let f2 = binary(&mut g, "Mul", &f, &gain, "pim.features");
        let p4 = reshape(&mut g, &p, &[1, c, 1, 1], "pim.p4")?;
        let p2 = binary(&mut g, "Mul", &p4, &gain, "pim.prototype");
        let pq4 = reshape(&mut g, &pq, &[1, c, 1, 1], "pim.pq4")?;
        let pq2 = binary(&mut g, "Mul", &pq4, &gain, "pim.pseudo_prototype");
        // Multi-scale fusion.
        let x1 = emit_conv_relu(&mut g, &head.reduce, &f2)?;
        let pr = emit_conv_relu(&mut g, &head.reduce, &p2)?;
        let pqr = emit_conv_relu(&mut g, &head.reduce, &pq2)?;
        let x2 = avg_pool(&mut g, &x1, "msf.pool2");
        let x3 = avg_pool(&mut g, &x2, "msf.pool4");
        let mut acc: Option<String> = None;
        for (i, xs) in [&x1, &x2, &x3].into_iter().enumerate() {
            let base = format!("msf{}", 1 << i);
            // The 1x1 merge conv over concat[x, tile(P), tile(P_q), cos, cos] as the sum of its
            // slices: the prototype terms are computed once at 1x1 and broadcast (the same
            // function; it also keeps tract's optimizer off a broadcast it cannot rewrite).
            let w = head.shape.width;
            let parts = split_input_channels(&head.merge[i], &[w, w, w, 2]);
            let cp = onnx::cosine_map(
                &mut g,
                xs,
                &pr,
                crate::sgone::COSINE_EPS as f32,
                &format!("{base}.cos_p"),
            )?;
            let cq = onnx::cosine_map(
                &mut g,
                xs,
                &pqr,
                crate::sgone::COSINE_EPS as f32,
                &format!("{base}.cos_pq"),
            )?;
            let cos = concat(&mut g, &[&cp, &cq], &format!("{base}.cosines"));
            let tx = emit_conv(&mut g, &parts[0], None, Activation::None, xs)?;
            let tp = emit_conv(&mut g, &parts[1], None, Activation::None, &pr)?;
            let tq = emit_conv(&mut g, &parts[2], None, Activation::None, &pqr)?;
            let tc = emit_conv(&mut g, &parts[3], None, Activation::None, &cos)?;
            let y = binary(&mut g, "Add", &tx, &tp, &format!("{base}.merge_p"));
            let y = binary(&mut g, "Add", &y, &tq, &format!("{base}.merge_pq"));
            let y = binary(&mut g, "Add", &y, &tc, &format!("{base}.merge_cos"));
            let y = g.node("Relu", &format!("{base}.merge_relu"), &[&y], vec![]);
            let y = emit_conv_relu(&mut g, &head.refine[i], &y)?;
            let y = if i == 0 {
                y
            } else {
                resize_like(&mut g, &y, &x1, &format!("{base}.up"))
            };
            acc = Some(match acc {
                None => y,
                Some(a) => binary(&mut g, "Add", &a, &y, "msf.sum"),
            });
        }
        let mut d = acc.expect("three scales");
        for conv in &head.decoder {
            d = emit_conv_relu(&mut g, conv, &d)?;
        }
        let logits = emit_conv(&mut g, &head.classifier, None, Activation::None, &d)?;
        g.output(&logits, port::LOGITS, &outputs[0].shape)?;
        Ok(g.into_model(
        "DPNet head (reconstruction): query features + prototype + support memory -> 2-class logits",
    ))
    }
}

/// A conv without groups split by input channels into convs over consecutive slices of
/// `sizes` channels; the bias goes with the first slice.
fn split_input_channels(conv: &Conv2d, sizes: &[i64]) -> Vec<Conv2d> {
    let mut start = 0;
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let part = Conv2d {
                name: format!("{}.in{start}", conv.name),
                weight: conv.weight.narrow(1, start, n).contiguous(),
                bias: if i == 0 {
                    conv.bias.as_ref().map(|b| b.shallow_clone())
                } else {
                    None
                },
                stride: conv.stride,
                padding: conv.padding,
                dilation: conv.dilation,
                groups: conv.groups,
            };
            start += n;
            part
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    #[test]
    fn cycle_comparison_keeps_locations_that_come_back_inside_the_mask() {
        // Support memory: location 0 (inside) is [1, 0], location 1 (outside) is [0, 1].
        let mf = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([1, 2, 2]);
        let mm = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        // Query (1 x 3): [0.9, 0.1] and [0.8, 0.2] come back inside and are similar to P
        // (cosines 0.99 and 0.97, mean 0.69); [0.1, 0.9] comes back outside.
        let f = Tensor::from_slice(&[0.9f32, 0.1, 0.8, 0.1, 0.9, 0.2]).view([1, 2, 1, 3]);
        let p = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let (pq, sel) = pseudo_prototype(&f, &p, &mf, &mm);
        let sel: Vec<f32> = Vec::try_from(sel.flatten(0, -1)).unwrap();
        // Location 1 is nearest to the outside location: dropped. Locations 0 and 2 both come
        // back inside and are above the mean similarity to P.
        assert_eq!(sel, vec![1.0, 0.0, 1.0]);
        let pq: Vec<f32> = Vec::try_from(pq.flatten(0, -1)).unwrap();
        assert!(
            (pq[0] - 0.85).abs() < 1e-4 && (pq[1] - 0.15).abs() < 1e-4,
            "{pq:?}"
        );
    }

    #[test]
    fn no_reliable_location_gives_back_the_support_prototype() {
        let mf = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([1, 2, 2]);
        let mm = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        // Every query location is nearest to the outside location.
        let f = Tensor::from_slice(&[0.1f32, 0.2, 0.9, 0.8]).view([1, 2, 1, 2]);
        let p = Tensor::from_slice(&[0.3f32, 0.7]).view([1, 2]);
        let (pq, sel) = pseudo_prototype(&f, &p, &mf, &mm);
        assert_eq!(sel.sum(Kind::Float).double_value(&[]), 0.0);
        assert!((pq - &p).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn a_small_object_keeps_its_best_covered_cell() {
        let mf = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([1, 2, 2]);
        let mm = Tensor::from_slice(&[0.2f32, 0.0]).view([1, 2]);
        let f = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2, 1, 1]);
        let p = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let (_, sel) = pseudo_prototype(&f, &p, &mf, &mm);
        assert_eq!(sel.sum(Kind::Float).double_value(&[]), 1.0);
    }

    #[test]
    fn shapes_losses_and_gradients() {
        tch::manual_seed(5);
        let vs = VarStore::new(Device::Cpu);
        let head = DpNetHead::new(
            &vs.root(),
            DpNetShape {
                feature_channels: 8,
                width: 16,
            },
        );
        let opts = (Kind::Float, Device::Cpu);
        let sf = Tensor::rand([2, 8, 5, 7], opts);
        let qf = Tensor::rand([1, 8, 5, 7], opts);
        let fg = Tensor::rand([2, 40, 56], opts).gt(0.5).to_kind(Kind::Float);
        let (mf, mm) = support_memory(&sf, &fg);
        let g = fss_core::dpnet::MEMORY_GRID as i64;
        assert_eq!(mf.size(), [1, 8, 2 * g * g]);
        assert_eq!(mm.size(), [1, 2 * g * g]);
        let p = Tensor::rand([1, 8], opts);
        let out = head.pass(&qf, &p, &mf, &mm, true);
        assert_eq!(out.logits.size(), [1, 2, 5, 7]);
        assert_eq!(out.aux[2].size(), [1, 2, 2, 2]);
        let ep = crate::panet::EpisodeTensors {
            supports: Tensor::zeros([2, 3, 40, 56], opts),
            support_bg: fg.ones_like().g_sub(&fg),
            support_fg: fg,
            query: Tensor::zeros([1, 3, 40, 56], opts),
            query_label: Tensor::rand([1, 40, 56], opts).gt(0.5).to_kind(Kind::Int64),
        };
        let l = losses(&head, &sf, &qf, &ep);
        assert!(l.query > 0.0 && l.aux > 0.0);
        assert!((l.total.double_value(&[]) - l.query - AUX_WEIGHT * l.aux).abs() < 1e-4);
        l.total.backward();
        for (name, t) in head.named_parameters() {
            assert!(
                t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name} got no gradient"
            );
        }
    }
}
