//! LayerNorm over the last dimension in one launch forward and three backward (one kernel, and
//! the sums of its per-cube partial gradients of `γ` and `β`; two casts more for f16).
//!
//! Burn runs a LayerNorm as three launches forward and about twenty-five backward, each a full
//! pass over `[tokens, width]`; an LRA ListOps training step has five of them, which made them
//! the largest share of the step's launches once the attention ran as kernels. Here a cube of
//! [`UNITS`] units takes [`ROWS_PER_CUBE`] rows (more past [`MAX_CUBES`] cubes) one after the
//! other; each unit holds the columns
//! `u, u + UNITS, …` of the row in registers and the row's sums are reduced in shared memory.
//! The statistics (`mean`, `1/√(var + ε)`) are kept in f32 whatever the input type, and the
//! backward recomputes `x̂` from them:
//!
//! ```text
//! g = dy ∘ γ,   dx = (g − mean(g) − x̂ ∘ mean(g ∘ x̂)) / √(var + ε),
//! dγ = Σ_rows dy ∘ x̂,   dβ = Σ_rows dy
//! ```
//!
//! As Burn (and PyTorch): `y = (x − mean) / √(var + ε) · γ + β` with the biased variance.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, FloatDType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::cube_sum::cube_sum;
use crate::kernels::reference::rows_and_width;

/// Units per cube, each holding every `UNITS`-th column of a row: `2^LOG2_UNITS`, for the
/// tree sums.
const UNITS: usize = 1 << LOG2_UNITS;
const LOG2_UNITS: usize = 6;

/// Rows per cube, one after the other: the backward sums its rows' gradients of `γ` and `β` in
/// registers and writes one partial sum per cube.
const ROWS_PER_CUBE: usize = 32;

/// The most cubes: more rows take more rows per cube, so that Burn's sum of the partial
/// gradients runs over at most this many (CubeCL sums a column in one loop, which llvmpipe ends
/// after 65 535 iterations).
const MAX_CUBES: usize = 65_535;

/// The LayerNorm of `x` (`[.., d]`, with `gamma` and `beta` `[d]` of its type) and, with
/// `with_statistics`, each row's `(mean, 1/√(var + ε))` as `[rows, 2]` f32.
pub fn launch(
    x: CubeTensor,
    gamma: CubeTensor,
    beta: CubeTensor,
    epsilon: f64,
    with_statistics: bool,
) -> (CubeTensor, Option<CubeTensor>) {
    let x = into_contiguous(x);
    let (shape, rows, d) = rows_of(&x);
    let client = x.client.clone();
    let empty = |shape: Shape, dtype| {
        empty_device_contiguous_dtype(client.clone(), x.device.clone(), shape, dtype)
    };
    let output = empty(shape.clone(), x.dtype);
    let statistics = match with_statistics {
        true => empty(Shape::new([rows, 2]), DType::F32),
        false => empty(Shape::new([1]), DType::F32),
    };
    let (cubes, rows_per_cube) = cubes_for(rows);
    let (cube_count, cube_dim) = grid(&x, cubes);
    let dtype = x.dtype;
    layer_norm_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        x.into_tensor_arg(),
        into_contiguous(gamma).into_tensor_arg(),
        into_contiguous(beta).into_tensor_arg(),
        output.clone().into_tensor_arg(),
        statistics.clone().into_tensor_arg(),
        rows,
        rows_per_cube,
        epsilon as f32,
        d.div_ceil(UNITS),
        with_statistics,
        dtype_to_storage_type(dtype),
    );
    (output, with_statistics.then_some(statistics))
}

