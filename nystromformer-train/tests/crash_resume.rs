//! Runs killed with `kill -9` and resumed end exactly where the same run never interrupted ends:
//! the same validations, the same best step, the same test metrics and the same model bytes
//! (bitwise, on flex). Kills land before the first checkpoint, between checkpoints, in the
//! middle of writing one (the fault-injection hook of `training::fault`), before the final
//! evaluation, and at moments chosen from outside; a failed write (a full disk) and a resume
//! chain of several legs are covered too.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use std::hash::{DefaultHasher, Hasher};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use common::{binary, cifar_records, scratch_dir, small_listops, soup, tiny_run, write_aan_pairs};
use nystromformer::device::choose_device;
use nystromformer_train::config::ExperimentConfig;
use nystromformer_train::data::rng::SplitMix64;
use nystromformer_train::task::{DocumentMatching, MaskedLm, SequenceClassification, TaskSpec};
use nystromformer_train::training::fault::FAULT_ENV;

/// 12 steps, a validation and checkpoint every 3, two data workers.
fn run(dir: &Path, extra: &[&str]) -> Command {
    run_of(12, 3, dir, extra)
}

fn run_of(steps: usize, eval_frequency: usize, dir: &Path, extra: &[&str]) -> Command {
    let mut command = binary();
    command
        .args(["train", "listops", "--headless", "--artifact-dir"])
        .arg(dir)
        .args(tiny_run(steps, eval_frequency))
        .args(small_listops())
        .args(["--set", "num_workers=2"])
        // The `lra` presets' optimizer (β₁ read from the schedule at each step, so it must
        // resume from the step count in the optimizer's records).
        .args(["--set", "cycle_momentum=true"])
        .args(extra)
        .stdin(Stdio::null());
    command
}

fn output(command: &mut Command) -> Output {
    command.output().expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// What a finished run produced: its summary without the wall-clock field, and a hash of the
/// bits of every weight of its model (the file itself holds random parameter ids).
#[derive(Debug, PartialEq)]
struct RunResult {
    summary: serde_json::Value,
    weights: u64,
}

struct HashWeights(DefaultHasher);

impl ModuleVisitor for HashWeights {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        for value in param.val().into_data().try_to_vec::<f32>().unwrap() {
            self.0.write_u32(value.to_bits());
        }
    }
}

fn result(dir: &Path) -> RunResult {
    result_of::<SequenceClassification>(dir)
}

fn result_of<T: TaskSpec>(dir: &Path) -> RunResult {
    let mut summary = common::summary(dir);
    summary.as_object_mut().unwrap().remove("seconds");
    let config = ExperimentConfig::load(&dir.join("config.json")).unwrap();
    let device = choose_device("flex").unwrap();
    let model = T::load_trained(&config, dir, &device).unwrap();
    let mut weights = HashWeights(DefaultHasher::new());
    model.visit(&mut weights);
    RunResult {
        summary,
        weights: weights.0.finish(),
    }
}

fn killed(output: &Output) -> bool {
    output.status.signal() == Some(9)
}

/// Resumes the run to its end and returns the result.
fn resume_to_end(dir: &Path) -> RunResult {
    let resumed = output(&mut run(dir, &["--resume"]));
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    result(dir)
}

