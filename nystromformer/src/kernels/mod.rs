//! Custom CubeCL kernels for the hot paths, with the tensor-op stages as the fallback.
//!
//! On a CubeCL device (wgpu, Vulkan, Metal, WebGPU), for f32 tensors outside autodiff, three
//! stages of [`nystrom_attention`](crate::nystrom_attention) run as custom kernels instead of
//! chains of tensor operations:
//!
//! - `B · V` (`landmark_values`): each landmark query's softmax over all keys times the values,
//!   in chunks of keys merged by a second kernel, so the `[m, n]` kernel `B` is never written;
//! - the pseudo-inverse iteration (`pinv`): one launch per forward pass instead of about ten
//!   per iteration, which matters because the `[m, m]` matrices are far too small to hide a
//!   launch each;
//! - `F · W` (`landmark_attention`): each query's softmax over the landmark keys and its
//!   product with `W = A⁺ (B V)`, row by row, so the `[n, m]` kernel `F` is never written.
//!
//! The attention then holds no `n × m` matrix at all. `A = softmax(Q̃ K̃ᵀ)` (`m × m`) and the
//! landmarks stay tensor ops.
//!
//! Everywhere else (CPU backends, autodiff, f16) the tensor-op stages run; both paths compute the
//! same maths and agree to float rounding (`tests/custom_kernels.rs`). The kernels only compile
//! with a GPU backend feature (`cube-kernels`), and they reach Burn through its backend-extension
//! machinery, which routes a call by the device of its tensors.

use burn::tensor::{Bool, DType, Tensor};

use crate::attention::PinvInit;
#[cfg(feature = "cube-kernels")]
use crate::attention::pinv::initial_coefficient;

#[cfg(feature = "cube-kernels")]
pub mod landmark_attention;
#[cfg(feature = "cube-kernels")]
pub mod landmark_values;
#[cfg(feature = "cube-kernels")]
pub mod pinv;

/// Whether [`nystrom_attention`](crate::nystrom_attention) runs its custom kernels for inputs
/// like `x` (and `NystromOptions::custom_kernels` is on): a CubeCL device, f32 and no autodiff.
pub fn custom_kernels_apply(x: &Tensor<4>) -> bool {
    cube_kernels_compiled() && x.dtype() == DType::F32 && !x.is_autodiff() && on_cube_device(x)
}

fn cube_kernels_compiled() -> bool {
    cfg!(feature = "cube-kernels")
}

#[cfg(feature = "cube-kernels")]
fn on_cube_device(x: &Tensor<4>) -> bool {
    matches!(
        x.device().as_dispatch(),
        burn::backend::DispatchDevice::Cube(_)
    )
}

#[cfg(not(feature = "cube-kernels"))]
fn on_cube_device(_x: &Tensor<4>) -> bool {
    false
}

/// [`iterative_pinv`](crate::attention::iterative_pinv) as one kernel; `None` where the kernel
/// does not apply (see [`custom_kernels_apply`]).
///
/// # Shapes
///
/// - a: `[batch, heads, m, m]`, non-negative with rows summing to at most 1
/// - output: `[batch, heads, m, m]`
pub fn fused_pinv(a: &Tensor<4>, iterations: usize, init: PinvInit) -> Option<Tensor<4>> {
    if !custom_kernels_apply(a) {
        return None;
    }
    #[cfg(feature = "cube-kernels")]
    {
        use extension::NystromKernelOps;
        let [batch, heads, m, _] = a.dims();
        let coefficient = initial_coefficient(a, init).reshape([batch * heads]);
        let z = <burn::backend::Dispatch as NystromKernelOps>::pinv(
            a.clone().into_dispatch(),
            coefficient.into_dispatch(),
            iterations,
        );
        let z = Tensor::<4>::from_dispatch(z);
        debug_assert_eq!(z.dims(), [batch, heads, m, m]);
        Some(z)
    }
    #[cfg(not(feature = "cube-kernels"))]
    {
        let _ = (iterations, init);
        None
    }
}

/// `softmax(Q K̃ᵀ) · W` row by row without the `[n, m]` softmax in memory, as one kernel;
/// missing landmarks get zero weight and a row without any landmark is zero. `None` where the
/// kernel does not apply (see [`custom_kernels_apply`]).
///
/// # Shapes
///
/// - queries: `[batch, heads, n, d]`
/// - landmark_keys: `[batch, heads, m, d]` (already scaled by `1/√d`)
/// - weights: `[batch, heads, m, d_v]`
/// - missing: `[batch, m]` (`true` = not a landmark)
/// - output: `[batch, heads, n, d_v]`
pub fn fused_landmark_attention(
    queries: &Tensor<4>,
    landmark_keys: &Tensor<4>,
    weights: &Tensor<4>,
    missing: Option<&Tensor<2, Bool>>,
) -> Option<Tensor<4>> {
    if !custom_kernels_apply(queries) {
        return None;
    }
    #[cfg(feature = "cube-kernels")]
    {
        use extension::NystromKernelOps;
        let [batch, _, _, _] = queries.dims();
        let [_, _, m, _] = landmark_keys.dims();
        let missing = flags(missing, [batch, m], &queries.device());
        let context = <burn::backend::Dispatch as NystromKernelOps>::landmark_attention(
            queries.clone().into_dispatch(),
            landmark_keys.clone().into_dispatch(),
            weights.clone().into_dispatch(),
            missing.into_dispatch(),
        );
        Some(Tensor::<4>::from_dispatch(context))
    }
    #[cfg(not(feature = "cube-kernels"))]
    {
        let _ = (landmark_keys, weights, missing);
        None
    }
}

