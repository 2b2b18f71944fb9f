//! The model as every harness, the device and the host see it: an encoder of preprocessed
//! images into feature maps plus the method's head over the support's prototypes. `host`
//! implements it in tch, `fss-runtime` on tract; the harnesses of `fss-lab` run either.

use crate::error::Result;
use crate::method::SupportState;
use crate::preprocess::{InputSize, Normalization};
use crate::prototype::{
    cosine_logits, logits_to_labels, panet_prototypes, SupportShot, PANET_SCALE,
};
use crate::tensor::{FeatureMap, Mask};

/// A model as the harnesses see it: an encoder that turns preprocessed images (CHW f32 at
/// `size`) into feature maps, and the method's head that scores query features against the
/// support prototypes.
pub trait FeatureEncoder {
    fn encode_batch(&mut self, inputs: &[Vec<f32>], size: InputSize) -> Result<Vec<FeatureMap>>;
    /// How many images the encoder prefers per call.
    fn batch_size(&self) -> usize {
        1
    }
    /// The method's logits at feature resolution, `[N + 1, h, w]` (background, then one channel
    /// per target of `support`), for a query encoded at `input`. The default is PANet's cosine
    /// x20 scoring; the methods' own are [`crate::method::Method::logits`].
    fn head_logits(
        &mut self,
        support: &SupportState,
        query: &FeatureMap,
        input: InputSize,
    ) -> Result<FeatureMap> {
        let _ = input;
        cosine_logits(query, &support.prototypes().ordered(), PANET_SCALE)
    }
    /// What the supports leave for scoring: N targets of K shots holding encoder features ->
    /// the method's support state. The default is PANet's prototypes; the methods' own are
    /// [`crate::method::Method::prototypes`].
    fn prototypes(&mut self, ways: &[Vec<SupportShot>]) -> Result<SupportState> {
        Ok(SupportState::Panet(panet_prototypes(ways)?))
    }
}

/// One prediction of the model: labels at `label_size` (rows, columns), 0 = background,
/// i = i-th target, upsampled and argmaxed as the canonical scoring says.
pub fn predict_labels(
    model: &mut dyn FeatureEncoder,
    support: &SupportState,
    query: &FeatureMap,
    input: InputSize,
    label_size: (usize, usize),
) -> Result<Mask> {
    let logits = model.head_logits(support, query, input)?;
    Ok(logits_to_labels(&logits, label_size.0, label_size.1))
}

/// Progress callback: `(done, total)`.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// What the scoring needs to know about the model's input.
#[derive(Debug, Clone, Copy)]
pub struct ScoringInput {
    pub size: InputSize,
    pub normalization: Normalization,
}
