//! Padding-mask helpers shared by the attention stages.
//!
//! Masks follow burn-nn's convention: `true` marks a padded (ignored) position.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, FloatDType, Tensor};

use super::shape_check::expect_shape;

/// The padding masks of one attention call, as [`NystromInput`](super::NystromInput) and
/// [`NystromHeadsInput`](super::NystromHeadsInput) carry them.
#[derive(Debug, Clone, Default)]
pub(crate) struct PaddingMasks {
    /// `[batch, n_k]`: the keys' and values' (and in self-attention the queries').
    pub mask_pad: Option<Tensor<2, Bool>>,
    /// `[batch, n_q]`: the queries' own, in cross-attention.
    pub mask_pad_query: Option<Tensor<2, Bool>>,
    /// Queries, keys and values come from one sequence.
    pub self_attention: bool,
}

impl PaddingMasks {
    /// The mask of the queries: the queries' own, or the keys' in self-attention.
    pub fn queries(&self) -> Option<&Tensor<2, Bool>> {
        match self.self_attention {
            true => self.mask_pad.as_ref(),
            false => self.mask_pad_query.as_ref(),
        }
    }

    /// Panics, naming `op` and the mask, unless the masks are `[batch, n_k]` and `[batch, n_q]`.
    pub fn check(&self, op: &str, batch: usize, n_q: usize, n_k: usize) {
        if let Some(mask) = &self.mask_pad {
            expect_shape(op, "mask_pad", &mask.dims(), &[batch, n_k]);
        }
        if let Some(mask) = &self.mask_pad_query {
            expect_shape(op, "mask_pad_query", &mask.dims(), &[batch, n_q]);
        }
    }
}

/// Default score given to masked entries before a softmax (see [`masked_softmax`]).
///
/// Finite on purpose: a row whose every entry is masked becomes uniform instead of NaN (the
/// xformers fault listed in NYSTROMFORMER.md). For any realistic score `s`, `exp(MASKED_SCORE - s)`
/// underflows to exactly 0 in f32, so masked entries get exactly zero weight.
pub const MASKED_SCORE: f64 = -1.0e9;

/// Softmax over the last axis in which masked entries get zero weight, computed in f32 whatever
/// the dtype of `scores` (the maximum and the sum of exponentials lose too much in f16 and
/// bf16), and returned in that dtype.
///
/// Masked entries are *selected* to `min_float` (clamped to the lowest finite f32), so a NaN or
/// infinity in a masked score never reaches the output.
///
/// # Shapes
///
/// - scores: `[batch, heads, rows, cols]`
/// - mask: `[batch, 1, 1, cols]` or any shape broadcastable to `scores`; `true` = masked
/// - output: `[batch, heads, rows, cols]`
pub fn masked_softmax(
    scores: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    min_float: f64,
) -> Tensor<4> {
    let dtype = FloatDType::from(scores.dtype());
    let scores = scores.cast(FloatDType::F32);
    let scores = match mask {
        Some(mask) => {
            let mask = mask.expand(scores.dims());
            scores.mask_fill(mask, finite_min(min_float, FloatDType::F32))
        }
        None => scores,
    };
    softmax(scores, 3).cast(dtype)
}

/// `min_float` clamped to the lowest finite value of `dtype` (so that `-1e9` stays finite in
/// f16, whose lowest value is −65 504).
pub fn finite_min(min_float: f64, dtype: FloatDType) -> f64 {
    min_float.max(dtype.finfo().min)
}

/// `1.0` at valid positions and `0.0` at padded ones, in `dtype`.
///
/// # Shapes
///
/// - mask_pad: `[batch, n]` (`true` = padding)
/// - output: `[batch, n]`
pub fn keep_weights(mask_pad: &Tensor<2, Bool>, dtype: FloatDType) -> Tensor<2> {
    mask_pad.clone().bool_not().float().cast(dtype)
}

/// Broadcasts a `[batch, n]` padding mask over heads and rows: `[batch, 1, 1, n]`.
pub fn mask_over_columns(mask_pad: Tensor<2, Bool>) -> Tensor<4, Bool> {
    let [batch, n] = mask_pad.dims();
    mask_pad.reshape([batch, 1, 1, n])
}

/// Broadcasts a `[batch, n]` padding mask over heads and features: `[batch, 1, n, 1]`.
pub fn mask_over_rows(mask_pad: Tensor<2, Bool>) -> Tensor<4, Bool> {
    let [batch, n] = mask_pad.dims();
    mask_pad.reshape([batch, 1, n, 1])
}

/// Sets the masked rows to zero (no mask: unchanged).
///
/// # Shapes
///
/// - x: `[batch, heads, rows, cols]`
/// - mask: `[batch, rows]` (`true` = zero this row)
/// - output: `[batch, heads, rows, cols]`
pub fn zero_rows(x: Tensor<4>, mask: Option<&Tensor<2, Bool>>) -> Tensor<4> {
    match mask {
        Some(mask) => {
            let dims = x.dims();
            x.mask_fill(mask_over_rows(mask.clone()).expand(dims), 0.0)
        }
        None => x,
    }
}

/// Sets the masked columns to zero (no mask: unchanged).
///
/// # Shapes
///
/// - x: `[batch, heads, rows, cols]`
/// - mask: `[batch, cols]` (`true` = zero this column)
/// - output: `[batch, heads, rows, cols]`
pub fn zero_columns(x: Tensor<4>, mask: Option<&Tensor<2, Bool>>) -> Tensor<4> {
    match mask {
        Some(mask) => {
            let dims = x.dims();
            x.mask_fill(mask_over_columns(mask.clone()).expand(dims), 0.0)
        }
        None => x,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn masked_entries_get_zero_weight_and_full_masks_stay_finite() {
        let device = Device::flex();
        let scores = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 1, 1, 3]),
            &device,
        );
        let mask = Tensor::<4, Bool>::from_bool(
            TensorData::new(vec![false, true, false, true, true, true], [2, 1, 1, 3]),
            &device,
        );
        let weights: Vec<f32> = masked_softmax(scores, Some(mask), MASKED_SCORE)
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap();
        assert_eq!(weights[1], 0.0, "masked entry");
        assert!((weights[0] + weights[2] - 1.0).abs() < 1e-6);
        assert!(
            weights[3..].iter().all(|w| (w - 1.0 / 3.0).abs() < 1e-6),
            "fully masked row is uniform: {weights:?}"
        );
    }

    #[test]
    fn min_float_is_the_masked_score_and_stays_finite_in_the_dtype() {
        let device = Device::flex();
        let scores = Tensor::<4>::zeros([1, 1, 1, 2], &device);
        let mask =
            Tensor::<4, Bool>::from_bool(TensorData::new(vec![false, true], [1, 1, 1, 2]), &device);
        // A mild masking score leaves the masked entry a visible weight: e⁻¹ / (1 + e⁻¹).
        let weights: Vec<f32> = masked_softmax(scores, Some(mask), -1.0)
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap();
        let expected = (-1.0f32).exp() / (1.0 + (-1.0f32).exp());
        assert!((weights[1] - expected).abs() < 1e-6, "{weights:?}");
        assert_eq!(finite_min(MASKED_SCORE, FloatDType::F16), -65504.0);
        assert_eq!(finite_min(MASKED_SCORE, FloatDType::F32), MASKED_SCORE);
        assert_eq!(
            finite_min(f64::NEG_INFINITY, FloatDType::F32),
            f32::MIN as f64
        );
    }
}
