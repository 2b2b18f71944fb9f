//! The u8 quantization every int8 graph uses: a tensor's calibrated [`Range`], its asymmetric
//! per-tensor [`QParams`], and quantize-dequantize in tch ([`fake_quant`]), as ONNX
//! `QuantizeLinear` + `DequantizeLinear` compute it.

use tch::Tensor;

/// Min and max seen of one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

impl Range {
    pub const EMPTY: Range = Range {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
    };

    pub(crate) fn update(&mut self, t: &Tensor) {
        let lo = t.min().double_value(&[]) as f32;
        let hi = t.max().double_value(&[]) as f32;
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
    }
}

/// u8 asymmetric quantization parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: u8,
}

impl QParams {
    /// `scale = (max - min) / 255`, `zero_point = round(-min / scale)` on the range widened to
    /// contain 0. A degenerate (empty or all-zero) range gets scale 1, zero point 0.
    pub fn from_range(r: Range) -> QParams {
        let min = r.min.min(0.0);
        let max = r.max.max(0.0);
        let scale = (max - min) / 255.0;
        if !(scale.is_finite() && scale > 0.0) {
            return QParams {
                scale: 1.0,
                zero_point: 0,
            };
        }
        let zp = (-min / scale).round().clamp(0.0, 255.0) as u8;
        QParams {
            scale,
            zero_point: zp,
        }
    }
}

/// u8 quantize-dequantize in tch (round half to even, as ONNX QuantizeLinear).
pub fn fake_quant(t: &Tensor, q: QParams) -> Tensor {
    let (s, zp) = (q.scale as f64, q.zero_point as f64);
    ((t / s).round() + zp).clamp(0.0, 255.0).g_sub_scalar(zp) * s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qparams_contain_zero_and_span_the_range() {
        let q = QParams::from_range(Range {
            min: -1.0,
            max: 3.0,
        });
        assert!((q.scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(q.zero_point, 64);
        let q = QParams::from_range(Range { min: 0.5, max: 6.0 });
        assert_eq!(q.zero_point, 0);
        assert!((q.scale - 6.0 / 255.0).abs() < 1e-7);
        let q = QParams::from_range(Range::EMPTY);
        assert_eq!((q.scale, q.zero_point), (1.0, 0));
    }
}
