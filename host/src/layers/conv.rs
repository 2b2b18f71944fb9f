//! `Conv2d`: a 2-D convolution (any stride, padding, dilation and groups) in tch, and the ONNX
//! attributes of its geometry. The conv's nodes (fp32 `Conv` with a BatchNorm folded in, or int8
//! `QLinearConv`) are written by [`super::conv_bn_act`], the one layer that holds a conv.

use tch::nn::{self, Init};
use tch::Tensor;
use tract_onnx::pb::AttributeProto;

use super::Scope;
use crate::onnx::{attr_int, attr_ints, attr_string};

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Fixed zero padding `[top, left, bottom, right]` (torch/ONNX `pads` order is
    /// `[top, left, bottom, right]` too).
    Explicit([i64; 4]),
    /// TensorFlow "SAME": output = ceil(input / stride); the total padding is computed from the
    /// input size at run time and the odd pixel goes to the bottom/right. ONNX:
    /// `auto_pad = "SAME_UPPER"`.
    TfSame,
}

impl Padding {
    /// Symmetric padding `(h, w)` on both sides, like torch's `padding=(h, w)`.
    pub fn symmetric(h: i64, w: i64) -> Self {
        Padding::Explicit([h, w, h, w])
    }

    /// No padding.
    pub fn none() -> Self {
        Padding::Explicit([0, 0, 0, 0])
    }

    /// The `[top, left, bottom, right]` padding for an input of spatial size `in_hw`.
    pub fn resolve(
        &self,
        in_hw: [i64; 2],
        kernel: [i64; 2],
        stride: [i64; 2],
        dilation: [i64; 2],
    ) -> [i64; 4] {
        match *self {
            Padding::Explicit(p) => p,
            Padding::TfSame => {
                let mut before = [0i64; 2];
                let mut after = [0i64; 2];
                for d in 0..2 {
                    let (i, s) = (in_hw[d], stride[d]);
                    let out = (i + s - 1) / s;
                    let total = ((out - 1) * s + (kernel[d] - 1) * dilation[d] + 1 - i).max(0);
                    before[d] = total / 2;
                    after[d] = total - before[d];
                }
                [before[0], before[1], after[0], after[1]]
            }
        }
    }
}

/// How a layer's weights are initialised when no weight file is loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConvInit {
    /// Kaiming normal, fan-out, ReLU gain (torchvision MobileNetV2 / VGG), bias zero.
    KaimingNormalFanOut,
    /// Kaiming normal, fan-in, ReLU gain, bias zero.
    KaimingNormalFanIn,
    /// PyTorch's `nn.Conv2d` default: weight and bias uniform in ±1/sqrt(fan_in) (the SMCP
    /// code's heads use it).
    TorchDefault,
    /// Xavier (Glorot) uniform, bias zero (the SG-One code's heads).
    XavierUniform,
}

impl ConvInit {
    fn init(self, fan_in: i64, fan_out: i64) -> Init {
        let fan = match self {
            ConvInit::KaimingNormalFanOut => nn::init::FanInOut::FanOut,
            ConvInit::KaimingNormalFanIn => nn::init::FanInOut::FanIn,
            ConvInit::TorchDefault => {
                let b = 1.0 / (fan_in.max(1) as f64).sqrt();
                return Init::Uniform { lo: -b, up: b };
            }
            ConvInit::XavierUniform => {
                let b = (6.0 / ((fan_in + fan_out).max(1) as f64)).sqrt();
                return Init::Uniform { lo: -b, up: b };
            }
        };
        Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan,
            non_linearity: nn::init::NonLinearity::ReLU,
        }
    }
}

/// Construction parameters of a [`Conv2d`].
#[derive(Debug, Clone, Copy)]
pub struct Conv2dConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub kernel: i64,
    pub stride: i64,
    pub padding: Padding,
    pub dilation: i64,
    pub groups: i64,
    pub bias: bool,
    pub init: ConvInit,
}

impl Conv2dConfig {
    /// A `k x k` convolution with torch-style symmetric padding `dilation * (k - 1) / 2`.
    pub fn new(in_channels: i64, out_channels: i64, kernel: i64) -> Self {
        Conv2dConfig {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: Padding::symmetric((kernel - 1) / 2, (kernel - 1) / 2),
            dilation: 1,
            groups: 1,
            bias: false,
            init: ConvInit::KaimingNormalFanOut,
        }
    }
    pub fn stride(mut self, s: i64) -> Self {
        self.stride = s;
        self
    }
    pub fn padding(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }
    /// Sets the dilation and the matching symmetric padding `d * (k - 1) / 2`.
    pub fn dilation(mut self, d: i64) -> Self {
        self.dilation = d;
        let p = d * (self.kernel - 1) / 2;
        self.padding = Padding::symmetric(p, p);
        self
    }
    pub fn groups(mut self, g: i64) -> Self {
        self.groups = g;
        self
    }
    /// Depthwise: `groups = in_channels`.
    pub fn depthwise(mut self) -> Self {
        self.groups = self.in_channels;
        self
    }
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
    pub fn init(mut self, i: ConvInit) -> Self {
        self.init = i;
        self
    }
}

/// 2-D convolution. `weight` is `[out, in / groups, kh, kw]` (OIHW, as in torch and ONNX).
#[derive(Debug)]
pub struct Conv2d {
    /// Relative name (`_blocks.3._depthwise_conv`); parameters are `<name>.weight`, `<name>.bias`.
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: [i64; 2],
    pub padding: Padding,
    pub dilation: [i64; 2],
    pub groups: i64,
}

