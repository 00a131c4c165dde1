//! The backward of a softmax product `O = softmax(Q Kᵀ) V` (`F · W` and `B · V`) in two kernels,
//! FlashAttention-2 style: `P` is recomputed from the scores and each row's statistics that the
//! forward kernel left, its largest score `M` and `L = ln Σ exp(s − M)`, and never stored. With
//! `D = rowsum(dO ∘ O)`:
//!
//! ```text
//! s = q·k,  p = exp(s − M − L),  dp = dO·v,  ds = p (dp − D)
//! dQ = Σ over keys of ds k           (the query kernel: a unit per query row)
//! dK = Σ over queries of ds q,  dV = Σ over queries of p dO      (the key kernel: a unit per key)
//! ```
//!
//! Each kernel gives a unit one row of its own side and streams the other side's rows past the
//! cube in tiles staged in shared memory (`super::tiles`), as the forward kernels do. The other
//! side may be long (the `n` keys of `B · V`, the `n` queries of `F · W`): it is cut into chunks of
//! [`CHUNK`], one cube per chunk, each leaving a partial sum in f32 that one reduction adds up.
//!
//! Masks, as the tensor-op backward (`kernels/backward.rs`) has them: a flagged key is either
//! skipped (a missing landmark of `F · W`: zero weight; a padded key of `B · V` taken as zeros
//! with its value: its weight meets a zero value) or scored at the constant masked score (a
//! padded key of `B · V` taken as it is: it keeps its weight, but its score has no gradient); a
//! flagged query row (a missing landmark of `B · V`, whose output was zeroed) passes no gradient;
//! a zeroed query row (a padded query of `F · W`) is read as zeros and gets no gradient, but its
//! output still passes one to the values.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::cube_sum::{active_count, unflagged_count};
use super::online_softmax::{dot, kernel_masked_score, load_row};
use super::tiles::{row_offset, rows_in_place, rows_per_tile, stage_rows, stage_unflagged_rows};
use super::{flagged, flags_or};
use crate::kernels::flags::Flags;
use crate::kernels::reference::cast_to;

/// Rows of the other side per cube: past it, a cube's partial sum is written and added later.
const CHUNK: usize = 256;

/// Rows of a kernel's own side per cube, one per unit.
const UNITS: usize = 64;

/// What a flagged key means.
#[derive(Debug, Clone, Copy)]
pub enum FlaggedKeys {
    /// No weight and no gradient: left out of the softmax (missing landmarks), or kept in its
    /// normaliser through the saved statistics with a zero value (padded keys taken as zeros),
    /// which adds nothing to any other gradient either.
    Skipped,
    /// Scored at this constant (padded keys).
    Scored(f32),
}

/// The saved forward of one product and the gradient of its output; every tensor
/// `[batch, heads, rows, columns]`, any strides with a contiguous last dimension.
pub struct ProductBackward {
    /// `Q`, the scale already in it.
    pub queries: CubeTensor,
    /// `K`.
    pub keys: CubeTensor,
    /// `V`.
    pub values: CubeTensor,
    /// `O`.
    pub output: CubeTensor,
    /// `M` and `L`, `[batch, heads, queries, 2]`, f32.
    pub softmax_statistics: CubeTensor,
    /// `dO`.
    pub grad: CubeTensor,
    /// `[batch, keys]` flags, and what they mean.
    pub key_flags: Flags<CubeBackend>,
    /// See [`FlaggedKeys`].
    pub flagged_keys: FlaggedKeys,
    /// `[batch, queries]` flags: rows with no gradient.
    pub row_flags: Flags<CubeBackend>,
    /// `[batch, queries]` flags: query rows taken as zeros (never read; no gradient).
    pub zeroed_rows: Flags<CubeBackend>,
}

