//! The skip connection: a depthwise convolution of the values along the sequence (step 6).

use burn::nn::conv::Conv2d;
use burn::tensor::{Bool, FloatDType, Tensor};

use super::mask::zero_rows;
use crate::kernels::{self, MaskFlags};

/// Depthwise convolution of `v` along the sequence axis, one `k × 1` filter per head.
///
/// The convolution zero-pads the sequence ends (`k / 2` on each side). With `mask_pad`, the
/// values at padded positions count as zeros, so they never reach a valid position; pass
/// `None` to reproduce HF transformers, which convolves the raw values. With `fused`, flex runs
/// the convolution as fused loops and CubeCL devices as kernels that read the mask in place of
/// zeroing the values first ([`fused_depthwise_conv`](crate::kernels::fused_depthwise_conv)).
///
/// # Shapes
///
/// - v: `[batch, heads, n, d]`
/// - conv: weight `[heads, 1, k, 1]`, groups = heads, no bias
/// - mask_pad: `[batch, n]` (`true` = padding)
/// - output: `[batch, heads, n, d]`
pub fn conv_skip(
    v: Tensor<4>,
    conv: &Conv2d,
    mask_pad: Option<&Tensor<2, Bool>>,
    fused: bool,
) -> Tensor<4> {
    let padding = MaskFlags::new(mask_pad, FloatDType::from(v.dtype()));
    conv_skip_with_flags(v, conv, &padding, fused)
}

/// [`conv_skip`] with the padding's flags shared with the attention call.
pub(crate) fn conv_skip_with_flags(
    v: Tensor<4>,
    conv: &Conv2d,
    padding: &MaskFlags,
    fused: bool,
) -> Tensor<4> {
    let taps = conv.weight.val();
    // The fused loops have no bias; NystromAttentionConfig::init makes none.
    let fused = fused && conv.bias.is_none();
    match fused
        .then(|| kernels::depthwise_conv_with_flags(&v, &taps, padding))
        .flatten()
    {
        Some(out) => out,
        None => conv.forward(zero_rows(v, padding.mask())),
    }
}
