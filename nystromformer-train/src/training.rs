//! Training on burn-train's `SupervisedTraining`/`Learner`: data, optimizer, schedule,
//! metrics, checkpoints and resume.
//!
//! Artifact directory layout:
//! - `config.json`: the effective [`ExperimentConfig`];
//! - `checkpoint/{model,optim,scheduler}-E.bpk`: burn-train's checkpoints after every
//!   `steps_per_checkpoint` steps (one burn-train epoch), the last two and the best by
//!   validation loss kept;
//! - `train/epoch-E/*.log`, `valid/epoch-E/*.log`: metric logs (`value,count` per batch);
//! - `experiment.log`: burn-train's log;
//! - `model.bpk`: the final model; `summary.json`: accuracy, loss, steps and time;
//! - `dataset.db`: the examples, with `storage = "sqlite"` only.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use std::time::Instant;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::transform::{SamplerDataset, SamplerDatasetOptions};
use burn::grad_clipping::GradientClippingConfig;
use burn::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::module::Module;
use burn::optim::AdamWConfig;
use burn::tensor::Device;
use burn::train::metric::{AccuracyMetric, IterationSpeedMetric, LearningRateMetric, LossMetric};
use burn::train::{ExecutionStrategy, Learner, MultiDeviceOptim, SupervisedTraining};
use serde::Serialize;

use crate::config::{ExperimentConfig, Storage, Task};
use crate::data::storage;
use crate::eval::{EvalResult, evaluate};
use crate::files::write_atomically;
use crate::progress::PlainProgress;
use crate::task::{DocumentMatching, MODEL_FILE, MaskedLm, SequenceClassification, TaskSpec};

/// What a finished run reports (also `summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Optimizer steps done.
    pub steps: usize,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
    /// The device, in words.
    pub device: String,
    /// Validation metrics of the final model.
    pub valid: EvalResult,
    /// Test metrics of the final model.
    pub test: EvalResult,
    /// Share of the most frequent test label: the accuracy of always guessing it.
    pub majority_class_accuracy: f64,
}

/// Options of one `train` invocation besides the configuration.
pub struct TrainOptions {
    /// Where config, checkpoints, logs and the model go.
    pub artifact_dir: PathBuf,
    /// Continue from the last checkpoint in `artifact_dir`.
    pub resume: bool,
    /// Plain progress lines instead of the TUI dashboard.
    pub headless: bool,
    /// Stop this invocation after this many steps (a multiple of `steps_per_checkpoint`);
    /// `--resume` continues. The schedule still spans `total_steps`.
    pub stop_at_step: Option<usize>,
    /// Data-parallel training on these devices (burn-train's multi-device strategy); empty:
    /// the one device given to [`train`].
    pub data_parallel: Vec<Device>,
}

/// The epoch of the newest checkpoint in `artifact_dir`, if any.
pub fn last_checkpoint(artifact_dir: &Path) -> Option<usize> {
    std::fs::read_dir(artifact_dir.join("checkpoint"))
        .ok()?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("model-")?
                .strip_suffix(".bpk")?
                .parse()
                .ok()
        })
        .max()
}

/// Trains the configuration's task, saves the final model and returns its summary.
pub fn train(
    config: &ExperimentConfig,
    options: &TrainOptions,
    device: &Device,
) -> Result<RunSummary, String> {
    match config.task {
        Task::Listops | Task::Text | Task::Image => {
            train_task::<SequenceClassification>(config, options, device)
        }
        Task::Retrieval => train_task::<DocumentMatching>(config, options, device),
        Task::Mlm => train_task::<MaskedLm>(config, options, device),
    }
}

