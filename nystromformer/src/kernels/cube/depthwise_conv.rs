//! The skip connection's depthwise convolution along the sequence in one launch forward and three
//! backward.
//!
//! Burn runs it as a grouped `Conv2d`: a direct convolution with layout copies around it
//! forward, and a transposed convolution (`col2im`), a weight convolution and their copies
//! backward, about a dozen launches in all. Here one unit computes one entry of the output (or
//! of the input's gradient) over the `k` taps of its head, reading the values (or the gradient)
//! in place, strided as the head split leaves them; for the taps' gradient, cubes take chunks of
//! the batch, sequence and columns of one tap, their units sum `grad ∘ shifted values` and add
//! their sums in shared memory, and Burn's reduction adds the chunks (three launches backward in
//! all).
//!
//! `out[b, h, i] = Σ_t taps[h, t] · values[b, h, i + t − k/2]` with zero padding, so
//! `dvalues[b, h, j] = Σ_t taps[h, t] · grad[b, h, j − t + k/2]` and
//! `dtaps[h, t] = Σ_{b, i} grad[b, h, i] · values[b, h, i + t − k/2]`. With padding flags the
//! values of padded rows count as zeros (never read, so NaN there cannot leak), and their
//! gradient is zero: the kernels do what a `mask_fill` of the values before the convolution
//! would, without its pass over them.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, FloatDType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::cube_sum::cube_sum;
use super::tiles::{row_offset, rows_in_place};
use super::{flagged, flags_or};
use crate::kernels::flags::Flags;

/// Units per cube of the elementwise kernels.
const UNITS_PER_CUBE: u32 = 256;

/// Units per cube of the taps' gradient, `2^LOG2_TAP_UNITS`, for the tree sum.
const TAP_UNITS: usize = 1 << LOG2_TAP_UNITS;
const LOG2_TAP_UNITS: usize = 8;

/// Products each unit of the taps' gradient sums: a cube takes `TAP_UNITS · TAP_ENTRIES_PER_UNIT`
/// entries of one tap, so that a GPU gets enough cubes (a cube per tap alone would be `heads · k`
/// of them, each looping over the whole batch).
const TAP_ENTRIES_PER_UNIT: usize = 64;

/// The convolution of `values` (`[batch, heads, n, d]`) with `taps` (`[heads, 1, k, 1]`, `k`
/// odd), both of one float type (the library passes f32), the rows that `padding` (`[batch, n]`)
/// flags read as zeros. The output is contiguous.
pub fn launch(values: CubeTensor, taps: CubeTensor, padding: Flags<CubeBackend>) -> CubeTensor {
    let values = rows_in_place(values);
    let taps = into_contiguous(taps);
    let masked = padding.is_present();
    let padding = flags_or(padding, &values);
    let output = empty_like(&values);
    let (cube_count, cube_dim) = elementwise_grid(&output);
    let dtype = values.dtype;
    shift_sum_kernel::launch(
        &values.client.clone(),
        cube_count,
        cube_dim,
        values.into_tensor_arg(),
        taps.into_tensor_arg(),
        padding.into_tensor_arg(),
        output.clone().into_tensor_arg(),
        false,
        masked,
        dtype_to_storage_type(dtype),
    );
    output
}

/// The gradients of the values and the taps for the gradient `grad` of [`launch`]'s output.
pub fn launch_backward(
    values: CubeTensor,
    taps: CubeTensor,
    padding: Flags<CubeBackend>,
    grad: CubeTensor,
) -> (CubeTensor, CubeTensor) {
    let values = rows_in_place(values);
    let taps = into_contiguous(taps);
    let grad = rows_in_place(grad);
    let masked = padding.is_present();
    let padding = flags_or(padding, &values);
    let client = values.client.clone();
    let dtype = values.dtype;
    let d_values = empty_like(&values);
    let (cube_count, cube_dim) = elementwise_grid(&d_values);
    // The input's gradient is the same sum over taps, the shift reversed.
    shift_sum_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        grad.clone().into_tensor_arg(),
        taps.clone().into_tensor_arg(),
        padding.clone().into_tensor_arg(),
        d_values.clone().into_tensor_arg(),
        true,
        masked,
        dtype_to_storage_type(dtype),
    );
    let taps_shape = taps.meta.shape().clone();
    let [heads, _, k, _] = taps_shape.dims::<4>();
    let entries = values.meta.shape().num_elements() / heads;
    let chunks = entries.div_ceil(TAP_UNITS * TAP_ENTRIES_PER_UNIT).max(1);
    // Each chunk's sum for each tap, in f32.
    let partial = empty_device_contiguous_dtype(
        client.clone(),
        values.device.clone(),
        Shape::new([heads * k, chunks]),
        DType::F32,
    );
    let cube_dim = CubeDim::new_1d(TAP_UNITS as u32);
    tap_gradient_kernel::launch(
        &client,
        cubecl::calculate_cube_count_elemwise(&client, heads * k * chunks * TAP_UNITS, cube_dim),
        cube_dim,
        values.into_tensor_arg(),
        grad.into_tensor_arg(),
        padding.into_tensor_arg(),
        partial.clone().into_tensor_arg(),
        k,
        masked,
        dtype_to_storage_type(dtype),
    );
    let d_taps = CubeBackend::float_reshape(CubeBackend::float_sum_dim(partial, 1), taps_shape);
    let d_taps = match taps.dtype {
        DType::F32 => d_taps,
        other => CubeBackend::float_cast(d_taps, FloatDType::from(other)),
    };
    (d_values, d_taps)
}

