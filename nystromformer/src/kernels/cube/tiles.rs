//! Tiles of rows staged in shared memory, and reading the attention's inputs in place.
//!
//! The softmax kernels give each unit one row of the long side (a query of `F · W`, a landmark of
//! `B · V`) and stream the other side's rows past it. Each such row is read by every unit of the
//! cube, so the cube loads a tile of them into shared memory once, together, and every unit reads
//! it from there: one global load per tile entry instead of one per unit.

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::flagged;

/// Shared memory one tile may take, in f32 entries (12 KiB; WebGPU guarantees 16 KiB per cube).
/// Tiles hold f32 whatever the input type, as the softmax state does.
const TILE_BUDGET: usize = 3072;

/// The most rows a tile holds: past that, the stage loop is long enough to hide its barriers.
const MAX_TILE_ROWS: usize = 32;

/// Rows per tile when each row brings `row_len` entries (its key and its value row): the largest
/// power of two within [`TILE_BUDGET`] and [`MAX_TILE_ROWS`].
pub fn rows_per_tile(row_len: usize) -> usize {
    let fit = (TILE_BUDGET / row_len.max(1)).clamp(1, MAX_TILE_ROWS);
    1 << fit.ilog2()
}

/// `x` as the kernels read it: any strides, as long as the last dimension is contiguous (the
/// head split's `[batch, heads, n, d]` view of a `[batch, n, heads · d]` projection is). Other
/// layouts are copied.
pub fn rows_in_place(x: CubeTensor) -> CubeTensor {
    let strides = x.meta.strides();
    if x.meta.shape().num_dims() == 4 && strides[3] == 1 {
        x
    } else {
        into_contiguous(x)
    }
}

/// The offset of row `row` of matrix (`batch`, `head`) in a `[batch, heads, rows, _]` tensor
/// whose last dimension is contiguous.
#[cube]
pub fn row_offset<F: Float>(tensor: &Tensor<F>, batch: usize, head: usize, row: usize) -> usize {
    batch * tensor.stride(0) + head * tensor.stride(1) + row * tensor.stride(2)
}

/// Loads `rows` rows of `len` entries into `tile` (row-major, converted to `F`), split across the
/// cube's `units`: tile row `r` is `tensor[first + r · row_stride ..][..len]` for
/// `r < available`, zeros after. Every unit of the cube must call it; a `sync_cube` must follow
/// before the tile is read.
#[cube]
pub fn stage_rows<I: Float, F: Float, L: List<F>>(
    tensor: &Tensor<I>,
    tile: &mut L,
    first: usize,
    row_stride: usize,
    available: usize,
    #[comptime] rows: usize,
    #[comptime] len: usize,
    #[comptime] units: usize,
) {
    // No flags: the tensor stands in for them, never read.
    stage_unflagged_rows::<I, F, L>(
        tensor, tile, first, row_stride, available, tensor, 0, false, rows, len, units,
    );
}

/// [`stage_rows`], with the rows that `flags` marks (tile row `r` at `flags[flags_first + r]`,
/// read only when `flagged_rows`) staged as zeros without reading them: padding that counts as
/// zeros, whatever it holds.
#[cube]
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
pub fn stage_unflagged_rows<I: Float, F: Float, L: List<F>>(
    tensor: &Tensor<I>,
    tile: &mut L,
    first: usize,
    row_stride: usize,
    available: usize,
    flags: &Tensor<I>,
    flags_first: usize,
    #[comptime] flagged_rows: bool,
    #[comptime] rows: usize,
    #[comptime] len: usize,
    #[comptime] units: usize,
) {
    let mut i = UNIT_POS as usize;
    while i < rows * len {
        let r = i / len;
        let mut x = F::new(0.0);
        // Nested, so that a row past the end never reads its flag.
        if r < available {
            if !flagged(flags, flags_first + r, flagged_rows) {
                x = F::cast_from(tensor[first + r * row_stride + i % len]);
            }
        }
        tile[i] = x;
        i += units;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_the_budget_and_are_powers_of_two() {
        for row_len in [1, 2, 32, 64, 128, 129, 256, 257, 4000] {
            let rows = rows_per_tile(row_len);
            assert!(rows.is_power_of_two(), "{row_len}: {rows}");
            assert!(rows <= MAX_TILE_ROWS);
            assert!(
                rows == 1 || rows * row_len <= TILE_BUDGET,
                "{row_len}: {rows}"
            );
        }
        assert_eq!(rows_per_tile(129), 16);
        assert_eq!(rows_per_tile(257), 8);
    }
}
