//! `edge doctor`: what this machine offers the runtime. CPU architecture and the instruction-set
//! features tract's kernels key on, cameras (`/dev/video*`), GPIO chips (`/dev/gpiochip*`) and
//! whether a bundle loads and runs one encoder pass. Exit status 1 only when the bundle fails:
//! no camera or GPIO chip is a normal answer.

use super::{apply_threads, ms_since, parse_size, repo_root};
use anyhow::{bail, Result};
use clap::Args;
use fss_core::preprocess::InputSize;
use fss_runtime::BundleEncoder;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the arm64 package installs the default bundle.
pub const INSTALLED_BUNDLE: &str = "/usr/share/fss/models/default";

const AFTER_HELP: &str = "\
Checks, in order:
  cpu      architecture, model, the features tract's kernels key on (aarch64: neon/asimd,
           dotprod/asimddp for the SDOT int8 kernel, fp16/asimdhp for the f16 kernels, sve;
           x86_64: avx2, fma, avx512f, avx512vnni) and the ISA set tract itself probed
  cameras  /dev/video* with the pixel formats and sizes they offer (none is fine)
  gpio     /dev/gpiochip* with their labels (none is fine)
  bundle   loads --bundle (default: <repo>/models/default, else <prefix>/share/fss/models/default
           beside <prefix>/bin/edge, else /usr/share/fss/models/default)
           and runs one encoder pass on a --size input
Exit status: 0 unless the bundle fails to load or run.
Under qemu-user, /proc/cpuinfo is the host's: the features come from the auxiliary vector
(HWCAP), which qemu emulates for the chosen -cpu.";

#[derive(Debug, Clone, Args)]
#[command(after_help = AFTER_HELP)]
pub struct DoctorArgs {
    /// Bundle folder (default: <repo>/models/default, else the installed one; see below).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Input size of the test encoder pass, HxW.
    #[arg(long, value_name = "HxW", value_parser = parse_size, default_value = "64x64")]
    pub size: InputSize,
    /// tract threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// One JSON object on stdout instead of the report.
    #[arg(long)]
    pub json: bool,
}

/// One CPU feature: our name, the `/proc/cpuinfo` spelling, whether the CPU has it.
#[derive(Debug, Clone, serde::Serialize)]
struct Feature {
    name: &'static str,
    cpuinfo: &'static str,
    present: bool,
}

/// The features tract's kernel choice depends on, as the OS reports them (auxiliary vector on
/// Linux, through `std::arch`).
fn cpu_features() -> Vec<Feature> {
    #[allow(unused_mut)]
    let mut v: Vec<Feature> = Vec::new();
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        v.push(Feature {
            name: "neon",
            cpuinfo: "asimd",
            present: has!("neon"),
        });
        v.push(Feature {
            name: "dotprod",
            cpuinfo: "asimddp",
            present: has!("dotprod"),
        });
        v.push(Feature {
            name: "fp16",
            cpuinfo: "asimdhp",
            present: has!("fp16"),
        });
        v.push(Feature {
            name: "i8mm",
            cpuinfo: "i8mm",
            present: has!("i8mm"),
        });
        v.push(Feature {
            name: "sve",
            cpuinfo: "sve",
            present: has!("sve"),
        });
        v.push(Feature {
            name: "sve2",
            cpuinfo: "sve2",
            present: has!("sve2"),
        });
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        v.push(Feature {
            name: "avx2",
            cpuinfo: "avx2",
            present: has!("avx2"),
        });
        v.push(Feature {
            name: "fma",
            cpuinfo: "fma",
            present: has!("fma"),
        });
        v.push(Feature {
            name: "avx512f",
            cpuinfo: "avx512f",
            present: has!("avx512f"),
        });
        v.push(Feature {
            name: "avx512vnni",
            cpuinfo: "avx512_vnni",
            present: has!("avx512vnni"),
        });
    }
    v
}

