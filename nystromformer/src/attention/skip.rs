//! The skip connection: a depthwise convolution of the values along the sequence (step 6).

use burn::nn::conv::Conv2d;
use burn::tensor::{Bool, Tensor};

use super::mask::zero_rows;

/// Depthwise convolution of `v` along the sequence axis, one `k × 1` filter per head.
///
/// The convolution zero-pads the sequence ends (`k / 2` on each side). With `mask_pad`, the
/// values at padded positions are zeroed first, so they never reach a valid position; pass
/// `None` to reproduce HF transformers, which convolves the raw values.
///
/// # Shapes
///
/// - v: `[batch, heads, n, d]`
/// - conv: weight `[heads, 1, k, 1]`, groups = heads, no bias
/// - mask_pad: `[batch, n]` (`true` = padding)
/// - output: `[batch, heads, n, d]`
pub fn conv_skip(v: Tensor<4>, conv: &Conv2d, mask_pad: Option<&Tensor<2, Bool>>) -> Tensor<4> {
    conv.forward(zero_rows(v, mask_pad))
}
