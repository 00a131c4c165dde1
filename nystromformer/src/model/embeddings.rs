//! Token, learned-position and token-type embeddings, summed and (BERT layout) normalised.

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::config::NystromformerConfig;
use crate::kernels;

/// The embedding block (HF `embeddings`).
#[derive(Module, Debug)]
pub struct Embeddings {
    /// Token embeddings, `[vocab_size, hidden]`.
    pub word_embeddings: Embedding,
    /// Learned position embeddings, `[max_position_embeddings + position_offset, hidden]`.
    pub position_embeddings: Embedding,
    /// Token-type embeddings, `[type_vocab_size, hidden]`, if any.
    pub token_type_embeddings: Option<Embedding>,
    /// LayerNorm over the sum (`None` without `embedding_layer_norm`).
    pub layer_norm: Option<LayerNorm>,
    /// Dropout after the LayerNorm.
    pub dropout: Dropout,
    /// Index of the first position.
    pub position_offset: usize,
    /// Run the LayerNorm and the dropout fused on flex (the model's `custom_kernels`).
    #[module(skip)]
    pub custom_kernels: bool,
    /// Epsilon of the LayerNorm (burn-nn's `LayerNorm` keeps its own private).
    #[module(skip)]
    pub layer_norm_eps: f64,
}

impl Embeddings {
    /// Creates the block from the model configuration.
    pub fn new(config: &NystromformerConfig, device: &Device) -> Self {
        let hidden = config.hidden_size;
        let table = |rows: usize| {
            EmbeddingConfig::new(rows, hidden)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: config.initializer_range,
                })
                .init(device)
        };
        Self {
            word_embeddings: table(config.vocab_size),
            position_embeddings: table(config.max_position_embeddings + config.position_offset),
            token_type_embeddings: (config.type_vocab_size > 0)
                .then(|| table(config.type_vocab_size)),
            layer_norm: config.embedding_layer_norm.then(|| {
                LayerNormConfig::new(hidden)
                    .with_epsilon(config.layer_norm_eps)
                    .init(device)
            }),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            position_offset: config.position_offset,
            custom_kernels: config.custom_kernels,
            layer_norm_eps: config.layer_norm_eps,
        }
    }

    /// Longest sequence the position table covers.
    pub fn max_len(&self) -> usize {
        self.position_embeddings.weight.dims()[0] - self.position_offset
    }

    /// Embeds token ids.
    ///
    /// # Shapes
    ///
    /// - input_ids, token_type_ids: `[batch, n]`
    /// - output: `[batch, n, hidden]`
    ///
    /// # Panics
    ///
    /// Panics if `n` exceeds [`max_len`](Self::max_len).
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
    ) -> Tensor<3> {
        let [batch, n] = input_ids.dims();
        assert!(
            n <= self.max_len(),
            "sequence of {n} tokens exceeds max_position_embeddings = {}",
            self.max_len()
        );
        let device = input_ids.device();
        let start = self.position_offset as i64;
        // Uploaded rather than `arange`, which Burn's fusion backend builds as a cumulative sum
        // that CubeCL computes in O(n²) (and lavapipe gets wrong past 65 535 entries).
        let positions: Vec<i64> = (start..start + n as i64).collect();
        let positions = Tensor::<2, Int>::from_data(TensorData::new(positions, [1, n]), &device)
            .expand([batch, n]);
        let mut x =
            self.word_embeddings.forward(input_ids) + self.position_embeddings.forward(positions);
        if let Some(token_types) = &self.token_type_embeddings {
            let ids = token_type_ids.unwrap_or_else(|| Tensor::zeros([batch, n], &device));
            x = x + token_types.forward(ids);
        }
        if let Some(norm) = &self.layer_norm {
            x = kernels::layer_norm(norm, x, self.layer_norm_eps, self.custom_kernels);
        }
        kernels::dropout(&self.dropout, x, self.custom_kernels)
    }
}
