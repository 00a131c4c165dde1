//! Configuration of [`NystromAttention`].

use burn::config::Config;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{DropoutConfig, Initializer, LinearConfig};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::mask::MASKED_SCORE;
use super::module::NystromAttention;
use super::nystrom::NystromOptions;
use super::pinv::PinvInit;

/// How attention weights are computed by [`NystromAttention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AttentionMode {
    /// Nyström approximation `F · A⁺ · (B · V)`; exact softmax when `n ≤ num_landmarks`.
    #[default]
    Nystrom,
    /// Exact softmax attention through `burn::tensor::module::attention` (on flex with
    /// `custom_kernels`, the fused [`crate::kernels::fused_softmax_attention`]): the standard
    /// Transformer baseline, with the same projections (and skip connection, if configured).
    Softmax,
}

/// How a padding mask enters the landmarks and the skip connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MaskPolicy {
    /// Padded tokens never influence a valid position: landmarks are means over valid tokens
    /// only, a segment without valid tokens is not a landmark, and the skip convolution sees
    /// zeros at padded positions.
    #[default]
    LeakFree,
    /// Reproduces Hugging Face transformers: landmarks average padded tokens too, the skip
    /// convolution reads the values at padded positions, and only `B` masks padded keys.
    /// Outputs at valid positions then depend on what sits in the padding.
    HfCompatible,
}

/// Configuration to create a [`NystromAttention`] layer with
/// [`init`](NystromAttentionConfig::init).
#[derive(Config, Debug)]
pub struct NystromAttentionConfig {
    /// Width of the input and output features.
    pub d_model: usize,
    /// Number of attention heads; must divide `d_model`.
    pub n_heads: usize,
    /// Number of landmarks `m`. Default: 64.
    #[config(default = 64)]
    pub num_landmarks: usize,
    /// Iterations of the Moore–Penrose pseudo-inverse. Default: 6.
    #[config(default = 6)]
    pub pinv_iterations: usize,
    /// Initialisation of the pseudo-inverse iteration. Default: [`PinvInit::Exact`].
    #[config(default = "PinvInit::Exact")]
    pub pinv_init: PinvInit,
    /// Kernel size of the depthwise convolution over the values (an odd number, e.g. 33);
    /// `None` turns the skip connection off. Default: `None`.
    #[config(default = "None")]
    pub conv_kernel_size: Option<usize>,
    /// Dropout applied to the attention context before the output projection (training only).
    /// Default: 0.1.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Nyström or exact softmax attention. Default: [`AttentionMode::Nystrom`].
    #[config(default = "AttentionMode::Nystrom")]
    pub mode: AttentionMode,
    /// How the padding mask enters landmarks and skip. Default: [`MaskPolicy::LeakFree`].
    #[config(default = "MaskPolicy::LeakFree")]
    pub mask_policy: MaskPolicy,
    /// Score given to masked entries before each softmax, like burn-nn's `min_float`; clamped
    /// to the lowest finite f32, in which the softmaxes run. Default: -1e9.
    #[config(default = "MASKED_SCORE")]
    pub min_float: f64,
    /// A runtime switch, not a property of the model (it changes speed, not results beyond
    /// float rounding): run the custom kernels (CubeCL, fused flex) where they apply (see
    /// [`crate::kernels`]). Default: true.
    #[config(default = true)]
    pub custom_kernels: bool,
    /// Enable bias for the query projection. Default: true.
    #[config(default = true)]
    pub query_bias: bool,
    /// Enable bias for the key projection. Default: true.
    #[config(default = true)]
    pub key_bias: bool,
    /// Enable bias for the value projection. Default: true.
    #[config(default = true)]
    pub value_bias: bool,
    /// Enable bias for the output projection. Default: true.
    #[config(default = true)]
    pub output_bias: bool,
    /// Initializer of the projection weights. Default: Kaiming uniform as in burn-nn's
    /// `MultiHeadAttention`.
    #[config(
        default = "Initializer::KaimingUniform{gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false}"
    )]
    pub initializer: Initializer,
}

