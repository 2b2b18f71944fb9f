//! `edge segment`: support images + masks -> prototypes (cached) -> label masks and overlays
//! of the query images at their own resolution.

use super::{apply_threads, images_in, ms_since, parse_size};
use anyhow::{bail, Context, Result};
use clap::{ArgMatches, Args};
use fss_core::image_io::{image_size, load_rgb};
use fss_core::method::SupportState;
use fss_core::overlay::{overlay_in_place, write_mask_png, write_rgb_png};
use fss_core::preprocess::InputSize;
use fss_core::prototype::logits_to_labels;
use fss_runtime::cache::{CacheKey, PrototypeCache};
use fss_runtime::support::{support_records, validate_targets};
use fss_runtime::{compute_prototypes, BundleEncoder, SupportShotSpec, TargetSpec};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Name of the target when no `--target` is given.
pub const DEFAULT_TARGET: &str = "object";

const AFTER_HELP: &str = "\
Targets and shots:
  Each --support IMG is paired with the --support-mask PNG of the same rank (1st with 1st, ...);
  a mask's non-zero pixels mark the target, its size must equal the image's.
  Each support belongs to the --target NAME given before it on the command line; without any
  --target all supports are shots of one target named 'object'. N targets give N-way
  segmentation: label 0 = background, label i = the i-th target. One background prototype is
  shared by all shots; when one image is the support of several targets, none of their marked
  areas counts as its background.

Examples:
  one target, two shots:
    edge segment --bundle models/default --support a.jpg --support-mask a.png \\
                 --support b.jpg --support-mask b.png --query q1.jpg q2.jpg --out out/seg
  two targets (N-way), 1 and 2 shots:
    edge segment --bundle models/default \\
                 --target cup  --support a.jpg --support-mask a_cup.png \\
                 --target book --support a.jpg --support-mask a_book.png \\
                               --support c.jpg --support-mask c_book.png \\
                 --query frames/ --out out/seg --cache state/protos.json
  from a cache made earlier (no supports needed):
    edge segment --bundle models/default --cache state/protos.json --query q.jpg --out out/seg

Outputs per query <stem>: <out>/<stem>_mask.png (8-bit labels) and <out>/<stem>_overlay.png
(each target tinted in its own colour), both at the query's resolution.

Cache: with --cache FILE the prototypes are read from FILE when it was made for this bundle,
input size, preprocessing and the same supports (by content); otherwise they are computed
(saying why on stderr) and FILE is written atomically.";

#[derive(Debug, Clone, Args)]
#[command(after_help = AFTER_HELP)]
pub struct SegmentArgs {
    /// Bundle folder (bundle.json + ONNX graphs).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Starts a new target; the --support images after it are its shots (repeatable).
    #[arg(long = "target", value_name = "NAME")]
    pub target: Vec<String>,
    /// A support image (repeatable; paired by order with --support-mask).
    #[arg(long = "support", value_name = "IMG")]
    pub support: Vec<PathBuf>,
    /// The mask of the support image of the same rank: non-zero = the target (repeatable).
    #[arg(long = "support-mask", value_name = "PNG")]
    pub support_mask: Vec<PathBuf>,
    /// Query images or folders of images (jpg, jpeg, png).
    #[arg(long, value_name = "IMG", num_args = 1.., required = true)]
    pub query: Vec<PathBuf>,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Model input size HxW (default: the bundle's).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<InputSize>,
    /// Prototype cache file (read when valid, else written).
    #[arg(long, value_name = "FILE")]
    pub cache: Option<PathBuf>,
    /// tract threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// One JSON line per query on stdout.
    #[arg(long)]
    pub json: bool,
    /// Debug: also write <stem>_features.npy (encoder output, [C, h, w]) and <stem>_logits.npy
    /// (the method head's logits at feature resolution: PANet cosine x20, SMCP / SG-One / DPNet foreground margins, [1 + N, h, w]) per query into DIR, as
    /// little-endian f32 (used by the x86 vs aarch64 parity test, edge/tests/arm_parity.rs).
    #[arg(long, value_name = "DIR", hide = true)]
    pub dump_npy: Option<PathBuf>,
}

/// Writes `data` (C order, `shape`) as a NumPy `.npy` file of little-endian f32.
fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * data.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).map_err(|e| fss_core::EdgeError::io(path, e))?;
    Ok(())
}

