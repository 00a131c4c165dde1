//! The ranked segments of a padding mask in one launch: each valid position's rank, the
//! position of each rank, each sequence's length, its missing segments and whether it is short
//! (see [`crate::attention::landmarks::Segments`]), and the padding and the missing segments as
//! the float flags that the attention's kernels read (two conversions fewer).
//!
//! The tensor ops take sixteen launches for this on every masked forward: prefix sums in blocks
//! (CubeCL's cumulative sum loops over every earlier entry), a scatter for the order, and the
//! segment starts' arithmetic. Here one cube takes one sequence: each unit counts the valid
//! positions of its run of the mask, the first unit turns the counts into the ranks each run
//! starts at, and each unit walks its run again writing ranks and order. No loop runs past
//! about `max(units, ⌈n / units⌉)` entries, 256 units where the device has them (llvmpipe ends a
//! loop at 65 535 iterations).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::Shape;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::landmark_means::segment_start;

/// Units per cube: one run of the mask each.
const UNITS_PER_CUBE: u32 = 256;

/// `(order, rank, lengths, missing, short, padding_flags, missing_flags)`, as
/// [`crate::kernels::extension::SegmentLayoutOps::ranked_segments`] describes them.
pub type SegmentLayout = (
    CubeTensor,
    CubeTensor,
    CubeTensor,
    CubeTensor,
    CubeTensor,
    CubeTensor,
    CubeTensor,
);

/// The layout of `mask` (`[batch, n]`, any strides, `true` = padding) cut into `m` segments, the
/// integers in `int_like`'s type, `missing` and `short` in the mask's, the flags in
/// `float_like`'s.
pub fn launch(
    mask: CubeTensor,
    int_like: &CubeTensor,
    float_like: &CubeTensor,
    m: usize,
) -> SegmentLayout {
    let [batch, n] = mask.meta.shape().dims::<2>();
    let client = mask.client.clone();
    let (bool_dtype, int_dtype, float_dtype) = (mask.dtype, int_like.dtype, float_like.dtype);
    let empty = |shape: Shape, dtype| {
        empty_device_contiguous_dtype(client.clone(), mask.device.clone(), shape, dtype)
    };
    let order = empty(Shape::new([batch, n]), int_dtype);
    let rank = empty(Shape::new([batch, n]), int_dtype);
    let lengths = empty(Shape::new([batch]), int_dtype);
    let missing = empty(Shape::new([batch, m]), bool_dtype);
    let short = empty(Shape::new([batch]), bool_dtype);
    let padding_flags = empty(Shape::new([batch, n]), float_dtype);
    let missing_flags = empty(Shape::new([batch, m]), float_dtype);
    let units = UNITS_PER_CUBE.min(client.properties().hardware.max_units_per_cube) as usize;
    let cube_dim = CubeDim::new_1d(units as u32);
    ranked_segments_kernel::launch(
        &client,
        // One cube per sequence, in a grid of more than one dimension past 65 535 sequences.
        cubecl::calculate_cube_count_elemwise(&client, batch * units, cube_dim),
        cube_dim,
        mask.into_tensor_arg(),
        order.clone().into_tensor_arg(),
        rank.clone().into_tensor_arg(),
        lengths.clone().into_tensor_arg(),
        missing.clone().into_tensor_arg(),
        short.clone().into_tensor_arg(),
        padding_flags.clone().into_tensor_arg(),
        missing_flags.clone().into_tensor_arg(),
        units,
        [
            dtype_to_storage_type(bool_dtype),
            dtype_to_storage_type(int_dtype),
            dtype_to_storage_type(float_dtype),
        ],
    );
    (
        order,
        rank,
        lengths,
        missing,
        short,
        padding_flags,
        missing_flags,
    )
}

/// One cube per sequence (`CUBE_POS`) of `units` units, unit `u` owning the positions (and, for
/// the order's unused tail, the ranks) `u·⌈n/units⌉..(u+1)·⌈n/units⌉`. The outputs are
/// contiguous: `order`, `rank`, `padding_flags` `[batch, n]`, `lengths`, `short` `[batch]`,
/// `missing`, `missing_flags` `[batch, m]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ranked_segments_kernel<B: Numeric, I: Int, F: Float>(
    mask: &Tensor<B>,
    order: &mut Tensor<I>,
    rank: &mut Tensor<I>,
    lengths: &mut Tensor<I>,
    missing: &mut Tensor<B>,
    short: &mut Tensor<B>,
    padding_flags: &mut Tensor<F>,
    missing_flags: &mut Tensor<F>,
    #[comptime] units: usize,
    #[define(B, I, F)] _dtypes: [ElemType; 3],
) {
    let sequence = CUBE_POS;
    // Whole cubes past the last sequence (the grid is rounded up) leave before any barrier.
    if sequence >= mask.shape(0) {
        terminate!();
    }
    let n = mask.shape(1);
    let m = missing.shape(1);
    let unit = UNIT_POS as usize;
    let run = n.div_ceil(units);
    let mut first = unit * run;
    if first > n {
        first = n;
    }
    let mut end = first + run;
    if end > n {
        end = n;
    }
    let mask_row = sequence * mask.stride(0);
    let mask_step = mask.stride(1);

    // Slot `u` ends up holding the rank of run `u`'s first valid position; slot `units` the length.
    let mut starts = Shared::<[u32]>::new_slice(units + 1);
    let mut count = 0u32;
    for p in first..end {
        if mask[mask_row + p * mask_step] == B::from_int(0) {
            count += 1;
        }
    }
    starts[unit] = count;
    sync_cube();
    if unit == 0 {
        let mut total = 0u32;
        for u in 0..units {
            let run_count = starts[u];
            starts[u] = total;
            total += run_count;
        }
        starts[units] = total;
    }
    sync_cube();

    let length = usize::cast_from(starts[units]);
    let row = sequence * n;
    let mut next = usize::cast_from(starts[unit]);
    for p in first..end {
        if mask[mask_row + p * mask_step] == B::from_int(0) {
            rank[row + p] = I::cast_from(next);
            order[row + next] = I::cast_from(p);
            padding_flags[row + p] = F::new(0.0);
            next += 1;
        } else {
            rank[row + p] = I::cast_from(n);
            padding_flags[row + p] = F::new(1.0);
        }
    }
    // The order's entries from the length on mean nothing; zeros, as the tensor ops leave them.
    for r in first..end {
        if r >= length {
            order[row + r] = I::from_int(0);
        }
    }
    if unit == 0 {
        lengths[sequence] = I::cast_from(length);
        let mut is_short = B::from_int(0);
        if length <= m {
            is_short = B::from_int(1);
        }
        short[sequence] = is_short;
    }
    let mut s = unit;
    while s < m {
        let mut empty = B::from_int(0);
        let mut flag = F::new(0.0);
        if segment_start(s + 1, length, m) == segment_start(s, length, m) {
            empty = B::from_int(1);
            flag = F::new(1.0);
        }
        missing[sequence * m + s] = empty;
        missing_flags[sequence * m + s] = flag;
        s += units;
    }
}
