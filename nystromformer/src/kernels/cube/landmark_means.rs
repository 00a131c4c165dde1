//! The landmarks in one launch: the landmark queries `Q̃`, and `Q̃` and `K̃` scaled by `1/√d`,
//! which the three later stages take; and the backward of ranked segments' means.
//!
//! For equal segments (no mask, `m` dividing the length) the tensor-op form reduces a
//! `[batch, heads, m, n/m, d]` view of each tensor and scales both means in separate launches
//! (four in all, more if the head split's strided views are copied first). For ranked segments
//! (a padding mask, or `m` not dividing the length) it multiplies a `[batch, m, n]` weight
//! matrix with every head: `m` times the reads of a mean, and a dozen launches to build the
//! matrix. Here one unit computes one entry of a landmark: it sums its column over the
//! segment's rows (a run of rows, or the rows that `order` lists for the segment's ranks), read
//! in place from the strided view, in f32 whatever the input type, and writes the mean (and the
//! scaled mean) once. The backward gives each row its segment's gradient, one unit per entry.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::tiles::{row_offset, rows_in_place};
use crate::kernels::segment_rows::SegmentRows;

/// Units per cube.
const UNITS_PER_CUBE: u32 = 256;

/// The landmarks of `queries` (and of `keys`, when given) over `m` segments; see
/// [`crate::kernels::fused_landmark_means`] for the contract. Returns `(Q̃, Q̃ · scale,
/// K̃ · scale)`, the last two only with `keys`.
pub fn launch(
    queries: CubeTensor,
    keys: Option<(CubeTensor, SegmentRows<CubeBackend>)>,
    query_rows: SegmentRows<CubeBackend>,
    m: usize,
    scale: f32,
) -> (CubeTensor, Option<(CubeTensor, CubeTensor)>) {
    let queries = rows_in_place(queries);
    let [batch, heads, _, head_dim] = queries.meta.shape().dims::<4>();
    let client = queries.client.clone();
    let dtype = queries.dtype;
    let empty = |shape: Shape, dtype: DType| {
        empty_device_contiguous_dtype(client.clone(), queries.device.clone(), shape, dtype)
    };
    let landmarks = || empty(Shape::new([batch, heads, m, head_dim]), dtype);
    let with_keys = keys.is_some();
    let (keys, key_rows) = match keys {
        Some((keys, rows)) => (rows_in_place(keys), rows),
        None => (queries.clone(), SegmentRows::Equal),
    };
    let landmark_queries = landmarks();
    // Without keys the kernel writes `Q̃` alone; the other two outputs are never touched.
    let (scaled_queries, scaled_keys) = match with_keys {
        true => (landmarks(), landmarks()),
        false => (empty(Shape::new([1]), dtype), empty(Shape::new([1]), dtype)),
    };
    // A kernel compiled for equal segments never reads `order` or `lengths`: the first ranked
    // side's tensors, or a one-entry stand-in, fill its arguments.
    let stand_in = [&query_rows, &key_rows]
        .into_iter()
        .find_map(|rows| match rows {
            SegmentRows::Ranked { order, .. } => Some(order.clone()),
            SegmentRows::Equal => None,
        })
        .unwrap_or_else(|| empty(Shape::new([1]), DType::I32));
    let int_dtype = stand_in.dtype;
    let ranked = |rows: SegmentRows<CubeBackend>| match rows {
        SegmentRows::Ranked { order, lengths, .. } => (true, order, lengths),
        SegmentRows::Equal => (false, stand_in.clone(), stand_in.clone()),
    };
    let (query_ranked, query_order, query_lengths) = ranked(query_rows);
    let (key_ranked, key_order, key_lengths) = ranked(key_rows);
    let cube_dim =
        CubeDim::new_1d(UNITS_PER_CUBE.min(client.properties().hardware.max_units_per_cube));
    // One unit per entry of Q̃, and with keys one per entry of K̃.
    let units = (1 + with_keys as usize) * batch * heads * m * head_dim;
    landmark_means_kernel::launch(
        &client,
        cubecl::calculate_cube_count_elemwise(&client, units, cube_dim),
        cube_dim,
        queries.into_tensor_arg(),
        keys.into_tensor_arg(),
        query_order.into_tensor_arg(),
        query_lengths.into_tensor_arg(),
        key_order.into_tensor_arg(),
        key_lengths.into_tensor_arg(),
        landmark_queries.clone().into_tensor_arg(),
        scaled_queries.clone().into_tensor_arg(),
        scaled_keys.clone().into_tensor_arg(),
        scale,
        query_ranked,
        key_ranked,
        with_keys,
        [
            dtype_to_storage_type(dtype),
            dtype_to_storage_type(int_dtype),
        ],
    );
    (
        landmark_queries,
        with_keys.then_some((scaled_queries, scaled_keys)),
    )
}

