//! `F · W` without `F`: each query's softmax over the landmark keys, times `W = A⁺ (B V)`.
//!
//! The tensor-op form computes the `[n, m]` scores, masks them, takes the softmax in several
//! passes, zeroes missing columns and multiplies by `W`, writing and reading `F` between each
//! step. Here one unit owns one query row: it streams the `m` landmarks once with an online
//! softmax (a running maximum, the sum of exponentials and the weighted sum of `W`'s rows,
//! rescaled whenever the maximum grows), so `F` only ever exists one entry at a time.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Units per cube (one query row each).
const UNITS_PER_CUBE: u32 = 128;

/// Launches the kernel; see [`super::fused_landmark_attention`] for the contract.
pub fn launch(
    queries: CubeTensor,
    landmark_keys: CubeTensor,
    weights: CubeTensor,
    missing: CubeTensor,
) -> CubeTensor {
    let queries = into_contiguous(queries);
    let landmark_keys = into_contiguous(landmark_keys);
    let weights = into_contiguous(weights);
    let missing = into_contiguous(missing);
    let [batch, heads, n, head_dim] = queries.meta.shape().dims::<4>();
    let value_dim = weights.meta.shape()[3];

    let client = queries.client.clone();
    let dtype = queries.dtype;
    let context = empty_device_contiguous_dtype(
        client.clone(),
        queries.device.clone(),
        Shape::new([batch, heads, n, value_dim]),
        dtype,
    );
    let rows = batch * heads * n;
    let cube_dim =
        CubeDim::new_1d(UNITS_PER_CUBE.min(client.properties().hardware.max_units_per_cube));
    let cube_count = cubecl::calculate_cube_count_elemwise(&client, rows, cube_dim);
    landmark_attention_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        queries.into_tensor_arg(),
        landmark_keys.into_tensor_arg(),
        weights.into_tensor_arg(),
        missing.into_tensor_arg(),
        context.clone().into_tensor_arg(),
        head_dim,
        value_dim,
        dtype_to_storage_type(dtype),
    );
    context
}

/// One unit per query row (`ABSOLUTE_POS` over `batch · heads · n`); all tensors contiguous.
/// The head sizes are compile-time constants so that the row's query and accumulator live in
/// registers.
#[cube(launch)]
fn landmark_attention_kernel<F: Float>(
    queries: &Tensor<F>,
    landmark_keys: &Tensor<F>,
    weights: &Tensor<F>,
    missing: &Tensor<F>,
    context: &mut Tensor<F>,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = ABSOLUTE_POS;
    let heads = queries.shape(1);
    let n = queries.shape(2);
    let m = landmark_keys.shape(2);
    if row >= queries.len() / head_dim {
        terminate!();
    }
    let matrix = row / n; // batch · heads + head
    let batch = matrix / heads;
    let keys = matrix * m * head_dim;
    let values = matrix * m * value_dim;

    let mut query = Array::<F>::new(head_dim);
    #[unroll]
    for c in 0..head_dim {
        query[c] = queries[row * head_dim + c];
    }
    let mut accumulator = Array::<F>::new(value_dim);
    #[unroll]
    for c in 0..value_dim {
        accumulator[c] = F::new(0.0);
    }

    // Finite on purpose (WGSL has no infinity literal); any real score is far above it, and
    // the first landmark's rescaling factor exp(-1e30 - s) is exactly 0.
    let mut running_max = F::new(-1.0e30);
    let mut total = F::new(0.0);
    for j in 0..m {
        if missing[batch * m + j] == F::new(0.0) {
            let mut score = F::new(0.0);
            #[unroll]
            for c in 0..head_dim {
                score += query[c] * landmark_keys[keys + j * head_dim + c];
            }
            let new_max = F::max(running_max, score);
            let rescale = F::exp(running_max - new_max);
            let weight = F::exp(score - new_max);
            total = total * rescale + weight;
            #[unroll]
            for c in 0..value_dim {
                accumulator[c] =
                    accumulator[c] * rescale + weight * weights[values + j * value_dim + c];
            }
            running_max = new_max;
        }
    }

    // No landmark at all (a fully padded sequence): a zero row, as the tensor-op path gives.
    let mut inverse = F::new(0.0);
    if total > F::new(0.0) {
        inverse = F::new(1.0) / total;
    }
    #[unroll]
    for c in 0..value_dim {
        context[row * value_dim + c] = accumulator[c] * inverse;
    }
}
