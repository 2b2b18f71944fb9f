//! The explicit layer set the backbones are built from.
//!
//! Every network in [`crate::backbone`] is a flat list of [`Layer`]s. Each layer holds its own
//! `tch::Tensor` parameters (created through a [`tch::nn::Path`], so they live in a `VarStore`),
//! runs forward in tch, and is plain data that an exporter can walk to emit ONNX nodes: a conv's
//! stride, padding, dilation and groups, a BatchNorm's eps, an activation's kind are all public
//! fields. Parameter names are relative to the backbone root and equal the keys of the source
//! state dict (torchvision / efficientnet-lite-pytorch), e.g. `features.3.conv.1.0.weight`.

use tch::nn::{self, Init};
use tch::Tensor;

/// Names a sub-tree of the parameters: the `nn::Path` the tensors are created under plus the name
/// relative to the backbone root (the state-dict key prefix).
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    path: nn::Path<'a>,
    name: String,
}

impl<'a> Scope<'a> {
    /// The backbone root: relative names start empty whatever `path` is.
    pub fn root(path: &nn::Path<'a>) -> Self {
        Scope {
            path: path.clone(),
            name: String::new(),
        }
    }

    /// A child scope (`s` must not contain `.`).
    pub fn sub(&self, s: &str) -> Scope<'a> {
        let name = if self.name.is_empty() {
            s.to_string()
        } else {
            format!("{}.{s}", self.name)
        };
        Scope {
            path: self.path.sub(s),
            name,
        }
    }

    /// The relative name of this scope (`features.3.conv.1.0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `nn::Path` the tensors are created under.
    pub fn path(&self) -> &nn::Path<'a> {
        &self.path
    }
}

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

    /// Weights plus bias values.
    pub fn parameter_count(&self) -> i64 {
        self.weight.numel() as i64 + self.bias.as_ref().map_or(0, |b| b.numel() as i64)
    }

    pub fn named_parameters(&self, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{}.weight", self.name), self.weight.shallow_clone()));
        if let Some(b) = &self.bias {
            out.push((format!("{}.bias", self.name), b.shallow_clone()));
        }
    }
}

/// BatchNorm over channels (NCHW). Running statistics are non-trainable variables; in training
/// mode (`forward(x, true)`) the batch statistics are used and the running ones updated with
/// `momentum` (torch convention: `running = (1 - momentum) * running + momentum * batch`).
#[derive(Debug)]
pub struct BatchNorm2d {
    /// Relative name; tensors are `<name>.weight`, `.bias`, `.running_mean`, `.running_var`.
    pub name: String,
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f64,
    pub momentum: f64,
}

impl BatchNorm2d {
    pub fn new(scope: &Scope, channels: i64, eps: f64, momentum: f64) -> Self {
        let p = scope.path();
        BatchNorm2d {
            name: scope.name().to_string(),
            weight: p.ones("weight", &[channels]),
            bias: p.zeros("bias", &[channels]),
            running_mean: p.zeros_no_train("running_mean", &[channels]),
            running_var: p.ones_no_train("running_var", &[channels]),
            eps,
            momentum,
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.momentum,
            self.eps,
            true,
        )
    }

    pub fn named_parameters(&self, out: &mut Vec<(String, Tensor)>) {
        for (n, t) in [
            ("weight", &self.weight),
            ("bias", &self.bias),
            ("running_mean", &self.running_mean),
            ("running_var", &self.running_var),
        ] {
            out.push((format!("{}.{n}", self.name), t.shallow_clone()));
        }
    }
}

/// Point-wise activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    /// `min(max(x, 0), 6)` (ONNX: `Clip(0, 6)`).
    Relu6,
}

impl Activation {
    pub fn forward(&self, x: Tensor) -> Tensor {
        match self {
            Activation::None => x,
            Activation::Relu => x.relu(),
            Activation::Relu6 => x.relu6(),
        }
    }
}

/// Conv, then optional BatchNorm, then activation.
#[derive(Debug)]
pub struct ConvBnAct {
    pub conv: Conv2d,
    pub bn: Option<BatchNorm2d>,
    pub act: Activation,
}

impl ConvBnAct {
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.conv.forward(x, train);
        let y = match &self.bn {
            Some(bn) => bn.forward(&y, train),
            None => y,
        };
        self.act.forward(y)
    }

    pub fn out_channels(&self) -> i64 {
        self.conv.out_channels()
    }

    pub fn named_parameters(&self, out: &mut Vec<(String, Tensor)>) {
        self.conv.named_parameters(out);
        if let Some(bn) = &self.bn {
            bn.named_parameters(out);
        }
    }
}

