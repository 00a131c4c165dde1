//! Masked-LM pretraining, the paper's pretraining objective: the library's
//! `NystromformerForMaskedLM`, with the head applied at the chosen positions only.

use burn::module::Module;
use burn::tensor::Device;
use burn::train::ClassificationOutput;
use nystromformer::model::{EncoderInput, NystromformerConfig, NystromformerForMaskedLM};

use super::{classification_output, learner_steps};
use crate::data::masking::MaskedLmBatch;

/// Encoder and masked-LM head.
#[derive(Module, Debug)]
pub struct MaskedLanguageModel {
    /// The HF-layout model (`nystromformer` encoder, `cls` head).
    pub model: NystromformerForMaskedLM,
}

impl MaskedLanguageModel {
    /// A fresh model.
    pub fn new(config: &NystromformerConfig, device: &Device) -> Self {
        Self {
            model: NystromformerForMaskedLM::new(config, device),
        }
    }

    /// Token logits at the chosen positions (`[k, vocab]`) and their cross-entropy. Running the
    /// head only there saves a `[batch, n, vocab]` projection.
    pub fn forward_classification(&self, batch: MaskedLmBatch) -> ClassificationOutput {
        let hidden = self
            .model
            .nystromformer
            .forward(EncoderInput::new(batch.tokens).mask_pad(batch.mask_pad));
        let [rows, len, width] = hidden.dims();
        let chosen = hidden
            .reshape([rows * len, width])
            .select(0, batch.positions)
            .unsqueeze_dim::<3>(0);
        let logits = self.model.cls.forward(chosen).squeeze_dim::<2>(0);
        classification_output(logits, batch.targets)
    }
}

learner_steps!(MaskedLanguageModel, MaskedLmBatch);
