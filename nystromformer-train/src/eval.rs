//! `eval`: accuracy and loss of a trained model on a data file.

use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::Device;
use burn::train::InferenceStep;
use serde::Serialize;

use crate::config::{ExperimentConfig, Task};
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

/// Evaluates `model` on `items`, `batch_size` at a time, with the evaluation batcher
/// ([`evaluation_seed`]). Accuracy and loss are means over targets: examples for the
/// classification tasks, masked positions for masked-LM.
pub fn evaluate<T: TaskSpec>(
    model: &T::Model,
    items: &[T::Item],
    config: &ExperimentConfig,
    device: &Device,
) -> EvalResult {
    let batcher = T::batcher(config, evaluation_seed(config));
    let (mut correct, mut loss_sum, mut targets) = (0i64, 0.0f64, 0usize);
    for chunk in items.chunks(config.batch_size.max(1)) {
        let output = InferenceStep::step(model, batcher.batch(chunk.to_vec(), device));
        let count = output.targets.dims()[0];
        let predicted = output.output.argmax(1).reshape([count]);
        correct += predicted
            .equal(output.targets)
            .int()
            .sum()
            .into_scalar::<i64>();
        loss_sum += output.loss.into_scalar::<f32>() as f64 * count as f64;
        targets += count;
    }
    EvalResult {
        accuracy: correct as f64 / targets.max(1) as f64,
        loss: loss_sum / targets.max(1) as f64,
        count: items.len(),
    }
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