/// Launches both kernels (and the reductions of their chunks): `(dQ, dK, dV)` in the queries'
/// type.
pub fn launch(product: ProductBackward) -> (CubeTensor, CubeTensor, CubeTensor) {
    let ProductBackward {
        queries,
        keys,
        values,
        output,
        softmax_statistics,
        grad,
        key_flags,
        flagged_keys,
        row_flags,
        zeroed_rows,
    } = product;
    let [queries, keys, values, output, softmax_statistics, grad] =
        [queries, keys, values, output, softmax_statistics, grad].map(rows_in_place);
    let (keys_flagged, rows_flagged) = (key_flags.is_present(), row_flags.is_present());
    let rows_zeroed = zeroed_rows.is_present();
    let key_flags = flags_or(key_flags, &queries);
    let row_flags = flags_or(row_flags, &queries);
    let zeroed_rows = flags_or(zeroed_rows, &queries);
    let (skip_flagged, masked_score) = match flagged_keys {
        FlaggedKeys::Skipped => (true, 0.0),
        // As the forward scored them (`landmark_values::launch`).
        FlaggedKeys::Scored(score) => (false, kernel_masked_score(score)),
    };
    let [batch, heads, rows, head_dim] = queries.meta.shape().dims::<4>();
    let columns = keys.meta.shape()[2];
    let value_dim = values.meta.shape()[3];
    let matrices = batch * heads;

    let client = queries.client.clone();
    let device = queries.device.clone();
    let dtype = queries.dtype;
    let partial = |chunks: usize, len: usize, width: usize| {
        empty_device_contiguous_dtype(
            client.clone(),
            device.clone(),
            Shape::new([chunks, matrices, len, width]),
            DType::F32,
        )
    };
    let cube_dim = CubeDim::new_1d(UNITS as u32);
    let cube_count =
        |cubes: usize| cubecl::calculate_cube_count_elemwise(&client, cubes * UNITS, cube_dim);

    let (row_tiles, column_chunks) = (rows.div_ceil(UNITS), columns.div_ceil(CHUNK));
    let query_grad = partial(column_chunks, rows, head_dim);
    query_grad_kernel::launch(
        &client,
        cube_count(matrices * row_tiles * column_chunks),
        cube_dim,
        queries.clone().into_tensor_arg(),
        keys.clone().into_tensor_arg(),
        values.clone().into_tensor_arg(),
        output.clone().into_tensor_arg(),
        softmax_statistics.clone().into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        key_flags.clone().into_tensor_arg(),
        row_flags.clone().into_tensor_arg(),
        zeroed_rows.clone().into_tensor_arg(),
        query_grad.clone().into_tensor_arg(),
        CHUNK,
        row_tiles,
        head_dim,
        value_dim,
        rows_per_tile(head_dim + value_dim),
        UNITS,
        keys_flagged,
        rows_flagged,
        rows_zeroed,
        dtype_to_storage_type(dtype),
    );

    let (column_tiles, row_chunks) = (columns.div_ceil(UNITS), rows.div_ceil(CHUNK));
    let key_grad = partial(row_chunks, columns, head_dim);
    let value_grad = partial(row_chunks, columns, value_dim);
    key_grad_kernel::launch(
        &client,
        cube_count(matrices * column_tiles * row_chunks),
        cube_dim,
        queries.into_tensor_arg(),
        keys.into_tensor_arg(),
        values.into_tensor_arg(),
        output.into_tensor_arg(),
        softmax_statistics.into_tensor_arg(),
        grad.into_tensor_arg(),
        key_flags.into_tensor_arg(),
        row_flags.into_tensor_arg(),
        zeroed_rows.into_tensor_arg(),
        key_grad.clone().into_tensor_arg(),
        value_grad.clone().into_tensor_arg(),
        CHUNK,
        column_tiles,
        masked_score,
        head_dim,
        value_dim,
        rows_per_tile(head_dim + value_dim + ROW_STATISTICS),
        UNITS,
        keys_flagged,
        skip_flagged,
        rows_flagged,
        rows_zeroed,
        dtype_to_storage_type(dtype),
    );

    let total = |partial: CubeTensor, len: usize, width: usize| {
        sum_chunks::<CubeBackend>(partial, Shape::new([batch, heads, len, width]), dtype)
    };
    (
        total(query_grad, rows, head_dim),
        total(key_grad, columns, head_dim),
        total(value_grad, columns, value_dim),
    )
}

/// The sum of `[chunks, matrices, rows, width]` partial results over the chunks, as `shape` in
/// `dtype`.
fn sum_chunks<B: Backend>(partial: FloatTensor<B>, shape: Shape, dtype: DType) -> FloatTensor<B> {
    let summed = match partial.shape()[0] {
        1 => partial,
        _ => B::float_sum_dim(partial, 0),
    };
    cast_to::<B>(B::float_reshape(summed, shape), dtype)
}