/// `/proc/cpuinfo` facts: the model line and the first `Features`/`flags` line, if any.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct CpuInfo {
    model: Option<String>,
    /// Whether the first feature line is present (absent: not Linux, or emulated).
    feature_line: Option<String>,
}

fn cpuinfo() -> CpuInfo {
    let Ok(text) = std::fs::read_to_string("/proc/cpuinfo") else {
        return CpuInfo::default();
    };
    let value = |keys: &[&str]| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            keys.contains(&k.trim()).then(|| v.trim().to_string())
        })
    };
    let model = if cfg!(target_arch = "aarch64") {
        // aarch64 kernels print part numbers (and the board in `Model` on a Pi); no
        // `model name`. Under qemu-user this file is the host's, so nothing is taken from it
        // unless it has these aarch64 lines.
        let part = value(&["CPU implementer"]).zip(value(&["CPU part"]));
        let part = part.map(|(imp, part)| {
            format!(
                "implementer {imp}, part {part}{}",
                arm_part_name(&imp, &part)
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            )
        });
        match (value(&["Model", "Hardware"]), part) {
            (Some(m), Some(p)) => Some(format!("{m}; {p}")),
            (m, p) => m.or(p),
        }
    } else {
        value(&["model name"])
    };
    let feature_line = if cfg!(target_arch = "aarch64") {
        value(&["Features"])
    } else {
        value(&["flags"])
    };
    CpuInfo {
        model,
        feature_line,
    }
}

/// Names of the ARM cores found on the boards we target.
fn arm_part_name(implementer: &str, part: &str) -> Option<&'static str> {
    if implementer != "0x41" {
        return None;
    }
    Some(match part {
        "0xd03" => "Cortex-A53: Pi 3, Pi Zero 2",
        "0xd04" => "Cortex-A35",
        "0xd05" => "Cortex-A55",
        "0xd07" => "Cortex-A57: Jetson Nano/TX1",
        "0xd08" => "Cortex-A72: Pi 4, Pi 400, CM4",
        "0xd09" => "Cortex-A73",
        "0xd0a" => "Cortex-A75",
        "0xd0b" => "Cortex-A76: Pi 5",
        "0xd0c" => "Neoverse-N1",
        "0xd41" => "Cortex-A78",
        "0xd42" => "Cortex-A78AE: Jetson Orin",
        _ => return None,
    })
}

/// A device node with what sysfs says about it.
#[derive(Debug, Clone, serde::Serialize)]
struct Device {
    path: String,
    label: Option<String>,
    /// Cameras: the pixel formats and sizes offered (or why they could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    formats: Option<Vec<String>>,
}

/// `/dev/<prefix>N` entries, sorted by N.
fn dev_entries(prefix: &str) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut v: Vec<(u64, String, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let n: u64 = name.strip_prefix(prefix)?.parse().ok()?;
            Some((n, name, e.path()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, n, p)| (n, p)).collect()
}

fn read_trimmed(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(feature = "camera")]
fn camera_formats(path: &Path) -> Vec<String> {
    edge::live::camera::describe_formats(path).unwrap_or_else(|e| vec![e])
}

#[cfg(not(feature = "camera"))]
fn camera_formats(_: &Path) -> Vec<String> {
    vec!["not queried: built without the `camera` feature".to_string()]
}

fn cameras() -> Vec<Device> {
    dev_entries("video")
        .into_iter()
        .map(|(name, path)| Device {
            label: read_trimmed(&Path::new("/sys/class/video4linux").join(&name).join("name")),
            formats: Some(camera_formats(&path)),
            path: path.display().to_string(),
        })
        .collect()
}

