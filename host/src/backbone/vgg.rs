//! VGG-16, PANet variant (docs methods.md §2.4, PANet column, `PANet:models/vgg.py`):
//! the 13 convs of torchvision `vgg16`, pool1-3 MaxPool k3 s2 p1, pool4 MaxPool k3 s1 p1,
//! conv5_x with dilation 2 (padding 2), no ReLU after conv5_3, no pool5; 512 channels at stride 8
//! (417 -> 209 -> 105 -> 53).
//!
//! Parameters are named like torchvision's `vgg16` state dict (`features.N.weight`/`.bias` with
//! N = 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), so a converted torchvision file loads
//! directly. Without one, convs get Kaiming-normal weights (fan-out, ReLU gain, as torchvision's
//! VGG init) and zero biases.

use super::{FeatureTap, Net};
use crate::layers::{
    Activation, Conv2d, Conv2dConfig, ConvBnAct, ConvInit, Layer, MaxPool2d, Scope,
};

/// One entry of the layer plan: a conv (in, out, dilation, relu) or a pool (kernel, stride, pad).
enum Item {
    Conv(i64, i64, i64, bool),
    Pool(i64, i64, i64),
}

/// The PANet layout; positions match torchvision `vgg16().features` indices (ReLUs take the odd
/// slots there, so conv k sits at the index computed in `build`).
const PLAN: [Item; 17] = [
    Item::Conv(3, 64, 1, true),
    Item::Conv(64, 64, 1, true),
    Item::Pool(3, 2, 1),
    Item::Conv(64, 128, 1, true),
    Item::Conv(128, 128, 1, true),
    Item::Pool(3, 2, 1),
    Item::Conv(128, 256, 1, true),
    Item::Conv(256, 256, 1, true),
    Item::Conv(256, 256, 1, true),
    Item::Pool(3, 2, 1),
    Item::Conv(256, 512, 1, true),
    Item::Conv(512, 512, 1, true),
    Item::Conv(512, 512, 1, true),
    Item::Pool(3, 1, 1),
    Item::Conv(512, 512, 2, true),
    Item::Conv(512, 512, 2, true),
    Item::Conv(512, 512, 2, false),
];

/// torchvision `features` indices of the 13 convs.
pub const TORCHVISION_CONV_INDICES: [usize; 13] = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];

pub(super) fn build(root: &Scope) -> Net {
    let f = root.sub("features");
    let mut trunk = Vec::new();
    let mut tv_index = 0usize; // index in torchvision's features Sequential
    for item in PLAN.iter() {
        match *item {
            Item::Conv(inp, out, dilation, relu) => {
                let cfg = Conv2dConfig::new(inp, out, 3)
                    .dilation(dilation)
                    .bias(true)
                    .init(ConvInit::KaimingNormalFanOut);
                trunk.push(Layer::ConvBnAct(ConvBnAct {
                    conv: Conv2d::new(&f.sub(&tv_index.to_string()), cfg),
                    bn: None,
                    act: if relu {
                        Activation::Relu
                    } else {
                        Activation::None
                    },
                }));
                tv_index += 2; // conv + ReLU in torchvision
            }
            Item::Pool(k, s, p) => {
                trunk.push(Layer::MaxPool2d(MaxPool2d::new(k, s, p)));
                tv_index += 1;
            }
        }
    }
    let taps = vec![
        // conv3_3 (after ReLU), before pool3.
        FeatureTap {
            name: "s4",
            stride: 4,
            channels: 256,
            layer: 8,
        },
        // conv5_3, no ReLU.
        FeatureTap {
            name: "s8",
            stride: 8,
            channels: 512,
            layer: 16,
        },
    ];
    Net {
        trunk,
        taps,
        head: None,
    }
}
