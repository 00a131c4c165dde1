//! `F · W` without `F`: each query's softmax over the landmark keys, times `W = A⁺ (B V)`.
//!
//! The tensor-op form computes the `[n, m]` scores, masks them, takes the softmax in several
//! passes, zeroes missing columns and multiplies by `W`, writing and reading `F` between each
//! step. Here one unit owns one query row: it streams the `m` landmarks once through an online
//! softmax (`super::online_softmax`), so `F` only ever exists one entry at a time.
//!
//! For training, the kernel can also leave each row's log-sum-exp over its landmarks as a last
//! column of the output (`with_statistics`): the backward (`super::backward`) recomputes `F`
//! from it without the softmax's reductions.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::online_softmax::{add, dot, empty_state, load_row, maximum, total};

/// Units per cube (one query row each).
const UNITS_PER_CUBE: u32 = 128;

/// Launches the kernel; see [`crate::kernels::fused_landmark_attention`] for the contract. With
/// `with_statistics` the output is `[batch, heads, n, d_v + 1]`, its last column each row's
/// log-sum-exp (0 for a row without landmarks).
pub fn launch(
    queries: CubeTensor,
    landmark_keys: CubeTensor,
    weights: CubeTensor,
    missing: CubeTensor,
    with_statistics: bool,
) -> CubeTensor {
    let queries = into_contiguous(queries);
    let landmark_keys = into_contiguous(landmark_keys);
    let weights = into_contiguous(weights);
    let missing = into_contiguous(missing);
    let [batch, heads, n, head_dim] = queries.meta.shape().dims::<4>();
    let value_dim = weights.meta.shape()[3];
    let output_dim = value_dim + usize::from(with_statistics);

    let client = queries.client.clone();
    let dtype = queries.dtype;
    let context = empty_device_contiguous_dtype(
        client.clone(),
        queries.device.clone(),
        Shape::new([batch, heads, n, output_dim]),
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
        output_dim,
        dtype_to_storage_type(dtype),
    );
    context
}

/// One unit per query row (`ABSOLUTE_POS` over `batch · heads · n`); all tensors contiguous.
/// The head sizes are compile-time constants so that the row's query and accumulator live in
/// registers. Output rows are `output_dim` long: `value_dim`, or one more for the log-sum-exp.
#[cube(launch)]
fn landmark_attention_kernel<F: Float>(
    queries: &Tensor<F>,
    landmark_keys: &Tensor<F>,
    weights: &Tensor<F>,
    missing: &Tensor<F>,
    context: &mut Tensor<F>,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] output_dim: usize,
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

    let query = load_row(queries, row * head_dim, head_dim);
    let mut state = empty_state::<F>(value_dim);
    for j in 0..m {
        if missing[batch * m + j] == F::new(0.0) {
            let score = dot(&query, landmark_keys, (matrix * m + j) * head_dim, head_dim);
            add(
                &mut state,
                score,
                weights,
                (matrix * m + j) * value_dim,
                value_dim,
            );
        }
    }

    // No landmark at all (a fully padded sequence): a zero row, as the tensor-op path gives.
    let sum = total(&state, value_dim);
    let mut inverse = F::new(0.0);
    if sum > F::new(0.0) {
        inverse = F::new(1.0) / sum;
    }
    #[unroll]
    for c in 0..value_dim {
        context[row * output_dim + c] = state[c] * inverse;
    }
    // Only the training forward pays for the logarithm.
    if comptime!(output_dim > value_dim) {
        let mut log_sum_exp = F::new(0.0);
        if sum > F::new(0.0) {
            log_sum_exp = maximum(&state, value_dim) + F::ln(sum);
        }
        context[row * output_dim + value_dim] = log_sum_exp;
    }
}
