//! The classifier trained by `train`: the library's encoder with mean pooling and a head, with
//! burn-train's training and inference steps.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::Device;
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use nystromformer::model::{
    EncoderInput, NystromformerConfig, NystromformerForSequenceClassification, Pooling,
};

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
        let logits = self.model.forward(input);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.labels.clone());
        ClassificationOutput::new(loss, logits, batch.labels)
    }
}

impl TrainStep for Classifier {
    type Input = ClassificationBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ClassificationBatch) -> TrainOutput<ClassificationOutput> {
        let output = self.forward_classification(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl InferenceStep for Classifier {
    type Input = ClassificationBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ClassificationBatch) -> ClassificationOutput {
        self.forward_classification(batch)
    }
}
