//! The iterative Moore–Penrose pseudo-inverse of `A` (step 5 of the algorithm).
//!
//! Razavi et al. (2014): `Z₀ = Aᵀ / c`, then `Z ← ¼ Z (13I − AZ (15I − AZ (7I − AZ)))`. The
//! iteration converges when `c ≥ ‖A‖₁‖A‖∞`; `A` is row-stochastic, so `‖A‖∞ = 1` and `c` is a
//! column-sum bound.

use burn::tensor::{Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// Initialisation of the pseudo-inverse iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PinvInit {
    /// `c` = the largest column sum of `A` over the whole batch and all heads (one scalar), as
    /// in the paper's first release and HF transformers. Results then depend slightly on the
    /// other sequences of the batch.
    Original,
    /// `c = ‖A‖₁` per matrix: faster convergence; recommended by the authors since Feb 2021.
    #[default]
    Exact,
}

/// Smallest `c` used: a matrix of zeros (every landmark missing) then inverts to zeros, not NaN.
pub(crate) const MIN_COEFFICIENT: f32 = 1.0e-12;

/// Approximates the pseudo-inverse of each `[m, m]` matrix of `a` in `iterations` steps. The
/// iteration runs in f32 whatever the type of `a` (its `13I − …` cancels too much in half
/// precision), and the result comes back in `a`'s type.
///
/// # Shapes
///
/// - a: `[batch, heads, m, m]`, non-negative with rows summing to at most 1
/// - output: `[batch, heads, m, m]`
pub fn iterative_pinv(a: Tensor<4>, iterations: usize, init: PinvInit) -> Tensor<4> {
    let dtype = FloatDType::from(a.dtype());
    if dtype != FloatDType::F32 {
        return iterative_pinv(a.cast(FloatDType::F32), iterations, init).cast(dtype);
    }
    let [batch, heads, m, _] = a.dims();
    let mut z = a.clone().transpose() / initial_coefficient(&a, init);
    let identity = identity(m, &a.device());
    for _ in 0..iterations {
        let az = a.clone().matmul(z.clone());
        let inner = identity.clone().mul_scalar(7.0) - az.clone();
        let middle = identity.clone().mul_scalar(15.0) - az.clone().matmul(inner);
        let outer = identity.clone().mul_scalar(13.0) - az.matmul(middle);
        z = z.matmul(outer).mul_scalar(0.25);
    }
    debug_assert_eq!(z.dims(), [batch, heads, m, m]);
    z
}

/// `c` of `Z₀ = Aᵀ / c` for each matrix, at least [`MIN_COEFFICIENT`].
///
/// # Shapes
///
/// - a: `[batch, heads, m, m]`
/// - output: `[batch, heads, 1, 1]`
pub(crate) fn initial_coefficient(a: &Tensor<4>, init: PinvInit) -> Tensor<4> {
    let [batch, heads, _, _] = a.dims();
    let column_sums = a.clone().sum_dim(2); // [batch, heads, 1, m]
    let coefficient = match init {
        PinvInit::Original => column_sums
            .max()
            .reshape([1, 1, 1, 1])
            .expand([batch, heads, 1, 1]),
        PinvInit::Exact => column_sums.max_dim(3),
    };
    coefficient.clamp_min(MIN_COEFFICIENT)
}

/// `‖I − A Z‖_F` for each matrix: how far `Z` is from a right inverse of `A` (0 when `A` is
/// invertible and `Z` has converged).
///
/// # Shapes
///
/// - a, z: `[batch, heads, m, m]`
/// - output: `[batch, heads]`
pub fn pinv_residual(a: Tensor<4>, z: Tensor<4>) -> Tensor<2> {
    let [batch, heads, m, _] = a.dims();
    let dtype = FloatDType::from(a.dtype());
    let residual = identity(m, &a.device()).cast(dtype) - a.matmul(z);
    residual
        .square()
        .sum_dim(3)
        .sum_dim(2)
        .sqrt()
        .reshape([batch, heads])
}

fn identity(m: usize, device: &Device) -> Tensor<4> {
    Tensor::<2>::eye(m, device).reshape([1, 1, m, m])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(t: Tensor<4>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec().unwrap()
    }

    #[test]
    fn identity_inverts_to_identity_and_zeros_to_zeros() {
        let device = Device::flex();
        let eye = Tensor::<2>::eye(3, &device).reshape([1, 1, 3, 3]);
        for init in [PinvInit::Original, PinvInit::Exact] {
            let z = host(iterative_pinv(eye.clone(), 6, init));
            assert!(
                z.iter()
                    .zip(host(eye.clone()))
                    .all(|(a, b)| (a - b).abs() < 1e-6),
                "{init:?}: {z:?}"
            );
            // Every landmark missing: A = 0 must give A⁺ = 0, not NaN.
            let zero = host(iterative_pinv(
                Tensor::zeros([1, 1, 3, 3], &device),
                6,
                init,
            ));
            assert!(zero.iter().all(|x| *x == 0.0), "{init:?}: {zero:?}");
        }
        // Half precision in, half precision out, iterated in f32.
        let half = iterative_pinv(eye.clone().cast(FloatDType::F16), 6, PinvInit::Exact);
        assert_eq!(half.dtype(), burn::tensor::DType::F16);
        assert!(
            host(half.cast(FloatDType::F32))
                .iter()
                .zip(host(eye.clone()))
                .all(|(a, b)| (a - b).abs() < 1e-3)
        );
        let residual = pinv_residual(eye.clone(), eye)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(residual, vec![0.0]);
    }
}
