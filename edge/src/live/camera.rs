//! V4L2 capture through `v4l` (memory-mapped streaming): format and size negotiation, MJPEG or
//! YUYV decoded to RGB ([`super::convert`]), and reconnection when the device disappears.
//!
//! The stream borrows driver buffers, so a [`V4lCamera`] lives on the capture thread that opened
//! it (the pipeline opens sources there).

use super::convert::{choose_format, fourcc_text, CameraFormat};
use super::source::{Frame, FrameSource, SourceError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

/// What to ask the camera for.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraRequest {
    pub device: PathBuf,
    pub width: u32,
    pub height: u32,
    /// Frames per second asked of the driver (0: leave its default).
    pub fps: u32,
    /// Forced pixel format; `None` = MJPEG when offered, else YUYV.
    pub format: Option<CameraFormat>,
}

pub struct V4lCamera {
    request: CameraRequest,
    // Field order: the stream must be dropped before the device.
    stream: Option<Stream<'static>>,
    device: Option<Device>,
    format: CameraFormat,
    width: u32,
    height: u32,
    stride: usize,
    index: u64,
}

fn disconnected(path: &Path, what: &str, e: std::io::Error) -> SourceError {
    SourceError::Disconnected(format!("camera {}: {what}: {e}", path.display()))
}

impl V4lCamera {
    /// Opens the device, negotiates format and size, starts streaming. A missing device is
    /// [`SourceError::Disconnected`] (it may be plugged in later); a device that offers no
    /// format edge can decode is [`SourceError::Fatal`].
    pub fn open(request: &CameraRequest) -> Result<V4lCamera, SourceError> {
        let path = &request.device;
        if !path.exists() {
            return Err(SourceError::Disconnected(format!(
                "camera {}: no such device (unplugged, or another /dev/videoN?)",
                path.display()
            )));
        }
        let device = Device::with_path(path).map_err(|e| disconnected(path, "cannot open", e))?;
        let caps = device
            .query_caps()
            .map_err(|e| disconnected(path, "cannot query capabilities", e))?;
        if !caps
            .capabilities
            .contains(v4l::capability::Flags::VIDEO_CAPTURE)
        {
            return Err(SourceError::Fatal(format!(
                "{} ({}) is not a video capture device",
                path.display(),
                caps.card
            )));
        }
        let offered: Vec<[u8; 4]> = device
            .enum_formats()
            .map_err(|e| disconnected(path, "cannot list formats", e))?
            .iter()
            .map(|d| d.fourcc.repr)
            .collect();
        let format = choose_format(&offered, request.format)
            .map_err(|e| SourceError::Fatal(format!("camera {}: {e}", path.display())))?;
        let mut fmt = device
            .format()
            .map_err(|e| disconnected(path, "cannot read the format", e))?;
        fmt.width = request.width;
        fmt.height = request.height;
        fmt.fourcc = FourCC::new(&format.fourcc());
        let got = device
            .set_format(&fmt)
            .map_err(|e| disconnected(path, "cannot set the format", e))?;
        if got.fourcc.repr != format.fourcc() {
            return Err(SourceError::Fatal(format!(
                "camera {}: asked for {} but the driver chose {}",
                path.display(),
                fourcc_text(format.fourcc()),
                fourcc_text(got.fourcc.repr)
            )));
        }
        if got.width != request.width || got.height != request.height {
            crate::live_note!(
                "camera {}: asked for {}x{}, the driver gives {}x{}",
                path.display(),
                request.width,
                request.height,
                got.width,
                got.height
            );
        }
        if request.fps > 0 {
            // Not every driver supports frame intervals; the pipeline paces itself anyway.
            let _ = device.set_params(&v4l::video::capture::Parameters::with_fps(request.fps));
        }
        let mut stream = Stream::with_buffers(&device, Type::VideoCapture, 4)
            .map_err(|e| disconnected(path, "cannot map buffers", e))?;
        stream.set_timeout(Duration::from_secs(2));
        Ok(V4lCamera {
            request: request.clone(),
            stream: Some(stream),
            device: Some(device),
            format,
            width: got.width,
            height: got.height,
            stride: got.stride as usize,
            index: 0,
        })
    }
}

impl FrameSource for V4lCamera {
    fn describe(&self) -> String {
        format!(
            "camera {} {}x{} {}",
            self.request.device.display(),
            self.width,
            self.height,
            fourcc_text(self.format.fourcc())
        )
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let path = self.request.device.clone();
        let Some(stream) = self.stream.as_mut() else {
            return Err(SourceError::Disconnected(format!(
                "camera {}: not open",
                path.display()
            )));
        };
        let t0 = Instant::now();
        let (buf, meta) = stream
            .next()
            .map_err(|e| disconnected(&path, "capture failed", e))?;
        let used = (meta.bytesused as usize).min(buf.len());
        let data = if used > 0 { &buf[..used] } else { buf };
        let capture_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        // A corrupt MJPEG buffer (USB hiccup) is skipped, not fatal: the next one is asked for.
        let image = match self
            .format
            .decode(data, self.width, self.height, self.stride)
        {
            Ok(i) => i,
            Err(e) => {
                return Err(SourceError::Disconnected(format!(
                    "camera {}: {e}",
                    path.display()
                )))
            }
        };
        let decode_ms = t1.elapsed().as_secs_f64() * 1e3;
        let frame = Frame::new(self.index, image, capture_ms, decode_ms, None);
        self.index += 1;
        Ok(Some(frame))
    }

    fn reconnect(&mut self) -> Result<(), SourceError> {
        self.stream = None;
        self.device = None;
        let fresh = V4lCamera::open(&self.request)?;
        let index = self.index;
        *self = fresh;
        self.index = index;
        Ok(())
    }
}

/// What a device offers, for `edge doctor`: one entry per pixel format, e.g.
/// `MJPG (decodable) 640x480 1280x720`, `H264 (not decodable)`.
pub fn describe_formats(path: &Path) -> Result<Vec<String>, String> {
    let device = Device::with_path(path).map_err(|e| format!("cannot open: {e}"))?;
    let formats = device
        .enum_formats()
        .map_err(|e| format!("cannot list formats: {e}"))?;
    Ok(formats
        .iter()
        .map(|f| {
            let decodable = CameraFormat::from_fourcc(f.fourcc.repr).is_some();
            let mut sizes: Vec<String> = device
                .enum_framesizes(f.fourcc)
                .unwrap_or_default()
                .into_iter()
                .flat_map(|s| match s.size {
                    v4l::framesize::FrameSizeEnum::Discrete(d) => {
                        vec![format!("{}x{}", d.width, d.height)]
                    }
                    v4l::framesize::FrameSizeEnum::Stepwise(s) => vec![format!(
                        "{}x{}..{}x{}",
                        s.min_width, s.min_height, s.max_width, s.max_height
                    )],
                })
                .collect();
            sizes.dedup();
            format!(
                "{} ({}){}{}",
                fourcc_text(f.fourcc.repr),
                if decodable {
                    "decodable"
                } else {
                    "not decodable"
                },
                if sizes.is_empty() { "" } else { " " },
                sizes.join(" ")
            )
        })
        .collect())
}
