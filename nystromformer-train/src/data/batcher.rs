//! Batching token sequences: pad to a common length and build the masks.

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::SequenceItem;
use super::retrieval::PairItem;

/// Token id used for padding.
pub const PAD: u32 = 0;

/// How a batch's common length is chosen: its longest sequence, rounded up to a multiple of
/// `multiple`, never beyond `max_len` (longer sequences are cut).
///
/// Rounding up matters on GPUs: CubeCL compiles, fuses and autotunes kernels for each new
/// shape, and a batch length that follows the data gives nearly every batch a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    /// Longest common length.
    pub max_len: usize,
    /// The common length is a multiple of this unless `max_len` caps it (1: the longest).
    pub multiple: usize,
}

impl Padding {
    /// Pads to the longest sequence, cut at `max_len`.
    pub fn to_longest(max_len: usize) -> Self {
        Self {
            max_len,
            multiple: 1,
        }
    }

    /// The common length for sequences whose longest has `longest` tokens (at least 1).
    pub fn length(&self, longest: usize) -> usize {
        let longest = longest.min(self.max_len).max(1);
        longest
            .next_multiple_of(self.multiple.max(1))
            .min(self.max_len.max(longest))
    }
}

/// Sequences padded to a common length, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedTokens {
    /// `rows × len` token ids, row-major, padded with [`PAD`].
    pub ids: Vec<i64>,
    /// `rows × len`, `true` at padded positions.
    pub pad: Vec<bool>,
    /// Number of sequences.
    pub rows: usize,
    /// Common length, chosen by [`Padding::length`].
    pub len: usize,
}

impl PaddedTokens {
    /// Pads `sequences` to the length `padding` chooses; longer sequences are cut.
    pub fn new(sequences: &[&[u32]], padding: Padding) -> Self {
        let longest = sequences.iter().map(|tokens| tokens.len()).max();
        let len = padding.length(longest.unwrap_or(1));
        let mut ids = Vec::with_capacity(sequences.len() * len);
        let mut pad = Vec::with_capacity(sequences.len() * len);
        for tokens in sequences {
            let kept = tokens.len().min(len);
            ids.extend(tokens[..kept].iter().map(|&t| t as i64));
            ids.extend(std::iter::repeat_n(PAD as i64, len - kept));
            pad.extend((0..len).map(|i| i >= kept));
        }
        Self {
            ids,
            pad,
            rows: sequences.len(),
            len,
        }
    }

    /// `([rows, len]` ids, `[rows, len]` padding mask`)` on `device`.
    pub fn into_tensors(self, device: &Device) -> (Tensor<2, Int>, Tensor<2, Bool>) {
        let shape = [self.rows, self.len];
        (
            Tensor::from_data(TensorData::new(self.ids, shape), device),
            Tensor::from_bool(TensorData::new(self.pad, shape), device),
        )
    }
}

fn labels_tensor(labels: impl Iterator<Item = u32>, device: &Device) -> Tensor<1, Int> {
    let labels: Vec<i64> = labels.map(i64::from).collect();
    let count = labels.len();
    Tensor::from_data(TensorData::new(labels, [count]), device)
}

/// A batch for sequence classification.
#[derive(Debug, Clone)]
pub struct ClassificationBatch {
    /// `[batch, n]` token ids, padded with [`PAD`].
    pub tokens: Tensor<2, Int>,
    /// `[batch, n]`, `true` at padded positions.
    pub mask_pad: Tensor<2, Bool>,
    /// `[batch]` class labels.
    pub labels: Tensor<1, Int>,
}

/// Pads sequences to a common length ([`Padding`]).
#[derive(Debug, Clone)]
pub struct ClassificationBatcher {
    /// The batch length's rule.
    pub padding: Padding,
}

impl ClassificationBatcher {
    /// Host-side layout of a batch's tokens.
    pub fn layout(&self, items: &[SequenceItem]) -> PaddedTokens {
        let sequences: Vec<&[u32]> = items.iter().map(|item| item.tokens.as_slice()).collect();
        PaddedTokens::new(&sequences, self.padding)
    }
}

impl Batcher<SequenceItem, ClassificationBatch> for ClassificationBatcher {
    fn batch(&self, items: Vec<SequenceItem>, device: &Device) -> ClassificationBatch {
        let (tokens, mask_pad) = self.layout(&items).into_tensors(device);
        ClassificationBatch {
            tokens,
            mask_pad,
            labels: labels_tensor(items.iter().map(|item| item.label), device),
        }
    }
}

/// A batch of document pairs: both towers' documents in one padded block.
#[derive(Debug, Clone)]
pub struct PairBatch {
    /// `[2 · batch, n]` token ids: the first documents in rows `0..batch`, the second ones in
    /// rows `batch..2 · batch`, so the shared encoder runs once over both.
    pub tokens: Tensor<2, Int>,
    /// `[2 · batch, n]`, `true` at padded positions.
    pub mask_pad: Tensor<2, Bool>,
    /// `[batch]` labels (1: the documents match).
    pub labels: Tensor<1, Int>,
}

/// Pads both documents of each pair to one common length ([`Padding`]).
#[derive(Debug, Clone)]
pub struct PairBatcher {
    /// The batch length's rule (per document).
    pub padding: Padding,
}

impl Batcher<PairItem, PairBatch> for PairBatcher {
    fn batch(&self, items: Vec<PairItem>, device: &Device) -> PairBatch {
        let sequences: Vec<&[u32]> = items
            .iter()
            .map(|item| item.first.as_slice())
            .chain(items.iter().map(|item| item.second.as_slice()))
            .collect();
        let (tokens, mask_pad) = PaddedTokens::new(&sequences, self.padding).into_tensors(device);
        PairBatch {
            tokens,
            mask_pad,
            labels: labels_tensor(items.iter().map(|item| item.label), device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_rounds_up_to_the_multiple_and_stops_at_max_len() {
        let padding = Padding {
            max_len: 2000,
            multiple: 64,
        };
        assert_eq!(padding.length(1), 64);
        assert_eq!(padding.length(64), 64);
        assert_eq!(padding.length(65), 128);
        assert_eq!(padding.length(1950), 1984);
        // 1985 would round to 2048: max_len caps it, and so cuts longer sequences.
        assert_eq!(padding.length(1985), 2000);
        assert_eq!(padding.length(5000), 2000);
        assert_eq!(Padding::to_longest(100).length(37), 37);
        assert_eq!(Padding::to_longest(100).length(0), 1);
    }

    #[test]
    fn padded_tokens_mask_the_rounded_up_tail() {
        let padding = Padding {
            max_len: 10,
            multiple: 4,
        };
        let tokens = PaddedTokens::new(&[&[5, 6, 7, 8, 9], &[1, 2]], padding);
        assert_eq!(tokens.len, 8);
        assert_eq!(tokens.ids[..8], [5, 6, 7, 8, 9, 0, 0, 0]);
        assert_eq!(tokens.ids[8..], [1, 2, 0, 0, 0, 0, 0, 0]);
        let valid: Vec<usize> = tokens
            .pad
            .chunks(8)
            .map(|row| row.iter().filter(|pad| !**pad).count())
            .collect();
        assert_eq!(valid, [5, 2]);
    }
}
