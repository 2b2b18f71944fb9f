//! `edge demo`: the default bundle on the shipped sample frames. Per sequence the support is
//! frame 0 and its mask (every object of a DAVIS-2017 palette mask is its own target: N-way);
//! frames 1.. are segmented, their overlays written, J measured per target against the
//! annotations, and the per-frame pipeline (decode -> overlay) timed. The same frames are also
//! scored with the location prior `edge run` applies from frame to frame (temporal J), next to
//! the per-frame J of the DAVIS protocol.

use super::{apply_threads, ms_since, parse_size, repo_root};
use anyhow::{bail, Result};
use clap::Args;
use fss_core::davis::{DavisDataset, DavisKind};
use fss_core::metrics::VideoJAccumulator;
use fss_core::overlay::{overlay_in_place, write_rgb_png};
use fss_core::preprocess::{resize_mask_nearest, InputSize};
use fss_core::prototype::{logits_to_labels, SupportShot};
use fss_core::tensor::Mask;
use fss_runtime::BundleEncoder;
use std::path::PathBuf;
use std::time::Instant;

const AFTER_HELP: &str = "\
Defaults: --bundle <repo>/models/default (the repository root is found from the executable's
location, else the working directory), --frames <bundle>/sample: a DAVIS-layout folder
(JPEGImages/480p/<seq>/*.jpg + Annotations/480p/<seq>/*.png). Overlays go to
<out>/<seq>/<stem>_overlay.png. Frames per second count the per-frame pipeline (decode,
preprocess, encoder, scoring, upsampling + argmax, overlay), not the PNG writing.
J is printed per frame (each frame alone, the DAVIS protocol) and temporal (with the location
prior of `edge run`, --temporal-reach; the overlays show the per-frame masks).";

#[derive(Debug, Clone, Args)]
#[command(after_help = AFTER_HELP)]
pub struct DemoArgs {
    /// Bundle folder (default: models/default of the repository).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// DAVIS-layout frames (default: <bundle>/sample).
    #[arg(long)]
    pub frames: Option<PathBuf>,
    /// Output folder for the overlays.
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// Model input size HxW (default: the bundle's).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<InputSize>,
    /// tract threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// The location prior of the temporal J (as `edge run --temporal-reach`; 0: off).
    #[arg(long, value_name = "R", default_value_t = fss_core::temporal::TemporalOptions::default().reach, allow_negative_numbers = true)]
    pub temporal_reach: f32,
    /// Print a JSON summary line on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    apply_threads(args.threads)?;
    let bundle = match &args.bundle {
        Some(b) => b.clone(),
        None => repo_root()
            .map(|r| r.join("models/default"))
            .unwrap_or_else(|| PathBuf::from("models/default")),
    };
    if !bundle.is_dir() {
        bail!(
            "{}: bundle folder does not exist (the default bundle belongs in models/default of the repository; pass --bundle DIR)",
            bundle.display()
        );
    }
    if !bundle.join(fss_core::bundle::MANIFEST_FILE).is_file() {
        bail!(
            "{}: no {} in the bundle folder (the default bundle has not been placed there yet; pass --bundle DIR)",
            bundle.display(),
            fss_core::bundle::MANIFEST_FILE
        );
    }
    let frames = args.frames.clone().unwrap_or_else(|| bundle.join("sample"));
    if !frames.is_dir() {
        bail!(
            "{}: sample frames folder does not exist (a DAVIS-layout folder: JPEGImages/480p/<seq>/*.jpg + Annotations/480p/<seq>/*.png; pass --frames DIR)",
            frames.display()
        );
    }
    let mut encoder = BundleEncoder::open(&bundle)?;
    encoder.bundle().require_supported_method()?;
    let size = args.size.unwrap_or_else(|| encoder.default_size());
    encoder.prepare(size)?;
    let dataset = DavisDataset::open(&frames)?;
    let mut acc = VideoJAccumulator::new();
    let mut temporal = VideoJAccumulator::new();
    let mut prior = fss_core::temporal::LocationPrior::new(args.temporal_reach)
        .map_err(|e| anyhow::anyhow!("--temporal-reach: {e}"))?;
    let mut pipeline_ms = 0.0;
    let mut processed = 0usize;
    for (si, seq) in dataset.sequences().iter().enumerate() {
        let objects: Vec<Option<u8>> = match dataset.kind() {
            DavisKind::SingleObject => vec![None],
            DavisKind::MultiObject => dataset.objects(si)?.into_iter().map(Some).collect(),
        };
        if objects.is_empty() {
            bail!(
                "{}: the first-frame mask marks no object",
                seq.annotations[0].display()
            );
        }
        let names: Vec<String> = objects
            .iter()
            .map(|o| match o {
                None => seq.name.clone(),
                Some(k) => format!("{}:{k}", seq.name),
            })
            .collect();
        // Support: frame 0 with its mask; one target per object, background = no object.
        let support = dataset.load_image(si, 0)?;
        let features = encoder.encode_image(&support, size)?;
        let any = resize_mask_nearest(&dataset.ground_truth(si, 0, None)?, size.height, size.width);
        let background = Mask {
            height: any.height,
            width: any.width,
            data: any.data.iter().map(|&v| (v == 0) as u8).collect(),
        };
        let mut ways = Vec::with_capacity(objects.len());
        for (o, name) in objects.iter().zip(&names) {
            let fg =
                resize_mask_nearest(&dataset.ground_truth(si, 0, *o)?, size.height, size.width);
            if fg.count_nonzero() == 0 {
                bail!(
                    "{}: the first-frame mask of target {name} is empty at {size}",
                    seq.annotations[0].display()
                );
            }
            ways.push(vec![SupportShot {
                features: features.clone(),
                foreground: fg,
                background: background.clone(),
            }]);
        }
        let protos = encoder.prototypes(&ways)?;
        prior.reset();
        let out_dir = args.out.join(&seq.name);
        let seq_start_frames = processed;
        let seq_start_ms = pipeline_ms;
        for f in 1..seq.len() {
            let t0 = Instant::now();
            let mut img = dataset.load_image(si, f)?;
            let q = encoder.encode_image(&img, size)?;
            let logits = encoder.head_logits(&protos, &q, size)?;
            let labels = logits_to_labels(&logits, img.height() as usize, img.width() as usize);
            overlay_in_place(&mut img, &labels)?;
            pipeline_ms += ms_since(t0);
            processed += 1;
            let mut gated = logits;
            prior.apply(&mut gated);
            let temporal_labels = logits_to_labels(&gated, labels.height, labels.width);
            for (k, (o, name)) in objects.iter().zip(&names).enumerate() {
                let gt = dataset.ground_truth(si, f, *o)?;
                acc.add(name, &labels.binary_of(k as u8 + 1), &gt)?;
                temporal.add(name, &temporal_labels.binary_of(k as u8 + 1), &gt)?;
            }
            let stem = seq.frames[f]
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("{f:05}"));
            write_rgb_png(&out_dir.join(format!("{stem}_overlay.png")), &img)?;
        }
        if !args.json {
            let n = processed - seq_start_frames;
            let fps = if pipeline_ms > seq_start_ms {
                1000.0 * n as f64 / (pipeline_ms - seq_start_ms)
            } else {
                0.0
            };
            let j = |a: &VideoJAccumulator, name: &str| {
                a.sequence_j(name)
                    .map(|j| format!("{:.1}", 100.0 * j))
                    .unwrap_or_else(|| "-".into())
            };
            for name in &names {
                println!(
                    "{name:<24} J {:>5} per frame, {:>5} temporal  ({n} frames, {fps:.1} fps)",
                    j(&acc, name),
                    j(&temporal, name)
                );
            }
        }
    }
    let fps = if pipeline_ms > 0.0 {
        1000.0 * processed as f64 / pipeline_ms
    } else {
        0.0
    };
    let j_mean = acc.j_mean_percent();
    if args.json {
        let line = serde_json::json!({
            "bundle": bundle.display().to_string(),
            "frames": frames.display().to_string(),
            "size": [size.height, size.width],
            "threads": args.threads,
            "j_mean": j_mean,
            "j_mean_temporal": temporal.j_mean_percent(),
            "temporal_reach": args.temporal_reach,
            "fb_iou": acc.fb_iou_percent(),
            "per_sequence": acc.per_sequence_percent(),
            "frames_processed": processed,
            "fps": fps,
            "out": args.out.display().to_string(),
        });
        println!("{line}");
    } else {
        println!(
            "mean J {} per frame, {} temporal (location prior {}) over {} targets; {} frames at {size}, {:.1} fps ({} thread{}); overlays in {}",
            j_mean.map(|j| format!("{j:.1}")).unwrap_or_else(|| "-".into()),
            temporal
                .j_mean_percent()
                .map(|j| format!("{j:.1}"))
                .unwrap_or_else(|| "-".into()),
            args.temporal_reach,
            acc.per_sequence().len(),
            processed,
            fps,
            args.threads,
            if args.threads == 1 { "" } else { "s" },
            args.out.display()
        );
    }
    Ok(())
}
