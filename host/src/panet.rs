//! PANet (Wang et al., ICCV 2019; methods.md §3) in tch, for training: masked average pooling at
//! image resolution, cosine x20 scoring, the query loss and the prototype alignment loss (PAR).
//! Inference and evaluation use the canonical scoring of the shared library (`fss_core::prototype`),
//! which a test checks against this implementation.

use tch::{Kind, Reduction, Tensor};

pub const SCALE: f64 = 20.0;
pub const MAP_EPS: f64 = 1e-5;
pub const COSINE_EPS: f64 = 1e-8;
pub const IGNORE: i64 = 255;

/// One 1-way K-shot training episode on the model's device, at input size H x W.
pub struct EpisodeTensors {
    /// [K, 3, H, W] normalised support images.
    pub supports: Tensor,
    /// [K, H, W] float 0/1 support foreground.
    pub support_fg: Tensor,
    /// [K, H, W] float 0/1 support background.
    pub support_bg: Tensor,
    /// [1, 3, H, W] normalised query image.
    pub query: Tensor,
    /// [1, H, W] int64 query label: 0 background, 1 foreground, 255 ignored.
    pub query_label: Tensor,
}

/// Loss terms of one training step.
pub struct Losses {
    pub total: Tensor,
    pub query: f64,
    pub align: f64,
}

impl Losses {
    /// The total to back-propagate and the parts the loss curve records.
    pub fn into_parts(self) -> (Tensor, LossParts) {
        let parts = LossParts {
            loss: self.query + self.align,
            query: self.query,
            align: self.align,
            ..LossParts::default()
        };
        (self.total, parts)
    }
}

/// One training episode's losses as the loss curve (`run.json` history, `loss.csv`) records
/// them, whatever the method; the parts a method does not have stay 0.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossParts {
    /// The total's value.
    pub loss: f64,
    pub query: f64,
    /// PANet's prototype alignment loss.
    pub align: f64,
    /// SMCP's support self-prototype loss.
    pub support: f64,
    /// SMCP's multi-class loss (before its 0.1 weight).
    pub multi_class: f64,
    /// DPNet's auxiliary loss (mean over scales, before its weight).
    pub aux: f64,
}

impl LossParts {
    /// Adds `scale` times `other`'s values (the mean over a batch of episodes).
    pub fn add_scaled(&mut self, other: &LossParts, scale: f64) {
        self.loss += scale * other.loss;
        self.query += scale * other.query;
        self.align += scale * other.align;
        self.support += scale * other.support;
        self.multi_class += scale * other.multi_class;
        self.aux += scale * other.aux;
    }
}

/// MAP (methods.md §2.1): features [K, C, h, w] upsampled to the masks' H x W, pooled under
/// masks [K, H, W] -> [K, C].
pub fn masked_average_pool(features: &Tensor, masks: &Tensor) -> Tensor {
    let (h, w) = (masks.size()[1], masks.size()[2]);
    let up = features.upsample_bilinear2d([h, w], false, None, None);
    let m = masks.unsqueeze(1);
    (up * &m).sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Float)
        / (m.sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Float) + MAP_EPS)
}

/// `SCALE * cos(features, prototype_j)`: features [B, C, h, w], prototypes [P, C] -> [B, P, h, w].
pub fn cosine_logits(features: &Tensor, prototypes: &Tensor) -> Tensor {
    let p = prototypes.size()[0];
    let maps: Vec<Tensor> = (0..p)
        .map(|j| {
            let proto = prototypes.get(j).view([1, -1, 1, 1]);
            Tensor::cosine_similarity(features, &proto, 1, COSINE_EPS)
        })
        .collect();
    Tensor::stack(&maps, 1) * SCALE
}

/// Query logits at feature resolution [1, 2, h, w] and the prototypes [2, C] (bg, fg).
pub fn episode_logits(
    support_features: &Tensor,
    query_features: &Tensor,
    fg: &Tensor,
    bg: &Tensor,
) -> (Tensor, Tensor) {
    let fg_proto = masked_average_pool(support_features, fg).mean_dim(0, true, Kind::Float);
    let bg_proto = masked_average_pool(support_features, bg).mean_dim(0, true, Kind::Float);
    let protos = Tensor::cat(&[bg_proto, fg_proto], 0);
    (cosine_logits(query_features, &protos), protos)
}

