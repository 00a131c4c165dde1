//! The CubeCL stages (wgpu, Vulkan, Metal, WebGPU): [`LandmarkSoftmaxOps`] (see
//! [`landmark_values`] and [`landmark_attention`], both over [`online_softmax`]), [`PinvOps`]
//! (see [`pinv`] and its backward [`pinv_backward`], both over [`blocks`], and
//! [`landmark_weights`] for `A`, the pseudo-inverse and `W` in one launch, with its backward
//! [`landmark_weights_backward`]) and
//! [`SegmentMeanOps`] (see [`landmark_means`]) for burn-cubecl's backend, and for `Autodiff`
//! over it (`autodiff.rs`), whose forward is these kernels and whose backward is kernels too:
//! [`softmax_backward`] for the softmax products, [`pinv_backward`] for the pseudo-inverse,
//! [`landmark_weights_backward`] for `W`; the landmarks' backward spreads each gradient over
//! its segment, as tensor ops for equal segments ([`SegmentMeanOps::segment_mean_backward`],
//! which fusion folds into what reads it) and as one kernel for ranked ones
//! ([`SegmentMeanOps::ranked_segment_mean_backward`], in [`landmark_means`]).

#[cfg(feature = "autodiff")]
mod autodiff;
mod blocks;
mod cube_sum;
mod depthwise_conv;
mod landmark_attention;
mod landmark_means;
mod landmark_values;
mod landmark_weights;
mod landmark_weights_backward;
mod layer_norm;
mod online_softmax;
mod pinv;
mod pinv_backward;
mod ranked_segments;
mod softmax_backward;
mod tiles;

use burn::backend::tensor::FloatTensor;
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::extension::{
    DepthwiseConvOps, LandmarkSoftmaxOps, LayerNormOps, PinvOps, SegmentLayoutOps, SegmentMeanOps,
};
use super::flags::Flags;
use super::segment_rows::SegmentRows;
use softmax_backward::{FlaggedKeys, ProductBackward};

impl LandmarkSoftmaxOps for CubeBackend {
    fn landmark_values(
        landmark_queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        padding: Flags<Self>,
        missing: Flags<Self>,
        masked_score: f32,
        zero_padded: bool,
    ) -> FloatTensor<Self> {
        landmark_values::launch(
            landmark_queries,
            keys,
            values,
            padding,
            missing,
            masked_score,
            zero_padded,
            false,
        )
        .0
    }

    fn landmark_attention(
        queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        missing: Flags<Self>,
        query_padding: Flags<Self>,
    ) -> FloatTensor<Self> {
        landmark_attention::launch(
            queries,
            landmark_keys,
            weights,
            missing,
            query_padding,
            false,
        )
        .0
    }

    fn landmark_values_with_statistics(
        landmark_queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        padding: Flags<Self>,
        missing: Flags<Self>,
        masked_score: f32,
        zero_padded: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (output, softmax_statistics) = landmark_values::launch(
            landmark_queries,
            keys,
            values,
            padding,
            missing,
            masked_score,
            zero_padded,
            true,
        );
        (
            output,
            softmax_statistics.expect("asked for the statistics"),
        )
    }

    fn landmark_attention_with_statistics(
        queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        missing: Flags<Self>,
        query_padding: Flags<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (output, softmax_statistics) = landmark_attention::launch(
            queries,
            landmark_keys,
            weights,
            missing,
            query_padding,
            true,
        );
        (
            output,
            softmax_statistics.expect("asked for the statistics"),
        )
    }

    fn landmark_values_backward(
        landmark_queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        padding: Flags<Self>,
        missing: Flags<Self>,
        masked_score: f32,
        zero_padded: bool,
        output: FloatTensor<Self>,
        softmax_statistics: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // A padded key taken as zero, value included, has no gradient and adds nothing to any
        // other: for the backward it is a skipped key.
        let flagged_keys = match zero_padded {
            true => FlaggedKeys::Skipped,
            false => FlaggedKeys::Scored(masked_score),
        };
        softmax_backward::launch(ProductBackward {
            queries: landmark_queries,
            keys,
            values,
            output,
            softmax_statistics,
            grad,
            key_flags: padding,
            flagged_keys,
            row_flags: missing,
            zeroed_rows: Flags::Absent,
        })
    }

    fn landmark_attention_backward(
        queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        missing: Flags<Self>,
        query_padding: Flags<Self>,
        output: FloatTensor<Self>,
        softmax_statistics: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        softmax_backward::launch(ProductBackward {
            queries,
            keys: landmark_keys,
            values: weights,
            output,
            softmax_statistics,
            grad,
            key_flags: missing,
            flagged_keys: FlaggedKeys::Skipped,
            row_flags: Flags::Absent,
            zeroed_rows: query_padding,
        })
    }
}

impl PinvOps for CubeBackend {
    fn pinv(
        a: FloatTensor<Self>,
        coefficient: FloatTensor<Self>,
        iterations: usize,
    ) -> FloatTensor<Self> {
        pinv::launch(a, coefficient, iterations)
    }

