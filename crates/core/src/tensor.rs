//! A plain CHW feature map: the unit of exchange between backbones (tch or tract) and the
//! shared scoring code.

use crate::error::{EdgeError, Result};

/// Channels x height x width, row-major (`data[(c * height + y) * width + x]`), batch 1.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMap {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl FeatureMap {
    pub fn new(channels: usize, height: usize, width: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != channels * height * width {
            return Err(EdgeError::input(format!(
                "feature map of shape {channels}x{height}x{width} needs {} values, got {}",
                channels * height * width,
                data.len()
            )));
        }
        Ok(FeatureMap {
            channels,
            height,
            width,
            data,
        })
    }

    pub fn zeros(channels: usize, height: usize, width: usize) -> Self {
        FeatureMap {
            channels,
            height,
            width,
            data: vec![0.0; channels * height * width],
        }
    }

    #[inline]
    pub fn plane(&self, c: usize) -> &[f32] {
        let n = self.height * self.width;
        &self.data[c * n..(c + 1) * n]
    }

    #[inline]
    pub fn plane_mut(&mut self, c: usize) -> &mut [f32] {
        let n = self.height * self.width;
        &mut self.data[c * n..(c + 1) * n]
    }

    #[inline]
    pub fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.height + y) * self.width + x]
    }

    /// Largest absolute element-wise difference to another map of the same shape.
    pub fn max_abs_diff(&self, other: &FeatureMap) -> Result<f32> {
        if (self.channels, self.height, self.width) != (other.channels, other.height, other.width) {
            return Err(EdgeError::input(format!(
                "shape mismatch: {}x{}x{} vs {}x{}x{}",
                self.channels, self.height, self.width, other.channels, other.height, other.width
            )));
        }
        Ok(self
            .data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max))
    }
}

/// A binary (or label) mask at some resolution, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl Mask {
    pub fn new(height: usize, width: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != height * width {
            return Err(EdgeError::input(format!(
                "mask of {height}x{width} needs {} values, got {}",
                height * width,
                data.len()
            )));
        }
        Ok(Mask {
            height,
            width,
            data,
        })
    }

    /// Number of pixels with a non-zero value.
    pub fn count_nonzero(&self) -> usize {
        self.data.iter().filter(|&&v| v != 0).count()
    }

    /// `1` where the value equals `label`, else `0`.
    pub fn binary_of(&self, label: u8) -> Mask {
        Mask {
            height: self.height,
            width: self.width,
            data: self.data.iter().map(|&v| (v == label) as u8).collect(),
        }
    }

    /// `1` where the value is non-zero, else `0`.
    pub fn binarized(&self) -> Mask {
        Mask {
            height: self.height,
            width: self.width,
            data: self.data.iter().map(|&v| (v != 0) as u8).collect(),
        }
    }
}