/// The gradient of ranked segment means' input (`[batch, heads, n, d]`, contiguous) for the
/// gradient `grad` (`[batch, heads, m, d]`) of `factor · mean`: see
/// [`crate::kernels::extension::SegmentMeanOps::ranked_segment_mean_backward`].
pub fn launch_backward(
    grad: CubeTensor,
    rank: CubeTensor,
    lengths: CubeTensor,
    factor: f32,
) -> CubeTensor {
    let grad = rows_in_place(grad);
    let [batch, heads, _, head_dim] = grad.meta.shape().dims::<4>();
    let n = rank.meta.shape()[1];
    let client = grad.client.clone();
    let (dtype, int_dtype) = (grad.dtype, rank.dtype);
    let dx = empty_device_contiguous_dtype(
        client.clone(),
        grad.device.clone(),
        Shape::new([batch, heads, n, head_dim]),
        dtype,
    );
    let cube_dim =
        CubeDim::new_1d(UNITS_PER_CUBE.min(client.properties().hardware.max_units_per_cube));
    let units = batch * heads * n * head_dim;
    segment_spread_kernel::launch(
        &client,
        cubecl::calculate_cube_count_elemwise(&client, units, cube_dim),
        cube_dim,
        grad.into_tensor_arg(),
        rank.into_tensor_arg(),
        lengths.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        factor,
        [
            dtype_to_storage_type(dtype),
            dtype_to_storage_type(int_dtype),
        ],
    );
    dx
}

/// One unit per entry of the landmarks: the first `entries` units (`ABSOLUTE_POS`) compute `Q̃`
/// (and with `with_keys` its scaled copy), the next `entries` the scaled `K̃`. `queries` and
/// `keys` may be strided (last dimension contiguous) and of different lengths; a side compiled
/// `ranked` reads its segments' rows through `order` and `lengths`, the other takes `m` equal
/// runs. The outputs are contiguous `[batch, heads, m, d]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn landmark_means_kernel<F: Float, I: Int>(
    queries: &Tensor<F>,
    keys: &Tensor<F>,
    query_order: &Tensor<I>,
    query_lengths: &Tensor<I>,
    key_order: &Tensor<I>,
    key_lengths: &Tensor<I>,
    landmark_queries: &mut Tensor<F>,
    scaled_queries: &mut Tensor<F>,
    scaled_keys: &mut Tensor<F>,
    scale: f32,
    #[comptime] query_ranked: bool,
    #[comptime] key_ranked: bool,
    #[comptime] with_keys: bool,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let entries = landmark_queries.len();
    let index = ABSOLUTE_POS;
    let mut sides = 1usize;
    if comptime!(with_keys) {
        sides = 2;
    }
    if index >= sides * entries {
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
        let mean = side_mean(
            queries,
            query_order,
            query_lengths,
            batch,
            head,
            landmark,
            column,
            m,
            query_ranked,
        );
        landmark_queries[entry] = F::cast_from(mean);
        if comptime!(with_keys) {
            scaled_queries[entry] = F::cast_from(mean * scale);
        }
    } else {
        let mean = side_mean(
            keys,
            key_order,
            key_lengths,
            batch,
            head,
            landmark,
            column,
            m,
            key_ranked,
        );
        scaled_keys[entry] = F::cast_from(mean * scale);
    }
}

/// Column `column` of landmark `landmark` (of `m`) of matrix (`batch`, `head`) of one side's
/// landmarks: over ranked segments when compiled `ranked`, else over `m` equal runs.
#[cube]
#[allow(clippy::too_many_arguments)]
fn side_mean<F: Float, I: Int>(
    x: &Tensor<F>,
    order: &Tensor<I>,
    lengths: &Tensor<I>,
    batch: usize,
    head: usize,
    landmark: usize,
    column: usize,
    m: usize,
    #[comptime] ranked: bool,
) -> f32 {
    let mut mean = f32::new(0.0);
    if comptime!(ranked) {
        mean += ranked_mean(x, order, lengths, batch, head, landmark, column, m);
    } else {
        mean += run_mean(x, batch, head, landmark, column, m);
    }
    mean
}

