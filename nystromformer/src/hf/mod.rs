//! Hugging Face interop: `config.json` and checkpoints of HF's Nystromformer models.
//!
//! HF's layout differs from the library's in names only (see [`KEY_REMAP`]); the maths match
//! with two documented exceptions, both visible only when the input length differs from
//! `segment_means_seq_len` or a padding mask is present (see
//! [`HfNystromformerConfig::to_model_config`]).

pub mod config;
pub mod loader;

pub use config::{HF_POSITION_OFFSET, HfNystromformerConfig};
pub use loader::{HfCheckpoint, KEY_REMAP, LoadError};