    fn pinv_backward(
        a: FloatTensor<Self>,
        coefficient: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        iterations: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        pinv_backward::launch(a, coefficient, grad, iterations)
    }

    fn landmark_weights(
        landmark_queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        landmark_values: FloatTensor<Self>,
        missing_queries: Flags<Self>,
        missing_keys: Flags<Self>,
        values: FloatTensor<Self>,
        key_rows: SegmentRows<Self>,
        iterations: usize,
    ) -> FloatTensor<Self> {
        landmark_weights::launch(
            landmark_queries,
            landmark_keys,
            landmark_values,
            missing_queries,
            missing_keys,
            values,
            key_rows,
            iterations,
        )
    }

    fn landmark_weights_backward(
        landmark_queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        landmark_values: FloatTensor<Self>,
        missing_queries: Flags<Self>,
        missing_keys: Flags<Self>,
        key_rows: SegmentRows<Self>,
        iterations: usize,
        grad: FloatTensor<Self>,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        landmark_weights_backward::launch(
            landmark_queries,
            landmark_keys,
            landmark_values,
            missing_queries,
            missing_keys,
            key_rows,
            iterations,
            grad,
        )
    }
}

impl SegmentMeanOps for CubeBackend {
    fn segment_mean(x: CubeTensor, rows: SegmentRows<Self>, m: usize) -> CubeTensor {
        landmark_means::launch(x, None, rows, m, 1.0).0
    }

    fn ranked_segment_mean_backward(
        grad: CubeTensor,
        rank: CubeTensor,
        lengths: CubeTensor,
        factor: f32,
    ) -> CubeTensor {
        landmark_means::launch_backward(grad, rank, lengths, factor)
    }

    fn landmark_means(
        queries: CubeTensor,
        keys: CubeTensor,
        query_rows: SegmentRows<Self>,
        key_rows: SegmentRows<Self>,
        m: usize,
        scale: f32,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let (landmark_queries, scaled) =
            landmark_means::launch(queries, Some((keys, key_rows)), query_rows, m, scale);
        let (scaled_queries, scaled_keys) = scaled.expect("with keys, all three landmarks");
        (landmark_queries, scaled_queries, scaled_keys)
    }
}

impl DepthwiseConvOps for CubeBackend {
    fn depthwise_conv(values: CubeTensor, taps: CubeTensor, padding: Flags<Self>) -> CubeTensor {
        depthwise_conv::launch(values, taps, padding)
    }

    fn depthwise_conv_backward(
        values: CubeTensor,
        taps: CubeTensor,
        padding: Flags<Self>,
        grad: CubeTensor,
    ) -> (CubeTensor, CubeTensor) {
        depthwise_conv::launch_backward(values, taps, padding, grad)
    }
}

impl LayerNormOps for CubeBackend {
    fn layer_norm(x: CubeTensor, gamma: CubeTensor, beta: CubeTensor, epsilon: f64) -> CubeTensor {
        layer_norm::launch(x, gamma, beta, epsilon, false).0
    }

    fn layer_norm_with_statistics(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        epsilon: f64,
    ) -> (CubeTensor, CubeTensor) {
        let (output, statistics) = layer_norm::launch(x, gamma, beta, epsilon, true);
        (output, statistics.expect("asked for the statistics"))
    }

    fn layer_norm_backward(
        x: CubeTensor,
        gamma: CubeTensor,
        statistics: CubeTensor,
        grad: CubeTensor,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        layer_norm::launch_backward(x, gamma, statistics, grad)
    }
}

impl SegmentLayoutOps for CubeBackend {
    fn ranked_segments(
        mask: CubeTensor,
        int_like: CubeTensor,
        float_like: CubeTensor,
        m: usize,
    ) -> ranked_segments::SegmentLayout {
        ranked_segments::launch(mask, &int_like, &float_like, m)
    }
}

/// The flags' tensor, contiguous, or where they are absent `stand_in` (any tensor of the
/// kernel's float type), which a kernel compiled without that mask never reads: an absent mask
/// costs no allocation and no fill.
fn flags_or(flags: Flags<CubeBackend>, stand_in: &CubeTensor) -> CubeTensor {
    match flags {
        Flags::Present(flags) => into_contiguous(flags),
        Flags::Absent => stand_in.clone(),
    }
}

/// The shape of a softmax product's statistics, `[batch, heads, rows, 2]` (each row's largest
/// score and `ln Σ exp(s − max)`, as `LandmarkSoftmaxOps::landmark_values_with_statistics` has
/// them); without `with_statistics` one entry, a placeholder that the kernel compiled without
/// statistics never writes.
fn statistics_shape([batch, heads, rows]: [usize; 3], with_statistics: bool) -> Shape {
    match with_statistics {
        true => Shape::new([batch, heads, rows, 2]),
        false => Shape::new([1]),
    }
}

/// Whether `flags[index]` is set; `false` without reading when the kernel was compiled for an
/// absent mask (`present` false).
#[cube]
fn flagged<F: Float>(flags: &Tensor<F>, index: usize, #[comptime] present: bool) -> bool {
    let mut set = false;
    if comptime!(present) {
        set = flags[index] != F::new(0.0);
    }
    set
}