/// An empty contiguous tensor of `x`'s shape and type.
fn empty_like(x: &CubeTensor) -> CubeTensor {
    empty_device_contiguous_dtype(
        x.client.clone(),
        x.device.clone(),
        x.meta.shape().clone(),
        x.dtype,
    )
}

/// One unit per entry of `output`.
fn elementwise_grid(output: &CubeTensor) -> (CubeCount, CubeDim) {
    let client = &output.client;
    let cube_dim =
        CubeDim::new_1d(UNITS_PER_CUBE.min(client.properties().hardware.max_units_per_cube));
    let units = output.meta.shape().num_elements();
    let count = cubecl::calculate_cube_count_elemwise(client, units, cube_dim);
    (count, cube_dim)
}

/// One unit per entry `[b, h, i, c]` of `output` (`[batch, heads, n, d]`, contiguous; `input`
/// of that shape with its last dimension contiguous): `Σ_t taps[h, t] · input[b, h, i + t − k/2,
/// c]`, or with `reversed` the shift `i − t + k/2` (the backward to the input), out-of-range rows
/// counting as zero; in f32. With `masked`, forward skips the input rows that `padding`
/// (`[batch, n]`) flags, and backward writes zero to the flagged output rows.
#[cube(launch)]
fn shift_sum_kernel<F: Float>(
    input: &Tensor<F>,
    taps: &Tensor<F>,
    padding: &Tensor<F>,
    output: &mut Tensor<F>,
    #[comptime] reversed: bool,
    #[comptime] masked: bool,
    #[define(F)] _dtype: ElemType,
) {
    let index = ABSOLUTE_POS;
    if index >= output.len() {
        terminate!();
    }
    let heads = output.shape(1);
    let n = output.shape(2);
    let d = output.shape(3);
    let k = taps.shape(2);
    let half = k / 2;
    let row = (index / d) % n;
    let head = (index / (d * n)) % heads;
    let batch = index / (d * n * heads);
    // The entry at row 0 of this column of this matrix, and the step between rows.
    let column_start = row_offset(input, batch, head, 0) + index % d;
    let row_stride = input.stride(2);
    let flags_start = batch * n;
    // Backward, a padded row's gradient is zero: forward read the row as zero.
    let mut zero_row = false;
    if comptime!(reversed) {
        zero_row = flagged(padding, flags_start + row, masked);
    }
    let mut sum = f32::new(0.0);
    if !zero_row {
        for t in 0..k {
            // The input row, offset by `half` so that it stays unsigned: `source + half`.
            let mut shifted = row + t;
            if comptime!(reversed) {
                shifted = row + 2 * half - t;
            }
            if shifted >= half && shifted - half < n {
                let source = shifted - half;
                let mut padded = false;
                if comptime!(!reversed) {
                    padded = flagged(padding, flags_start + source, masked);
                }
                if !padded {
                    let tap = f32::cast_from(taps[head * k + t]);
                    sum += tap * f32::cast_from(input[column_start + source * row_stride]);
                }
            }
        }
    }
    output[index] = F::cast_from(sum);
}

/// One cube per tap `(h, t)` and chunk (`CUBE_POS = (h · k + t) · chunks + chunk`) of
/// [`TAP_UNITS`] units: the sum of `grad[b, h, i, c] · values[b, h, i + t − k/2, c]` over the
/// chunk's [`TAP_ENTRIES_PER_UNIT`] · [`TAP_UNITS`] entries `(b, i, c)`, each unit taking every
/// `TAP_UNITS`-th of them, added in shared memory and written to `partial[h · k + t, chunk]` in
/// f32. Both tensors are read in place (last dimension contiguous); with `masked`, values rows
/// that `padding` flags count as zero.
#[cube(launch)]
fn tap_gradient_kernel<F: Float>(
    values: &Tensor<F>,
    grad: &Tensor<F>,
    padding: &Tensor<F>,
    partial: &mut Tensor<f32>,
    k: usize,
    #[comptime] masked: bool,
    #[define(F)] _dtype: ElemType,
) {
    let chunks = partial.shape(1);
    // Whole cubes past the end (the grid is rounded up) leave before any barrier.
    if CUBE_POS >= partial.len() {
        terminate!();
    }
    let batch = values.shape(0);
    let n = values.shape(2);
    let d = values.shape(3);
    let half = k / 2;
    let tap = CUBE_POS / chunks;
    let chunk = CUBE_POS % chunks;
    let head = tap / k;
    let t = tap % k;
    let unit = UNIT_POS as usize;
    let per_matrix = n * d;
    let chunk_len = TAP_UNITS * TAP_ENTRIES_PER_UNIT;
    let mut end = (chunk + 1) * chunk_len;
    if end > batch * per_matrix {
        end = batch * per_matrix;
    }
    let mut sum = f32::new(0.0);
    let mut entry = chunk * chunk_len + unit;
    while entry < end {
        let b = entry / per_matrix;
        let within = entry % per_matrix;
        let row = within / d;
        let column = within % d;
        let shifted = row + t;
        if shifted >= half && shifted - half < n {
            let source = shifted - half;
            if !flagged(padding, b * n + source, masked) {
                sum += f32::cast_from(grad[row_offset(grad, b, head, row) + column])
                    * f32::cast_from(values[row_offset(values, b, head, source) + column]);
            }
        }
        entry += TAP_UNITS;
    }
    let mut sums = Shared::<[f32]>::new_slice(TAP_UNITS);
    let total = cube_sum(sum, &mut sums, LOG2_TAP_UNITS);
    if unit == 0 {
        partial[CUBE_POS] = total;
    }
}
