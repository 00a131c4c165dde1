#![warn(missing_docs)]
//! # nystromformer
//!
//! Nyström attention — Xiong, Zeng, Chakraborty, Tan, Fung, Li, Singh, *Nyströmformer: A
//! Nyström-Based Algorithm for Approximating Self-Attention*, AAAI 2021
//! (<https://arxiv.org/abs/2102.03902>) — as a Burn module that runs on every Burn backend.
//!
//! Softmax attention costs `O(n²)` in time and memory. Nyström attention picks `m` landmarks
//! (segment means of the queries and keys) and approximates `softmax(QKᵀ/√d)·V` by
//! `F · A⁺ · (B · V)` with three small softmax kernels, at `O(n·m·d + m³)` time and `O(n·m)`
//! memory.
//!
//! - [`NystromAttention`]: a drop-in for burn-nn's `MultiHeadAttention`.
//! - [`nystrom_attention`]: the functional core on `[batch, heads, n, d]` tensors.
//! - [`model`]: an encoder (embeddings, layers, pooling, classification and masked-LM heads)
//!   with a `Nystrom | Softmax` attention switch.
//! - [`hf`]: reading Hugging Face Nystromformer configs and checkpoints.
//! - [`kernels`]: the custom CubeCL kernels that replace three stages on GPU backends.
//! - [`device`] and [`cpu_memory`]: for binaries, choosing a device on purpose and keeping
//!   freed CPU memory in the process (twice as fast on flex).
//!
//! The crate enables no Burn backend: choose one with your own Burn features, or with this
//! crate's `flex`, `ndarray`, `wgpu`, `vulkan`, `metal` and `webgpu` features, which forward to
//! Burn's.

pub mod attention;
pub mod cpu_memory;
pub mod device;
pub mod hf;
pub mod kernels;
pub mod model;

pub use attention::{
    AttentionMode, MaskPolicy, NystromAttention, NystromAttentionConfig, NystromHeadsInput,
    NystromInput, NystromKernels, NystromOptions, NystromOutput, PinvInit, nystrom_attention,
};