fn train_task<T: TaskSpec>(
    config: &ExperimentConfig,
    options: &TrainOptions,
    device: &Device,
) -> Result<RunSummary, String> {
    let started = Instant::now();
    let dir = &options.artifact_dir;
    std::fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    eprintln!("preparing data ...");
    let main_device = options.data_parallel.first().unwrap_or(device);
    let mut config = config.clone().for_device(main_device);
    let stored = match config.storage {
        Storage::Memory => storage::in_memory(T::splits(&mut config)?),
        Storage::Sqlite => storage::sqlite(dir, options.resume, || T::splits(&mut config))?,
    };
    let config = &config;
    let config_json = serde_json::to_string_pretty(config).expect("serializable");
    write_atomically(&dir.join("config.json"), config_json.as_bytes())?;
    let resume_from = if options.resume {
        Some(last_checkpoint(dir).ok_or_else(|| {
            format!(
                "--resume: no checkpoint in {}",
                dir.join("checkpoint").display()
            )
        })?)
    } else {
        None
    };

    eprintln!(
        "data: {} train, {} valid, {} test examples",
        stored.train.len(),
        stored.valid.len(),
        stored.test.len()
    );
    let epochs = match options.stop_at_step {
        Some(step) if step % config.steps_per_checkpoint != 0 || step == 0 => {
            return Err(format!(
                "--stop-at-step {step} must be a positive multiple of steps_per_checkpoint ({})",
                config.steps_per_checkpoint
            ));
        }
        Some(step) => step.min(config.total_steps) / config.steps_per_checkpoint,
        None => config.total_steps / config.steps_per_checkpoint,
    };
    // One burn-train epoch = `steps_per_checkpoint` optimizer steps of full batches drawn
    // without replacement; data-parallel training splits each epoch's items across the
    // devices, and every step takes one batch per device.
    let replicas = options.data_parallel.len().max(1);
    let epoch_items = config.steps_per_checkpoint * config.batch_size * replicas;
    let train_set = SamplerDataset::new(
        stored.train,
        SamplerDatasetOptions::default()
            .without_replacement()
            .with_fixed_size(epoch_items)
            .with_seed(config.seed),
    );
    let train_loader = DataLoaderBuilder::new(T::batcher(config, config.seed))
        .batch_size(config.batch_size)
        .shuffle(config.seed)
        .num_workers(config.num_workers)
        .build(train_set);
    let valid_loader = DataLoaderBuilder::new(T::batcher(config, evaluation_seed(config)))
        .batch_size(config.batch_size)
        .num_workers(config.num_workers)
        .build(stored.valid.clone());

    let training_device = main_device.clone().autodiff();
    training_device.seed(config.seed);
    let model = T::model(config, &training_device);
    let optimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay)
        .with_grad_clipping(config.grad_clip_norm.map(GradientClippingConfig::Norm))
        .init();
    let peak = config.learning_rate;
    let warmup = config.warmup_steps.max(1);
    let scheduler = SequentialLrSchedulerConfig::new(
        vec![
            LinearLrSchedulerConfig::new(peak / warmup as f64, peak, warmup).into(),
            LinearLrSchedulerConfig::new(peak, 0.0, config.total_steps - warmup).into(),
        ],
        vec![warmup],
    )
    .init()
    .map_err(|err| format!("learning-rate schedule: {err}"))?;

    let mut training = SupervisedTraining::new(dir, train_loader, valid_loader)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .metric_train_numeric(LearningRateMetric::new())
        .metric_train_numeric(IterationSpeedMetric::new())
        .with_default_checkpointers()
        .num_epochs(epochs)
        .summary();
    if options.data_parallel.len() > 1 {
        let devices = options.data_parallel.clone();
        training = training.with_training_strategy(
            ExecutionStrategy::multi(devices, MultiDeviceOptim::OptimMainDevice).into(),
        );
    }
    if options.headless || !std::io::stdout().is_terminal() {
        training = training.renderer(Box::new(PlainProgress::new(
            std::time::Duration::from_secs(5),
        )));
    }
    if let Some(epoch) = resume_from {
        eprintln!(
            "resuming after step {}",
            epoch * config.steps_per_checkpoint
        );
        training = training.checkpoint(epoch);
    }
    let result = training.launch(Learner::new(model, optimizer, scheduler));
    let model = result.model;

    model
        .clone()
        .save_file(dir.join(MODEL_FILE))
        .map_err(|err| format!("{}: {err}", dir.join(MODEL_FILE).display()))?;
    let plain = main_device.clone();
    let model = model.fork(&plain);
    let valid_items = storage::collect(stored.valid.as_ref())?;
    let test_items = storage::collect(stored.test.as_ref())?;
    let valid = evaluate::<T>(&model, &valid_items, config, &plain);
    let test = evaluate::<T>(&model, &test_items, config, &plain);
    let summary = RunSummary {
        steps: epochs * config.steps_per_checkpoint,
        seconds: started.elapsed().as_secs_f64(),
        device: match options.data_parallel.len() {
            0 | 1 => format!("{main_device:?}"),
            _ => format!("{:?}", options.data_parallel),
        },
        majority_class_accuracy: T::majority_share(&test_items),
        valid,
        test,
    };
    let json = serde_json::to_string_pretty(&summary).expect("serializable");
    write_atomically(&dir.join("summary.json"), json.as_bytes())?;
    Ok(summary)
}

/// Seed of the batcher used for validation and evaluation (masked-LM masking), fixed so that
/// every evaluation of a run sees the same masks.
pub fn evaluation_seed(config: &ExperimentConfig) -> u64 {
    config.seed ^ 0x5EED_E7A1
}
