//! LayerNorm over the last dimension on flex, forward and backward, one pass over each row
//! block on every core. Burn runs it as about six tensor ops forward and a dozen backward, each
//! a full pass over `[tokens, width]` on one core (flex's elementwise ops are serial): the
//! largest part of the serial time of an LRA ListOps training step.
//!
//! Inputs are contiguous row-major `f32` slices: `x` `[rows, d]`, `gamma` and `beta` `[d]`.
//! As Burn: `y = (x − mean) / √(var + ε) · γ + β` with the biased variance.

use rayon::prelude::*;

use super::exp::sum;

/// Rows per parallel task.
const ROW_BLOCK: usize = 256;

/// One row's mean and `1 / √(var + ε)`, which the backward reuses.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowStats {
    mean: f32,
    inv_std: f32,
}

multiversion! {
    fn forward_block(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        epsilon: f32,
        out: &mut [f32],
        stats: &mut [RowStats],
    ) {
        let d = gamma.len();
        let rows = x.chunks_exact(d).zip(out.chunks_exact_mut(d));
        for ((x, out), stats) in rows.zip(stats) {
            let mean = sum(x) / d as f32;
            // Centred first, then squared: no cancellation when |mean| ≫ std.
            for (o, x) in out.iter_mut().zip(x) {
                *o = x - mean;
            }
            let var = out.iter().map(|c| c * c).sum::<f32>() / d as f32;
            let inv_std = 1.0 / (var + epsilon).sqrt();
            for ((o, g), b) in out.iter_mut().zip(gamma).zip(beta) {
                *o = *o * inv_std * g + b;
            }
            *stats = RowStats { mean, inv_std };
        }
    }
}

multiversion! {
    /// `dx` of a block of rows, and the block's sums `Σ dy · x̂` and `Σ dy` into `d_gamma` and
    /// `d_beta`.
    fn backward_block(
        x: &[f32],
        gamma: &[f32],
        stats: &[RowStats],
        grad: &[f32],
        dx: &mut [f32],
        d_gamma: &mut [f32],
        d_beta: &mut [f32],
    ) {
        let d = gamma.len();
        let rows = x.chunks_exact(d).zip(grad.chunks_exact(d)).zip(dx.chunks_exact_mut(d));
        for (((x, dy), dx), stats) in rows.zip(stats) {
            // dx holds x̂ first, then the gradient.
            for (h, x) in dx.iter_mut().zip(x) {
                *h = (x - stats.mean) * stats.inv_std;
            }
            let (mut mean_g, mut mean_gh) = (0.0f32, 0.0f32);
            for ((h, dy), g) in dx.iter().zip(dy).zip(gamma) {
                mean_g += dy * g;
                mean_gh += dy * g * h;
            }
            mean_g /= d as f32;
            mean_gh /= d as f32;
            let sums = d_gamma.iter_mut().zip(d_beta.iter_mut());
            for (((dx, dy), g), (dg, db)) in dx.iter_mut().zip(dy).zip(gamma).zip(sums) {
                let h = *dx;
                *dg += dy * h;
                *db += dy;
                *dx = stats.inv_std * (dy * g - mean_g - h * mean_gh);
            }
        }
    }
}

/// The normalised rows and each row's statistics.
pub fn forward(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f32) -> (Vec<f32>, Vec<RowStats>) {
    let d = gamma.len();
    let mut out = vec![0.0f32; x.len()];
    let mut stats = vec![RowStats::default(); x.len() / d];
    out.par_chunks_mut(ROW_BLOCK * d)
        .zip(stats.par_chunks_mut(ROW_BLOCK))
        .zip(x.par_chunks(ROW_BLOCK * d))
        .for_each(|((out, stats), x)| forward_block(x, gamma, beta, epsilon, out, stats));
    (out, stats)
}

