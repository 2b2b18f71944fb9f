//! torchvision MobileNetV2 (width 1.0), parameter names as in torchvision's state dict.
//!
//! Trunk layer `i` is torchvision `features[i]` for `i` in `0..=17`; `features[18]` (1x1 conv to
//! 1280) is the first layer of the classifier head, followed by global average pooling and
//! `classifier[1]` (Linear 1280 -> 1000; the dropout is not applied).

use super::{FeatureTap, Net};
use crate::layers::{
    Activation, BatchNorm2d, Conv2d, Conv2dConfig, ConvBnAct, GlobalAvgPool, InvertedResidual,
    Layer, Linear, Scope,
};

/// torchvision BatchNorm defaults.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// (expand ratio t, output channels c, repeats n, first stride s), torchvision order.
const SETTINGS: [(i64, i64, usize, i64); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

fn conv_bn_act(s: &Scope, cfg: Conv2dConfig, act: Activation) -> ConvBnAct {
    let out = cfg.out_channels;
    ConvBnAct {
        conv: Conv2d::new(&s.sub("0"), cfg),
        bn: Some(BatchNorm2d::new(&s.sub("1"), out, BN_EPS, BN_MOMENTUM)),
        act,
    }
}

fn inverted_residual(s: &Scope, inp: i64, oup: i64, stride: i64, t: i64) -> InvertedResidual {
    let hidden = inp * t;
    let c = s.sub("conv");
    let mut idx = 0usize;
    let mut next = || {
        let r = idx.to_string();
        idx += 1;
        r
    };
    let expand = (t != 1).then(|| {
        conv_bn_act(
            &c.sub(&next()),
            Conv2dConfig::new(inp, hidden, 1),
            Activation::Relu6,
        )
    });
    let depthwise = conv_bn_act(
        &c.sub(&next()),
        Conv2dConfig::new(hidden, hidden, 3)
            .stride(stride)
            .depthwise(),
        Activation::Relu6,
    );
    let proj_conv = Conv2d::new(&c.sub(&next()), Conv2dConfig::new(hidden, oup, 1));
    let proj_bn = BatchNorm2d::new(&c.sub(&next()), oup, BN_EPS, BN_MOMENTUM);
    InvertedResidual {
        expand,
        depthwise,
        project: ConvBnAct {
            conv: proj_conv,
            bn: Some(proj_bn),
            act: Activation::None,
        },
        residual: stride == 1 && inp == oup,
    }
}

pub(super) fn build(root: &Scope, with_classifier: bool) -> Net {
    let f = root.sub("features");
    let mut trunk = Vec::new();
    trunk.push(Layer::ConvBnAct(conv_bn_act(
        &f.sub("0"),
        Conv2dConfig::new(3, 32, 3).stride(2),
        Activation::Relu6,
    )));
    let mut inp = 32;
    for (t, c, n, s) in SETTINGS {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let idx = trunk.len().to_string();
            let block = inverted_residual(&f.sub(&idx), inp, c, stride, t);
            trunk.push(Layer::InvertedResidual(Box::new(block)));
            inp = c;
        }
    }
    debug_assert_eq!(trunk.len(), 18);
    let taps = vec![
        FeatureTap {
            name: "s4",
            stride: 4,
            channels: 24,
            layer: 3,
        },
        FeatureTap {
            name: "s8",
            stride: 8,
            channels: 32,
            layer: 6,
        },
        FeatureTap {
            name: "s16",
            stride: 16,
            channels: 96,
            layer: 13,
        },
        FeatureTap {
            name: "s32",
            stride: 32,
            channels: 320,
            layer: 17,
        },
    ];
    let head = with_classifier.then(|| {
        vec![
            Layer::ConvBnAct(conv_bn_act(
                &f.sub("18"),
                Conv2dConfig::new(320, 1280, 1),
                Activation::Relu6,
            )),
            Layer::GlobalAvgPool(GlobalAvgPool),
            Layer::Linear(Linear::new(
                &root.sub("classifier").sub("1"),
                1280,
                1000,
                true,
            )),
        ]
    });
    Net { trunk, taps, head }
}
