//! One encoder layer: attention and feed-forward, each with a residual and a LayerNorm.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Bool, Device, Tensor};

use crate::attention::{NystromAttention, NystromInput};
use crate::kernels;

use super::config::{Activation, NystromformerConfig};

/// An encoder layer (HF `encoder.layer.N`).
#[derive(Module, Debug)]
pub struct EncoderLayer {
    /// Self-attention (Nyström or softmax), with its output projection.
    pub attention: NystromAttention,
    /// LayerNorm of the attention block.
    pub attention_norm: LayerNorm,
    /// First feed-forward projection, `hidden → intermediate`.
    pub intermediate: Linear,
    /// Second feed-forward projection, `intermediate → hidden`.
    pub output: Linear,
    /// LayerNorm of the feed-forward block.
    pub output_norm: LayerNorm,
    /// Dropout on both residual branches.
    pub dropout: Dropout,
    /// Dropout after the feed-forward activation (`intermediate_dropout_prob`).
    pub intermediate_dropout: Dropout,
    /// Feed-forward activation.
    #[module(skip)]
    pub activation: Activation,
    /// Pre-norm instead of post-norm.
    pub norm_first: bool,
    /// Epsilon of both LayerNorms (burn-nn's `LayerNorm` keeps its own private; the fused
    /// LayerNorm needs it).
    #[module(skip)]
    pub layer_norm_eps: f64,
}

impl EncoderLayer {
    /// Creates a layer from the model configuration.
    pub fn new(config: &NystromformerConfig, device: &Device) -> Self {
        let norm = LayerNormConfig::new(config.hidden_size).with_epsilon(config.layer_norm_eps);
        Self {
            attention: config.attention_config().init(device),
            attention_norm: norm.init(device),
            intermediate: LinearConfig::new(config.hidden_size, config.intermediate_size)
                .init(device),
            output: LinearConfig::new(config.intermediate_size, config.hidden_size).init(device),
            output_norm: norm.init(device),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            intermediate_dropout: DropoutConfig::new(config.intermediate_dropout_prob).init(),
            activation: config.hidden_act,
            norm_first: config.norm_first,
            layer_norm_eps: config.layer_norm_eps,
        }
    }

    /// # Shapes
    ///
    /// - x: `[batch, n, hidden]`, mask_pad: `[batch, n]` (`true` = padding)
    /// - output: `[batch, n, hidden]`
    pub fn forward(&self, x: Tensor<3>, mask_pad: Option<&Tensor<2, Bool>>) -> Tensor<3> {
        if self.norm_first {
            let h = x.clone() + self.attend(self.norm(&self.attention_norm, x), mask_pad);
            h.clone() + self.feed_forward(self.norm(&self.output_norm, h))
        } else {
            let h = self.norm(&self.attention_norm, x.clone() + self.attend(x, mask_pad));
            self.norm(&self.output_norm, h.clone() + self.feed_forward(h))
        }
    }

    fn attend(&self, x: Tensor<3>, mask_pad: Option<&Tensor<2, Bool>>) -> Tensor<3> {
        let input = match mask_pad {
            Some(mask) => NystromInput::self_attn(x).mask_pad(mask.clone()),
            None => NystromInput::self_attn(x),
        };
        self.dropout(&self.dropout, self.attention.forward(input).context)
    }

    fn feed_forward(&self, x: Tensor<3>) -> Tensor<3> {
        let custom_kernels = self.attention.options.custom_kernels;
        let h = self
            .activation
            .forward(self.intermediate.forward(x), custom_kernels);
        let h = self.dropout(&self.intermediate_dropout, h);
        self.dropout(&self.dropout, self.output.forward(h))
    }

    /// `norm` on `x`, fused on flex when the attention's `custom_kernels` is on.
    fn norm(&self, norm: &LayerNorm, x: Tensor<3>) -> Tensor<3> {
        let custom_kernels = self.attention.options.custom_kernels;
        kernels::layer_norm(norm, x, self.layer_norm_eps, custom_kernels)
    }

    /// `layer` on `x`, fused on flex when the attention's `custom_kernels` is on.
    fn dropout(&self, layer: &Dropout, x: Tensor<3>) -> Tensor<3> {
        kernels::dropout(layer, x, self.attention.options.custom_kernels)
    }
}