/// One unit per entry of the input's gradient `dx`: the entry's row `j` of sequence `b`, of
/// rank `r = rank[b, j]`, gets `factor / count` times its segment's gradient when `r` is below
/// the sequence's length, zero otherwise (padding).
#[cube(launch)]
fn segment_spread_kernel<F: Float, I: Int>(
    grad: &Tensor<F>,
    rank: &Tensor<I>,
    lengths: &Tensor<I>,
    dx: &mut Tensor<F>,
    factor: f32,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let index = ABSOLUTE_POS;
    if index >= dx.len() {
        terminate!();
    }
    let heads = dx.shape(1);
    let n = dx.shape(2);
    let head_dim = dx.shape(3);
    let m = grad.shape(2);
    let column = index % head_dim;
    let row = (index / head_dim) % n;
    let matrix = index / (head_dim * n);
    let (batch, head) = (matrix / heads, matrix % heads);
    let sequence = sequence_of(rank, batch);
    let length = usize::cast_from(lengths[sequence * lengths.stride(0)]);
    let r = usize::cast_from(rank[sequence * rank.stride(0) + row * rank.stride(1)]);
    let mut value = f32::new(0.0);
    if r < length {
        let segment = segment_of(r, length, m);
        let count = segment_start(segment + 1, length, m) - segment_start(segment, length, m);
        let g = f32::cast_from(grad[row_offset(grad, batch, head, segment) + column]);
        value = g * factor / f32::cast_from(count);
    }
    dx[index] = F::cast_from(value);
}

/// The mean of column `column` over the rows of segment `landmark` of matrix (`batch`, `head`),
/// the segments being `m` equal runs of rows.
#[cube]
fn run_mean<F: Float>(
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

/// The mean of column `column` over the rows of ranked segment `landmark` of matrix (`batch`,
/// `head`): the rows `order[b, r]` for the ranks `r ∈ ⌈s·L/m⌉..⌈(s+1)·L/m⌉`; zero when the
/// segment is empty.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn ranked_mean<F: Float, I: Int>(
    x: &Tensor<F>,
    order: &Tensor<I>,
    lengths: &Tensor<I>,
    batch: usize,
    head: usize,
    landmark: usize,
    column: usize,
    m: usize,
) -> f32 {
    let sequence = sequence_of(order, batch);
    let length = usize::cast_from(lengths[sequence * lengths.stride(0)]);
    let first = segment_start(landmark, length, m);
    let end = segment_start(landmark + 1, length, m);
    let base = row_offset(x, batch, head, 0) + column;
    let stride = x.stride(2);
    let order_base = sequence * order.stride(0);
    let order_stride = order.stride(1);
    let mut sum = f32::new(0.0);
    for r in first..end {
        let row = usize::cast_from(order[order_base + r * order_stride]);
        sum += f32::cast_from(x[base + row * stride]);
    }
    let mut mean = f32::new(0.0);
    if end > first {
        mean = sum / f32::cast_from(end - first);
    }
    mean
}

/// The row of a `[batch or 1, …]` tensor of the segments (ranks, order or lengths) that serves
/// sequence `batch`.
#[cube]
pub(super) fn sequence_of<I: Int>(ranks: &Tensor<I>, batch: usize) -> usize {
    let mut sequence = batch;
    if ranks.shape(0) == 1 {
        sequence = 0;
    }
    sequence
}

/// The first rank of segment `s` of `m` over `length` rows, `⌈s·L/m⌉ = s·⌊L/m⌋ +
/// ⌈s·(L mod m)/m⌉`: its products stay below `L` and `m²`, where `s·L` overflows 32 bits at
/// long sequences.
#[cube]
pub(super) fn segment_start(s: usize, length: usize, m: usize) -> usize {
    s * (length / m) + (s * (length % m)).div_ceil(m)
}

/// The segment of rank `r < length`, `⌊r·m/L⌋`: an f32 estimate (within one of it) corrected
/// against [`segment_start`].
#[cube]
fn segment_of(r: usize, length: usize, m: usize) -> usize {
    let estimate = f32::cast_from(r) * f32::cast_from(m) / f32::cast_from(length);
    let mut segment = usize::cast_from(f32::floor(estimate));
    if segment > m - 1 {
        segment = m - 1;
    }
    if segment_start(segment, length, m) > r {
        segment -= 1;
    }
    if segment_start(segment + 1, length, m) <= r {
        segment += 1;
    }
    segment
}
