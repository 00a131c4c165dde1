//! Approximation quality: relative error of Nyström attention against exact attention, and the
//! pseudo-inverse residual, as functions of landmarks, iterations and initialisation.

use burn::tensor::{Device, Distribution, Tensor};
use nystromformer::attention::{explicit_softmax_attention, pinv_residual};
use nystromformer::{NystromOptions, PinvInit, nystrom_attention};
use serde::Serialize;

/// One point of the quality sweep.
#[derive(Debug, Clone, Serialize)]
pub struct QualityRecord {
    /// Where Q, K, V came from (`random`).
    pub inputs: String,
    /// Sequence length.
    pub n: usize,
    /// Head size.
    pub head_dim: usize,
    /// Landmarks.
    pub landmarks: usize,
    /// Pseudo-inverse iterations.
    pub pinv_iterations: usize,
    /// `Original` or `Exact`.
    pub pinv_init: String,
    /// `‖Nyström − exact‖_F / ‖exact‖_F`, mean over heads and batch.
    pub relative_error: f64,
    /// `‖I − A Z‖_F`, mean over matrices.
    pub pinv_residual: f64,
}

/// Sweeps landmarks × iterations × initialisations on standard-normal Q, K, V.
pub fn quality_sweep(
    device: &Device,
    n: usize,
    head_dim: usize,
    landmarks: &[usize],
    iterations: &[usize],
) -> Vec<QualityRecord> {
    let dims = [1, 4, n, head_dim];
    let random = || Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), device);
    let (q, k, v) = (random(), random(), random());
    let (exact, _) = explicit_softmax_attention(q.clone(), k.clone(), v.clone(), None);
    let exact_norm: f64 = exact.clone().square().sum().sqrt().into_scalar::<f32>() as f64;
    let mut out = Vec::new();
    for &m in landmarks {
        for &iters in iterations {
            for init in [PinvInit::Original, PinvInit::Exact] {
                let options = NystromOptions::new()
                    .with_num_landmarks(m)
                    .with_pinv_iterations(iters)
                    .with_pinv_init(init)
                    .with_return_kernels(true);
                let result = nystrom_attention(q.clone(), k.clone(), v.clone(), None, &options);
                let error = (result.context - exact.clone())
                    .square()
                    .sum()
                    .sqrt()
                    .into_scalar::<f32>() as f64;
                let residual = match result.kernels {
                    Some(kernels) => {
                        // The output carries A⁺, not A: rebuild A from the same landmarks.
                        let a = a_matrix(&q, &k, m);
                        pinv_residual(a, kernels.a_pinv).mean().into_scalar::<f32>() as f64
                    }
                    None => 0.0,
                };
                out.push(QualityRecord {
                    inputs: "random".into(),
                    n,
                    head_dim,
                    landmarks: m,
                    pinv_iterations: iters,
                    pinv_init: format!("{init:?}"),
                    relative_error: error / exact_norm,
                    pinv_residual: residual,
                });
            }
        }
    }
    out
}

fn a_matrix(q: &Tensor<4>, k: &Tensor<4>, m: usize) -> Tensor<4> {
    use nystromformer::attention::landmarks::segment_means;
    use nystromformer::attention::softmax_kernels::kernel_a;
    let [_, _, _, d] = q.dims();
    let scale = (d as f64).powf(-0.25);
    let landmarks = segment_means(
        q.clone().mul_scalar(scale),
        k.clone().mul_scalar(scale),
        m,
        None,
    );
    kernel_a(landmarks.queries, landmarks.keys, None)
}
