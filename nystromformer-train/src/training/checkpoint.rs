//! Checkpoints that are whole or absent, and the run's record of its validations beside them.
//!
//! The checkpoint of epoch `E` is four files in `ARTIFACT_DIR/checkpoint/`: burn-train's records
//! `model-E.bpk`, `optim-E.bpk` and `scheduler-E.bpk`, and `state-E.json` ([`RunState`]: the
//! step and every validation so far). Each file is written to a temporary file and renamed, so
//! it is whole or absent; burn-train writes the three records on three threads, so after a
//! `kill -9` any subset of them may exist. A checkpoint is *complete* when all four exist and
//! parse, and `--resume` takes the newest complete one.
//!
//! Kept: the two newest epochs (while the newest may still be in writing, the one before it is
//! complete) and the epoch of the best validation accuracy, whose model is the run's result.

use std::path::{Path, PathBuf};

use burn::lr_scheduler::LrSchedulerRecord;
use burn::module::Module;
use burn::optim::OptimizerRecord;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use burn::train::checkpoint::{
    Checkpoint, Checkpointer, CheckpointerError, CheckpointingAction, CheckpointingStrategy,
};
use burn::train::metric::store::EventStoreClient;
use serde::{Deserialize, Serialize};

use super::fault;
use crate::files::{read_json, temporary_path, write_atomically};

/// Folder of the checkpoints inside an artifact directory.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// burn-train's three records of a checkpoint, by file-name prefix.
pub const RECORDS: [&str; 3] = ["model", "optim", "scheduler"];

/// What the run has done at a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    /// Optimizer steps done.
    pub step: usize,
    /// Every validation so far, in order.
    pub evaluations: Vec<Evaluation>,
}

/// One validation of the model during training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    /// The epoch (checkpoint number) it ended.
    pub epoch: usize,
    /// Optimizer steps done.
    pub step: usize,
    /// Validation accuracy.
    pub accuracy: f64,
    /// Validation loss.
    pub loss: f64,
}

impl RunState {
    /// The validation of highest accuracy, the earliest among equals (as LRA's `run_tasks.py`
    /// keeps a model only when it is strictly better).
    pub fn best(&self) -> Option<Evaluation> {
        self.evaluations
            .iter()
            .copied()
            .fold(None, |best, next| match best {
                Some(best) if !beats(next.accuracy, best.accuracy) => Some(best),
                _ => Some(next),
            })
    }
}

/// Whether accuracy `a` is higher than `b` by more than float noise. serde_json's default
/// parser can read a float back one unit in the last place off (`0.009174311926605505`, 1/109,
/// comes back as `…503`), so a resumed run's earlier validations, read from its state file,
/// must not lose a tie to the same accuracy computed in memory.
fn beats(a: f64, b: f64) -> bool {
    a - b > 4.0 * f64::EPSILON * a.abs().max(b.abs())
}

fn record_path(dir: &Path, name: &str, epoch: usize) -> PathBuf {
    dir.join(CHECKPOINT_DIR).join(format!("{name}-{epoch}.bpk"))
}

fn state_path(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(CHECKPOINT_DIR).join(format!("state-{epoch}.json"))
}

/// Path of the model record of `epoch`'s checkpoint.
pub fn model_path(artifact_dir: &Path, epoch: usize) -> PathBuf {
    record_path(artifact_dir, "model", epoch)
}

/// Writes the run state of `epoch`'s checkpoint (atomically).
pub fn write_state(artifact_dir: &Path, epoch: usize, state: &RunState) -> Result<(), String> {
    let path = state_path(artifact_dir, epoch);
    std::fs::create_dir_all(path.parent().expect("inside the checkpoint folder"))
        .map_err(|err| format!("{}: {err}", path.display()))?;
    let json = serde_json::to_string_pretty(state).expect("serializable");
    write_atomically(&path, json.as_bytes())
}

/// burn-train's file checkpointer, writing each record atomically (temporary file, sync,
/// rename).
pub struct AtomicFileCheckpointer {
    artifact_dir: PathBuf,
    name: &'static str,
}

impl AtomicFileCheckpointer {
    /// Checkpoints `name-E.bpk` in `artifact_dir/checkpoint/`.
    pub fn new(artifact_dir: &Path, name: &'static str) -> Self {
        Self {
            artifact_dir: artifact_dir.to_path_buf(),
            name,
        }
    }
}

fn io_error(message: String) -> CheckpointerError {
    CheckpointerError::IOError(std::io::Error::other(message))
}

