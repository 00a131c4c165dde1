//! Batching token sequences: pad to the longest sequence of the batch and build the masks.

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::SequenceItem;

/// Token id used for padding.
pub const PAD: u32 = 0;

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
    /// Host-side layout of a batch: (padded ids, padding flags, labels, n).
    pub fn layout(&self, items: &[SequenceItem]) -> (Vec<i64>, Vec<bool>, Vec<i64>, usize) {
        let n = items
            .iter()
            .map(|item| item.tokens.len().min(self.max_len))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut ids = Vec::with_capacity(items.len() * n);
        let mut pad = Vec::with_capacity(items.len() * n);
        for item in items {
            let len = item.tokens.len().min(n);
            ids.extend(item.tokens[..len].iter().map(|t| *t as i64));
            ids.extend(std::iter::repeat_n(PAD as i64, n - len));
            pad.extend((0..n).map(|i| i >= len));
        }
        let labels = items.iter().map(|item| item.label as i64).collect();
        (ids, pad, labels, n)
    }
}

impl Batcher<SequenceItem, ClassificationBatch> for ClassificationBatcher {
    fn batch(&self, items: Vec<SequenceItem>, device: &Device) -> ClassificationBatch {
        let batch = items.len();
        let (ids, pad, labels, n) = self.layout(&items);
        ClassificationBatch {
            tokens: Tensor::from_data(TensorData::new(ids, [batch, n]), device),
            mask_pad: Tensor::from_bool(TensorData::new(pad, [batch, n]), device),
            labels: Tensor::from_data(TensorData::new(labels, [batch]), device),
        }
    }
}
