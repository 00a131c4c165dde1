//! `W = A⁺ (B V)` from the landmarks in one launch: `A = softmax(Q̃ K̃ᵀ)`, its coefficient `c`,
//! the whole pseudo-inverse iteration and the product with `B V`, one cube per matrix.
//!
//! Between the two softmax products the tensor-op path runs a dozen launches on `m × m`
//! matrices: the scores' product, the softmax's reductions and masks, the column sums and their
//! maximum for `c`, the iteration, and the product with `B V`. None of them fills a GPU, so each
//! costs its launch; here a cube does them all in turn, with the matrices in a global work buffer
//! (in f32, whatever the input type) and a storage barrier between steps, and the iteration is
//! the pseudo-inverse kernel's own ([`super::pinv::invert`]).
//!
//! A sequence of at most `m` valid keys takes its values' segment means as its rows of `W`
//! (each of its keys is a landmark of its own, so `F · W` is then its exact attention): the
//! tensor-op path spends a launch on the means and one on the selection.
//!
//! The coefficient is `c = ‖A‖₁` of each matrix ([`PinvInit::Exact`](crate::PinvInit::Exact));
//! [`PinvInit::Original`](crate::PinvInit::Original) takes its `c` from the whole batch, which
//! one cube cannot see, and stays on the separate pseudo-inverse kernel.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::blocks::GRID;
use super::landmark_means::{ranked_mean, sequence_of};
use super::online_softmax::MAX_START;
use super::pinv::{WORK_SLOTS, invert};
use super::tiles::rows_in_place;
use super::{flagged, flags_or};
use crate::attention::pinv::MIN_COEFFICIENT;
use crate::kernels::flags::Flags;
use crate::kernels::segment_rows::SegmentRows;

/// Launches the kernel; see [`crate::kernels::fused_landmark_weights`] for the contract, and
/// [`PinvOps::landmark_weights`](crate::kernels::extension::PinvOps::landmark_weights) for
/// `values` and `key_rows` (the short sequences).
#[allow(clippy::too_many_arguments)]
pub fn launch(
    landmark_queries: CubeTensor,
    landmark_keys: CubeTensor,
    landmark_values: CubeTensor,
    missing_queries: Flags<CubeBackend>,
    missing_keys: Flags<CubeBackend>,
    values: CubeTensor,
    key_rows: SegmentRows<CubeBackend>,
    iterations: usize,
) -> CubeTensor {
    let landmark_queries = into_contiguous(landmark_queries);
    let landmark_keys = into_contiguous(landmark_keys);
    let landmark_values = into_contiguous(landmark_values);
    let short = ShortSequences::new(key_rows, values, &landmark_values);
    let masked = [missing_queries.is_present(), missing_keys.is_present()];
    let missing_queries = flags_or(missing_queries, &landmark_queries);
    let missing_keys = flags_or(missing_keys, &landmark_queries);
    let [batch, heads, m, head_dim] = landmark_queries.meta.shape().dims::<4>();
    let value_dim = landmark_values.meta.shape()[3];
    let matrices = batch * heads;

    let client = landmark_queries.client.clone();
    let device = landmark_queries.device.clone();
    let dtype = landmark_queries.dtype;
    let weights = empty_device_contiguous_dtype(
        client.clone(),
        device.clone(),
        Shape::new([batch, heads, m, value_dim]),
        dtype,
    );
    let work = empty_device_contiguous_dtype(
        client.clone(),
        device,
        Shape::new([matrices, WORK_SLOTS, m, m]),
        DType::F32,
    );
    landmark_weights_kernel::launch(
        &client,
        CubeCount::new_1d(matrices as u32),
        CubeDim::new_1d((GRID * GRID) as u32),
        landmark_queries.into_tensor_arg(),
        landmark_keys.into_tensor_arg(),
        landmark_values.into_tensor_arg(),
        missing_queries.into_tensor_arg(),
        missing_keys.into_tensor_arg(),
        short.values.into_tensor_arg(),
        short.order.into_tensor_arg(),
        short.lengths.into_tensor_arg(),
        weights.clone().into_tensor_arg(),
        work.into_tensor_arg(),
        iterations,
        m,
        head_dim,
        value_dim,
        masked[0],
        masked[1],
        short.ranked,
        [dtype_to_storage_type(dtype), short.int_dtype],
    );
    weights
}

