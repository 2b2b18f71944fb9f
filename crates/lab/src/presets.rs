//! Harness presets `--preset {panet,oslsm,hsnet,pfenet,bam}`: the test settings of the published
//! codebases as data (methods.md §7.4, §7.2, §7.5, §10.4; docs/evaluation.md "PASCAL-5i and
//! COCO-20i").
//!
//! A preset fixes the network input geometry, the resolution the labels are scored at, what the
//! VOC label 255 becomes, episodes per fold, the seeds (runs), the COCO-20i fold definition and
//! the small-object filter. Two caveats hold for every preset:
//!
//! * Episodes come from this project's ChaCha8 sampler seeded with the preset's seed numbers, not
//!   from Python's Mersenne Twister: the *settings* match, the episode lists do not (methods.md
//!   §11.4; replay exported lists with `--episodes-file` for exact comparisons).
//! * BAM draws its 5 seeds from `np.random` seeded with 123; those values cannot be had without
//!   NumPy, so the preset uses seeds 123..127 (five runs, reported as the mean, as BAM does).
//!
//! * Interpolation is the project's canonical scoring (half-pixel bilinear logits, PIL-style
//!   nearest labels, triangle-filter image resize) in every preset, not each codebase's
//!   `align_corners=True` / OpenCV variants (methods.md §11.1).
//!
//! Every preset runs on the COCO (`--protocol coco`) and PASCAL-5i (`--protocol pascal`)
//! harnesses ([`crate::eval::run_protocol`], [`PresetSettings::harness`]):
//!
//! * `panet`, `hsnet`: images stretched to 417² / 400², labels nearest-resized to it.
//! * `oslsm`: every image encoded at its own size (the encoder is called once per distinct
//!   size; the tract backend pins and optimises one plan per size, keeping the last
//!   `runtime::tract_backend::MAX_PLANS`), scored on the original label, VOC 255 -> background, the
//!   OSLSM 1/32-grid small-object rule ([`crate::data::OSLSM_MIN_CELLS`]).
//! * `pfenet`, `bam`: PFENet's test resize ([`fss_core::preprocess::Placement::longer_side_padded`]:
//!   longer side to 473 / 641 rounded down to a multiple of 8, top-left on a black square),
//!   support masks padded with 255 (neither foreground nor background), and the prediction read
//!   back from the square onto the original label grid through the content box
//!   ([`fss_core::preprocess::Placement::source_taps`]), so the padding is never scored. PFENet
//!   instead stretches the whole square's logits to the longer side of the label (padded with
//!   255); both ignore the padding, but PFENet's mapping is off by the rounding to 8 (up to
//!   8/473 of a side), ours is exact.
//!
//! `--episodes N` given with a preset replaces its episode count (a shorter run; the report's
//! `episodes` says so); `--runs` and `--seed` are always the preset's.

use crate::data::coco::FoldSplit;
use crate::data::pascal::VoidLabel;
use fss_core::error::Result;
use fss_core::preprocess::{InputGeometry, InputSize};

/// The published test harnesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    Panet,
    Oslsm,
    Hsnet,
    Pfenet,
    Bam,
}

fss_core::choices!(Preset {
    Panet => "panet", "";
    Oslsm => "oslsm", "";
    Hsnet => "hsnet", "";
    Pfenet => "pfenet", "";
    Bam => "bam", "";
});

/// How the query (and supports) enter the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRule {
    /// Stretched to a fixed size, aspect not kept.
    Stretch(InputSize),
    /// Original size.
    Original,
    /// Longer side to `pascal` / `coco` pixels (rounded down to a multiple of 8), aspect kept,
    /// zero-padded to a square.
    LongerSidePadded { pascal: usize, coco: usize },
}

/// The resolution labels are scored at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelRule {
    /// Nearest-resized to the network input (PANet 417², HSNet 400²).
    ResizedToInput,
    /// Original resolution (prediction upsampled to it).
    Original,
}

/// Pixel filter on the (image, class) pairs episodes are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmallObjectRule {
    /// Class membership only.
    None,
    /// At least this many pixels at original resolution (PFENet/BAM: 2 x 32 x 32).
    MinPixels(u64),
    /// OSLSM / SG-One: the object must cover more than 2 cells of a 1/32 grid (methods.md §4.5).
    OslsmGrid,
    /// Pre-filtered (image, class) lists shipped with the codebase (HSNet).
    ShippedLists,
}

/// One preset's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetSettings {
    pub input: InputRule,
    pub label: LabelRule,
    /// What VOC's 255 becomes at test time.
    pub void: VoidLabel,
    pub episodes_pascal: usize,
    pub episodes_coco: usize,
    /// One run per seed.
    pub seeds: Vec<u64>,
    pub coco_split: FoldSplit,
    pub small_objects: SmallObjectRule,
}

