//! The online softmax shared by the kernels: `Σⱼ softmax(s)ⱼ · vⱼ` over a stream of scores `sⱼ`
//! and value rows `vⱼ` in one pass (Milakov & Gimelshein, 2018).
//!
//! The state is one register array of `value_dim + 2` entries: the weighted sum of value rows,
//! then the running maximum, then the running sum of `exp(sⱼ − max)`. Each new score that raises
//! the maximum rescales both sums, so no exponential ever overflows and the softmax weights are
//! never stored.
//!
//! The kernels keep the state in f32 whatever their input type (`F = f32` here), so half-precision
//! inputs still sum their exponentials and weighted values in single precision.

use cubecl::prelude::*;

/// Where a running maximum starts: below every score the kernels take, masked ones included (see
/// [`kernel_masked_score`]), so that the first score's rescaling factor is exactly 0; finite
/// because WGSL has no infinity literal.
pub const MAX_START: f32 = -1.0e30;

/// `masked_score` as the kernels score a padded key: no lower than `-1e29`, above
/// [`MAX_START`], where a lower one (`min_float` may be any finite negative value) would weigh
/// nothing even in a row of padded keys alone and leave it `0 / 0`. Exact: beside any real score
/// a masked key weighs `exp(masked − max) = 0` either way, and a row of masked keys alone is
/// uniform whatever their common score.
pub fn kernel_masked_score(masked_score: f32) -> f32 {
    masked_score.max(MAX_START / 10.0)
}

/// An empty state for value rows of `value_dim` entries.
#[cube]
pub fn empty_state<F: Float>(#[comptime] value_dim: usize) -> Array<F> {
    let mut state = Array::<F>::new(value_dim + 2);
    #[unroll]
    for c in 0..value_dim {
        state[c] = F::new(0.0);
    }
    state[value_dim] = F::new(MAX_START);
    state[value_dim + 1] = F::new(0.0);
    state
}

/// Adds `score` with the value row that starts at `values[start]` (a tensor or a tile in shared
/// memory).
#[cube]
pub fn add<F: Float, L: List<F>>(
    state: &mut Array<F>,
    score: F,
    values: &L,
    start: usize,
    #[comptime] value_dim: usize,
) {
    let running_max = state[value_dim];
    let new_max = F::max(running_max, score);
    let rescale = F::exp(running_max - new_max);
    let weight = F::exp(score - new_max);
    #[unroll]
    for c in 0..value_dim {
        state[c] = state[c] * rescale + weight * values[start + c];
    }
    state[value_dim] = new_max;
    state[value_dim + 1] = state[value_dim + 1] * rescale + weight;
}

/// Adds `count` scores all equal to `score` whose value rows are zero (padded keys taken as
/// zeros), as `count` calls of [`add`] would, in one step: such keys only weigh on the
/// normaliser, which the fully padded rows need and every other row rounds to no change.
#[cube]
pub fn add_zero_rows<F: Float>(
    state: &mut Array<F>,
    score: F,
    count: F,
    #[comptime] value_dim: usize,
) {
    let running_max = state[value_dim];
    let new_max = F::max(running_max, score);
    let rescale = F::exp(running_max - new_max);
    let weight = F::exp(score - new_max);
    #[unroll]
    for c in 0..value_dim {
        state[c] *= rescale;
    }
    state[value_dim] = new_max;
    state[value_dim + 1] = state[value_dim + 1] * rescale + count * weight;
}

/// The running maximum.
#[cube]
pub fn maximum<F: Float>(state: &Array<F>, #[comptime] value_dim: usize) -> F {
    state[value_dim]
}

/// The running sum of exponentials (relative to [`maximum`]).
#[cube]
pub fn total<F: Float>(state: &Array<F>, #[comptime] value_dim: usize) -> F {
    state[value_dim + 1]
}

/// `len` consecutive entries of `tensor` from `start`, in registers as `F`; zeros where
/// `!inside` (a unit past the end of its tensor, which still takes part in its cube's shared
/// loads).
#[cube]
pub fn load_row<I: Float, F: Float>(
    tensor: &Tensor<I>,
    start: usize,
    inside: bool,
    #[comptime] len: usize,
) -> Array<F> {
    let mut row = Array::<F>::new(len);
    #[unroll]
    for c in 0..len {
        let mut x = F::new(0.0);
        if inside {
            x = F::cast_from(tensor[start + c]);
        }
        row[c] = x;
    }
    row
}

/// The dot product of a row in registers with `len` entries of `tensor` (a tensor or a tile in
/// shared memory) from `start`.
#[cube]
pub fn dot<F: Float, L: List<F>>(
    row: &Array<F>,
    tensor: &L,
    start: usize,
    #[comptime] len: usize,
) -> F {
    let mut sum = F::new(0.0);
    #[unroll]
    for c in 0..len {
        sum += row[c] * tensor[start + c];
    }
    sum
}