/// Groups `--support`/`--support-mask` into targets by their positions relative to `--target`.
pub fn group_targets(args: &SegmentArgs, matches: &ArgMatches) -> Result<Vec<TargetSpec>> {
    if args.support.len() != args.support_mask.len() {
        bail!(
            "{} --support images but {} --support-mask files: give one mask per support image",
            args.support.len(),
            args.support_mask.len()
        );
    }
    let pairs: Vec<SupportShotSpec> = args
        .support
        .iter()
        .zip(&args.support_mask)
        .map(|(i, m)| SupportShotSpec {
            image: i.clone(),
            mask: m.clone(),
        })
        .collect();
    if args.target.is_empty() {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        return Ok(vec![TargetSpec {
            name: DEFAULT_TARGET.into(),
            shots: pairs,
        }]);
    }
    let t_idx: Vec<usize> = matches
        .indices_of("target")
        .map(|i| i.collect())
        .unwrap_or_default();
    let s_idx: Vec<usize> = matches
        .indices_of("support")
        .map(|i| i.collect())
        .unwrap_or_default();
    let mut targets: Vec<TargetSpec> = args
        .target
        .iter()
        .map(|n| TargetSpec {
            name: n.clone(),
            shots: Vec::new(),
        })
        .collect();
    for (shot, &si) in pairs.into_iter().zip(&s_idx) {
        let owner = t_idx.iter().rposition(|&ti| ti < si);
        match owner {
            Some(t) => targets[t].shots.push(shot),
            None => bail!(
                "--support {} comes before the first --target: put each target's supports after its --target NAME",
                shot.image.display()
            ),
        }
    }
    Ok(targets)
}

/// Expands folders into their images; checks the stems are unique (they name the outputs).
fn expand_queries(queries: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for q in queries {
        if q.is_dir() {
            let imgs = images_in(q)?;
            if imgs.is_empty() {
                bail!("{}: folder holds no jpg/jpeg/png image", q.display());
            }
            out.extend(imgs);
        } else {
            out.push(q.clone());
        }
    }
    let mut stems: HashMap<String, &Path> = HashMap::new();
    for q in &out {
        let stem = stem_of(q)?;
        if let Some(prev) = stems.insert(stem.clone(), q) {
            bail!(
                "queries {} and {} have the same stem '{stem}': their outputs would overwrite each other",
                prev.display(),
                q.display()
            );
        }
    }
    Ok(out)
}

fn stem_of(p: &Path) -> Result<String> {
    p.file_stem()
        .and_then(|s| s.to_str())
        .map(|s| s.to_string())
        .with_context(|| format!("{}: no usable file name", p.display()))
}

/// Prototypes and target names: from the cache when it fits, else computed (and cached).
fn prototypes(
    encoder: &mut BundleEncoder,
    targets: &[TargetSpec],
    size: InputSize,
    cache: Option<&Path>,
) -> Result<(SupportState, Vec<String>)> {
    let key = CacheKey::new(
        &encoder.bundle().hash,
        size,
        &encoder.bundle().normalization(),
    );
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    if targets.is_empty() {
        let Some(path) = cache else {
            bail!("no support given: use --support IMG --support-mask PNG (and --target NAME), or --cache FILE made earlier");
        };
        if !path.exists() {
            bail!(
                "{}: no such prototype cache, and no --support given to compute one",
                path.display()
            );
        }
        let c = PrototypeCache::load(path, &key)
            .context("no --support given to recompute the prototypes")?;
        eprintln!(
            "using prototypes of {:?} from {}",
            c.targets,
            path.display()
        );
        return Ok((c.support(path, encoder.method())?, c.targets));
    }
    validate_targets(targets)?;
    let records = support_records(targets)?;
    if let Some(path) = cache {
        if path.exists() {
            match PrototypeCache::load(path, &key) {
                Ok(c) if c.same_supports(&names, &records) => {
                    match c.support(path, encoder.method()) {
                        Ok(support) => {
                            eprintln!("using cached prototypes from {}", path.display());
                            return Ok((support, c.targets));
                        }
                        Err(e) => eprintln!("{e}; recomputing"),
                    }
                }
                Ok(_) => eprintln!(
                    "{}: prototype cache was made from other supports or targets; recomputing",
                    path.display()
                ),
                Err(e) => eprintln!("{e}; recomputing"),
            }
        }
    }
    let protos = compute_prototypes(encoder, targets, size)?;
    if let Some(path) = cache {
        PrototypeCache::new(key, names.clone(), records, &protos).write(path)?;
        eprintln!("wrote prototype cache {}", path.display());
    }
    Ok((protos, names))
}

