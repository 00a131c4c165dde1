//! `eval`: accuracy and loss of a trained model on a data file.

use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::Device;
use burn::train::{ClassificationOutput, InferenceStep};
use serde::Serialize;

use crate::config::{ExperimentConfig, Task};
use crate::data::rng::mix;
use crate::files::read_json;
use crate::task::{DocumentMatching, MaskedLm, SequenceClassification, TaskSpec};
use crate::training::evaluation_seed;

/// Metrics over a data set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalResult {
    /// Share of correct predictions.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Number of examples.
    pub count: usize,
}

/// Running accuracy and loss over [`ClassificationOutput`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    correct: i64,
    loss_sum: f64,
    targets: usize,
    examples: usize,
}

impl Tally {
    /// Adds one batch's output.
    pub fn add(&mut self, output: &ClassificationOutput) {
        let count = output.targets.dims()[0];
        let predicted = output.output.clone().argmax(1).reshape([count]);
        self.correct += predicted
            .equal(output.targets.clone())
            .int()
            .sum()
            .into_scalar::<i64>();
        self.loss_sum += output.loss.clone().into_scalar::<f32>() as f64 * count as f64;
        self.targets += count;
    }

    /// Means over the targets seen; `count` is the number of examples given to
    /// [`with_examples`](Self::with_examples), else the number of targets.
    pub fn result(&self) -> EvalResult {
        EvalResult {
            accuracy: self.correct as f64 / self.targets.max(1) as f64,
            loss: self.loss_sum / self.targets.max(1) as f64,
            count: if self.examples > 0 {
                self.examples
            } else {
                self.targets
            },
        }
    }

    /// Records how many examples the tally covers (masked-LM: windows, not positions).
    pub fn with_examples(mut self, examples: usize) -> Self {
        self.examples = examples;
        self
    }
}

/// Evaluates `model` on `items`, `batch_size` at a time; batch `j`'s batcher is seeded by
/// `mix(evaluation_seed, j)`, as during training's validations, so that masked-LM masks are the
/// same in every evaluation. Accuracy and loss are means over targets: examples for the
/// classification tasks, masked positions for masked-LM.
pub fn evaluate<T: TaskSpec>(
    model: &T::Model,
    items: &[T::Item],
    config: &ExperimentConfig,
    device: &Device,
) -> EvalResult {
    let mut tally = Tally::default();
    for (index, chunk) in items.chunks(config.batch_size.max(1)).enumerate() {
        let batcher = T::batcher(config, mix(evaluation_seed(config), index as u64));
        let output = InferenceStep::step(model, batcher.batch(chunk.to_vec(), device));
        tally.add(&output);
    }
    tally.with_examples(items.len()).result()
}

/// Loads `artifact_dir/config.json` and `model.bpk` and evaluates on a data file in the run's
/// task format (ListOps TSV; text TSV/CSV/JSONL; AAN pairs TSV; CIFAR-10 `.bin`; plain text).
pub fn eval_command(
    artifact_dir: &Path,
    data: &Path,
    device: &Device,
) -> Result<EvalResult, String> {
    let config: ExperimentConfig = read_json(&artifact_dir.join("config.json"))?;
    // Runs written before `pad_to_multiple` existed leave it unset.
    let config = config.for_device(device);
    match config.task {
        Task::Listops | Task::Text | Task::Image => {
            eval_task::<SequenceClassification>(&config, artifact_dir, data, device)
        }
        Task::Retrieval => eval_task::<DocumentMatching>(&config, artifact_dir, data, device),
        Task::Mlm => eval_task::<MaskedLm>(&config, artifact_dir, data, device),
    }
}

fn eval_task<T: TaskSpec>(
    config: &ExperimentConfig,
    artifact_dir: &Path,
    data: &Path,
    device: &Device,
) -> Result<EvalResult, String> {
    let model = T::load_trained(config, artifact_dir, device)?;
    let items = T::read_file(config, data)?;
    if items.is_empty() {
        return Err(format!("{}: no examples", data.display()));
    }
    Ok(evaluate::<T>(&model, &items, config, device))
}
