//! How a fused landmark stage finds the rows of each segment: `m` equal runs, or runs over each
//! sequence's valid rows in order (a padding mask, or `m` not dividing the length).
//!
//! The ranked form is what [`crate::attention::landmarks::Segments`] cuts: the valid row of rank
//! `r` among `L` lies in segment `⌊r·m/L⌋`, so segment `s` holds the ranks
//! `start(s)..start(s + 1)` with `start(s) = ⌈s·L/m⌉`. The forward reads a segment's rows
//! through `order` (rank → position); the backward gives each position its segment's gradient
//! through `rank` (position → rank). Both are `[batch, n]` integers, where the tensor-op path
//! builds a `[batch, m, n]` weight matrix and multiplies it with every head.

// `SegmentRows` and the metadata enum its derive generates for fusion pass by value once per
// call; the derive maps the tensor fields themselves, not boxed ones.
#![allow(clippy::large_enum_variant)]

use burn::backend::tensor::IntTensor;
use burn::backend::{Backend, ExtensionType};

/// The rows of a fused stage's `m` segments.
#[derive(ExtensionType, Debug, Clone)]
#[extension_type(fusion: cfg(feature = "cube-kernels"))]
pub enum SegmentRows<B: Backend> {
    /// `m` equal runs of `n / m` rows (no mask, `m` divides `n`).
    Equal,
    /// Segment `s` of sequence `b` holds the rows `order[b, r]` for the ranks
    /// `r ∈ ⌈s·L/m⌉..⌈(s+1)·L/m⌉`, `L = lengths[b]`; a batch dimension of 1 serves every
    /// sequence.
    Ranked {
        /// `[batch or 1, n]`: the position of the valid row of each rank (entries from `L` on
        /// are never read).
        order: IntTensor<B>,
        /// `[batch or 1, n]`: each position's rank among the valid rows, `n` for padding.
        rank: IntTensor<B>,
        /// `[batch or 1]`: the number of valid rows.
        lengths: IntTensor<B>,
    },
}

impl<B: Backend> SegmentRows<B> {
    /// The same rows on another backend whose integer tensors are `B`'s (autodiff's inner one).
    #[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
    pub fn cast<C: Backend<IntTensorPrimitive = B::IntTensorPrimitive>>(self) -> SegmentRows<C> {
        match self {
            SegmentRows::Equal => SegmentRows::Equal,
            SegmentRows::Ranked {
                order,
                rank,
                lengths,
            } => SegmentRows::Ranked {
                order,
                rank,
                lengths,
            },
        }
    }
}
