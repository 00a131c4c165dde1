//! A sum over the units of a cube, through shared memory: each unit's value, added pairwise in
//! `log2(units)` rounds. Also what the kernels sum that way to learn that a whole cube has
//! nothing to do (a chunk of padding), which they then skip by a loop bound: every device honours
//! that, where a branch may cost both its sides (lavapipe runs them under a lane mask).
//!
//! The total is read with `workgroup_uniform_load` (WGSL's `workgroupUniformLoad`; a barrier and
//! a load elsewhere), which marks it the same for the whole cube: a loop bound or a branch taken
//! from it may then hold barriers. A plain read of shared memory is, to WGSL's uniformity
//! analysis, a value that may differ between units, and Tint (Chrome's WebGPU) refuses a barrier
//! under control flow taken from it (`tools/wgsl_check` runs that check on the tests' kernels).

use cubecl::prelude::*;

/// The sum of `value` over the cube's `2^log2_units` units (the cube's size), through `partial`
/// (that many entries of shared memory). Every unit of the cube must call it; it returns the
/// total to every unit, and `partial` may be reused as soon as it returns.
#[cube]
pub fn cube_sum(value: f32, partial: &mut Shared<[f32]>, #[comptime] log2_units: usize) -> f32 {
    let unit = UNIT_POS as usize;
    partial[unit] = value;
    let half = comptime!((1usize << log2_units) / 2);
    for step in 0..log2_units {
        // Each round reads what the previous one (or the store above) wrote.
        sync_cube();
        let stride = half >> step;
        if unit < stride {
            partial[unit] += partial[unit + stride];
        }
    }
    // Its barrier makes the last round's sum visible: no barrier of our own before it.
    let total = workgroup_uniform_load(&partial[0]);
    // The next sum overwrites `partial`.
    sync_cube();
    total
}

/// The number of entries among the `len` from `flags[first]` that `flags` does not mark (0.0),
/// to every unit of the cube (`units` of them, a power of two, which must all call it), through
/// `partial` (`units` entries of shared memory).
#[cube]
pub fn unflagged_count<F: Float>(
    flags: &Tensor<F>,
    first: usize,
    len: usize,
    partial: &mut Shared<[f32]>,
    #[comptime] units: usize,
) -> f32 {
    let mut count = f32::new(0.0);
    let mut i = UNIT_POS as usize;
    while i < len {
        if flags[first + i] == F::new(0.0) {
            count += 1.0f32;
        }
        i += units;
    }
    cube_sum(count, partial, comptime!(units.trailing_zeros() as usize))
}

/// The number of the cube's units for which `active` holds, to every unit (`units` of them, a
/// power of two, which must all call it), through `partial`.
#[cube]
pub fn active_count(active: bool, partial: &mut Shared<[f32]>, #[comptime] units: usize) -> f32 {
    let mut one = f32::new(0.0);
    if active {
        one = f32::new(1.0);
    }
    cube_sum(one, partial, comptime!(units.trailing_zeros() as usize))
}
