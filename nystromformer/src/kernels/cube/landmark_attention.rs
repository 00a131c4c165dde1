//! `F · W` without `F`: each query's softmax over the landmark keys, times `W = A⁺ (B V)`.
//!
//! The tensor-op form computes the `[n, m]` scores, masks them, takes the softmax in several
//! passes, zeroes missing columns and multiplies by `W`, writing and reading `F` between each
//! step. Here one unit owns one query row: it streams the `m` landmarks once through an online
//! softmax (`super::online_softmax`), so `F` only ever exists one entry at a time. A cube holds
//! [`ROWS_PER_CUBE`] queries of one head; the landmark keys and rows of `W` come past them in
//! tiles staged in shared memory (`super::tiles`), each loaded once per cube rather than once per
//! query. The queries are read in place from the head split's strided view. A query row taken as
//! zeros (padding) scores 0 against every landmark without being read, and a cube of such rows
//! alone runs no stage: its rows are the present landmarks' mean row of `W` (`uniform_rows`).
//!
//! For training, the kernel can also leave each row's softmax statistics over its landmarks
//! (`with_statistics`: its largest score and the log of its sum of exponentials), in f32
//! whatever the input type: the backward (`super::softmax_backward`) recomputes `F` from them
//! without the softmax's reductions.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::cube_sum::active_count;
use super::online_softmax::{add, dot, empty_state, load_row, maximum, total};
use super::tiles::{row_offset, rows_in_place, rows_per_tile, stage_rows};
use super::{flagged, flags_or, statistics_shape};
use crate::kernels::flags::Flags;

/// Query rows per cube, one per unit.
const ROWS_PER_CUBE: usize = 64;

/// Launches the kernel; see [`crate::kernels::fused_landmark_attention`] for the contract.
/// Returns the output and, with `with_statistics`, each row's softmax statistics (`[batch, heads,
/// n, 2]`, f32; zeros for a row without landmarks).
pub fn launch(
    queries: CubeTensor,
    landmark_keys: CubeTensor,
    weights: CubeTensor,
    missing: Flags<CubeBackend>,
    query_padding: Flags<CubeBackend>,
    with_statistics: bool,
) -> (CubeTensor, Option<CubeTensor>) {
    let queries = rows_in_place(queries);
    let landmark_keys = into_contiguous(landmark_keys);
    let weights = into_contiguous(weights);
    let (any_missing, queries_padded) = (missing.is_present(), query_padding.is_present());
    let missing = flags_or(missing, &landmark_keys);
    let query_padding = flags_or(query_padding, &landmark_keys);
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
    let softmax_statistics = empty_device_contiguous_dtype(
        client.clone(),
        queries.device.clone(),
        statistics_shape([batch, heads, n], with_statistics),
        DType::F32,
    );
    let row_tiles = n.div_ceil(ROWS_PER_CUBE);
    let cube_dim = CubeDim::new_1d(ROWS_PER_CUBE as u32);
    let cube_count = cubecl::calculate_cube_count_elemwise(
        &client,
        batch * heads * row_tiles * ROWS_PER_CUBE,
        cube_dim,
    );
    landmark_attention_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        queries.into_tensor_arg(),
        landmark_keys.into_tensor_arg(),
        weights.into_tensor_arg(),
        missing.into_tensor_arg(),
        query_padding.into_tensor_arg(),
        context.clone().into_tensor_arg(),
        softmax_statistics.clone().into_tensor_arg(),
        row_tiles,
        head_dim,
        value_dim,
        with_statistics,
        rows_per_tile(head_dim + value_dim),
        ROWS_PER_CUBE,
        any_missing,
        queries_padded,
        dtype_to_storage_type(dtype),
    );
    (context, with_statistics.then_some(softmax_statistics))
}

