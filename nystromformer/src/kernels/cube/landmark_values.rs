//! `B · V` without `B`: each landmark query's softmax over all keys, times the values.
//!
//! `m` landmark rows are too few to keep a GPU busy if each unit swept all `n` keys, so the keys
//! are cut into chunks of [`CHUNK`]: a cube per (head, chunk) holds the landmark queries, one per
//! unit, and streams the chunk's keys and values past them in tiles staged in shared memory
//! (`super::tiles`, read in place from the head split's strided views). Each unit runs an online
//! softmax (`super::online_softmax`) over the chunk and leaves the partial results (running
//! maximum, sum of exponentials, weighted sum of value rows); a second kernel merges the chunks of
//! each landmark, rescaling each partial sum to the landmark's overall maximum. The `[m, n]`
//! kernel `B` is never written; the partial results take `d_v / CHUNK` of its size.
//!
//! For training, the merge can also leave each landmark's softmax statistics over the keys
//! (`with_statistics`: the overall maximum and the log of the merged sum), in f32 whatever the
//! input type, from which the backward (`super::softmax_backward`) recomputes `B`.
//!
//! Padded keys get the tensor-op path's finite masked score (`min_float`, in f32, raised to
//! `-1e29` if lower: `online_softmax::kernel_masked_score`, which gives the same weights) rather
//! than being skipped, so that a row whose every key is padded gets the same uniform weights
//! there and here; their keys are never read, since their score is a constant. Their values
//! count as zeros under the leak-free policy (`zero_padded`): then a padded key adds only its
//! weight to the normaliser, so the kernel counts them and adds them at the end of the chunk in
//! one step (`add_zero_rows`), with no value row staged or read, and NaN in the padding cannot
//! leak; a chunk that is all padding runs no stage at all. A batch padded to its longest sequence
//! thus pays little for its padding.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::cube_sum::unflagged_count;
use super::online_softmax::{
    MAX_START, add, add_zero_rows, dot, empty_state, kernel_masked_score, load_row, maximum, total,
};
use super::tiles::{row_offset, rows_in_place, rows_per_tile, stage_unflagged_rows};
use super::{flagged, flags_or, statistics_shape};
use crate::kernels::flags::Flags;

/// Keys per cube in the first kernel.
const CHUNK: usize = 256;

/// The most landmarks one cube of the first kernel holds; more take several cubes per chunk.
const MAX_LANDMARKS_PER_CUBE: usize = 128;

/// Units per cube of the merge kernel.
const MERGE_UNITS_PER_CUBE: u32 = 128;

/// Launches both kernels; see [`crate::kernels::fused_landmark_values`] for the contract. Returns
/// the output and, with `with_statistics`, each row's softmax statistics (`[batch, heads, m, 2]`,
/// f32).
#[allow(clippy::too_many_arguments)]
pub fn launch(
    landmark_queries: CubeTensor,
    keys: CubeTensor,
    values: CubeTensor,
    padding: Flags<CubeBackend>,
    missing: Flags<CubeBackend>,
    masked_score: f32,
    zero_padded: bool,
    with_statistics: bool,
) -> (CubeTensor, Option<CubeTensor>) {
    let masked_score = kernel_masked_score(masked_score);
    let landmark_queries = into_contiguous(landmark_queries);
    let keys = rows_in_place(keys);
    let values = rows_in_place(values);
    let (padded, any_missing) = (padding.is_present(), missing.is_present());
    let padding = flags_or(padding, &landmark_queries);
    let missing = flags_or(missing, &landmark_queries);
    let [batch, heads, m, head_dim] = landmark_queries.meta.shape().dims::<4>();
    let n = keys.meta.shape()[2];
    let value_dim = values.meta.shape()[3];
    let chunks = n.div_ceil(CHUNK);
    let matrices = batch * heads;

    let client = landmark_queries.client.clone();
    let device = landmark_queries.device.clone();
    let dtype = landmark_queries.dtype;
    let empty = |shape: Shape, dtype: DType| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), shape, dtype)
    };
    // Per (matrix, chunk, landmark): the running maximum and sum, and the weighted value sum, in
    // f32 whatever the input type.
    let statistics = empty(Shape::new([matrices, chunks, m, 2]), DType::F32);
    let partial_values = empty(Shape::new([matrices, chunks, m, value_dim]), DType::F32);
    let output = empty(Shape::new([batch, heads, m, value_dim]), dtype);
    let softmax_statistics = empty(
        statistics_shape([batch, heads, m], with_statistics),
        DType::F32,
    );

    // At least a warp's worth of units, so that small m still loads its tiles quickly.
    let units = m.next_power_of_two().clamp(32, MAX_LANDMARKS_PER_CUBE);
    let groups = m.div_ceil(units);
    let cube_dim = CubeDim::new_1d(units as u32);
    chunk_kernel::launch(
        &client,
        cubecl::calculate_cube_count_elemwise(
            &client,
            matrices * chunks * groups * units,
            cube_dim,
        ),
        cube_dim,
        landmark_queries.into_tensor_arg(),
        keys.into_tensor_arg(),
        values.into_tensor_arg(),
        padding.into_tensor_arg(),
        statistics.clone().into_tensor_arg(),
        partial_values.clone().into_tensor_arg(),
        CHUNK,
        groups,
        masked_score,
        head_dim,
        value_dim,
        rows_per_tile(head_dim + value_dim),
        units,
        padded,
        // Without padding there is nothing to zero.
        padded && zero_padded,
        dtype_to_storage_type(dtype),
    );
    let cube_dim =
        CubeDim::new_1d(MERGE_UNITS_PER_CUBE.min(client.properties().hardware.max_units_per_cube));
    merge_kernel::launch(
        &client,
        cubecl::calculate_cube_count_elemwise(&client, matrices * m, cube_dim),
        cube_dim,
        statistics.into_tensor_arg(),
        partial_values.into_tensor_arg(),
        missing.into_tensor_arg(),
        output.clone().into_tensor_arg(),
        softmax_statistics.clone().into_tensor_arg(),
        heads,
        value_dim,
        with_statistics,
        any_missing,
        dtype_to_storage_type(dtype),
    );
    (output, with_statistics.then_some(softmax_statistics))
}