fn gpio_chips() -> Vec<Device> {
    dev_entries("gpiochip")
        .into_iter()
        .map(|(name, path)| {
            let label = ["/sys/bus/gpio/devices", "/sys/class/gpio"]
                .iter()
                .find_map(|d| read_trimmed(&Path::new(d).join(&name).join("label")));
            let lines = ["/sys/bus/gpio/devices", "/sys/class/gpio"]
                .iter()
                .find_map(|d| read_trimmed(&Path::new(d).join(&name).join("ngpio")));
            let label = match (label, lines) {
                (Some(l), Some(n)) => Some(format!("{l}, {n} lines")),
                (l, _) => l,
            };
            Device {
                path: path.display().to_string(),
                label,
                formats: None,
            }
        })
        .collect()
}

/// The bundle to check: `--bundle`, else the repository's `models/default`, else the
/// installed one.
pub(crate) fn default_bundle(arg: &Option<PathBuf>) -> PathBuf {
    if let Some(b) = arg {
        return b.clone();
    }
    if let Some(r) = repo_root() {
        let b = r.join("models/default");
        if b.is_dir() {
            return b;
        }
    }
    // Installed by the tarball's install.sh under any prefix: <prefix>/bin/edge.
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|e| std::fs::canonicalize(e).ok())
        .and_then(|e| Some(e.parent()?.parent()?.join("share/fss/models/default")));
    if let Some(b) = beside_exe.filter(|b| b.is_dir()) {
        return b;
    }
    let installed = PathBuf::from(INSTALLED_BUNDLE);
    if installed.is_dir() {
        return installed;
    }
    PathBuf::from("models/default")
}

#[derive(Debug, Clone, serde::Serialize)]
struct BundleCheck {
    path: String,
    ok: bool,
    error: Option<String>,
    method: Option<String>,
    backbone: Option<String>,
    size: [usize; 2],
    features: Option<[usize; 3]>,
    load_ms: Option<f64>,
    encode_ms: Option<f64>,
}

