//! The `edge run` configuration: a TOML file (see `packaging/edge.toml` for a commented one)
//! whose every field can be overridden on the command line. Unknown keys are errors, so a typo
//! does not silently fall back to a default.

use super::convert::CameraFormat;
use fss_core::error::{EdgeError, Result};
use fss_core::preprocess::InputSize;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Bundle folder.
    pub bundle: Option<PathBuf>,
    /// Model input size `HxW` (default: the bundle's).
    pub size: Option<String>,
    /// tract threads.
    pub threads: Option<usize>,
    /// State folder: targets and their support shots (survives restarts).
    pub state: Option<PathBuf>,
    /// Location prior: a target cannot appear farther from where it was in the previous frame
    /// than this many times the square root of its feature-cell count (0: off; default 0.5).
    pub temporal_reach: Option<f32>,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub events: EventsConfig,
    pub gpio: Option<GpioConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `/dev/videoN` (camera), a folder or DAVIS root (replay), or `synthetic`.
    pub path: Option<String>,
    /// DAVIS sequence when `path` is a DAVIS root.
    pub sequence: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Camera rate asked of the driver; replay and synthetic rate.
    pub fps: Option<f64>,
    /// Camera pixel format `mjpeg` or `yuyv` (default: MJPEG when offered).
    pub format: Option<String>,
    /// Replay: start again after the last image.
    #[serde(rename = "loop")]
    pub looping: Option<bool>,
    /// Synthetic: stop after this many frames.
    pub frames: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: Option<bool>,
    /// `IP:PORT`; default `127.0.0.1:8080`.
    pub addr: Option<String>,
    /// Required by every request when set (always set when `addr` is not loopback).
    pub token: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// JSON Lines file (`-` = standard output).
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpioConfig {
    /// Chip label (`pinctrl-bcm2711`, `pinctrl-rp1`, `tegra234-gpio`) or `/dev/gpiochipN`.
    pub chip: String,
    /// Line offset of the capture button.
    pub button_line: Option<u32>,
    /// Line offset of the status LED.
    pub led_line: Option<u32>,
    /// Button pulls the line low when pressed (default true).
    pub button_active_low: Option<bool>,
    pub led_active_low: Option<bool>,
    pub debounce_ms: Option<u64>,
    /// Name of the target a button press (re)captures (default `object`).
    pub target: Option<String>,
    /// Side of the centred capture box as a fraction of the frame's sides (default 0.5).
    pub box_fraction: Option<f64>,
}

/// Where frames come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    Camera {
        device: PathBuf,
        width: u32,
        height: u32,
        fps: u32,
        format: Option<CameraFormat>,
    },
    Folder {
        dir: PathBuf,
        fps: f64,
        looping: bool,
    },
    Synthetic {
        width: u32,
        height: u32,
        fps: f64,
        frames: Option<u64>,
    },
}

impl RunConfig {
    /// Reads a TOML config; errors are one line naming the file.
    pub fn read(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| EdgeError::io(path, e))?;
        Self::parse(&text).map_err(|e| EdgeError::invalid(path, e))
    }

    pub fn parse(text: &str) -> std::result::Result<RunConfig, String> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("invalid config (line {line}): {msg}")
                }
                None => format!("invalid config: {msg}"),
            }
        })
    }

    pub fn input_size(&self) -> Result<Option<InputSize>> {
        self.size
            .as_deref()
            .map(|s| {
                s.parse::<InputSize>()
                    .map_err(|e| EdgeError::input(format!("size '{s}': {e}")))
            })
            .transpose()
    }

    /// The frame source the config describes.
    pub fn source_spec(&self) -> Result<SourceSpec> {
        let s = &self.source;
        let path = s.path.as_deref().ok_or_else(|| {
            EdgeError::input("no frame source: give --source /dev/videoN, a folder, or synthetic")
        })?;
        let fps = s.fps.unwrap_or(0.0);
        if !(0.0..=1000.0).contains(&fps) {
            return Err(EdgeError::input(format!(
                "fps {fps}: must be 0..1000 (0 = as fast as possible)"
            )));
        }
        if path == "synthetic" || path.starts_with("synthetic:") {
            let (w, h) = match path.strip_prefix("synthetic:") {
                Some(wh) => parse_wh(wh)?,
                None => (s.width.unwrap_or(320), s.height.unwrap_or(240)),
            };
            return Ok(SourceSpec::Synthetic {
                width: w,
                height: h,
                fps,
                frames: s.frames.filter(|&f| f > 0),
            });
        }
        if path.starts_with("/dev/video") || path.starts_with("/dev/v4l/") {
            return Ok(SourceSpec::Camera {
                device: PathBuf::from(path),
                width: s.width.unwrap_or(640),
                height: s.height.unwrap_or(480),
                fps: if fps > 0.0 { fps.round() as u32 } else { 30 },
                format: s.format.as_deref().map(CameraFormat::parse).transpose()?,
            });
        }
        let dir = super::source::resolve_replay_dir(Path::new(path), s.sequence.as_deref())?;
        Ok(SourceSpec::Folder {
            dir,
            fps,
            looping: s.looping.unwrap_or(false),
        })
    }

    /// The HTTP address and token, or `None` when the page is off. A non-loopback address
    /// without a token gets a random one (printed by `edge run`).
    pub fn http(&self) -> Result<Option<(SocketAddr, Option<String>)>> {
        if self.http.enabled == Some(false) {
            return Ok(None);
        }
        if self.http.enabled.is_none() && self.http.addr.is_none() {
            return Ok(None);
        }
        let text = self.http.addr.as_deref().unwrap_or("127.0.0.1:8080");
        let addr: SocketAddr = text.parse().map_err(|_| {
            EdgeError::input(format!(
                "http address '{text}' is not IP:PORT (e.g. 127.0.0.1:8080)"
            ))
        })?;
        let token = match &self.http.token {
            Some(t) if t.len() < 8 => {
                return Err(EdgeError::input("http token must be at least 8 characters"))
            }
            Some(t) => Some(t.clone()),
            None if addr.ip().is_loopback() => None,
            None => Some(random_token()),
        };
        Ok(Some((addr, token)))
    }
}

