//! `edge eval`: the evaluation protocols of evaluation.md on a bundle, through the same
//! harness (`fss_lab::eval`) and scoring as `host eval`; same JSON schema.

use super::{apply_threads, parse_size};
use anyhow::{bail, Result};
use clap::Args;
use fss_cli::{progress_bar, ProtocolArgs};
use fss_core::choice::Choice;
use fss_core::davis::DavisDataset;
use fss_core::preprocess::InputSize;
use fss_core::report::EvalReport;
use fss_lab::eval::{davis_agreement, Protocol};
use fss_runtime::BundleEncoder;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Bundle folder (bundle.json + ONNX graphs).
    #[arg(long)]
    pub bundle: PathBuf,
    #[command(flatten)]
    pub eval: ProtocolArgs,
    /// Model input size HxW (default: the preset's, else the bundle's; not with --preset oslsm,
    /// which feeds each image at its own size).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<InputSize>,
    /// tract threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Instead of scoring against the ground truth, compare this bundle's masks with another
    /// bundle's on the same inputs (e.g. an int8 bundle and its fp32 twin), query by query:
    /// pixel agreement and IoU of the two foregrounds (`--protocol davis` only).
    #[arg(long, value_name = "BUNDLE")]
    pub agree_with: Option<PathBuf>,
}

pub fn run(args: &EvalArgs) -> Result<()> {
    apply_threads(args.threads)?;
    let mut encoder = BundleEncoder::open(&args.bundle)?;
    encoder.bundle().require_supported_method()?;
    encoder.set_smcp_guidance(args.eval.smcp_guidance);
    encoder.set_sgone_kshot(args.eval.sgone_kshot);
    let harness = args.eval.preset_harness();
    let original_size = harness.as_ref().is_some_and(|h| h.size().is_none());
    if original_size && args.size.is_some() {
        bail!(
            "preset {} feeds every image at its own size; drop --size",
            args.eval.preset.map(|p| p.name()).unwrap_or_default()
        );
    }
    let size = args
        .size
        .or(harness.and_then(|h| h.size()))
        .unwrap_or_else(|| encoder.default_size());
    if !original_size {
        // Original-size presets pin one plan per image size as they go.
        encoder.prepare(size)?;
    }
    let input = encoder.scoring_input(size);
    if let Some(other) = &args.agree_with {
        return agreement(args, &mut encoder, other, input);
    }
    let m = encoder.manifest().clone();
    let base = EvalReport::new(
        "",
        args.eval.data.display().to_string(),
        fss_core::smcp::report_label(
            &m.method,
            args.eval.smcp_guidance,
            args.eval.sgone_kshot,
            args.eval.shots,
        ),
        m.backbone.clone(),
        [size.height, size.width],
        m.precision.clone(),
        args.eval.shots,
    );
    args.eval
        .run_and_print(&mut encoder, input, base, m.provenance.fold)?;
    Ok(())
}

/// `edge eval --agree-with OTHER`: the masks of both bundles on the DAVIS one-shot protocol.
fn agreement(
    args: &EvalArgs,
    encoder: &mut BundleEncoder,
    other: &std::path::Path,
    input: fss_core::model::ScoringInput,
) -> Result<()> {
    if args.eval.protocol != Protocol::Davis {
        bail!("--agree-with supports --protocol davis only");
    }
    let mut b = BundleEncoder::open(other)?;
    b.bundle().require_supported_method()?;
    b.set_smcp_guidance(args.eval.smcp_guidance);
    b.set_sgone_kshot(args.eval.sgone_kshot);
    if b.scoring_input(input.size).normalization != input.normalization {
        bail!(
            "--agree-with {}: the two bundles normalise their input differently",
            other.display()
        );
    }
    b.prepare(input.size)?;
    let dataset = DavisDataset::open(&args.eval.data)?;
    let bar = progress_bar("agreement");
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let a = davis_agreement(encoder, &mut b, &dataset, input, &mut progress)?;
    bar.finish_and_clear();
    let (pa, pb) = (
        args.bundle.display().to_string(),
        other.display().to_string(),
    );
    if args.eval.json {
        let v = serde_json::json!({
            "protocol": "davis",
            "data": args.eval.data.display().to_string(),
            "size": [input.size.height, input.size.width],
            "bundle": pa,
            "precision": encoder.manifest().precision,
            "agree_with": pb,
            "agree_with_precision": b.manifest().precision,
            "agreement": a,
        });
        println!("{v}");
    } else {
        println!(
            "{pa} vs {pb}, DAVIS one-shot at {}: {} query masks, pixel agreement {:.3}%, \
             foreground IoU {:.2}% (pooled), {:.2}% (mean per mask); worst mask {} ({:.2}% \
             of pixels agree)",
            input.size,
            a.masks,
            a.pixel_agreement,
            a.iou,
            a.mean_mask_iou,
            a.worst_mask,
            a.worst_pixel_agreement
        );
    }
    Ok(())
}
