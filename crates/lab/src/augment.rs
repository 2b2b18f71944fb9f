//! Training augmentation of one episode image and its label map: a random similarity transform
//! (scale, small rotation, shift; the papers' random scale / crop / rotation), an occasional
//! Gaussian blur, and colour jitter (brightness, contrast, saturation), on top of the sampler's
//! horizontal flips.
//!
//! Every draw is a pure function of the run's seed, the iteration and the image's slot in the
//! episode ([`Augmentation::draw`]), so a resumed run augments exactly as an uninterrupted one.
//! The geometry moves the image (bilinear, the `fill` colour outside) and its labels (nearest,
//! 0 outside) together, so masks stay aligned with pixels.

use fss_core::tensor::Mask;
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// The ranges augmentations are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AugmentSpec {
    /// Scale factor range (drawn log-uniformly); above 1 zooms in (a crop), below 1 out.
    pub scale: [f32; 2],
    /// Largest rotation either way, degrees.
    pub max_rotation_deg: f32,
    /// Largest extra shift either way, as a fraction of the side (on top of the room that
    /// zooming in leaves).
    pub max_shift: f32,
    /// Probability of a Gaussian blur, and its sigma range in pixels.
    pub blur_probability: f32,
    pub blur_sigma: [f32; 2],
    /// Largest relative change of brightness, contrast and saturation.
    pub jitter: f32,
}

impl AugmentSpec {
    /// The settings of `host train --augment standard`.
    pub const STANDARD: AugmentSpec = AugmentSpec {
        scale: [0.8, 1.25],
        max_rotation_deg: 10.0,
        max_shift: 0.05,
        blur_probability: 0.25,
        blur_sigma: [0.5, 1.5],
        jitter: 0.2,
    };
}

/// One image's augmentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    pub scale: f32,
    pub rotation_rad: f32,
    /// Shift of the centre, in fractions of the width and height.
    pub shift: [f32; 2],
    pub blur_sigma: Option<f32>,
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
}

/// SplitMix64: a stateless, well-mixed stream from any 64-bit state.
struct Stream(u64);

impl Stream {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
}

impl Augmentation {
    /// Nothing changes.
    pub const IDENTITY: Augmentation = Augmentation {
        scale: 1.0,
        rotation_rad: 0.0,
        shift: [0.0, 0.0],
        blur_sigma: None,
        brightness: 1.0,
        contrast: 1.0,
        saturation: 1.0,
    };

    /// The augmentation of image `slot` (supports first, then the query) of the episode at
    /// `iteration` of a run seeded `seed`.
    pub fn draw(spec: &AugmentSpec, seed: u64, iteration: usize, slot: usize) -> Augmentation {
        let mut s = Stream(
            seed ^ 0xA076_1D64_78BD_642F
                ^ (iteration as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB)
                ^ (slot as u64).wrapping_mul(0x8EBC_6AF0_9C88_C6E3),
        );
        let scale = s.range(spec.scale[0].ln(), spec.scale[1].ln()).exp();
        let rotation_rad = s
            .range(-spec.max_rotation_deg, spec.max_rotation_deg)
            .to_radians();
        let room = (scale - 1.0).abs() / 2.0 + spec.max_shift;
        let shift = [s.range(-room, room), s.range(-room, room)];
        let blur = s.unit() < spec.blur_probability;
        let sigma = s.range(spec.blur_sigma[0], spec.blur_sigma[1]);
        let j = spec.jitter;
        Augmentation {
            scale,
            rotation_rad,
            shift,
            blur_sigma: blur.then_some(sigma),
            brightness: s.range(1.0 - j, 1.0 + j),
            contrast: s.range(1.0 - j, 1.0 + j),
            saturation: s.range(1.0 - j, 1.0 + j),
        }
    }

    /// The same colours and blur without moving anything (for a support whose object the
    /// geometry would push out of the frame).
    pub fn photometric_only(&self) -> Augmentation {
        Augmentation {
            scale: 1.0,
            rotation_rad: 0.0,
            shift: [0.0, 0.0],
            ..*self
        }
    }

