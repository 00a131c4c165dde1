//! Pooling of hidden states into one vector per sequence.

use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use crate::attention::mask::keep_weights;

/// How a sequence is reduced to one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Pooling {
    /// Mean over valid positions (LRA).
    #[default]
    Mean,
    /// The first token (`[CLS]`/`<s>`, HF's classification head).
    First,
}

impl Pooling {
    /// Pools hidden states.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, n, hidden]`, mask_pad: `[batch, n]` (`true` = padding)
    /// - output: `[batch, hidden]`
    pub fn forward(&self, x: Tensor<3>, mask_pad: Option<&Tensor<2, Bool>>) -> Tensor<2> {
        let [batch, n, hidden] = x.dims();
        match (self, mask_pad) {
            (Pooling::First, _) => x.narrow(1, 0, 1).reshape([batch, hidden]),
            (Pooling::Mean, None) => x.mean_dim(1).reshape([batch, hidden]),
            (Pooling::Mean, Some(mask)) => {
                let keep = keep_weights(mask, x.dtype().into()).reshape([batch, n, 1]);
                let count = keep.sum_dim(1).clamp_min(1.0); // [batch, 1, 1]
                // Select, not multiply: 0 · NaN is NaN.
                let padding = mask
                    .clone()
                    .reshape([batch, n, 1])
                    .expand([batch, n, hidden]);
                x.mask_fill(padding, 0.0)
                    .sum_dim(1)
                    .div(count)
                    .reshape([batch, hidden])
            }
        }
    }
}
