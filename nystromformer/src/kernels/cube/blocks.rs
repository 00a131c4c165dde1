//! Products of `m × m` matrices by one cube, with the matrices in a global work buffer: the
//! pseudo-inverse's iteration ([`super::pinv`]) and its backward ([`super::pinv_backward`]).
//!
//! The cube is a [`GRID`] × [`GRID`] grid of units; unit `(r, c)` owns the entries at rows
//! `r, r + GRID, …` and columns `c, c + GRID, …` of every matrix (4 × 4 of them when m = 64), so
//! each value it loads serves several multiply-adds and neighbouring units read neighbouring
//! columns. A unit's entries of a result live in registers as a *block* (an `Array` of
//! `⌈m / GRID⌉²`, entry `(i, j)` at row `r + GRID i`, column `c + GRID j`) until it is stored.
//! Stages that read what another unit wrote need a `sync_storage` between them.

use cubecl::prelude::*;

/// Units per side of the cube.
pub const GRID: usize = 16;

/// The unit's block of `op(lhs) · op(rhs)` for the `[m, m]` matrices that start at `lhs` and
/// `rhs` in `work`, `op` transposing where `transpose_*` is set (zero outside the matrix).
/// `work` is mutable only because the kernels' buffer is.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn product_block<F: Float>(
    work: &mut Tensor<F>,
    lhs: usize,
    rhs: usize,
    row: usize,
    col: usize,
    #[comptime] m: usize,
    #[comptime] transpose_lhs: bool,
    #[comptime] transpose_rhs: bool,
) -> Array<F> {
    let grid = comptime![GRID];
    let blocks = comptime![m.div_ceil(GRID)];
    let mut sums = Array::<F>::new(blocks * blocks);
    #[unroll]
    for i in 0..blocks * blocks {
        sums[i] = F::new(0.0);
    }
    let mut left = Array::<F>::new(blocks);
    let mut right = Array::<F>::new(blocks);
    for k in 0..m {
        #[unroll]
        for i in 0..blocks {
            let r = row + grid * i;
            left[i] = F::new(0.0);
            if r < m {
                if comptime!(transpose_lhs) {
                    left[i] = work[lhs + k * m + r];
                } else {
                    left[i] = work[lhs + r * m + k];
                }
            }
            let c = col + grid * i;
            right[i] = F::new(0.0);
            if c < m {
                if comptime!(transpose_rhs) {
                    right[i] = work[rhs + c * m + k];
                } else {
                    right[i] = work[rhs + k * m + c];
                }
            }
        }
        #[unroll]
        for i in 0..blocks {
            #[unroll]
            for j in 0..blocks {
                sums[i * blocks + j] += left[i] * right[j];
            }
        }
    }
    sums
}

/// `sums += factor · other`, two blocks of the same unit.
#[cube]
pub fn add_block<F: Float>(sums: &mut Array<F>, other: &Array<F>, factor: F, #[comptime] m: usize) {
    let blocks = comptime![m.div_ceil(GRID)];
    #[unroll]
    for i in 0..blocks * blocks {
        sums[i] += factor * other[i];
    }
}

/// `sums += factor · work[source]` over the unit's entries of the matrix at `source`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn add_entries<F: Float>(
    sums: &mut Array<F>,
    work: &mut Tensor<F>,
    source: usize,
    factor: F,
    row: usize,
    col: usize,
    #[comptime] m: usize,
) {
    let grid = comptime![GRID];
    let blocks = comptime![m.div_ceil(GRID)];
    #[unroll]
    for i in 0..blocks {
        #[unroll]
        for j in 0..blocks {
            let (r, c) = (row + grid * i, col + grid * j);
            if r < m && c < m {
                sums[i * blocks + j] += factor * work[source + r * m + c];
            }
        }
    }
}

/// Writes `alpha · work[source] + beta · block` for the unit's entries into the matrix at
/// `target` (`source` may be `target`: each unit reads only the entries it writes).
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn store_block<F: Float>(
    work: &mut Tensor<F>,
    target: usize,
    alpha: F,
    source: usize,
    beta: F,
    block: &Array<F>,
    row: usize,
    col: usize,
    #[comptime] m: usize,
) {
    let grid = comptime![GRID];
    let blocks = comptime![m.div_ceil(GRID)];
    #[unroll]
    for i in 0..blocks {
        #[unroll]
        for j in 0..blocks {
            let (r, c) = (row + grid * i, col + grid * j);
            if r < m && c < m {
                let entry = r * m + c;
                work[target + entry] = alpha * work[source + entry] + beta * block[i * blocks + j];
            }
        }
    }
}

/// Writes `factor · block` for the unit's entries into the matrix at `target`, whatever was
/// there (it may be uninitialised).
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn store_scaled<F: Float>(
    work: &mut Tensor<F>,
    target: usize,
    factor: F,
    block: &Array<F>,
    row: usize,
    col: usize,
    #[comptime] m: usize,
) {
    let grid = comptime![GRID];
    let blocks = comptime![m.div_ceil(GRID)];
    #[unroll]
    for i in 0..blocks {
        #[unroll]
        for j in 0..blocks {
            let (r, c) = (row + grid * i, col + grid * j);
            if r < m && c < m {
                work[target + r * m + c] = factor * block[i * blocks + j];
            }
        }
    }
}