/// One cube per (matrix, tile of `units` query rows), one unit per row; `queries` may be strided
/// (last dimension contiguous), the other tensors are contiguous. The head sizes are compile-time
/// constants so that the row's query and accumulator live in registers. `missing` is read only
/// when `any_missing`; `query_padding` (`[batch, n]`, 1.0 at a query row taken as zeros, which
/// is never read) only when `queries_padded`. `softmax_statistics` gets each row's maximum and
/// log-sum when `with_statistics` (else it is a placeholder).
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
fn landmark_attention_kernel<F: Float>(
    queries: &Tensor<F>,
    landmark_keys: &Tensor<F>,
    weights: &Tensor<F>,
    missing: &Tensor<F>,
    query_padding: &Tensor<F>,
    context: &mut Tensor<F>,
    softmax_statistics: &mut Tensor<f32>,
    row_tiles: usize,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] with_statistics: bool,
    #[comptime] tile: usize,
    #[comptime] units: usize,
    #[comptime] any_missing: bool,
    #[comptime] queries_padded: bool,
    #[define(F)] _dtype: ElemType,
) {
    let heads = queries.shape(1);
    let n = queries.shape(2);
    let m = landmark_keys.shape(2);
    let cube = CUBE_POS;
    // Whole cubes past the end (the cube count is rounded up) leave before any barrier.
    if cube >= queries.shape(0) * heads * row_tiles {
        terminate!();
    }
    let matrix = cube / row_tiles; // batch · heads + head
    let batch = matrix / heads;
    let head = matrix % heads;
    let row = (cube % row_tiles) * units + UNIT_POS as usize;
    // Units past the last query still help to stage the tiles.
    let inside = row < n;
    // A padded query row counts as zeros.
    let mut read = inside;
    if inside {
        read = !flagged(query_padding, batch * n + row, queries_padded);
    }

    let query = load_row::<F, f32>(
        queries,
        row_offset(queries, batch, head, row),
        read,
        head_dim,
    );
    let mut state = empty_state::<f32>(value_dim);
    let mut key_tile = Shared::<[f32]>::new_slice(tile * head_dim);
    let mut weight_tile = Shared::<[f32]>::new_slice(tile * value_dim);
    // 1.0 where the tile's landmark is missing or past `m`: skipped.
    let mut skip_tile = Shared::<[f32]>::new_slice(tile);
    let mut stages = m.div_ceil(tile);
    if comptime!(queries_padded) {
        let mut partial = Shared::<[f32]>::new_slice(units);
        if active_count(read, &mut partial, units) == 0.0f32 {
            // Padded rows alone (the tail of a batch padded to its longest sequence): no
            // stage, each row the present landmarks' mean row of `W`.
            stages = 0;
            uniform_rows::<F>(
                weights,
                missing,
                context,
                softmax_statistics,
                matrix,
                batch,
                row,
                inside,
                value_dim,
                with_statistics,
                units,
                any_missing,
            );
        }
    }
    for stage in 0..stages {
        let first = stage * tile;
        let available = m - first;
        let first_row = matrix * m + first;
        stage_rows::<F, f32, Shared<[f32]>>(
            landmark_keys,
            &mut key_tile,
            first_row * head_dim,
            head_dim,
            available,
            tile,
            head_dim,
            units,
        );
        stage_rows::<F, f32, Shared<[f32]>>(
            weights,
            &mut weight_tile,
            first_row * value_dim,
            value_dim,
            available,
            tile,
            value_dim,
            units,
        );
        let unit = UNIT_POS as usize;
        if unit < tile {
            let mut skip = f32::new(1.0);
            if unit < available {
                skip = f32::new(0.0);
                if flagged(missing, batch * m + first + unit, any_missing) {
                    skip = f32::new(1.0);
                }
            }
            skip_tile[unit] = skip;
        }
        sync_cube();
        if inside {
            for t in 0..tile {
                if skip_tile[t] == 0.0f32 {
                    // A padded query row (zeros) scores 0 against every landmark.
                    let mut score = f32::new(0.0);
                    if read {
                        score =
                            dot::<f32, Shared<[f32]>>(&query, &key_tile, t * head_dim, head_dim);
                    }
                    add::<f32, Shared<[f32]>>(
                        &mut state,
                        score,
                        &weight_tile,
                        t * value_dim,
                        value_dim,
                    );
                }
            }
        }
        // The next stage overwrites the tiles.
        sync_cube();
    }
    if !inside || stages == 0 {
        terminate!();
    }

    // No landmark at all (a fully padded sequence): a zero row, as the tensor-op path gives.
    let row = matrix * n + row;
    let sum = total(&state, value_dim);
    let mut inverse = f32::new(0.0);
    if sum > 0.0f32 {
        inverse = f32::new(1.0) / sum;
    }
    #[unroll]
    for c in 0..value_dim {
        context[row * value_dim + c] = F::cast_from(state[c] * inverse);
    }
    // Only the training forward pays for the logarithm.
    if comptime!(with_statistics) {
        let (mut largest, mut log_sum) = (f32::new(0.0), f32::new(0.0));
        if sum > 0.0f32 {
            largest = maximum(&state, value_dim);
            log_sum = f32::ln(sum);
        }
        softmax_statistics[row * 2] = largest;
        softmax_statistics[row * 2 + 1] = log_sum;
    }
}

/// What a cube of query rows taken as zeros writes: each row scores 0 against every landmark, so
/// its softmax is uniform over the present ones and its output their mean row of `W`, with the
/// statistics `(0, ln(count))`; with none present, a zero row and zeros. The cube's units share the
/// mean's columns, then each writes its row. Every unit of the cube must call it.
#[cube]
#[allow(clippy::too_many_arguments)]
fn uniform_rows<F: Float>(
    weights: &Tensor<F>,
    missing: &Tensor<F>,
    context: &mut Tensor<F>,
    softmax_statistics: &mut Tensor<f32>,
    matrix: usize,
    batch: usize,
    row: usize,
    inside: bool,
    #[comptime] value_dim: usize,
    #[comptime] with_statistics: bool,
    #[comptime] units: usize,
    #[comptime] any_missing: bool,
) {
    let m = weights.shape(2);
    let mut present = f32::new(0.0);
    for j in 0..m {
        if !flagged(missing, batch * m + j, any_missing) {
            present += 1.0f32;
        }
    }
    let mut inverse = f32::new(0.0);
    if present > 0.0f32 {
        inverse = f32::new(1.0) / present;
    }
    let mut mean = Shared::<[f32]>::new_slice(value_dim);
    let mut c = UNIT_POS as usize;
    while c < value_dim {
        let mut sum = f32::new(0.0);
        for j in 0..m {
            if !flagged(missing, batch * m + j, any_missing) {
                sum += f32::cast_from(weights[(matrix * m + j) * value_dim + c]);
            }
        }
        mean[c] = sum * inverse;
        c += units;
    }
    sync_cube();
    if inside {
        let n = context.shape(2);
        let target = matrix * n + row;
        #[unroll]
        for c in 0..value_dim {
            context[target * value_dim + c] = F::cast_from(mean[c]);
        }
        if comptime!(with_statistics) {
            let mut log_sum = f32::new(0.0);
            if present > 0.0f32 {
                log_sum = f32::ln(present);
            }
            softmax_statistics[target * 2] = f32::new(0.0);
            softmax_statistics[target * 2 + 1] = log_sum;
        }
    }
}
