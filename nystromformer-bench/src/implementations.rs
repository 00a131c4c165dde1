//! The attention implementations being measured, on `[batch, heads, n, head_dim]` inputs.

use burn::tensor::{Bool, Tensor};
use nystromformer::attention::{explicit_softmax_attention, softmax_attention};
use nystromformer::{NystromHeadsInput, NystromOptions, nystrom_attention};

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Implementation {
    /// The library's Nyström attention as a user gets it: with its custom kernels where they
    /// apply (CubeCL devices and flex, forward and backward), tensor ops elsewhere.
    Nystrom,
    /// The library's Nyström attention with the custom kernels turned off (tensor ops only);
    /// the same as `nystrom` on ndarray.
    NystromTensorOps,
    /// Burn's `burn::tensor::module::attention` (exact; fused/flash on CubeCL backends).
    BurnAttention,
    /// Softmax attention with an explicit `n × n` weight matrix.
    NaiveSoftmax,
}

impl Implementation {
    /// Name in the records.
    pub fn name(self) -> &'static str {
        match self {
            Implementation::Nystrom => "nystrom",
            Implementation::NystromTensorOps => "nystrom-tensor-ops",
            Implementation::BurnAttention => "burn-attention",
            Implementation::NaiveSoftmax => "naive-softmax",
        }
    }

    /// Whether the implementation is a Nyström approximation (and so depends on `m`).
    pub fn uses_landmarks(self) -> bool {
        matches!(
            self,
            Implementation::Nystrom | Implementation::NystromTensorOps
        )
    }

    /// Landmarks recorded for this implementation.
    pub fn landmarks(self, m: usize) -> usize {
        if self.uses_landmarks() { m } else { 0 }
    }

    /// Bytes the largest intermediate needs (to skip shapes that cannot fit).
    pub fn largest_intermediate(self, batch: usize, heads: usize, n: usize, m: usize) -> u64 {
        let per_matrix = match self {
            Implementation::Nystrom | Implementation::NystromTensorOps => n * m,
            Implementation::BurnAttention | Implementation::NaiveSoftmax => n * n,
        };
        (batch * heads * per_matrix * 4) as u64
    }

    /// Runs the attention, with the keys that `mask_pad` (`[batch, n]`, `true` = padding) marks
    /// left out.
    pub fn run(
        self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        m: usize,
        mask_pad: Option<&Tensor<2, Bool>>,
    ) -> Tensor<4> {
        match self {
            Implementation::Nystrom | Implementation::NystromTensorOps => {
                let options = NystromOptions::new()
                    .with_num_landmarks(m)
                    .with_custom_kernels(self == Implementation::Nystrom);
                let input = NystromHeadsInput::self_attention(q, k, v);
                let input = match mask_pad {
                    Some(mask) => input.mask_pad(mask.clone()),
                    None => input,
                };
                nystrom_attention(input, &options).context
            }
            Implementation::BurnAttention => softmax_attention(q, k, v, mask_pad),
            Implementation::NaiveSoftmax => explicit_softmax_attention(q, k, v, mask_pad).0,
        }
    }
}
