//! `fss-cli`: the command-line surface `host` and `edge` share, so that the libraries
//! (`fss-core`, `fss-runtime`, `fss-lab`) need neither clap nor indicatif:
//!
//! - [`choice`]: the clap value parser of any [`Choice`] (protocols, presets, SMCP guidance,
//!   ...), with the names and one-line help the library declares;
//! - [`ProtocolArgs`] and [`PascalArgs`]: the evaluation flags, flattened into `host eval` and
//!   `edge eval` so the two commands take the same flags with the same meaning;
//! - [`progress_bar`]: their stderr progress bar.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use fss_core::choice::Choice;
use fss_core::error::Result;
use fss_core::model::{FeatureEncoder, ScoringInput};
use fss_core::report::EvalReport;
use fss_core::temporal::TemporalOptions;
use fss_lab::data::pascal::{PascalOptions, VoidLabel};
use fss_lab::eval::{run_protocol, Protocol, ProtocolRequest};
use fss_lab::presets::{Benchmark, Preset, PresetHarness};
use std::path::PathBuf;

/// The clap value parser of a [`Choice`]: its names as the possible values (listed in `--help`
/// with their descriptions), parsed to the value.
pub fn choice<T: Choice>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::VARIANTS.iter().map(|&(_, name, help)| {
        let value = PossibleValue::new(name);
        if help.is_empty() {
            value
        } else {
            value.help(help)
        }
    }))
    .try_map(|name: String| {
        T::from_name(&name).ok_or_else(|| format!("{name:?} is not one of {}", T::names()))
    })
}

/// The stderr progress bar of the evaluation commands.
pub fn progress_bar(label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{label} {{bar:30}} {{pos}}/{{len}} [{{elapsed}}<{{eta}}]"
    )) {
        bar.set_style(style);
    }
    bar
}

/// The PASCAL flags of `host eval` and `edge eval` (flattened into both).
#[derive(Debug, Clone, clap::Args)]
pub struct PascalArgs {
    /// PASCAL: image list under ImageSets/Segmentation (train, val, trainaug, ...) or a list file.
    #[arg(long, default_value = "val")]
    pub pascal_list: String,
    /// PASCAL: labels folder (default: SegmentationClassAug if present, else SegmentationClass).
    #[arg(long)]
    pub pascal_labels: Option<String>,
    /// PASCAL: label 255 (object boundaries) is ignored (PANet, PFENet, HSNet) or background (OSLSM, SG-One).
    #[arg(long, value_parser = choice::<VoidLabel>(), default_value = "ignore")]
    pub void: VoidLabel,
}

impl PascalArgs {
    pub fn options(&self) -> PascalOptions {
        PascalOptions {
            list: self.pascal_list.clone(),
            labels: self.pascal_labels.clone(),
            void: self.void,
        }
    }
}

/// The temporal-memory flags (`fss_core::temporal`) of `host eval` and `edge eval`: `--temporal`
/// and its settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TemporalArgs {
    /// DAVIS: segment each sequence in frame order with a memory of the recent frames' confident
    /// predictions as extra support shots (a separate result from the per-frame protocol; the
    /// model sees frame 0's mask and its own predictions, no later ground truth).
    #[arg(long)]
    pub temporal: bool,
    /// With --temporal: recent frames remembered.
    #[arg(long, default_value_t = TemporalOptions::default().window, requires = "temporal")]
    pub temporal_window: usize,
    /// With --temporal: foreground probability above which a remembered pixel is foreground
    /// (below 1 - it: background; the band between is left out).
    #[arg(long, default_value_t = TemporalOptions::default().confidence, requires = "temporal")]
    pub temporal_confidence: f32,
    /// With --temporal: a prediction whose foreground area changes by more than this ratio
    /// against the remembered frames' median is redone with the support alone, and the memory
    /// emptied.
    #[arg(long, default_value_t = TemporalOptions::default().max_area_change, requires = "temporal")]
    pub temporal_max_area_change: f32,
    /// With --temporal: location prior; cells farther from the previous frame's foreground
    /// than this many times the square root of its cell count cannot be foreground (0: off).
    #[arg(long, default_value_t = TemporalOptions::default().reach, requires = "temporal")]
    pub temporal_reach: f32,
}

