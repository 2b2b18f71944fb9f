//! Camera pixel formats and their conversion to RGB. Compiled without the `camera` feature so
//! the conversions are unit-tested on machines without a V4L2 device.
//!
//! Supported formats: `MJPG` (each buffer one JPEG, decoded with `image`'s decoder) and `YUYV`
//! (YUV 4:2:2 packed `Y0 U Y1 V`, BT.601 limited range, the format every UVC webcam offers).
//! Anything else is refused with the list of what the device offers.

use fss_core::error::{EdgeError, Result};
use image::RgbImage;

/// A pixel format `edge run` can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraFormat {
    Mjpeg,
    Yuyv,
}

impl CameraFormat {
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            CameraFormat::Mjpeg => *b"MJPG",
            CameraFormat::Yuyv => *b"YUYV",
        }
    }

    pub fn from_fourcc(code: [u8; 4]) -> Option<CameraFormat> {
        match &code {
            b"MJPG" => Some(CameraFormat::Mjpeg),
            b"YUYV" => Some(CameraFormat::Yuyv),
            _ => None,
        }
    }

    /// Parses a config value: `mjpeg`/`mjpg` or `yuyv` (any case).
    pub fn parse(s: &str) -> Result<CameraFormat> {
        match s.to_ascii_lowercase().as_str() {
            "mjpeg" | "mjpg" => Ok(CameraFormat::Mjpeg),
            "yuyv" | "yuy2" => Ok(CameraFormat::Yuyv),
            other => Err(EdgeError::input(format!(
                "unknown pixel format '{other}': edge decodes mjpeg and yuyv"
            ))),
        }
    }

    /// Decodes one captured buffer of a `width` x `height` frame (`stride` bytes per row for
    /// YUYV; 0 = packed).
    pub fn decode(self, data: &[u8], width: u32, height: u32, stride: usize) -> Result<RgbImage> {
        match self {
            CameraFormat::Mjpeg => decode_mjpeg(data),
            CameraFormat::Yuyv => yuyv_to_rgb(data, width, height, stride),
        }
    }
}

/// Renders a FourCC for messages (`MJPG`, `YUYV`, or hex for unprintable codes).
pub fn fourcc_text(code: [u8; 4]) -> String {
    if code.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        String::from_utf8_lossy(&code).trim_end().to_string()
    } else {
        format!("0x{:08x}", u32::from_le_bytes(code))
    }
}

/// Chooses the format to capture in: `preferred` when the device offers it, else MJPEG (less
/// USB bandwidth at large sizes), else YUYV. Errors name the formats the device offers.
pub fn choose_format(offered: &[[u8; 4]], preferred: Option<CameraFormat>) -> Result<CameraFormat> {
    let has = |f: CameraFormat| offered.contains(&f.fourcc());
    let list = || {
        let v: Vec<String> = offered.iter().map(|c| fourcc_text(*c)).collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    if let Some(p) = preferred {
        if has(p) {
            return Ok(p);
        }
        return Err(EdgeError::input(format!(
            "the camera does not offer pixel format {} (it offers: {})",
            fourcc_text(p.fourcc()),
            list()
        )));
    }
    [CameraFormat::Mjpeg, CameraFormat::Yuyv]
        .into_iter()
        .find(|f| has(*f))
        .ok_or_else(|| {
            EdgeError::input(format!(
                "unknown pixel format: the camera offers {} and edge decodes only MJPG and YUYV",
                list()
            ))
        })
}

/// One JPEG buffer to RGB.
pub fn decode_mjpeg(data: &[u8]) -> Result<RgbImage> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(EdgeError::input(format!(
            "camera buffer of {} bytes is not a JPEG (no SOI marker)",
            data.len()
        )));
    }
    image::load_from_memory_with_format(data, image::ImageFormat::Jpeg)
        .map(|i| i.to_rgb8())
        .map_err(|e| EdgeError::input(format!("corrupt MJPEG frame: {e}")))
}

#[inline]
fn clamp_u8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// BT.601 limited-range YCbCr to RGB in fixed point (x256), as V4L2's default YUYV colourspace.
#[inline]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (y as i32 - 16).max(0) * 298;
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    [
        clamp_u8((c + 409 * e + 128) >> 8),
        clamp_u8((c - 100 * d - 208 * e + 128) >> 8),
        clamp_u8((c + 516 * d + 128) >> 8),
    ]
}

/// Packed YUYV (`Y0 U Y1 V` per two pixels) to RGB. `stride` is the row length in bytes
/// (0 = `2 * width`); the width must be even.
pub fn yuyv_to_rgb(data: &[u8], width: u32, height: u32, stride: usize) -> Result<RgbImage> {
    if width == 0 || height == 0 || !width.is_multiple_of(2) {
        return Err(EdgeError::input(format!(
            "YUYV frame of {width}x{height}: the width must be even and non-zero"
        )));
    }
    let row = 2 * width as usize;
    let stride = if stride == 0 { row } else { stride };
    if stride < row {
        return Err(EdgeError::input(format!(
            "YUYV stride {stride} is shorter than a row of {width} pixels ({row} bytes)"
        )));
    }
    let need = stride * (height as usize - 1) + row;
    if data.len() < need {
        return Err(EdgeError::input(format!(
            "YUYV buffer of {} bytes is too short for {width}x{height} (need {need})",
            data.len()
        )));
    }
    let mut out = RgbImage::new(width, height);
    let buf: &mut [u8] = &mut out;
    for y in 0..height as usize {
        let src = &data[y * stride..y * stride + row];
        let dst = &mut buf[y * 3 * width as usize..(y + 1) * 3 * width as usize];
        for (s, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(6)) {
            let (y0, u, y1, v) = (s[0], s[1], s[2], s[3]);
            d[..3].copy_from_slice(&yuv_to_rgb(y0, u, v));
            d[3..].copy_from_slice(&yuv_to_rgb(y1, u, v));
        }
    }
    Ok(out)
}