/// `softmax(Q̃ Kᵀ) · V` for the landmark queries without the `[m, n]` softmax in memory, as two
/// kernels; padded keys get zero weight and the rows of missing landmarks are zero. `None` where
/// the kernels do not apply (see [`custom_kernels_apply`]).
///
/// # Shapes
///
/// - landmark_queries: `[batch, heads, m, d]` (already scaled by `1/√d`)
/// - keys: `[batch, heads, n, d]`, values: `[batch, heads, n, d_v]`
/// - mask_pad: `[batch, n]` (`true` = padding)
/// - missing: `[batch, m]` (`true` = not a landmark)
/// - output: `[batch, heads, m, d_v]`
pub fn fused_landmark_values(
    landmark_queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    mask_pad: Option<&Tensor<2, Bool>>,
    missing: Option<&Tensor<2, Bool>>,
) -> Option<Tensor<4>> {
    if !custom_kernels_apply(landmark_queries) {
        return None;
    }
    #[cfg(feature = "cube-kernels")]
    {
        use extension::NystromKernelOps;
        let [batch, _, m, _] = landmark_queries.dims();
        let [_, _, n, _] = keys.dims();
        let device = keys.device();
        let padding = flags(mask_pad, [batch, n], &device);
        let missing = flags(missing, [batch, m], &device);
        let output = <burn::backend::Dispatch as NystromKernelOps>::landmark_values(
            landmark_queries.clone().into_dispatch(),
            keys.clone().into_dispatch(),
            values.clone().into_dispatch(),
            padding.into_dispatch(),
            missing.into_dispatch(),
        );
        Some(Tensor::<4>::from_dispatch(output))
    }
    #[cfg(not(feature = "cube-kernels"))]
    {
        let _ = (keys, values, mask_pad, missing);
        None
    }
}

/// A mask as the kernels read it: `1.0` where `true`, `0.0` elsewhere and without a mask.
#[cfg(feature = "cube-kernels")]
fn flags(
    mask: Option<&Tensor<2, Bool>>,
    shape: [usize; 2],
    device: &burn::tensor::Device,
) -> Tensor<2> {
    match mask {
        Some(mask) => mask.clone().float(),
        None => Tensor::zeros(shape, device),
    }
}

/// The backend extension: one trait method per kernel, routed by Burn to the CubeCL backend
/// (through its fusion backend, which runs a custom operation at the next flush).
#[cfg(feature = "cube-kernels")]
mod extension {
    // The macro's expansion names `burn::backend::...` paths.
    use burn::backend::{Backend, backend_extension, tensor::FloatTensor};
    use burn::tensor::Shape;
    use burn_cubecl::CubeBackend;

    #[backend_extension(Cube, Fusion)]
    pub trait NystromKernelOps: Backend {
        /// See [`super::fused_pinv`]; `coefficient` is flattened to `[batch * heads]`.
        #[fusion(dtype = a, shape = a)]
        fn pinv(
            a: FloatTensor<Self>,
            coefficient: FloatTensor<Self>,
            iterations: usize,
        ) -> FloatTensor<Self>;

        /// See [`super::fused_landmark_values`]; the masks are `1.0` at `true`.
        #[fusion(dtype = landmark_queries, shape = values_shape(landmark_queries, values))]
        fn landmark_values(
            landmark_queries: FloatTensor<Self>,
            keys: FloatTensor<Self>,
            values: FloatTensor<Self>,
            padding: FloatTensor<Self>,
            missing: FloatTensor<Self>,
        ) -> FloatTensor<Self>;

        /// See [`super::fused_landmark_attention`].
        #[fusion(dtype = queries, shape = context_shape(queries, weights))]
        fn landmark_attention(
            queries: FloatTensor<Self>,
            landmark_keys: FloatTensor<Self>,
            weights: FloatTensor<Self>,
            missing: FloatTensor<Self>,
        ) -> FloatTensor<Self>;
    }

    /// `[batch, heads, n, d_v]` from the queries' `[batch, heads, n, d]` and the weights'
    /// `[batch, heads, m, d_v]`.
    pub fn context_shape(queries: &Shape, weights: &Shape) -> Shape {
        Shape::new([queries[0], queries[1], queries[2], weights[3]])
    }

    /// `[batch, heads, m, d_v]` from the landmark queries' `[batch, heads, m, d]` and the values'
    /// `[batch, heads, n, d_v]`.
    pub fn values_shape(landmark_queries: &Shape, values: &Shape) -> Shape {
        Shape::new([
            landmark_queries[0],
            landmark_queries[1],
            landmark_queries[2],
            values[3],
        ])
    }

    impl NystromKernelOps for CubeBackend {
        fn landmark_values(
            landmark_queries: FloatTensor<Self>,
            keys: FloatTensor<Self>,
            values: FloatTensor<Self>,
            padding: FloatTensor<Self>,
            missing: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            super::landmark_values::launch(landmark_queries, keys, values, padding, missing)
        }

        fn pinv(
            a: FloatTensor<Self>,
            coefficient: FloatTensor<Self>,
            iterations: usize,
        ) -> FloatTensor<Self> {
            super::pinv::launch(a, coefficient, iterations)
        }

        fn landmark_attention(
            queries: FloatTensor<Self>,
            landmark_keys: FloatTensor<Self>,
            weights: FloatTensor<Self>,
            missing: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            super::landmark_attention::launch(queries, landmark_keys, weights, missing)
        }
    }
}
