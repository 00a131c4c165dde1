//! The CubeCL stages (wgpu, Vulkan, Metal, WebGPU): [`LandmarkSoftmaxOps`] (see
//! [`landmark_values`] and [`landmark_attention`], both over [`online_softmax`]) and [`PinvOps`]
//! (see [`pinv`], and [`landmark_weights`] for `A`, the pseudo-inverse and `W` in one launch) and
//! [`SegmentMeanOps`] (see [`landmark_means`]) for burn-cubecl's backend, and for `Autodiff` over it (`autodiff.rs`), whose
//! forward is these kernels and whose backward is tensor ops from what they keep
//! ([`backward`]).

#[cfg(feature = "autodiff")]
mod autodiff;
#[cfg(feature = "autodiff")]
mod backward;
mod landmark_attention;
mod landmark_means;
mod landmark_values;
mod landmark_weights;
mod online_softmax;
mod pinv;
mod tiles;

use burn::backend::tensor::FloatTensor;
use burn_cubecl::CubeBackend;

use super::extension::{LandmarkSoftmaxOps, PinvOps, SegmentMeanOps};

impl LandmarkSoftmaxOps for CubeBackend {
    fn landmark_values(
        landmark_queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        padding: FloatTensor<Self>,
        missing: FloatTensor<Self>,
        masked_score: f32,
    ) -> FloatTensor<Self> {
        landmark_values::launch(
            landmark_queries,
            keys,
            values,
            padding,
            missing,
            masked_score,
            false,
        )
    }

    fn landmark_attention(
        queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        missing: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        landmark_attention::launch(queries, landmark_keys, weights, missing, false)
    }

    fn landmark_values_with_statistics(
        landmark_queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        padding: FloatTensor<Self>,
        missing: FloatTensor<Self>,
        masked_score: f32,
    ) -> FloatTensor<Self> {
        landmark_values::launch(
            landmark_queries,
            keys,
            values,
            padding,
            missing,
            masked_score,
            true,
        )
    }

    fn landmark_attention_with_statistics(
        queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        missing: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        landmark_attention::launch(queries, landmark_keys, weights, missing, true)
    }
}

impl PinvOps for CubeBackend {
    fn pinv(
        a: FloatTensor<Self>,
        coefficient: FloatTensor<Self>,
        iterations: usize,
    ) -> FloatTensor<Self> {
        pinv::launch(a, coefficient, iterations)
    }

    fn landmark_weights(
        landmark_queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        landmark_values: FloatTensor<Self>,
        missing_queries: FloatTensor<Self>,
        missing_keys: FloatTensor<Self>,
        iterations: usize,
    ) -> FloatTensor<Self> {
        landmark_weights::launch(
            landmark_queries,
            landmark_keys,
            landmark_values,
            missing_queries,
            missing_keys,
            iterations,
        )
    }
}

impl SegmentMeanOps for CubeBackend {
    fn landmark_means(
        queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        m: usize,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        landmark_means::launch(queries, keys, m, scale)
    }
}
