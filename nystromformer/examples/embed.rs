//! Embedding `NystromAttention` in your own Burn model, the way you would use burn-nn's
//! `MultiHeadAttention`.
//!
//! Run: `cargo run --release -p nystromformer --example embed`

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Bool, Device, Distribution, Int, Tensor};
use nystromformer::{NystromAttention, NystromAttentionConfig, NystromInput};

/// A one-block sequence classifier over pre-computed features.
#[derive(Module, Debug)]
struct SequenceClassifier {
    attention: NystromAttention,
    norm: LayerNorm,
    head: Linear,
}

impl SequenceClassifier {
    fn new(d_model: usize, n_classes: usize, device: &Device) -> Self {
        Self {
            attention: NystromAttentionConfig::new(d_model, 4)
                .with_num_landmarks(32)
                .with_conv_kernel_size(Some(33))
                .init(device),
            norm: LayerNormConfig::new(d_model).init(device),
            head: LinearConfig::new(d_model, n_classes).init(device),
        }
    }

    /// `[batch, n, d_model]` features and a `[batch, n]` padding mask → `[batch, n_classes]`.
    fn forward(&self, x: Tensor<3>, mask_pad: Tensor<2, Bool>) -> Tensor<2> {
        let [batch, _, d_model] = x.dims();
        let attended = self
            .attention
            .forward(NystromInput::self_attn(x.clone()).mask_pad(mask_pad));
        let h = self.norm.forward(x + attended.context);
        self.head.forward(h.mean_dim(1).reshape([batch, d_model]))
    }
}

fn main() {
    let device = Device::flex();
    let model = SequenceClassifier::new(64, 10, &device);
    println!("{model}");

    // Two sequences of 1000 tokens, the second padded after 700.
    let x = Tensor::<3>::random([2, 1000, 64], Distribution::Normal(0.0, 1.0), &device);
    let positions = Tensor::<1, Int>::arange(0..1000, &device).reshape([1, 1000]);
    let lengths = Tensor::<1, Int>::from_ints([1000, 700], &device).reshape([2, 1]);
    let mask_pad = positions
        .expand([2, 1000])
        .greater_equal(lengths.expand([2, 1000]));

    let logits = model.forward(x, mask_pad);
    println!("logits {:?}: {}", logits.dims(), logits);
}
