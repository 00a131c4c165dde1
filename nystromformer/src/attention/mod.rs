//! Nyström attention: the module, its functional core and one file per stage of the maths.
//!
//! Data flows top-down: [`module`] projects and splits heads, [`nystrom`] runs
//! [`landmarks`] → [`softmax_kernels`] → [`pinv`] → `F · A⁺ · (B · V)`, and [`skip`] adds the
//! convolution of the values. Each stage is a function with a documented tensor contract, so a
//! fused kernel can replace one stage without touching the others.

pub mod config;
pub mod exact;
pub mod landmarks;
pub mod mask;
pub mod module;
pub mod nystrom;
pub mod pinv;
pub(crate) mod shape_check;
pub mod skip;
pub mod softmax_kernels;

pub use config::{AttentionMode, ConfigError, MaskPolicy, NystromAttentionConfig};
pub use exact::{explicit_softmax_attention, softmax_attention};
pub use module::{NystromAttention, NystromInput, NystromOutput};
pub use nystrom::{
    NystromAttentionOutput, NystromHeadsInput, NystromKernels, NystromOptions, nystrom_attention,
};
pub use pinv::{PinvInit, iterative_pinv, pinv_residual};
