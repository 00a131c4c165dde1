//! The tensor-op body of each [`LandmarkSoftmaxOps`](super::extension::LandmarkSoftmaxOps)
//! operation and of [`PinvOps`](super::extension::PinvOps), on backend primitives: the same
//! maths as [`kernel_b`](crate::attention::softmax_kernels::kernel_b) and
//! [`kernel_f`](crate::attention::softmax_kernels::kernel_f) followed by their product, and as
//! [`iterative_pinv`](crate::attention::iterative_pinv). A backend without its own
//! implementation runs these; under autodiff they differentiate through the backend's own ops.

use burn::backend::tensor::{BoolTensor, FloatTensor, IntTensor};
use burn::backend::{Backend, TensorMetadata, get_or_init_device_settings};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType, Shape};

use super::extension::PinvOps;
use super::flags::Flags;
use super::segment_rows::SegmentRows;
use crate::attention::pinv::MIN_COEFFICIENT;

/// See [`super::fused_landmark_values`]; masks as `1.0` at `true`, padded keys and values
/// zeroed first with `zero_padded`.
pub fn landmark_values<B: Backend>(
    landmark_queries: FloatTensor<B>,
    keys: FloatTensor<B>,
    values: FloatTensor<B>,
    padding: Flags<B>,
    missing: Flags<B>,
    masked_score: f32,
    zero_padded: bool,
) -> FloatTensor<B> {
    let [keys, values] = padded_as_zeros::<B, _>([keys, values], &padding, zero_padded);
    let scores = value_scores::<B>(landmark_queries, keys, padding, masked_score);
    values_from_scores::<B>(scores, values, missing)
}

/// See [`super::fused_landmark_attention`]; masks as `1.0` at `true`, the query rows that
/// `query_padding` flags zeroed first.
pub fn landmark_attention<B: Backend>(
    queries: FloatTensor<B>,
    landmark_keys: FloatTensor<B>,
    weights: FloatTensor<B>,
    missing: Flags<B>,
    query_padding: Flags<B>,
) -> FloatTensor<B> {
    let queries = fill_rows::<B>(queries, &query_padding, 0.0);
    let scores = landmark_scores::<B>(queries, landmark_keys, &missing);
    attention_from_scores::<B>(scores, weights, &missing)
}

/// `tensors` (`[batch, heads, n, _]`) with the rows that `padding` flags zeroed when `zero`, as
/// they are otherwise.
pub(super) fn padded_as_zeros<B: Backend, const N: usize>(
    tensors: [FloatTensor<B>; N],
    padding: &Flags<B>,
    zero: bool,
) -> [FloatTensor<B>; N] {
    match zero {
        true => tensors.map(|x| fill_rows::<B>(x, padding, 0.0)),
        false => tensors,
    }
}

/// [`landmark_values`] and each row's softmax statistics over the masked scores (`[batch, heads,
/// m, 2]`, f32: see [`softmax_statistics`]), what the backward recomputes the softmax from.
#[cfg_attr(
    not(all(feature = "autodiff", feature = "cube-kernels")),
    allow(dead_code)
)]
pub fn landmark_values_with_statistics<B: Backend>(
    landmark_queries: FloatTensor<B>,
    keys: FloatTensor<B>,
    values: FloatTensor<B>,
    padding: Flags<B>,
    missing: Flags<B>,
    masked_score: f32,
    zero_padded: bool,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [keys, values] = padded_as_zeros::<B, _>([keys, values], &padding, zero_padded);
    let scores = value_scores::<B>(landmark_queries, keys, padding, masked_score);
    let softmax_statistics = softmax_statistics::<B>(scores.clone());
    let output = values_from_scores::<B>(scores, values, missing);
    (output, cast_to::<B>(softmax_statistics, DType::F32))
}

/// [`landmark_attention`] and each row's softmax statistics over its landmarks (`[batch, heads,
/// n, 2]`, f32: see [`softmax_statistics`]; any finite values for a row without landmarks, whose
/// weights the backward zeroes).
#[cfg_attr(
    not(all(feature = "autodiff", feature = "cube-kernels")),
    allow(dead_code)
)]
pub fn landmark_attention_with_statistics<B: Backend>(
    queries: FloatTensor<B>,
    landmark_keys: FloatTensor<B>,
    weights: FloatTensor<B>,
    missing: Flags<B>,
    query_padding: Flags<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let queries = fill_rows::<B>(queries, &query_padding, 0.0);
    let scores = landmark_scores::<B>(queries, landmark_keys, &missing);
    let softmax_statistics = softmax_statistics::<B>(scores.clone());
    let output = attention_from_scores::<B>(scores, weights, &missing);
    (output, cast_to::<B>(softmax_statistics, DType::F32))
}

/// `Q̃ Kᵀ` with padded keys at `masked_score`, `[batch, heads, m, n]`.
fn value_scores<B: Backend>(
    landmark_queries: FloatTensor<B>,
    keys: FloatTensor<B>,
    padding: Flags<B>,
    masked_score: f32,
) -> FloatTensor<B> {
    let scores = B::float_matmul(landmark_queries, B::float_transpose(keys));
    fill_keys::<B>(scores, &padding, masked_score)
}

/// `softmax(scores) · V`, with the rows of missing landmarks zero.
fn values_from_scores<B: Backend>(
    scores: FloatTensor<B>,
    values: FloatTensor<B>,
    missing: Flags<B>,
) -> FloatTensor<B> {
    let context = B::float_matmul(B::softmax(scores, 3), values);
    fill_rows::<B>(context, &missing, 0.0)
}

/// `Q K̃ᵀ` with missing landmarks at `f32::MIN`, `[batch, heads, n, m]`.
fn landmark_scores<B: Backend>(
    queries: FloatTensor<B>,
    landmark_keys: FloatTensor<B>,
    missing: &Flags<B>,
) -> FloatTensor<B> {
    let scores = B::float_matmul(queries, B::float_transpose(landmark_keys));
    fill_keys::<B>(scores, missing, f32::MIN)
}

