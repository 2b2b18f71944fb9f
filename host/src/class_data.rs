//! The class-episode source of a training run: one dataset of labelled images (COCO128, COCO as
//! distributed, PASCAL VOC with SBD, or the user folder format), the classes a run may train on,
//! and the labels of its images.
//!
//! The fold rule is the same for every class dataset: the novel classes of the run's fold are
//! never a training target, and their pixels are background in every label (the binary
//! episode masks keep only the episode's class; SMCP's multi-class targets ignore novel pixels).
//! COCO (both layouts) trains on the 60 base classes of its COCO-20i fold from `train2017`;
//! PASCAL on the 15 base classes of its PASCAL-5i fold from the `trainaug` list (SBD-augmented,
//! 10,582 images when present) or else `train`, with the void label 255 ignored by the losses; a
//! folder dataset is the user's own data: every class trains (evaluate on other folders).

use crate::run::{DataLayout, DataSource};
use anyhow::{bail, Result};
use fss_core::tensor::Mask;
use fss_lab::data::coco::{base_classes, check_fold, CocoMaskDataset, FoldSplit};
use fss_lab::data::folder::FolderDataset;
use fss_lab::data::pascal::{pascal_base_classes, PascalDataset, PascalOptions, VoidLabel, VOID};
use fss_lab::sampler::{TrainingSampler, TrainingSpec};
use std::path::Path;

/// An opened class dataset.
pub enum ClassData {
    /// COCO128 or COCO as distributed, with its `train2017` images (pool indices).
    Coco {
        dataset: Box<CocoMaskDataset>,
        split: FoldSplit,
        train: Vec<usize>,
    },
    /// PASCAL VOC opened on its training list.
    Pascal {
        dataset: PascalDataset,
        list: String,
    },
    Folder(FolderDataset),
}

impl ClassData {
    /// Opens a class source of a run (`split`: the COCO fold split).
    pub fn open(source: &DataSource, split: FoldSplit) -> Result<ClassData> {
        let path = Path::new(&source.path);
        Ok(match source.layout {
            DataLayout::Coco128 | DataLayout::Coco => {
                let dataset = CocoMaskDataset::open(path)?;
                let train = dataset.indices_of_split("train2017");
                if train.is_empty() {
                    bail!(
                        "{}: no train2017 images with labels to train on",
                        source.path
                    );
                }
                ClassData::Coco {
                    dataset: Box::new(dataset),
                    split,
                    train,
                }
            }
            DataLayout::Pascal => {
                let list = if path.join("ImageSets/Segmentation/trainaug.txt").is_file() {
                    "trainaug"
                } else {
                    "train"
                };
                let options = PascalOptions {
                    list: list.to_string(),
                    labels: None,
                    void: VoidLabel::Ignore,
                };
                ClassData::Pascal {
                    dataset: PascalDataset::open(path, &options)?,
                    list: list.to_string(),
                }
            }
            DataLayout::Folder => ClassData::Folder(FolderDataset::open(path)?),
            DataLayout::Davis => bail!(
                "{}: a DAVIS folder gives video episodes, not class episodes",
                source.path
            ),
        })
    }

    /// The classes a run of `fold` trains on (ascending class keys): COCO's and PASCAL's base
    /// classes of the fold, every class of a folder dataset.
    pub fn training_classes(&self, fold: usize) -> Result<Vec<u8>> {
        Ok(match self {
            ClassData::Coco { split, .. } => {
                check_fold(fold)?;
                base_classes(*split, fold)
            }
            ClassData::Pascal { .. } => pascal_base_classes(fold)?,
            ClassData::Folder(d) => (1..=d.classes().len() as u8).collect(),
        })
    }

    /// The resumable episode sampler of a new run.
    pub fn sampler(&self, spec: TrainingSpec, seed: u64) -> Result<TrainingSampler> {
        Ok(match self {
            ClassData::Coco { dataset, train, .. } => {
                TrainingSampler::new(dataset, spec, train, seed)?
            }
            ClassData::Pascal { dataset, .. } => TrainingSampler::over(
                dataset,
                &self.training_classes(spec.fold)?,
                None,
                spec,
                seed,
            )?,
            ClassData::Folder(d) => {
                TrainingSampler::over(d, &self.training_classes(spec.fold)?, None, spec, seed)?
            }
        })
    }

    /// What the sampler draws from, for the run's first line.
    pub fn describe(&self, sampler: &TrainingSampler, fold: usize) -> String {
        let n = sampler.classes().len();
        match self {
            ClassData::Coco { train, .. } => format!(
                "{n} base classes of fold {fold} ({} train2017 images)",
                train.len()
            ),
            ClassData::Pascal { dataset, list } => format!(
                "{n} base classes of PASCAL-5i fold {fold} ({} images of the {list} list)",
                dataset.len()
            ),
            ClassData::Folder(d) => format!("{n} class folders ({} images)", d.len()),
        }
    }

    pub fn load_image(&self, i: usize) -> Result<image::RgbImage> {
        Ok(match self {
            ClassData::Coco { dataset, .. } => dataset.load_image(i)?,
            ClassData::Pascal { dataset, .. } => dataset.load_image(i)?,
            ClassData::Folder(d) => d.load_image(i)?,
        })
    }

    /// The label value the losses ignore (PASCAL's void 255), if the dataset has one.
    pub fn ignore_label(&self) -> Option<u8> {
        match self {
            ClassData::Pascal { .. } => Some(VOID),
            _ => None,
        }
    }

    /// Image `i`'s labels at original resolution: the class key of each pixel (COCO class index,
    /// VOC id, folder class position + 1), 0 background, [`ClassData::ignore_label`] on void.
    pub fn label_map(&self, i: usize) -> Result<Mask> {
        Ok(match self {
            ClassData::Coco { dataset, .. } => dataset.label_map(i)?,
            ClassData::Pascal { dataset, .. } => dataset.label_map(i)?,
            ClassData::Folder(d) => {
                let key = d.image(i)?.class as u8 + 1;
                let mut m = d.load_mask(i)?;
                m.data.iter_mut().for_each(|v| *v *= key);
                m
            }
        })
    }
}

/// The number of classes of SMCP's multi-class head for a run: the training classes of the
/// run's class source (or COCO's 60 base classes when it has none) plus background.
pub fn smcp_class_count(sources: &[DataSource], split: FoldSplit, fold: usize) -> Result<i64> {
    let classes = match sources.iter().find(|s| s.layout.is_class()) {
        Some(s) if s.layout == DataLayout::Folder => {
            ClassData::open(s, split)?.training_classes(fold)?.len()
        }
        Some(s) if s.layout == DataLayout::Pascal => pascal_base_classes(fold)?.len(),
        _ => {
            check_fold(fold)?;
            base_classes(split, fold).len()
        }
    };
    Ok(classes as i64 + 1)
}
