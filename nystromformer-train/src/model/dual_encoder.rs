//! LRA Retrieval's two-tower model: one shared encoder embeds both documents, and a head reads
//! `[u, v, u ⊙ v, u − v]` (LRA's `SCHeadDual`).

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use burn::train::ClassificationOutput;
use nystromformer::model::{EncoderInput, NystromformerConfig, NystromformerEncoder};

use super::head::{ClassifierHead, SequencePooling};
use super::{classification_output, learner_steps};
use crate::data::batcher::PairBatch;

/// Two-tower document matcher with a shared encoder.
#[derive(Module, Debug)]
pub struct DualEncoderClassifier {
    /// The encoder both documents go through.
    pub encoder: NystromformerEncoder,
    /// The head on `[u, v, u ⊙ v, u − v]` (input `4 · width`).
    pub head: ClassifierHead,
    /// How each document is pooled.
    #[module(skip)]
    pub pooling: SequencePooling,
}

impl DualEncoderClassifier {
    /// A fresh model with `head` (input `4 · hidden_size`) and `pooling`.
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

    /// Logits and cross-entropy loss of a batch of pairs.
    pub fn forward_classification(&self, batch: PairBatch) -> ClassificationOutput {
        let mask = batch.mask_pad.clone();
        let hidden = self
            .encoder
            .forward(EncoderInput::new(batch.tokens).mask_pad(batch.mask_pad));
        let pooled = self.pooling.forward(hidden, &mask);
        let pairs = pooled.dims()[0] / 2;
        let first = pooled.clone().narrow(0, 0, pairs);
        let second = pooled.narrow(0, pairs, pairs);
        let features = Tensor::cat(
            vec![
                first.clone(),
                second.clone(),
                first.clone() * second.clone(),
                first - second,
            ],
            1,
        );
        classification_output(self.head.forward(features), batch.labels)
    }
}

learner_steps!(DualEncoderClassifier, PairBatch);
