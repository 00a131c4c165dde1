//! Exact softmax attention: the `n ≤ m` path, the `Softmax` baseline and the reference in tests.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, FloatDType, Tensor};

use super::config::MaskPolicy;
use super::mask::{MASKED_SCORE, PaddingMasks, mask_over_columns, masked_softmax, zero_rows};
use crate::kernels;

/// [`softmax_attention`] for one call of the module or the functional core: under
/// [`MaskPolicy::LeakFree`] padded queries attend as zero vectors, so that their rows do not
/// depend on what the padding holds (NaN included); HF transformers attends with them as they
/// are. Padded keys and values are [`softmax_attention`]'s to handle. With `custom_kernels` it
/// runs as the fused flex stage where that applies ([`kernels::fused_softmax_attention`]).
pub(crate) fn exact_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    padding: &PaddingMasks,
    policy: MaskPolicy,
    custom_kernels: bool,
) -> Tensor<4> {
    let q = match policy {
        MaskPolicy::LeakFree => zero_rows(q, padding.queries()),
        MaskPolicy::HfCompatible => q,
    };
    let mask_pad = padding.mask_pad.as_ref();
    let fused = custom_kernels
        .then(|| kernels::fused_softmax_attention(&q, &k, &v, mask_pad))
        .flatten();
    fused.unwrap_or_else(|| softmax_attention(q, k, v, mask_pad))
}

/// `softmax(Q Kᵀ / √d) V` through Burn's own `burn::tensor::module::attention` (a fused or flash
/// kernel where the backend has one). Padded keys get zero weight and their rows are replaced
/// by zeros first, so NaN or infinity there cannot leak; a fully padded row yields a finite
/// output. Half-precision inputs are attended in f32 (the softmax statistics need it) and the
/// output is returned in their dtype.
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
    let dtype = FloatDType::from(q.dtype());
    let f32 = |x: Tensor<4>| x.cast(FloatDType::F32);
    let (q, k, v) = (
        f32(q),
        f32(zero_rows(k, mask_pad)),
        f32(zero_rows(v, mask_pad)),
    );
    let mask =
        mask_pad.map(|mask| mask_over_columns(mask.clone()).expand([batch, heads, n_q, n_k]));
    attention(q, k, v, mask, None, AttentionModuleOptions::default()).cast(dtype)
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
    let weights = masked_softmax(
        scores,
        mask_pad.cloned().map(mask_over_columns),
        MASKED_SCORE,
    );
    (weights.clone().matmul(v), weights)
}
