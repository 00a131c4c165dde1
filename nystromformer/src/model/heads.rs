//! Task heads and the models that put them on the encoder: sequence classification and
//! masked-LM, laid out like their HF counterparts.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::config::{Activation, NystromformerConfig};
use super::encoder::{EncoderInput, NystromformerEncoder};
use super::pooling::Pooling;

/// Classification head (HF `classifier`): `out_proj(act(dense(pooled)))`.
#[derive(Module, Debug)]
pub struct ClassificationHead {
    /// Hidden projection.
    pub dense: Linear,
    /// Projection to the labels.
    pub out_proj: Linear,
    /// Dropout before each projection.
    pub dropout: Dropout,
    /// Activation between the projections.
    #[module(skip)]
    pub activation: Activation,
}

impl ClassificationHead {
    /// Creates the head for `num_labels` classes.
    pub fn new(config: &NystromformerConfig, num_labels: usize, device: &Device) -> Self {
        Self {
            dense: LinearConfig::new(config.hidden_size, config.hidden_size).init(device),
            out_proj: LinearConfig::new(config.hidden_size, num_labels).init(device),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            activation: config.hidden_act,
        }
    }

    /// `[batch, hidden]` → `[batch, num_labels]`
    pub fn forward(&self, pooled: Tensor<2>) -> Tensor<2> {
        let x = self.dense.forward(self.dropout.forward(pooled));
        // Pooled `[batch, hidden]`: too small for the fused path to matter.
        let x = self.activation.forward(x, false);
        self.out_proj.forward(self.dropout.forward(x))
    }
}

/// Encoder + pooling + classification head (HF `NystromformerForSequenceClassification`).
#[derive(Module, Debug)]
pub struct NystromformerForSequenceClassification {
    /// The encoder.
    pub nystromformer: NystromformerEncoder,
    /// The head.
    pub classifier: ClassificationHead,
    /// How the sequence is pooled (HF: first token).
    #[module(skip)]
    pub pooling: Pooling,
}

impl NystromformerForSequenceClassification {
    /// Creates the model.
    pub fn new(
        config: &NystromformerConfig,
        num_labels: usize,
        pooling: Pooling,
        device: &Device,
    ) -> Self {
        Self {
            nystromformer: config.init(device),
            classifier: ClassificationHead::new(config, num_labels, device),
            pooling,
        }
    }

    /// Class logits, `[batch, num_labels]`.
    pub fn forward(&self, input: EncoderInput) -> Tensor<2> {
        let mask = input.mask_pad.clone();
        let hidden = self.nystromformer.forward(input);
        self.classifier
            .forward(self.pooling.forward(hidden, mask.as_ref()))
    }
}

/// Masked-LM head (HF `cls.predictions`): `decoder(LN(act(dense(x))))`.
#[derive(Module, Debug)]
pub struct MaskedLmHead {
    /// Transform projection.
    pub dense: Linear,
    /// Transform LayerNorm.
    pub layer_norm: LayerNorm,
    /// Projection to the vocabulary (HF ties its weight to the word embeddings).
    pub decoder: Linear,
    /// Run the activation fused on flex (the model's `custom_kernels`).
    #[module(skip)]
    pub custom_kernels: bool,
    /// Activation of the transform.
    #[module(skip)]
    pub activation: Activation,
}

impl MaskedLmHead {
    /// Creates the head.
    pub fn new(config: &NystromformerConfig, device: &Device) -> Self {
        Self {
            dense: LinearConfig::new(config.hidden_size, config.hidden_size).init(device),
            layer_norm: LayerNormConfig::new(config.hidden_size)
                .with_epsilon(config.layer_norm_eps)
                .init(device),
            decoder: LinearConfig::new(config.hidden_size, config.vocab_size).init(device),
            activation: config.hidden_act,
            custom_kernels: config.custom_kernels,
        }
    }

    /// `[batch, n, hidden]` → `[batch, n, vocab]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self
            .activation
            .forward(self.dense.forward(x), self.custom_kernels);
        self.decoder.forward(self.layer_norm.forward(x))
    }
}

/// Encoder + masked-LM head (HF `NystromformerForMaskedLM`).
#[derive(Module, Debug)]
pub struct NystromformerForMaskedLM {
    /// The encoder.
    pub nystromformer: NystromformerEncoder,
    /// The head.
    pub cls: MaskedLmHead,
}

impl NystromformerForMaskedLM {
    /// Creates the model.
    pub fn new(config: &NystromformerConfig, device: &Device) -> Self {
        Self {
            nystromformer: config.init(device),
            cls: MaskedLmHead::new(config, device),
        }
    }

    /// Token logits, `[batch, n, vocab]`.
    pub fn forward(&self, input: EncoderInput) -> Tensor<3> {
        self.cls.forward(self.nystromformer.forward(input))
    }
}
