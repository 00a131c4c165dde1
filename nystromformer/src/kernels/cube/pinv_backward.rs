//! The backward of the pseudo-inverse iteration in one kernel: one cube per `[m, m]` matrix.
//!
//! As tensor ops the walk back is seven products and a dozen elementwise operations per
//! iteration on 64 × 64 matrices, about a hundred launches for six iterations that each leave a
//! GPU nearly idle. Here one cube replays the iteration from `A` and `c`, keeping every iterate in
//! its slots of a global work buffer (f32, whatever the input type), and walks it back, with a
//! storage barrier between stages; the products are [`super::blocks`]'.
//!
//! The forward (see [`super::pinv`]) is `Z₀ = Aᵀ / c`, then per iteration `P = A Z`,
//! `T = 7P − P P`, `U = 15P − P T`, `Z' = ¼ (13Z − Z U)`. With `G` the gradient of `Z'`, one step
//! back is
//!
//! ```text
//! dU = −¼ Zᵀ G
//! dT = −Pᵀ dU
//! dP = 15 dU + 7 dT − dU Tᵀ − dT Pᵀ − Pᵀ dT
//! dA += dP Zᵀ
//! G ← ¼ (13G − G Uᵀ) + Aᵀ dP          (the gradient of Z)
//! ```
//!
//! and from the gradient `G` of `Z₀`: `dA += Gᵀ / c`, `dc = −Σ G ∘ Z₀ / c`.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::blocks::{GRID, add_block, add_entries, product_block, store_block, store_scaled};
use super::pinv::step;

/// Launches the kernel: the gradients of `A` (`[batch, heads, m, m]`) and of `c`
/// (`[batch · heads]`) of `iterations` steps from `Z₀ = Aᵀ / c`, for the gradient `grad` of the
/// result; both in the type of `a`.
pub fn launch(
    a: CubeTensor,
    coefficient: CubeTensor,
    grad: CubeTensor,
    iterations: usize,
) -> (CubeTensor, CubeTensor) {
    let a = into_contiguous(a);
    let coefficient = into_contiguous(coefficient);
    let grad = into_contiguous(grad);
    let shape = a.meta.shape().clone();
    let [batch, heads, m, _] = shape.dims::<4>();
    let matrices = batch * heads;

    let client = a.client.clone();
    let device = a.device.clone();
    let dtype = a.dtype;
    let a_grad = empty_device_contiguous_dtype(client.clone(), device.clone(), shape, dtype);
    let c_grad = empty_device_contiguous_dtype(
        client.clone(),
        device.clone(),
        Shape::new([matrices]),
        dtype,
    );
    let work = empty_device_contiguous_dtype(
        client.clone(),
        device,
        Shape::new([matrices, work_slots(iterations), m, m]),
        DType::F32,
    );
    pinv_backward_kernel::launch(
        &client,
        CubeCount::new_1d(matrices as u32),
        CubeDim::new_1d((GRID * GRID) as u32),
        a.into_tensor_arg(),
        coefficient.into_tensor_arg(),
        grad.into_tensor_arg(),
        a_grad.clone().into_tensor_arg(),
        c_grad.clone().into_tensor_arg(),
        work.into_tensor_arg(),
        iterations,
        m,
        dtype_to_storage_type(dtype),
    );
    (a_grad, c_grad)
}

/// Matrices per cube in the work buffer: `A`; `Z₀ … Z_iterations`; `P`, `T`, `U` of each
/// iteration; then the walk back's `G` and its successor (their roles swap every step), `dU`,
/// `dT`, `dP` and the sum `dA`.
pub fn work_slots(iterations: usize) -> usize {
    4 * iterations + 8
}

/// The slot of `Z_k`.
#[cube]
pub fn z_slot(base: usize, k: usize, size: usize) -> usize {
    base + (1 + k) * size
}

/// The slot of `P_k`; `T_k` and `U_k` follow it.
#[cube]
fn p_slot(base: usize, k: usize, iterations: usize, size: usize) -> usize {
    base + (iterations + 2 + 3 * k) * size
}

