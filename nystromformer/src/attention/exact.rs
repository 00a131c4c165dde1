//! Exact softmax attention: the `n ≤ m` path, the `Softmax` baseline and the reference in tests.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

use super::mask::{mask_over_columns, masked_softmax};

/// `softmax(Q Kᵀ / √d) V` through Burn's own `burn::tensor::module::attention` (a fused or flash
/// kernel where the backend has one). Padded keys get zero weight; a fully padded row yields
/// a finite output.
///
/// # Shapes
///
/// - q: `[batch, heads, n_q, d]`, k: `[batch, heads, n_k, d]`, v: `[batch, heads, n_k, d_v]`
/// - mask_pad: `[batch, n_k]` (`true` = padding)
/// - output: `[batch, heads, n_q, d_v]`
pub fn softmax_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask_pad: Option<&Tensor<2, Bool>>,
) -> Tensor<4> {
    let [batch, heads, n_q, _] = q.dims();
    let [_, _, n_k, _] = k.dims();
    let mask =
        mask_pad.map(|mask| mask_over_columns(mask.clone()).expand([batch, heads, n_q, n_k]));
    attention(q, k, v, mask, None, AttentionModuleOptions::default())
}

/// The same as [`softmax_attention`] written out with an explicit `[n_q, n_k]` weight matrix:
/// an independent reference for tests, and the weights for inspection.
///
/// # Shapes
///
/// - as [`softmax_attention`]; returns (output `[batch, heads, n_q, d_v]`,
///   weights `[batch, heads, n_q, n_k]`)
pub fn explicit_softmax_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask_pad: Option<&Tensor<2, Bool>>,
) -> (Tensor<4>, Tensor<4>) {
    let [_, _, _, d] = q.dims();
    let scores = q.matmul(k.transpose()).div_scalar((d as f64).sqrt());
    let weights = masked_softmax(scores, mask_pad.cloned().map(mask_over_columns));
    (weights.clone().matmul(v), weights)
}
