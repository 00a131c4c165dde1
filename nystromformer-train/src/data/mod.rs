//! Data sets and batching: every task yields [`SequenceItem`]s.

pub mod batcher;
pub mod listops;
pub mod text;

/// One example of a sequence-classification task.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceItem {
    /// Token ids; 0 is padding.
    pub tokens: Vec<u32>,
    /// Class index.
    pub label: u32,
}
