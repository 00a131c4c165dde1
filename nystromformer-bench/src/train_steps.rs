//! Training steps per second of the `lra` ListOps model: forward, backward and an AdamW step on
//! full-length random batches, as `peers/torch_train_steps.py` times HF transformers' model.
//! The learner's data pipeline, metrics and checkpoints are left out on both sides.

use std::path::Path;
use std::time::Instant;

use burn::optim::GradientsParams;
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
    /// Tokens per sequence (no padding).
    pub length: usize,
    /// Timed steps.
    pub steps: usize,
    /// Steps per second over the timed steps.
    pub steps_per_second: f64,
    /// Seconds of each timed step.
    pub step_seconds: Vec<f64>,
    /// Commit of the binary.
    pub commit: String,
    /// CPU and cores.
    pub machine: String,
}

/// Times `steps` training steps after `warmup` untimed ones, with the library's custom kernels
/// or its tensor-op stages.
pub fn measure(
    device: &Device,
    batch: usize,
    length: usize,
    warmup: usize,
    steps: usize,
    custom_kernels: bool,
) -> (f64, Vec<f64>) {
    let device = device.clone().autodiff();
    let config = ExperimentConfig::preset(Task::Listops, Preset::Lra);
    let mut model = Classifier::new(
        &config.model_config().with_custom_kernels(custom_kernels),
        config.head(config.hidden_size, &device),
        config.pooling(),
        &device,
    );
    let mut optimizer = optimizer(&config);
    let vocab = config.model_config().vocab_size;
    let inputs = ClassificationBatch {
        // Ids past PAD, so that no position is padding.
        tokens: Tensor::<2>::random(
            [batch, length],
            Distribution::Uniform(PAD as f64 + 1.0, vocab as f64),
            &device,
        )
        .int(),
        mask_pad: Tensor::<2, Bool>::from_data(
            TensorData::new(vec![false; batch * length], [batch, length]),
            &device,
        ),
        labels: Tensor::<1>::random(
            [batch],
            Distribution::Uniform(0.0, config.num_classes() as f64),
            &device,
        )
        .int(),
    };
    let mut seconds = Vec::new();
    for step in 0..warmup + steps {
        let started = Instant::now();
        let output = model.forward_classification(inputs.clone());
        let grads = GradientsParams::from_grads(output.loss.backward(), &model);
        model = optimizer.step(config.learning_rate, model, grads);
        device.sync().expect("device sync");
        if step >= warmup {
            seconds.push(started.elapsed().as_secs_f64());
        }
        eprintln!("step {}/{}", step + 1, warmup + steps);
    }
    let total: f64 = seconds.iter().sum();
    (steps as f64 / total, seconds)
}

/// Writes `record` as `DIR/train-steps-BACKEND.json` (atomically).
pub fn write(dir: &Path, record: &TrainStepRecord) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let path = dir.join(format!("train-steps-{}.json", record.backend));
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_string_pretty(record).map_err(|err| err.to_string())?;
    std::fs::write(&tmp, json + "\n").map_err(|err| format!("{}: {err}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|err| format!("{}: {err}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
