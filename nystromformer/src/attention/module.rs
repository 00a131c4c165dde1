//! [`NystromAttention`]: projections, heads and the attention of choice, as a Burn module.

use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, Linear};
use burn::tensor::{Bool, FloatDType, Tensor};

use super::config::{AttentionMode, MaskPolicy};
use super::exact::exact_attention;
use super::mask::PaddingMasks;
use super::nystrom::{
    NystromHeadsInput, NystromKernels, NystromOptions, nystrom_attention_with_flags,
};
use super::shape_check::expect_shape;
use super::skip::conv_skip_with_flags;
use crate::kernels::{self, MaskFlags};

/// Multi-head Nyström attention (Xiong et al., AAAI 2021), self- or cross-attention.
///
/// Embeds like burn-nn's `MultiHeadAttention`: query, key and value projections, per-head
/// attention, an optional depthwise-convolution skip over the values, and an output
/// projection. Create it with [`NystromAttentionConfig`](super::NystromAttentionConfig).
///
/// Where it differs from `MultiHeadAttention` on purpose:
/// - dropout acts on the merged context before the output projection, not on attention weights,
///   which the Nyström path never forms (HF transformers does the same);
/// - with at most `num_landmarks` keys (per sequence, under [`MaskPolicy::LeakFree`]) the
///   approximation has nothing to save and the result is exact softmax attention;
/// - the output may carry `F`, `A`, `A⁺` and `B` instead of one attention-weight matrix
///   ([`NystromInput::return_kernels`]).
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct NystromAttention {
    /// Projection of the input to queries.
    pub query: Linear,
    /// Projection of the input to keys.
    pub key: Linear,
    /// Projection of the input to values.
    pub value: Linear,
    /// Projection of the merged heads back to `d_model`.
    pub output: Linear,
    /// Depthwise convolution of the values (the skip connection), when configured.
    pub conv: Option<Conv2d>,
    /// Dropout on the merged context before the output projection.
    pub dropout: Dropout,
    /// Width of the input and output features.
    pub d_model: usize,
    /// Number of heads.
    pub n_heads: usize,
    /// Nyström or exact softmax attention.
    #[module(skip)]
    pub mode: AttentionMode,
    /// Landmarks, pseudo-inverse and mask policy of the Nyström path.
    #[module(skip)]
    pub options: NystromOptions,
}

impl ModuleDisplay for NystromAttention {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("d_model", &self.d_model)
            .add("n_heads", &self.n_heads)
            .add("mode", &format!("{:?}", self.mode))
            .add("num_landmarks", &self.options.num_landmarks)
            .add("pinv_iterations", &self.options.pinv_iterations)
            .add("pinv_init", &format!("{:?}", self.options.pinv_init))
            .optional()
    }
}

/// Input of [`NystromAttention::forward`], built like burn-nn's `MhaInput`.
#[derive(Debug, Clone)]
pub struct NystromInput {
    /// `[batch, n_q, d_model]`
    query: Tensor<3>,
    /// `[batch, n_k, d_model]`
    key: Tensor<3>,
    /// `[batch, n_k, d_model]`
    value: Tensor<3>,
    padding: PaddingMasks,
    return_kernels: bool,
}

impl NystromInput {
    /// Self-attention over `x`, shape `[batch, n, d_model]`.
    pub fn self_attn(x: Tensor<3>) -> Self {
        let mut input = Self::new(x.clone(), x.clone(), x);
        input.padding.self_attention = true;
        input
    }

    /// Cross-attention of `query` `[batch, n_q, d_model]` over `key` and `value`
    /// `[batch, n_k, d_model]`: query landmarks come from the queries, key landmarks from the
    /// keys.
    pub fn new(query: Tensor<3>, key: Tensor<3>, value: Tensor<3>) -> Self {
        Self {
            query,
            key,
            value,
            padding: PaddingMasks::default(),
            return_kernels: false,
        }
    }

    /// Registers the padding mask of the keys and values, shape `[batch, n_k]`, `true` at padded
    /// positions; in self-attention it masks the queries too.
    pub fn mask_pad(mut self, mask_pad: Tensor<2, Bool>) -> Self {
        self.padding.mask_pad = Some(mask_pad);
        self
    }

    /// Registers the padding mask of the queries in cross-attention, shape `[batch, n_q]`,
    /// `true` at padded positions. Without it every query is valid.
    pub fn mask_pad_query(mut self, mask_pad_query: Tensor<2, Bool>) -> Self {
        self.padding.mask_pad_query = Some(mask_pad_query);
        self
    }