/// One cube per (matrix, chunk, group of `units` landmarks), one unit per landmark. `keys` and
/// `values` may be strided (last dimension contiguous); `padding` is `[batch, n]`, 1.0 at padded
/// keys (never read), and read only when `padded`; with `zero_padded` (only with `padded`) their
/// values count as zeros and are never read either.
// The `comptime!` conditions stay apart from the runtime ones they guard: joined, they would be
// compiled as runtime branches.
#[allow(clippy::collapsible_if)]
#[cube(launch)]
fn chunk_kernel<F: Float>(
    landmark_queries: &Tensor<F>,
    keys: &Tensor<F>,
    values: &Tensor<F>,
    padding: &Tensor<F>,
    statistics: &mut Tensor<f32>,
    partial_values: &mut Tensor<f32>,
    chunk_len: usize,
    groups: usize,
    masked_score: f32,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] tile: usize,
    #[comptime] units: usize,
    #[comptime] padded: bool,
    #[comptime] zero_padded: bool,
    #[define(F)] _dtype: ElemType,
) {
    let heads = landmark_queries.shape(1);
    let m = landmark_queries.shape(2);
    let n = keys.shape(2);
    let chunks = statistics.shape(1);
    let cube = CUBE_POS;
    // Whole cubes past the end (the cube count is rounded up) leave before any barrier.
    if cube >= statistics.shape(0) * chunks * groups {
        terminate!();
    }
    let group = cube % groups;
    let chunk = (cube / groups) % chunks;
    let matrix = cube / (groups * chunks);
    let batch = matrix / heads;
    let head = matrix % heads;
    let landmark = group * units + UNIT_POS as usize;
    // Units past the last landmark still help to stage the tiles.
    let inside = landmark < m;

    let query = load_row::<F, f32>(
        landmark_queries,
        (matrix * m + landmark) * head_dim,
        inside,
        head_dim,
    );
    let mut state = empty_state::<f32>(value_dim);
    let mut key_tile = Shared::<[f32]>::new_slice(tile * head_dim);
    let mut value_tile = Shared::<[f32]>::new_slice(tile * value_dim);
    // Per key of the tile: 0.0 valid, 1.0 padded (the masked score), 2.0 past the chunk.
    let mut kind_tile = Shared::<[f32]>::new_slice(tile);
    let start = chunk * chunk_len;
    let mut end = start + chunk_len;
    if end > n {
        end = n;
    }
    let key_stride = keys.stride(2);
    let value_stride = values.stride(2);
    // Padded keys met so far, with `zero_padded`: added to the state after the last stage.
    let mut zero_rows = f32::new(0.0);
    let mut stages = (end - start).div_ceil(tile);
    if comptime!(zero_padded) {
        // A chunk of padding alone (the tail of a batch padded to its longest sequence) only
        // adds its count: the cube skips its stages (see `super::cube_sum`).
        let mut partial = Shared::<[f32]>::new_slice(units);
        let valid =
            unflagged_count::<F>(padding, batch * n + start, end - start, &mut partial, units);
        if valid == 0.0f32 {
            zero_rows = (end - start) as f32;
            stages = 0;
        }
    }
    for stage in 0..stages {
        let first = start + stage * tile;
        let available = end - first;
        stage_unflagged_rows::<F, f32, Shared<[f32]>>(
            keys,
            &mut key_tile,
            row_offset(keys, batch, head, first),
            key_stride,
            available,
            padding,
            batch * n + first,
            padded,
            tile,
            head_dim,
            units,
        );
        stage_unflagged_rows::<F, f32, Shared<[f32]>>(
            values,
            &mut value_tile,
            row_offset(values, batch, head, first),
            value_stride,
            available,
            padding,
            batch * n + first,
            zero_padded,
            tile,
            value_dim,
            units,
        );
        let unit = UNIT_POS as usize;
        if unit < tile {
            let mut kind = f32::new(2.0);
            if unit < available {
                kind = f32::new(0.0);
                if flagged(padding, batch * n + first + unit, padded) {
                    kind = f32::new(1.0);
                }
            }
            kind_tile[unit] = kind;
        }
        sync_cube();
        if inside {
            for t in 0..tile {
                let kind = kind_tile[t];
                if kind == 0.0f32 {
                    let score =
                        dot::<f32, Shared<[f32]>>(&query, &key_tile, t * head_dim, head_dim);
                    add::<f32, Shared<[f32]>>(
                        &mut state,
                        score,
                        &value_tile,
                        t * value_dim,
                        value_dim,
                    );
                }
                // Compiled only for padded keys: a branch that never runs still costs on devices
                // that run both sides of a branch under a mask (lavapipe).
                if comptime!(padded) {
                    if kind == 1.0f32 {
                        if comptime!(zero_padded) {
                            zero_rows += 1.0f32;
                        } else {
                            add::<f32, Shared<[f32]>>(
                                &mut state,
                                masked_score,
                                &value_tile,
                                t * value_dim,
                                value_dim,
                            );
                        }
                    }
                }
            }
        }
        // The next stage overwrites the tiles.
        sync_cube();
    }
    if !inside {
        terminate!();
    }
    if comptime!(zero_padded) {
        if zero_rows > 0.0f32 {
            add_zero_rows::<f32>(&mut state, masked_score, zero_rows, value_dim);
        }
    }

    let unit = (matrix * chunks + chunk) * m + landmark;
    statistics[unit * 2] = maximum(&state, value_dim);
    statistics[unit * 2 + 1] = total(&state, value_dim);
    #[unroll]
    for c in 0..value_dim {
        partial_values[unit * value_dim + c] = state[c];
    }
}

