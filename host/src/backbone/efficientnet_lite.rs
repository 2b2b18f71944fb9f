//! EfficientNet-Lite0 as in PyPI `efficientnet-lite-pytorch` (lukemelas' EfficientNet-PyTorch
//! with the Lite changes): no squeeze-excitation, ReLU6, stem (32) and head (1280) not scaled,
//! TensorFlow "SAME" padding (asymmetric at stride 2), BatchNorm eps 1e-3 and momentum 0.01
//! (TensorFlow's 0.99 in torch's convention). Parameter names as in its state dict (`_conv_stem`,
//! `_bn0`, `_blocks.N._expand_conv`, ..., `_conv_head`, `_bn1`, `_fc`).
//!
//! Trunk: layer 0 is the stem (conv, BN, ReLU6), layer `i + 1` is `_blocks[i]` (16 blocks).
//! Stride 16 is the output of `_blocks[10]` (the last 112-channel block), i.e. trunk layer 11.
//! Drop-connect (stochastic depth, rate 0.2 in the reference's training) is not applied.

use super::{FeatureTap, Net};
use crate::layers::{
    Activation, BatchNorm2d, Conv2d, Conv2dConfig, ConvBnAct, GlobalAvgPool, InvertedResidual,
    Layer, Linear, Padding, Scope,
};

pub const BN_EPS: f64 = 1e-3;
pub const BN_MOMENTUM: f64 = 0.01;

/// Block groups of Lite0 (width 1.0, depth 1.0): (repeats, kernel, first stride, expand ratio,
/// input channels, output channels), from `efficientnet_lite()` in the reference.
const BLOCKS: [(usize, i64, i64, i64, i64, i64); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// A conv config with the reference's padding: none for 1x1 stride 1, TensorFlow "SAME" otherwise.
fn cfg(inp: i64, out: i64, kernel: i64, stride: i64) -> Conv2dConfig {
    let padding = if kernel == 1 && stride == 1 {
        Padding::none()
    } else {
        Padding::TfSame
    };
    Conv2dConfig::new(inp, out, kernel)
        .stride(stride)
        .padding(padding)
}

fn conv_bn(conv_scope: &Scope, bn_scope: &Scope, cfg: Conv2dConfig, act: Activation) -> ConvBnAct {
    let out = cfg.out_channels;
    ConvBnAct {
        conv: Conv2d::new(conv_scope, cfg),
        bn: Some(BatchNorm2d::new(bn_scope, out, BN_EPS, BN_MOMENTUM)),
        act,
    }
}

fn mbconv(
    s: &Scope,
    inp: i64,
    oup: i64,
    kernel: i64,
    stride: i64,
    expand_ratio: i64,
) -> InvertedResidual {
    let hidden = inp * expand_ratio;
    let expand = (expand_ratio != 1).then(|| {
        conv_bn(
            &s.sub("_expand_conv"),
            &s.sub("_bn0"),
            cfg(inp, hidden, 1, 1),
            Activation::Relu6,
        )
    });
    let depthwise = conv_bn(
        &s.sub("_depthwise_conv"),
        &s.sub("_bn1"),
        cfg(hidden, hidden, kernel, stride).depthwise(),
        Activation::Relu6,
    );
    let project = conv_bn(
        &s.sub("_project_conv"),
        &s.sub("_bn2"),
        cfg(hidden, oup, 1, 1),
        Activation::None,
    );
    InvertedResidual {
        expand,
        depthwise,
        project,
        residual: stride == 1 && inp == oup,
    }
}

pub(super) fn build(root: &Scope, with_classifier: bool) -> Net {
    let mut trunk = Vec::new();
    trunk.push(Layer::ConvBnAct(conv_bn(
        &root.sub("_conv_stem"),
        &root.sub("_bn0"),
        cfg(3, 32, 3, 2),
        Activation::Relu6,
    )));
    let blocks = root.sub("_blocks");
    let mut idx = 0usize;
    for (repeats, k, s, e, i, o) in BLOCKS {
        for r in 0..repeats {
            let (inp, stride) = if r == 0 { (i, s) } else { (o, 1) };
            let block = mbconv(&blocks.sub(&idx.to_string()), inp, o, k, stride, e);
            trunk.push(Layer::InvertedResidual(Box::new(block)));
            idx += 1;
        }
    }
    debug_assert_eq!(idx, 16);
    // Trunk layer index = block index + 1 (layer 0 is the stem).
    let taps = vec![
        FeatureTap {
            name: "s4",
            stride: 4,
            channels: 24,
            layer: 2 + 1,
        },
        FeatureTap {
            name: "s8",
            stride: 8,
            channels: 40,
            layer: 4 + 1,
        },
        FeatureTap {
            name: "s16",
            stride: 16,
            channels: 112,
            layer: STRIDE16_BLOCK + 1,
        },
        FeatureTap {
            name: "s32",
            stride: 32,
            channels: 320,
            layer: 15 + 1,
        },
    ];
    let head = with_classifier.then(|| {
        vec![
            Layer::ConvBnAct(conv_bn(
                &root.sub("_conv_head"),
                &root.sub("_bn1"),
                cfg(320, 1280, 1, 1),
                Activation::Relu6,
            )),
            Layer::GlobalAvgPool(GlobalAvgPool),
            Layer::Linear(Linear::new(&root.sub("_fc"), 1280, 1000, true)),
        ]
    });
    Net { trunk, taps, head }
}

/// Index in `_blocks` whose output is the stride-16 feature map (112 channels).
pub const STRIDE16_BLOCK: usize = 10;
