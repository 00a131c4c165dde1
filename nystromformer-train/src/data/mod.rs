//! Data sets and batching for every task.

pub mod batcher;
pub mod corpus;
pub mod image;
pub mod listops;
pub mod masking;
pub mod retrieval;
pub mod rng;
pub mod storage;
pub mod stream;
pub mod text;

use serde::{Deserialize, Serialize};

/// One example of a sequence-classification task (ListOps, text, image).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceItem {
    /// Token ids; 0 is padding.
    pub tokens: Vec<u32>,
    /// Class index.
    pub label: u32,
}
