//! Exact GELU (`x · Φ(x)`, with `erf`) on flex, forward and backward, vectorised. Flex calls
//! scalar `libm::erff` per element, twice per training step (forward and backward): 6 % of an
//! LRA ListOps step.
//!
//! `erf` is the odd rational minimax fit that Eigen and XLA use for `f32` (a degree-13
//! numerator over a degree-8 denominator in `x`, on `x` clamped to `[-4, 4]`, beyond which
//! `erf` is `±1` in `f32`): no branch, no table, one division, within 4 units in the last place
//! of `erf` near `±1` and relatively near 0 (see the tests).

use rayon::prelude::*;

use super::exp::exp;

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1 / √(2π)`, the standard normal density at 0.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `erf(x)` by the rational fit (see the module).
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_258_013_06e-10;
    let p = p * x2 + 2.770_681_424_959_02e-8;
    let p = p * x2 - 2.101_024_020_825_08e-6;
    let p = p * x2 - 5.692_506_394_623_46e-5;
    let p = p * x2 - 7.349_906_303_268_55e-4;
    let p = p * x2 - 2.954_599_808_540_25e-3;
    let p = p * x2 - 1.609_603_332_624_15e-2;
    let q = -1.456_607_184_649_96e-5;
    let q = q * x2 - 2.133_740_552_789_05e-4;
    let q = q * x2 - 1.682_826_974_382_03e-3;
    let q = q * x2 - 7.373_329_167_204_68e-3;
    let q = q * x2 - 1.426_473_905_141_89e-2;
    // The fit overshoots ±1 by a few units in the last place near the clamp, where `1 + erf`
    // would turn a tiny GELU's sign.
    (x * p / q).clamp(-1.0, 1.0)
}

/// `Φ(x)`, the standard normal distribution function.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2))
}

multiversion! {
    fn gelu_chunk(x: &[f32], out: &mut [f32]) {
        for (out, &x) in out.iter_mut().zip(x) {
            *out = x * normal_cdf(x);
        }
    }
}

multiversion! {
    /// `d/dx [x Φ(x)] = Φ(x) + x φ(x)`, times the output gradient (in place).
    fn gelu_backward_chunk<A>(x: &[f32], grad: &mut [f32]) {
        for (grad, &x) in grad.iter_mut().zip(x) {
            let density = FRAC_1_SQRT_2PI * exp::<A>(-0.5 * x * x);
            *grad *= normal_cdf(x) + x * density;
        }
    }
}

/// `x · Φ(x)` elementwise.
pub fn forward(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(out, x)| gelu_chunk(x, out));
    out
}

/// The output gradient `grad` becomes the gradient of the input `x`.
pub fn backward(x: &[f32], grad: &mut [f32]) {
    grad.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(grad, x)| gelu_backward_chunk(x, grad));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error bound of [`erf`]: 4 units in the last place of 1.
    const ERF_ERROR: f64 = 4.0 * f32::EPSILON as f64;

    /// `-6 … 6` in small steps, and the far tails.
    fn points() -> Vec<f32> {
        let mut points: Vec<f32> = (-6000..=6000).map(|i| i as f32 * 1e-3).collect();
        points.extend([-1e4, -50.0, -9.0, 9.0, 50.0, 1e4, 1e-30, -1e-30]);
        points
    }

    #[test]
    fn erf_matches_libm() {
        for x in points() {
            let exact = libm::erf(x as f64);
            let error = (erf(x) as f64 - exact).abs();
            // Relative near 0, where erf(x) ≈ 1.13 x.
            assert!(
                error <= ERF_ERROR * exact.abs().max(1e-30),
                "erf({x}) = {} against {exact}",
                erf(x)
            );
        }
    }

    #[test]
    fn gelu_and_its_derivative_match_the_f64_formula() {
        let x = points();
        let grad: Vec<f32> = x.iter().map(|x| 1.0 + 0.1 * x.sin()).collect();
        let y = forward(&x);
        let mut dx = grad.clone();
        backward(&x, &mut dx);
        for (i, &xi) in x.iter().enumerate() {
            let xd = xi as f64;
            let cdf = 0.5 * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2));
            let density = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let exact_y = xd * cdf;
            let exact_dx = grad[i] as f64 * (cdf + xd * density);
            // `erf`'s error is absolute in `1 + erf`.
            let y_tolerance = 1e-6 * exact_y.abs() + 0.5 * xd.abs() * ERF_ERROR;
            let dx_tolerance = 1e-6 * exact_dx.abs() + grad[i] as f64 * ERF_ERROR;
            assert!(
                (y[i] as f64 - exact_y).abs() <= y_tolerance,
                "gelu({xi}) = {} against {exact_y}",
                y[i]
            );
            assert!(
                (dx[i] as f64 - exact_dx).abs() <= dx_tolerance,
                "gelu'({xi}) = {} against {exact_dx}",
                dx[i]
            );
        }
    }
}