    /// Asks for the kernels `F`, `A`, `A⁺` and `B` in the output. They come back only where
    /// the Nyström path ran: not in [`AttentionMode::Softmax`], nor when `n_k ≤ num_landmarks`
    /// (exact attention, nothing approximated), and asking for them turns the custom kernels
    /// off for the call, since those never form `F` and `B`.
    pub fn return_kernels(mut self) -> Self {
        self.return_kernels = true;
        self
    }
}

/// Output of [`NystromAttention::forward`].
#[derive(Debug, Clone)]
pub struct NystromOutput {
    /// The context, `[batch, n_q, d_model]`.
    pub context: Tensor<3>,
    /// `F`, `A`, `A⁺` and `B` per head, when asked for and the Nyström path ran.
    pub kernels: Option<NystromKernels>,
}

impl NystromAttention {
    /// Applies self- or cross-attention to the input.
    ///
    /// # Shapes
    ///
    /// - query: `[batch, n_q, d_model]`, key and value: `[batch, n_k, d_model]`
    /// - mask_pad: `[batch, n_k]`, mask_pad_query: `[batch, n_q]`
    /// - context: `[batch, n_q, d_model]`
    /// - kernels: `F` `[batch, heads, n_q, m]`, `A` and `A⁺` `[batch, heads, m, m]`, `B`
    ///   `[batch, heads, m, n_k]`
    ///
    /// # Panics
    ///
    /// Panics, naming the argument, if a last axis is not `d_model`, if a sequence is empty, if
    /// the batch sizes, key and value lengths or masks disagree, or if the skip convolution is
    /// configured and `n_q ≠ n_k`.
    pub fn forward(&self, input: NystromInput) -> NystromOutput {
        self.check_input(&input);
        let NystromInput {
            query,
            key,
            value,
            padding,
            return_kernels,
        } = input;
        let q = self.split_heads(self.query.forward(query));
        let k = self.split_heads(self.key.forward(key));
        let v = self.split_heads(self.value.forward(value));
        // The keys' padding flags, made at most once for the attention and the skip convolution.
        let dtype = FloatDType::from(v.dtype());
        let padding_flags = MaskFlags::new(padding.mask_pad.as_ref(), dtype);

        let (context, kernels) = match self.mode {
            AttentionMode::Nystrom => {
                let heads = NystromHeadsInput {
                    q,
                    k,
                    v: v.clone(),
                    padding: padding.clone(),
                    return_kernels,
                };
                let out = nystrom_attention_with_flags(heads, &self.options, &padding_flags);
                (out.context, out.kernels)
            }
            AttentionMode::Softmax => (
                exact_attention(
                    q,
                    k,
                    v.clone(),
                    &padding,
                    self.options.mask_policy,
                    self.options.custom_kernels,
                ),
                None,
            ),
        };
        let context = match &self.conv {
            Some(conv) => {
                let unmasked = MaskFlags::new(None, dtype);
                let skip_padding = match self.options.mask_policy {
                    MaskPolicy::LeakFree => &padding_flags,
                    MaskPolicy::HfCompatible => &unmasked,
                };
                context + conv_skip_with_flags(v, conv, skip_padding, self.options.custom_kernels)
            }
            None => context,
        };

        let context = kernels::dropout(
            &self.dropout,
            merge_heads(context),
            self.options.custom_kernels,
        );
        NystromOutput {
            context: self.output.forward(context),
            kernels,
        }
    }

    fn check_input(&self, input: &NystromInput) {
        let op = "NystromAttention";
        let [batch, n_q, _] = input.query.dims();
        let [_, n_k, _] = input.key.dims();
        for (name, tensor, n) in [
            ("query", &input.query, n_q),
            ("key", &input.key, n_k),
            ("value", &input.value, n_k),
        ] {
            expect_shape(op, name, &tensor.dims(), &[batch, n, self.d_model]);
        }
        assert!(
            n_q > 0 && n_k > 0,
            "{op}: the sequence is empty (n_q = {n_q}, n_k = {n_k})"
        );
        input.padding.check(op, batch, n_q, n_k);
        assert!(
            self.conv.is_none() || n_q == n_k,
            "{op}: the skip convolution adds the values' convolution to the queries' positions, \
             so it needs n_q = n_k (got n_q = {n_q}, n_k = {n_k}); configure conv_kernel_size = \
             None for cross-attention"
        );
    }

    /// `[batch, n, d_model]` → `[batch, heads, n, head_dim]`
    fn split_heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [batch, n, d_model] = x.dims();
        x.reshape([batch, n, self.n_heads, d_model / self.n_heads])
            .swap_dims(1, 2)
    }
}

/// `[batch, heads, n, head_dim]` → `[batch, n, heads · head_dim]`
fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [batch, heads, n, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([batch, n, heads * head_dim])
}
