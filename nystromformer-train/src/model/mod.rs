//! The models `train` fits, one per kind of task, each with burn-train's training and inference
//! steps. All of them report a [`ClassificationOutput`] (logits and targets), so loss and
//! accuracy metrics, evaluation and checkpoints work the same way for every task.

pub mod classifier;
pub mod dual_encoder;
pub mod head;
pub mod masked_lm;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Int, Tensor};
use burn::train::ClassificationOutput;

pub use classifier::Classifier;
pub use dual_encoder::DualEncoderClassifier;
pub use masked_lm::MaskedLanguageModel;

/// Cross-entropy of `logits` (`[k, classes]`) against `targets` (`[k]`), with both kept for the
/// metrics.
pub fn classification_output(logits: Tensor<2>, targets: Tensor<1, Int>) -> ClassificationOutput {
    let loss = CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits.clone(), targets.clone());
    ClassificationOutput::new(loss, logits, targets)
}

/// Implements burn-train's `TrainStep` and `InferenceStep` for a model with a
/// `forward_classification(&self, Batch) -> ClassificationOutput` method.
macro_rules! learner_steps {
    ($model:ty, $batch:ty) => {
        impl burn::train::TrainStep for $model {
            type Input = $batch;
            type Output = burn::train::ClassificationOutput;

            fn step(
                &self,
                batch: $batch,
            ) -> burn::train::TrainOutput<burn::train::ClassificationOutput> {
                let output = self.forward_classification(batch);
                burn::train::TrainOutput::new(self, output.loss.backward(), output)
            }
        }

        impl burn::train::InferenceStep for $model {
            type Input = $batch;
            type Output = burn::train::ClassificationOutput;

            fn step(&self, batch: $batch) -> burn::train::ClassificationOutput {
                self.forward_classification(batch)
            }
        }
    };
}
pub(crate) use learner_steps;