impl Conv2d {
    pub fn new(scope: &Scope, c: Conv2dConfig) -> Self {
        assert!(
            c.in_channels % c.groups == 0,
            "conv {}: in_channels not divisible by groups",
            scope.name()
        );
        let p = scope.path();
        let fan_in = c.in_channels / c.groups * c.kernel * c.kernel;
        let fan_out = c.out_channels * c.kernel * c.kernel;
        let weight = p.var(
            "weight",
            &[c.out_channels, c.in_channels / c.groups, c.kernel, c.kernel],
            c.init.init(fan_in, fan_out),
        );
        let bias = c.bias.then(|| match c.init {
            ConvInit::TorchDefault => {
                p.var("bias", &[c.out_channels], c.init.init(fan_in, fan_out))
            }
            _ => p.zeros("bias", &[c.out_channels]),
        });
        Conv2d {
            name: scope.name().to_string(),
            weight,
            bias,
            stride: [c.stride, c.stride],
            padding: c.padding,
            dilation: [c.dilation, c.dilation],
            groups: c.groups,
        }
    }

    pub fn in_channels(&self) -> i64 {
        self.weight.size()[1] * self.groups
    }
    pub fn out_channels(&self) -> i64 {
        self.weight.size()[0]
    }
    /// `[kh, kw]`.
    pub fn kernel(&self) -> [i64; 2] {
        let s = self.weight.size();
        [s[2], s[3]]
    }

    pub fn forward(&self, x: &Tensor, _train: bool) -> Tensor {
        self.forward_with(x, &self.weight, self.bias.as_ref())
    }

    /// The conv with this layer's geometry (stride, padding, dilation, groups) but another
    /// weight and bias (int8 simulation: `host::export::quant`).
    pub fn forward_with(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let size = x.size();
        let in_hw = [size[size.len() - 2], size[size.len() - 1]];
        let [t, l, b, r] = self
            .padding
            .resolve(in_hw, self.kernel(), self.stride, self.dilation);
        if t == b && l == r {
            x.conv2d(
                weight,
                bias,
                self.stride,
                [t, l],
                self.dilation,
                self.groups,
            )
        } else {
            x.constant_pad_nd([l, r, t, b]).conv2d(
                weight,
                bias,
                self.stride,
                [0, 0],
                self.dilation,
                self.groups,
            )
        }
    }

    /// The ONNX attributes of this conv's geometry (`Conv` and `QLinearConv` alike):
    /// `kernel_shape`, `strides`, `dilations`, `group`, then the padding
    /// ([`Conv2d::onnx_padding`]).
    pub fn onnx_attributes(&self) -> Vec<AttributeProto> {
        let mut attrs = vec![
            attr_ints("kernel_shape", &self.kernel()),
            attr_ints("strides", &self.stride),
            attr_ints("dilations", &self.dilation),
            attr_int("group", self.groups),
        ];
        attrs.extend(self.onnx_padding());
        attrs
    }

    /// The ONNX padding attributes: explicit `pads` `[top, left, bottom, right]` when they do
    /// not depend on the input size, else `auto_pad = "SAME_UPPER"` (TF "SAME": the odd pixel
    /// at the end), so the graph keeps symbolic H and W.
    pub fn onnx_padding(&self) -> Vec<AttributeProto> {
        let kernel = self.kernel();
        match self.padding {
            Padding::Explicit(p) => vec![attr_ints("pads", &p)],
            Padding::TfSame => {
                let fixed = (0..2).all(|d| {
                    let field = (kernel[d] - 1) * self.dilation[d] + 1;
                    // stride 1: total (k - 1) * d whatever the size; a field no wider than the
                    // stride never pads.
                    self.stride[d] == 1 || field <= self.stride[d]
                });
                if fixed {
                    // Any size gives the same padding; resolve it on a size the stride divides.
                    let probe = [self.stride[0] * 64, self.stride[1] * 64];
                    let p = self
                        .padding
                        .resolve(probe, kernel, self.stride, self.dilation);
                    vec![attr_ints("pads", &p)]
                } else {
                    vec![attr_string("auto_pad", "SAME_UPPER")]
                }
            }
        }
    }

    /// Weights plus bias values.
    pub fn parameter_count(&self) -> i64 {
        super::weight_and_bias_count(&self.weight, self.bias.as_ref())
    }

    pub fn named_parameters(&self, out: &mut Vec<(String, Tensor)>) {
        super::push_weight_and_bias(&self.name, &self.weight, self.bias.as_ref(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_same_padding_is_asymmetric_at_stride_2() {
        // even input, k3 s2: total 1 -> (0, 1)
        assert_eq!(
            Padding::TfSame.resolve([320, 576], [3, 3], [2, 2], [1, 1]),
            [0, 0, 1, 1]
        );
        // k5 s2 on even: total 3 -> (1, 2)
        assert_eq!(
            Padding::TfSame.resolve([80, 144], [5, 5], [2, 2], [1, 1]),
            [1, 1, 2, 2]
        );
        // odd input, k3 s2: total 2 -> (1, 1)
        assert_eq!(
            Padding::TfSame.resolve([417, 417], [3, 3], [2, 2], [1, 1]),
            [1, 1, 1, 1]
        );
        // stride 1: symmetric (k - 1) / 2
        assert_eq!(
            Padding::TfSame.resolve([20, 36], [5, 5], [1, 1], [1, 1]),
            [2, 2, 2, 2]
        );
        // 1x1: none
        assert_eq!(
            Padding::TfSame.resolve([20, 36], [1, 1], [1, 1], [1, 1]),
            [0, 0, 0, 0]
        );
    }
}
