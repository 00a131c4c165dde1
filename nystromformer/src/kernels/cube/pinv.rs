//! The whole pseudo-inverse iteration in one kernel: one cube per `[m, m]` matrix.
//!
//! The tensor-op form ([`iterative_pinv`](crate::attention::iterative_pinv)) launches four
//! matrix products and a handful of elementwise operations per iteration on matrices of
//! 64 × 64; on a GPU each launch costs more than its arithmetic. Here one cube walks all
//! iterations of one matrix, its units sharing every product in blocks of entries ([`super::blocks`]), with
//! the matrices in a global work buffer and a storage barrier between stages. (A 64 × 64 matrix
//! takes all of the 16 KiB of shared memory a WebGPU device may be limited to, and six are
//! needed.)
//!
//! Each iteration, `Z ← ¼ Z (13I − AZ (15I − AZ (7I − AZ)))`, is four products:
//!
//! ```text
//! P = A Z
//! T = P (7I − P)  = 7P − P P
//! U = P (15I − T) = 15P − P T
//! Z ← ¼ Z (13I − U) = ¼ (13Z − Z U)
//! ```

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::blocks::{GRID, product_block, store_block, store_scaled};

/// Launches the kernel; see [`crate::kernels::fused_pinv`] for the contract.
pub fn launch(a: CubeTensor, coefficient: CubeTensor, iterations: usize) -> CubeTensor {
    let a = into_contiguous(a);
    let coefficient = into_contiguous(coefficient);
    let shape = a.meta.shape().clone();
    let [batch, heads, m, _] = shape.dims::<4>();
    let matrices = batch * heads;

    let client = a.client.clone();
    let device = a.device.clone();
    let dtype = a.dtype;
    let z = empty_device_contiguous_dtype(client.clone(), device.clone(), shape, dtype);
    let work = empty_device_contiguous_dtype(
        client.clone(),
        device,
        Shape::new([matrices, WORK_SLOTS, m, m]),
        dtype,
    );
    pinv_kernel::launch(
        &client,
        CubeCount::new_1d(matrices as u32),
        CubeDim::new_1d((GRID * GRID) as u32),
        a.into_tensor_arg(),
        coefficient.into_tensor_arg(),
        z.clone().into_tensor_arg(),
        work.into_tensor_arg(),
        iterations,
        m,
        dtype_to_storage_type(dtype),
    );
    z
}

/// Matrices per cube in the work buffer, one after the other: A, then Z and its successor (their
/// roles swap every iteration), P, T and U. Every product reads from this one buffer.
pub const WORK_SLOTS: usize = 6;

/// One cube per matrix (`CUBE_POS`); `a` and `z` are contiguous `[batch, heads, m, m]`, `work`
/// is `[batch · heads, WORK_SLOTS, m, m]`. `m` is a compile-time constant so that each unit's
/// block of entries lives in registers.
#[cube(launch)]
fn pinv_kernel<F: Float>(
    a: &Tensor<F>,
    coefficient: &Tensor<F>,
    z: &mut Tensor<F>,
    work: &mut Tensor<F>,
    iterations: usize,
    #[comptime] m: usize,
    #[define(F)] _dtype: ElemType,
) {
    let matrix = CUBE_POS;
    let size = m * m;
    let base = matrix * size;
    let a_slot = matrix * WORK_SLOTS * size;
    let unit = UNIT_POS as usize;
    let units = comptime![GRID * GRID];

    let mut entry = unit;
    while entry < size {
        work[a_slot + entry] = a[base + entry];
        entry += units;
    }
    sync_storage();

    let z_slot = invert(work, a_slot, coefficient[matrix], iterations, m);

    let mut entry = unit;
    while entry < size {
        z[base + entry] = work[z_slot + entry];
        entry += units;
    }
}

/// Inverts the matrix `A` at `a` in `work`, whose next [`WORK_SLOTS`] − 1 slots of `m · m`
/// entries are its scratch: `Z₀ = Aᵀ / c`, then `iterations` steps. Returns the slot that holds
/// the last `Z`. Every unit of the cube (a [`GRID`] × [`GRID`] grid) must call it, after a
/// `sync_storage` that makes `A` visible.
#[cube]
pub fn invert<F: Float>(
    work: &mut Tensor<F>,
    a: usize,
    c: F,
    iterations: usize,
    #[comptime] m: usize,
) -> usize {
    let size = m * m;
    let z = a + size;
    let units = comptime![GRID * GRID];
    let mut entry = UNIT_POS as usize;
    while entry < size {
        let transposed = (entry % m) * m + entry / m;
        work[z + entry] = work[a + transposed] / c;
        entry += units;
    }
    sync_storage();
    iterate(
        work,
        a,
        z,
        a + 2 * size,
        a + 3 * size,
        a + 4 * size,
        a + 5 * size,
        iterations,
        m,
    )
}

/// Runs `iterations` steps on the matrix at `a` in `work`, starting from `Z₀` at `z`, with the
/// slots `next`, `p`, `t` and `u` as scratch; returns the slot that holds the last `Z` (`z` or
/// `next`: their roles swap every iteration).
#[allow(clippy::manual_swap)] // `std::mem::swap` has no kernel expansion
#[allow(clippy::too_many_arguments)]
#[cube]
fn iterate<F: Float>(
    work: &mut Tensor<F>,
    a: usize,
    z: usize,
    next: usize,
    p: usize,
    t: usize,
    u: usize,
    iterations: usize,
    #[comptime] m: usize,
) -> usize {
    let mut z_slot = z;
    let mut next_slot = next;
    for _ in 0..iterations {
        step(work, a, z_slot, next_slot, p, t, u, true, m);
        let previous = z_slot;
        z_slot = next_slot;
        next_slot = previous;
    }
    z_slot
}

/// One step of the iteration on the matrix `A` at `a` in `work`, from the `Z` at `z`: writes
/// `P = A Z`, `T = 7P − P P` and `U = 15P − P T` into their slots and, `with_next`, the next
/// `Z = ¼ (13Z − Z U)` into `next`. Every unit of the cube must call it; it ends on a storage
/// barrier.
#[allow(clippy::too_many_arguments)]
#[cube]
pub fn step<F: Float>(
    work: &mut Tensor<F>,
    a: usize,
    z: usize,
    next: usize,
    p: usize,
    t: usize,
    u: usize,
    with_next: bool,
    #[comptime] m: usize,
) {
    let grid = comptime![GRID];
    let unit = UNIT_POS as usize;
    let (row, col) = (unit / grid, unit % grid);
    // P = A Z
    let block = product_block(work, a, z, row, col, m, false, false);
    store_scaled(work, p, F::new(1.0), &block, row, col, m);
    sync_storage();
    // T = P (7I − P) = 7P − P P
    let block = product_block(work, p, p, row, col, m, false, false);
    store_block(work, t, F::new(7.0), p, F::new(-1.0), &block, row, col, m);
    sync_storage();
    // U = P (15I − T) = 15P − P T
    let block = product_block(work, p, t, row, col, m, false, false);
    store_block(work, u, F::new(15.0), p, F::new(-1.0), &block, row, col, m);
    sync_storage();
    // next Z = ¼ Z (13I − U) = 3.25 Z − ¼ Z U
    if with_next {
        let block = product_block(work, z, u, row, col, m, false, false);
        store_block(
            work,
            next,
            F::new(3.25),
            z,
            F::new(-0.25),
            &block,
            row,
            col,
            m,
        );
    }
    sync_storage();
}
