//! Training on burn-train's `SupervisedTraining`/`Learner`: data, optimizer, schedule,
//! validation protocol, checkpoints and resume.
//!
//! The protocol is LRA's (`run_tasks.py`): validate every `eval_frequency` optimizer steps (one
//! burn-train epoch), keep the model of the best validation accuracy, and report that model's
//! validation and test metrics. Training reads complete, reshuffled passes over the training set.
//!
//! Artifact directory layout:
//! - `config.json`: the effective [`ExperimentConfig`];
//! - `checkpoint/`: after every epoch, `{model,optim,scheduler}-E.bpk` and `state-E.json`, each
//!   written atomically; the two newest and the best by validation accuracy are kept
//!   ([`checkpoint`]);
//! - `train/epoch-E/*.log`, `valid/epoch-E/*.log`: metric logs (`value,count` per batch);
//! - `experiment.log`: burn-train's log;
//! - `model.bpk`: the model of the best validation; `summary.json`: its metrics, written last;
//! - `dataset.db`: the examples, with `storage = "sqlite"` only.
//!
//! Nothing of `model.bpk` and `summary.json` exists until a run has finished: a run stopped by
//! the user, by an error, or by `--stop-at-step` leaves its checkpoints, and `--resume`
//! continues it to the same result as a run never interrupted.

pub mod checkpoint;
pub mod evaluated;
pub mod fault;
pub mod optimizer;
pub mod schedule;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::tensor::Device;
use burn::train::metric::{AccuracyMetric, IterationSpeedMetric, LearningRateMetric, LossMetric};
use burn::train::{Learner, SupervisedTraining, TrainingStrategy};
use serde::Serialize;

use self::checkpoint::{AtomicFileCheckpointer, Evaluation, RunState, SaveEveryEpoch};
use self::evaluated::{EvaluatedTraining, describe_stop};
use self::schedule::OneCycleLr;
use crate::config::{ExperimentConfig, Storage, Task};
use crate::data::storage::{self, StoredSplits};
use crate::data::stream::{BatchRange, BatchSource, BatcherFactory, Order};
use crate::eval::{EvalResult, evaluate};
use crate::files::write_atomically;
use crate::progress::PlainProgress;
use crate::task::{DocumentMatching, MODEL_FILE, MaskedLm, SequenceClassification, TaskSpec};

/// The summary file of a finished run.
pub const SUMMARY_FILE: &str = "summary.json";

/// What a finished run reports (also `summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Optimizer steps done.
    pub steps: usize,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
    /// The device, in words.
    pub device: String,
    /// The step of the best validation accuracy, whose model is `model.bpk`.
    pub best_step: usize,
    /// Validation metrics of that model.
    pub valid: EvalResult,
    /// Test metrics of that model.
    pub test: EvalResult,
    /// Share of the most frequent test label: the accuracy of always guessing it.
    pub majority_class_accuracy: f64,
    /// Every validation during training.
    pub evaluations: Vec<Evaluation>,
}

/// How an invocation of [`train`] ended without an error.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The run is complete: `model.bpk` and `summary.json` are written.
    Finished(RunSummary),
    /// Stopped at `--stop-at-step` with a checkpoint; `--resume` continues.
    Paused {
        /// Optimizer steps done.
        step: usize,
    },
}

/// Options of one `train` invocation besides the configuration.
pub struct TrainOptions {
    /// Where config, checkpoints, logs and the model go.
    pub artifact_dir: PathBuf,
    /// Continue from the newest complete checkpoint in `artifact_dir`.
    pub resume: bool,
    /// Start afresh in an `artifact_dir` that holds a run, deleting that run's files.
    pub overwrite: bool,
    /// Plain progress lines instead of the TUI dashboard.
    pub headless: bool,
    /// Stop this invocation after this many steps (a multiple of `eval_frequency`);
    /// `--resume` continues. The schedule still spans `total_steps`.
    pub stop_at_step: Option<usize>,
    /// Data-parallel training on these devices (one batch per device and step); empty: the one
    /// device given to [`train`].
    pub data_parallel: Vec<Device>,
}

/// The epoch of the newest complete checkpoint in `artifact_dir`, if any.
pub fn last_checkpoint(artifact_dir: &Path) -> Option<usize> {
    checkpoint::last_complete(artifact_dir)
}

/// Trains the configuration's task. A finished run saves the best model and its summary.
pub fn train(
    config: &ExperimentConfig,
    options: &TrainOptions,
    device: &Device,
) -> Result<Outcome, String> {
    match config.task {
        Task::Listops | Task::Text | Task::Image => {
            train_task::<SequenceClassification>(config, options, device)
        }
        Task::Retrieval => train_task::<DocumentMatching>(config, options, device),
        Task::Mlm => train_task::<MaskedLm>(config, options, device),
    }
}

/// Files and folders a run writes into its artifact directory (what `--overwrite` deletes).
const RUN_FILES: [&str; 8] = [
    "config.json",
    checkpoint::CHECKPOINT_DIR,
    "train",
    "valid",
    "experiment.log",
    MODEL_FILE,
    SUMMARY_FILE,
    storage::DATABASE_FILE,
];