pub fn run(args: &SegmentArgs, matches: &ArgMatches) -> Result<()> {
    apply_threads(args.threads)?;
    let targets = group_targets(args, matches)?;
    let queries = expand_queries(&args.query)?;
    // Fail fast on unreadable queries (header only) before any model work.
    for q in &queries {
        image_size(q)?;
    }
    let mut encoder = BundleEncoder::open(&args.bundle)?;
    encoder.bundle().require_supported_method()?;
    let size = args.size.unwrap_or_else(|| encoder.default_size());
    encoder.prepare(size)?;
    let (protos, names) = prototypes(&mut encoder, &targets, size, args.cache.as_deref())?;
    if protos.dim() != encoder.prototype_dim() {
        bail!(
            "prototypes have {} values, the bundle's method needs {}",
            protos.dim(),
            encoder.prototype_dim()
        );
    }
    std::fs::create_dir_all(&args.out).map_err(|e| fss_core::EdgeError::io(&args.out, e))?;
    if let Some(d) = &args.dump_npy {
        std::fs::create_dir_all(d).map_err(|e| fss_core::EdgeError::io(d, e))?;
    }
    for q in &queries {
        let t0 = Instant::now();
        let mut img = load_rgb(q)?;
        let features = encoder.encode_image(&img, size)?;
        let logits = encoder.head_logits(&protos, &features, size)?;
        let labels = logits_to_labels(&logits, img.height() as usize, img.width() as usize);
        let ms = ms_since(t0);
        let stem = stem_of(q)?;
        if let Some(d) = &args.dump_npy {
            let f = &features;
            let shape = [f.channels, f.height, f.width];
            write_npy_f32(&d.join(format!("{stem}_features.npy")), &shape, &f.data)?;
            let l = &logits;
            let shape = [l.channels, l.height, l.width];
            write_npy_f32(&d.join(format!("{stem}_logits.npy")), &shape, &l.data)?;
        }
        let mask_path = args.out.join(format!("{stem}_mask.png"));
        let overlay_path = args.out.join(format!("{stem}_overlay.png"));
        write_mask_png(&mask_path, &labels)?;
        overlay_in_place(&mut img, &labels)?;
        write_rgb_png(&overlay_path, &img)?;
        let mut counts = vec![0usize; names.len() + 1];
        for &l in &labels.data {
            counts[l as usize] += 1;
        }
        let pixels: BTreeMap<&str, usize> = names
            .iter()
            .map(|n| n.as_str())
            .zip(counts[1..].iter().copied())
            .collect();
        if args.json {
            let line = serde_json::json!({
                "query": q.display().to_string(),
                "mask": mask_path.display().to_string(),
                "overlay": overlay_path.display().to_string(),
                "size": [labels.height, labels.width],
                "pixels": pixels,
                "ms": ms,
            });
            println!("{line}");
        } else {
            let parts: Vec<String> = names
                .iter()
                .zip(&counts[1..])
                .map(|(n, c)| {
                    format!(
                        "{n} {:.1}%",
                        100.0 * *c as f64 / labels.data.len().max(1) as f64
                    )
                })
                .collect();
            println!(
                "{} -> {} ({}; {:.1} ms)",
                q.display(),
                mask_path.display(),
                parts.join(", "),
                ms
            );
        }
    }
    Ok(())
}
