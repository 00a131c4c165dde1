//! Classification heads and sequence pooling in the two layouts `architecture` offers.
//!
//! - LRA (`LRA/code/model_wrapper.py`, `SCHead`/`SCHeadDual`): `Linear(in, ffn) → ReLU →
//!   Linear(ffn, classes)` without dropout, on the mean over the padded length: the encoder
//!   zeroes padded positions and the sum is divided by LRA's fixed input length, the power of two
//!   at or above `max_len` (2 048 for ListOps), not by the number of tokens.
//! - HF (`NystromformerClassificationHead`): `dropout → Linear(in, width) → GELU → dropout →
//!   Linear(width, classes)`, here on the mean over the valid tokens.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::{Bool, Device, Tensor};
use nystromformer::model::{Activation, Pooling};

/// A two-layer classification head.
#[derive(Module, Debug)]
pub struct ClassifierHead {
    /// First projection.
    pub dense: Linear,
    /// Projection to the classes.
    pub output: Linear,
    /// Dropout before each projection.
    pub dropout: Dropout,
    /// Activation between the projections.
    #[module(skip)]
    pub activation: Activation,
}

impl ClassifierHead {
    /// LRA's head: `Linear(input, hidden) → ReLU → Linear(hidden, classes)`, no dropout.
    pub fn lra(input: usize, hidden: usize, classes: usize, device: &Device) -> Self {
        Self::new(input, hidden, classes, Activation::Relu, 0.0, device)
    }

    /// HF's head: dropout, `Linear(input, hidden)`, GELU, dropout, `Linear(hidden, classes)`.
    pub fn hf(input: usize, hidden: usize, classes: usize, dropout: f64, device: &Device) -> Self {
        Self::new(input, hidden, classes, Activation::Gelu, dropout, device)
    }

    fn new(
        input: usize,
        hidden: usize,
        classes: usize,
        activation: Activation,
        dropout: f64,
        device: &Device,
    ) -> Self {
        Self {
            dense: LinearConfig::new(input, hidden).init(device),
            output: LinearConfig::new(hidden, classes).init(device),
            dropout: DropoutConfig::new(dropout).init(),
            activation,
        }
    }

    /// `[batch, input]` → `[batch, classes]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = self.dense.forward(self.dropout.forward(x));
        // Pooled `[batch, width]`: too small for the fused path to matter.
        let x = self.activation.forward(x, false);
        self.output.forward(self.dropout.forward(x))
    }
}

/// How a sequence of hidden states becomes one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequencePooling {
    /// Mean over the valid tokens.
    Mean,
    /// Sum over the valid tokens divided by a fixed length (LRA's mean over its padded input).
    SumOver(usize),
}

impl SequencePooling {
    /// LRA's pooling for inputs of at most `max_len` tokens.
    pub fn lra(max_len: usize) -> Self {
        SequencePooling::SumOver(max_len.next_power_of_two())
    }

    /// `[batch, n, width]` and the `[batch, n]` padding mask → `[batch, width]`.
    pub fn forward(&self, hidden: Tensor<3>, mask_pad: &Tensor<2, Bool>) -> Tensor<2> {
        match *self {
            SequencePooling::Mean => Pooling::Mean.forward(hidden, Some(mask_pad)),
            SequencePooling::SumOver(length) => {
                let [batch, n, width] = hidden.dims();
                let mask = mask_pad
                    .clone()
                    .reshape([batch, n, 1])
                    .expand([batch, n, width]);
                hidden
                    .mask_fill(mask, 0.0)
                    .sum_dim(1)
                    .reshape([batch, width])
                    .div_scalar(length as f64)
            }
        }
    }
}
