//! The Hugging Face `config.json` of a Nystromformer checkpoint, field for field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::attention::{AttentionMode, MaskPolicy, PinvInit};
use crate::model::{Activation, NystromformerConfig};

use super::loader::LoadError;

/// HF's `NystromformerConfig` as written in `config.json` (defaults are HF's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HfNystromformerConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Number of heads.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Activation name (`"gelu"`, `"gelu_new"`, `"gelu_pytorch_tanh"`, `"relu"`).
    pub hidden_act: String,
    /// Dropout on hidden states.
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (unused by HF's Nyström attention).
    pub attention_probs_dropout_prob: f64,
    /// Position-table length (HF adds 2 rows: positions start at 2).
    pub max_position_embeddings: usize,
    /// Number of token types.
    pub type_vocab_size: usize,
    /// The length HF assumes when it computes segment means.
    pub segment_means_seq_len: usize,
    /// Number of landmarks.
    pub num_landmarks: usize,
    /// Skip-convolution kernel size (`null` disables it).
    pub conv_kernel_size: Option<usize>,
    /// `true` selects the exact pseudo-inverse initialisation (crashes in transformers 5.x).
    pub inv_coeff_init_option: bool,
    /// Std of HF's weight init.
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Padding token id.
    pub pad_token_id: Option<usize>,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<usize>,
    /// End-of-sequence token id.
    pub eos_token_id: Option<usize>,
    /// Class names of classification checkpoints, `{"0": "LABEL_0", ...}`.
    pub id2label: Option<BTreeMap<String, String>>,
    /// Model classes the checkpoint was saved from.
    pub architectures: Option<Vec<String>>,
}

impl Default for HfNystromformerConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30000,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu_new".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 510,
            type_vocab_size: 2,
            segment_means_seq_len: 64,
            num_landmarks: 64,
            conv_kernel_size: Some(65),
            inv_coeff_init_option: false,
            initializer_range: 0.02,
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(0),
            eos_token_id: Some(2),
            id2label: None,
            architectures: None,
        }
    }
}

/// HF's position ids start at 2 (RoBERTa's convention, kept by Nystromformer).
pub const HF_POSITION_OFFSET: usize = 2;

impl HfNystromformerConfig {
    /// Reads `config.json`; errors name the file, and the line and column of bad JSON.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| LoadError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Number of classes of a classification checkpoint (HF's default is 2).
    pub fn num_labels(&self) -> usize {
        self.id2label.as_ref().map_or(2, |labels| labels.len())
    }

    /// The library configuration that computes what HF computes.
    ///
    /// - `num_landmarks == segment_means_seq_len` makes HF take its exact-softmax branch for
    ///   every input length (the published checkpoints do this); the result then uses
    ///   [`AttentionMode::Softmax`], with the skip convolution, as HF does.
    /// - Otherwise HF's segment means are only defined for inputs of exactly
    ///   `segment_means_seq_len` tokens (other lengths fold the batch axis or fail there); at
    ///   that length the library's segments are HF's, and other lengths get proper segment means.
    /// - `mask_policy` decides whether padded tokens may leak into landmarks and the skip
    ///   convolution as in HF ([`MaskPolicy::HfCompatible`]) or not ([`MaskPolicy::LeakFree`]).
    pub fn to_model_config(&self, mask_policy: MaskPolicy) -> Result<NystromformerConfig, String> {
        let hidden_act = match self.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(format!(
                    "hidden_act \"{other}\" is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"
                ));
            }
        };
        let attention = if self.num_landmarks == self.segment_means_seq_len {
            AttentionMode::Softmax
        } else {
            AttentionMode::Nystrom
        };
        let config = NystromformerConfig::new(
            self.vocab_size,
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.intermediate_size,
        )
        .with_hidden_act(hidden_act)
        .with_hidden_dropout_prob(self.hidden_dropout_prob)
        .with_attention_probs_dropout_prob(self.attention_probs_dropout_prob)
        .with_max_position_embeddings(self.max_position_embeddings)
        .with_position_offset(HF_POSITION_OFFSET)
        .with_type_vocab_size(self.type_vocab_size)
        .with_layer_norm_eps(self.layer_norm_eps)
        .with_initializer_range(self.initializer_range)
        .with_attention(attention)
        .with_num_landmarks(self.num_landmarks)
        .with_pinv_init(if self.inv_coeff_init_option {
            PinvInit::Exact
        } else {
            PinvInit::Original
        })
        .with_conv_kernel_size(self.conv_kernel_size)
        .with_mask_policy(mask_policy);
        config.validate().map_err(|err| err.to_string())?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_fields_map_to_the_library_configuration() {
        let hf: HfNystromformerConfig = serde_json::from_str(
            r#"{"hidden_size": 32, "num_attention_heads": 4, "num_landmarks": 16,
                "segment_means_seq_len": 16, "hidden_act": "gelu", "conv_kernel_size": null,
                "architectures": ["NystromformerModel"], "model_type": "nystromformer"}"#,
        )
        .unwrap();
        let config = hf.to_model_config(MaskPolicy::LeakFree).unwrap();
        assert_eq!(
            config.attention,
            AttentionMode::Softmax,
            "HF's exact branch"
        );
        assert_eq!(config.hidden_act, Activation::Gelu);
        assert_eq!(config.conv_kernel_size, None);
        assert_eq!(config.position_offset, HF_POSITION_OFFSET);
        assert_eq!(config.pinv_init, PinvInit::Original);
        assert_eq!(config.vocab_size, 30000, "HF's default");

        let nystrom = HfNystromformerConfig {
            num_landmarks: 8,
            ..hf.clone()
        };
        assert_eq!(
            nystrom
                .to_model_config(MaskPolicy::LeakFree)
                .unwrap()
                .attention,
            AttentionMode::Nystrom
        );
        let bad = HfNystromformerConfig {
            hidden_act: "swish".into(),
            ..hf
        };
        assert!(
            bad.to_model_config(MaskPolicy::LeakFree)
                .unwrap_err()
                .contains("swish")
        );
    }
}