fn holds_a_run(dir: &Path) -> Vec<&'static str> {
    RUN_FILES
        .into_iter()
        .filter(|name| dir.join(name).exists())
        .collect()
}

fn delete_run(dir: &Path) -> Result<(), String> {
    for name in RUN_FILES {
        let path = dir.join(name);
        let removed = match path.is_dir() {
            true => std::fs::remove_dir_all(&path),
            false => std::fs::remove_file(&path),
        };
        match removed {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("{}: {err}", path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where this invocation starts: the newest complete checkpoint when resuming, else nothing
/// (the artifact directory is checked and cleared as the options say).
fn starting_point(options: &TrainOptions) -> Result<Option<(usize, RunState)>, String> {
    let dir = &options.artifact_dir;
    if options.resume {
        let found = checkpoint::find(dir);
        for skipped in &found.skipped {
            eprintln!("--resume: skipping incomplete {skipped}");
        }
        if let Some((epoch, state)) = found.complete {
            eprintln!(
                "--resume: continuing from the checkpoint of step {} in {}",
                state.step,
                dir.join(checkpoint::CHECKPOINT_DIR).display()
            );
            return Ok(Some((epoch, state)));
        }
        eprintln!(
            "--resume: no complete checkpoint in {}: starting the run from the beginning",
            dir.display()
        );
        // What a killed first leg left (logs, partial checkpoints; the database is written
        // anew when there is no checkpoint to resume) goes, as with --overwrite.
        delete_run(dir)?;
        return Ok(None);
    }
    let found = holds_a_run(dir);
    if !found.is_empty() {
        if !options.overwrite {
            return Err(format!(
                "{} holds a run ({}): --resume continues it, --overwrite deletes it and starts \
                 afresh, or choose another --artifact-dir",
                dir.display(),
                found.join(", ")
            ));
        }
        eprintln!("--overwrite: deleting the run in {}", dir.display());
        delete_run(dir)?;
    }
    Ok(None)
}

fn check_splits<I>(stored: &StoredSplits<I>, config: &ExperimentConfig) -> Result<(), String> {
    let source = match &config.data_dir {
        Some(dir) => format!("in {}", dir.display()),
        None => "generated".into(),
    };
    for (name, len) in [
        ("training", stored.train.len()),
        ("validation", stored.valid.len()),
        ("test", stored.test.len()),
    ] {
        if len == 0 {
            return Err(format!("the {name} split has no examples ({source})"));
        }
    }
    Ok(())
}

fn train_task<T: TaskSpec + 'static>(
    config: &ExperimentConfig,
    options: &TrainOptions,
    device: &Device,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let dir = &options.artifact_dir;
    let start = starting_point(options)?;
    std::fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let main_device = options.data_parallel.first().unwrap_or(device);
    let mut config = config.clone().for_device(main_device);
    config.validate()?;
    let steps_per_epoch = config.eval_frequency;
    let epochs = match options.stop_at_step {
        Some(step) if step % steps_per_epoch != 0 || step == 0 => {
            return Err(format!(
                "--stop-at-step {step} must be a positive multiple of eval_frequency ({steps_per_epoch})"
            ));
        }
        Some(step) => step.min(config.total_steps) / steps_per_epoch,
        None => config.total_steps / steps_per_epoch,
    };

    eprintln!("preparing data ...");
    let stored = match config.storage {
        Storage::Memory => storage::in_memory(T::splits(&mut config)?),
        Storage::Sqlite => storage::sqlite(dir, start.is_some(), || T::splits(&mut config))?,
    };
    check_splits(&stored, &config)?;
    let config = &config;
    let config_json = serde_json::to_string_pretty(config).expect("serializable");
    write_atomically(&dir.join("config.json"), config_json.as_bytes())?;
    eprintln!(
        "data: {} train, {} valid, {} test examples",
        stored.train.len(),
        stored.valid.len(),
        stored.test.len()
    );

    let batcher: BatcherFactory<T::Batcher> = {
        let config = config.clone();
        Arc::new(move |seed| T::batcher(&config, seed))
    };
    let train_source = Arc::new(BatchSource::new(
        stored.train.clone(),
        config.batch_size,
        Order::ShuffledPasses { seed: config.seed },
        config.seed,
        batcher.clone(),
    ));
    let valid_source = Arc::new(BatchSource::new(
        stored.valid.clone(),
        config.batch_size,
        Order::InOrder,
        evaluation_seed(config),
        batcher,
    ));
    let devices: Vec<Device> = match options.data_parallel.len() {
        0 => vec![main_device.clone().autodiff()],
        _ => options
            .data_parallel
            .iter()
            .map(|device| device.clone().autodiff())
            .collect(),
    };
    let training_device = devices[0].clone();
    training_device.seed(config.seed);
    let model = T::model(config, &training_device);
    let scheduler = OneCycleLr::of_run(config);
    let optimizer = optimizer::optimizer(config);

    let (resume_epoch, state) = match start {
        Some((epoch, state)) => (Some(epoch), state),
        None => (None, RunState::default()),
    };
    let strategy = EvaluatedTraining::<T> {
        devices: devices.clone(),
        train: train_source.clone(),
        valid: valid_source.clone(),
        steps_per_epoch,
        workers: config.num_workers,
        seed: config.seed,
        artifact_dir: dir.clone(),
        state: Mutex::new(state),
        stopped: Mutex::new(None),
    };
    let strategy = Arc::new(strategy);
    // The strategy reads its own ranges of the two sources; these loaders describe the run.
    let train_loader = Arc::new(BatchRange::new(
        train_source,
        0,
        1,
        config.total_steps * devices.len(),
        0,
        training_device.clone(),
    ));
    let valid_loader = Arc::new(BatchRange::new(
        valid_source.clone(),
        0,
        1,
        valid_source.batches_in_order(),
        0,
        training_device.clone().inner(),
    ));
    let mut training = SupervisedTraining::new(dir, train_loader, valid_loader)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .metric_train_numeric(LearningRateMetric::new())
        .metric_train_numeric(IterationSpeedMetric::new())
        .with_custom_checkpointers(
            AtomicFileCheckpointer::new(dir, "model"),
            AtomicFileCheckpointer::new(dir, "optim"),
            AtomicFileCheckpointer::new(dir, "scheduler"),
        )
        .with_checkpointing_strategy(SaveEveryEpoch)
        .with_training_strategy(TrainingStrategy::Custom(strategy.clone()))
        .num_epochs(epochs)
        .summary();
    if options.headless || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        training = training.renderer(Box::new(PlainProgress::new(
            std::time::Duration::from_secs(5),
        )));
    }
    if let Some(epoch) = resume_epoch {
        training = training.checkpoint(epoch);
    }
    let result = training.launch(Learner::new(model, optimizer, scheduler));
    let resume_hint = || match checkpoint::find(dir).complete {
        Some((_, state)) => format!(
            "the newest complete checkpoint is of step {}; --resume continues from it",
            state.step
        ),
        None => "there is no complete checkpoint yet; --resume starts the run again".into(),
    };
    // The strategy's own record first: burn-train's dashboard resets the interrupter behind
    // `result` when training ends.
    let stopped = strategy.stopped.lock().expect("never poisoned").take();
    let stopped = stopped.or_else(|| {
        (result.error.is_some() || result.interrupted.is_some()).then(|| {
            let reason = result.interrupted.and_then(|stop| stop.reason);
            describe_stop(result.error.as_deref(), reason)
        })
    });
    if let Some(why) = stopped {
        return Err(format!("training {why}; {}", resume_hint()));
    }
    let state = strategy.state.lock().expect("never poisoned").clone();
    if state.step < config.total_steps {
        eprintln!(
            "stopped after step {} as asked (--stop-at-step); --resume continues the run",
            state.step
        );
        return Ok(Outcome::Paused { step: state.step });
    }

    let best = state.best().ok_or("the run has no validation")?;
    if fault::asked("kill-before-final-evaluation", "") {
        fault::kill_self("before the final evaluation");
    }
    eprintln!(
        "evaluating the model of step {} (best validation accuracy {:.4}) ...",
        best.step, best.accuracy
    );
    let plain = main_device.clone();
    let model = checkpoint::load_model(T::model(config, &plain), dir, best.epoch)?;
    let best_model = std::fs::read(checkpoint::model_path(dir, best.epoch)).map_err(|err| {
        format!(
            "{}: {err}",
            checkpoint::model_path(dir, best.epoch).display()
        )
    })?;
    let valid_items = storage::collect(stored.valid.as_ref())?;
    let test_items = storage::collect(stored.test.as_ref())?;
    let valid = evaluate::<T>(&model, &valid_items, config, &plain);
    let test = evaluate::<T>(&model, &test_items, config, &plain);
    let summary = RunSummary {
        steps: state.step,
        seconds: started.elapsed().as_secs_f64(),
        device: match options.data_parallel.len() {
            0 | 1 => format!("{main_device:?}"),
            _ => format!("{:?}", options.data_parallel),
        },
        best_step: best.step,
        majority_class_accuracy: T::majority_share(&test_items),
        valid,
        test,
        evaluations: state.evaluations.clone(),
    };
    write_atomically(&dir.join(MODEL_FILE), &best_model)?;
    let json = serde_json::to_string_pretty(&summary).expect("serializable");
    write_atomically(&dir.join(SUMMARY_FILE), json.as_bytes())?;
    Ok(Outcome::Finished(summary))
}

/// Seed of the batchers used for validation and evaluation (masked-LM masking), fixed so that
/// every evaluation of a run sees the same masks.
pub fn evaluation_seed(config: &ExperimentConfig) -> u64 {
    config.seed ^ 0x5EED_E7A1
}