/// What the kernels need to find the short sequences (at most `m` valid keys) and their values'
/// segment means: for equal rows (none is short) one-entry stand-ins, never read.
pub(super) struct ShortSequences {
    pub ranked: bool,
    pub values: CubeTensor,
    pub order: CubeTensor,
    pub lengths: CubeTensor,
    pub int_dtype: ElemType,
}

impl ShortSequences {
    /// From the keys' rows and the values (`like` stands in for them with equal rows).
    pub fn new(key_rows: SegmentRows<CubeBackend>, values: CubeTensor, like: &CubeTensor) -> Self {
        match key_rows {
            SegmentRows::Ranked { order, lengths, .. } => Self {
                ranked: true,
                values: rows_in_place(values),
                int_dtype: dtype_to_storage_type(order.dtype),
                order,
                lengths,
            },
            SegmentRows::Equal => {
                let stand_in = empty_device_contiguous_dtype(
                    like.client.clone(),
                    like.device.clone(),
                    Shape::new([1]),
                    DType::I32,
                );
                Self {
                    ranked: false,
                    values: like.clone(),
                    order: stand_in.clone(),
                    lengths: stand_in,
                    int_dtype: dtype_to_storage_type(DType::I32),
                }
            }
        }
    }
}

/// One cube per matrix (`CUBE_POS`) of [`GRID`] × [`GRID`] units; the landmarks, `B V`, the
/// flags and `work` (`[batch · heads, WORK_SLOTS, m, m]`) contiguous, `values` strided with its
/// last dimension contiguous, `order` and `lengths` as [`SegmentRows::Ranked`] has them (read
/// only when `ranked`). The missing flags are `[batch, m]`, 1.0 where a segment is not a
/// landmark, each read only when its `any_missing_*` is set.
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
fn landmark_weights_kernel<F: Float, I: Int>(
    landmark_queries: &Tensor<F>,
    landmark_keys: &Tensor<F>,
    landmark_values: &Tensor<F>,
    missing_queries: &Tensor<F>,
    missing_keys: &Tensor<F>,
    values: &Tensor<F>,
    order: &Tensor<I>,
    lengths: &Tensor<I>,
    weights: &mut Tensor<F>,
    work: &mut Tensor<f32>,
    iterations: usize,
    #[comptime] m: usize,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] any_missing_queries: bool,
    #[comptime] any_missing_keys: bool,
    #[comptime] ranked: bool,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let matrix = CUBE_POS;
    let batch = matrix / landmark_queries.shape(1);
    let size = m * m;
    let a = matrix * WORK_SLOTS * size;
    // The slot after Z's holds the column sums until the iteration needs it.
    let sums = a + 2 * size;
    let unit = UNIT_POS as usize;
    let units = comptime![GRID * GRID];

    landmark_softmax(
        landmark_queries,
        landmark_keys,
        missing_queries,
        missing_keys,
        work,
        a,
        matrix,
        batch,
        m,
        head_dim,
        any_missing_queries,
        any_missing_keys,
    );
    sync_storage();
    let c = norm_coefficient(work, a, sums, m);

    // Every unit has read the sums before `invert` writes over them (after its first barrier).
    let z = invert::<f32>(work, a, c, iterations, m);

    // W = Z (B V), an entry per unit in turn; a short sequence's rows are its values' segment
    // means instead. (Its iteration above ran all the same: a branch around the barriers on a
    // value read from memory is not uniform control flow to a shader compiler.)
    let short = is_short(lengths, batch, m, ranked);
    let head = matrix % landmark_queries.shape(1);
    let mut entry = unit;
    while entry < m * value_dim {
        let (i, column) = (entry / value_dim, entry % value_dim);
        let mut sum = f32::new(0.0);
        if short {
            sum += ranked_mean(values, order, lengths, batch, head, i, column, m.runtime());
        } else {
            for k in 0..m {
                sum += work[z + i * m + k]
                    * f32::cast_from(landmark_values[(matrix * m + k) * value_dim + column]);
            }
        }
        weights[matrix * m * value_dim + entry] = F::cast_from(sum);
        entry += units;
    }
}

