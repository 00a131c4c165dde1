//! The sequence classifier (ListOps, text, image): the library's encoder, a pooled sequence and
//! a two-layer head, in the layout the configuration's `architecture` names.

use burn::module::Module;
use burn::tensor::Device;
use burn::train::ClassificationOutput;
use nystromformer::model::{EncoderInput, NystromformerConfig, NystromformerEncoder};

use super::head::{ClassifierHead, SequencePooling};
use super::{classification_output, learner_steps};
use crate::data::batcher::ClassificationBatch;

/// Sequence classifier: encoder, pooling, head.
#[derive(Module, Debug)]
pub struct Classifier {
    /// The encoder.
    pub encoder: NystromformerEncoder,
    /// The head on the pooled sequence.
    pub head: ClassifierHead,
    /// How the sequence is pooled.
    #[module(skip)]
    pub pooling: SequencePooling,
}

impl Classifier {
    /// A fresh classifier with `head` and `pooling` on `config`'s encoder.
    pub fn new(
        config: &NystromformerConfig,
        head: ClassifierHead,
        pooling: SequencePooling,
        device: &Device,
    ) -> Self {
        Self {
            encoder: config.init(device),
            head,
            pooling,
        }
    }

    /// Logits and cross-entropy loss of a batch.
    pub fn forward_classification(&self, batch: ClassificationBatch) -> ClassificationOutput {
        let mask = batch.mask_pad.clone();
        let hidden = self
            .encoder
            .forward(EncoderInput::new(batch.tokens).mask_pad(batch.mask_pad));
        let logits = self.head.forward(self.pooling.forward(hidden, &mask));
        classification_output(logits, batch.labels)
    }
}

learner_steps!(Classifier, ClassificationBatch);
