//! The functional core on `[batch, heads, n, head_dim]` tensors: `F · A⁺ · (B · V)`.
//!
//! For users who bring their own projections. [`NystromAttention`](super::NystromAttention)
//! calls [`nystrom_attention`] after projecting and splitting heads.

use burn::config::Config;
use burn::tensor::{Bool, Tensor};

use super::config::MaskPolicy;
use super::exact::softmax_attention;
use super::landmarks::{Landmarks, segment_means};
use super::pinv::{PinvInit, iterative_pinv};
use super::shape_check::expect_shape;
use super::softmax_kernels::{kernel_a, kernel_b, kernel_f};
use crate::kernels;

/// Options of [`nystrom_attention`].
#[derive(Config, Debug, PartialEq)]
pub struct NystromOptions {
    /// Number of landmarks `m`. Default: 64.
    #[config(default = 64)]
    pub num_landmarks: usize,
    /// Iterations of the pseudo-inverse. Default: 6.
    #[config(default = 6)]
    pub pinv_iterations: usize,
    /// Initialisation of the pseudo-inverse. Default: [`PinvInit::Exact`].
    #[config(default = "PinvInit::Exact")]
    pub pinv_init: PinvInit,
    /// How the padding mask enters the landmarks. Default: [`MaskPolicy::LeakFree`].
    #[config(default = "MaskPolicy::LeakFree")]
    pub mask_policy: MaskPolicy,
    /// Return `F`, `A⁺` and `B` with the output. Default: false.
    #[config(default = false)]
    pub return_kernels: bool,
    /// Run the custom CubeCL kernels where they apply (see [`crate::kernels`]); `false` keeps
    /// the tensor-op stages everywhere. Default: true.
    #[config(default = true)]
    pub custom_kernels: bool,
}

/// The three factors of the Nyström approximation, for inspection.
#[derive(Debug, Clone)]
pub struct NystromKernels {
    /// `F = softmax(Q K̃ᵀ)`, `[batch, heads, n, m]`.
    pub f: Tensor<4>,
    /// `A = softmax(Q̃ K̃ᵀ)`, the landmarks' own kernel, `[batch, heads, m, m]`.
    pub a: Tensor<4>,
    /// `A⁺`, the iterative pseudo-inverse of `A`, `[batch, heads, m, m]`.
    pub a_pinv: Tensor<4>,
    /// `B = softmax(Q̃ Kᵀ)`, `[batch, heads, m, n]`.
    pub b: Tensor<4>,
}

/// Output of [`nystrom_attention`].
#[derive(Debug, Clone)]
pub struct NystromAttentionOutput {
    /// The attention context, `[batch, heads, n, d_v]`.
    pub context: Tensor<4>,
    /// The kernels, when [`NystromOptions::return_kernels`] is set and the Nyström path ran
    /// (`None` on the exact path taken when `n ≤ m`).
    pub kernels: Option<NystromKernels>,
}