/// `softmax(scores) · W`, with zero weight on missing landmarks.
fn attention_from_scores<B: Backend>(
    scores: FloatTensor<B>,
    weights: FloatTensor<B>,
    missing: &Flags<B>,
) -> FloatTensor<B> {
    B::float_matmul(landmark_softmax::<B>(scores, missing), weights)
}

/// The softmax of scores over the landmark keys ([`landmark_scores`]), with zero weight on the
/// missing ones.
fn landmark_softmax<B: Backend>(scores: FloatTensor<B>, missing: &Flags<B>) -> FloatTensor<B> {
    // A row without any landmark would otherwise spread uniform weight over the missing ones.
    fill_keys::<B>(B::softmax(scores, 3), missing, 0.0)
}

/// LayerNorm over the last dimension of `x` (`gamma`, `beta`: `[d]`) in f32 whatever the input
/// type, as burn-nn's `LayerNorm` (biased variance), and each row's `(mean, 1/√(var + ε))` as
/// `[rows, 2]` f32.
pub fn layer_norm_with_statistics<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (shape, dtype) = (x.shape(), x.dtype());
    let (x, [rows, d]) = as_rows::<B>(x);
    let row_shape = Shape::new([rows, d]);
    let per_row = |t: FloatTensor<B>| B::float_expand(t, row_shape.clone());
    let mean = B::float_mean_dim(x.clone(), 1);
    let centred = B::float_sub(x, per_row(mean.clone()));
    let variance = B::float_mean_dim(B::float_mul(centred.clone(), centred.clone()), 1);
    let inv_std = B::float_recip(B::float_sqrt(B::float_add_scalar(variance, epsilon.into())));
    let normed = B::float_mul(centred, per_row(inv_std.clone()));
    let column = |t: FloatTensor<B>| {
        let t = B::float_reshape(cast_to::<B>(t, DType::F32), Shape::new([1, d]));
        B::float_expand(t, row_shape.clone())
    };
    let output = B::float_add(B::float_mul(normed, column(gamma)), column(beta));
    let output = cast_to::<B>(B::float_reshape(output, shape), dtype);
    (output, B::float_cat(vec![mean, inv_std], 1))
}

/// The depthwise convolution along the sequence as Burn's grouped `Conv2d` of the values with
/// their padded rows zeroed (see [`DepthwiseConvOps`](super::extension::DepthwiseConvOps)).
pub fn depthwise_conv<B: Backend>(
    values: FloatTensor<B>,
    taps: FloatTensor<B>,
    padding: Flags<B>,
) -> FloatTensor<B> {
    let options = depthwise_options::<B>(&taps);
    B::conv2d(fill_rows::<B>(values, &padding, 0.0), taps, None, options)
}

/// The options of the depthwise convolution with `taps` (`[heads, 1, k, 1]`): one group per head,
/// `k / 2` rows of zero padding at each end.
pub(super) fn depthwise_options<B: Backend>(taps: &FloatTensor<B>) -> ConvOptions<2> {
    let [heads, _, k, _] = dims(taps);
    ConvOptions::new([1, 1], [k / 2, 0], [1, 1], heads)
}

/// `x` (`[.., d]`) as `[rows, d]` in f32, and those two sizes.
pub(super) fn as_rows<B: Backend>(x: FloatTensor<B>) -> (FloatTensor<B>, [usize; 2]) {
    let [rows, d] = rows_and_width(&x.shape());
    let x = B::float_reshape(cast_to::<B>(x, DType::F32), Shape::new([rows, d]));
    (x, [rows, d])
}

/// The rows of a `[.., d]` shape and their width `d`, as a LayerNorm sees them (no rows when
/// `d` is 0).
pub(super) fn rows_and_width(shape: &Shape) -> [usize; 2] {
    let d = shape[shape.num_dims() - 1];
    [shape.num_elements().checked_div(d).unwrap_or(0), d]
}

/// `x` in `dtype`, and `x` itself when it is already of that type (autodiff would record even a
/// cast to the same type as an operation).
pub(super) fn cast_to<B: Backend>(x: FloatTensor<B>, dtype: DType) -> FloatTensor<B> {
    match x.dtype() == dtype {
        true => x,
        false => B::float_cast(x, FloatDType::from(dtype)),
    }
}

/// Each row's softmax statistics, `[.., rows, 2]`: its largest score `max` and
/// `ln Σ exp(s − max)` (see
/// [`super::extension::LandmarkSoftmaxOps::landmark_values_with_statistics`] for why two numbers
/// and not their sum).
#[cfg_attr(
    not(all(feature = "autodiff", feature = "cube-kernels")),
    allow(dead_code)
)]
fn softmax_statistics<B: Backend>(scores: FloatTensor<B>) -> FloatTensor<B> {
    let maximum = B::float_max_dim(scores.clone(), 3);
    let shape = Shape::new(dims(&scores));
    let shifted = B::float_sub(scores, B::float_expand(maximum.clone(), shape));
    let sum = B::float_sum_dim(B::float_exp(shifted), 3);
    B::float_cat(vec![maximum, B::float_log(sum)], 3)
}

