//! `eval`: accuracy and loss of a trained model on a data file.

use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use crate::config::{ExperimentConfig, Task};
use crate::data::SequenceItem;
use crate::data::batcher::ClassificationBatcher;
use crate::data::listops::read_tsv;
use crate::data::text::load_split;
use crate::files::read_json;
use crate::model::Classifier;

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

/// Evaluates `model` on `items`, `batch_size` at a time.
pub fn evaluate(
    model: &Classifier,
    items: &[SequenceItem],
    batcher: &ClassificationBatcher,
    batch_size: usize,
    device: &Device,
) -> EvalResult {
    let (mut correct, mut loss_sum) = (0i64, 0.0f64);
    for chunk in items.chunks(batch_size.max(1)) {
        let batch = batcher.batch(chunk.to_vec(), device);
        let output = model.forward_classification(batch);
        let predicted = output.output.argmax(1).reshape([chunk.len()]);
        correct += predicted
            .equal(output.targets)
            .int()
            .sum()
            .into_scalar::<i64>();
        loss_sum += output.loss.into_scalar::<f32>() as f64 * chunk.len() as f64;
    }
    let count = items.len();
    EvalResult {
        accuracy: correct as f64 / count.max(1) as f64,
        loss: loss_sum / count.max(1) as f64,
        count,
    }
}

/// Loads `artifact_dir/config.json` and `model.bpk` and evaluates on a data file of the run's
/// task (a ListOps TSV, or a text TSV/CSV/JSONL).
pub fn eval_command(
    artifact_dir: &Path,
    data: &Path,
    device: &Device,
) -> Result<EvalResult, String> {
    let config: ExperimentConfig = read_json(&artifact_dir.join("config.json"))?;
    let model_path = artifact_dir.join("model.bpk");
    let model = Classifier::new(&config.model_config(), config.num_classes(), device)
        .try_load_file(&model_path)
        .map_err(|err| format!("{}: {err}", model_path.display()))?;
    let items = match config.task {
        Task::Listops => read_tsv(data)?,
        Task::Text => {
            let labels = config.labels.clone().ok_or_else(|| {
                format!(
                    "{}: no labels recorded",
                    artifact_dir.join("config.json").display()
                )
            })?;
            load_split(data, &config.columns(), &labels, config.max_len)?
        }
    };
    if items.is_empty() {
        return Err(format!("{}: no examples", data.display()));
    }
    let batcher = ClassificationBatcher {
        max_len: config.max_len,
    };
    Ok(evaluate(
        &model,
        &items,
        &batcher,
        config.batch_size,
        device,
    ))
}
