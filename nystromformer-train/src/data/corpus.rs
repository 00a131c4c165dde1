//! Plain-text corpora for masked-LM pretraining: the file's bytes cut into consecutive windows of
//! `max_len` byte tokens (the text task's encoding: byte + 1, 0 is padding).

use std::path::{Path, PathBuf};

/// Token ids: padding, 256 byte values and [`MASK`].
pub const MLM_VOCAB_SIZE: usize = 258;
/// The `[MASK]` token.
pub const MASK: u32 = 257;

/// One window of a corpus.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextChunk {
    /// Byte tokens (1..=256).
    pub tokens: Vec<u32>,
}

/// Cuts `bytes` into windows of `max_len` tokens; the last, shorter window is kept.
pub fn chunk(bytes: &[u8], max_len: usize) -> Vec<TextChunk> {
    bytes
        .chunks(max_len.max(1))
        .map(|window| TextChunk {
            tokens: window.iter().map(|&b| b as u32 + 1).collect(),
        })
        .collect()
}

/// Reads a corpus file into windows; an empty file is an error.
pub fn read_corpus(path: &Path, max_len: usize) -> Result<Vec<TextChunk>, String> {
    let bytes = std::fs::read(path).map_err(|err| format!("{}: {err}", path.display()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("{}: the corpus is empty", path.display()));
    }
    Ok(chunk(&bytes, max_len))
}

/// `dir/NAME.txt` for the first NAME found.
pub fn find_corpus(dir: &Path, names: &[&str]) -> Result<PathBuf, String> {
    names
        .iter()
        .map(|name| dir.join(format!("{name}.txt")))
        .find(|path| path.is_file())
        .ok_or_else(|| format!("{}: no {}.txt", dir.display(), names.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_text_in_order() {
        let chunks = chunk(b"abcdefg", 3);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].tokens, vec![98, 99, 100]);
        assert_eq!(chunks[2].tokens, vec![b'g' as u32 + 1]);
    }
}