fn check_bundle(path: &Path, size: InputSize) -> BundleCheck {
    let mut c = BundleCheck {
        path: path.display().to_string(),
        ok: false,
        error: None,
        method: None,
        backbone: None,
        size: [size.height, size.width],
        features: None,
        load_ms: None,
        encode_ms: None,
    };
    let result = (|| -> Result<()> {
        if !path.is_dir() {
            bail!(
                "{}: bundle folder does not exist (pass --bundle DIR)",
                path.display()
            );
        }
        let t0 = Instant::now();
        let mut enc = BundleEncoder::open(path)?;
        c.method = Some(enc.manifest().method.clone());
        c.backbone = Some(enc.manifest().backbone.clone());
        enc.prepare(size)?;
        c.load_ms = Some(ms_since(t0));
        // A deterministic, non-constant input (a colour gradient).
        let (h, w) = (size.height, size.width);
        let input: Vec<f32> = (0..3 * h * w)
            .map(|i| {
                let (ch, y, x) = (i / (h * w), (i / w) % h, i % w);
                (x as f32 / w as f32 - 0.5) * (1.0 + ch as f32) + (y as f32 / h as f32 - 0.5)
            })
            .collect();
        let t1 = Instant::now();
        let f = enc.encode(&input, size)?;
        c.encode_ms = Some(ms_since(t1));
        if f.data.iter().any(|v| !v.is_finite()) {
            bail!("{}: encoder output is not finite", path.display());
        }
        c.features = Some([f.channels, f.height, f.width]);
        Ok(())
    })();
    match result {
        Ok(()) => c.ok = true,
        Err(e) => c.error = Some(crate::error_line(&e)),
    }
    c
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub fn run(args: &DoctorArgs) -> Result<()> {
    apply_threads(args.threads)?;
    let arch = std::env::consts::ARCH;
    let features = cpu_features();
    let info = cpuinfo();
    let isa = format!("{:?}", tract_linalg::isa::native());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cams = cameras();
    let gpio = gpio_chips();
    let bundle = check_bundle(&default_bundle(&args.bundle), args.size);
    let has = |n: &str| features.iter().any(|f| f.name == n && f.present);
    // What tract-linalg does with them (edge-runtime.md §1.4).
    let kernels: Vec<String> = match arch {
        "aarch64" => vec![
            "f32: arm64simd NEON kernels".into(),
            if has("dotprod") {
                "int8: arm64simd_mmm_i32_8x8_dot (SDOT)".into()
            } else {
                "int8: arm64simd_mmm_i32_8x8 (SMLAL fallback, no dotprod)".into()
            },
            if tract_linalg::has_fp16() {
                "f16: arm64fp16 kernels".into()
            } else if has("fp16") {
                "f16: none (the CPU has fp16 but tract reads it from /proc/cpuinfo 'asimdhp', which does not list it here)".into()
            } else {
                "f16: none (no fp16)".into()
            },
        ],
        // x86_64: the tract ISA line says it all.
        _ => Vec::new(),
    };
    if args.json {
        let v = serde_json::json!({
            "edge_version": env!("CARGO_PKG_VERSION"),
            "arch": arch,
            "cpu_model": info.model,
            "cpuinfo_features": info.feature_line,
            "cores": cores,
            "features": features,
            "tract_isa": isa,
            "tract_fp16": tract_linalg::has_fp16(),
            "kernels": kernels,
            "cameras": cams,
            "gpio_chips": gpio,
            "bundle": bundle,
        });
        println!("{v}");
    } else {
        println!("edge {} doctor", env!("CARGO_PKG_VERSION"));
        println!("arch:      {arch}, {cores} cores available");
        println!(
            "cpu:       {}",
            info.model.as_deref().unwrap_or("(not in /proc/cpuinfo)")
        );
        let list: Vec<String> = features
            .iter()
            .map(|f| {
                if f.name == f.cpuinfo {
                    format!("{} {}", f.name, yes_no(f.present))
                } else {
                    format!("{} ({}) {}", f.name, f.cpuinfo, yes_no(f.present))
                }
            })
            .collect();
        println!("features:  {}", list.join(", "));
        if info.feature_line.is_none() {
            println!("           (/proc/cpuinfo has no feature line for this architecture: emulated, e.g. qemu-user; the list above is the kernel's HWCAP)");
        }
        println!("tract ISA: {isa}");
        for k in &kernels {
            println!("kernels:   {k}");
        }
        if cams.is_empty() {
            println!("cameras:   none (/dev/video* absent; `edge run` waits for one and retries)");
        } else {
            for c in &cams {
                println!(
                    "camera:    {}{}",
                    c.path,
                    c.label
                        .as_ref()
                        .map(|l| format!(" [{l}]"))
                        .unwrap_or_default()
                );
                for f in c.formats.iter().flatten() {
                    println!("           {f}");
                }
            }
        }
        if gpio.is_empty() {
            println!("gpio:      none (/dev/gpiochip* absent)");
        } else {
            for g in &gpio {
                println!(
                    "gpio:      {}{}",
                    g.path,
                    g.label
                        .as_ref()
                        .map(|l| format!(" [{l}]"))
                        .unwrap_or_default()
                );
            }
        }
        if bundle.ok {
            let [c, h, w] = bundle.features.unwrap_or_default();
            println!(
                "bundle:    {}: ok ({} {}; loaded in {:.0} ms; {}x{} input -> [{c}, {h}, {w}] features in {:.1} ms)",
                bundle.path,
                bundle.method.as_deref().unwrap_or("?"),
                bundle.backbone.as_deref().unwrap_or("?"),
                bundle.load_ms.unwrap_or(0.0),
                args.size.height,
                args.size.width,
                bundle.encode_ms.unwrap_or(0.0)
            );
        } else {
            println!("bundle:    {}: FAILED", bundle.path);
        }
    }
    if !bundle.ok {
        bail!(
            "{}",
            bundle
                .error
                .unwrap_or_else(|| format!("{}: bundle check failed", bundle.path))
        );
    }
    Ok(())
}
