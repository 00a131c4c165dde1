//! [`NystromAttention`]: projections, heads and the attention of choice, as a Burn module.

use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, Linear};
use burn::tensor::{Bool, Tensor};

use super::config::{AttentionMode, MaskPolicy};
use super::exact::softmax_attention;
use super::nystrom::{NystromKernels, NystromOptions, nystrom_attention};
use super::shape_check::expect_shape;
use super::skip::conv_skip;

/// Multi-head Nyström self-attention (Xiong et al., AAAI 2021).
///
/// Embeds like burn-nn's `MultiHeadAttention`: query, key and value projections, per-head
/// attention, an optional depthwise-convolution skip over the values, and an output
/// projection. Create it with [`NystromAttentionConfig`](super::NystromAttentionConfig).
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

/// Input of [`NystromAttention::forward`].
#[derive(Debug, Clone)]
pub struct NystromInput {
    /// `[batch, n, d_model]`
    x: Tensor<3>,
    mask_pad: Option<Tensor<2, Bool>>,
    return_kernels: bool,
}

impl NystromInput {
    /// Self-attention over `x`, shape `[batch, n, d_model]`.
    pub fn new(x: Tensor<3>) -> Self {
        Self {
            x,
            mask_pad: None,
            return_kernels: false,
        }
    }

    /// Registers the padding mask, shape `[batch, n]`, `true` at padded positions.
    pub fn mask_pad(mut self, mask_pad: Tensor<2, Bool>) -> Self {
        self.mask_pad = Some(mask_pad);
        self
    }

    /// Asks for the kernels `F`, `A`, `A⁺` and `B` in the output.
    pub fn return_kernels(mut self) -> Self {
        self.return_kernels = true;
        self
    }
}

/// Output of [`NystromAttention::forward`].
#[derive(Debug, Clone)]
pub struct NystromOutput {
    /// The context, `[batch, n, d_model]`.
    pub context: Tensor<3>,
    /// `F`, `A`, `A⁺` and `B` per head, when asked for and the Nyström path ran.
    pub kernels: Option<NystromKernels>,
}

impl NystromAttention {
    /// Applies self-attention to the input.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, n, d_model]`
    /// - mask_pad: `[batch, n]`
    /// - context: `[batch, n, d_model]`
    /// - kernels: `F` `[batch, heads, n, m]`, `A` and `A⁺` `[batch, heads, m, m]`, `B` `[batch, heads, m, n]`
    ///
    /// # Panics
    ///
    /// Panics if the last axis of `x` is not `d_model`, if `n` is 0, or if the mask is not
    /// `[batch, n]`.
    pub fn forward(&self, input: NystromInput) -> NystromOutput {
        let [batch, n, d_model] = input.x.dims();
        assert!(
            d_model == self.d_model,
            "NystromAttention: input has {d_model} features, the layer expects d_model = {}",
            self.d_model
        );
        assert!(n > 0, "NystromAttention: the sequence is empty (n = 0)");
        if let Some(mask) = &input.mask_pad {
            expect_shape("NystromAttention", "mask_pad", &mask.dims(), &[batch, n]);
        }

        let q = self.split_heads(self.query.forward(input.x.clone()));
        let k = self.split_heads(self.key.forward(input.x.clone()));
        let v = self.split_heads(self.value.forward(input.x));

        let (context, kernels) = match self.mode {
            AttentionMode::Nystrom => {
                let options = self
                    .options
                    .clone()
                    .with_return_kernels(input.return_kernels);
                let out = nystrom_attention(q, k, v.clone(), input.mask_pad.clone(), &options);
                (out.context, out.kernels)
            }
            AttentionMode::Softmax => (
                softmax_attention(q, k, v.clone(), input.mask_pad.as_ref()),
                None,
            ),
        };
        let context = match &self.conv {
            Some(conv) => {
                let skip_mask = match self.options.mask_policy {
                    MaskPolicy::LeakFree => input.mask_pad.as_ref(),
                    MaskPolicy::HfCompatible => None,
                };
                context + conv_skip(v, conv, skip_mask)
            }
            None => context,
        };

        let context = self.dropout.forward(merge_heads(context));
        NystromOutput {
            context: self.output.forward(context),
            kernels,
        }
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
