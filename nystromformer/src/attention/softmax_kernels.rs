//! The three softmax kernels `F`, `A` and `B` (step 3 of the algorithm).
//!
//! Queries and keys arrive already scaled by `d^{-1/4}`, so each product carries `1/√d`.
//! A missing landmark (a segment without valid tokens) is removed from all three kernels: its
//! column of `F` and `A` gets zero weight and its row of `A` and `B` is zero. `A` is then
//! block-diagonal with a zero block, whose pseudo-inverse has the same zero block, so the
//! result equals Nyström attention over the landmarks that exist.

use burn::tensor::{Bool, Tensor};

use super::mask::{mask_over_columns, masked_softmax, zero_columns, zero_rows};

/// `F = softmax(Q K̃ᵀ)`: every token against the landmark keys.
///
/// # Shapes
///
/// - q: `[batch, heads, n, d]`, landmark_keys: `[batch, heads, m, d]`
/// - missing: `[batch, m]` (`true` = not a landmark)
/// - output: `[batch, heads, n, m]`
pub fn kernel_f(
    q: Tensor<4>,
    landmark_keys: Tensor<4>,
    missing: Option<&Tensor<2, Bool>>,
) -> Tensor<4> {
    let scores = q.matmul(landmark_keys.transpose());
    let f = masked_softmax(scores, missing.cloned().map(mask_over_columns));
    // A sequence without any landmark (fully padded) would otherwise spread uniform weight over
    // the missing ones.
    zero_columns(f, missing)
}

/// `A = softmax(Q̃ K̃ᵀ)`: landmark queries against landmark keys; rows and columns of missing
/// landmarks are zero.
///
/// # Shapes
///
/// - landmark_queries, landmark_keys: `[batch, heads, m, d]`
/// - missing: `[batch, m]` (`true` = not a landmark)
/// - output: `[batch, heads, m, m]`
pub fn kernel_a(
    landmark_queries: Tensor<4>,
    landmark_keys: Tensor<4>,
    missing: Option<&Tensor<2, Bool>>,
) -> Tensor<4> {
    let scores = landmark_queries.matmul(landmark_keys.transpose());
    let a = masked_softmax(scores, missing.cloned().map(mask_over_columns));
    zero_rows(a, missing)
}

/// `B = softmax(Q̃ Kᵀ)`: landmark queries against every key; padded keys get zero weight and
/// rows of missing landmarks are zero.
///
/// # Shapes
///
/// - landmark_queries: `[batch, heads, m, d]`, k: `[batch, heads, n, d]`
/// - mask_pad: `[batch, n]` (`true` = padding)
/// - missing: `[batch, m]` (`true` = not a landmark)
/// - output: `[batch, heads, m, n]`
pub fn kernel_b(
    landmark_queries: Tensor<4>,
    k: Tensor<4>,
    mask_pad: Option<&Tensor<2, Bool>>,
    missing: Option<&Tensor<2, Bool>>,
) -> Tensor<4> {
    let scores = landmark_queries.matmul(k.transpose());
    let b = masked_softmax(scores, mask_pad.cloned().map(mask_over_columns));
    zero_rows(b, missing)
}