impl TemporalArgs {
    /// The memory's settings with `--temporal`, else `None`.
    pub fn options(&self) -> Option<TemporalOptions> {
        self.temporal.then_some(TemporalOptions {
            window: self.temporal_window,
            confidence: self.temporal_confidence,
            max_area_change: self.temporal_max_area_change,
            reach: self.temporal_reach,
        })
    }
}

/// The protocol flags shared by `host eval` and `edge eval` (flattened into both, so the two
/// commands take the same flags with the same meaning).
#[derive(Debug, Clone, clap::Args)]
pub struct ProtocolArgs {
    #[arg(long, value_parser = choice::<Protocol>())]
    pub protocol: Protocol,
    /// Dataset root: DAVIS layout (davis), COCO128 layout (coco), class folders (folder),
    /// VOC2012 layout (pascal).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub shots: usize,
    /// Episodes per fold per run (coco, pascal, folder; default 1000, or the preset's; given
    /// with --preset it replaces the preset's count for a shorter run).
    #[arg(long)]
    pub episodes: Option<usize>,
    /// Runs: seeds seed..seed+runs-1.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folds to evaluate (coco: default the model's training fold, else all four; pascal: all four).
    #[arg(long, value_delimiter = ',')]
    pub folds: Option<Vec<usize>>,
    /// Write the scored episodes as JSON Lines.
    #[arg(long)]
    pub write_episodes: Option<PathBuf>,
    /// Replay episodes from a JSON Lines file instead of sampling.
    #[arg(long)]
    pub episodes_file: Option<PathBuf>,
    #[command(flatten)]
    pub pascal: PascalArgs,
    /// COCO or PASCAL: a published harness's settings (input geometry, label resolution, 255
    /// handling, small-object rule, episodes, seeds, split; methods.md §7.4). Replaces --runs,
    /// --seed, --void and, unless given, --episodes.
    #[arg(long, value_parser = choice::<Preset>())]
    pub preset: Option<Preset>,
    /// SMCP: the prototype that guides the final pass: fused (the paper's inference), support
    /// (one pass, the support prototype alone) or pseudo (the query's pseudo-prototype alone).
    #[arg(long, value_parser = choice::<fss_core::smcp::SmcpGuidance>(), default_value = "fused")]
    pub smcp_guidance: fss_core::smcp::SmcpGuidance,
    /// SG-One with several shots: avg (one pass with the mean of the shots' guidance vectors,
    /// the paper's better variant) or max (one pass per shot, union of the predictions).
    #[arg(long, value_parser = choice::<fss_core::sgone::SgOneKShot>(), default_value = "avg")]
    pub sgone_kshot: fss_core::sgone::SgOneKShot,
    #[command(flatten)]
    pub temporal: TemporalArgs,
    /// Also write the results as a Markdown table (per fold mIoU and FB-IoU, mean ± std over
    /// runs) to FILE.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Print one JSON line (the evaluation schema) on stdout.
    #[arg(long)]
    pub json: bool,
}

impl ProtocolArgs {
    /// The preset's harness settings on this protocol (`None` without a preset, or for a
    /// protocol presets do not apply to, which [`run_protocol`] refuses).
    pub fn preset_harness(&self) -> Option<PresetHarness> {
        let benchmark = match self.protocol {
            Protocol::Coco => Benchmark::Coco,
            Protocol::Pascal => Benchmark::Pascal,
            Protocol::Davis | Protocol::Folder => return None,
        };
        Some(self.preset?.settings().harness(benchmark))
    }

