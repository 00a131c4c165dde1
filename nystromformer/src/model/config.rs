//! [`NystromformerConfig`]: the encoder's hyper-parameters.

use burn::config::Config;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::attention::{AttentionMode, ConfigError, MaskPolicy, NystromAttentionConfig, PinvInit};

use super::encoder::NystromformerEncoder;

/// Activation of the feed-forward block and the heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Activation {
    /// GELU with the exact erf (HF `"gelu"`).
    #[default]
    Gelu,
    /// GELU with the tanh approximation (HF `"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    /// ReLU (HF `"relu"`).
    Relu,
}

impl Activation {
    /// Applies the activation; exact GELU runs fused on flex with `custom_kernels` (see
    /// [`kernels::gelu`](crate::kernels::gelu)).
    pub fn forward<const D: usize>(
        &self,
        x: burn::tensor::Tensor<D>,
        custom_kernels: bool,
    ) -> burn::tensor::Tensor<D> {
        use burn::tensor::activation;
        match self {
            Activation::Gelu => crate::kernels::gelu(x, custom_kernels),
            Activation::GeluTanh => activation::gelu_approximate(x),
            Activation::Relu => activation::relu(x),
        }
    }
}

/// Configuration of a [`NystromformerEncoder`] and the models built on it.
#[derive(Config, Debug)]
pub struct NystromformerConfig {
    /// Size of the token vocabulary.
    pub vocab_size: usize,
    /// Width of the embeddings and hidden states.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Activation of the feed-forward block. Default: [`Activation::Gelu`].
    #[config(default = "Activation::Gelu")]
    pub hidden_act: Activation,
    /// Dropout on embeddings and residual branches. Default: 0.1.
    #[config(default = 0.1)]
    pub hidden_dropout_prob: f64,
    /// Dropout after the feed-forward activation (the paper's LRA model has it, BERT and HF
    /// do not). Default: 0.
    #[config(default = 0.0)]
    pub intermediate_dropout_prob: f64,
    /// Dropout on the attention context. Default: 0.1.
    #[config(default = 0.1)]
    pub attention_probs_dropout_prob: f64,
    /// Longest sequence the position embeddings cover. Default: 512.
    #[config(default = 512)]
    pub max_position_embeddings: usize,
    /// First position index (HF Nystromformer starts at 2, as RoBERTa does). Default: 0.
    #[config(default = 0)]
    pub position_offset: usize,
    /// Number of token types; 0 disables token-type embeddings. Default: 2.
    #[config(default = 2)]
    pub type_vocab_size: usize,
    /// Epsilon of every LayerNorm. Default: 1e-5.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Pre-norm layers (`x + f(LN(x))`, with a final LayerNorm after which padded positions are
    /// zeroed, as in the paper's LRA code) instead of BERT's post-norm (`LN(x + f(x))`).
    /// Default: false.
    #[config(default = false)]
    pub norm_first: bool,
    /// A LayerNorm over the summed embeddings (BERT, HF); the paper's LRA model has none.
    /// Default: true.
    #[config(default = true)]
    pub embedding_layer_norm: bool,
    /// Standard deviation of the normal initialisation of the embedding tables (HF's
    /// `initializer_range`; the LRA code's 0.02). Default: 0.02.
    #[config(default = 0.02)]
    pub initializer_range: f64,
    /// Nyström attention or the exact softmax baseline. Default: [`AttentionMode::Nystrom`].
    #[config(default = "AttentionMode::Nystrom")]
    pub attention: AttentionMode,
    /// Number of landmarks. Default: 64.
    #[config(default = 64)]
    pub num_landmarks: usize,
    /// Iterations of the pseudo-inverse. Default: 6.
    #[config(default = 6)]
    pub pinv_iterations: usize,
    /// Initialisation of the pseudo-inverse. Default: [`PinvInit::Exact`].
    #[config(default = "PinvInit::Exact")]
    pub pinv_init: PinvInit,
    /// Kernel size of the skip convolution; `None` disables it. Default: 33.
    #[config(default = "Some(33)")]
    pub conv_kernel_size: Option<usize>,
    /// How padding enters landmarks and the skip. Default: [`MaskPolicy::LeakFree`].
    #[config(default = "MaskPolicy::LeakFree")]
    pub mask_policy: MaskPolicy,
    /// A runtime switch, not a property of the model (it changes speed, not results beyond
    /// float rounding and dropout's random draws): the attention's custom kernels (see
    /// [`NystromAttentionConfig::custom_kernels`]) and, on flex, the fused dropout, GELU and
    /// LayerNorms of the layers and embeddings. Default: true.
    #[config(default = true)]
    pub custom_kernels: bool,
}

impl NystromformerConfig {
    /// The attention layer's configuration.
    pub fn attention_config(&self) -> NystromAttentionConfig {
        NystromAttentionConfig::new(self.hidden_size, self.num_attention_heads)
            .with_num_landmarks(self.num_landmarks)
            .with_pinv_iterations(self.pinv_iterations)
            .with_pinv_init(self.pinv_init)
            .with_conv_kernel_size(self.conv_kernel_size)
            .with_dropout(self.attention_probs_dropout_prob)
            .with_mode(self.attention)
            .with_mask_policy(self.mask_policy)
            .with_custom_kernels(self.custom_kernels)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.attention_config().validate()?;
        if !(self.initializer_range.is_finite() && self.initializer_range > 0.0) {
            return Err(ConfigError::InitializerRange(self.initializer_range));
        }
        for dropout in [self.hidden_dropout_prob, self.intermediate_dropout_prob] {
            if !(0.0..1.0).contains(&dropout) {
                return Err(ConfigError::Dropout(dropout));
            }
        }
        Ok(())
    }

    /// Initializes the encoder.
    ///
    /// # Panics
    ///
    /// Panics with the message of [`validate`](Self::validate) if the configuration is invalid.
    pub fn init(&self, device: &Device) -> NystromformerEncoder {
        if let Err(err) = self.validate() {
            panic!("invalid NystromformerConfig: {err}");
        }
        NystromformerEncoder::new(self, device)
    }
}