/// One cube per (matrix, tile of `units` query rows, chunk of `chunk_len` keys), one unit per
/// query row: its part of `dQ` over the chunk's keys, into `query_grad`
/// (`[chunks, matrices, rows, head_dim]`). Flagged keys (either meaning) give `dQ` nothing;
/// flagged and zeroed rows get zero.
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
fn query_grad_kernel<F: Float>(
    queries: &Tensor<F>,
    keys: &Tensor<F>,
    values: &Tensor<F>,
    output: &Tensor<F>,
    softmax_statistics: &Tensor<f32>,
    grad: &Tensor<F>,
    key_flags: &Tensor<F>,
    row_flags: &Tensor<F>,
    zeroed_rows: &Tensor<F>,
    query_grad: &mut Tensor<f32>,
    chunk_len: usize,
    row_tiles: usize,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] tile: usize,
    #[comptime] units: usize,
    #[comptime] keys_flagged: bool,
    #[comptime] rows_flagged: bool,
    #[comptime] rows_zeroed: bool,
    #[define(F)] _dtype: ElemType,
) {
    let heads = queries.shape(1);
    let rows = queries.shape(2);
    let columns = keys.shape(2);
    let matrices = query_grad.shape(1);
    let chunks = query_grad.shape(0);
    let cube = CUBE_POS;
    // Whole cubes past the end (the cube count is rounded up) leave before any barrier.
    if cube >= matrices * row_tiles * chunks {
        terminate!();
    }
    let row_tile = cube % row_tiles;
    let chunk = (cube / row_tiles) % chunks;
    let matrix = cube / (row_tiles * chunks);
    let (batch, head) = (matrix / heads, matrix % heads);
    let row = row_tile * units + UNIT_POS as usize;
    // Units past the last row, or on a flagged or zeroed one, still help to stage the tiles.
    let inside = row < rows;
    let mut active = false;
    if inside {
        active = !flagged(row_flags, batch * rows + row, rows_flagged)
            && !flagged(zeroed_rows, batch * rows + row, rows_zeroed);
    }

    let query = load_row::<F, f32>(
        queries,
        row_offset(queries, batch, head, row),
        active,
        head_dim,
    );
    let row_grad = load_row::<F, f32>(grad, row_offset(grad, batch, head, row), inside, value_dim);
    let row_output = load_row::<F, f32>(
        output,
        row_offset(output, batch, head, row),
        inside,
        value_dim,
    );
    let mut row_dot = f32::new(0.0);
    #[unroll]
    for c in 0..value_dim {
        row_dot += row_grad[c] * row_output[c];
    }
    let (mut row_max, mut row_log_sum) = (f32::new(0.0), f32::new(0.0));
    if inside {
        let at = row_offset(softmax_statistics, batch, head, row);
        row_max = softmax_statistics[at];
        row_log_sum = softmax_statistics[at + 1];
    }
    let mut sums = Array::<f32>::new(head_dim);
    #[unroll]
    for c in 0..head_dim {
        sums[c] = f32::new(0.0);
    }

    let mut key_tile = Shared::<[f32]>::new_slice(tile * head_dim);
    let mut value_tile = Shared::<[f32]>::new_slice(tile * value_dim);
    // 1.0 where the tile's key counts, 0.0 where it is flagged or past the chunk.
    let mut counts_tile = Shared::<[f32]>::new_slice(tile);
    let start = chunk * chunk_len;
    let mut end = start + chunk_len;
    if end > columns {
        end = columns;
    }
    let mut stages = (end - start).div_ceil(tile);
    if comptime!(keys_flagged || rows_flagged || rows_zeroed) {
        // No row of the cube takes a gradient (padded queries), or no key of the chunk gives
        // one (padded keys): the cube's sums stay zero without a stage.
        let mut partial = Shared::<[f32]>::new_slice(units);
        let mut idle = active_count(active, &mut partial, units) == 0.0f32;
        if comptime!(keys_flagged) {
            let keys = unflagged_count::<F>(
                key_flags,
                batch * columns + start,
                end - start,
                &mut partial,
                units,
            );
            idle = idle || keys == 0.0f32;
        }
        if idle {
            stages = 0;
        }
    }
    for stage in 0..stages {
        let first = start + stage * tile;
        let available = end - first;
        // A flagged key is never used here: its rows are staged as zeros, unread.
        stage_unflagged_rows::<F, f32, Shared<[f32]>>(
            keys,
            &mut key_tile,
            row_offset(keys, batch, head, first),
            keys.stride(2),
            available,
            key_flags,
            batch * columns + first,
            keys_flagged,
            tile,
            head_dim,
            units,
        );
        stage_unflagged_rows::<F, f32, Shared<[f32]>>(
            values,
            &mut value_tile,
            row_offset(values, batch, head, first),
            values.stride(2),
            available,
            key_flags,
            batch * columns + first,
            keys_flagged,
            tile,
            value_dim,
            units,
        );
        let unit = UNIT_POS as usize;
        if unit < tile {
            let mut counts = f32::new(0.0);
            // Nested, so that a key past the chunk never reads its flag.
            if unit < available {
                let skipped = flagged(key_flags, batch * columns + first + unit, keys_flagged);
                if !skipped {
                    counts = f32::new(1.0);
                }
            }
            counts_tile[unit] = counts;
        }
        sync_cube();
        if active {
            for t in 0..tile {
                if counts_tile[t] > 0.5f32 {
                    let score =
                        dot::<f32, Shared<[f32]>>(&query, &key_tile, t * head_dim, head_dim);
                    let p = f32::exp((score - row_max) - row_log_sum);
                    let dp =
                        dot::<f32, Shared<[f32]>>(&row_grad, &value_tile, t * value_dim, value_dim);
                    let ds = p * (dp - row_dot);
                    #[unroll]
                    for c in 0..head_dim {
                        sums[c] += ds * key_tile[t * head_dim + c];
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
    let target = ((chunk * matrices + matrix) * rows + row) * head_dim;
    #[unroll]
    for c in 0..head_dim {
        query_grad[target + c] = sums[c];
    }
}

/// Entries per query row staged beside its query and gradient rows in the key kernel: `M`, `L`,
/// `D`, and its kind: 0.0 if it passes no gradient, 1.0 if it does, 2.0 if it does and its query
/// is zeroed (so its score is 0 and it gives `dK` nothing).
const ROW_STATISTICS: usize = 4;

/// One cube per (matrix, tile of `units` keys, chunk of `chunk_len` query rows), one unit per
/// key: its part of `dK` and `dV` over the chunk's rows, into `key_grad` and `value_grad`
/// (`[chunks, matrices, columns, _]`).
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
fn key_grad_kernel<F: Float>(
    queries: &Tensor<F>,
    keys: &Tensor<F>,
    values: &Tensor<F>,
    output: &Tensor<F>,
    softmax_statistics: &Tensor<f32>,
    grad: &Tensor<F>,
    key_flags: &Tensor<F>,
    row_flags: &Tensor<F>,
    zeroed_rows: &Tensor<F>,
    key_grad: &mut Tensor<f32>,
    value_grad: &mut Tensor<f32>,
    chunk_len: usize,
    column_tiles: usize,
    masked_score: f32,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] tile: usize,
    #[comptime] units: usize,
    #[comptime] keys_flagged: bool,
    #[comptime] skip_flagged: bool,
    #[comptime] rows_flagged: bool,
    #[comptime] rows_zeroed: bool,
    #[define(F)] _dtype: ElemType,
) {
    let heads = queries.shape(1);
    let rows = queries.shape(2);
    let columns = keys.shape(2);
    let matrices = key_grad.shape(1);
    let chunks = key_grad.shape(0);
    let cube = CUBE_POS;
    if cube >= matrices * column_tiles * chunks {
        terminate!();
    }
    let column_tile = cube % column_tiles;
    let chunk = (cube / column_tiles) % chunks;
    let matrix = cube / (column_tiles * chunks);
    let (batch, head) = (matrix / heads, matrix % heads);
    let column = column_tile * units + UNIT_POS as usize;
    let inside = column < columns;
    let mut key_flagged = false;
    if inside {
        key_flagged = flagged(key_flags, batch * columns + column, keys_flagged);
    }
    // A skipped key gets no gradient (no weight, or a zero value); a scored one keeps its
    // weight, whose value gets a gradient, but its score gets none.
    let mut active = inside;
    if comptime!(skip_flagged) {
        active = inside && !key_flagged;
    }

    // A flagged key's own rows are never used: its score is a constant, and its value meets
    // the gradient only through that score.
    let key = load_row::<F, f32>(
        keys,
        row_offset(keys, batch, head, column),
        inside && !key_flagged,
        head_dim,
    );
    let value = load_row::<F, f32>(
        values,
        row_offset(values, batch, head, column),
        inside && !key_flagged,
        value_dim,
    );
    let mut key_sums = Array::<f32>::new(head_dim);
    #[unroll]
    for c in 0..head_dim {
        key_sums[c] = f32::new(0.0);
    }
    let mut value_sums = Array::<f32>::new(value_dim);
    #[unroll]
    for c in 0..value_dim {
        value_sums[c] = f32::new(0.0);
    }

    let mut query_tile = Shared::<[f32]>::new_slice(tile * head_dim);
    let mut grad_tile = Shared::<[f32]>::new_slice(tile * value_dim);
    let mut statistics_tile = Shared::<[f32]>::new_slice(tile * ROW_STATISTICS);
    let start = chunk * chunk_len;
    let mut end = start + chunk_len;
    if end > rows {
        end = rows;
    }
    let mut stages = (end - start).div_ceil(tile);
    if comptime!(keys_flagged && skip_flagged) {
        // Every key of the cube skipped (a tile of padded keys taken as zeros): its sums stay
        // zero without a stage.
        let mut partial = Shared::<[f32]>::new_slice(units);
        if active_count(active, &mut partial, units) == 0.0f32 {
            stages = 0;
        }
    }
    for stage in 0..stages {
        let first = start + stage * tile;
        let available = end - first;
        stage_unflagged_rows::<F, f32, Shared<[f32]>>(
            queries,
            &mut query_tile,
            row_offset(queries, batch, head, first),
            queries.stride(2),
            available,
            zeroed_rows,
            batch * rows + first,
            rows_zeroed,
            tile,
            head_dim,
            units,
        );
        stage_rows::<F, f32, Shared<[f32]>>(
            grad,
            &mut grad_tile,
            row_offset(grad, batch, head, first),
            grad.stride(2),
            available,
            tile,
            value_dim,
            units,
        );
        let unit = UNIT_POS as usize;
        if unit < tile {
            let row = first + unit;
            let mut statistics = Array::<f32>::new(ROW_STATISTICS);
            #[unroll]
            for s in 0..ROW_STATISTICS {
                statistics[s] = f32::new(0.0);
            }
            let mut passes = false;
            if unit < available {
                passes = !flagged(row_flags, batch * rows + row, rows_flagged);
            }
            if passes {
                let (grad_row, output_row) = (
                    row_offset(grad, batch, head, row),
                    row_offset(output, batch, head, row),
                );
                let mut row_dot = f32::new(0.0);
                for c in 0..value_dim {
                    row_dot +=
                        f32::cast_from(grad[grad_row + c]) * f32::cast_from(output[output_row + c]);
                }
                let at = row_offset(softmax_statistics, batch, head, row);
                statistics[0] = softmax_statistics[at];
                statistics[1] = softmax_statistics[at + 1];
                statistics[2] = row_dot;
                statistics[3] = f32::new(1.0);
                if flagged(zeroed_rows, batch * rows + row, rows_zeroed) {
                    statistics[3] = f32::new(2.0);
                }
            }
            #[unroll]
            for s in 0..ROW_STATISTICS {
                statistics_tile[unit * ROW_STATISTICS + s] = statistics[s];
            }
        }
        sync_cube();
        if active {
            for t in 0..tile {
                let statistics = t * ROW_STATISTICS;
                let kind = statistics_tile[statistics + 3];
                if kind > 0.5f32 {
                    // Padding rows (a zeroed query) only take their weight's share of `dV`.
                    let mut zeroed = false;
                    if comptime!(rows_zeroed) {
                        zeroed = kind > 1.5f32;
                    }
                    let mut score = masked_score;
                    if !key_flagged {
                        score = f32::new(0.0);
                        if !zeroed {
                            score = dot::<f32, Shared<[f32]>>(
                                &key,
                                &query_tile,
                                t * head_dim,
                                head_dim,
                            );
                        }
                    }
                    let p = f32::exp(
                        (score - statistics_tile[statistics]) - statistics_tile[statistics + 1],
                    );
                    #[unroll]
                    for c in 0..value_dim {
                        value_sums[c] += p * grad_tile[t * value_dim + c];
                    }
                    if !key_flagged && !zeroed {
                        let dp =
                            dot::<f32, Shared<[f32]>>(&value, &grad_tile, t * value_dim, value_dim);
                        let ds = p * (dp - statistics_tile[statistics + 2]);
                        #[unroll]
                        for c in 0..head_dim {
                            key_sums[c] += ds * query_tile[t * head_dim + c];
                        }
                    }
                }
            }
        }
        sync_cube();
    }
    if !inside {
        terminate!();
    }
    let target = (chunk * matrices + matrix) * columns + column;
    #[unroll]
    for c in 0..head_dim {
        key_grad[target * head_dim + c] = key_sums[c];
    }
    #[unroll]
    for c in 0..value_dim {
        value_grad[target * value_dim + c] = value_sums[c];
    }
}
