//! Pools: max pooling and the global average, in tch and as ONNX nodes.

use tch::Tensor;

use crate::onnx::{attr_int, attr_ints, GraphBuilder};

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

    /// `MaxPool` (symmetric pads, no dilation) named `base`; returns the output tensor name.
    pub fn emit(&self, g: &mut GraphBuilder, x: &str, base: &str) -> String {
        let [ph, pw] = self.padding;
        let attrs = vec![
            attr_ints("kernel_shape", &self.kernel),
            attr_ints("strides", &self.stride),
            attr_ints("pads", &[ph, pw, ph, pw]),
            attr_int("ceil_mode", self.ceil_mode as i64),
        ];
        g.node("MaxPool", base, &[x], attrs)
    }
}

/// Mean over H and W: `[N, C, H, W] -> [N, C]` (ONNX: `GlobalAveragePool` + `Flatten`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalAvgPool;

impl GlobalAvgPool {
    pub fn forward(&self, x: &Tensor, _train: bool) -> Tensor {
        x.mean_dim([2i64, 3].as_slice(), false, x.kind())
    }

    /// `GlobalAveragePool` named `base`, then `Flatten(axis 1)`; returns the output tensor name.
    pub fn emit(&self, g: &mut GraphBuilder, x: &str, base: &str) -> String {
        let y = g.node("GlobalAveragePool", base, &[x], vec![]);
        g.node(
            "Flatten",
            &format!("{base}.flatten"),
            &[&y],
            vec![attr_int("axis", 1)],
        )
    }
}
