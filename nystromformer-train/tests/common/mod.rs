//! Helpers shared by the test binaries that drive `nystromformer-train` as a process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary on the flex device.
pub fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nystromformer-train"));
    command.args(["--device", "flex"]);
    command
}

/// Runs `command`, fails the test with its stderr if it fails, and returns its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let output = command.output().expect("the binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// A fresh, empty temporary directory named after the test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nystromformer-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `--set` arguments for a tiny model and a short run.
pub fn tiny_run(total_steps: usize, eval_frequency: usize) -> Vec<String> {
    [
        "hidden_size=16".to_string(),
        "intermediate_size=32".into(),
        "num_landmarks=4".into(),
        "batch_size=4".into(),
        "warmup_steps=1".into(),
        format!("total_steps={total_steps}"),
        format!("eval_frequency={eval_frequency}"),
        "num_workers=0".into(),
    ]
    .into_iter()
    .flat_map(|set| ["--set".to_string(), set])
    .collect()
}

/// `--set` arguments for a small generated ListOps data set (short sequences).
pub fn small_listops() -> Vec<String> {
    [
        "train_size=64",
        "valid_size=8",
        "test_size=8",
        "min_len=5",
        "max_len=30",
    ]
    .into_iter()
    .flat_map(|set| ["--set".to_string(), set.to_string()])
    .collect()
}

/// The run summary `train` prints as its last stdout line.
pub fn last_json_line(stdout: &str) -> serde_json::Value {
    let line = stdout.trim().lines().last().expect("some output");
    serde_json::from_str(line).expect("a JSON summary line")
}

/// `eval`'s JSON line for an artifact directory and a data file.
pub fn eval_json(artifact_dir: &Path, data: &Path) -> serde_json::Value {
    let stdout = run_ok(
        binary()
            .args(["eval", "--artifact-dir"])
            .arg(artifact_dir)
            .arg("--data")
            .arg(data),
    );
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

/// `eval`'s error output for a data file it must reject (the exit code must be a failure).
pub fn eval_error(artifact_dir: &Path, data: &Path) -> String {
    let output = binary()
        .args(["eval", "--artifact-dir"])
        .arg(artifact_dir)
        .arg("--data")
        .arg(data)
        .output()
        .expect("the binary runs");
    assert!(!output.status.success(), "eval accepted {}", data.display());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The `summary.json` a finished run wrote.
pub fn summary(artifact_dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(artifact_dir.join("summary.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}
