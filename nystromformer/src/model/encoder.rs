//! [`NystromformerEncoder`]: embeddings and a stack of encoder layers (HF `NystromformerModel`).

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::{Bool, Device, Int, Tensor};

use super::config::NystromformerConfig;
use super::embeddings::Embeddings;
use super::layer::EncoderLayer;
use crate::kernels;

/// The Nyströmformer encoder: token ids in, hidden states out.
#[derive(Module, Debug)]
pub struct NystromformerEncoder {
    /// Token, position and token-type embeddings.
    pub embeddings: Embeddings,
    /// The encoder layers.
    pub layers: Vec<EncoderLayer>,
    /// Final LayerNorm of pre-norm stacks (`None` for post-norm); padded positions are zeroed
    /// after it.
    pub final_norm: Option<LayerNorm>,
}

/// Input of [`NystromformerEncoder::forward`].
#[derive(Debug, Clone)]
pub struct EncoderInput {
    /// `[batch, n]` token ids.
    pub input_ids: Tensor<2, Int>,
    /// `[batch, n]`, `true` at padded positions.
    pub mask_pad: Option<Tensor<2, Bool>>,
    /// `[batch, n]` token types (zeros when absent).
    pub token_type_ids: Option<Tensor<2, Int>>,
}

impl EncoderInput {
    /// Input of token ids, shape `[batch, n]`.
    pub fn new(input_ids: Tensor<2, Int>) -> Self {
        Self {
            input_ids,
            mask_pad: None,
            token_type_ids: None,
        }
    }

    /// Registers the padding mask, `[batch, n]`, `true` at padded positions.
    pub fn mask_pad(mut self, mask_pad: Tensor<2, Bool>) -> Self {
        self.mask_pad = Some(mask_pad);
        self
    }

    /// Registers token types, `[batch, n]`.
    pub fn token_type_ids(mut self, token_type_ids: Tensor<2, Int>) -> Self {
        self.token_type_ids = Some(token_type_ids);
        self
    }
}

impl NystromformerEncoder {
    /// Creates the encoder; prefer [`NystromformerConfig::init`], which validates first.
    pub fn new(config: &NystromformerConfig, device: &Device) -> Self {
        Self {
            embeddings: Embeddings::new(config, device),
            layers: (0..config.num_hidden_layers)
                .map(|_| EncoderLayer::new(config, device))
                .collect(),
            final_norm: config.norm_first.then(|| {
                LayerNormConfig::new(config.hidden_size)
                    .with_epsilon(config.layer_norm_eps)
                    .init(device)
            }),
        }
    }

    /// Encodes a batch of token ids.
    ///
    /// # Shapes
    ///
    /// - input_ids, mask_pad, token_type_ids: `[batch, n]`
    /// - output: `[batch, n, hidden]`
    ///
    /// # Panics
    ///
    /// Panics if `n` exceeds the position table or the mask is not `[batch, n]`.
    pub fn forward(&self, input: EncoderInput) -> Tensor<3> {
        let mut x = self
            .embeddings
            .forward(input.input_ids, input.token_type_ids);
        for layer in &self.layers {
            x = layer.forward(x, input.mask_pad.as_ref());
        }
        let Some(norm) = &self.final_norm else {
            return x;
        };
        // The model's epsilon and switch, as the embeddings keep them.
        let (epsilon, custom_kernels) = (
            self.embeddings.layer_norm_eps,
            self.embeddings.custom_kernels,
        );
        let x = kernels::layer_norm(norm, x, epsilon, custom_kernels);
        match input.mask_pad {
            // As the paper's LRA code does (`norm(X) * mask`): padding stays out of any pooling.
            Some(mask) => {
                let [batch, n] = mask.dims();
                let width = x.dims()[2];
                x.mask_fill(mask.reshape([batch, n, 1]).expand([batch, n, width]), 0.0)
            }
            None => x,
        }
    }
}
