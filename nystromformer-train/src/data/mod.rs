//! Data sets and batching.

pub mod batcher;
pub mod listops;