/// The training losses of one episode, given encoder features of the supports [K, C, h, w] and
/// of the query [1, C, h, w]. `align` turns PAR on (methods.md §3.5).
pub fn losses(
    support_features: &Tensor,
    query_features: &Tensor,
    ep: &EpisodeTensors,
    align: bool,
) -> Losses {
    let (h, w) = (ep.query_label.size()[1], ep.query_label.size()[2]);
    let (logits, _) = episode_logits(
        support_features,
        query_features,
        &ep.support_fg,
        &ep.support_bg,
    );
    let up = logits.upsample_bilinear2d([h, w], false, None, None);
    let query_loss =
        up.cross_entropy_loss::<Tensor>(&ep.query_label, None, Reduction::Mean, IGNORE, 0.0);
    // Not `+=`: tch's AddAssign adds in place, which would alter `query_loss` itself.
    let mut total = query_loss.shallow_clone();
    let mut align_value = 0.0;
    if align {
        // Predicted query masks at feature resolution (not differentiable), prototypes of the
        // query features under them (differentiable), pooled at feature resolution.
        let pred = logits.argmax(1, false); // [1, h, w]
        let fg_pred = pred.eq(1).to_kind(Kind::Float);
        if fg_pred.sum(Kind::Float).double_value(&[]) > 0.0 {
            let bg_pred = pred.eq(0).to_kind(Kind::Float);
            let pool = |m: &Tensor| {
                let m = m.unsqueeze(1);
                (query_features * &m).sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Float)
                    / (m.sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Float) + MAP_EPS)
            };
            let q_protos = Tensor::cat(&[pool(&bg_pred), pool(&fg_pred)], 0); // [2, C]
            let k = support_features.size()[0];
            let (sh, sw) = (ep.support_fg.size()[1], ep.support_fg.size()[2]);
            let mut acc = Tensor::zeros([], (Kind::Float, support_features.device()));
            for shot in 0..k {
                let s_logits = cosine_logits(&support_features.narrow(0, shot, 1), &q_protos)
                    .upsample_bilinear2d([sh, sw], false, None, None);
                // 1 on foreground, 0 on background, 255 elsewhere.
                let fg = ep.support_fg.narrow(0, shot, 1);
                let bg = ep.support_bg.narrow(0, shot, 1);
                let label = (Tensor::ones_like(&fg) * IGNORE as f64)
                    .where_self(&(fg.gt(0.5).logical_or(&bg.gt(0.5))).logical_not(), &fg)
                    .to_kind(Kind::Int64);
                acc += s_logits.cross_entropy_loss::<Tensor>(
                    &label,
                    None,
                    Reduction::Mean,
                    IGNORE,
                    0.0,
                );
            }
            let align_loss = acc / k as f64;
            align_value = align_loss.double_value(&[]);
            total = total.g_add(&align_loss);
        }
    }
    Losses {
        query: query_loss.double_value(&[]),
        align: align_value,
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_core::prototype::{panet_prototypes, SupportShot};
    use fss_core::tensor::{FeatureMap, Mask};
    use tch::Device;

    fn to_map(t: &Tensor) -> FeatureMap {
        let s = t.size();
        let v: Vec<f32> = Vec::try_from(&t.flatten(0, -1)).unwrap();
        FeatureMap::new(s[1] as usize, s[2] as usize, s[3] as usize, v).unwrap()
    }

    #[test]
    fn tch_scoring_matches_the_shared_canonical_scoring() {
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let sf = Tensor::randn([1, 8, 5, 7], opts);
        let qf = Tensor::randn([1, 8, 5, 7], opts);
        let fg = Tensor::rand([1, 40, 56], opts).gt(0.6).to_kind(Kind::Float);
        let bg = fg.ones_like().g_sub(&fg);
        let (logits, protos) = episode_logits(&sf, &qf, &fg, &bg);

        let mask_data: Vec<f32> = Vec::try_from(&fg.flatten(0, -1)).unwrap();
        let mask = Mask::new(40, 56, mask_data.iter().map(|&v| v as u8).collect()).unwrap();
        let p = panet_prototypes(&[vec![SupportShot::from_foreground(to_map(&sf), mask)]]).unwrap();
        let protos_v: Vec<f32> = Vec::try_from(&protos.flatten(0, -1)).unwrap();
        for (a, b) in protos_v
            .iter()
            .zip(p.background.iter().chain(p.foreground[0].iter()))
        {
            assert!((a - b).abs() < 1e-4, "prototype {a} vs {b}");
        }
        let shared = fss_core::prototype::cosine_logits(&to_map(&qf), &p.ordered(), 20.0).unwrap();
        let diff = to_map(&logits).max_abs_diff(&shared).unwrap();
        assert!(diff < 1e-3, "logits differ by {diff}");
    }

    #[test]
    fn losses_are_finite_and_align_adds() {
        tch::manual_seed(4);
        let opts = (Kind::Float, Device::Cpu);
        let sf = Tensor::randn([2, 8, 4, 4], opts).set_requires_grad(true);
        let qf = Tensor::randn([1, 8, 4, 4], opts).set_requires_grad(true);
        let fg = Tensor::rand([2, 32, 32], opts).gt(0.5).to_kind(Kind::Float);
        let ep = EpisodeTensors {
            supports: Tensor::zeros([2, 3, 32, 32], opts),
            support_bg: fg.ones_like().g_sub(&fg),
            support_fg: fg,
            query: Tensor::zeros([1, 3, 32, 32], opts),
            query_label: Tensor::rand([1, 32, 32], opts).gt(0.5).to_kind(Kind::Int64),
        };
        let l = losses(&sf, &qf, &ep, true);
        assert!(l.query.is_finite() && l.align.is_finite());
        assert!((l.total.double_value(&[]) - l.query - l.align).abs() < 1e-4);
        l.total.backward();
        assert!(qf.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
