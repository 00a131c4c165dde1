//! The landmarks of equal segments (no mask, `m` dividing the length) in one launch: the landmark
//! queries `Q̃`, and `Q̃` and `K̃` scaled by `1/√d`, which the three later stages take.
//!
//! The tensor-op form reduces a `[batch, heads, m, n/m, d]` view of each tensor and scales both
//! means in separate launches (four in all, more if the head split's strided views are copied
//! first). Here one unit computes one entry of a landmark: it sums its column over the segment's
//! rows, read in place from the strided view, in f32 whatever the input type, and writes the
//! mean (and the scaled mean) once.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::Shape;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::tiles::{row_offset, rows_in_place};

/// Units per cube.
const UNITS_PER_CUBE: u32 = 256;

/// Launches the kernel; see [`crate::kernels::fused_landmark_means`] for the contract. Returns
/// `(Q̃, Q̃ · scale, K̃ · scale)`.
pub fn launch(
    queries: CubeTensor,
    keys: CubeTensor,
    m: usize,
    scale: f32,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let queries = rows_in_place(queries);
    let keys = rows_in_place(keys);
    let [batch, heads, _, head_dim] = queries.meta.shape().dims::<4>();
    let client = queries.client.clone();
    let dtype = queries.dtype;
    let landmarks = || {
        empty_device_contiguous_dtype(
            client.clone(),
            queries.device.clone(),
            Shape::new([batch, heads, m, head_dim]),
            dtype,
        )
    };
    let (landmark_queries, scaled_queries, scaled_keys) = (landmarks(), landmarks(), landmarks());
    let cube_dim =
        CubeDim::new_1d(UNITS_PER_CUBE.min(client.properties().hardware.max_units_per_cube));
    // One unit per entry of Q̃ and one per entry of K̃.
    let units = 2 * batch * heads * m * head_dim;
    landmark_means_kernel::launch(
        &client,
        cubecl::calculate_cube_count_elemwise(&client, units, cube_dim),
        cube_dim,
        queries.into_tensor_arg(),
        keys.into_tensor_arg(),
        landmark_queries.clone().into_tensor_arg(),
        scaled_queries.clone().into_tensor_arg(),
        scaled_keys.clone().into_tensor_arg(),
        scale,
        dtype_to_storage_type(dtype),
    );
    (landmark_queries, scaled_queries, scaled_keys)
}

/// One unit per entry of the landmarks: the first half of the units (`ABSOLUTE_POS`) computes
/// `Q̃` and its scaled copy, the second half the scaled `K̃`. `queries` and `keys` may be strided
/// (last dimension contiguous) and of different lengths, each a multiple of `m`; the outputs are
/// contiguous `[batch, heads, m, d]`.
#[cube(launch)]
fn landmark_means_kernel<F: Float>(
    queries: &Tensor<F>,
    keys: &Tensor<F>,
    landmark_queries: &mut Tensor<F>,
    scaled_queries: &mut Tensor<F>,
    scaled_keys: &mut Tensor<F>,
    scale: f32,
    #[define(F)] _dtype: ElemType,
) {
    let entries = landmark_queries.len();
    let index = ABSOLUTE_POS;
    if index >= 2 * entries {
        terminate!();
    }
    let heads = landmark_queries.shape(1);
    let m = landmark_queries.shape(2);
    let head_dim = landmark_queries.shape(3);
    let entry = index % entries;
    let column = entry % head_dim;
    let landmark = (entry / head_dim) % m;
    let matrix = entry / (head_dim * m);
    let (batch, head) = (matrix / heads, matrix % heads);
    if index < entries {
        let mean = segment_mean(queries, batch, head, landmark, column, m);
        landmark_queries[entry] = F::cast_from(mean);
        scaled_queries[entry] = F::cast_from(mean * scale);
    } else {
        let mean = segment_mean(keys, batch, head, landmark, column, m);
        scaled_keys[entry] = F::cast_from(mean * scale);
    }
}

/// The mean of column `column` over the rows of segment `landmark` of matrix (`batch`, `head`),
/// the segments being `m` equal runs of rows.
#[cube]
fn segment_mean<F: Float>(
    x: &Tensor<F>,
    batch: usize,
    head: usize,
    landmark: usize,
    column: usize,
    m: usize,
) -> f32 {
    let len = x.shape(2) / m;
    let stride = x.stride(2);
    let start = row_offset(x, batch, head, landmark * len) + column;
    let mut sum = f32::new(0.0);
    for r in 0..len {
        sum += f32::cast_from(x[start + r * stride]);
    }
    sum / f32::cast_from(len)
}
