//! A sum over the units of a cube, through shared memory: each unit's value, added pairwise in
//! `log2(units)` rounds.

use cubecl::prelude::*;

/// The sum of `value` over the cube's `2^log2_units` units (the cube's size), through `partial`
/// (that many entries of shared memory). Every unit of the cube must call it; it returns the
/// total to every unit, and `partial` may be reused as soon as it returns.
#[cube]
pub fn cube_sum<L: List<f32>>(value: f32, partial: &mut L, #[comptime] log2_units: usize) -> f32 {
    let unit = UNIT_POS as usize;
    partial[unit] = value;
    sync_cube();
    let half = comptime!((1usize << log2_units) / 2);
    for step in 0..log2_units {
        let stride = half >> step;
        if unit < stride {
            partial[unit] += partial[unit + stride];
        }
        sync_cube();
    }
    let total = partial[0];
    // The next sum overwrites `partial`.
    sync_cube();
    total
}
