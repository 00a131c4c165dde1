//! A mask as the fused stages take it: absent, or one float flag per position.
//!
//! Most calls have no padding and no missing landmark. Passing them a tensor of zero flags cost
//! a fill kernel per mask (three of a forward's eight launches on CubeCL devices); an absent
//! mask costs nothing: the CubeCL kernels compile without the flag reads, the tensor-op bodies
//! skip the masking, and flex fills zeros on the host.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, ExtensionType};

/// A `[batch, positions]` mask of a fused stage: [`Flags::Absent`] when nothing is masked, else
/// `1.0` at masked positions and `0.0` elsewhere, in the stage's float type.
#[derive(ExtensionType, Debug, Clone)]
#[extension_type(fusion: cfg(feature = "cube-kernels"))]
pub enum Flags<B: Backend> {
    /// Nothing is masked.
    Absent,
    /// `1.0` where masked, `0.0` elsewhere.
    Present(FloatTensor<B>),
}

impl<B: Backend> Flags<B> {
    /// The flags with their tensor mapped (to the backend below autodiff, for instance).
    #[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
    pub fn map<C: Backend>(self, f: impl FnOnce(FloatTensor<B>) -> FloatTensor<C>) -> Flags<C> {
        match self {
            Flags::Absent => Flags::Absent,
            Flags::Present(flags) => Flags::Present(f(flags)),
        }
    }

    /// Whether any position may be masked (the kernels' compile-time switch).
    #[cfg_attr(not(feature = "cube-kernels"), allow(dead_code))]
    pub fn is_present(&self) -> bool {
        matches!(self, Flags::Present(_))
    }
}
