//! A dependency-free loss-curve PNG: raw loss (light) and its moving average (dark) over
//! iterations, on a linear axis from 0 to the largest loss, with grid lines at quarters.

use image::{Rgb, RgbImage};
use std::path::Path;

const W: u32 = 800;
const H: u32 = 400;
const MARGIN: u32 = 30;

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), color: Rgb<u8>) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        if x >= 0.0 && y >= 0.0 && (x as u32) < W && (y as u32) < H {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

/// Moving average over a trailing window.
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(values.len());
    let mut sum = 0.0;
    for (i, v) in values.iter().enumerate() {
        sum += v;
        if i >= window {
            sum -= values[i - window];
        }
        out.push(sum / (i + 1).min(window) as f64);
    }
    out
}

/// Renders `(iteration, loss)` points into a PNG image.
pub fn render_loss(points: &[(usize, f64)]) -> RgbImage {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (pw, ph) = ((W - 2 * MARGIN) as f64, (H - 2 * MARGIN) as f64);
    let grey = Rgb([200, 200, 200]);
    for q in 0..=4 {
        let y = MARGIN as f64 + ph * q as f64 / 4.0;
        line(&mut img, (MARGIN as f64, y), (MARGIN as f64 + pw, y), grey);
    }
    line(
        &mut img,
        (MARGIN as f64, MARGIN as f64),
        (MARGIN as f64, MARGIN as f64 + ph),
        Rgb([0, 0, 0]),
    );
    if points.is_empty() {
        return img;
    }
    let max_it = points.last().map(|p| p.0).unwrap_or(1).max(1) as f64;
    let max_loss = points
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(1e-9, f64::max);
    let to_xy = |it: usize, v: f64| {
        (
            MARGIN as f64 + pw * it as f64 / max_it,
            MARGIN as f64 + ph * (1.0 - (v / max_loss).clamp(0.0, 1.0)),
        )
    };
    let raw: Vec<f64> = points.iter().map(|p| p.1).collect();
    let smooth = moving_average(&raw, 25);
    for (series, color) in [(&raw, Rgb([160, 190, 240])), (&smooth, Rgb([20, 50, 160]))] {
        for i in 1..points.len() {
            line(
                &mut img,
                to_xy(points[i - 1].0, series[i - 1]),
                to_xy(points[i].0, series[i]),
                color,
            );
        }
    }
    img
}

pub fn write_loss_png(points: &[(usize, f64)], path: &Path) -> anyhow::Result<()> {
    let img = render_loss(points);
    fss_core::fsutil::write_atomic_with(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| fss_core::EdgeError::invalid(tmp, e.to_string()))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_of_constant_is_constant() {
        assert_eq!(moving_average(&[2.0, 2.0, 2.0], 2), vec![2.0, 2.0, 2.0]);
        assert_eq!(moving_average(&[1.0, 3.0, 5.0], 2), vec![1.0, 2.0, 4.0]);
    }

    #[test]
    fn plot_draws_the_curve() {
        let pts: Vec<(usize, f64)> = (1..=50).map(|i| (i, 1.0 / i as f64)).collect();
        let img = render_loss(&pts);
        let dark = img.pixels().filter(|p| p.0 == [20, 50, 160]).count();
        assert!(dark > 100, "{dark}");
    }
}