/// The gradients of `x`, `gamma` and `beta` for the gradient `grad` of the LayerNorm's output,
/// from the statistics its forward kept (see [`launch`]).
pub fn launch_backward(
    x: CubeTensor,
    gamma: CubeTensor,
    statistics: CubeTensor,
    grad: CubeTensor,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let x = into_contiguous(x);
    let (shape, rows, d) = rows_of(&x);
    let client = x.client.clone();
    let (dtype, gamma_dtype) = (x.dtype, gamma.dtype);
    let empty = |shape: Shape, dtype| {
        empty_device_contiguous_dtype(client.clone(), x.device.clone(), shape, dtype)
    };
    let dx = empty(shape, dtype);
    let (cubes, rows_per_cube) = cubes_for(rows);
    // Each cube's sums of dy ∘ x̂ and of dy over its rows, in f32.
    let partial_gamma = empty(Shape::new([cubes, d]), DType::F32);
    let partial_beta = empty(Shape::new([cubes, d]), DType::F32);
    let (cube_count, cube_dim) = grid(&x, cubes);
    layer_norm_backward_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        x.into_tensor_arg(),
        into_contiguous(gamma).into_tensor_arg(),
        into_contiguous(statistics).into_tensor_arg(),
        into_contiguous(grad).into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        partial_gamma.clone().into_tensor_arg(),
        partial_beta.clone().into_tensor_arg(),
        rows,
        rows_per_cube,
        d.div_ceil(UNITS),
        dtype_to_storage_type(dtype),
    );
    let total = |partial: CubeTensor| {
        let sum =
            CubeBackend::float_reshape(CubeBackend::float_sum_dim(partial, 0), Shape::new([d]));
        match gamma_dtype {
            DType::F32 => sum,
            other => CubeBackend::float_cast(sum, FloatDType::from(other)),
        }
    };
    (dx, total(partial_gamma), total(partial_beta))
}

/// `x`'s shape, and its number of rows and their width `d` (its last dimension).
fn rows_of(x: &CubeTensor) -> (Shape, usize, usize) {
    let shape = x.meta.shape().clone();
    let [rows, d] = rows_and_width(&shape);
    (shape, rows, d)
}

/// The cubes for `rows` rows: `(cubes, rows per cube)`, [`ROWS_PER_CUBE`] rows per cube up to
/// [`MAX_CUBES`] cubes.
fn cubes_for(rows: usize) -> (usize, usize) {
    let rows_per_cube = ROWS_PER_CUBE.max(rows.div_ceil(MAX_CUBES));
    (rows.div_ceil(rows_per_cube), rows_per_cube)
}

/// A grid of `cubes` cubes of [`UNITS`] units, of more than one dimension where one does not
/// hold them.
fn grid(x: &CubeTensor, cubes: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new_1d(UNITS as u32);
    let count = cubecl::calculate_cube_count_elemwise(&x.client, cubes * UNITS, cube_dim);
    (count, cube_dim)
}

/// One cube per `rows_per_cube` rows of `x` (`[rows, d]`, contiguous), unit `u` holding the
/// row's columns `u + k · UNITS` for `k < columns`. `statistics` gets each row's
/// `(mean, 1/√(var + ε))` when `with_statistics` (else it is a placeholder).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn layer_norm_kernel<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    output: &mut Tensor<F>,
    statistics: &mut Tensor<f32>,
    rows: usize,
    rows_per_cube: usize,
    epsilon: f32,
    #[comptime] columns: usize,
    #[comptime] with_statistics: bool,
    #[define(F)] _dtype: ElemType,
) {
    let cube = CUBE_POS;
    // Whole cubes past the end leave before any barrier.
    if cube * rows_per_cube >= rows {
        terminate!();
    }
    let d = gamma.len();
    let unit = UNIT_POS as usize;
    let mut partial = Shared::<[f32]>::new_slice(UNITS);
    let mut values = Array::<f32>::new(columns);
    let width = f32::cast_from(d);
    for r in 0..rows_per_cube {
        let row = cube * rows_per_cube + r;
        // Uniform across the cube: every unit stays for the barriers.
        if row < rows {
            let start = row * d;
            let mut sum = f32::new(0.0);
            #[unroll]
            for k in 0..columns {
                let c = unit + k * UNITS;
                let mut v = f32::new(0.0);
                if c < d {
                    v = f32::cast_from(x[start + c]);
                }
                values[k] = v;
                sum += v;
            }
            let mean = cube_sum(sum, &mut partial, LOG2_UNITS) / width;
            // Centred first, then squared: no cancellation when |mean| ≫ std.
            let mut squares = f32::new(0.0);
            #[unroll]
            for k in 0..columns {
                let c = unit + k * UNITS;
                if c < d {
                    let centred = values[k] - mean;
                    squares += centred * centred;
                }
            }
            let variance = cube_sum(squares, &mut partial, LOG2_UNITS) / width;
            let inv_std = f32::new(1.0) / f32::sqrt(variance + epsilon);
            #[unroll]
            for k in 0..columns {
                let c = unit + k * UNITS;
                if c < d {
                    let normed = (values[k] - mean) * inv_std;
                    output[start + c] =
                        F::cast_from(normed * f32::cast_from(gamma[c]) + f32::cast_from(beta[c]));
                }
            }
            // The compile-time switch stays apart from the runtime test.
            #[allow(clippy::collapsible_if)]
            if comptime!(with_statistics) {
                if unit == 0 {
                    statistics[row * 2] = mean;
                    statistics[row * 2 + 1] = inv_std;
                }
            }
        }
    }
}

