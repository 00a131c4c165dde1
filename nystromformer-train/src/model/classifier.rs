//! The sequence classifier (ListOps, text, image): the library's encoder with mean pooling and a
//! classification head, as in LRA.

use burn::module::Module;
use burn::tensor::Device;
use burn::train::ClassificationOutput;
use nystromformer::model::{
    EncoderInput, NystromformerConfig, NystromformerForSequenceClassification, Pooling,
};

use super::{classification_output, learner_steps};
use crate::data::batcher::ClassificationBatch;

/// Sequence classifier (LRA style: mean pooling).
#[derive(Module, Debug)]
pub struct Classifier {
    /// Encoder and head.
    pub model: NystromformerForSequenceClassification,
}

impl Classifier {
    /// A fresh classifier.
    pub fn new(config: &NystromformerConfig, num_classes: usize, device: &Device) -> Self {
        Self {
            model: NystromformerForSequenceClassification::new(
                config,
                num_classes,
                Pooling::Mean,
                device,
            ),
        }
    }

    /// Logits and cross-entropy loss of a batch.
    pub fn forward_classification(&self, batch: ClassificationBatch) -> ClassificationOutput {
        let input = EncoderInput::new(batch.tokens).mask_pad(batch.mask_pad);
        classification_output(self.model.forward(input), batch.labels)
    }
}

learner_steps!(Classifier, ClassificationBatch);
