//! Helpers shared by the test binaries that drive `nystromformer-train` as a process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use nystromformer_train::data::image::{PIXELS, RECORD_BYTES};
use nystromformer_train::data::rng::SplitMix64;

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

/// A word soup of `words` words from a seeded stream.
pub fn soup(rng: &mut SplitMix64, words: usize) -> String {
    const WORDS: [&str; 8] = [
        "graph", "neural", "parser", "corpus", "tree", "vector", "kernel", "lattice",
    ];
    (0..words)
        .map(|_| WORDS[rng.range(0, WORDS.len() - 1)])
        .collect::<Vec<_>>()
        .join(" ")
}

/// CIFAR-10 binary records whose class decides the brightness.
pub fn cifar_records(count: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(count * RECORD_BYTES);
    for i in 0..count {
        let label = (i % 10) as u8;
        bytes.push(label);
        bytes.extend((0..3 * PIXELS).map(|_| (label as usize * 25 + rng.range(0, 5)) as u8));
    }
    bytes
}

/// LRA's AAN pair files (`new_aan_pairs.{train,eval,test}.tsv`) of word soups, alternating
/// labels, with `counts` pairs per split.
pub fn write_aan_pairs(dir: &Path, rng: &mut SplitMix64, counts: [usize; 3]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, count) in ["train", "eval", "test"].into_iter().zip(counts) {
        let lines: String = (0..count)
            .map(|i| {
                let label = if i % 2 == 0 { "1.0" } else { "0.0" };
                let (a, b) = (soup(rng, 12), soup(rng, 9));
                format!("{label}\tdoc{i}a\tdoc{i}b\t{a}\t{b}\n")
            })
            .collect();
        std::fs::write(dir.join(format!("new_aan_pairs.{name}.tsv")), lines).unwrap();
    }
}
