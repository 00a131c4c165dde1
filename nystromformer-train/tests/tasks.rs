//! The retrieval, image and masked-LM tasks end to end on small synthetic files in the released
//! formats, and data-parallel training on two CPU devices.

mod common;

use std::path::Path;

use common::{
    binary, cifar_records, eval_error, eval_json, last_json_line, run_ok, scratch_dir,
    small_listops, soup, summary, tiny_run, write_aan_pairs,
};
use nystromformer_train::data::image::RECORD_BYTES;
use nystromformer_train::data::rng::SplitMix64;
use nystromformer_train::training::last_checkpoint;

fn train(task: &str, dir: &Path, data: &Path, extra: &[&str]) -> serde_json::Value {
    let stdout = run_ok(
        binary()
            .args(["train", task, "--headless", "--artifact-dir"])
            .arg(dir)
            .args(["--set", &format!("data_dir={}", data.display())])
            .args(tiny_run(4, 2))
            .args(extra),
    );
    last_json_line(&stdout)
}

fn assert_trained(dir: &Path, run: &serde_json::Value, test_count: usize) {
    assert_eq!(run["steps"], 4);
    assert_eq!(last_checkpoint(dir), Some(2), "a checkpoint every 2 steps");
    assert!(dir.join("model.bpk").is_file());
    assert_eq!(summary(dir)["test"]["count"], test_count);
    let accuracy = run["test"]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{run}");
    assert!(run["test"]["loss"].as_f64().unwrap().is_finite(), "{run}");
}

