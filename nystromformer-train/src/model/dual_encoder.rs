//! LRA Retrieval's two-tower model: one shared encoder embeds both documents (mean pooling),
//! and LRA's dual classification head reads `[u, v, u ⊙ v, u − v]` through a ReLU MLP.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::tensor::{Device, Tensor};
use burn::train::ClassificationOutput;
use nystromformer::model::{EncoderInput, NystromformerConfig, NystromformerEncoder, Pooling};

use super::{classification_output, learner_steps};
use crate::data::batcher::PairBatch;

/// Two-tower document matcher with a shared encoder.
#[derive(Module, Debug)]
pub struct DualEncoderClassifier {
    /// The encoder both documents go through.
    pub encoder: NystromformerEncoder,
    /// `4 · hidden → intermediate` layer of the head.
    pub dense: Linear,
    /// `intermediate → classes` layer of the head.
    pub output: Linear,
    /// The head's activation.
    pub activation: Relu,
}

impl DualEncoderClassifier {
    /// A fresh model; the head's hidden width is the encoder's feed-forward width (LRA's
    /// `transformer_hidden_dim`).
    pub fn new(config: &NystromformerConfig, num_classes: usize, device: &Device) -> Self {
        Self {
            encoder: config.init(device),
            dense: LinearConfig::new(4 * config.hidden_size, config.intermediate_size).init(device),
            output: LinearConfig::new(config.intermediate_size, num_classes).init(device),
            activation: Relu::new(),
        }
    }

    /// Logits and cross-entropy loss of a batch of pairs.
    pub fn forward_classification(&self, batch: PairBatch) -> ClassificationOutput {
        let mask = batch.mask_pad.clone();
        let hidden = self
            .encoder
            .forward(EncoderInput::new(batch.tokens).mask_pad(batch.mask_pad));
        let pooled = Pooling::Mean.forward(hidden, Some(&mask));
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
        let logits = self
            .output
            .forward(self.activation.forward(self.dense.forward(features)));
        classification_output(logits, batch.labels)
    }
}

learner_steps!(DualEncoderClassifier, PairBatch);
