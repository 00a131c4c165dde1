//! The tensor-op body of each [`LandmarkSoftmaxOps`](super::extension::LandmarkSoftmaxOps)
//! operation and of [`PinvOps`](super::extension::PinvOps), on backend primitives: the same
//! maths as [`kernel_b`](crate::attention::softmax_kernels::kernel_b) and
//! [`kernel_f`](crate::attention::softmax_kernels::kernel_f) followed by their product, and as
//! [`iterative_pinv`](crate::attention::iterative_pinv). A backend without its own
//! implementation runs these; under autodiff they differentiate through the backend's own ops.

use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{Backend, TensorMetadata, get_or_init_device_settings};
use burn::tensor::Shape;

/// See [`super::fused_landmark_values`]; masks as `1.0` at `true`.
pub fn landmark_values<B: Backend>(
    landmark_queries: FloatTensor<B>,
    keys: FloatTensor<B>,
    values: FloatTensor<B>,
    padding: FloatTensor<B>,
    missing: FloatTensor<B>,
    masked_score: f32,
) -> FloatTensor<B> {
    let scores = B::float_matmul(landmark_queries, B::float_transpose(keys));
    let [batch, heads, m, n] = dims(&scores);
    let padded = flags::<B>(padding, [batch, 1, 1, n], [batch, heads, m, n]);
    let weights = B::softmax(B::float_mask_fill(scores, padded, masked_score.into()), 3);
    let context = B::float_matmul(weights, values);
    let dv = dims(&context)[3];
    let absent = flags::<B>(missing, [batch, 1, m, 1], [batch, heads, m, dv]);
    B::float_mask_fill(context, absent, 0.0f32.into())
}

/// See [`super::fused_landmark_attention`]; the mask as `1.0` at `true`.
pub fn landmark_attention<B: Backend>(
    queries: FloatTensor<B>,
    landmark_keys: FloatTensor<B>,
    weights: FloatTensor<B>,
    missing: FloatTensor<B>,
) -> FloatTensor<B> {
    let scores = B::float_matmul(queries, B::float_transpose(landmark_keys));
    let [batch, heads, n, m] = dims(&scores);
    let absent = |missing| flags::<B>(missing, [batch, 1, 1, m], [batch, heads, n, m]);
    let kernel = B::softmax(
        B::float_mask_fill(scores, absent(missing.clone()), f32::MIN.into()),
        3,
    );
    // A row without any landmark would otherwise spread uniform weight over the missing ones.
    let kernel = B::float_mask_fill(kernel, absent(missing), 0.0f32.into());
    B::float_matmul(kernel, weights)
}

/// [`landmark_values`] with each row's log-sum-exp of the masked scores appended as a last
/// column (`[batch, heads, m, d_v + 1]`), what the backward recomputes the softmax from.
#[cfg_attr(
    not(all(feature = "autodiff", feature = "cube-kernels")),
    allow(dead_code)
)]
pub fn landmark_values_with_statistics<B: Backend>(
    landmark_queries: FloatTensor<B>,
    keys: FloatTensor<B>,
    values: FloatTensor<B>,
    padding: FloatTensor<B>,
    missing: FloatTensor<B>,
    masked_score: f32,
) -> FloatTensor<B> {
    let scores = B::float_matmul(landmark_queries.clone(), B::float_transpose(keys.clone()));
    let [batch, heads, m, n] = dims(&scores);
    let padded = flags::<B>(padding.clone(), [batch, 1, 1, n], [batch, heads, m, n]);
    let log_sum_exp = log_sum_exp::<B>(B::float_mask_fill(scores, padded, masked_score.into()));
    let output = landmark_values::<B>(
        landmark_queries,
        keys,
        values,
        padding,
        missing,
        masked_score,
    );
    B::float_cat(vec![output, log_sum_exp], 3)
}

/// [`landmark_attention`] with each row's log-sum-exp over its landmarks appended as a last
/// column (`[batch, heads, n, d_v + 1]`; any finite value for a row without landmarks, whose
/// weights the backward zeroes).
#[cfg_attr(
    not(all(feature = "autodiff", feature = "cube-kernels")),
    allow(dead_code)
)]
pub fn landmark_attention_with_statistics<B: Backend>(
    queries: FloatTensor<B>,
    landmark_keys: FloatTensor<B>,
    weights: FloatTensor<B>,
    missing: FloatTensor<B>,
) -> FloatTensor<B> {
    let scores = B::float_matmul(queries.clone(), B::float_transpose(landmark_keys.clone()));
    let [batch, heads, n, m] = dims(&scores);
    let absent = flags::<B>(missing.clone(), [batch, 1, 1, m], [batch, heads, n, m]);
    let log_sum_exp = log_sum_exp::<B>(B::float_mask_fill(scores, absent, f32::MIN.into()));
    let output = landmark_attention::<B>(queries, landmark_keys, weights, missing);
    B::float_cat(vec![output, log_sum_exp], 3)
}

/// `max + ln Σ exp(s − max)` of each row of `scores`, as `[.., rows, 1]`.
#[cfg_attr(
    not(all(feature = "autodiff", feature = "cube-kernels")),
    allow(dead_code)
)]
fn log_sum_exp<B: Backend>(scores: FloatTensor<B>) -> FloatTensor<B> {
    let maximum = B::float_max_dim(scores.clone(), 3);
    let shape = Shape::new(dims(&scores));
    let shifted = B::float_sub(scores, B::float_expand(maximum.clone(), shape));
    let sum = B::float_sum_dim(B::float_exp(shifted), 3);
    B::float_add(maximum, B::float_log(sum))
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

pub(super) fn dims(tensor: &impl TensorMetadata) -> [usize; 4] {
    let shape = tensor.shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

/// Flags (`1.0` at `true`) as a boolean mask: reshaped to `shape`, then broadcast to `to`.
pub(super) fn flags<B: Backend>(
    flags: FloatTensor<B>,
    shape: [usize; 4],
    to: [usize; 4],
) -> BoolTensor<B> {
    let bool_dtype = get_or_init_device_settings::<B>(&flags.device()).bool_dtype;
    let mask = B::float_greater_elem(
        B::float_reshape(flags, Shape::new(shape)),
        0.5f32.into(),
        bool_dtype,
    );
    B::bool_expand(mask, Shape::new(to))
}
