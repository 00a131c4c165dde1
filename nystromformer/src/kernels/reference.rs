//! The tensor-op body of each [`LandmarkSoftmaxOps`](super::extension::LandmarkSoftmaxOps)
//! operation, on backend primitives: the same maths as
//! [`kernel_b`](crate::attention::softmax_kernels::kernel_b) and
//! [`kernel_f`](crate::attention::softmax_kernels::kernel_f) followed by their product. A backend
//! without its own implementation runs these; under autodiff they differentiate through the
//! backend's own ops (this is how training runs on CubeCL devices until they have a fused
//! backward).

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

fn dims(tensor: &impl TensorMetadata) -> [usize; 4] {
    let shape = tensor.shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

/// Flags (`1.0` at `true`) as a boolean mask: reshaped to `shape`, then broadcast to `to`.
fn flags<B: Backend>(flags: FloatTensor<B>, shape: [usize; 4], to: [usize; 4]) -> BoolTensor<B> {
    let bool_dtype = get_or_init_device_settings::<B>(&flags.device()).bool_dtype;
    let mask = B::float_greater_elem(
        B::float_reshape(flags, Shape::new(shape)),
        0.5f32.into(),
        bool_dtype,
    );
    B::bool_expand(mask, Shape::new(to))
}
