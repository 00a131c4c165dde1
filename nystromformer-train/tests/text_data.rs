//! Text classification data: the three file formats, label order, byte tokens, errors with file
//! and line, and a few-step `train text` run evaluated with `eval`.

mod common;

use std::path::{Path, PathBuf};

use common::{binary, eval_json, run_ok};
use nystromformer_train::data::text::{Columns, encode, label_set, load_split, read_records};

fn scratch(name: &str) -> PathBuf {
    common::scratch_dir(&format!("text-{name}"))
}

fn columns() -> Columns {
    Columns {
        text: "text".into(),
        label: "label".into(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_three_formats_read_the_same_records() {
    let dir = scratch("formats");
    let tsv = write(
        &dir,
        "a.tsv",
        "label\ttext\npos\tgood film\nneg\tbad, \"awful\" film\n",
    );
    let csv = write(
        &dir,
        "a.csv",
        "text,label\ngood film,pos\n\"bad, \"\"awful\"\" film\",neg\n",
    );
    let jsonl = write(
        &dir,
        "a.jsonl",
        "{\"text\": \"good film\", \"label\": \"pos\"}\n\n{\"text\": \"bad, \\\"awful\\\" film\", \"label\": \"neg\"}\n",
    );
    let expected = vec![
        ("good film".to_string(), "pos".to_string()),
        ("bad, \"awful\" film".to_string(), "neg".to_string()),
    ];
    for path in [&tsv, &csv, &jsonl] {
        assert_eq!(
            read_records(path, &columns()).unwrap(),
            expected,
            "{}",
            path.display()
        );
    }
    assert_eq!(label_set(&expected), vec!["neg", "pos"]);
    let numeric = vec![
        ("a".into(), "10".into()),
        ("b".into(), "2".into()),
        ("c".into(), "2".into()),
    ];
    assert_eq!(
        label_set(&numeric),
        vec!["2", "10"],
        "integer labels in numeric order"
    );
    assert_eq!(encode("aé", 10), vec![98, 196, 170], "UTF-8 bytes + 1");
    assert_eq!(encode("abcdef", 3).len(), 3);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_files_name_file_and_line() {
    let dir = scratch("bad");
    let cases = [
        (
            "x.jsonl",
            "{\"text\": \"a\", \"label\": 1}\n{\"text\": 3, \"label\": 1}\n",
            ":2: no string field \"text\"",
        ),
        (
            "y.jsonl",
            "{\"text\": \"a\", \"label\": 1}\nnot json\n",
            ":2:",
        ),
        ("z.csv", "body,label\nabc,1\n", ":1: no column \"text\""),
        ("w.csv", "text,label\nabc,1\nabc\n", ":3:"),
        (
            "v.txt",
            "text,label\n",
            "expected a .tsv, .csv or .jsonl file",
        ),
    ];
    for (name, text, expected) in cases {
        let path = write(&dir, name, text);
        let err = read_records(&path, &columns()).unwrap_err();
        assert!(
            err.contains(&path.display().to_string()) && err.contains(expected),
            "{name}: {err}"
        );
    }
    let path = write(&dir, "u.csv", "text,label\nabc,maybe\n");
    let err = load_split(&path, &columns(), &["no".into(), "yes".into()], 100).unwrap_err();
    assert!(
        err.contains("label \"maybe\" does not occur in the training data"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn train_text_and_eval() {
    let dir = scratch("run");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let rows: Vec<(String, &str)> = (0..64)
        .map(|i| {
            if i % 2 == 0 {
                (format!("great fun {i}"), "pos")
            } else {
                (format!("dull mess {i}"), "neg")
            }
        })
        .collect();
    let jsonl: String = rows
        .iter()
        .map(|(t, l)| format!("{{\"text\": \"{t}\", \"label\": \"{l}\"}}\n"))
        .collect();
    write(&data, "train.jsonl", &jsonl);
    let csv: String = std::iter::once("text,label\n".to_string())
        .chain(rows.iter().take(8).map(|(t, l)| format!("{t},{l}\n")))
        .collect();
    write(&data, "valid.csv", &csv);
    let tsv: String = std::iter::once("text\tlabel\n".to_string())
        .chain(rows.iter().take(6).map(|(t, l)| format!("{t}\t{l}\n")))
        .collect();
    let test = write(&data, "test.tsv", &tsv);

    let artifacts = dir.join("artifacts");
    run_ok(
        binary()
            .args(["train", "text", "--headless", "--artifact-dir"])
            .arg(&artifacts)
            .args([
                "--set",
                &format!("data_dir={}", serde_json::to_string(&data).unwrap()),
            ])
            .args([
                "--set",
                "hidden_size=16",
                "--set",
                "intermediate_size=32",
                "--set",
                "num_landmarks=4",
            ])
            .args([
                "--set",
                "batch_size=8",
                "--set",
                "warmup_steps=1",
                "--set",
                "total_steps=4",
                "--set",
                "eval_frequency=4",
            ])
            .args(["--set", "num_workers=0"]),
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(artifacts.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["task"], "text");
    assert_eq!(
        config["labels"],
        serde_json::json!(["neg", "pos"]),
        "classes recorded for eval"
    );

    let line = eval_json(&artifacts, &test);
    assert_eq!(line["count"], 6);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn text_needs_a_data_dir() {
    let err = nystromformer_train::config::ExperimentConfig::resolve(
        nystromformer_train::config::Task::Text,
        nystromformer_train::config::Preset::Quick,
        None,
        &[],
    )
    .unwrap_err();
    assert!(err.contains("data_dir"), "{err}");
}
