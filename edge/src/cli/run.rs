//! `edge run`: live segmentation from a camera, a replayed folder or the synthetic source, with
//! the web page, GPIO button and LED, and JSON Lines events (docs/live.md).

use super::{apply_threads, doctor::default_bundle, parse_size};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use edge::live::config::{GpioConfig, RunConfig};
use edge::live::http::Server;
use edge::live::pipeline::{LiveOptions, Pipeline, Shared};
use edge::live::targets::Region;
use fss_core::preprocess::InputSize;
use fss_runtime::BundleEncoder;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const AFTER_HELP: &str = "\
Sources (--source):
  /dev/videoN          V4L2 camera (MJPEG or YUYV; --width/--height/--fps/--format); reconnects
                       with backoff when unplugged
  DIR                  a folder of images, or a DAVIS root with --sequence, replayed at --fps
                       (--loop to start again)
  synthetic[:WxH]      a moving disc (tests, soak runs; --frames N to stop)

Targets are kept in --state DIR (targets.json + the support frames) and survive restarts;
add them from the web page (capture, then drag a box or paint), with the GPIO button, or with
`edge support add`. Every flag overrides the --config file (TOML, see packaging/edge.toml).

Examples:
  edge run --source models/default/sample --sequence blackswan --fps 10 --loop --http 127.0.0.1:8080
  edge run --config /etc/fss/edge.toml
  edge run --source synthetic:320x240 --frames 10000 --events - --no-http";

#[derive(Debug, Clone, Args)]
#[command(after_help = AFTER_HELP)]
pub struct RunArgs {
    /// TOML config file; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Bundle folder (default: the repository's or the installed models/default).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Frame source: /dev/videoN, a folder / DAVIS root, or synthetic[:WxH].
    #[arg(long, value_name = "SRC")]
    pub source: Option<String>,
    /// DAVIS sequence when --source is a DAVIS root.
    #[arg(long)]
    pub sequence: Option<String>,
    /// Frames per second (camera request, replay and synthetic rate; 0 = as fast as possible).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Replay: start again after the last image.
    #[arg(long = "loop")]
    pub looping: bool,
    /// Camera or synthetic frame width.
    #[arg(long)]
    pub width: Option<u32>,
    /// Camera or synthetic frame height.
    #[arg(long)]
    pub height: Option<u32>,
    /// Camera pixel format: mjpeg or yuyv.
    #[arg(long)]
    pub format: Option<String>,
    /// Synthetic: stop after N frames.
    #[arg(long)]
    pub frames: Option<u64>,
    /// Model input size HxW (default: the bundle's).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<InputSize>,
    /// tract threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// State folder (targets and their shots).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Location prior from frame to frame: a target cannot appear farther from where it was in
    /// the previous frame than R times the square root of its feature-cell count (at least 2
    /// cells); 0 turns it off (default 0.5, chosen on held-out DAVIS training sequences).
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    pub temporal_reach: Option<f32>,
    /// Serve the page and API on IP:PORT (default when enabled: 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// No web page even if the config enables it.
    #[arg(long)]
    pub no_http: bool,
    /// Token required by the page and API (generated when binding off loopback without one).
    #[arg(long)]
    pub token: Option<String>,
    /// JSON Lines events file (`-` = standard output).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Stop after N processed frames.
    #[arg(long)]
    pub max_frames: Option<u64>,
    /// Write each processed frame's label mask (8-bit PNG) into DIR (dropped, and counted, if
    /// the disk cannot keep up).
    #[arg(long, value_name = "DIR")]
    pub masks: Option<PathBuf>,
    /// Write the end-of-run summary (timings, counters, RSS at start and end) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Check the configuration (config file, flags, bundle) and print what would run, without
    /// opening the source.
    #[arg(long)]
    pub check_config: bool,
    /// GPIO chip label (or /dev/gpiochipN) for the button and LED.
    #[arg(long)]
    pub gpio_chip: Option<String>,
    /// GPIO line of the capture button.
    #[arg(long)]
    pub button_line: Option<u32>,
    /// GPIO line of the status LED.
    #[arg(long)]
    pub led_line: Option<u32>,
}