/// RGB to packed YUYV (BT.601 limited range), the inverse of [`yuyv_to_rgb`] up to chroma
/// subsampling: used to synthesise camera buffers in tests.
pub fn rgb_to_yuyv(image: &RgbImage) -> Vec<u8> {
    let (w, h) = image.dimensions();
    let mut out = Vec::with_capacity((w * h * 2) as usize);
    let yuv = |p: &image::Rgb<u8>| {
        let [r, g, b] = p.0.map(|v| v as i32);
        let y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16;
        let u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
        let v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
        (clamp_u8(y), clamp_u8(u), clamp_u8(v))
    };
    for y in 0..h {
        for x in (0..w).step_by(2) {
            let (y0, u0, v0) = yuv(image.get_pixel(x, y));
            let (y1, u1, v1) = yuv(image.get_pixel((x + 1).min(w - 1), y));
            out.extend_from_slice(&[
                y0,
                ((u0 as u16 + u1 as u16) / 2) as u8,
                y1,
                ((v0 as u16 + v1 as u16) / 2) as u8,
            ]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_reference_colours() {
        // Limited-range black, white and the BT.601 primaries.
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
        let red = yuv_to_rgb(81, 90, 240);
        assert!(red[0] >= 250 && red[1] <= 3 && red[2] <= 3, "{red:?}");
        let blue = yuv_to_rgb(41, 240, 110);
        assert!(blue[2] >= 250 && blue[0] <= 3 && blue[1] <= 3, "{blue:?}");
    }

    #[test]
    fn yuyv_round_trip_on_a_gradient() {
        let img = RgbImage::from_fn(8, 4, |x, y| {
            image::Rgb([(x * 30) as u8, (y * 60) as u8, 128])
        });
        let yuyv = rgb_to_yuyv(&img);
        assert_eq!(yuyv.len(), 8 * 4 * 2);
        let back = yuyv_to_rgb(&yuyv, 8, 4, 0).unwrap();
        // Chroma is shared by pixel pairs: neighbours differ by 30 in red only.
        for (a, b) in img.pixels().zip(back.pixels()) {
            for c in 0..3 {
                assert!((a[c] as i32 - b[c] as i32).abs() <= 20, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn yuyv_honours_stride_and_rejects_short_buffers() {
        let img = RgbImage::from_pixel(4, 2, image::Rgb([200, 100, 50]));
        let packed = rgb_to_yuyv(&img);
        let mut padded = Vec::new();
        for row in packed.chunks(8) {
            padded.extend_from_slice(row);
            padded.extend_from_slice(&[0xAA; 4]);
        }
        let a = yuyv_to_rgb(&packed, 4, 2, 0).unwrap();
        let b = yuyv_to_rgb(&padded, 4, 2, 12).unwrap();
        assert_eq!(a, b);
        let err = yuyv_to_rgb(&packed[..10], 4, 2, 0).unwrap_err().to_string();
        assert!(err.contains("too short"), "{err}");
        assert!(yuyv_to_rgb(&packed, 3, 2, 0).is_err());
    }

    #[test]
    fn mjpeg_decodes_and_rejects_garbage() {
        let img = RgbImage::from_pixel(16, 8, image::Rgb([10, 200, 30]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&img)
            .unwrap();
        let back = decode_mjpeg(&jpeg).unwrap();
        assert_eq!(back.dimensions(), (16, 8));
        assert!((back.get_pixel(5, 5)[1] as i32 - 200).abs() < 8);
        let err = decode_mjpeg(b"not a jpeg").unwrap_err().to_string();
        assert!(err.contains("not a JPEG"), "{err}");
        let err = decode_mjpeg(&jpeg[..40]).unwrap_err().to_string();
        assert!(err.contains("corrupt MJPEG"), "{err}");
    }

    #[test]
    fn format_choice_prefers_mjpeg_and_names_unknown_formats() {
        assert_eq!(
            choose_format(&[*b"YUYV", *b"MJPG"], None).unwrap(),
            CameraFormat::Mjpeg
        );
        assert_eq!(
            choose_format(&[*b"YUYV", *b"MJPG"], Some(CameraFormat::Yuyv)).unwrap(),
            CameraFormat::Yuyv
        );
        let err = choose_format(&[*b"NV12", *b"GREY"], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown pixel format") && err.contains("NV12, GREY"),
            "{err}"
        );
        let err = choose_format(&[*b"YUYV"], Some(CameraFormat::Mjpeg))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not offer pixel format MJPG"), "{err}");
        assert!(CameraFormat::parse("h264").is_err());
    }
}