impl<R: Checkpoint> Checkpointer<R> for AtomicFileCheckpointer {
    fn save(&self, epoch: usize, record: R) -> Result<(), CheckpointerError> {
        let bytes = record
            .checkpoint_into_bytes()
            .map_err(CheckpointerError::Record)?;
        let path = record_path(&self.artifact_dir, self.name, epoch);
        std::fs::create_dir_all(path.parent().expect("inside the checkpoint folder"))
            .map_err(|err| io_error(format!("{}: {err}", path.display())))?;
        let file = format!("{}-{epoch}", self.name);
        if fault::asked("kill-while-writing", &file) {
            // Half a record in the temporary file, as a machine dying mid-write leaves it.
            if let Ok(tmp) = temporary_path(&path) {
                let _ = std::fs::write(&tmp, &bytes[..bytes.len() / 2]);
            }
            fault::kill_self(&format!("while writing {}", path.display()));
        }
        if fault::asked("fail-writing", &file) {
            return Err(io_error(format!(
                "{}: no space left on device (simulated by {})",
                path.display(),
                fault::FAULT_ENV
            )));
        }
        write_atomically(&path, &bytes).map_err(io_error)
    }

    fn delete(&self, epoch: usize) -> Result<(), CheckpointerError> {
        remove_if_present(&record_path(&self.artifact_dir, self.name, epoch)).map_err(io_error)
    }

    fn restore(&self, epoch: usize) -> Result<R, CheckpointerError> {
        load_record(&record_path(&self.artifact_dir, self.name, epoch))
    }
}

fn load_record<R: Checkpoint>(path: &Path) -> Result<R, CheckpointerError> {
    let bytes =
        std::fs::read(path).map_err(|err| io_error(format!("{}: {err}", path.display())))?;
    R::checkpoint_from_bytes(Bytes::from_bytes_vec(bytes)).map_err(CheckpointerError::Record)
}

fn remove_if_present(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("{}: {err}", path.display()))
        }
        _ => Ok(()),
    }
}

/// burn-train's checkpointing strategy here: save every epoch. Which checkpoints stay is
/// decided by [`prune`] from the run state, which burn-train's strategies do not see.
pub struct SaveEveryEpoch;

impl CheckpointingStrategy for SaveEveryEpoch {
    fn checkpointing(&mut self, _epoch: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        vec![CheckpointingAction::Save]
    }
}

/// `module` with the weights of `epoch`'s checkpoint.
pub fn load_model<M: Module>(module: M, artifact_dir: &Path, epoch: usize) -> Result<M, String> {
    let path = model_path(artifact_dir, epoch);
    let record: ModuleRecord =
        load_record(&path).map_err(|err| format!("{}: {err}", path.display()))?;
    Ok(module.load_record(record))
}

/// The checkpoints found in an artifact directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The newest complete checkpoint: its epoch and run state.
    pub complete: Option<(usize, RunState)>,
    /// Newer checkpoints that are not complete, with what is wrong with each.
    pub skipped: Vec<String>,
}

/// Epochs that have at least one checkpoint file, newest first.
fn epochs_present(artifact_dir: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(artifact_dir.join(CHECKPOINT_DIR)) else {
        return Vec::new();
    };
    let mut epochs: Vec<usize> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let (stem, _) = name.rsplit_once('.')?;
            let (prefix, epoch) = stem.rsplit_once('-')?;
            (RECORDS.contains(&prefix) || prefix == "state")
                .then(|| epoch.parse().ok())
                .flatten()
        })
        .collect();
    epochs.sort_unstable_by(|a, b| b.cmp(a));
    epochs.dedup();
    epochs
}

/// What is missing or unreadable in `epoch`'s checkpoint, or its run state if it is complete.
fn check(artifact_dir: &Path, epoch: usize) -> Result<RunState, String> {
    let state_file = state_path(artifact_dir, epoch);
    if !state_file.is_file() {
        return Err(format!("{} is missing", state_file.display()));
    }
    let state: RunState = read_json(&state_file)?;
    let model = record_path(artifact_dir, "model", epoch);
    let optim = record_path(artifact_dir, "optim", epoch);
    let scheduler = record_path(artifact_dir, "scheduler", epoch);
    let problem = |path: &Path, err: CheckpointerError| match path.is_file() {
        true => format!("{}: {err}", path.display()),
        false => format!("{} is missing", path.display()),
    };
    load_record::<ModuleRecord>(&model).map_err(|err| problem(&model, err))?;
    load_record::<OptimizerRecord>(&optim).map_err(|err| problem(&optim, err))?;
    load_record::<LrSchedulerRecord>(&scheduler).map_err(|err| problem(&scheduler, err))?;
    Ok(state)
}