/// One cube per matrix (`CUBE_POS`) of [`GRID`] × [`GRID`] units; `a`, `grad` and `a_grad`
/// contiguous `[batch, heads, m, m]`, `coefficient` and `c_grad` `[batch · heads]`, `work`
/// `[batch · heads, work_slots(iterations), m, m]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn pinv_backward_kernel<F: Float>(
    a: &Tensor<F>,
    coefficient: &Tensor<F>,
    grad: &Tensor<F>,
    a_grad: &mut Tensor<F>,
    c_grad: &mut Tensor<F>,
    work: &mut Tensor<f32>,
    iterations: usize,
    #[comptime] m: usize,
    #[define(F)] _dtype: ElemType,
) {
    let matrix = CUBE_POS;
    let size = m * m;
    let input = matrix * size;
    let base = matrix * (4 * iterations + 8) * size;
    let c = f32::cast_from(coefficient[matrix]);
    let unit = UNIT_POS as usize;
    let units = comptime![GRID * GRID];

    // A and the incoming gradient.
    let g = gradient_slot(base, iterations, size);
    let mut entry = unit;
    while entry < size {
        work[base + entry] = f32::cast_from(a[input + entry]);
        work[g + entry] = f32::cast_from(grad[input + entry]);
        entry += units;
    }
    sync_storage();
    replay(work, base, c, iterations, false, m);
    let g = walk_back(work, base, iterations, m);

    let coefficient_grad = close_walk(work, base, g, c, iterations, m);
    // The same entries as `close_walk` wrote, unit by unit: no barrier needed.
    let da = sum_slot(base, iterations, size);
    let mut entry = unit;
    while entry < size {
        a_grad[input + entry] = F::cast_from(work[da + entry]);
        entry += units;
    }
    if unit == 0 {
        c_grad[matrix] = F::cast_from(coefficient_grad);
    }
}

/// Closes the walk back at `Z₀ = Aᵀ / c`, from the gradient `G` of `Z₀` in the slot `g`: adds
/// `Gᵀ / c` to `dA` in [`sum_slot`] and returns `dc = −Σ G ∘ Z₀ / c` to every unit. Every unit
/// of the cube must call it after [`walk_back`]; unit `u` writes the entries `u, u + units, …`
/// of `dA`, and a `sync_storage` must follow before other units read them.
#[cube]
pub fn close_walk(
    work: &mut Tensor<f32>,
    base: usize,
    g: usize,
    c: f32,
    iterations: usize,
    #[comptime] m: usize,
) -> f32 {
    let size = m * m;
    let units = comptime![GRID * GRID];
    let (z0, da) = (z_slot(base, 0, size), sum_slot(base, iterations, size));
    let mut partial = f32::new(0.0);
    let mut entry = UNIT_POS as usize;
    while entry < size {
        let transposed = (entry % m) * m + entry / m;
        work[da + entry] += work[g + transposed] / c;
        partial += work[g + entry] * work[z0 + entry];
        entry += units;
    }
    -cube_sum(partial) / c
}

/// The slot where the walk back starts: the gradient of the last `Z` goes there.
#[cube]
pub fn gradient_slot(base: usize, iterations: usize, size: usize) -> usize {
    base + (4 * iterations + 2) * size
}

/// The slot of the sum `dA` of the walk back.
#[cube]
pub fn sum_slot(base: usize, iterations: usize, size: usize) -> usize {
    base + (4 * iterations + 7) * size
}

/// Replays the iteration on the matrix `A` at `base` in `work` from `Z₀ = Aᵀ / c`, keeping
/// every `Z` (the last one only `with_last`), `P`, `T` and `U` in their slots. Every unit of
/// the cube must call it, after a `sync_storage` that makes `A` visible.
#[cube]
pub fn replay(
    work: &mut Tensor<f32>,
    base: usize,
    c: f32,
    iterations: usize,
    #[comptime] with_last: bool,
    #[comptime] m: usize,
) {
    let size = m * m;
    let units = comptime![GRID * GRID];
    let z0 = z_slot(base, 0, size);
    let mut entry = UNIT_POS as usize;
    while entry < size {
        let transposed = (entry % m) * m + entry / m;
        work[z0 + entry] = work[base + transposed] / c;
        entry += units;
    }
    sync_storage();
    for k in 0..iterations {
        let p = p_slot(base, k, iterations, size);
        // The walk back never reads the last Z.
        let mut with_next = k + 1 < iterations;
        if comptime!(with_last) {
            with_next = true;
        }
        let (z, next) = (z_slot(base, k, size), z_slot(base, k + 1, size));
        step(work, base, z, next, p, p + size, p + 2 * size, with_next, m);
    }
}