/// See [`super::fused_pinv`]: `Z₀ = Aᵀ / c`, then per iteration `P = A Z`, `T = 7P − P P`,
/// `U = 15P − P T`, `Z ← ¼ (13Z − Z U)` (the form of
/// [`iterative_pinv`](crate::attention::iterative_pinv) without its identity matrices).
pub fn pinv<B: Backend>(
    a: FloatTensor<B>,
    coefficient: FloatTensor<B>,
    iterations: usize,
) -> FloatTensor<B> {
    let [batch, heads, m, _] = dims(&a);
    let c = B::float_reshape(coefficient, Shape::new([batch, heads, 1, 1]));
    let c = B::float_expand(c, Shape::new([batch, heads, m, m]));
    let mut z = B::float_div(B::float_transpose(a.clone()), c);
    let scaled = |x: FloatTensor<B>, factor: f32| B::float_mul_scalar(x, factor.into());
    for _ in 0..iterations {
        let p = B::float_matmul(a.clone(), z.clone());
        let t = B::float_sub(
            scaled(p.clone(), 7.0),
            B::float_matmul(p.clone(), p.clone()),
        );
        let u = B::float_sub(scaled(p.clone(), 15.0), B::float_matmul(p, t));
        z = scaled(
            B::float_sub(scaled(z.clone(), 13.0), B::float_matmul(z, u)),
            0.25,
        );
    }
    z
}

/// See [`super::fused_landmark_weights`]: `A = softmax(Q̃ K̃ᵀ)` as
/// [`kernel_a`](crate::attention::softmax_kernels::kernel_a) builds it, `c = ‖A‖₁` per matrix
/// ([`PinvInit::Exact`](crate::PinvInit::Exact)), and `W = B::pinv(A, c) · (B V)`; missing
/// landmarks as `1.0`.
pub fn landmark_weights<B: PinvOps>(
    landmark_queries: FloatTensor<B>,
    landmark_keys: FloatTensor<B>,
    landmark_values: FloatTensor<B>,
    missing_queries: Flags<B>,
    missing_keys: Flags<B>,
    iterations: usize,
) -> FloatTensor<B> {
    let a = landmark_matrix::<B>(
        landmark_queries,
        landmark_keys,
        &missing_queries,
        &missing_keys,
    );
    let coefficient = norm_coefficient::<B>(&a);
    B::float_matmul(B::pinv(a, coefficient, iterations), landmark_values)
}

/// `weights` (`[batch, heads, m, d_v]`) with the rows of each sequence of at most `m` valid
/// keys replaced by the segment means of its `values` (`[batch, heads, n, d_v]`), as
/// [`PinvOps::landmark_weights`] takes them; `weights` itself for equal rows, which mark no
/// sequence short.
pub fn short_sequences_take_means<B: Backend>(
    weights: FloatTensor<B>,
    values: FloatTensor<B>,
    key_rows: SegmentRows<B>,
) -> FloatTensor<B> {
    let SegmentRows::Ranked { rank, lengths, .. } = key_rows else {
        return weights;
    };
    let m = dims(&weights)[2];
    let short = short_sequences::<B>(&lengths, &weights);
    let means = ranked_segment_mean::<B>(values, rank, lengths, m);
    B::float_mask_where(weights, short, means)
}

/// `grad` (of `W`, `[batch, heads, m, d_v]`) split as [`PinvOps::landmark_weights_backward`]
/// returns it: `(the part that reaches A⁺ (B V), the part that reaches the short sequences'
/// value means)`, each zero where the other is not.
pub fn split_short_gradient<B: Backend>(
    grad: FloatTensor<B>,
    key_rows: &SegmentRows<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let SegmentRows::Ranked { lengths, .. } = key_rows else {
        let zeros = B::float_zeros(grad.shape(), &grad.device(), grad.dtype().into());
        return (grad, zeros);
    };
    let short = short_sequences::<B>(lengths, &grad);
    let long = B::bool_not(short.clone());
    (
        B::float_mask_fill(grad.clone(), short, 0.0f32.into()),
        B::float_mask_fill(grad, long, 0.0f32.into()),
    )
}

/// `true` over the rows of `like` (`[batch, heads, m, _]`) of each sequence whose length
/// (`lengths`, `[batch or 1]`) is at most `m`.
fn short_sequences<B: Backend>(lengths: &IntTensor<B>, like: &FloatTensor<B>) -> BoolTensor<B> {
    let shape = dims(like);
    let bool_dtype = get_or_init_device_settings::<B>(&like.device()).bool_dtype;
    let short = B::int_lower_equal_elem(lengths.clone(), (shape[2] as i64).into(), bool_dtype);
    let short = B::bool_reshape(short, Shape::new([lengths.shape()[0], 1, 1, 1]));
    B::bool_expand(short, Shape::new(shape))
}

/// `A = softmax(Q̃ K̃ᵀ)` as [`kernel_a`](crate::attention::softmax_kernels::kernel_a) builds it:
/// missing landmark keys at zero weight, rows of missing landmark queries zero.
pub(super) fn landmark_matrix<B: Backend>(
    landmark_queries: FloatTensor<B>,
    landmark_keys: FloatTensor<B>,
    missing_queries: &Flags<B>,
    missing_keys: &Flags<B>,
) -> FloatTensor<B> {
    let scores = landmark_scores::<B>(landmark_queries, landmark_keys, missing_keys);
    fill_rows::<B>(
        landmark_softmax::<B>(scores, missing_keys),
        missing_queries,
        0.0,
    )
}

/// `c = ‖A‖₁` of each matrix, at least [`MIN_COEFFICIENT`], as `[batch · heads]`.
pub(super) fn norm_coefficient<B: Backend>(a: &FloatTensor<B>) -> FloatTensor<B> {
    let [batch, heads, _, _] = dims(a);
    let coefficient = B::float_clamp_min(
        B::float_max_dim(B::float_sum_dim(a.clone(), 2), 3),
        MIN_COEFFICIENT.into(),
    );
    B::float_reshape(coefficient, Shape::new([batch * heads]))
}

/// See [`super::fused_segment_mean`]: the `[batch, heads, m, n/m, d]` view's mean over its
/// fourth dimension.
pub fn segment_mean<B: Backend>(x: FloatTensor<B>, m: usize) -> FloatTensor<B> {
    let [batch, heads, n, d] = dims(&x);
    let segments = B::float_reshape(x, Shape::new([batch, heads, m, n / m, d]));
    B::float_reshape(
        B::float_mean_dim(segments, 3),
        Shape::new([batch, heads, m, d]),
    )
}