/// Nyström attention of `q` over `k` and `v` (self-attention: the three share `n`).
///
/// When `n ≤ num_landmarks` the approximation has nothing to save and exact softmax attention
/// is returned. Otherwise the products are associated as `F · (A⁺ · (B · V))`: no `n × n`
/// matrix is formed, time is `O(n·m·d + m³)` and memory `O(n·m)`.
///
/// # Shapes
///
/// - q, k: `[batch, heads, n, d]`
/// - v: `[batch, heads, n, d_v]`
/// - mask_pad: `[batch, n]` (`true` = padding)
/// - output context: `[batch, heads, n, d_v]`
///
/// # Panics
///
/// Panics if the shapes disagree or `num_landmarks` is 0.
pub fn nystrom_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask_pad: Option<Tensor<2, Bool>>,
    options: &NystromOptions,
) -> NystromAttentionOutput {
    check_shapes(&q, &k, &v, mask_pad.as_ref());
    assert!(
        options.num_landmarks > 0,
        "num_landmarks must be at least 1"
    );
    let [_, _, n, d] = q.dims();
    let m = options.num_landmarks;
    if n <= m {
        return NystromAttentionOutput {
            context: softmax_attention(q, k, v, mask_pad.as_ref()),
            kernels: None,
        };
    }

    let landmark_mask = match options.mask_policy {
        MaskPolicy::LeakFree => mask_pad.as_ref(),
        MaskPolicy::HfCompatible => None,
    };
    let Landmarks {
        queries,
        keys,
        missing,
    } = segment_means(q.clone(), k.clone(), m, landmark_mask);

    // Every score matrix carries the usual 1/√d. Segment means are linear, so the factor can
    // sit on the small landmark side of each product (Q K̃ᵀ/√d = Q (K̃/√d)ᵀ, and likewise for
    // Q̃ Kᵀ and Q̃ K̃ᵀ): the [n, d] queries and keys are never rescaled, which saves two full
    // passes over them and their allocations.
    let scale = (d as f64).powf(-0.5);
    let scaled_keys = keys.mul_scalar(scale);
    let scaled_queries = queries.clone().mul_scalar(scale);

    let a = kernel_a(queries, scaled_keys.clone(), missing.as_ref());
    // Returning the kernels needs `F` and `B` themselves, which the custom kernels never form.
    if options.custom_kernels && !options.return_kernels && kernels::custom_kernels_apply(&q) {
        let stages = FusedStages {
            a,
            scaled_queries,
            scaled_keys,
        };
        return NystromAttentionOutput {
            context: stages.context(&q, &k, &v, mask_pad.as_ref(), missing.as_ref(), options),
            kernels: None,
        };
    }

    let b = kernel_b(scaled_queries, k, mask_pad.as_ref(), missing.as_ref());
    let a_pinv = iterative_pinv(a.clone(), options.pinv_iterations, options.pinv_init);
    let f = kernel_f(q, scaled_keys, missing.as_ref());
    let context = f.clone().matmul(a_pinv.clone().matmul(b.clone().matmul(v)));
    NystromAttentionOutput {
        context,
        kernels: options
            .return_kernels
            .then(|| NystromKernels { f, a, a_pinv, b }),
    }
}

/// What the custom kernels need beyond the inputs: `A` and the scaled landmarks.
struct FusedStages {
    a: Tensor<4>,
    scaled_queries: Tensor<4>,
    scaled_keys: Tensor<4>,
}

impl FusedStages {
    /// `F · (A⁺ · (B · V))` with `B · V`, `A⁺` and `F · W` each one custom kernel (see
    /// [`crate::kernels`]); only called where [`kernels::custom_kernels_apply`] holds.
    fn context(
        self,
        q: &Tensor<4>,
        k: &Tensor<4>,
        v: &Tensor<4>,
        mask_pad: Option<&Tensor<2, Bool>>,
        missing: Option<&Tensor<2, Bool>>,
        options: &NystromOptions,
    ) -> Tensor<4> {
        const APPLIES: &str = "custom_kernels_apply was checked";
        let values = kernels::fused_landmark_values(&self.scaled_queries, k, v, mask_pad, missing)
            .expect(APPLIES);
        let a_pinv = kernels::fused_pinv(&self.a, options.pinv_iterations, options.pinv_init)
            .unwrap_or_else(|| {
                // Only past kernels::MAX_PINV_MATRICES matrices.
                iterative_pinv(self.a, options.pinv_iterations, options.pinv_init)
            });
        let weights = a_pinv.matmul(values); // W = A⁺ (B V), [m, d_v]
        kernels::fused_landmark_attention(q, &self.scaled_keys, &weights, missing).expect(APPLIES)
    }
}

fn check_shapes(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, mask_pad: Option<&Tensor<2, Bool>>) {
    let [batch, heads, n, _] = q.dims();
    let op = "nystrom_attention";
    expect_shape(op, "k", &k.dims(), &q.dims());
    expect_shape(op, "v", &v.dims(), &[batch, heads, n]);
    if let Some(mask) = mask_pad {
        expect_shape(op, "mask_pad", &mask.dims(), &[batch, n]);
    }
}
