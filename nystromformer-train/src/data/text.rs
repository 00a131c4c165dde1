//! Byte-level text classification (LRA Text): local TSV, CSV or JSONL files with a text and a
//! label column. Tokens are the UTF-8 bytes shifted by one (0 is padding), cut at `max_len`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::SequenceItem;

/// Token ids: 256 byte values and padding.
pub const TEXT_VOCAB_SIZE: usize = 257;

/// Where the text and the label are in each record.
#[derive(Debug, Clone)]
pub struct Columns {
    /// Name of the text column (TSV/CSV header) or field (JSONL).
    pub text: String,
    /// Name of the label column or field.
    pub label: String,
}

/// A file's records as (text, label) strings. The format follows the extension: `.tsv` and
/// `.csv` need a header naming the columns, `.jsonl` holds one object per line. Errors name the
/// file and line.
pub fn read_records(path: &Path, columns: &Columns) -> Result<Vec<(String, String)>, String> {
    let file = path.display();
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => {
            let handle = std::fs::File::open(path).map_err(|err| format!("{file}: {err}"))?;
            let mut records = Vec::new();
            for (index, line) in BufReader::new(handle).lines().enumerate() {
                let at = |message: String| format!("{file}:{}: {message}", index + 1);
                let line = line.map_err(|err| at(err.to_string()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let value: serde_json::Value =
                    serde_json::from_str(&line).map_err(|err| at(err.to_string()))?;
                let text = value[&columns.text]
                    .as_str()
                    .ok_or_else(|| at(format!("no string field \"{}\"", columns.text)))?;
                let label = match &value[&columns.label] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => {
                        return Err(at(format!(
                            "no string or number field \"{}\"",
                            columns.label
                        )));
                    }
                };
                records.push((text.to_string(), label));
            }
            Ok(records)
        }
        Some(ext @ ("tsv" | "csv")) => {
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(if ext == "tsv" { b'\t' } else { b',' })
                .quoting(ext == "csv")
                .from_path(path)
                .map_err(|err| format!("{file}: {err}"))?;
            let headers = reader
                .headers()
                .map_err(|err| format!("{file}:1: {err}"))?
                .clone();
            let position = |name: &str| {
                headers.iter().position(|h| h == name).ok_or_else(|| {
                    format!(
                        "{file}:1: no column \"{name}\" in the header {:?}",
                        headers.iter().collect::<Vec<_>>()
                    )
                })
            };
            let (text, label) = (position(&columns.text)?, position(&columns.label)?);
            let mut records = Vec::new();
            for record in reader.records() {
                let record = record.map_err(|err| {
                    let line = err.position().map_or(0, |p| p.line());
                    format!("{file}:{line}: {err}")
                })?;
                let line = record.position().map_or(0, |p| p.line());
                let field = |i: usize| {
                    record
                        .get(i)
                        .ok_or_else(|| format!("{file}:{line}: missing column {}", i + 1))
                };
                records.push((field(text)?.to_string(), field(label)?.trim().to_string()));
            }
            Ok(records)
        }
        _ => Err(format!("{file}: expected a .tsv, .csv or .jsonl file")),
    }
}

/// The classes, in a stable order: numerically when every label is an integer, else sorted.
pub fn label_set(records: &[(String, String)]) -> Vec<String> {
    let mut labels: Vec<String> = records.iter().map(|(_, label)| label.clone()).collect();
    labels.sort();
    labels.dedup();
    if labels.iter().all(|l| l.parse::<i64>().is_ok()) {
        labels.sort_by_key(|l| l.parse::<i64>().unwrap());
    }
    labels
}

/// Byte tokens of `text`, cut at `max_len`.
pub fn encode(text: &str, max_len: usize) -> Vec<u32> {
    text.bytes().take(max_len).map(|b| b as u32 + 1).collect()
}

/// Reads a split and encodes it with the given classes; an unknown label is an error.
pub fn load_split(
    path: &Path,
    columns: &Columns,
    labels: &[String],
    max_len: usize,
) -> Result<Vec<SequenceItem>, String> {
    read_records(path, columns)?
        .into_iter()
        .enumerate()
        .map(|(i, (text, label))| {
            let index = labels
                .iter()
                .position(|known| *known == label)
                .ok_or_else(|| {
                    format!(
                        "{}: record {}: label \"{label}\" does not occur in the training data",
                        path.display(),
                        i + 1
                    )
                })?;
            Ok(SequenceItem {
                tokens: encode(&text, max_len),
                label: index as u32,
            })
        })
        .collect()
}

/// `dir/NAME.{tsv,csv,jsonl}` for the first NAME found.
pub fn find_split(dir: &Path, names: &[&str]) -> Result<PathBuf, String> {
    names
        .iter()
        .flat_map(|name| ["tsv", "csv", "jsonl"].map(|ext| dir.join(format!("{name}.{ext}"))))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            format!(
                "{}: no {}.tsv, .csv or .jsonl",
                dir.display(),
                names.join("/")
            )
        })
}
