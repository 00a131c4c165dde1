//! The `encode` subcommand end to end: HF's output reproduced from the command line, and bad
//! files rejected with one clear line.

use std::path::{Path, PathBuf};
use std::process::Command;

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nystromformer-encode-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn encode(hf: &Path, input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nystromformer-train"))
        .args(["--device", "flex", "encode", "--hf-dir"])
        .arg(hf)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .expect("the binary runs")
}

fn flat(value: &serde_json::Value) -> Vec<f64> {
    match value {
        serde_json::Value::Array(items) => items.iter().flat_map(flat).collect(),
        other => vec![other.as_f64().unwrap()],
    }
}

#[test]
fn encode_reproduces_hf_last_hidden_state() {
    for (case, extra) in [
        ("nystrom_conv_mlm", &[][..]),
        ("nystrom_mask_hfcompat", &["--hf-compatible-mask"][..]),
    ] {
        let hf = assets().join("hf").join(case);
        let io: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(hf.join("io.json")).unwrap()).unwrap();
        let dir = scratch(case);
        let input = dir.join("ids.json");
        let output = dir.join("out.json");
        let mut request = serde_json::json!({ "input_ids": io["input_ids"], "token_type_ids": io["token_type_ids"] });
        if !io["attention_mask"].is_null() {
            request["attention_mask"] = io["attention_mask"].clone();
        }
        std::fs::write(&input, request.to_string()).unwrap();
        let run = encode(&hf, &input, &output, extra);
        assert!(
            run.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let got: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
        let (got, expected) = (
            flat(&got["last_hidden_state"]),
            flat(&io["last_hidden_state"]),
        );
        assert_eq!(got.len(), expected.len());
        // Compare valid positions only (HF's padded rows are not defined outputs).
        let mask = if io["attention_mask"].is_null() {
            vec![1.0; got.len()]
        } else {
            flat(&io["attention_mask"])
        };
        let width = got.len() / mask.len();
        let err = got
            .iter()
            .zip(&expected)
            .enumerate()
            .filter(|(i, _)| mask[i / width] == 1.0)
            .map(|(_, (a, b))| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err <= 1e-4, "{case}: max abs error {err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn bad_inputs_get_one_clear_line_and_a_failure_code() {
    let hf = assets().join("hf/nystrom_conv_mlm");
    let dir = scratch("bad");
    let output = dir.join("out.json");
    let cases = [
        ("{\n  \"input_ids\": [[1, 2,]]\n}", "ids.json:2:"),
        (
            "{\"input_ids\": [[1, 2], [3]]}",
            "input_ids[1] has 1 entries, expected 2",
        ),
        (
            "{\"input_ids\": [[1, 99]]}",
            "input_ids[0][1] = 99 is outside the vocabulary",
        ),
        (
            "{\"input_ids\": [[1, 2]], \"attention_mask\": [[1, 2]]}",
            "attention_mask[0][1] = 2",
        ),
        ("{\"input_ids\": []}", "input_ids is empty"),
        (
            "{\"input_ids\": [[1]], \"labels\": [1]}",
            "unknown field `labels`",
        ),
    ];
    for (text, expected) in cases {
        let input = dir.join("ids.json");
        std::fs::write(&input, text).unwrap();
        let run = encode(&hf, &input, &output, &[]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{text}: should fail");
        assert!(stderr.contains(expected), "{text}: stderr was {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(!output.exists(), "no partial output is left behind");
    }
    std::fs::write(dir.join("ids.json"), "{\"input_ids\": [[1, 2]]}").unwrap();
    let run = encode(
        &dir.join("missing-dir"),
        &dir.join("ids.json"),
        &output,
        &[],
    );
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("missing-dir"));
    std::fs::remove_dir_all(&dir).ok();
}
