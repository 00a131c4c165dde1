//! Masked-LM batches (BERT's recipe, dynamic as in RoBERTa): each batch picks fresh positions.
//!
//! Of the non-padding positions, each is chosen with probability `mask_probability` (at least
//! one per sequence); a chosen token becomes [`MASK`] 80 % of the time, a random byte 10 %, and
//! stays 10 %. The model predicts the original token at the chosen positions only.

use std::sync::{Arc, Mutex};

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::batcher::{PaddedTokens, Padding};
use super::corpus::{MASK, TextChunk};
use super::rng::SplitMix64;

/// A masked-LM batch.
#[derive(Debug, Clone)]
pub struct MaskedLmBatch {
    /// `[batch, n]` token ids after masking.
    pub tokens: Tensor<2, Int>,
    /// `[batch, n]`, `true` at padded positions.
    pub mask_pad: Tensor<2, Bool>,
    /// `[k]` chosen positions as flat indices `row · n + column`.
    pub positions: Tensor<1, Int>,
    /// `[k]` original tokens at the chosen positions.
    pub targets: Tensor<1, Int>,
}

/// Chosen positions and their original tokens, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Masked {
    /// Token ids after masking (`rows × len`).
    pub tokens: PaddedTokens,
    /// Flat indices of the chosen positions.
    pub positions: Vec<i64>,
    /// Original tokens there.
    pub targets: Vec<i64>,
}

/// Pads and masks text windows. Clones share one random stream.
#[derive(Debug, Clone)]
pub struct MaskedLmBatcher {
    /// The batch length's rule.
    pub padding: Padding,
    /// Share of positions to predict.
    pub mask_probability: f64,
    rng: Arc<Mutex<SplitMix64>>,
}

impl MaskedLmBatcher {
    /// A batcher whose choices follow `seed`.
    pub fn new(padding: Padding, mask_probability: f64, seed: u64) -> Self {
        Self {
            padding,
            mask_probability,
            rng: Arc::new(Mutex::new(SplitMix64::new(seed))),
        }
    }

    /// Pads `items` and masks them.
    pub fn mask(&self, items: &[TextChunk]) -> Masked {
        let sequences: Vec<&[u32]> = items.iter().map(|item| item.tokens.as_slice()).collect();
        let mut tokens = PaddedTokens::new(&sequences, self.padding);
        let mut rng = self
            .rng
            .lock()
            .expect("the masking stream is never poisoned");
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for row in 0..tokens.rows {
            let start = row * tokens.len;
            let valid = tokens.pad[start..start + tokens.len]
                .iter()
                .take_while(|pad| !**pad)
                .count();
            let mut chosen: Vec<usize> = (0..valid)
                .filter(|_| rng.unit() < self.mask_probability)
                .collect();
            if chosen.is_empty() && valid > 0 {
                chosen.push(rng.range(0, valid - 1));
            }
            for column in chosen {
                let index = start + column;
                positions.push(index as i64);
                targets.push(tokens.ids[index]);
                let roll = rng.unit();
                if roll < 0.8 {
                    tokens.ids[index] = MASK as i64;
                } else if roll < 0.9 {
                    tokens.ids[index] = rng.range(1, 256) as i64;
                }
            }
        }
        Masked {
            tokens,
            positions,
            targets,
        }
    }
}

impl Batcher<TextChunk, MaskedLmBatch> for MaskedLmBatcher {
    fn batch(&self, items: Vec<TextChunk>, device: &Device) -> MaskedLmBatch {
        let masked = self.mask(&items);
        let count = masked.positions.len();
        let (tokens, mask_pad) = masked.tokens.into_tensors(device);
        MaskedLmBatch {
            tokens,
            mask_pad,
            positions: Tensor::from_data(TensorData::new(masked.positions, [count]), device),
            targets: Tensor::from_data(TensorData::new(masked.targets, [count]), device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows() -> Vec<TextChunk> {
        vec![
            TextChunk {
                tokens: (1..=200).collect(),
            },
            TextChunk {
                tokens: vec![5, 6, 7],
            },
        ]
    }

    #[test]
    fn targets_are_the_original_tokens_and_padding_is_never_chosen() {
        let batcher = MaskedLmBatcher::new(Padding::to_longest(200), 0.15, 3);
        let masked = batcher.mask(&windows());
        assert_eq!(masked.positions.len(), masked.targets.len());
        let len = masked.tokens.len as i64;
        for (&position, &target) in masked.positions.iter().zip(&masked.targets) {
            let (row, column) = (position / len, position % len);
            let original = windows()[row as usize].tokens[column as usize] as i64;
            assert_eq!(target, original);
            assert!(!masked.tokens.pad[position as usize]);
        }
        assert!(
            masked.positions.iter().any(|&p| p >= len),
            "the short sequence gets at least one position"
        );
    }

    #[test]
    fn masks_about_the_requested_share_mostly_with_mask() {
        let batcher = MaskedLmBatcher::new(Padding::to_longest(200), 0.15, 11);
        let (mut chosen, mut masked_out, mut total) = (0, 0, 0);
        for _ in 0..50 {
            let masked = batcher.mask(&windows()[..1]);
            chosen += masked.positions.len();
            total += 200;
            masked_out += masked
                .positions
                .iter()
                .filter(|&&p| masked.tokens.ids[p as usize] == MASK as i64)
                .count();
        }
        let share = chosen as f64 / total as f64;
        assert!((0.12..0.18).contains(&share), "chose {share}");
        let mask_share = masked_out as f64 / chosen as f64;
        assert!(
            (0.74..0.86).contains(&mask_share),
            "[MASK] share {mask_share}"
        );
    }

    #[test]
    fn same_seed_same_choices() {
        let a = MaskedLmBatcher::new(Padding::to_longest(200), 0.15, 5).mask(&windows());
        let b = MaskedLmBatcher::new(Padding::to_longest(200), 0.15, 5).mask(&windows());
        assert_eq!(a, b);
    }
}