#[test]
fn retrieval_trains_on_aan_pairs_and_evaluates() {
    let dir = scratch_dir("retrieval");
    let data = dir.join("aan");
    std::fs::create_dir_all(&data).unwrap();
    write_aan_pairs(&data, &mut SplitMix64::new(1), [32, 8, 12]);
    let run_dir = dir.join("run");
    let run = train("retrieval", &run_dir, &data, &["--set", "max_len=64"]);
    assert_trained(&run_dir, &run, 12);
    assert_eq!(run["majority_class_accuracy"], 0.5);

    let eval = eval_json(&run_dir, &data.join("new_aan_pairs.eval.tsv"));
    assert_eq!(eval["count"], 8);

    std::fs::write(data.join("bad.tsv"), "1\ta\tb\tx\ty\n1\ta\tb\tonly four\n").unwrap();
    let stderr = eval_error(&run_dir, &data.join("bad.tsv"));
    assert!(
        stderr.contains("bad.tsv:2: expected 5 tab-separated fields"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn image_trains_on_cifar_binary_batches_and_evaluates() {
    let dir = scratch_dir("image");
    let data = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&data).unwrap();
    let mut rng = SplitMix64::new(2);
    for index in 1..=5 {
        let records = cifar_records(8, &mut rng);
        std::fs::write(data.join(format!("data_batch_{index}.bin")), records).unwrap();
    }
    std::fs::write(data.join("test_batch.bin"), cifar_records(10, &mut rng)).unwrap();
    let run_dir = dir.join("run");
    let run = train("image", &run_dir, &data, &["--set", "valid_size=8"]);
    assert_trained(&run_dir, &run, 10);
    assert_eq!(
        run["valid"]["count"], 8,
        "the last 8 training images validate"
    );

    let eval = eval_json(&run_dir, &data.join("test_batch.bin"));
    assert_eq!(eval["count"], 10);

    let truncated = data.join("truncated.bin");
    std::fs::write(&truncated, vec![1u8; RECORD_BYTES + 5]).unwrap();
    let stderr = eval_error(&run_dir, &truncated);
    assert!(
        stderr.contains("truncated.bin") && stderr.contains("3073-byte"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn masked_lm_pretraining_learns_the_byte_distribution() {
    let dir = scratch_dir("mlm");
    let data = dir.join("corpus");
    std::fs::create_dir_all(&data).unwrap();
    let mut rng = SplitMix64::new(3);
    for (name, words) in [("train", 3000), ("valid", 200), ("test", 200)] {
        std::fs::write(data.join(format!("{name}.txt")), soup(&mut rng, words)).unwrap();
    }
    let run_dir = dir.join("run");
    let stdout = run_ok(
        binary()
            .args(["train", "mlm", "--headless", "--artifact-dir"])
            .arg(&run_dir)
            .args(["--set", &format!("data_dir={}", data.display())])
            .args(tiny_run(100, 50))
            .args(["--set", "max_len=64", "--set", "batch_size=8"])
            .args(["--set", "learning_rate=0.01"]),
    );
    let run = last_json_line(&stdout);
    assert_eq!(run["steps"], 100);
    assert_eq!(last_checkpoint(&run_dir), Some(2));
    // An untrained model predicts about uniformly over 258 tokens: loss ln 258 = 5.55. The
    // corpus uses 17 distinct bytes, so a model that learnt only their frequencies is below
    // ln 17 = 2.83.
    let loss = run["test"]["loss"].as_f64().unwrap();
    assert!(loss < 2.83, "masked-LM test loss {loss}");
    // Always guessing the most frequent byte scores the majority share; context does better.
    let accuracy = run["test"]["accuracy"].as_f64().unwrap();
    let majority = run["majority_class_accuracy"].as_f64().unwrap();
    assert!(
        accuracy > majority + 0.05,
        "accuracy {accuracy}, majority {majority}"
    );
    let eval = eval_json(&run_dir, &data.join("test.txt"));
    assert_eq!(eval["count"], run["test"]["count"]);
    assert_eq!(
        eval["loss"], run["test"]["loss"],
        "evaluation masks are fixed by the seed"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn data_parallel_training_on_two_cpu_devices() {
    let dir = scratch_dir("data-parallel");
    let stdout = run_ok(
        binary()
            .args(["train", "listops", "--headless", "--devices", "flex,flex"])
            .arg("--artifact-dir")
            .arg(&dir)
            .args(tiny_run(4, 2))
            .args(small_listops()),
    );
    let run = last_json_line(&stdout);
    assert_eq!(run["steps"], 4);
    assert_eq!(last_checkpoint(&dir), Some(2));
    let device = run["device"].as_str().unwrap();
    assert!(device.matches("Flex").count() == 2, "{device}");
    // Each optimizer step takes one batch per device: 2 steps × 2 devices per epoch.
    let log = std::fs::read_to_string(dir.join("train/epoch-1/Loss.log")).unwrap();
    let batches = log.lines().filter(|line| !line.ends_with("final")).count();
    assert_eq!(batches, 4, "{log}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sqlite_storage_trains_like_memory_and_resume_reuses_it() {
    let dir = scratch_dir("sqlite");
    let listops = |run: &Path, extra: &[&str]| {
        binary()
            .args(["train", "listops", "--headless", "--artifact-dir"])
            .arg(run)
            .args(tiny_run(4, 2))
            .args(small_listops())
            .args(extra)
            .output()
            .unwrap()
    };
    let memory = listops(&dir.join("memory"), &[]);
    let sqlite_dir = dir.join("sqlite");
    let sqlite = listops(&sqlite_dir, &["--set", "storage=sqlite"]);
    let stderr = String::from_utf8_lossy(&sqlite.stderr);
    assert!(sqlite.status.success(), "{stderr}");
    assert!(stderr.contains("writing the examples") && sqlite_dir.join("dataset.db").is_file());
    // The same examples in the same order: the same final metrics as the in-memory run.
    let last_line =
        |out: &std::process::Output| last_json_line(&String::from_utf8_lossy(&out.stdout));
    let (memory, sqlite) = (last_line(&memory), last_line(&sqlite));
    assert_eq!(memory["test"], sqlite["test"]);
    assert_eq!(memory["valid"], sqlite["valid"]);

    let resumed = listops(&sqlite_dir, &["--resume"]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(
        !stderr.contains("writing the examples"),
        "the resumed run reads the stored examples: {stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