/// MobileNetV2 / EfficientNet inverted residual (MBConv without squeeze-excitation):
/// optional 1x1 expansion, depthwise conv, linear 1x1 projection, identity shortcut when
/// `residual` (stride 1 and equal channel counts).
#[derive(Debug)]
pub struct InvertedResidual {
    pub expand: Option<ConvBnAct>,
    pub depthwise: ConvBnAct,
    pub project: ConvBnAct,
    pub residual: bool,
}

impl InvertedResidual {
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = match &self.expand {
            Some(e) => e.forward(x, train),
            None => x.shallow_clone(),
        };
        let h = self.depthwise.forward(&h, train);
        let h = self.project.forward(&h, train);
        if self.residual {
            h + x
        } else {
            h
        }
    }

    pub fn out_channels(&self) -> i64 {
        self.project.out_channels()
    }

    pub fn named_parameters(&self, out: &mut Vec<(String, Tensor)>) {
        if let Some(e) = &self.expand {
            e.named_parameters(out);
        }
        self.depthwise.named_parameters(out);
        self.project.named_parameters(out);
    }
}

/// Max pooling with symmetric padding `[h, w]` (torch semantics: padded cells never win).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    pub kernel: [i64; 2],
    pub stride: [i64; 2],
    pub padding: [i64; 2],
    pub ceil_mode: bool,
}

impl MaxPool2d {
    pub fn new(kernel: i64, stride: i64, padding: i64) -> Self {
        MaxPool2d {
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [padding; 2],
            ceil_mode: false,
        }
    }

    pub fn forward(&self, x: &Tensor, _train: bool) -> Tensor {
        x.max_pool2d(
            self.kernel,
            self.stride,
            self.padding,
            [1, 1],
            self.ceil_mode,
        )
    }
}

/// Fully connected layer on `[N, in]` (a 4-D input is flattened from dim 1 first).
/// `weight` is `[out, in]` (ONNX `Gemm` with `transB = 1`).
#[derive(Debug)]
pub struct Linear {
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// torchvision-style init: weight ~ N(0, 0.01), bias 0.
    pub fn new(scope: &Scope, in_features: i64, out_features: i64, bias: bool) -> Self {
        let p = scope.path();
        Linear {
            name: scope.name().to_string(),
            weight: p.var(
                "weight",
                &[out_features, in_features],
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.01,
                },
            ),
            bias: bias.then(|| p.zeros("bias", &[out_features])),
        }
    }

    pub fn forward(&self, x: &Tensor, _train: bool) -> Tensor {
        let x = if x.dim() > 2 {
            x.flatten(1, -1)
        } else {
            x.shallow_clone()
        };
        x.linear(&self.weight, self.bias.as_ref())
    }

    /// Weights plus bias values.
    pub fn parameter_count(&self) -> i64 {
        self.weight.numel() as i64 + self.bias.as_ref().map_or(0, |b| b.numel() as i64)
    }

    pub fn named_parameters(&self, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{}.weight", self.name), self.weight.shallow_clone()));
        if let Some(b) = &self.bias {
            out.push((format!("{}.bias", self.name), b.shallow_clone()));
        }
    }
}

/// One step of a backbone. The trunk and the classifier head are `Vec<Layer>` run in order.
#[derive(Debug)]
pub enum Layer {
    ConvBnAct(ConvBnAct),
    InvertedResidual(Box<InvertedResidual>),
    MaxPool2d(MaxPool2d),
    /// Mean over H and W: `[N, C, H, W] -> [N, C]` (ONNX: `GlobalAveragePool` + `Flatten`).
    GlobalAvgPool,
    Linear(Linear),
}

impl Layer {
    /// `train`: BatchNorm uses (and updates) batch statistics. Dropout is never applied.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Layer::ConvBnAct(l) => l.forward(x, train),
            Layer::InvertedResidual(l) => l.forward(x, train),
            Layer::MaxPool2d(l) => l.forward(x, train),
            Layer::GlobalAvgPool => x.mean_dim([2i64, 3].as_slice(), false, x.kind()),
            Layer::Linear(l) => l.forward(x, train),
        }
    }

    /// Appends `(relative name, tensor)` for every parameter and buffer (shallow clones).
    pub fn named_parameters(&self, out: &mut Vec<(String, Tensor)>) {
        match self {
            Layer::ConvBnAct(l) => l.named_parameters(out),
            Layer::InvertedResidual(l) => l.named_parameters(out),
            Layer::Linear(l) => l.named_parameters(out),
            Layer::MaxPool2d(_) | Layer::GlobalAvgPool => {}
        }
    }

    /// Output channels when the layer changes them (`None` for pools, which keep them).
    pub fn out_channels(&self) -> Option<i64> {
        match self {
            Layer::ConvBnAct(l) => Some(l.out_channels()),
            Layer::InvertedResidual(l) => Some(l.out_channels()),
            Layer::Linear(l) => Some(l.weight.size()[0]),
            Layer::MaxPool2d(_) | Layer::GlobalAvgPool => None,
        }
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
