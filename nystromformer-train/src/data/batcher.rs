//! Batching token sequences: pad to the longest sequence of the batch and build the masks.

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::SequenceItem;
use super::retrieval::PairItem;

/// Token id used for padding.
pub const PAD: u32 = 0;

/// Sequences padded to a common length, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedTokens {
    /// `rows × len` token ids, row-major, padded with [`PAD`].
    pub ids: Vec<i64>,
    /// `rows × len`, `true` at padded positions.
    pub pad: Vec<bool>,
    /// Number of sequences.
    pub rows: usize,
    /// Common length: the longest sequence, capped at the batcher's `max_len` (at least 1).
    pub len: usize,
}

impl PaddedTokens {
    /// Pads `sequences` to the longest of them; sequences longer than `max_len` are cut.
    pub fn new(sequences: &[&[u32]], max_len: usize) -> Self {
        let len = sequences
            .iter()
            .map(|tokens| tokens.len().min(max_len))
            .max()
            .unwrap_or(1)
            .max(1);
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

/// Pads sequences to the batch's longest (capped at `max_len`, longer ones are cut).
#[derive(Debug, Clone)]
pub struct ClassificationBatcher {
    /// Longest sequence a batch may hold.
    pub max_len: usize,
}

impl ClassificationBatcher {
    /// Host-side layout of a batch's tokens.
    pub fn layout(&self, items: &[SequenceItem]) -> PaddedTokens {
        let sequences: Vec<&[u32]> = items.iter().map(|item| item.tokens.as_slice()).collect();
        PaddedTokens::new(&sequences, self.max_len)
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

/// Pads both documents of each pair to the batch's longest document (capped at `max_len`).
#[derive(Debug, Clone)]
pub struct PairBatcher {
    /// Longest document a batch may hold.
    pub max_len: usize,
}

impl Batcher<PairItem, PairBatch> for PairBatcher {
    fn batch(&self, items: Vec<PairItem>, device: &Device) -> PairBatch {
        let sequences: Vec<&[u32]> = items
            .iter()
            .map(|item| item.first.as_slice())
            .chain(items.iter().map(|item| item.second.as_slice()))
            .collect();
        let (tokens, mask_pad) = PaddedTokens::new(&sequences, self.max_len).into_tensors(device);
        PairBatch {
            tokens,
            mask_pad,
            labels: labels_tensor(items.iter().map(|item| item.label), device),
        }
    }
}