#[test]
fn killed_runs_resume_to_the_uninterrupted_result() {
    let root = scratch_dir("crash-resume");
    let reference_dir = root.join("reference");
    let reference = output(&mut run(&reference_dir, &[]));
    assert!(reference.status.success(), "{}", stderr(&reference));
    let expected = result(&reference_dir);
    assert_eq!(expected.summary["steps"], 12);
    assert_eq!(expected.summary["evaluations"].as_array().unwrap().len(), 4);

    // The newest complete checkpoint each kill leaves. Between checkpoints it is the one before
    // the kill, or the one before that if burn-train's threads had not finished writing.
    for (name, fault, checkpoints_left) in [
        (
            "before the first checkpoint",
            "kill-after-step:2",
            &[None][..],
        ),
        (
            "between checkpoints",
            "kill-after-step:7",
            &[Some(2), Some(1)],
        ),
        (
            "while writing the optimizer",
            "kill-while-writing:optim-3",
            &[Some(2)],
        ),
        (
            "while writing the model",
            "kill-while-writing:model-1",
            &[None],
        ),
        (
            "before the final evaluation",
            "kill-before-final-evaluation",
            &[Some(4)],
        ),
    ] {
        let dir = root.join(fault.replace(':', "-"));
        let first = output(run(&dir, &[]).env(FAULT_ENV, fault));
        assert!(
            killed(&first),
            "{name}: {:?} {}",
            first.status,
            stderr(&first)
        );
        assert!(
            !dir.join("summary.json").exists() && !dir.join("model.bpk").exists(),
            "{name}: nothing final after a kill"
        );
        let left = nystromformer_train::training::last_checkpoint(&dir);
        assert!(
            checkpoints_left.contains(&left),
            "{name}: the newest complete checkpoint is {left:?}"
        );
        let resumed = output(&mut run(&dir, &["--resume"]));
        let log = stderr(&resumed);
        assert!(resumed.status.success(), "{name}: {log}");
        match left {
            None => assert!(log.contains("starting the run from the beginning"), "{log}"),
            Some(epoch) => assert!(
                log.contains(&format!("checkpoint of step {}", epoch * 3)),
                "{name}: {log}"
            ),
        }
        if fault.starts_with("kill-while-writing") {
            assert!(
                log.contains("skipping incomplete checkpoint"),
                "{name}: {log}"
            );
        }
        assert_eq!(result(&dir), expected, "{name}: resumed run differs");
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn kills_from_outside_while_checkpointing_and_a_chain_of_legs_end_the_same() {
    let root = scratch_dir("crash-outside");
    let long = |dir: &Path, extra: &[&str]| run_of(48, 6, dir, extra);
    let reference_dir = root.join("reference");
    assert!(output(&mut long(&reference_dir, &[])).status.success());
    let expected = result(&reference_dir);

    // kill -9 from outside the moment checkpoint K's run state appears, while burn-train's
    // threads write its records.
    for checkpoint in [1, 3, 6] {
        let dir = root.join(format!("outside-{checkpoint}"));
        let mut child = long(&dir, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let state = dir.join(format!("checkpoint/state-{checkpoint}.json"));
        while !state.exists() {
            assert!(child.try_wait().unwrap().is_none(), "the run ended early");
            std::thread::sleep(Duration::from_micros(200));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!dir.join("summary.json").exists(), "killed before the end");
        let resumed = output(&mut long(&dir, &["--resume"]));
        assert!(resumed.status.success(), "{}", stderr(&resumed));
        assert_eq!(result(&dir), expected, "killed at checkpoint {checkpoint}");
    }

    // Three legs: killed at step 4, then at step 10, then to the end.
    let dir = root.join("legs");
    let expected = result(&{
        let reference_dir = root.join("reference-short");
        assert!(output(&mut run(&reference_dir, &[])).status.success());
        reference_dir
    });
    let leg = output(run(&dir, &[]).env(FAULT_ENV, "kill-after-step:4"));
    assert!(killed(&leg));
    let leg = output(run(&dir, &["--resume"]).env(FAULT_ENV, "kill-after-step:10"));
    assert!(killed(&leg), "{}", stderr(&leg));
    assert_eq!(resume_to_end(&dir), expected);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_failed_checkpoint_write_fails_the_run_and_resume_recovers() {
    // A checkpoint in the middle of the run, and the last one.
    for fault in ["fail-writing:scheduler-2", "fail-writing:model-4"] {
        let dir = scratch_dir("crash-disk-full");
        let failed = output(run(&dir, &[]).env(FAULT_ENV, fault));
        let log = stderr(&failed);
        assert!(
            !failed.status.success(),
            "{fault}: a failed write must fail the run"
        );
        assert!(
            log.contains("no space left on device") && log.contains("--resume continues"),
            "{fault}: {log}"
        );
        assert!(!dir.join("summary.json").exists() && !dir.join("model.bpk").exists());
        let resumed = output(&mut run(&dir, &["--resume"]));
        assert!(resumed.status.success(), "{fault}: {}", stderr(&resumed));
        assert_eq!(common::summary(&dir)["steps"], 12);
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// A run of `task` on `data`: 8 steps, a validation every 2.
fn task_run(task: &str, data: &Path, dir: &Path, extra: &[&str]) -> Command {
    let mut command = binary();
    command
        .args(["train", task, "--headless", "--artifact-dir"])
        .arg(dir)
        .args(["--set", &format!("data_dir={}", data.display())])
        .args(tiny_run(8, 2))
        .args(["--set", "max_len=64", "--set", "num_workers=2"])
        .args(extra);
    command
}

fn killed_and_resumed_equals_reference<T: TaskSpec>(task: &str, data: &Path, root: &Path) {
    let reference = root.join(format!("{task}-reference"));
    let done = output(&mut task_run(task, data, &reference, &[]));
    assert!(done.status.success(), "{task}: {}", stderr(&done));
    let dir = root.join(format!("{task}-killed"));
    let first = output(task_run(task, data, &dir, &[]).env(FAULT_ENV, "kill-after-step:5"));
    assert!(killed(&first), "{task}: {}", stderr(&first));
    let resumed = output(&mut task_run(task, data, &dir, &["--resume"]));
    assert!(resumed.status.success(), "{task}: {}", stderr(&resumed));
    assert_eq!(result_of::<T>(&dir), result_of::<T>(&reference), "{task}");
}

#[test]
fn every_task_resumes_to_the_uninterrupted_result() {
    let root = scratch_dir("crash-tasks");
    let mut rng = SplitMix64::new(4);

    let text = root.join("text");
    std::fs::create_dir_all(&text).unwrap();
    for (name, count) in [("train", 24), ("valid", 6), ("test", 6)] {
        let rows: String = (0..count)
            .map(|i| format!("{}\t{}\n", soup(&mut rng, 6), ["pos", "neg"][i % 2]))
            .collect();
        std::fs::write(
            text.join(format!("{name}.tsv")),
            format!("text\tlabel\n{rows}"),
        )
        .unwrap();
    }
    killed_and_resumed_equals_reference::<SequenceClassification>("text", &text, &root);

    let aan = root.join("aan");
    write_aan_pairs(&aan, &mut rng, [24, 6, 6]);
    killed_and_resumed_equals_reference::<DocumentMatching>("retrieval", &aan, &root);

    let cifar = root.join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    for index in 1..=5 {
        let records = cifar_records(6, &mut rng);
        std::fs::write(cifar.join(format!("data_batch_{index}.bin")), records).unwrap();
    }
    std::fs::write(cifar.join("test_batch.bin"), cifar_records(6, &mut rng)).unwrap();
    let image = |dir: &Path, extra: &[&str]| {
        let mut all = vec!["--set", "valid_size=6", "--set", "max_len=1024"];
        all.extend_from_slice(extra);
        task_run("image", &cifar, dir, &all)
    };
    let reference = root.join("image-reference");
    assert!(output(&mut image(&reference, &[])).status.success());
    let dir = root.join("image-killed");
    assert!(killed(&output(
        image(&dir, &[]).env(FAULT_ENV, "kill-after-step:5")
    )));
    assert!(output(&mut image(&dir, &["--resume"])).status.success());
    assert_eq!(
        result_of::<SequenceClassification>(&dir),
        result_of::<SequenceClassification>(&reference),
        "image"
    );

    // Masked-LM: fresh masks per batch, drawn from (seed, batch).
    let corpus = root.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    for (name, words) in [("train", 600), ("valid", 100), ("test", 100)] {
        std::fs::write(corpus.join(format!("{name}.txt")), soup(&mut rng, words)).unwrap();
    }
    killed_and_resumed_equals_reference::<MaskedLm>("mlm", &corpus, &root);
    std::fs::remove_dir_all(&root).ok();
}