    /// The map from an output pixel centre to its source position (x, y) in pixels, for a
    /// `w` x `h` image (the rotation's sine and cosine computed once per image).
    fn inverse_map(&self, w: f32, h: f32) -> impl Fn(f32, f32) -> (f32, f32) {
        let (cx, cy) = (w / 2.0 + self.shift[0] * w, h / 2.0 + self.shift[1] * h);
        let (sin, cos) = (-self.rotation_rad).sin_cos();
        let scale = self.scale;
        move |x, y| {
            let (dx, dy) = (x - cx, y - cy);
            (
                (cos * dx - sin * dy) / scale + w / 2.0,
                (sin * dx + cos * dy) / scale + h / 2.0,
            )
        }
    }

    /// For an output pixel centre, the source position (x, y) in pixels.
    #[cfg(test)]
    fn source(&self, x: f32, y: f32, w: f32, h: f32) -> (f32, f32) {
        self.inverse_map(w, h)(x, y)
    }

    /// The label map moved by the geometry (nearest; 0 where it comes from outside).
    pub fn warp_labels(&self, labels: &Mask) -> Mask {
        if self.is_still() {
            return labels.clone();
        }
        let (w, h) = (labels.width, labels.height);
        let mut data = vec![0u8; w * h];
        let source = self.inverse_map(w as f32, h as f32);
        for y in 0..h {
            for x in 0..w {
                let (sx, sy) = source(x as f32 + 0.5, y as f32 + 0.5);
                let (ix, iy) = (sx.floor(), sy.floor());
                if ix >= 0.0 && iy >= 0.0 && (ix as usize) < w && (iy as usize) < h {
                    data[y * w + x] = labels.data[iy as usize * w + ix as usize];
                }
            }
        }
        Mask {
            height: h,
            width: w,
            data,
        }
    }

    fn is_still(&self) -> bool {
        self.scale == 1.0 && self.rotation_rad == 0.0 && self.shift == [0.0, 0.0]
    }