fn parse_wh(s: &str) -> Result<(u32, u32)> {
    let bad = || EdgeError::input(format!("size '{s}' is not WIDTHxHEIGHT (e.g. 320x240)"));
    let (w, h) = s.split_once('x').ok_or_else(bad)?;
    Ok((
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    ))
}

/// 128 random bits as hex.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|v| format!("{v:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config_parses() {
        let c = RunConfig::parse(
            r#"
bundle = "/usr/share/fss/models/default"
threads = 2
state = "/var/lib/fss"
temporal_reach = 0.5
[source]
path = "/dev/video0"
width = 640
height = 480
fps = 15
format = "yuyv"
[http]
addr = "0.0.0.0:8080"
[events]
path = "/var/lib/fss/events.jsonl"
[gpio]
chip = "pinctrl-bcm2711"
button_line = 17
led_line = 27
"#,
        )
        .unwrap();
        assert_eq!(
            c.source_spec().unwrap(),
            SourceSpec::Camera {
                device: "/dev/video0".into(),
                width: 640,
                height: 480,
                fps: 15,
                format: Some(CameraFormat::Yuyv)
            }
        );
        let (addr, token) = c.http().unwrap().unwrap();
        assert_eq!(addr.port(), 8080);
        assert_eq!(
            token.unwrap().len(),
            32,
            "a token is generated off loopback"
        );
        assert_eq!(c.gpio.unwrap().button_line, Some(17));
    }

    #[test]
    fn bad_configs_are_one_line_errors() {
        let e = RunConfig::parse("[source]\npaht = \"/dev/video0\"\n").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("paht") && !e.contains('\n'),
            "{e}"
        );
        let e = RunConfig::parse("threads = \"two\"").unwrap_err();
        assert!(e.contains("invalid config"), "{e}");
        let c = RunConfig::parse("[source]\npath = \"/dev/video0\"\nformat = \"h264\"").unwrap();
        let e = c.source_spec().unwrap_err().to_string();
        assert!(e.contains("unknown pixel format 'h264'"), "{e}");
        let c = RunConfig::parse("[http]\naddr = \"localhost\"").unwrap();
        assert!(c.http().unwrap_err().to_string().contains("IP:PORT"));
        let c = RunConfig::parse("[http]\naddr = \"127.0.0.1:9000\"").unwrap();
        assert_eq!(
            c.http().unwrap().unwrap().1,
            None,
            "loopback needs no token"
        );
        assert!(RunConfig::default().source_spec().is_err());
    }

    #[test]
    fn synthetic_source_spec() {
        let c =
            RunConfig::parse("[source]\npath = \"synthetic:64x48\"\nframes = 10\nfps = 0").unwrap();
        assert_eq!(
            c.source_spec().unwrap(),
            SourceSpec::Synthetic {
                width: 64,
                height: 48,
                fps: 0.0,
                frames: Some(10)
            }
        );
    }
}