impl Preset {
    /// The settings table (methods.md §7.4).
    pub fn settings(self) -> PresetSettings {
        match self {
            Preset::Panet => PresetSettings {
                input: InputRule::Stretch(InputSize::new(417, 417)),
                label: LabelRule::ResizedToInput,
                void: VoidLabel::Ignore,
                episodes_pascal: 1000,
                episodes_coco: 1000,
                seeds: (1234..=1238).collect(),
                coco_split: FoldSplit::Contiguous,
                small_objects: SmallObjectRule::None,
            },
            Preset::Oslsm => PresetSettings {
                input: InputRule::Original,
                label: LabelRule::Original,
                void: VoidLabel::Background,
                episodes_pascal: 1000,
                episodes_coco: 1000,
                seeds: vec![1385],
                // OSLSM / SG-One define no COCO split; the project default is kept.
                coco_split: FoldSplit::Interleaved,
                small_objects: SmallObjectRule::OslsmGrid,
            },
            Preset::Hsnet => PresetSettings {
                input: InputRule::Stretch(InputSize::new(400, 400)),
                label: LabelRule::ResizedToInput,
                void: VoidLabel::Ignore,
                episodes_pascal: 1000,
                episodes_coco: 1000,
                seeds: vec![0],
                coco_split: FoldSplit::Interleaved,
                small_objects: SmallObjectRule::ShippedLists,
            },
            Preset::Pfenet => PresetSettings {
                input: InputRule::LongerSidePadded {
                    pascal: 473,
                    coco: 641,
                },
                label: LabelRule::Original,
                void: VoidLabel::Ignore,
                episodes_pascal: 5000,
                episodes_coco: 20000,
                seeds: vec![321],
                coco_split: FoldSplit::Interleaved,
                small_objects: SmallObjectRule::MinPixels(2048),
            },
            Preset::Bam => PresetSettings {
                input: InputRule::LongerSidePadded {
                    pascal: 473,
                    coco: 641,
                },
                label: LabelRule::Original,
                void: VoidLabel::Ignore,
                episodes_pascal: 1000,
                episodes_coco: 1000,
                seeds: (123..=127).collect(),
                coco_split: FoldSplit::Interleaved,
                small_objects: SmallObjectRule::MinPixels(2048),
            },
        }
    }
}

/// The benchmark a preset is applied to (sizes and episode counts differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Benchmark {
    /// PASCAL-5i (`--protocol pascal`).
    Pascal,
    /// COCO-20i (`--protocol coco`).
    Coco,
}

/// What the episode harness ([`crate::eval::run_protocol`]) takes from a preset on one
/// benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetHarness {
    /// How images enter the network.
    pub geometry: InputGeometry,
    /// Score at the network input (labels nearest-resized to it) instead of the label's own
    /// size.
    pub label_at_input: bool,
    /// What PASCAL's 255 becomes (COCO masks have no 255).
    pub void: VoidLabel,
    pub episodes: usize,
    /// First seed; runs use `seed..seed + runs` (the preset's seeds are consecutive).
    pub seed: u64,
    pub runs: usize,
    /// COCO-20i fold definition.
    pub split: FoldSplit,
    /// Class pixels an (image, class) pair needs at original resolution.
    pub min_pixels: u64,
    /// The OSLSM 1/32-grid rule ([`crate::data::OSLSM_MIN_CELLS`]) on top of `min_pixels`.
    pub oslsm_grid: bool,
}

/// The settings the COCO episodes harness runs (kept for callers of [`PresetSettings::coco`]).
pub type CocoPreset = PresetHarness;

impl PresetHarness {
    /// The network input size when it is the same for every image (`None`: each image at its
    /// own size).
    pub fn size(&self) -> Option<InputSize> {
        self.geometry.fixed_size()
    }
}

impl PresetSettings {
    /// The harness settings of this preset on `benchmark`.
    pub fn harness(&self, benchmark: Benchmark) -> PresetHarness {
        let geometry = match self.input {
            InputRule::Stretch(s) => InputGeometry::Stretch(s),
            InputRule::Original => InputGeometry::Original,
            InputRule::LongerSidePadded { pascal, coco } => {
                InputGeometry::LongerSidePadded(match benchmark {
                    Benchmark::Pascal => pascal,
                    Benchmark::Coco => coco,
                })
            }
        };
        let (min_pixels, oslsm_grid) = match self.small_objects {
            SmallObjectRule::None => (1, false),
            SmallObjectRule::MinPixels(n) => (n, false),
            SmallObjectRule::OslsmGrid => (1, true),
            // HSNet's shipped (image, class) lists are not available here; they descend from
            // PFENet's filtered lists (methods.md §7.5), so the 2,048 px rule stands in.
            SmallObjectRule::ShippedLists => (crate::data::coco::DEFAULT_MIN_PIXELS, false),
        };
        let seed = self.seeds[0];
        debug_assert!(self
            .seeds
            .iter()
            .enumerate()
            .all(|(i, &s)| s == seed + i as u64));
        PresetHarness {
            geometry,
            label_at_input: self.label == LabelRule::ResizedToInput,
            void: self.void,
            episodes: match benchmark {
                Benchmark::Pascal => self.episodes_pascal,
                Benchmark::Coco => self.episodes_coco,
            },
            seed,
            runs: self.seeds.len(),
            split: self.coco_split,
            min_pixels,
            oslsm_grid,
        }
    }