/// The backward of [`layer_norm_kernel`], over the same cubes: `dx` row by row, and each cube's
/// sums of `dy ∘ x̂` and `dy` over its rows into row `cube` of `partial_gamma` and
/// `partial_beta` (`[cubes, d]`, f32).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn layer_norm_backward_kernel<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    statistics: &Tensor<f32>,
    grad: &Tensor<F>,
    dx: &mut Tensor<F>,
    partial_gamma: &mut Tensor<f32>,
    partial_beta: &mut Tensor<f32>,
    rows: usize,
    rows_per_cube: usize,
    #[comptime] columns: usize,
    #[define(F)] _dtype: ElemType,
) {
    let cube = CUBE_POS;
    if cube * rows_per_cube >= rows {
        terminate!();
    }
    let d = gamma.len();
    let unit = UNIT_POS as usize;
    let mut partial = Shared::<[f32]>::new_slice(UNITS);
    let mut normed = Array::<f32>::new(columns);
    let mut scaled_grad = Array::<f32>::new(columns);
    let mut sum_gamma = Array::<f32>::new(columns);
    let mut sum_beta = Array::<f32>::new(columns);
    #[unroll]
    for k in 0..columns {
        sum_gamma[k] = f32::new(0.0);
        sum_beta[k] = f32::new(0.0);
    }
    let width = f32::cast_from(d);
    for r in 0..rows_per_cube {
        let row = cube * rows_per_cube + r;
        if row < rows {
            let start = row * d;
            let mean = statistics[row * 2];
            let inv_std = statistics[row * 2 + 1];
            let (mut sum_g, mut sum_gh) = (f32::new(0.0), f32::new(0.0));
            #[unroll]
            for k in 0..columns {
                let c = unit + k * UNITS;
                let (mut h, mut g) = (f32::new(0.0), f32::new(0.0));
                if c < d {
                    h = (f32::cast_from(x[start + c]) - mean) * inv_std;
                    let dy = f32::cast_from(grad[start + c]);
                    g = dy * f32::cast_from(gamma[c]);
                    sum_gamma[k] += dy * h;
                    sum_beta[k] += dy;
                }
                normed[k] = h;
                scaled_grad[k] = g;
                sum_g += g;
                sum_gh += g * h;
            }
            let mean_g = cube_sum(sum_g, &mut partial, LOG2_UNITS) / width;
            let mean_gh = cube_sum(sum_gh, &mut partial, LOG2_UNITS) / width;
            #[unroll]
            for k in 0..columns {
                let c = unit + k * UNITS;
                if c < d {
                    dx[start + c] =
                        F::cast_from((scaled_grad[k] - mean_g - normed[k] * mean_gh) * inv_std);
                }
            }
        }
    }
    #[unroll]
    for k in 0..columns {
        let c = unit + k * UNITS;
        if c < d {
            partial_gamma[cube * d + c] = sum_gamma[k];
            partial_beta[cube * d + c] = sum_beta[k];
        }
    }
}