/// The newest complete checkpoint in `artifact_dir`, and the newer incomplete ones skipped.
pub fn find(artifact_dir: &Path) -> Found {
    let mut skipped = Vec::new();
    for epoch in epochs_present(artifact_dir) {
        match check(artifact_dir, epoch) {
            Ok(state) => {
                return Found {
                    complete: Some((epoch, state)),
                    skipped,
                };
            }
            Err(problem) => skipped.push(format!("checkpoint {epoch}: {problem}")),
        }
    }
    Found {
        complete: None,
        skipped,
    }
}

/// The epoch of the newest complete checkpoint in `artifact_dir`, if any.
pub fn last_complete(artifact_dir: &Path) -> Option<usize> {
    find(artifact_dir).complete.map(|(epoch, _)| epoch)
}

/// Deletes the files of every checkpoint not in `keep`, and temporary files that other
/// (killed) processes left. Files of checkpoints in `keep`, and this process's temporary files
/// (burn-train's threads may be writing them), stay.
pub fn prune(artifact_dir: &Path, keep: &[usize]) -> Result<(), String> {
    for epoch in epochs_present(artifact_dir) {
        if keep.contains(&epoch) {
            continue;
        }
        for name in RECORDS {
            remove_if_present(&record_path(artifact_dir, name, epoch))?;
        }
        remove_if_present(&state_path(artifact_dir, epoch))?;
    }
    let ours = format!(".tmp-{}", std::process::id());
    if let Ok(entries) = std::fs::read_dir(artifact_dir.join(CHECKPOINT_DIR)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") && !name.ends_with(&ours) {
                remove_if_present(&entry.path())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluation(epoch: usize, accuracy: f64) -> Evaluation {
        Evaluation {
            epoch,
            step: epoch * 10,
            accuracy,
            loss: 1.0,
        }
    }

    #[test]
    fn the_best_validation_is_the_first_of_the_highest_accuracy() {
        let state = RunState {
            step: 40,
            evaluations: vec![
                evaluation(1, 0.2),
                evaluation(2, 0.5),
                evaluation(3, 0.5),
                evaluation(4, 0.4),
            ],
        };
        assert_eq!(state.best().map(|best| best.epoch), Some(2));
        assert_eq!(RunState::default().best(), None);
    }

    #[test]
    fn a_tie_survives_a_json_round_trip_of_the_earlier_accuracy() {
        let accuracy = 1.0 / 109.0;
        let json = serde_json::to_string(&evaluation(1, accuracy)).unwrap();
        let read_back: Evaluation = serde_json::from_str(&json).unwrap();
        let state = RunState {
            step: 20,
            evaluations: vec![read_back, evaluation(2, accuracy)],
        };
        assert_eq!(state.best().map(|best| best.epoch), Some(1));
        // A real improvement still wins.
        let better = evaluation(3, accuracy + 1e-6);
        let state = RunState {
            step: 30,
            evaluations: vec![read_back, evaluation(2, accuracy), better],
        };
        assert_eq!(state.best().map(|best| best.epoch), Some(3));
    }

    #[test]
    fn a_checkpoint_missing_a_file_is_skipped_for_the_one_before() {
        let dir = std::env::temp_dir().join(format!("nystromformer-ckpt-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let checkpointer = AtomicFileCheckpointer::new(&dir, "scheduler");
        for epoch in [1, 2] {
            let state = RunState {
                step: epoch * 10,
                evaluations: vec![evaluation(epoch, 0.1)],
            };
            write_state(&dir, epoch, &state).unwrap();
            Checkpointer::<LrSchedulerRecord>::save(
                &checkpointer,
                epoch,
                LrSchedulerRecord::new().with_scalar("step", epoch as u64),
            )
            .unwrap();
        }
        // No model or optimizer records: nothing is complete, both are reported.
        let found = find(&dir);
        assert_eq!(found.complete, None);
        assert_eq!(found.skipped.len(), 2);
        assert!(
            found.skipped[0].contains("model-2.bpk is missing"),
            "{found:?}"
        );

        // A truncated file is as good as a missing one.
        std::fs::create_dir_all(dir.join(CHECKPOINT_DIR)).unwrap();
        std::fs::write(record_path(&dir, "model", 2), b"burnpack?").unwrap();
        let found = find(&dir);
        assert!(found.skipped[0].contains("model-2.bpk: "), "{found:?}");

        prune(&dir, &[2]).unwrap();
        assert!(!state_path(&dir, 1).exists() && state_path(&dir, 2).exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
