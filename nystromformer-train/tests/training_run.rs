//! A few-step training run end to end: checkpoints, resume (step count, changed parameters),
//! `eval`'s JSON line, and configuration errors.

mod common;

use std::path::Path;

use common::{binary, eval_json};
use nystromformer_train::config::{ExperimentConfig, Preset, Task};
use nystromformer_train::files::read_json;
use nystromformer_train::training::last_checkpoint;

fn train(dir: &Path, extra: &[&str]) -> std::process::Output {
    let small = [
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
        "steps_per_checkpoint=4",
        "--set",
        "num_workers=0",
    ];
    binary()
        .args(["train", "listops", "--headless", "--artifact-dir"])
        .arg(dir)
        .args(small)
        .args(extra)
        .output()
        .expect("the binary runs")
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.bpk")).expect("model.bpk written")
}

#[test]
fn train_checkpoints_resumes_and_evaluates() {
    let dir = std::env::temp_dir().join(format!("nystromformer-train-run-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();

    // An 8-step run stopped after its first checkpoint (4 steps).
    let first = train(&dir, &["--stop-at-step", "4"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        last_checkpoint(&dir),
        Some(1),
        "one checkpoint after 4 steps"
    );
    assert!(dir.join("config.json").is_file() && dir.join("summary.json").is_file());
    let written: ExperimentConfig = read_json(&dir.join("config.json")).unwrap();
    assert_eq!(
        written.pad_to_multiple,
        Some(1),
        "on the CPU a batch pads to its longest sequence, and config.json records it"
    );
    let after_first = weights(&dir);

    // Resume: training continues at step 5 with the saved optimizer and schedule.
    let resumed = train(&dir, &["--resume"]);
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resuming after step 4"));
    assert!(stdout.contains("starting at epoch 2"), "{stdout}");
    assert_eq!(
        last_checkpoint(&dir),
        Some(2),
        "a second checkpoint after 8 steps"
    );
    assert!(dir.join("train/epoch-2").is_dir() && !dir.join("train/epoch-3").exists());
    assert!(
        weights(&dir) != after_first,
        "resumed training changed the parameters"
    );
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

#[test]
fn configuration_errors_are_clear() {
    // One bad `--set` on the quick ListOps preset each.
    for (set, expected) in [
        (
            "learning_rat=1e-3",
            "unknown configuration key \"learning_rat\"",
        ),
        ("total_steps=1001", "multiple of steps_per_checkpoint"),
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
