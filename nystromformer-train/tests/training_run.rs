//! A few-step training run end to end: checkpoints, resume (step count, changed parameters),
//! `eval`'s JSON line, and configuration errors.

mod common;

use std::path::Path;

use common::{binary, eval_json};
use nystromformer_train::config::{ExperimentConfig, Preset, Task};
use nystromformer_train::files::read_json;
use nystromformer_train::training::last_checkpoint;

const SMALL: &[&str] = &[
    "--set",
    "train_size=256",
    "--set",
    "valid_size=32",
    "--set",
    "test_size=32",
    "--set",
    "min_len=5",
    "--set",
    "max_len=40",
    "--set",
    "hidden_size=16",
    "--set",
    "intermediate_size=32",
    "--set",
    "num_landmarks=4",
    "--set",
    "batch_size=8",
    "--set",
    "warmup_steps=2",
    "--set",
    "total_steps=8",
    "--set",
    "eval_frequency=4",
    "--set",
    "num_workers=0",
];

fn train(dir: &Path, extra: &[&str]) -> std::process::Output {
    binary()
        .args(["train", "listops", "--headless", "--artifact-dir"])
        .arg(dir)
        .args(SMALL)
        .args(extra)
        .output()
        .expect("the binary runs")
}

#[test]
fn train_checkpoints_resumes_and_evaluates() {
    let dir = std::env::temp_dir().join(format!("nystromformer-train-run-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();

    // An 8-step run stopped after its first checkpoint (4 steps): a pause, not a result.
    let first = train(&dir, &["--stop-at-step", "4"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("{\"paused_at_step\": 4}"));
    assert_eq!(
        last_checkpoint(&dir),
        Some(1),
        "one checkpoint after 4 steps"
    );
    assert!(dir.join("config.json").is_file());
    assert!(
        !dir.join("summary.json").exists() && !dir.join("model.bpk").exists(),
        "nothing looks finished after a pause"
    );
    let written: ExperimentConfig = read_json(&dir.join("config.json")).unwrap();
    assert_eq!(
        written.pad_to_multiple,
        Some(1),
        "on the CPU a batch pads to its longest sequence, and config.json records it"
    );

    // Resume: training continues at step 5 with the saved optimizer and schedule.
    let resumed = train(&dir, &["--resume"]);
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(
        stderr.contains("continuing from the checkpoint of step 4"),
        "{stderr}"
    );
    assert!(stdout.contains("starting at epoch 2"), "{stdout}");
    assert_eq!(
        last_checkpoint(&dir),
        Some(2),
        "a second checkpoint after 8 steps"
    );
    assert!(dir.join("train/epoch-2").is_dir() && !dir.join("train/epoch-3").exists());
    let summary: serde_json::Value = read_json(&dir.join("summary.json")).unwrap();
    assert_eq!(summary["steps"], 8);
    assert_eq!(summary["evaluations"].as_array().unwrap().len(), 2);
    let lr = std::fs::read_to_string(dir.join("train/epoch-2/Learning_Rate.log")).unwrap();
    let first_lr: f64 = lr
        .lines()
        .next()
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(first_lr > 0.0, "the schedule continues mid-decay: {lr}");

    // eval prints one JSON line with accuracy, loss and count.
    let data = dir.join("eval.tsv");
    std::fs::write(
        &data,
        "Source\tTarget\n( [MAX 1 5 ] )\t5\n( [MIN 3 4 ] )\t3\n7\t7\n",
    )
    .unwrap();
    let json = eval_json(&dir, &data);
    assert_eq!(json["count"], 3);
    let accuracy = json["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy) && json["loss"].as_f64().unwrap() > 0.0);
    std::fs::remove_dir_all(&dir).ok();
}

fn failure(output: &std::process::Output) -> String {
    assert!(!output.status.success(), "expected a failure");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn used_directories_and_resume_options_are_checked() {
    let dir = std::env::temp_dir().join(format!("nystromformer-train-dirs-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    assert!(train(&dir, &["--stop-at-step", "4"]).status.success());

    // A fresh run does not mix with the run already there.
    let err = failure(&train(&dir, &[]));
    assert!(
        err.contains("holds a run") && err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    // --resume may repeat the run's configuration, not change it.
    let err = failure(&train(&dir, &["--resume", "--set", "learning_rate=0.5"]));
    assert!(err.contains("learning_rate: run 0.001, asked 0.5"), "{err}");
    let err = failure(&train(&dir, &["--resume", "--seed", "7"]));
    assert!(err.contains("seed: run 42, asked 7"), "{err}");
    let err = failure(&train(&dir, &["--resume", "--preset", "lra"]));
    assert!(
        err.contains("listops_tokens: run \"bracketed\", asked \"lra\""),
        "{err}"
    );
    let err = failure(
        &binary()
            .args(["train", "text", "--resume", "--artifact-dir"])
            .arg(&dir)
            .output()
            .unwrap(),
    );
    assert!(err.contains("is a \"listops\" run, not \"text\""), "{err}");
    // The same values again (the whole `train` helper repeats them) continue the run.
    let resumed = train(&dir, &["--resume", "--preset", "quick"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(dir.join("summary.json").is_file());

    // --overwrite replaces the run.
    let fresh = train(&dir, &["--overwrite", "--stop-at-step", "4"]);
    let stderr = String::from_utf8_lossy(&fresh.stderr);
    assert!(
        fresh.status.success() && stderr.contains("deleting the run"),
        "{stderr}"
    );
    assert!(!dir.join("summary.json").exists() && last_checkpoint(&dir) == Some(1));

    // A broken config.json is reported with its file, never used.
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"eval_frequency\": 4", "\"eval_frequency\": 0"),
    )
    .unwrap();
    let err = failure(&train(&dir, &["--resume"]));
    assert!(
        err.contains("config.json") && err.contains("eval_frequency must be positive"),
        "{err}"
    );

    // Nothing to resume (killed before config.json was written): the run starts.
    std::fs::remove_dir_all(&dir).ok();
    let started = train(&dir, &["--resume", "--stop-at-step", "4"]);
    let stderr = String::from_utf8_lossy(&started.stderr);
    assert!(
        started.status.success() && stderr.contains("no run to continue"),
        "{stderr}"
    );
    assert_eq!(last_checkpoint(&dir), Some(1));
    std::fs::remove_dir_all(&dir).ok();

    // Each task has its own default artifact directory.
    let cwd = std::env::temp_dir().join(format!("nystromformer-train-cwd-{}", std::process::id()));
    std::fs::create_dir_all(&cwd).unwrap();
    let default = binary()
        .current_dir(&cwd)
        .args(["train", "listops", "--headless", "--stop-at-step", "4"])
        .args(SMALL)
        .output()
        .unwrap();
    assert!(
        default.status.success(),
        "{}",
        String::from_utf8_lossy(&default.stderr)
    );
    assert!(cwd.join("artifacts/listops/config.json").is_file());
    std::fs::remove_dir_all(&cwd).ok();
}

#[test]
fn configuration_errors_are_clear() {
    // One bad `--set` on the quick ListOps preset each.
    for (set, expected) in [
        (
            "learning_rat=1e-3",
            "unknown configuration key \"learning_rat\"",
        ),
        ("total_steps=1001", "multiple of eval_frequency"),
        ("labels=[]", "labels must name at least 2 classes"),
        (
            "hidden_size=1000000",
            "hidden_size = 1000000 is above the largest accepted",
        ),
        ("eval_frequency=0", "eval_frequency must be positive"),
        ("num_heads=3", "n_heads (3)"),
        ("pad_to_multiple=0", "pad_to_multiple must be at least 1"),
    ] {
        let err = ExperimentConfig::resolve(Task::Listops, Preset::Quick, None, &[set.into()])
            .unwrap_err();
        assert!(err.contains(expected), "--set {set}: {err}");
    }
    let ok = ExperimentConfig::resolve(
        Task::Listops,
        Preset::Lra,
        None,
        &["attention=\"Softmax\"".into(), "seed=7".into()],
    )
    .unwrap();
    assert_eq!((ok.max_len, ok.num_landmarks, ok.seed), (2000, 64, 7));

    let path =
        std::env::temp_dir().join(format!("nystromformer-config-{}.json", std::process::id()));
    std::fs::write(&path, "{\"batch_size\": 16,\n \"dropout\": \"high\"}").unwrap();
    let err =
        ExperimentConfig::resolve(Task::Listops, Preset::Quick, Some(&path), &[]).unwrap_err();
    std::fs::remove_file(&path).ok();
    assert!(err.contains("\"dropout\" expects a number"), "{err}");
}