/// A configuration value that cannot produce a working layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `d_model` is not a multiple of `n_heads`.
    #[error("d_model ({d_model}) must be a positive multiple of n_heads ({n_heads})")]
    HeadsDoNotDivide {
        /// The model width.
        d_model: usize,
        /// The number of heads.
        n_heads: usize,
    },
    /// `num_landmarks` is zero.
    #[error("num_landmarks must be at least 1, got 0")]
    NoLandmarks,
    /// The convolution kernel size is even or zero.
    #[error("conv_kernel_size must be odd, got {0}")]
    EvenKernel(usize),
    /// The dropout probability is outside `[0, 1)`.
    #[error("dropout must lie in [0, 1), got {0}")]
    Dropout(f64),
    /// The masking score is not a finite negative number.
    #[error("min_float must be finite and negative, got {0}")]
    MinFloat(f64),
    /// The embeddings' initialisation scale is not a finite positive number.
    #[error("initializer_range must be finite and positive, got {0}")]
    InitializerRange(f64),
}

impl NystromAttentionConfig {
    /// Checks every field; [`init`](Self::init) calls this and panics with its message.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.n_heads == 0 || self.d_model == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return Err(ConfigError::HeadsDoNotDivide {
                d_model: self.d_model,
                n_heads: self.n_heads,
            });
        }
        if self.num_landmarks == 0 {
            return Err(ConfigError::NoLandmarks);
        }
        if let Some(k) = self.conv_kernel_size
            && k % 2 == 0
        {
            return Err(ConfigError::EvenKernel(k));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::Dropout(self.dropout));
        }
        if !(self.min_float.is_finite() && self.min_float < 0.0) {
            return Err(ConfigError::MinFloat(self.min_float));
        }
        Ok(())
    }

    /// The options of the functional core that this configuration implies.
    pub fn nystrom_options(&self) -> NystromOptions {
        NystromOptions::new()
            .with_num_landmarks(self.num_landmarks)
            .with_pinv_iterations(self.pinv_iterations)
            .with_pinv_init(self.pinv_init)
            .with_mask_policy(self.mask_policy)
            .with_min_float(self.min_float)
            .with_custom_kernels(self.custom_kernels)
    }

    /// Initializes a new [`NystromAttention`] module.
    ///
    /// # Panics
    ///
    /// Panics with the message of [`validate`](Self::validate) if the configuration is invalid.
    pub fn init(&self, device: &Device) -> NystromAttention {
        if let Err(err) = self.validate() {
            panic!("invalid NystromAttentionConfig: {err}");
        }
        let linear = LinearConfig::new(self.d_model, self.d_model)
            .with_initializer(self.initializer.clone());
        // One filter of size k×1 per head over the [n, head_dim] plane: a 1-D convolution along
        // the sequence, shared by the head's features. This is HF's layout, so its weights load
        // as they are.
        let conv = self.conv_kernel_size.map(|k| {
            Conv2dConfig::new([self.n_heads, self.n_heads], [k, 1])
                .with_groups(self.n_heads)
                .with_padding(PaddingConfig2d::Explicit(k / 2, 0, k / 2, 0))
                .with_bias(false)
                .init(device)
        });
        NystromAttention {
            query: linear.clone().with_bias(self.query_bias).init(device),
            key: linear.clone().with_bias(self.key_bias).init(device),
            value: linear.clone().with_bias(self.value_bias).init(device),
            output: linear.with_bias(self.output_bias).init(device),
            conv,
            dropout: DropoutConfig::new(self.dropout).init(),
            d_model: self.d_model,
            n_heads: self.n_heads,
            mode: self.mode,
            options: self.nystrom_options(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_each_bad_value() {
        let ok = NystromAttentionConfig::new(64, 8);
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            NystromAttentionConfig::new(60, 8).validate(),
            Err(ConfigError::HeadsDoNotDivide {
                d_model: 60,
                n_heads: 8
            })
        );
        assert_eq!(
            ok.clone().with_num_landmarks(0).validate(),
            Err(ConfigError::NoLandmarks)
        );
        assert_eq!(
            ok.clone().with_conv_kernel_size(Some(4)).validate(),
            Err(ConfigError::EvenKernel(4))
        );
        assert_eq!(
            ok.clone().with_dropout(1.0).validate(),
            Err(ConfigError::Dropout(1.0))
        );
        assert_eq!(
            ok.with_min_float(f64::NEG_INFINITY).validate(),
            Err(ConfigError::MinFloat(f64::NEG_INFINITY))
        );
    }
}