    /// The request for [`run_protocol`]; `trained_fold` is the model's COCO training fold.
    pub fn request(&self, trained_fold: Option<usize>) -> ProtocolRequest {
        ProtocolRequest {
            protocol: self.protocol,
            data: self.data.clone(),
            shots: self.shots,
            episodes: self.episodes,
            runs: self.runs,
            seed: self.seed,
            folds: self.folds.clone(),
            trained_fold,
            write_episodes: self.write_episodes.clone(),
            episodes_file: self.episodes_file.clone(),
            preset: self.preset,
            pascal: self.pascal.options(),
            temporal: self.temporal.options(),
        }
    }

    /// Runs the protocol with a progress bar on stderr and prints the report (JSON line or
    /// summary) on stdout.
    pub fn run_and_print(
        &self,
        encoder: &mut dyn FeatureEncoder,
        input: ScoringInput,
        base: EvalReport,
        trained_fold: Option<usize>,
    ) -> Result<EvalReport> {
        let bar = progress_bar(self.protocol.name());
        let mut progress = |done: usize, total: usize| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        };
        let report = run_protocol(
            encoder,
            input,
            &self.request(trained_fold),
            base,
            &mut progress,
        )?;
        bar.finish_and_clear();
        if self.json {
            println!("{}", report.to_json_line());
        } else {
            println!("{}", report.human_summary());
        }
        if let Some(path) = &self.markdown {
            fss_core::fsutil::write_atomic(path, report.markdown_table().as_bytes())?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Debug, Parser)]
    struct Eval {
        #[command(flatten)]
        eval: ProtocolArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<Eval, clap::Error> {
        let matches = Eval::command().try_get_matches_from(args)?;
        Eval::from_arg_matches(&matches)
    }

    #[test]
    fn choices_parse_by_name_with_their_defaults() {
        let e = parse(&[
            "eval",
            "--protocol",
            "pascal",
            "--data",
            "d",
            "--preset",
            "pfenet",
        ])
        .unwrap()
        .eval;
        assert_eq!(e.protocol, Protocol::Pascal);
        assert_eq!(e.preset, Some(Preset::Pfenet));
        assert_eq!(e.smcp_guidance, fss_core::smcp::SmcpGuidance::Fused);
        assert_eq!(e.sgone_kshot, fss_core::sgone::SgOneKShot::Avg);
        assert_eq!(e.pascal.void, VoidLabel::Ignore);
        let e = parse(&[
            "eval",
            "--protocol",
            "coco",
            "--data",
            "d",
            "--void",
            "background",
            "--smcp-guidance",
            "pseudo",
        ])
        .unwrap()
        .eval;
        assert_eq!(e.pascal.void, VoidLabel::Background);
        assert_eq!(e.smcp_guidance, fss_core::smcp::SmcpGuidance::Pseudo);
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_possible_values() {
        let e = parse(&["eval", "--protocol", "imagenet", "--data", "d"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("imagenet"), "{e}");
        for name in ["davis", "coco", "folder", "pascal"] {
            assert!(e.contains(name), "{e}");
        }
    }

    #[test]
    fn help_lists_every_value_with_its_description() {
        let help = Eval::command().render_long_help().to_string();
        for &(_, name, _) in Preset::VARIANTS {
            assert!(help.contains(name), "{help}");
        }
        // The library's one-line description of a value reaches --help.
        assert!(help.contains("The pseudo-prototype alone"), "{help}");
    }

    #[test]
    fn temporal_settings_need_temporal() {
        let e = parse(&["eval", "--protocol", "davis", "--data", "d"])
            .unwrap()
            .eval;
        assert_eq!(e.temporal.options(), None);
        let e = parse(&[
            "eval",
            "--protocol",
            "davis",
            "--data",
            "d",
            "--temporal",
            "--temporal-window",
            "2",
        ])
        .unwrap()
        .eval;
        assert_eq!(
            e.temporal.options(),
            Some(TemporalOptions {
                window: 2,
                ..TemporalOptions::default()
            })
        );
        let e = parse(&[
            "eval",
            "--protocol",
            "davis",
            "--data",
            "d",
            "--temporal-window",
            "2",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--temporal"), "{e}");
    }
}