/// The gradients of `x`, `gamma` and `beta` for the output gradient `grad`.
pub fn backward(
    x: &[f32],
    gamma: &[f32],
    stats: &[RowStats],
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let mut dx = vec![0.0f32; x.len()];
    let zeros = || (vec![0.0f32; d], vec![0.0f32; d]);
    let (d_gamma, d_beta) = dx
        .par_chunks_mut(ROW_BLOCK * d)
        .zip(x.par_chunks(ROW_BLOCK * d))
        .zip(grad.par_chunks(ROW_BLOCK * d))
        .zip(stats.par_chunks(ROW_BLOCK))
        .fold(
            zeros,
            |(mut d_gamma, mut d_beta), (((dx, x), grad), stats)| {
                backward_block(x, gamma, stats, grad, dx, &mut d_gamma, &mut d_beta);
                (d_gamma, d_beta)
            },
        )
        .reduce(zeros, |(mut ga, mut ba), (gb, bb)| {
            ga.iter_mut().zip(gb).for_each(|(a, b)| *a += b);
            ba.iter_mut().zip(bb).for_each(|(a, b)| *a += b);
            (ga, ba)
        });
    (dx, d_gamma, d_beta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in `10 ± 0.5`: a common offset large against the spread.
    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(0x9E37_79B9);
                10.0 + (h >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// LayerNorm of one row in f64.
    fn reference(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f64) -> Vec<f64> {
        let d = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / d;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d;
        x.iter()
            .zip(gamma)
            .zip(beta)
            .map(|((&v, &g), &b)| (v as f64 - mean) / (var + epsilon).sqrt() * g as f64 + b as f64)
            .collect()
    }

    #[test]
    fn forward_matches_f64() {
        let (rows, d) = (600, 24);
        let x = data(rows * d, 1);
        let gamma: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..d).map(|i| i as f32 * -0.05).collect();
        let (y, _) = forward(&x, &gamma, &beta, 1e-5);
        for (row, y) in x.chunks(d).zip(y.chunks(d)) {
            for (a, b) in y.iter().zip(reference(row, &gamma, &beta, 1e-5)) {
                assert!(
                    (*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()),
                    "{a} against {b}"
                );
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences_in_f64() {
        let (rows, d) = (300, 8);
        let x = data(rows * d, 2);
        let gamma: Vec<f32> = (0..d).map(|i| 1.0 + i as f32 * 0.2).collect();
        let beta = vec![0.1f32; d];
        let probe: Vec<f32> = data(rows * d, 3).iter().map(|v| v - 10.0).collect();
        let (_, stats) = forward(&x, &gamma, &beta, 1e-5);
        let (dx, d_gamma, d_beta) = backward(&x, &gamma, &stats, &probe);
        // The loss Σ probe ∘ LN(x), differentiated numerically in f64 row by row.
        let loss = |x: &[f32], gamma: &[f32], beta: &[f32], row: usize| -> f64 {
            reference(&x[row * d..][..d], gamma, beta, 1e-5)
                .iter()
                .zip(&probe[row * d..][..d])
                .map(|(y, p)| y * *p as f64)
                .sum()
        };
        let h = 1e-2f32;
        for row in [0, 137, rows - 1] {
            for j in 0..d {
                let i = row * d + j;
                let (mut up, mut down) = (x.clone(), x.clone());
                up[i] += h;
                down[i] -= h;
                let numeric = (loss(&up, &gamma, &beta, row) - loss(&down, &gamma, &beta, row))
                    / (up[i] - down[i]) as f64;
                assert!(
                    (dx[i] as f64 - numeric).abs() < 1e-3 * (1.0 + numeric.abs()),
                    "dx[{i}] = {} against {numeric}",
                    dx[i]
                );
            }
        }
        // γ and β gradients are sums over every row: against the f64 formula.
        for j in 0..d {
            let (mut dg, mut db) = (0.0f64, 0.0f64);
            for row in 0..rows {
                let r = &x[row * d..][..d];
                let y = reference(r, &vec![1.0; d], &vec![0.0; d], 1e-5);
                dg += probe[row * d + j] as f64 * y[j];
                db += probe[row * d + j] as f64;
            }
            assert!((d_gamma[j] as f64 - dg).abs() < 1e-3 * (1.0 + dg.abs()));
            assert!((d_beta[j] as f64 - db).abs() < 1e-3 * (1.0 + db.abs()));
        }
    }
}