/// See [`super::extension::SegmentMeanOps::segment_mean_backward`]: `grad`'s `[batch, heads, m,
/// 1, d]` view expanded over each segment's `n / m` rows, times `factor / (n / m)`.
#[cfg_attr(
    not(all(feature = "autodiff", feature = "cube-kernels")),
    allow(dead_code)
)]
pub fn segment_spread<B: Backend>(grad: FloatTensor<B>, n: usize, factor: f32) -> FloatTensor<B> {
    let [batch, heads, m, d] = dims(&grad);
    let len = n / m;
    let rows = B::float_reshape(grad, Shape::new([batch, heads, m, 1, d]));
    let spread = B::float_expand(rows, Shape::new([batch, heads, m, len, d]));
    let spread = B::float_reshape(spread, Shape::new([batch, heads, n, d]));
    // Scaled after the spread, where fusion folds the product into the elementwise op that
    // reads the spread next (scaled before it, the product took a launch of its own: 26
    // launches per forward + backward at the bench shape instead of 24).
    B::float_mul_scalar(spread, (factor / len as f32).into())
}

/// See [`super::fused_segment_mean`] with ranked segments ([`SegmentRows::Ranked`](super::segment_rows::SegmentRows::Ranked)): the
/// `[batch, 1, m, n]` averaging weights of [`ranked_weights`] times `x`.
pub fn ranked_segment_mean<B: Backend>(
    x: FloatTensor<B>,
    rank: IntTensor<B>,
    lengths: IntTensor<B>,
    m: usize,
) -> FloatTensor<B> {
    let [batch, heads, n, _] = dims(&x);
    let weights = ranked_weights::<B>(rank, lengths, m, x.dtype().into());
    let weights = B::float_expand(weights, Shape::new([batch, heads, m, n]));
    B::float_matmul(weights, x)
}

/// See [`super::extension::SegmentMeanOps::ranked_segment_mean_backward`]: `factor` times the
/// transposed averaging weights of [`ranked_weights`] times `grad`.
#[cfg_attr(
    not(all(feature = "autodiff", feature = "cube-kernels")),
    allow(dead_code)
)]
pub fn ranked_segment_spread<B: Backend>(
    grad: FloatTensor<B>,
    rank: IntTensor<B>,
    lengths: IntTensor<B>,
    factor: f32,
) -> FloatTensor<B> {
    let [batch, heads, m, _] = dims(&grad);
    let n = rank.shape()[1];
    let weights = ranked_weights::<B>(rank, lengths, m, grad.dtype().into());
    let weights = B::float_expand(weights, Shape::new([batch, heads, m, n]));
    let spread = B::float_matmul(B::float_swap_dims(weights, 2, 3), grad);
    B::float_mul_scalar(spread, factor.into())
}

/// `[batch or 1, 1, m, n]`, `1/count` where position `j` lies in segment `i`: the valid position
/// of rank `r < L` in segment `⌊r·m/L⌋`, padding (rank `n`) in none. (`r·m` is formed, which
/// needs `n·m < 2³¹`; [`crate::attention::landmarks::segment_index`] avoids it.)
fn ranked_weights<B: Backend>(
    rank: IntTensor<B>,
    lengths: IntTensor<B>,
    m: usize,
    dtype: FloatDType,
) -> FloatTensor<B> {
    let (rows, n) = (rank.shape()[0], rank.shape()[1]);
    let device = rank.device();
    let settings = get_or_init_device_settings::<B>(&device);
    let int_dtype = rank.dtype().into();
    let length = B::int_expand(
        B::int_reshape(lengths, Shape::new([rows, 1])),
        Shape::new([rows, n]),
    );
    let valid = B::int_lower(rank.clone(), length.clone(), settings.bool_dtype);
    let segment = B::int_div(
        B::int_mul_scalar(rank, (m as i64).into()),
        B::int_clamp_min(length, 1i64.into()),
    );
    let by_segment = Shape::new([rows, m, n]);
    let segment = B::int_expand(
        B::int_reshape(segment, Shape::new([rows, 1, n])),
        by_segment.clone(),
    );
    let ids = B::int_arange(0..m as i64, &device, int_dtype);
    let ids = B::int_expand(
        B::int_reshape(ids, Shape::new([1, m, 1])),
        by_segment.clone(),
    );
    let valid = B::bool_expand(B::bool_reshape(valid, Shape::new([rows, 1, n])), by_segment);
    let membership = B::bool_and(B::int_equal(segment, ids, settings.bool_dtype), valid);
    let membership = B::bool_into_float(membership, dtype);
    let counts = B::float_clamp_min(B::float_sum_dim(membership.clone(), 2), 1.0f32.into());
    B::float_reshape(
        B::float_div(membership, counts),
        Shape::new([rows, 1, m, n]),
    )
}

