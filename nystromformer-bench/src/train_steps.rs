//! Training steps per second of the `lra` ListOps model: forward, backward and an AdamW step on
//! random batches, as `peers/torch_train_steps.py` times HF transformers' model. The learner's
//! data pipeline, metrics and checkpoints are left out on both sides.
//!
//! Batches are full-length by default. Real ListOps batches are padded (lengths vary from
//! hundreds of tokens to 2 000), and the custom kernels skip work on padding that tensor ops
//! cannot: `--min-length` spreads the valid lengths evenly up to `--length` to measure that.

use std::path::Path;
use std::time::Instant;

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Bool, Device, Distribution, Tensor, TensorData};
use nystromformer_train::config::{ExperimentConfig, Preset, Task};
use nystromformer_train::data::batcher::{ClassificationBatch, PAD};
use nystromformer_train::model::Classifier;
use nystromformer_train::training::optimizer::optimizer;
use serde::Serialize;

/// One measurement, written as `train-steps-burn-DEVICE.json`.
#[derive(Debug, Serialize)]
pub struct TrainStepRecord {
    /// `nystromformer-train lra listops`.
    pub implementation: String,
    /// `burn-DEVICE`.
    pub backend: String,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence, padding included.
    pub length: usize,
    /// Valid tokens of each sequence when the batch is padded (`--min-length`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_lengths: Option<Vec<usize>>,
    /// Timed steps.
    pub steps: usize,
    /// Steps per second over the timed steps.
    pub steps_per_second: f64,
    /// Seconds of each timed step.
    pub step_seconds: Vec<f64>,
    /// Kernel launches of one more step after the timed ones, on a CubeCL device with
    /// `--launches` (its kernels by name go to `train-steps-launches-BACKEND.md`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launches_per_step: Option<usize>,
    /// Commit of the binary.
    pub commit: String,
    /// CPU and cores.
    pub machine: String,
}

/// One training step of the `lra` ListOps model on a fixed batch: the model, its optimizer and
/// the batch, on an autodiff device.
pub struct TrainStep {
    model: Classifier,
    optimizer: ModuleOptimizer,
    inputs: ClassificationBatch,
    learning_rate: f64,
    device: Device,
}

impl TrainStep {
    /// The model (with the library's custom kernels or its tensor-op stages) and a random
    /// batch of one sequence per entry of `valid`, each `length` tokens of which its first
    /// `valid[i]` are tokens and the rest padding.
    pub fn new(device: &Device, length: usize, valid: &[usize], custom_kernels: bool) -> Self {
        let batch = valid.len();
        let device = device.clone().autodiff();
        let config = ExperimentConfig::preset(Task::Listops, Preset::Lra);
        let model = Classifier::new(
            &config.model_config().with_custom_kernels(custom_kernels),
            config.head(config.hidden_size, &device),
            config.pooling(),
            &device,
        );
        let vocab = config.model_config().vocab_size;
        let padded: Vec<bool> = valid
            .iter()
            .flat_map(|&valid| (0..length).map(move |position| position >= valid))
            .collect();
        let mask_pad =
            Tensor::<2, Bool>::from_data(TensorData::new(padded, [batch, length]), &device);
        // Ids past PAD, then PAD at the padded positions, as the batcher writes them.
        let tokens = Tensor::<2>::random(
            [batch, length],
            Distribution::Uniform(PAD as f64 + 1.0, vocab as f64),
            &device,
        )
        .int()
        .mask_fill(mask_pad.clone(), PAD as i64);
        let inputs = ClassificationBatch {
            tokens,
            mask_pad,
            labels: Tensor::<1>::random(
                [batch],
                Distribution::Uniform(0.0, config.num_classes() as f64),
                &device,
            )
            .int(),
        };
        Self {
            model,
            optimizer: optimizer(&config),
            inputs,
            learning_rate: config.learning_rate,
            device,
        }
    }

    /// Forward, backward and the optimizer's step, waiting for the device to finish.
    pub fn run(mut self) -> Self {
        let output = self.model.forward_classification(self.inputs.clone());
        let grads = GradientsParams::from_grads(output.loss.backward(), &self.model);
        self.model = self.optimizer.step(self.learning_rate, self.model, grads);
        self.device.sync().expect("device sync");
        self
    }
}

/// Each sequence's valid length: `length` for all without `min_length`, else spread evenly
/// from `min_length` (the first sequence) to `length` (the last).
pub fn valid_lengths(batch: usize, length: usize, min_length: Option<usize>) -> Vec<usize> {
    match min_length {
        None => vec![length; batch],
        Some(min) if batch == 1 => vec![min],
        Some(min) => (0..batch)
            .map(|i| min + (length - min) * i / (batch - 1))
            .collect(),
    }
}

/// Times `steps` training steps after `warmup` untimed ones; returns the step and the steps per
/// second with each timed step's seconds.
pub fn measure(mut step: TrainStep, warmup: usize, steps: usize) -> (TrainStep, f64, Vec<f64>) {
    let mut seconds = Vec::new();
    for i in 0..warmup + steps {
        let started = Instant::now();
        step = step.run();
        if i >= warmup {
            seconds.push(started.elapsed().as_secs_f64());
        }
        eprintln!("step {}/{}", i + 1, warmup + steps);
    }
    let total: f64 = seconds.iter().sum();
    (step, steps as f64 / total, seconds)
}

/// Writes `record` as `DIR/train-steps-BACKEND.json` (atomically), `…-padded.json` for a
/// padded batch, so that the two do not overwrite each other.
pub fn write(dir: &Path, record: &TrainStepRecord) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let padded = if record.valid_lengths.is_some() {
        "-padded"
    } else {
        ""
    };
    let path = dir.join(format!("train-steps-{}{padded}.json", record.backend));
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_string_pretty(record).map_err(|err| err.to_string())?;
    std::fs::write(&tmp, json + "\n").map_err(|err| format!("{}: {err}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|err| format!("{}: {err}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_lengths_spread_from_the_minimum_to_the_full_length() {
        assert_eq!(valid_lengths(3, 2000, None), vec![2000; 3]);
        assert_eq!(valid_lengths(1, 2000, Some(500)), vec![500]);
        assert_eq!(
            valid_lengths(4, 2000, Some(500)),
            vec![500, 1000, 1500, 2000]
        );
        assert_eq!(valid_lengths(2, 10, Some(10)), vec![10, 10]);
    }
}
