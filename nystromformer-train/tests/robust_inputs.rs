//! Fuzzing of what a user hands the trainer: `config.json` files (truncated, wrong types, huge
//! values, random bytes) and data files of every task (random bytes, valid files cut anywhere).
//! Each must load or give an error naming the file, never panic; through the binary, the error
//! is one `error:` line without a backtrace.

mod common;

use std::path::{Path, PathBuf};

use common::{binary, scratch_dir};
use nystromformer_train::config::{ExperimentConfig, ListopsTokens, Preset, Task};
use nystromformer_train::data::text::{Columns, load_split, read_records};
use nystromformer_train::data::{corpus, image, listops, retrieval};
use proptest::prelude::*;

fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nystromformer-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn valid_config() -> String {
    let config = ExperimentConfig::preset(Task::Listops, Preset::Quick);
    serde_json::to_string_pretty(&config).unwrap()
}

/// A JSON value of any kind, including numbers far beyond any field's range.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (-1e30f64..1e30).prop_map(serde_json::Value::from),
        "[a-z\"\\\\]{0,8}".prop_map(serde_json::Value::from),
        Just(serde_json::json!([1, 2])),
        Just(serde_json::json!({"x": 1})),
    ]
}

/// The load result: `Ok`, or an error that names the file.
fn check_error_names(result: Result<impl Sized, String>, path: &Path) {
    if let Err(err) = result {
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn config_files_load_or_name_their_problem(
        field in 0usize..32,
        value in any_json(),
        cut in 0usize..2000,
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
        mode in 0u8..3,
    ) {
        let text = valid_config();
        let bytes: Vec<u8> = match mode {
            // One field set to a value of any type or size.
            0 => {
                let mut object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&text).unwrap();
                let key = object.keys().nth(field % object.len()).unwrap().clone();
                object.insert(key, value);
                serde_json::to_vec(&object).unwrap()
            }
            // Cut anywhere.
            1 => text.as_bytes()[..cut.min(text.len())].to_vec(),
            _ => garbage,
        };
        let path = scratch_file(&format!("config-{mode}-{field}.json"), &bytes);
        let loaded = ExperimentConfig::load(&path);
        if let Ok(config) = &loaded {
            prop_assert!(config.validate().is_ok());
        }
        check_error_names(loaded, &path);
    }

    #[test]
    fn data_files_load_or_name_their_problem(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        cut in 0usize..400,
        mode in 0u8..2,
    ) {
        let valid: [(&str, String); 7] = [
            ("listops.tsv", "Source\tTarget\n( [MAX 2 ( [MIN 4 7 ] ) 0 ] )\t7\n3\t3\n".into()),
            ("text.tsv", "text\tlabel\nsome words\tpos\nother words\tneg\n".into()),
            ("text.csv", "text,label\n\"a, b\",pos\nc,neg\n".into()),
            ("text.jsonl", "{\"text\": \"a b\", \"label\": \"pos\"}\n{\"text\": \"c\", \"label\": \"neg\"}\n".into()),
            ("pairs.tsv", "1.0\tx\ty\tfirst doc\tsecond doc\n0.0\tz\tw\tthird\tfourth\n".into()),
            ("corpus.txt", "a small corpus of plain words\n".into()),
            ("images.bin", String::from_utf8_lossy(&[0u8; 10]).into_owned()),
        ];
        for (name, text) in valid {
            let content = match mode {
                0 => bytes.clone(),
                _ => text.as_bytes()[..cut.min(text.len())].to_vec(),
            };
            let path = scratch_file(name, &content);
            let columns = Columns { text: "text".into(), label: "label".into() };
            let labels = vec!["neg".to_string(), "pos".to_string()];
            match name {
                "listops.tsv" => {
                    check_error_names(listops::read_tsv(&path, ListopsTokens::Lra), &path);
                    check_error_names(listops::read_tsv(&path, ListopsTokens::Bracketed), &path);
                }
                "pairs.tsv" => check_error_names(retrieval::read_pairs(&path, 64), &path),
                "corpus.txt" => check_error_names(corpus::read_corpus(&path, 64), &path),
                "images.bin" => check_error_names(image::read_batch(&path), &path),
                _ => {
                    check_error_names(read_records(&path, &columns), &path);
                    check_error_names(load_split(&path, &columns, &labels, 64), &path);
                }
            }
        }
    }
}

#[test]
fn the_binary_reports_bad_configs_and_data_in_one_line() {
    let dir = scratch_dir("fuzz-binary");
    let text = valid_config();
    // A run directory whose config.json is broken in several ways, and empty splits.
    let empty = dir.join("empty-text");
    std::fs::create_dir_all(&empty).unwrap();
    for name in ["train", "valid", "test"] {
        std::fs::write(empty.join(format!("{name}.tsv")), "text\tlabel\n").unwrap();
    }
    let cases: Vec<(Vec<u8>, Vec<String>, &str)> = vec![
        (
            text.as_bytes()[..text.len() / 2].to_vec(),
            vec!["--resume".into()],
            "config.json:",
        ),
        (
            text.replace("\"batch_size\": 32", "\"batch_size\": \"many\"")
                .into_bytes(),
            vec!["--resume".into()],
            "config.json:",
        ),
        (
            text.replace("\"max_len\": 100", "\"max_len\": 100000000000")
                .into_bytes(),
            vec!["--resume".into()],
            "max_len = 100000000000 is above",
        ),
        (
            text.replace("\"warmup_steps\": 200", "\"warmup_steps\": 9000")
                .into_bytes(),
            vec!["--resume".into()],
            "warmup_steps (9000) must be below",
        ),
        (
            Vec::new(),
            vec!["--set".into(), "train_size=0".into()],
            "train_size must be positive",
        ),
    ];
    for (index, (config, args, expected)) in cases.iter().enumerate() {
        let run = dir.join(format!("run-{index}"));
        std::fs::create_dir_all(&run).unwrap();
        if !config.is_empty() {
            std::fs::write(run.join("config.json"), config).unwrap();
        }
        let output = binary()
            .args(["train", "listops", "--headless", "--artifact-dir"])
            .arg(&run)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "case {index} accepted");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "case {index}: {stderr}");
        assert!(errors[0].contains(expected), "case {index}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
    let output = binary()
        .args(["train", "text", "--headless", "--artifact-dir"])
        .arg(dir.join("text-run"))
        .args(["--set", &format!("data_dir={}", empty.display())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("error: ")
            && stderr.contains("no examples")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
