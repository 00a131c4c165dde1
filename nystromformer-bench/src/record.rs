//! One measurement, in the record format shared with the PyTorch peers (`peers/torch_peers.py`).

use serde::{Deserialize, Serialize};

/// One implementation × backend × shape × pass.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// `nystrom`, `burn-attention`, `naive-softmax`, or a peer's name.
    pub implementation: String,
    /// `burn-flex`, `burn-wgpu`, `torch-cpu`, `torch-cuda`, …
    pub backend: String,
    /// `forward` or `forward+backward`.
    pub pass: String,
    /// Batch size.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Sequence length.
    pub n: usize,
    /// Head size.
    pub head_dim: usize,
    /// Landmarks (0 for exact attention).
    pub landmarks: usize,
    /// The fraction of each sequence that is padding, at its end (0 when none; records from
    /// before this field read as 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub padded: f64,
    /// Median milliseconds over repetitions (`null` when not measured).
    pub median_ms: Option<f64>,
    /// Fastest repetition.
    pub min_ms: Option<f64>,
    /// Slowest repetition.
    pub max_ms: Option<f64>,
    /// Timed repetitions.
    pub reps: usize,
    /// Peak memory in bytes: device pool on GPU backends, process peak RSS on the CPU.
    pub peak_bytes: Option<u64>,
    /// `ok`, or why there is no number (`skipped: …`, `failed: …`).
    pub status: String,
    /// Git commit of the code measured.
    pub commit: String,
    /// The machine, in words.
    pub machine: String,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}
