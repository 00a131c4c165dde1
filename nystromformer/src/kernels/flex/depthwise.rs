//! The skip connection's depthwise convolution along the sequence on flex, forward and backward.
//! Flex runs it as a generic 3-d convolution, and its backward as a transposed one: 9 % of an
//! LRA ListOps training step. Here each tap is one long `axpy` or dot product: for a fixed tap
//! `t`, output rows `i` read input rows `i + t − k/2`, a contiguous range of `[n, d]` memory.
//!
//! Inputs are contiguous row-major `f32` slices: values `[batch, heads, n, d]`, taps
//! `[heads, k]` (the convolution's `[heads, 1, k, 1]` weight), `k` odd, zero padding.

use rayon::prelude::*;

use super::exp;

/// The shapes of one call.
#[derive(Debug, Clone, Copy)]
pub struct ConvDims {
    /// Batch size.
    pub batch: usize,
    /// Heads (one filter each).
    pub heads: usize,
    /// Sequence length.
    pub n: usize,
    /// Head size.
    pub d: usize,
    /// Taps per filter (odd).
    pub k: usize,
}

impl ConvDims {
    /// For tap `t`: the output rows `i` whose input row `i + t − k/2` exists (`None` when no
    /// row does: the filter is longer than the sequence), and the first input row.
    fn rows(&self, t: usize) -> Option<(std::ops::Range<usize>, usize)> {
        let shift = t as isize - (self.k / 2) as isize;
        let first = (-shift).max(0);
        let end = (self.n as isize - shift).min(self.n as isize);
        (first < end).then(|| (first as usize..end as usize, (first + shift) as usize))
    }
}

multiversion! {
    /// `out += a · x`.
    fn axpy(out: &mut [f32], a: f32, x: &[f32]) {
        for (o, x) in out.iter_mut().zip(x) {
            *o += a * x;
        }
    }
}

multiversion! {
    /// `Σ a · b`.
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        exp::dot(a, b)
    }
}

/// `out[b, h, i] = Σ_t taps[h, t] · values[b, h, i + t − k/2]`.
pub fn forward(dims: ConvDims, values: &[f32], taps: &[f32]) -> Vec<f32> {
    let ConvDims { heads, n, d, k, .. } = dims;
    let mut out = vec![0.0f32; dims.batch * heads * n * d];
    out.par_chunks_mut(n * d).enumerate().for_each(|(bh, out)| {
        let v = &values[bh * n * d..][..n * d];
        for (t, &tap) in taps[(bh % heads) * k..][..k].iter().enumerate() {
            let Some((rows, from)) = dims.rows(t) else {
                continue;
            };
            axpy(
                &mut out[rows.start * d..rows.end * d],
                tap,
                &v[from * d..][..rows.len() * d],
            );
        }
    });
    out
}

/// Zeroes the rows of `x` (`[batch, heads, n, d]`) at the `[batch, n]` positions that `padded`
/// marks.
pub fn zero_rows(dims: ConvDims, x: &mut [f32], padded: &[bool]) {
    let ConvDims { heads, n, d, .. } = dims;
    x.par_chunks_mut(n * d)
        .enumerate()
        .for_each(|(bh, matrix)| {
            let padded = &padded[bh / heads * n..][..n];
            for (row, _) in padded.iter().enumerate().filter(|(_, padded)| **padded) {
                matrix[row * d..][..d].fill(0.0);
            }
        });
}

/// The gradients of the values (`[batch, heads, n, d]`) and the taps (`[heads, k]`) for the
/// output gradient `grad`.
pub fn backward(
    dims: ConvDims,
    values: &[f32],
    taps: &[f32],
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let ConvDims {
        batch,
        heads,
        n,
        d,
        k,
    } = dims;
    // d values[b, h, i + t − k/2] += taps[h, t] · grad[b, h, i]
    let mut d_values = vec![0.0f32; batch * heads * n * d];
    d_values
        .par_chunks_mut(n * d)
        .enumerate()
        .for_each(|(bh, d_v)| {
            let g = &grad[bh * n * d..][..n * d];
            for (t, &tap) in taps[(bh % heads) * k..][..k].iter().enumerate() {
                let Some((rows, to)) = dims.rows(t) else {
                    continue;
                };
                axpy(
                    &mut d_v[to * d..][..rows.len() * d],
                    tap,
                    &g[rows.start * d..rows.end * d],
                );
            }
        });
    // d taps[h, t] = Σ_b Σ_i grad[b, h, i] · values[b, h, i + t − k/2]
    let mut d_taps = vec![0.0f32; heads * k];
    d_taps
        .par_chunks_mut(k)
        .enumerate()
        .for_each(|(h, d_taps)| {
            for b in 0..batch {
                let bh = b * heads + h;
                let g = &grad[bh * n * d..][..n * d];
                let v = &values[bh * n * d..][..n * d];
                for (t, d_tap) in d_taps.iter_mut().enumerate() {
                    let Some((rows, from)) = dims.rows(t) else {
                        continue;
                    };
                    *d_tap += dot(
                        &g[rows.start * d..rows.end * d],
                        &v[from * d..][..rows.len() * d],
                    );
                }
            }
        });
    (d_values, d_taps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution by its definition, one output at a time.
    fn direct(dims: ConvDims, values: &[f32], taps: &[f32]) -> Vec<f32> {
        let ConvDims { heads, n, d, k, .. } = dims;
        let mut out = vec![0.0; values.len()];
        for (index, o) in out.iter_mut().enumerate() {
            let (bh, i, c) = (index / (n * d), index / d % n, index % d);
            for t in 0..k {
                let j = i as isize + t as isize - (k / 2) as isize;
                if (0..n as isize).contains(&j) {
                    *o += taps[(bh % heads) * k + t] * values[(bh * n + j as usize) * d + c];
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_with_filters_longer_than_the_sequence() {
        for (n, k) in [(7, 1), (7, 3), (5, 9), (1, 3)] {
            let dims = ConvDims {
                batch: 2,
                heads: 3,
                n,
                d: 3,
                k,
            };
            let values: Vec<f32> = (0..2 * 3 * n * 3).map(|i| (i % 7) as f32 - 3.0).collect();
            let taps: Vec<f32> = (0..3 * k).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
            let out = forward(dims, &values, &taps);
            let expected = direct(dims, &values, &taps);
            let worst = out
                .iter()
                .zip(&expected)
                .fold(0.0f32, |acc, (a, b)| acc.max((a - b).abs()));
            assert!(worst < 1e-5, "n = {n}, k = {k}: {worst}");
        }
    }
}
