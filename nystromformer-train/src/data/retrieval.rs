//! LRA Retrieval: document matching on the ACL Anthology Network (AAN) citation pairs.
//!
//! LRA releases `new_aan_pairs.{train,eval,test}.tsv`: tab-separated lines without a header,
//! `label \t id1 \t id2 \t text1 \t text2`, the label `0`/`1` (written `0.0`/`1.0` in some copies),
//! no quoting. Both texts become byte tokens like the text task's.

use std::path::Path;

use super::text::encode;

/// One pair of documents and whether they match (one cites the other).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairItem {
    /// Byte tokens of the first document.
    pub first: Vec<u32>,
    /// Byte tokens of the second document.
    pub second: Vec<u32>,
    /// 1 when the documents match, else 0.
    pub label: u32,
}

/// The file names LRA uses for the three splits.
pub const SPLIT_FILES: [&str; 3] = [
    "new_aan_pairs.train.tsv",
    "new_aan_pairs.eval.tsv",
    "new_aan_pairs.test.tsv",
];

/// Reads an AAN pairs file; each document is cut at `max_len` bytes. Errors name file and line.
pub fn read_pairs(path: &Path, max_len: usize) -> Result<Vec<PairItem>, String> {
    let bytes = std::fs::read(path).map_err(|err| format!("{}: {err}", path.display()))?;
    String::from_utf8_lossy(&bytes)
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            parse_line(line, max_len)
                .map_err(|message| format!("{}:{}: {message}", path.display(), index + 1))
        })
        .collect()
}

fn parse_line(line: &str, max_len: usize) -> Result<PairItem, String> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [label, _id1, _id2, first, second] = fields[..] else {
        return Err(format!(
            "expected 5 tab-separated fields (label, id1, id2, text1, text2), found {}",
            fields.len()
        ));
    };
    let label = match label.trim() {
        "0" | "0.0" => 0,
        "1" | "1.0" => 1,
        other => return Err(format!("label \"{other}\" is neither 0 nor 1")),
    };
    Ok(PairItem {
        first: encode(first, max_len),
        second: encode(second, max_len),
        label,
    })
}

/// The three splits from `dir` (LRA's file names).
pub fn read_splits(dir: &Path, max_len: usize) -> Result<[Vec<PairItem>; 3], String> {
    let [train, valid, test] = SPLIT_FILES.map(|name| read_pairs(&dir.join(name), max_len));
    Ok([train?, valid?, test?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_in_both_spellings() {
        let item = parse_line("1.0\ta\tb\tAB\tC", 10).unwrap();
        assert_eq!(item.label, 1);
        assert_eq!(item.first, vec![b'A' as u32 + 1, b'B' as u32 + 1]);
        assert_eq!(item.second, vec![b'C' as u32 + 1]);
        assert_eq!(parse_line("0\ta\tb\tx\ty", 10).unwrap().label, 0);
    }

    #[test]
    fn cuts_documents_at_max_len() {
        let item = parse_line("0\ta\tb\tabcdef\txy", 3).unwrap();
        assert_eq!((item.first.len(), item.second.len()), (3, 2));
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(
            parse_line("1\ta\tb\tonly four", 10)
                .unwrap_err()
                .contains("found 4")
        );
        assert!(
            parse_line("2\ta\tb\tx\ty", 10)
                .unwrap_err()
                .contains("label \"2\"")
        );
    }
}
