//! The whole pseudo-inverse iteration in one kernel: one cube per `[m, m]` matrix.
//!
//! The tensor-op form ([`iterative_pinv`](crate::attention::iterative_pinv)) launches four
//! matrix products and a handful of elementwise operations per iteration on matrices of
//! 64 × 64; on a GPU each launch costs more than its arithmetic. Here one cube walks all
//! iterations of one matrix, its units sharing the work of every product entry by entry, with
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

/// Units per cube: every product entry is one unit's dot product, so 256 units cover a 64 × 64
/// matrix in 16 rounds. (256 is the smallest per-cube limit a WebGPU device may have.)
const UNITS_PER_CUBE: u32 = 256;

/// Launches the kernel; see [`super::fused_pinv`] for the contract.
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
        Shape::new([WORK_SLOTS, matrices, m, m]),
        dtype,
    );
    let units = UNITS_PER_CUBE.min(client.properties().hardware.max_units_per_cube);
    pinv_kernel::launch(
        &client,
        CubeCount::new_1d(matrices as u32),
        CubeDim::new_1d(units),
        a.into_tensor_arg(),
        coefficient.into_tensor_arg(),
        z.clone().into_tensor_arg(),
        work.into_tensor_arg(),
        iterations,
        dtype_to_storage_type(dtype),
    );
    z
}

/// Matrices per cube in the work buffer: A, then Z and its successor (their roles swap every
/// iteration), P, T and U. Every product reads from this one buffer.
const WORK_SLOTS: usize = 6;

/// One cube per matrix (`CUBE_POS`); `a` and `z` are contiguous `[batch, heads, m, m]`, `work`
/// is `[WORK_SLOTS, batch · heads, m, m]`.
#[allow(clippy::manual_swap)] // `std::mem::swap` has no kernel expansion
#[cube(launch)]
fn pinv_kernel<F: Float>(
    a: &Tensor<F>,
    coefficient: &Tensor<F>,
    z: &mut Tensor<F>,
    work: &mut Tensor<F>,
    iterations: usize,
    #[define(F)] _dtype: ElemType,
) {
    let matrix = CUBE_POS;
    let m = a.shape(a.rank() - 1);
    let size = m * m;
    let base = matrix * size;
    let slot = coefficient.len() * size; // distance between two slots of one matrix
    let a_slot = base;
    let mut z_slot = base + slot;
    let mut next_slot = base + 2 * slot;
    let p = base + 3 * slot;
    let t = base + 4 * slot;
    let u = base + 5 * slot;
    let first = UNIT_POS as usize;
    let step = CUBE_DIM as usize;

    // A and Z₀ = Aᵀ / c.
    let c = coefficient[matrix];
    let mut entry = first;
    while entry < size {
        let transposed = (entry % m) * m + entry / m;
        work[a_slot + entry] = a[base + entry];
        work[z_slot + entry] = a[base + transposed] / c;
        entry += step;
    }
    sync_storage();

    for _ in 0..iterations {
        let mut entry = first; // P = A Z
        while entry < size {
            work[p + entry] = product_entry(work, a_slot, z_slot, entry, m);
            entry += step;
        }
        sync_storage();
        let mut entry = first; // T = 7P − P P
        while entry < size {
            let product = product_entry(work, p, p, entry, m);
            work[t + entry] = F::new(7.0) * work[p + entry] - product;
            entry += step;
        }
        sync_storage();
        let mut entry = first; // U = 15P − P T
        while entry < size {
            let product = product_entry(work, p, t, entry, m);
            work[u + entry] = F::new(15.0) * work[p + entry] - product;
            entry += step;
        }
        sync_storage();
        let mut entry = first; // next Z = ¼ (13Z − Z U)
        while entry < size {
            let product = product_entry(work, z_slot, u, entry, m);
            work[next_slot + entry] =
                F::new(0.25) * (F::new(13.0) * work[z_slot + entry] - product);
            entry += step;
        }
        sync_storage();
        let previous = z_slot;
        z_slot = next_slot;
        next_slot = previous;
    }

    let mut entry = first;
    while entry < size {
        z[base + entry] = work[z_slot + entry];
        entry += step;
    }
}

/// Entry `entry` (row-major) of the product of the `[m, m]` matrices that start at `lhs` and at
/// `rhs` in `work` (mutable only because the kernel's buffer is).
#[cube]
fn product_entry<F: Float>(
    work: &mut Tensor<F>,
    lhs: usize,
    rhs: usize,
    entry: usize,
    m: usize,
) -> F {
    let row = entry / m;
    let col = entry % m;
    let mut sum = F::new(0.0);
    for k in 0..m {
        sum += work[lhs + row * m + k] * work[rhs + k * m + col];
    }
    sum
}
