//! Training and inference for Nyströmformer models: the library under the `nystromformer-train`
//! binary (data, batcher, model head, training, evaluation, HF encoding).

pub mod cli;
pub mod config;
pub mod data;
pub mod encode;
pub mod eval;
pub mod files;
pub mod inspect;
pub mod model;
pub mod progress;
pub mod task;
pub mod training;