/// The config file with the flags applied on top.
pub fn merged_config(args: &RunArgs) -> Result<RunConfig> {
    let mut c = match &args.config {
        Some(p) => RunConfig::read(p)?,
        None => RunConfig::default(),
    };
    macro_rules! set {
        ($dst:expr, $src:expr) => {
            if let Some(v) = $src.clone() {
                $dst = Some(v);
            }
        };
    }
    set!(c.bundle, args.bundle);
    set!(c.threads, args.threads);
    set!(c.state, args.state);
    set!(c.temporal_reach, args.temporal_reach);
    set!(c.source.path, args.source);
    set!(c.source.sequence, args.sequence);
    set!(c.source.fps, args.fps);
    set!(c.source.width, args.width);
    set!(c.source.height, args.height);
    set!(c.source.format, args.format);
    set!(c.source.frames, args.frames);
    set!(c.events.path, args.events);
    set!(c.http.token, args.token);
    if let Some(s) = args.size {
        c.size = Some(s.to_string());
    }
    if args.looping {
        c.source.looping = Some(true);
    }
    if let Some(a) = &args.http {
        c.http.addr = Some(a.clone());
        c.http.enabled = Some(true);
    }
    if args.no_http {
        c.http.enabled = Some(false);
    }
    if args.gpio_chip.is_some() || args.button_line.is_some() || args.led_line.is_some() {
        let g = c.gpio.get_or_insert_with(GpioConfig::default);
        set!(g.button_line, args.button_line);
        set!(g.led_line, args.led_line);
        if let Some(chip) = &args.gpio_chip {
            g.chip = chip.clone();
        }
        if g.chip.is_empty() {
            bail!("--button-line/--led-line need --gpio-chip LABEL (see `edge doctor` for chip labels)");
        }
    }
    Ok(c)
}

