//! The Nyströmformer encoder and its task heads.
//!
//! tokens → [`embeddings`] → [`layer`] × N ([`encoder`]) → [`pooling`] → [`heads`].

pub mod config;
pub mod embeddings;
pub mod encoder;
pub mod heads;
pub mod layer;
pub mod pooling;

pub use config::{Activation, NystromformerConfig};
pub use embeddings::Embeddings;
pub use encoder::{EncoderInput, NystromformerEncoder};
pub use heads::{
    ClassificationHead, MaskedLmHead, NystromformerForMaskedLM,
    NystromformerForSequenceClassification,
};
pub use layer::EncoderLayer;
pub use pooling::Pooling;