    /// [`Self::harness`] on COCO.
    pub fn coco(&self) -> Result<CocoPreset> {
        Ok(self.harness(Benchmark::Coco))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_core::choice::Choice;

    #[test]
    fn table_matches_methods_7_4() {
        let p = Preset::Panet.settings();
        assert_eq!(p.input, InputRule::Stretch(InputSize::new(417, 417)));
        assert_eq!(p.label, LabelRule::ResizedToInput);
        assert_eq!(p.void, VoidLabel::Ignore);
        assert_eq!((p.episodes_pascal, p.episodes_coco), (1000, 1000));
        assert_eq!(p.seeds, vec![1234, 1235, 1236, 1237, 1238]);
        assert_eq!(p.coco_split, FoldSplit::Contiguous);

        let o = Preset::Oslsm.settings();
        assert_eq!(
            (o.input, o.label),
            (InputRule::Original, LabelRule::Original)
        );
        assert_eq!(o.void, VoidLabel::Background);
        assert_eq!(o.seeds, vec![1385]);

        let h = Preset::Hsnet.settings();
        assert_eq!(h.input, InputRule::Stretch(InputSize::new(400, 400)));
        assert_eq!(h.seeds, vec![0]);
        assert_eq!(h.episodes_coco, 1000);
        assert_eq!(h.coco_split, FoldSplit::Interleaved);

        let f = Preset::Pfenet.settings();
        assert_eq!(
            f.input,
            InputRule::LongerSidePadded {
                pascal: 473,
                coco: 641
            }
        );
        assert_eq!((f.episodes_pascal, f.episodes_coco), (5000, 20000));
        assert_eq!(f.seeds, vec![321]);
        assert_eq!(f.label, LabelRule::Original);
        assert_eq!(f.small_objects, SmallObjectRule::MinPixels(2048));

        let b = Preset::Bam.settings();
        assert_eq!(b.seeds.len(), 5);
        assert_eq!(b.episodes_pascal, 1000);
        assert_eq!(b.input, f.input);

        for &(p, _, _) in Preset::VARIANTS {
            let s = p.settings();
            assert!(!s.seeds.is_empty());
            // Seeds are consecutive, so `--seed S --runs R` expresses them.
            assert!(s.seeds.windows(2).all(|w| w[1] == w[0] + 1));
        }
    }

    #[test]
    fn harness_settings() {
        let c = Preset::Panet.settings().coco().unwrap();
        assert_eq!(c.size(), Some(InputSize::new(417, 417)));
        assert!(c.label_at_input);
        assert_eq!((c.seed, c.runs, c.episodes), (1234, 5, 1000));
        assert_eq!(
            (c.split, c.min_pixels, c.oslsm_grid),
            (FoldSplit::Contiguous, 1, false)
        );
        let c = Preset::Hsnet.settings().harness(Benchmark::Coco);
        assert_eq!((c.seed, c.runs, c.min_pixels), (0, 1, 2048));

        let o = Preset::Oslsm.settings().harness(Benchmark::Pascal);
        assert_eq!((o.geometry, o.size()), (InputGeometry::Original, None));
        assert!(!o.label_at_input && o.oslsm_grid);
        assert_eq!(
            (o.void, o.seed, o.runs, o.episodes),
            (VoidLabel::Background, 1385, 1, 1000)
        );

        let f = Preset::Pfenet.settings();
        let (fp, fc) = (f.harness(Benchmark::Pascal), f.harness(Benchmark::Coco));
        assert_eq!(fp.geometry, InputGeometry::LongerSidePadded(473));
        assert_eq!(fc.size(), Some(InputSize::new(641, 641)));
        assert_eq!((fp.episodes, fc.episodes), (5000, 20000));
        assert_eq!((fp.seed, fp.runs, fp.min_pixels), (321, 1, 2048));
        assert!(!fp.label_at_input && !fp.oslsm_grid);
        assert_eq!(fp.void, VoidLabel::Ignore);

        let b = Preset::Bam.settings().harness(Benchmark::Pascal);
        assert_eq!((b.seed, b.runs, b.episodes), (123, 5, 1000));
        assert_eq!(b.geometry, fp.geometry);
        assert_eq!(b.split, FoldSplit::Interleaved);
    }
}
