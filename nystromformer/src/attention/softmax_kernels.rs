//! The three softmax kernels `F`, `A` and `B` (step 3 of the algorithm).
//!
//! The landmark side of each product arrives already scaled by `1/√d`. A missing landmark (a
//! segment without valid tokens) is removed from the kernels: a missing landmark key's column of
//! `F` and `A` gets zero weight, and a missing landmark query's row of `A` and `B` is zero. In
//! self-attention the two coincide and `A` is block-diagonal with a zero block, whose
//! pseudo-inverse has the same zero block; in cross-attention `A⁺` has the zero rows and columns
//! of `Aᵀ`. Either way the result equals Nyström attention over the landmarks that exist.
//!
//! Softmaxes run in f32 and return the scores' dtype (see [`masked_softmax`]); `min_float` is
//! the score given to masked entries.

use burn::tensor::{Bool, Tensor};

use super::mask::{mask_over_columns, masked_softmax, zero_columns, zero_rows};

/// `F = softmax(Q K̃ᵀ)`: every token against the landmark keys.
///
/// # Shapes
///
/// - q: `[batch, heads, n, d]`, landmark_keys: `[batch, heads, m, d]`
/// - missing_keys: `[batch, m]` (`true` = not a landmark key)
/// - output: `[batch, heads, n, m]`
pub fn kernel_f(
    q: Tensor<4>,
    landmark_keys: Tensor<4>,
    missing_keys: Option<&Tensor<2, Bool>>,
    min_float: f64,
) -> Tensor<4> {
    let scores = q.matmul(landmark_keys.transpose());
    let f = masked_softmax(
        scores,
        missing_keys.cloned().map(mask_over_columns),
        min_float,
    );
    // A sequence without any landmark (fully padded) would otherwise spread uniform weight over
    // the missing ones.
    zero_columns(f, missing_keys)
}

/// `A = softmax(Q̃ K̃ᵀ)`: landmark queries against landmark keys; the rows of missing landmark
/// queries and the columns of missing landmark keys are zero.
///
/// # Shapes
///
/// - landmark_queries, landmark_keys: `[batch, heads, m, d]`
/// - missing_queries, missing_keys: `[batch, m]` (`true` = not a landmark)
/// - output: `[batch, heads, m, m]`
pub fn kernel_a(
    landmark_queries: Tensor<4>,
    landmark_keys: Tensor<4>,
    missing_queries: Option<&Tensor<2, Bool>>,
    missing_keys: Option<&Tensor<2, Bool>>,
    min_float: f64,
) -> Tensor<4> {
    let scores = landmark_queries.matmul(landmark_keys.transpose());
    let a = masked_softmax(
        scores,
        missing_keys.cloned().map(mask_over_columns),
        min_float,
    );
    // A row whose every landmark key is missing would otherwise be uniform over them.
    zero_columns(zero_rows(a, missing_queries), missing_keys)
}

/// `B = softmax(Q̃ Kᵀ)`: landmark queries against every key; padded keys get zero weight and
/// rows of missing landmark queries are zero.
///
/// # Shapes
///
/// - landmark_queries: `[batch, heads, m, d]`, k: `[batch, heads, n_k, d]`
/// - mask_pad: `[batch, n_k]` (`true` = padding)
/// - missing_queries: `[batch, m]` (`true` = not a landmark)
/// - output: `[batch, heads, m, n_k]`
pub fn kernel_b(
    landmark_queries: Tensor<4>,
    k: Tensor<4>,
    mask_pad: Option<&Tensor<2, Bool>>,
    missing_queries: Option<&Tensor<2, Bool>>,
    min_float: f64,
) -> Tensor<4> {
    let scores = landmark_queries.matmul(k.transpose());
    let b = masked_softmax(scores, mask_pad.cloned().map(mask_over_columns), min_float);
    zero_rows(b, missing_queries)
}