/// One unit per (matrix, landmark): merges the chunks' partial softmax sums. `missing` is
/// `[batch, m]`, 1.0 where a segment is not a landmark (its row is zero), and read only when
/// `any_missing`. `softmax_statistics` gets each row's maximum and log-sum when
/// `with_statistics` (else it is a placeholder).
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
fn merge_kernel<F: Float>(
    statistics: &Tensor<f32>,
    partial_values: &Tensor<f32>,
    missing: &Tensor<F>,
    output: &mut Tensor<F>,
    softmax_statistics: &mut Tensor<f32>,
    heads: usize,
    #[comptime] value_dim: usize,
    #[comptime] with_statistics: bool,
    #[comptime] any_missing: bool,
    #[define(F)] _dtype: ElemType,
) {
    let row = ABSOLUTE_POS;
    if row >= output.len() / value_dim {
        terminate!();
    }
    let chunks = statistics.shape(1);
    let m = statistics.shape(2);
    let landmark = row % m;
    let matrix = row / m;
    let batch = matrix / heads;

    let mut overall_max = f32::new(MAX_START);
    for chunk in 0..chunks {
        let unit = (matrix * chunks + chunk) * m + landmark;
        let chunk_max = statistics[unit * 2];
        if chunk_max > overall_max {
            overall_max = chunk_max;
        }
    }
    let mut accumulator = Array::<f32>::new(value_dim);
    #[unroll]
    for c in 0..value_dim {
        accumulator[c] = f32::new(0.0);
    }
    let mut total = f32::new(0.0);
    for chunk in 0..chunks {
        let unit = (matrix * chunks + chunk) * m + landmark;
        let rescale = f32::exp(statistics[unit * 2] - overall_max);
        total += rescale * statistics[unit * 2 + 1];
        #[unroll]
        for c in 0..value_dim {
            accumulator[c] += rescale * partial_values[unit * value_dim + c];
        }
    }

    let mut inverse = f32::new(1.0) / total;
    if flagged(missing, batch * m + landmark, any_missing) {
        inverse = f32::new(0.0);
    }
    #[unroll]
    for c in 0..value_dim {
        output[row * value_dim + c] = F::cast_from(accumulator[c] * inverse);
    }
    if comptime!(with_statistics) {
        softmax_statistics[row * 2] = overall_max;
        softmax_statistics[row * 2 + 1] = f32::ln(total);
    }
}
