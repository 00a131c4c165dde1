//! The pseudo-inverse iteration on flex, one rayon task per `[m, m]` matrix, each product one
//! single-threaded gemm call: flex ran it as about thirty tensor ops per forward, each on one
//! core with its own allocation, which at n = 4 096 was a third of the forward.
//!
//! Each iteration of `Z ← ¼ Z (13I − AZ (15I − AZ (7I − AZ)))` is four products, as in the
//! CubeCL kernel:
//!
//! ```text
//! P = A Z,  T = 7P − P P,  U = 15P − P T,  Z ← ¼ (13Z − Z U)
//! ```
//!
//! The backward walks the iterations in reverse from the saved iterates `Z_k` (recomputing `P`,
//! `T` and `U`): with `G` the gradient of the new `Z`,
//!
//! ```text
//! dZ = ¼ (13G − G Uᵀ),  dU = −¼ Zᵀ G,
//! dT = −Pᵀ dU,          dP = 15 dU − dU Tᵀ + 7 dT − dT Pᵀ − Pᵀ dT,
//! dA += dP Zᵀ,          dZ += Aᵀ dP,
//! ```
//!
//! and `Z₀ = Aᵀ / c` gives `dA += dZ₀ᵀ / c` and `dc = −Σ dZ₀ ∘ Z₀ / c`.
//!
//! Matrices are contiguous row-major `f32` slices, `[matrices, m, m]`; `c` is one per matrix.

use rayon::prelude::*;

use super::products::{matmul, transpose};

/// Row-major strides of an `[m, m]` matrix, and of its transpose.
fn plain(m: usize) -> (usize, usize) {
    (m, 1)
}
fn transposed(m: usize) -> (usize, usize) {
    (1, m)
}

/// An `[m, m]` operand and its strides.
type Operand<'a> = (&'a [f32], (usize, usize));

/// `dst = x · y`, or `dst += x · y` when `accumulate`.
fn product(m: usize, dst: &mut [f32], accumulate: bool, (x, xs): Operand, (y, ys): Operand) {
    matmul(m, m, m, dst, accumulate, x, xs, y, ys);
}

/// `dst = a · x + b · dst`, elementwise.
fn combine(dst: &mut [f32], a: f32, x: &[f32], b: f32) {
    dst.iter_mut().zip(x).for_each(|(d, x)| *d = a * x + b * *d);
}

/// `P`, `T` and `U` of one iteration from `A` and its `Z`.
struct Step {
    p: Vec<f32>,
    t: Vec<f32>,
    u: Vec<f32>,
}

impl Step {
    fn new(m: usize, a: &[f32], z: &[f32]) -> Self {
        let mut step = Step {
            p: vec![0.0; m * m],
            t: vec![0.0; m * m],
            u: vec![0.0; m * m],
        };
        let Step { p, t, u } = &mut step;
        product(m, p, false, (a, plain(m)), (z, plain(m)));
        product(m, t, false, (p, plain(m)), (p, plain(m)));
        combine(t, 7.0, p, -1.0);
        product(m, u, false, (p, plain(m)), (t, plain(m)));
        combine(u, 15.0, p, -1.0);
        step
    }
}

/// The pseudo-inverse of one matrix after `iterations` steps from `Z₀ = Aᵀ / c`, and with
/// `save` the iterates `Z₀ … Z_{iterations − 1}` (`iterations · m²`; empty without).
fn iterate(m: usize, a: &[f32], c: f32, iterations: usize, save: bool) -> (Vec<f32>, Vec<f32>) {
    let mut z = transpose(a, m, m);
    z.iter_mut().for_each(|z| *z /= c);
    let mut saved = Vec::with_capacity(if save { iterations * m * m } else { 0 });
    let mut zu = vec![0.0f32; m * m];
    for _ in 0..iterations {
        if save {
            saved.extend_from_slice(&z);
        }
        let Step { u, .. } = Step::new(m, a, &z);
        product(m, &mut zu, false, (&z, plain(m)), (&u, plain(m)));
        z.iter_mut()
            .zip(&zu)
            .for_each(|(z, zu)| *z = 0.25 * (13.0 * *z - zu));
    }
    (z, saved)
}

/// The gradients of one matrix's `A` and `c` for the gradient `grad` of its pseudo-inverse,
/// from the iterates [`iterate`] saved.
fn iterate_backward(m: usize, a: &[f32], c: f32, saved: &[f32], grad: &[f32]) -> (Vec<f32>, f32) {
    let mut g = grad.to_vec();
    let mut d_a = vec![0.0f32; m * m];
    let (mut d_z, mut d_u, mut d_t, mut d_p) = (
        vec![0.0f32; m * m],
        vec![0.0f32; m * m],
        vec![0.0f32; m * m],
        vec![0.0f32; m * m],
    );
    for z in saved.chunks_exact(m * m).rev() {
        let Step { p, t, u } = Step::new(m, a, z);
        // dZ = ¼ (13G − G Uᵀ)
        product(m, &mut d_z, false, (&g, plain(m)), (&u, transposed(m)));
        combine(&mut d_z, 13.0 * 0.25, &g, -0.25);
        // dU = −¼ Zᵀ G, dT = −Pᵀ dU
        product(m, &mut d_u, false, (z, transposed(m)), (&g, plain(m)));
        d_u.iter_mut().for_each(|x| *x *= -0.25);
        product(m, &mut d_t, false, (&p, transposed(m)), (&d_u, plain(m)));
        d_t.iter_mut().for_each(|x| *x = -*x);
        // dP = 15 dU + 7 dT − (dU Tᵀ + dT Pᵀ + Pᵀ dT)
        product(m, &mut d_p, false, (&d_u, plain(m)), (&t, transposed(m)));
        product(m, &mut d_p, true, (&d_t, plain(m)), (&p, transposed(m)));
        product(m, &mut d_p, true, (&p, transposed(m)), (&d_t, plain(m)));
        for ((dp, du), dt) in d_p.iter_mut().zip(&d_u).zip(&d_t) {
            *dp = 15.0 * du + 7.0 * dt - *dp;
        }
        // P = A Z
        product(m, &mut d_a, true, (&d_p, plain(m)), (z, transposed(m)));
        product(m, &mut d_z, true, (a, transposed(m)), (&d_p, plain(m)));
        std::mem::swap(&mut g, &mut d_z);
    }
    // Z₀ = Aᵀ / c: dA += Gᵀ / c, dc = −Σ Gᵀ ∘ A / c².
    let g_t = transpose(&g, m, m);
    let mut d_c = 0.0f32;
    for ((d_a, g), a) in d_a.iter_mut().zip(&g_t).zip(a) {
        *d_a += g / c;
        d_c -= g * a;
    }
    (d_a, d_c / (c * c))
}