pub fn run(args: &RunArgs) -> Result<()> {
    let config = merged_config(args)?;
    let source = config.source_spec()?;
    let http = config.http()?;
    let size = config.input_size()?;
    let bundle = default_bundle(&config.bundle);
    let threads = config.threads.unwrap_or(1);
    apply_threads(threads)?;
    let temporal_reach = config
        .temporal_reach
        .unwrap_or(fss_core::temporal::TemporalOptions::default().reach);
    // Checked here so that a bad value is refused before any camera or model work.
    fss_core::temporal::LocationPrior::new(temporal_reach)
        .map_err(|e| anyhow::anyhow!("temporal_reach: {e}"))?;
    let state_dir = config
        .state
        .clone()
        .unwrap_or_else(|| PathBuf::from("fss-state"));
    if let Some(g) = &config.gpio {
        if let Some(f) = g.box_fraction {
            if !(0.05..=1.0).contains(&f) {
                bail!("gpio box_fraction {f}: must be within 0.05..1");
            }
        }
        if let Some(t) = &g.target {
            edge::live::targets::check_name(t)?;
        }
    }
    if args.check_config {
        let b = fss_runtime::Bundle::open(&bundle)?;
        b.require_supported_method()?;
        println!("config ok");
        println!(
            "  bundle   {} ({}, {})",
            bundle.display(),
            b.manifest.method,
            b.manifest.backbone
        );
        println!("  size     {}", size.unwrap_or_else(|| b.default_size()));
        println!("  threads  {threads}");
        println!("  temporal reach {temporal_reach}");
        println!("  source   {source:?}");
        println!("  state    {}", state_dir.display());
        match &http {
            Some((addr, Some(_))) => println!("  http     {addr} (token required)"),
            Some((addr, None)) => println!("  http     {addr}"),
            None => println!("  http     off"),
        }
        match &config.events.path {
            Some(p) => println!("  events   {}", p.display()),
            None => println!("  events   off"),
        }
        match &config.gpio {
            Some(g) => println!(
                "  gpio     chip {} button {:?} led {:?}",
                g.chip, g.button_line, g.led_line
            ),
            None => println!("  gpio     off"),
        }
        return Ok(());
    }
    let encoder = BundleEncoder::open(&bundle)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .map_err(|e| anyhow!("cannot install the SIGINT/SIGTERM handler: {e}"))?;
    }
    let pipeline = Pipeline::new(stop.clone());
    let shared = pipeline.shared.clone();
    // The page is served before the pipeline has loaded the targets: list them now so the
    // first `/api/targets` already shows them (errors surface when the pipeline opens the store).
    if let Ok(store) = edge::live::targets::TargetStore::open_as_written(&state_dir) {
        *shared.targets.lock().unwrap_or_else(|p| p.into_inner()) = store.list();
    }
    let server = match &http {
        Some((addr, token)) => {
            let s = Server::start(*addr, token.clone(), shared.clone()).map_err(|e| anyhow!(e))?;
            match token {
                Some(t) => edge::live_note!("web page: http://{}/?token={t}", s.addr),
                None => edge::live_note!("web page: http://{}/", s.addr),
            }
            Some(s)
        }
        None => None,
    };
    let gpio = match &config.gpio {
        Some(g) => start_gpio(g, shared.clone()),
        None => None,
    };
    let opts = LiveOptions {
        bundle: bundle.clone(),
        size,
        source,
        state_dir,
        events: config.events.path.clone(),
        render_view: server.is_some(),
        max_frames: args.max_frames,
        masks: args.masks.clone(),
        temporal_reach,
    };
    edge::live_note!(
        "edge run: bundle {}, {} thread(s); Ctrl-C to stop",
        bundle.display(),
        threads
    );
    let result = pipeline.run(encoder, &opts);
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = server {
        s.join();
    }
    if let Some(g) = gpio {
        let _ = g.join();
    }
    let summary = result?;
    let s = &summary.stats;
    edge::live_note!(
        "stopped ({}): {} frames captured, {} processed, {} dropped as stale, {} events dropped, {:.1} fps",
        summary.ended_by, s.frames_captured, s.frames_processed, s.frames_dropped, s.events_dropped, s.fps
    );
    for st in &s.stages {
        if st.samples > 0 {
            edge::live_note!(
                "  {:<10} {:>8.2} ms mean {:>8.2} ms p50",
                st.stage,
                st.mean_ms,
                st.p50_ms
            );
        }
    }
    if let (Some(a), Some(b)) = (summary.rss_start_kib, summary.rss_end_kib) {
        edge::live_note!("  resident memory {a} KiB at start, {b} KiB at end");
    }
    if let Some(p) = &args.summary {
        let json = serde_json::to_vec_pretty(&summary)?;
        fss_core::fsutil::write_atomic(p, &json)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// The GPIO thread: debounced button captures the configured target with a centred box; the
/// LED shows whether a target is seen. A GPIO that cannot be opened is reported and the run
/// goes on without it.
#[cfg(feature = "gpio")]
fn start_gpio(g: &GpioConfig, shared: Arc<Shared>) -> Option<std::thread::JoinHandle<()>> {
    use edge::live::gpio::{linux::open_pins, Button, StatusLed};
    let (button, led) = match open_pins(&g.chip, g.button_line, g.led_line) {
        Ok(p) => p,
        Err(e) => {
            edge::live_note!("GPIO disabled: {e}");
            return None;
        }
    };
    let mut button = button.map(|p| {
        Button::new(
            p,
            g.button_active_low.unwrap_or(true),
            g.debounce_ms.unwrap_or(30),
        )
    });
    let mut led = led.map(|p| StatusLed::new(p, g.led_active_low.unwrap_or(false)));
    let target = g.target.clone().unwrap_or_else(|| "object".to_string());
    let fraction = g.box_fraction.unwrap_or(0.5);
    std::thread::Builder::new()
        .name("gpio".into())
        .spawn(move || {
            let t0 = std::time::Instant::now();
            while !shared.stop.load(Ordering::Relaxed) {
                let now = t0.elapsed().as_millis() as u64;
                if let Some(b) = button.as_mut() {
                    match b.poll(now) {
                        Ok(true) => gpio_capture(&shared, &target, fraction),
                        Ok(false) => {}
                        Err(e) => edge::live_note!("GPIO button: {e}"),
                    }
                }
                if let Some(l) = led.as_mut() {
                    if let Err(e) = l.set(shared.target_seen.load(Ordering::Relaxed)) {
                        edge::live_note!("GPIO LED: {e}");
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if let Some(l) = led.as_mut() {
                let _ = l.set(false);
            }
        })
        .ok()
}

#[cfg(not(feature = "gpio"))]
fn start_gpio(_: &GpioConfig, _: Arc<Shared>) -> Option<std::thread::JoinHandle<()>> {
    edge::live_note!("GPIO disabled: this edge was built without the `gpio` feature");
    None
}

/// A button press: the newest frame, a centred box of `fraction` of each side.
#[cfg_attr(not(feature = "gpio"), allow(dead_code))]
fn gpio_capture(shared: &Shared, target: &str, fraction: f64) {
    let Some(c) = shared.capture_now() else {
        edge::live_note!("button: no frame captured yet");
        return;
    };
    let (w, h) = c.frame.image.dimensions();
    let (bw, bh) = (
        (w as f64 * fraction).round() as i64,
        (h as f64 * fraction).round() as i64,
    );
    let region = Region::Box([(w as i64 - bw) / 2, (h as i64 - bh) / 2, bw, bh]);
    if let Err(e) = shared.add_shot(
        target,
        c.frame.image.clone(),
        region,
        "gpio: centre box",
        true,
    ) {
        edge::live_note!("button: {e}");
    }
}