/// Walks the replayed iteration at `base` back from the gradient of its result (in
/// [`gradient_slot`]), last iteration first: returns the slot that holds the gradient of `Z₀`,
/// with the products' part of `dA` in [`sum_slot`]. Every unit of the cube must call it, after
/// a `sync_storage` that makes the gradient visible.
#[allow(clippy::manual_swap)] // `std::mem::swap` has no kernel expansion
#[cube]
pub fn walk_back(
    work: &mut Tensor<f32>,
    base: usize,
    iterations: usize,
    #[comptime] m: usize,
) -> usize {
    let size = m * m;
    let units = comptime![GRID * GRID];
    let grid = comptime![GRID];
    let unit = UNIT_POS as usize;
    let (row, col) = (unit / grid, unit % grid);
    let mut g = gradient_slot(base, iterations, size);
    let mut next_g = g + size;
    let (du, dt, dp) = (g + 2 * size, g + 3 * size, g + 4 * size);
    let da = sum_slot(base, iterations, size);
    let mut entry = unit;
    while entry < size {
        work[da + entry] = f32::new(0.0);
        entry += units;
    }
    for step in 0..iterations {
        let k = iterations - 1 - step;
        let (z, p) = (z_slot(base, k, size), p_slot(base, k, iterations, size));
        let (t, u) = (p + size, p + 2 * size);
        // dU = −¼ Zᵀ G
        let block = product_block(work, z, g, row, col, m, true, false);
        store_scaled(work, du, f32::new(-0.25), &block, row, col, m);
        sync_storage();
        // dT = −Pᵀ dU
        let block = product_block(work, p, du, row, col, m, true, false);
        store_scaled(work, dt, f32::new(-1.0), &block, row, col, m);
        sync_storage();
        // dP = 15 dU + 7 dT − (dU Tᵀ + dT Pᵀ + Pᵀ dT)
        let mut block = product_block(work, du, t, row, col, m, false, true);
        let other = product_block(work, dt, p, row, col, m, false, true);
        add_block(&mut block, &other, f32::new(1.0), m);
        let other = product_block(work, p, dt, row, col, m, true, false);
        add_block(&mut block, &other, f32::new(1.0), m);
        add_entries(&mut block, work, dt, f32::new(-7.0), row, col, m);
        store_block(
            work,
            dp,
            f32::new(15.0),
            du,
            f32::new(-1.0),
            &block,
            row,
            col,
            m,
        );
        sync_storage();
        // dA += dP Zᵀ
        let block = product_block(work, dp, z, row, col, m, false, true);
        store_block(
            work,
            da,
            f32::new(1.0),
            da,
            f32::new(1.0),
            &block,
            row,
            col,
            m,
        );
        // The gradient of Z: 3.25 G − ¼ G Uᵀ + Aᵀ dP
        let mut block = product_block(work, base, dp, row, col, m, true, false);
        let other = product_block(work, g, u, row, col, m, false, true);
        add_block(&mut block, &other, f32::new(-0.25), m);
        store_block(
            work,
            next_g,
            f32::new(3.25),
            g,
            f32::new(1.0),
            &block,
            row,
            col,
            m,
        );
        sync_storage();
        let previous = g;
        g = next_g;
        next_g = previous;
    }
    g
}

/// The sum of every unit's `partial` over the cube, returned to every unit. Every unit of the
/// cube must call it.
#[cube]
fn cube_sum(partial: f32) -> f32 {
    let units = comptime![GRID * GRID];
    let mut partials = Shared::<[f32]>::new_slice(units);
    partials[UNIT_POS as usize] = partial;
    sync_cube();
    let mut sum = f32::new(0.0);
    for i in 0..units {
        sum += partials[i];
    }
    sum
}