    /// The image moved by the geometry (bilinear, `fill` outside), then blurred and jittered.
    pub fn apply_image(&self, image: &RgbImage, fill: [u8; 3]) -> RgbImage {
        let (w, h) = image.dimensions();
        let mut out = if self.is_still() {
            image.clone()
        } else {
            let source = self.inverse_map(w as f32, h as f32);
            RgbImage::from_fn(w, h, |x, y| {
                let (sx, sy) = source(x as f32 + 0.5, y as f32 + 0.5);
                bilinear(image, sx - 0.5, sy - 0.5, fill)
            })
        };
        if let Some(sigma) = self.blur_sigma {
            out = image::imageops::blur(&out, sigma);
        }
        if (self.brightness, self.contrast, self.saturation) != (1.0, 1.0, 1.0) {
            let n = (w * h).max(1) as f32;
            let mean_gray = out.pixels().map(|p| gray(p.0)).sum::<f32>() / n;
            for p in out.pixels_mut() {
                let g = gray(p.0);
                for c in p.0.iter_mut() {
                    let v = *c as f32;
                    let v = g + (v - g) * self.saturation;
                    let v = mean_gray + (v - mean_gray) * self.contrast;
                    *c = (v * self.brightness).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        out
    }
}

fn gray(p: [u8; 3]) -> f32 {
    0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32
}

/// Bilinear sample at (x, y) (pixel centres at integers); outside pixels take `fill`.
fn bilinear(image: &RgbImage, x: f32, y: f32, fill: [u8; 3]) -> image::Rgb<u8> {
    let (w, h) = (image.width() as i64, image.height() as i64);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let at = |xx: i64, yy: i64| -> [f32; 3] {
        if xx < 0 || yy < 0 || xx >= w || yy >= h {
            fill.map(|v| v as f32)
        } else {
            image.get_pixel(xx as u32, yy as u32).0.map(|v| v as f32)
        }
    };
    let (a, b, c, d) = (
        at(x0, y0),
        at(x0 + 1, y0),
        at(x0, y0 + 1),
        at(x0 + 1, y0 + 1),
    );
    let mut out = [0u8; 3];
    for k in 0..3 {
        let top = a[k] + (b[k] - a[k]) * fx;
        let bottom = c[k] + (d[k] - c[k]) * fx;
        out[k] = (top + (bottom - top) * fy).round().clamp(0.0, 255.0) as u8;
    }
    image::Rgb(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_a_function_of_seed_iteration_and_slot_within_the_ranges() {
        let spec = AugmentSpec::STANDARD;
        let a = Augmentation::draw(&spec, 7, 100, 1);
        assert_eq!(a, Augmentation::draw(&spec, 7, 100, 1));
        assert_ne!(a, Augmentation::draw(&spec, 7, 100, 0));
        assert_ne!(a, Augmentation::draw(&spec, 7, 101, 1));
        assert_ne!(a, Augmentation::draw(&spec, 8, 100, 1));
        let mut blurred = 0;
        for it in 0..2000 {
            let a = Augmentation::draw(&spec, 1, it, 0);
            assert!(a.scale >= 0.8 - 1e-6 && a.scale <= 1.25 + 1e-6, "{a:?}");
            assert!(a.rotation_rad.abs() <= 10f32.to_radians() + 1e-6);
            for j in [a.brightness, a.contrast, a.saturation] {
                assert!((0.8..=1.2).contains(&j), "{a:?}");
            }
            blurred += a.blur_sigma.is_some() as usize;
        }
        // 25% of 2,000 draws; a binomial standard deviation is about 19.
        assert!((400..600).contains(&blurred), "{blurred}");
    }

    /// A 40x30 image with a white 10x6 block at columns 8..18, rows 5..11, its mask the block.
    fn scene() -> (RgbImage, Mask) {
        let inside = |x: u32, y: u32| (8..18).contains(&x) && (5..11).contains(&y);
        let img = RgbImage::from_fn(40, 30, |x, y| {
            if inside(x, y) {
                image::Rgb([250, 250, 250])
            } else {
                image::Rgb([10, 20, 30])
            }
        });
        let mut m = Mask::new(30, 40, vec![0; 1200]).unwrap();
        for y in 0..30 {
            for x in 0..40 {
                m.data[y * 40 + x] = inside(x as u32, y as u32) as u8 * 3;
            }
        }
        (img, m)
    }

    #[test]
    fn the_labels_move_with_the_pixels() {
        let (img, labels) = scene();
        for it in 0..50 {
            let a = Augmentation {
                blur_sigma: None,
                brightness: 1.0,
                contrast: 1.0,
                saturation: 1.0,
                ..Augmentation::draw(&AugmentSpec::STANDARD, 3, it, 0)
            };
            let (i, m) = (a.apply_image(&img, [0, 0, 0]), a.warp_labels(&labels));
            assert!(
                m.data.iter().all(|&v| v == 0 || v == 3),
                "labels keep their values"
            );
            // Wherever the label says object, the pixel is (nearly) white, and where it says
            // background away from the block's edge, dark: at most the edge pixels disagree.
            let mut disagree = 0;
            for (p, &l) in i.pixels().zip(&m.data) {
                let bright = p.0[0] > 130;
                disagree += (bright != (l == 3)) as usize;
            }
            let object = m.data.iter().filter(|&&v| v == 3).count();
            assert!(
                disagree <= 2 * (10 + 6) * 2,
                "iteration {it}: {disagree} pixels disagree ({object} object pixels), {a:?}"
            );
        }
    }

    #[test]
    fn a_pure_scale_about_the_centre_maps_the_centre_to_itself() {
        let a = Augmentation {
            scale: 2.0,
            ..Augmentation::IDENTITY
        };
        let (sx, sy) = a.source(20.0, 15.0, 40.0, 30.0);
        assert!((sx - 20.0).abs() < 1e-5 && (sy - 15.0).abs() < 1e-5);
        // Zooming in by 2: an output pixel 10 to the right of the centre comes from 5.
        let (sx, _) = a.source(30.0, 15.0, 40.0, 30.0);
        assert!((sx - 25.0).abs() < 1e-5);
        // Zooming out: the corners come from outside and take the fill colour and label 0.
        let out = Augmentation {
            scale: 0.5,
            ..Augmentation::IDENTITY
        };
        let (img, labels) = scene();
        assert_eq!(
            out.apply_image(&img, [1, 2, 3]).get_pixel(0, 0).0,
            [1, 2, 3]
        );
        assert_eq!(out.warp_labels(&labels).data[0], 0);
    }

    #[test]
    fn the_identity_changes_nothing_and_jitter_keeps_the_geometry() {
        let (img, labels) = scene();
        assert_eq!(Augmentation::IDENTITY.apply_image(&img, [0; 3]), img);
        assert_eq!(Augmentation::IDENTITY.warp_labels(&labels), labels);
        let a = Augmentation::draw(&AugmentSpec::STANDARD, 5, 9, 2).photometric_only();
        assert_eq!(a.warp_labels(&labels), labels);
        assert_eq!(a.apply_image(&img, [0; 3]).dimensions(), img.dimensions());
    }
}