pub(super) fn dims(tensor: &impl TensorMetadata) -> [usize; 4] {
    let shape = tensor.shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

/// `x` (`[batch, heads, rows, columns]`) with `value` in the columns that `flags` (`[batch,
/// columns]`) marks; `x` itself when the flags are absent.
pub(super) fn fill_keys<B: Backend>(
    x: FloatTensor<B>,
    flags: &Flags<B>,
    value: f32,
) -> FloatTensor<B> {
    let [batch, _, _, columns] = dims(&x);
    fill_where::<B>(x, flags, [batch, 1, 1, columns], value)
}

/// `x` (`[batch, heads, rows, columns]`) with `value` in the rows that `flags` (`[batch, rows]`)
/// marks; `x` itself when the flags are absent.
pub(super) fn fill_rows<B: Backend>(
    x: FloatTensor<B>,
    flags: &Flags<B>,
    value: f32,
) -> FloatTensor<B> {
    let [batch, _, rows, _] = dims(&x);
    fill_where::<B>(x, flags, [batch, 1, rows, 1], value)
}

/// `x` with `value` where `flags` (`1.0` at `true`), reshaped to `shape` and broadcast to `x`'s
/// shape, are set.
fn fill_where<B: Backend>(
    x: FloatTensor<B>,
    flags: &Flags<B>,
    shape: [usize; 4],
    value: f32,
) -> FloatTensor<B> {
    let Flags::Present(flags) = flags else {
        return x;
    };
    let bool_dtype = get_or_init_device_settings::<B>(&flags.device()).bool_dtype;
    let mask = B::float_greater_elem(
        B::float_reshape(flags.clone(), Shape::new(shape)),
        0.5f32.into(),
        bool_dtype,
    );
    let mask = B::bool_expand(mask, Shape::new(dims(&x)));
    B::float_mask_fill(x, mask, value.into())
}

#[cfg(test)]
mod tests {
    use burn::backend::Dispatch;
    use burn::tensor::{Device, Distribution, Tensor, TensorData};

    use super::*;

    fn host(t: Tensor<4>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec().unwrap()
    }

    /// Row `r`'s softmax statistics of `scores` (`[rows, len]`, host), computed directly: its
    /// largest score and `ln Σ exp(s − max)`.
    fn statistics_of(scores: &[f32], len: usize, r: usize) -> [f32; 2] {
        let row = &scores[r * len..(r + 1) * len];
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        [max, row.iter().map(|s| (s - max).exp()).sum::<f32>().ln()]
    }

    /// Asserts that `got` (`[rows, 2]`, host) holds [`statistics_of`] each row of `scores`.
    fn assert_statistics(got: &[f32], scores: &[f32], len: usize) {
        assert_eq!(got.len(), 2 * scores.len() / len);
        for (r, got) in got.chunks(2).enumerate() {
            let expected = statistics_of(scores, len, r);
            for (got, expected) in got.iter().zip(expected) {
                assert!(
                    (got - expected).abs() < 1e-5,
                    "row {r}: {got} against {expected}"
                );
            }
        }
    }

    /// With NaN in the padding, the bodies that take it as zeros give what the zeroed inputs give
    /// taken as they are: `B · V` (and its backward), `F · W` and the convolution.
    #[test]
    fn the_bodies_take_padding_as_zeros() {
        let device = Device::flex();
        let [m, n, d] = [3, 7, 4];
        let random =
            |rows| Tensor::<4>::random([1, 1, rows, d], Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v, grad) = (random(m), random(n), random(n), random(m));
        let padded: Vec<f32> = (0..n).map(|j| (j >= 5 || j == 2) as u8 as f32).collect();
        let flags = Tensor::<2>::from_data(TensorData::new(padded, [1, n]), &device);
        let rows = flags.clone().greater_elem(0.5).reshape([1, 1, n, 1]);
        let fill = |x: &Tensor<4>, value: f32| {
            x.clone()
                .mask_fill(rows.clone().expand([1, 1, n, d]), value)
                .into_dispatch()
        };
        let padding = || Flags::Present(flags.clone().into_dispatch());
        let same = |what: &str, got: FloatTensor<Dispatch>, expected: FloatTensor<Dispatch>| {
            let (got, expected) = (
                host(Tensor::from_dispatch(got)),
                host(Tensor::from_dispatch(expected)),
            );
            assert!(got.iter().all(|x| x.is_finite()), "{what}: {got:?}");
            assert_eq!(got, expected, "{what}");
        };

        let values = |keys, values, padding, zero_padded| {
            landmark_values_with_statistics::<Dispatch>(
                q.clone().into_dispatch(),
                keys,
                values,
                padding,
                Flags::Absent,
                -1e9,
                zero_padded,
            )
        };
        let (output, softmax_statistics) =
            values(fill(&k, f32::NAN), fill(&v, f32::NAN), padding(), true);
        let (expected, expected_lse) = values(fill(&k, 0.0), fill(&v, 0.0), padding(), false);
        same("B · V", output.clone(), expected.clone());
        let backward = |keys, values, zero_padded, output, softmax_statistics| {
            super::super::backward::landmark_values_backward::<Dispatch>(
                q.clone().into_dispatch(),
                keys,
                values,
                padding(),
                Flags::Absent,
                -1e9,
                zero_padded,
                output,
                softmax_statistics,
                grad.clone().into_dispatch(),
            )
        };
        let got = backward(
            fill(&k, f32::NAN),
            fill(&v, f32::NAN),
            true,
            output,
            softmax_statistics,
        );
        let reference = backward(fill(&k, 0.0), fill(&v, 0.0), false, expected, expected_lse);
        same("B · V, dQ̃", got.0, reference.0);
        same("B · V, dK", got.1, reference.1);
        same("B · V, dV", got.2, reference.2);

        let attention = |queries, query_padding| {
            landmark_attention::<Dispatch>(
                queries,
                q.clone().into_dispatch(),
                v.clone().slice([0..1, 0..1, 0..m, 0..d]).into_dispatch(),
                Flags::Absent,
                query_padding,
            )
        };
        same(
            "F · W",
            attention(fill(&k, f32::NAN), padding()),
            attention(fill(&k, 0.0), Flags::Absent),
        );

        let taps = Tensor::<4>::random([1, 1, 3, 1], Distribution::Normal(0.0, 0.5), &device);
        same(
            "convolution",
            depthwise_conv::<Dispatch>(fill(&v, f32::NAN), taps.clone().into_dispatch(), padding()),
            depthwise_conv::<Dispatch>(fill(&v, 0.0), taps.into_dispatch(), Flags::Absent),
        );
    }

    #[test]
    #[cfg(feature = "autodiff")]
    fn the_depthwise_conv_bodies_match_burn_nn_forward_and_backward() {
        use burn::module::Param;
        use burn::nn::PaddingConfig2d;
        use burn::nn::conv::Conv2dConfig;

        use crate::kernels::backward::depthwise_conv_backward;

        let device = Device::flex().autodiff();
        let (heads, n, k) = (2, 11, 5);
        let values = Tensor::<4>::random([2, heads, n, 3], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let taps = Tensor::<4>::random([heads, 1, k, 1], Distribution::Normal(0.0, 0.5), &device);
        let probe = Tensor::<4>::random([2, heads, n, 3], Distribution::Normal(0.0, 1.0), &device);
        let mut conv = Conv2dConfig::new([heads, heads], [k, 1])
            .with_groups(heads)
            .with_padding(PaddingConfig2d::Explicit(k / 2, 0, k / 2, 0))
            .with_bias(false)
            .init(&device);
        conv.weight = Param::from_tensor(taps.clone());
        let out = conv.forward(values.clone());
        let grads = (out.clone() * probe.clone()).sum().backward();
        let expected = [
            host(out.inner()),
            host(values.grad(&grads).unwrap()),
            host(conv.weight.val().grad(&grads).unwrap()),
        ];
        let output = depthwise_conv::<Dispatch>(
            values.clone().inner().into_dispatch(),
            taps.clone().inner().into_dispatch(),
            Flags::Absent,
        );
        let (d_values, d_taps) = depthwise_conv_backward::<Dispatch>(
            values.inner().into_dispatch(),
            taps.inner().into_dispatch(),
            Flags::Absent,
            probe.inner().into_dispatch(),
        );
        let got = [output, d_values, d_taps].map(|t| host(Tensor::from_dispatch(t)));
        for (what, (got, expected)) in ["output", "values", "taps"]
            .iter()
            .zip(got.iter().zip(&expected))
        {
            assert!(expected.iter().any(|e| *e != 0.0), "{what}: all zero");
            for (g, e) in got.iter().zip(expected) {
                assert!(
                    (g - e).abs() < 1e-5 * (1.0 + e.abs()),
                    "{what}: {g} against {e}"
                );
            }
        }
    }

    #[test]
    #[cfg(feature = "autodiff")]
    fn the_layer_norm_bodies_match_burn_nn_forward_and_backward() {
        use burn::module::Param;
        use burn::nn::LayerNormConfig;

        use crate::kernels::backward::layer_norm_backward;

        fn flat<const D: usize>(t: Tensor<D>) -> Vec<f32> {
            t.into_data().convert::<f32>().try_into_vec().unwrap()
        }
        let device = Device::flex().autodiff();
        let (d, epsilon) = (6, 1e-5);
        let normal = |shape: [usize; 1], mean, std| {
            Tensor::<1>::random(shape, Distribution::Normal(mean, std), &device)
        };
        let mut norm = LayerNormConfig::new(d).with_epsilon(epsilon).init(&device);
        norm.gamma = Param::from_tensor(normal([d], 1.0, 0.3));
        norm.beta = Some(Param::from_tensor(normal([d], 0.0, 0.3)));
        let x = Tensor::<3>::random([2, 5, d], Distribution::Normal(3.0, 2.0), &device);
        let x = x.require_grad();
        let probe = Tensor::<3>::random([2, 5, d], Distribution::Normal(0.0, 1.0), &device);
        let out = norm.forward(x.clone());
        let grads = (out.clone() * probe.clone()).sum().backward();
        let (gamma, beta) = (norm.gamma.val(), norm.beta.as_ref().unwrap().val());
        let expected = [
            flat(out.inner()),
            flat(x.grad(&grads).unwrap()),
            flat(gamma.grad(&grads).unwrap()),
            flat(beta.grad(&grads).unwrap()),
        ];

        let (output, statistics) = layer_norm_with_statistics::<Dispatch>(
            x.clone().inner().into_dispatch(),
            gamma.clone().inner().into_dispatch(),
            beta.inner().into_dispatch(),
            epsilon,
        );
        let (dx, d_gamma, d_beta) = layer_norm_backward::<Dispatch>(
            x.clone().inner().into_dispatch(),
            gamma.inner().into_dispatch(),
            statistics.clone(),
            probe.inner().into_dispatch(),
        );
        let got = [
            flat(Tensor::<3>::from_dispatch(output)),
            flat(Tensor::<3>::from_dispatch(dx)),
            flat(Tensor::<1>::from_dispatch(d_gamma)),
            flat(Tensor::<1>::from_dispatch(d_beta)),
        ];
        for (what, (got, expected)) in ["output", "x", "gamma", "beta"]
            .iter()
            .zip(got.iter().zip(&expected))
        {
            for (g, e) in got.iter().zip(expected) {
                assert!(
                    (g - e).abs() < 1e-4 * (1.0 + e.abs()),
                    "{what}: {g} against {e}"
                );
            }
        }
        // The first row's statistics, from the host.
        let row = &flat(x.inner())[..d];
        let mean = row.iter().sum::<f32>() / d as f32;
        let variance = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / d as f32;
        let statistics = flat(Tensor::<2>::from_dispatch(statistics));
        assert!((statistics[0] - mean).abs() < 1e-5);
        assert!((statistics[1] - 1.0 / (variance + epsilon as f32).sqrt()).abs() < 1e-4);
    }

    #[test]
    fn the_statistics_bodies_give_the_plain_result_and_each_rows_softmax_statistics() {
        let device = Device::flex();
        let [m, n, d] = [3, 7, 4];
        let random =
            |rows| Tensor::<4>::random([1, 1, rows, d], Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (random(m), random(n), random(n));
        let padded: Vec<f32> = (0..n).map(|j| if j >= 5 { 1.0 } else { 0.0 }).collect();
        let padding = Tensor::<2>::from_data(TensorData::new(padded, [1, n]), &device);
        let missing = Tensor::<2>::from_data(TensorData::new(vec![0.0, 1.0, 0.0], [1, m]), &device);
        let args = || {
            (
                q.clone().into_dispatch(),
                k.clone().into_dispatch(),
                v.clone().into_dispatch(),
                Flags::Present(padding.clone().into_dispatch()),
                Flags::Present(missing.clone().into_dispatch()),
            )
        };
        let (q0, k0, v0, p0, m0) = args();
        let plain = host(Tensor::from_dispatch(landmark_values::<Dispatch>(
            q0, k0, v0, p0, m0, -1e9, false,
        )));
        let (q1, k1, v1, p1, m1) = args();
        let (output, statistics) =
            landmark_values_with_statistics::<Dispatch>(q1, k1, v1, p1, m1, -1e9, false);
        let (output, statistics) = (
            host(Tensor::from_dispatch(output)),
            Tensor::<4>::from_dispatch(statistics),
        );
        assert_eq!(statistics.dims(), [1, 1, m, 2]);
        assert_eq!(statistics.dtype(), DType::F32);
        let statistics = host(statistics);
        assert_eq!(output, plain);
        // Scores over the valid keys only: the padded ones weigh e^(-1e9) = 0.
        let valid_keys = k.clone().slice([0..1, 0..1, 0..5, 0..d]);
        let scores = host(q.clone().matmul(valid_keys.transpose()));
        assert_statistics(&statistics, &scores, 5);

        // Every key padded: all scored at -1e9, a uniform softmax, `ln Σ` = ln n kept apart
        // from the maximum (the f32 sum -1e9 + ln 7 is -1e9).
        let all_padded = Tensor::<2>::ones([1, n], &device).into_dispatch();
        let (_, statistics) = landmark_values_with_statistics::<Dispatch>(
            q.clone().into_dispatch(),
            k.clone().into_dispatch(),
            v.clone().into_dispatch(),
            Flags::Present(all_padded),
            Flags::Absent,
            -1e9,
            false,
        );
        for row in host(Tensor::from_dispatch(statistics)).chunks(2) {
            assert_eq!(row[0], -1e9);
            assert!((row[1] - (n as f32).ln()).abs() < 1e-5, "{row:?}");
        }

        // F · W over the landmarks: landmark 1 missing, so each row sums over 0 and 2.
        let plain = host(Tensor::from_dispatch(landmark_attention::<Dispatch>(
            k.clone().into_dispatch(),
            q.clone().into_dispatch(),
            v.clone().slice([0..1, 0..1, 0..m, 0..d]).into_dispatch(),
            Flags::Present(missing.clone().into_dispatch()),
            Flags::Absent,
        )));
        let (output, statistics) = landmark_attention_with_statistics::<Dispatch>(
            k.clone().into_dispatch(),
            q.clone().into_dispatch(),
            v.clone().slice([0..1, 0..1, 0..m, 0..d]).into_dispatch(),
            Flags::Present(missing.into_dispatch()),
            Flags::Absent,
        );
        let (output, statistics) = (
            host(Tensor::from_dispatch(output)),
            host(Tensor::from_dispatch(statistics)),
        );
        assert_eq!(output, plain);
        let present = Tensor::cat(
            vec![
                q.clone().slice([0..1, 0..1, 0..1, 0..d]),
                q.slice([0..1, 0..1, 2..3, 0..d]),
            ],
            2,
        );
        let scores = host(k.matmul(present.transpose()));
        assert_statistics(&statistics, &scores, 2);
    }

    #[test]
    fn the_weights_body_is_a_pinv_times_the_values() {
        use crate::attention::softmax_kernels::kernel_a;
        use crate::attention::{PinvInit, iterative_pinv};

        let device = Device::flex();
        let [m, d] = [5, 4];
        let random = |seed| {
            Tensor::<4>::random([2, 1, m, d], Distribution::Normal(0.0, 1.0), &device)
                .mul_scalar(seed)
        };
        let (queries, keys, products) = (random(1.0), random(0.5), random(1.0));
        // Sequence 1 without its landmarks 1 and 4, on both sides.
        let flagged = [vec![0.0; m], vec![0.0, 1.0, 0.0, 0.0, 1.0]].concat();
        let missing = Tensor::<2>::from_data(TensorData::new(flagged, [2, m]), &device);
        let got = host(Tensor::from_dispatch(landmark_weights::<Dispatch>(
            queries.clone().into_dispatch(),
            keys.clone().into_dispatch(),
            products.clone().into_dispatch(),
            Flags::Present(missing.clone().into_dispatch()),
            Flags::Present(missing.clone().into_dispatch()),
            6,
        )));
        let missing = missing.greater_elem(0.5);
        let a = kernel_a(queries, keys, Some(&missing), Some(&missing), -1e9);
        let expected = host(iterative_pinv(a, 6, PinvInit::Exact).matmul(products));
        let scale = expected.iter().fold(1.0f32, |s, x| s.max(x.abs()));
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!((g - e).abs() < 1e-4 * scale, "entry {i}: {g} against {e}");
        }
    }

    /// The ranked segments' default bodies (what a backend without its own implementation runs)
    /// against `Segments::mean`, whose weights come from `segment_index`, and its autodiff
    /// gradient: holes, left padding and a fully padded sequence.
    #[test]
    fn the_ranked_bodies_are_the_segment_means_and_their_gradient() {
        use burn::tensor::Bool;

        use crate::attention::landmarks::Segments;

        let flex = Device::flex();
        let tracked = flex.clone().autodiff();
        let [batch, heads, n, d, m] = [3, 2, 11, 3, 4];
        let padded = |b: usize, j: usize| match b {
            0 => (3..6).contains(&j),
            1 => j < 2,
            _ => true,
        };
        let mask: Vec<bool> = (0..batch * n).map(|i| padded(i / n, i % n)).collect();
        let mask = |device| {
            Tensor::<2, Bool>::from_bool(TensorData::new(mask.clone(), [batch, n]), device)
        };
        let segments = |device| Segments::new(n, m, Some(&mask(device)), FloatDType::F32, device);
        let normal = Distribution::Normal(0.0, 1.0);
        let x = Tensor::<4>::random([batch, heads, n, d], normal, &flex);
        let probe = Tensor::<4>::random([batch, heads, m, d], normal, &flex);

        // The default bodies, on flex.
        let plain = segments(&flex);
        let ranks = plain.ranks().expect("a mask cuts ranked segments");
        let means = Tensor::<4>::from_dispatch(ranked_segment_mean::<Dispatch>(
            x.clone().into_dispatch(),
            ranks.rank.clone().into_dispatch(),
            ranks.lengths.clone().into_dispatch(),
            m,
        ));
        let spread = Tensor::<4>::from_dispatch(ranked_segment_spread::<Dispatch>(
            probe.clone().into_dispatch(),
            ranks.rank.clone().into_dispatch(),
            ranks.lengths.clone().into_dispatch(),
            0.5,
        ));
        // The segment means and the gradient of Σ probe ∘ (0.5 · means), through autodiff.
        let x_tracked = Tensor::<4>::from_data(x.to_data(), &tracked).require_grad();
        let expected = segments(&tracked).mean(x_tracked.clone());
        let probe_tracked = Tensor::<4>::from_data(probe.to_data(), &tracked);
        let grads = (expected.clone().mul_scalar(0.5) * probe_tracked)
            .sum()
            .backward();
        let gradient = x_tracked.grad(&grads).expect("x is tracked");
        for (what, got, expected) in [
            ("means", means, expected.inner()),
            (
                "spread",
                spread,
                Tensor::from_data(gradient.to_data(), &flex),
            ),
        ] {
            let (got, expected) = (host(got), host(expected));
            assert!(expected.iter().any(|e| *e != 0.0), "{what}: all zero");
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!((g - e).abs() < 1e-5, "{what}, entry {i}: {g} against {e}");
            }
        }
    }

    /// The weights' default bodies with ranked key rows: a short sequence (at most `m` valid
    /// keys) takes its values' segment means as its rows and sends its whole gradient to them,
    /// a long one is untouched and sends them nothing.
    #[test]
    fn the_weights_bodies_give_short_sequences_their_values_means() {
        use burn::tensor::Bool;

        use super::super::extension::PinvOps;
        use crate::attention::landmarks::Segments;

        let flex = Device::flex();
        let [batch, heads, n, d, m] = [2, 2, 9, 3, 4];
        // Sequence 0 has 3 valid keys (short, one segment missing), sequence 1 has 7.
        let mask: Vec<bool> = (0..batch * n)
            .map(|i| (i / n == 0 && i % n >= 3) || (i / n == 1 && i % n < 2))
            .collect();
        let mask = Tensor::<2, Bool>::from_bool(TensorData::new(mask, [batch, n]), &flex);
        let segments = Segments::new(n, m, Some(&mask), FloatDType::F32, &flex);
        let ranks = segments.ranks().expect("a mask cuts ranked segments");
        let rows = || SegmentRows::<Dispatch>::Ranked {
            order: ranks.order.clone().into_dispatch(),
            rank: ranks.rank.clone().into_dispatch(),
            lengths: ranks.lengths.clone().into_dispatch(),
        };
        let missing = Flags::Present(segments.missing().unwrap().clone().float().into_dispatch());
        let normal = Distribution::Normal(0.0, 1.0);
        let random = |rows| Tensor::<4>::random([batch, heads, rows, d], normal, &flex);
        let (queries, keys, products, values, grad) =
            (random(m), random(m), random(m), random(n), random(m));
        let weights = |key_rows| {
            host(Tensor::from_dispatch(
                <Dispatch as PinvOps>::landmark_weights(
                    queries.clone().into_dispatch(),
                    keys.clone().into_dispatch(),
                    products.clone().into_dispatch(),
                    missing.clone(),
                    missing.clone(),
                    values.clone().into_dispatch(),
                    key_rows,
                    6,
                ),
            ))
        };
        let backward = |key_rows| {
            let (q, k, v, means) = <Dispatch as PinvOps>::landmark_weights_backward(
                queries.clone().into_dispatch(),
                keys.clone().into_dispatch(),
                products.clone().into_dispatch(),
                missing.clone(),
                missing.clone(),
                key_rows,
                6,
                grad.clone().into_dispatch(),
            );
            [q, k, v, means].map(|x| host(Tensor::from_dispatch(x)))
        };
        let (short, long) = (weights(rows()), weights(SegmentRows::Equal));
        let means = host(segments.mean(values.clone()));
        let half = heads * m * d;
        // Two matmuls of different weight matrices: equal but for rounding.
        for (i, (got, mean)) in short[..half].iter().zip(&means[..half]).enumerate() {
            assert!(
                (got - mean).abs() < 1e-6,
                "the short sequence's entry {i}: {got}, {mean}"
            );
        }
        assert_eq!(&short[half..], &long[half..], "the long sequence's rows");
        assert!(means[..half].iter().any(|x| *x != 0.0));

        let ([q, k, v, means], [q_all, k_all, v_all, means_none]) =
            (backward(rows()), backward(SegmentRows::Equal));
        let grad = host(grad.clone());
        assert!(
            means_none.iter().all(|x| *x == 0.0),
            "equal rows: no short sequence"
        );
        assert_eq!(&means[..half], &grad[..half], "the short sequence's means");
        assert!(
            means[half..].iter().all(|x| *x == 0.0),
            "the long sequence's means"
        );
        for (what, got, all) in [("Q̃", q, q_all), ("K̃", k, k_all), ("B V", v, v_all)] {
            assert!(
                got[..half].iter().all(|x| *x == 0.0),
                "{what}: short sequence"
            );
            assert_eq!(&got[half..], &all[half..], "{what}: long sequence");
            assert!(all[half..].iter().any(|x| *x != 0.0), "{what}: all zero");
        }
    }
}