/// `Z` after `iterations` steps from `Z₀ = Aᵀ / c` for each matrix (`[matrices, m, m]`), and
/// with `save` the iterates `Z₀ … Z_{iterations − 1}` (`[matrices, iterations, m, m]`) for
/// [`backward`].
pub fn forward(
    a: &[f32],
    coefficient: &[f32],
    m: usize,
    iterations: usize,
    save: bool,
) -> (Vec<f32>, Vec<f32>) {
    let per_matrix: Vec<(Vec<f32>, Vec<f32>)> = a
        .par_chunks(m * m)
        .zip(coefficient.par_iter())
        .map(|(a, c)| iterate(m, a, *c, iterations, save))
        .collect();
    let (z, saved): (Vec<_>, Vec<_>) = per_matrix.into_iter().unzip();
    (z.concat(), saved.concat())
}

/// The gradients of [`forward`]'s `A` (`[matrices, m, m]`) and `c` (`[matrices]`) for the
/// gradient `grad` of its output, from the iterates it saved.
pub fn backward(
    a: &[f32],
    coefficient: &[f32],
    m: usize,
    saved: &[f32],
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let matrices = coefficient.len();
    let per_saved = saved.len() / matrices.max(1);
    let per_matrix: Vec<(Vec<f32>, f32)> = (0..matrices)
        .into_par_iter()
        .map(|i| {
            let square = i * m * m..(i + 1) * m * m;
            let saved = &saved[i * per_saved..][..per_saved];
            iterate_backward(m, &a[square.clone()], coefficient[i], saved, &grad[square])
        })
        .collect();
    let (d_a, d_c): (Vec<_>, Vec<_>) = per_matrix.into_iter().unzip();
    (d_a.concat(), d_c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row-stochastic `[m, m]` matrix with a strong diagonal (well conditioned).
    fn stochastic(m: usize, seed: usize) -> Vec<f32> {
        let mut a: Vec<f32> = (0..m * m)
            .map(|i| {
                ((i * 7919 + seed * 104_729) % 97) as f32 / 97.0
                    + if i % (m + 1) == 0 { m as f32 } else { 0.0 }
            })
            .collect();
        for row in a.chunks_exact_mut(m) {
            let total: f32 = row.iter().sum();
            row.iter_mut().for_each(|x| *x /= total);
        }
        a
    }

    fn column_norm(a: &[f32], m: usize) -> f32 {
        (0..m)
            .map(|j| (0..m).map(|i| a[i * m + j].abs()).sum::<f32>())
            .fold(0.0, f32::max)
    }

    #[test]
    fn converges_to_the_inverse() {
        let m = 8;
        let a = stochastic(m, 1);
        let (z, saved) = forward(&a, &[column_norm(&a, m)], m, 20, false);
        assert!(saved.is_empty());
        for i in 0..m {
            for j in 0..m {
                let az: f32 = (0..m).map(|k| a[i * m + k] * z[k * m + j]).sum();
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((az - expected).abs() < 1e-4, "(AZ)[{i}, {j}] = {az}");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Σ probe ∘ Z as a function of each entry of A and of c, in f64-free central differences
        // on a small matrix, against the backward.
        let (m, iterations) = (4, 3);
        let a = stochastic(m, 2);
        let c = column_norm(&a, m);
        let probe: Vec<f32> = (0..m * m).map(|i| (i % 5) as f32 * 0.3 - 0.6).collect();
        let loss = |a: &[f32], c: f32| -> f64 {
            let (z, _) = forward(a, &[c], m, iterations, false);
            z.iter()
                .zip(&probe)
                .map(|(z, p)| (*z as f64) * (*p as f64))
                .sum()
        };
        let (_, saved) = forward(&a, &[c], m, iterations, true);
        assert_eq!(saved.len(), iterations * m * m);
        let (d_a, d_c) = backward(&a, &[c], m, &saved, &probe);
        let h = 1e-3f32;
        for i in 0..m * m {
            let (mut up, mut down) = (a.clone(), a.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (loss(&up, c) - loss(&down, c)) / (2.0 * h as f64);
            let tolerance = 2e-2 * numeric.abs().max(0.1);
            assert!(
                (d_a[i] as f64 - numeric).abs() < tolerance,
                "dA[{i}] = {} against {numeric}",
                d_a[i]
            );
        }
        let numeric = (loss(&a, c + h) - loss(&a, c - h)) / (2.0 * h as f64);
        assert!(
            (d_c[0] as f64 - numeric).abs() < 2e-2 * numeric.abs().max(0.1),
            "dc = {} against {numeric}",
            d_c[0]
        );
    }
}