/// Whether sequence `batch` has at most `m` valid keys (`lengths`, `[batch or 1]`); never for
/// equal rows (not `ranked`), whose `lengths` is a stand-in.
#[cube]
pub fn is_short<I: Int>(
    lengths: &Tensor<I>,
    batch: usize,
    #[comptime] m: usize,
    #[comptime] ranked: bool,
) -> bool {
    let mut short = false;
    if comptime!(ranked) {
        let sequence = sequence_of(lengths, batch);
        short = usize::cast_from(lengths[sequence * lengths.stride(0)]) <= m;
    }
    short
}

/// Writes `A = softmax(Q̃ K̃ᵀ)` of matrix `matrix` (in batch `batch`) into the slot `a` of
/// `work`, a row per unit: the scores over the landmark keys that exist, their softmax, and zero
/// for a missing landmark query or key (a row without any key is zero too). The flags are read
/// only when their `any_missing_*` is set. A `sync_storage` must follow before `A` is read.
#[allow(clippy::too_many_arguments)]
#[cube]
pub fn landmark_softmax<F: Float>(
    landmark_queries: &Tensor<F>,
    landmark_keys: &Tensor<F>,
    missing_queries: &Tensor<F>,
    missing_keys: &Tensor<F>,
    work: &mut Tensor<f32>,
    a: usize,
    matrix: usize,
    batch: usize,
    #[comptime] m: usize,
    #[comptime] head_dim: usize,
    #[comptime] any_missing_queries: bool,
    #[comptime] any_missing_keys: bool,
) {
    let units = comptime![GRID * GRID];
    let mut row = UNIT_POS as usize;
    while row < m {
        let query = (matrix * m + row) * head_dim;
        let mut maximum = f32::new(MAX_START);
        for j in 0..m {
            let mut score = f32::new(0.0);
            if !flagged(missing_keys, batch * m + j, any_missing_keys) {
                let key = (matrix * m + j) * head_dim;
                // Unrolled: llvmpipe (lavapipe) ends an invocation after 65 535 loop iterations
                // in all, which a rolled loop here reaches at m = 256, d = 128.
                #[unroll]
                for c in 0..head_dim {
                    score += f32::cast_from(landmark_queries[query + c])
                        * f32::cast_from(landmark_keys[key + c]);
                }
                if score > maximum {
                    maximum = score;
                }
            }
            work[a + row * m + j] = score;
        }
        let present = !flagged(missing_queries, batch * m + row, any_missing_queries);
        let mut sum = f32::new(0.0);
        for j in 0..m {
            let mut weight = f32::new(0.0);
            if present && !flagged(missing_keys, batch * m + j, any_missing_keys) {
                weight = f32::exp(work[a + row * m + j] - maximum);
            }
            work[a + row * m + j] = weight;
            sum += weight;
        }
        let mut inverse = f32::new(0.0);
        if sum > 0.0f32 {
            inverse = f32::new(1.0) / sum;
        }
        for j in 0..m {
            work[a + row * m + j] *= inverse;
        }
        row += units;
    }
}

/// `c = ‖A‖₁`, the largest column sum of the `A` at `a` in `work`, at least
/// [`MIN_COEFFICIENT`] so that `A = 0` (every landmark missing) inverts to 0; the column sums
/// are left in the slot `sums`. Every unit of the cube must call it, after a `sync_storage` that
/// makes `A` visible; every unit gets `c`.
#[cube]
pub fn norm_coefficient(
    work: &mut Tensor<f32>,
    a: usize,
    sums: usize,
    #[comptime] m: usize,
) -> f32 {
    let units = comptime![GRID * GRID];
    let mut column = UNIT_POS as usize;
    while column < m {
        let mut sum = f32::new(0.0);
        for i in 0..m {
            sum += work[a + i * m + column];
        }
        work[sums + column] = sum;
        column += units;
    }
    sync_storage();
    let mut c = f32::new(comptime![MIN_COEFFICIENT]);
    for j in 0..m {
        let sum = work[sums + j];
        if sum > c {
            c = sum;
        }
    }
    c
}
