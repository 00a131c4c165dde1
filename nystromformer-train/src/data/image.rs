//! LRA Image: CIFAR-10 classification from 1 024 grayscale pixel tokens.
//!
//! Reads the "CIFAR-10 binary version" (`cifar-10-batches-bin/`): `data_batch_1.bin` …
//! `data_batch_5.bin` and `test_batch.bin`, each a run of 3 073-byte records, one label byte
//! (0–9) then 1 024 red, 1 024 green and 1 024 blue bytes in row-major order. LRA converts to
//! grayscale with TensorFlow's `rgb_to_grayscale` (see [`gray`]); it keeps the last 10 % of the
//! training images (5 000) for validation.

use std::path::Path;

use super::SequenceItem;

/// Pixels per image.
pub const PIXELS: usize = 32 * 32;
/// Bytes per record: the label and three colour planes.
pub const RECORD_BYTES: usize = 1 + 3 * PIXELS;
/// Token ids: 256 gray levels shifted by one (0 stays padding, which images never need).
pub const IMAGE_VOCAB_SIZE: usize = 257;
/// CIFAR-10 classes.
pub const NUM_CLASSES: usize = 10;
/// Training files of the binary distribution, in order.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// Test file of the binary distribution.
pub const TEST_FILE: &str = "test_batch.bin";

/// Gray level of one pixel as TensorFlow's `rgb_to_grayscale` computes it for `uint8` images:
/// the weighted sum on `[0, 1]` floats, converted back by `convert_image_dtype`, which scales by
/// 255.5 and truncates.
pub fn gray(r: u8, g: u8, b: u8) -> u8 {
    let unit = |v: u8| v as f32 * (1.0 / 255.0);
    let level = 0.2989 * unit(r) + 0.5870 * unit(g) + 0.1140 * unit(b);
    (level * 255.5).min(255.0) as u8
}

/// Decodes one 3 073-byte record.
pub fn decode_record(record: &[u8]) -> Result<SequenceItem, String> {
    let label = record[0];
    if label as usize >= NUM_CLASSES {
        return Err(format!("label byte {label} is not a CIFAR-10 class (0-9)"));
    }
    let (r, rest) = record[1..].split_at(PIXELS);
    let (g, b) = rest.split_at(PIXELS);
    let tokens = (0..PIXELS)
        .map(|i| gray(r[i], g[i], b[i]) as u32 + 1)
        .collect();
    Ok(SequenceItem {
        tokens,
        label: label as u32,
    })
}

/// Reads one binary batch file. Errors name the file and the record.
pub fn read_batch(path: &Path) -> Result<Vec<SequenceItem>, String> {
    let bytes = std::fs::read(path).map_err(|err| format!("{}: {err}", path.display()))?;
    if bytes.is_empty() || bytes.len() % RECORD_BYTES != 0 {
        return Err(format!(
            "{}: {} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records",
            path.display(),
            bytes.len()
        ));
    }
    bytes
        .chunks(RECORD_BYTES)
        .enumerate()
        .map(|(index, record)| {
            decode_record(record)
                .map_err(|message| format!("{}: record {}: {message}", path.display(), index + 1))
        })
        .collect()
}

/// Train, validation and test splits from `dir`: the last `valid_size` training images
/// validate (LRA: 5 000).
pub fn read_splits(dir: &Path, valid_size: usize) -> Result<[Vec<SequenceItem>; 3], String> {
    let mut train = Vec::new();
    for name in TRAIN_FILES {
        train.extend(read_batch(&dir.join(name))?);
    }
    if valid_size >= train.len() {
        return Err(format!(
            "valid_size ({valid_size}) leaves no training images of the {} in {}",
            train.len(),
            dir.display()
        ));
    }
    let valid = train.split_off(train.len() - valid_size);
    let test = read_batch(&dir.join(TEST_FILE))?;
    Ok([train, valid, test])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gray_follows_tensorflow_weights() {
        assert_eq!(gray(255, 255, 255), 255, "0.9999 · 255.5 truncates to 255");
        assert_eq!(gray(0, 0, 0), 0);
        assert_eq!(gray(100, 0, 0), 29);
        assert_eq!(gray(0, 100, 0), 58);
        assert_eq!(gray(0, 0, 100), 11);
    }

    #[test]
    fn decodes_planes_in_order() {
        let mut record = vec![7u8];
        record.extend(std::iter::repeat_n(100, PIXELS));
        record.extend(std::iter::repeat_n(0, PIXELS));
        record.extend(std::iter::repeat_n(0, PIXELS - 1));
        record.push(200);
        let item = decode_record(&record).unwrap();
        assert_eq!(item.label, 7);
        assert_eq!(item.tokens.len(), PIXELS);
        assert_eq!(item.tokens[0], 29 + 1);
        assert_eq!(item.tokens[PIXELS - 1], gray(100, 0, 200) as u32 + 1);
    }

    #[test]
    fn rejects_bad_labels() {
        let mut record = vec![10u8];
        record.extend(std::iter::repeat_n(0, 3 * PIXELS));
        assert!(
            decode_record(&record)
                .unwrap_err()
                .contains("label byte 10")
        );
    }
}
