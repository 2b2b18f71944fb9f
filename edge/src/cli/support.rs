//! `edge support list|add|remove`: the targets of a state folder, as `edge run` uses them. A
//! running `edge run` on the same folder notices the change within a second.

use super::{apply_threads, doctor::default_bundle, parse_size};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use edge::live::targets::{Region, TargetStore};
use fss_core::image_io::{load_label_png, load_rgb};
use fss_core::preprocess::InputSize;
use fss_runtime::cache::CacheKey;
use fss_runtime::BundleEncoder;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct SupportArgs {
    #[command(subcommand)]
    pub action: SupportAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SupportAction {
    /// Lists the targets of a state folder.
    List {
        /// State folder (as `edge run --state`).
        #[arg(long, default_value = "fss-state")]
        state: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Adds a support shot of a target from an image and a mask or a box.
    Add {
        #[arg(long, default_value = "fss-state")]
        state: PathBuf,
        /// Bundle folder (default: models/default); the prototypes are computed with it.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Target name (a new one, or another shot of an existing one).
        #[arg(long)]
        name: String,
        /// Support image.
        #[arg(long)]
        image: PathBuf,
        /// Mask PNG of the image's size (non-zero = target).
        #[arg(long, conflicts_with = "bbox")]
        mask: Option<PathBuf>,
        /// Box X,Y,W,H in image pixels.
        #[arg(long = "box", value_name = "X,Y,W,H")]
        bbox: Option<String>,
        /// Replace the target's earlier shots.
        #[arg(long)]
        replace: bool,
        /// Model input size HxW (must match `edge run --size`; default: the bundle's).
        #[arg(long, value_name = "HxW", value_parser = parse_size)]
        size: Option<InputSize>,
    },
    /// Removes a target and its shots.
    Remove {
        #[arg(long, default_value = "fss-state")]
        state: PathBuf,
        #[arg(long)]
        name: String,
    },
}

fn parse_box(s: &str) -> Result<[i64; 4]> {
    let v: Vec<i64> = s
        .split(',')
        .map(|p| p.trim().parse::<i64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("--box '{s}' is not X,Y,W,H (integers)"))?;
    match v.as_slice() {
        [x, y, w, h] => Ok([*x, *y, *w, *h]),
        _ => bail!("--box '{s}' needs 4 numbers X,Y,W,H"),
    }
}

pub fn run(args: &SupportArgs) -> Result<()> {
    match &args.action {
        SupportAction::List { state, json } => {
            let store = TargetStore::open_as_written(state)?;
            let list = store.list();
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no targets in {}", state.display());
            } else {
                for t in list {
                    println!(
                        "{:>3}  {:<20} {}  {} shot(s): {}",
                        t.label,
                        t.name,
                        t.colour,
                        t.shots,
                        t.origins.join("; ")
                    );
                }
            }
            Ok(())
        }
        SupportAction::Remove { state, name } => {
            let mut store = TargetStore::open_as_written(state)?;
            store.remove(name)?;
            println!("removed '{name}' from {}", state.display());
            Ok(())
        }
        SupportAction::Add {
            state,
            bundle,
            name,
            image,
            mask,
            bbox,
            replace,
            size,
        } => {
            let region = match (mask, bbox) {
                (Some(m), None) => Region::Mask(load_label_png(m)?),
                (None, Some(b)) => Region::Box(parse_box(b)?),
                _ => bail!("give the target's --mask PNG or its --box X,Y,W,H"),
            };
            apply_threads(1)?;
            let bundle = default_bundle(bundle);
            let mut encoder = BundleEncoder::open(&bundle)?;
            encoder.bundle().require_supported_method()?;
            let size = size.unwrap_or_else(|| encoder.default_size());
            let key = CacheKey::new(
                &encoder.bundle().hash,
                size,
                &encoder.bundle().normalization(),
            );
            let mut store = TargetStore::open(state, key)?;
            let img = load_rgb(image)?;
            let origin = format!("file {}", image.display());
            let t = store.add_shot(&mut encoder, size, name, &img, &region, &origin, *replace)?;
            println!(
                "target '{}' (label {}, {}) has {} shot(s) in {}",
                t.name,
                t.label,
                t.colour,
                t.shots,
                state.display()
            );
            Ok(())
        }
    }
}
