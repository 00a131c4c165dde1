//! The fused stages as Burn backend extensions, one trait per family: [`LandmarkSoftmaxOps`] (the
//! two softmax products, on CubeCL devices and on flex), [`PinvOps`] (the pseudo-inverse, on
//! CubeCL devices and on flex, and `W = A⁺ (B V)` in one kernel on CubeCL devices),
//! [`SegmentMeanOps`] (the landmarks, of equal or ranked segments: fused on flex, one kernel
//! with their scaling on CubeCL devices), on CubeCL devices `SegmentLayoutOps` (the segments of a
//! padding mask), [`LayerNormOps`] and [`DepthwiseConvOps`] (the skip connection's convolution;
//! both fused on flex, kernels on CubeCL devices), and on flex `ElementwiseOps` (dropout and
//! GELU). Burn routes a call by
//! the device of its tensors: to the CubeCL backend (through its fusion backend, which runs a
//! custom operation at the next flush) or to flex. Below them, the tensor-level calls of
//! [`super`]'s public functions.

// The macro's expansion names `burn::backend::...` paths.
#[cfg(feature = "cube-kernels")]
use burn::backend::tensor::BoolTensor;
use burn::backend::{
    Backend, Dispatch, DispatchDevice, backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{Bool, Device, FloatDType, Tensor};
#[cfg(feature = "cube-kernels")]
use burn::tensor::{DType, Int, Shape};

use super::RankedSegments;
use super::flags::Flags;
use super::mask_flags::MaskFlags;
use super::segment_rows::SegmentRows;
use crate::attention::PinvInit;
use crate::attention::landmarks::SegmentRanks;
use crate::attention::pinv::initial_coefficient;

/// `device` without its autodiff wrapper.
fn inner_device(device: &Device) -> DispatchDevice {
    device.as_dispatch().clone().inner()
}

/// Whether `x` lives on a CubeCL device (tracked or not) and this build has the CubeCL kernels.
pub fn on_cube_device<const D: usize>(x: &Tensor<D>) -> bool {
    is_cube_device(&x.device())
}

/// Whether `device` is a CubeCL device (with autodiff or not) that binds the kernels' storage
/// buffers ([`super::KERNEL_STORAGE_BUFFERS`]), and this build has the CubeCL kernels. (The
/// device variants exist only with their backend's feature, hence `#[cfg]` rather than `cfg!`.)
pub fn is_cube_device(device: &Device) -> bool {
    #[cfg(feature = "cube-kernels")]
    return match inner_device(device) {
        DispatchDevice::Cube(cube) => {
            binds_enough(cube.client().properties().hardware.max_bindings)
        }
        // The only variant in a build with no other backend.
        #[allow(unreachable_patterns)]
        _ => false,
    };
    #[cfg(not(feature = "cube-kernels"))]
    {
        let _ = device;
        false
    }
}

/// Whether a device binding `max_bindings` storage buffers per kernel takes every CubeCL kernel.
#[cfg(feature = "cube-kernels")]
fn binds_enough(max_bindings: u32) -> bool {
    max_bindings >= super::KERNEL_STORAGE_BUFFERS
}

/// Whether `x` lives on flex (tracked or not) and this build has the fused flex stages.
pub fn on_flex_device<const D: usize>(x: &Tensor<D>) -> bool {
    #[cfg(feature = "flex-kernels")]
    return matches!(inner_device(&x.device()), DispatchDevice::Flex(_));
    #[cfg(not(feature = "flex-kernels"))]
    {
        let _ = x;
        false
    }
}

/// See [`super::fused_landmark_values`].
pub fn landmark_values(
    landmark_queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    padding: &MaskFlags,
    missing: &MaskFlags,
    masked_score: f32,
    zero_padded: bool,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as LandmarkSoftmaxOps>::landmark_values(
        landmark_queries.clone().into_dispatch(),
        keys.clone().into_dispatch(),
        values.clone().into_dispatch(),
        flags(padding),
        flags(missing),
        masked_score,
        zero_padded,
    ))
}

/// See [`super::fused_pinv`].
pub fn pinv(a: &Tensor<4>, iterations: usize, init: PinvInit) -> Tensor<4> {
    let [batch, heads, _, _] = a.dims();
    let coefficient = initial_coefficient(a, init).reshape([batch * heads]);
    Tensor::from_dispatch(<Dispatch as PinvOps>::pinv(
        a.clone().into_dispatch(),
        coefficient.into_dispatch(),
        iterations,
    ))
}

/// See [`super::fused_landmark_weights`]; `short`, the values and the keys' ranks, gives each
/// sequence of at most `m` valid keys its values' segment means.
pub fn landmark_weights(
    landmark_queries: &Tensor<4>,
    landmark_keys: &Tensor<4>,
    landmark_values: &Tensor<4>,
    missing_queries: &MaskFlags,
    missing_keys: &MaskFlags,
    short: Option<(&Tensor<4>, &SegmentRanks)>,
    iterations: usize,
) -> Tensor<4> {
    let (values, key_rows) = match short {
        Some((values, ranks)) => (values.clone(), segment_rows(Some(ranks))),
        // Not read: equal rows mark no sequence short.
        None => (landmark_values.clone(), SegmentRows::Equal),
    };
    Tensor::from_dispatch(<Dispatch as PinvOps>::landmark_weights(
        landmark_queries.clone().into_dispatch(),
        landmark_keys.clone().into_dispatch(),
        landmark_values.clone().into_dispatch(),
        flags(missing_queries),
        flags(missing_keys),
        values.into_dispatch(),
        key_rows,
        iterations,
    ))
}

/// See [`super::fused_landmark_attention`].
pub fn landmark_attention(
    queries: &Tensor<4>,
    landmark_keys: &Tensor<4>,
    weights: &Tensor<4>,
    missing: &MaskFlags,
    query_padding: &MaskFlags,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as LandmarkSoftmaxOps>::landmark_attention(
        queries.clone().into_dispatch(),
        landmark_keys.clone().into_dispatch(),
        weights.clone().into_dispatch(),
        flags(missing),
        flags(query_padding),
    ))
}

/// See [`super::fused_depthwise_conv`].
pub fn depthwise_conv(values: &Tensor<4>, taps: &Tensor<4>, padding: &MaskFlags) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as DepthwiseConvOps>::depthwise_conv(
        values.clone().into_dispatch(),
        taps.clone().into_dispatch(),
        flags(padding),
    ))
}

/// See [`super::fused_segment_mean`].
pub fn segment_mean(x: &Tensor<4>, ranks: Option<&SegmentRanks>, m: usize) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as SegmentMeanOps>::segment_mean(
        x.clone().into_dispatch(),
        segment_rows(ranks),
        m,
    ))
}

/// See [`super::fused_landmark_means`].
pub fn landmark_means(
    q: &Tensor<4>,
    k: &Tensor<4>,
    query_ranks: Option<&SegmentRanks>,
    key_ranks: Option<&SegmentRanks>,
    m: usize,
    scale: f32,
) -> [Tensor<4>; 3] {
    let (landmark_queries, scaled_queries, scaled_keys) =
        <Dispatch as SegmentMeanOps>::landmark_means(
            q.clone().into_dispatch(),
            k.clone().into_dispatch(),
            segment_rows(query_ranks),
            segment_rows(key_ranks),
            m,
            scale,
        );
    [landmark_queries, scaled_queries, scaled_keys].map(Tensor::from_dispatch)
}

/// The segments' rows as the fused stages take them: equal runs, or the ranks.
fn segment_rows(ranks: Option<&SegmentRanks>) -> SegmentRows<Dispatch> {
    match ranks {
        None => SegmentRows::Equal,
        Some(ranks) => SegmentRows::Ranked {
            order: ranks.order.clone().into_dispatch(),
            rank: ranks.rank.clone().into_dispatch(),
            lengths: ranks.lengths.clone().into_dispatch(),
        },
    }
}

/// See [`super::dropout`]: `x` with each element zeroed with probability `prob` and the others
/// scaled by `1 / (1 − prob)`.
#[cfg(feature = "flex-kernels")]
pub fn dropout<const D: usize>(x: Tensor<D>, prob: f64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as ElementwiseOps>::dropout(
        x.into_dispatch(),
        prob,
    ))
}

/// See [`super::gelu`].
#[cfg(feature = "flex-kernels")]
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as ElementwiseOps>::gelu(x.into_dispatch()))
}

/// See [`super::layer_norm`].
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as LayerNormOps>::layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

/// Only flex has the fused elementwise steps: [`super::dropout`] asks for flex first.
#[cfg(not(feature = "flex-kernels"))]
pub fn dropout<const D: usize>(_x: Tensor<D>, _prob: f64) -> Tensor<D> {
    unreachable!("the fused dropout runs on flex only")
}

/// Only flex has the fused elementwise steps: [`super::gelu`] asks for flex first.
#[cfg(not(feature = "flex-kernels"))]
pub fn gelu<const D: usize>(_x: Tensor<D>) -> Tensor<D> {
    unreachable!("the fused GELU runs on flex only")
}

/// A mask as the kernels read it: absent, or `1.0` where `true` and `0.0` elsewhere in the float
/// type of `like` (the kernels read every input as one type).
fn flags(mask: &MaskFlags) -> Flags<Dispatch> {
    match mask.flags() {
        Some(flags) => Flags::Present(flags.clone().into_dispatch()),
        None => Flags::Absent,
    }
}

/// The two softmax products; masks arrive as `1.0` at `true`. The default bodies are the
/// tensor-op path ([`super::reference`]); CubeCL devices and flex have fused forwards, flex
/// under autodiff a fused backward (`kernels/flex/autodiff.rs`) and CubeCL devices one that
/// recomputes each softmax from the statistics of the `*_with_statistics` forwards
/// (`kernels/cube/autodiff.rs`).
///
/// Padding as the leak-free policy has it, without a pass that zeroes it first: with
/// `zero_padded`, `B · V` takes padded keys and values as zeros, and `F · W` takes the query rows
/// that `query_padding` flags as zeros; either way NaN there cannot leak, and those rows get a
/// zero gradient. The CubeCL kernels never use them; flex overwrites what they give its scores and
/// zeroes them in its copies of the blocks that hold some; the tensor-op body zeroes them.
#[backend_extension(
    Cube: cfg(feature = "cube-kernels"),
    Fusion: cfg(feature = "cube-kernels"),
    Flex: cfg(feature = "flex-kernels"),
    Autodiff: cfg(feature = "autodiff")
)]
pub trait LandmarkSoftmaxOps: Backend {
    /// See [`landmark_values`].
    #[fusion(dtype = landmark_queries, shape = values_shape(landmark_queries, values))]
    fn landmark_values(
        landmark_queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        #[extension_type] padding: Flags<Self>,
        #[extension_type] missing: Flags<Self>,
        masked_score: f32,
        zero_padded: bool,
    ) -> FloatTensor<Self> {
        super::reference::landmark_values::<Self>(
            landmark_queries,
            keys,
            values,
            padding,
            missing,
            masked_score,
            zero_padded,
        )
    }

    /// See [`landmark_attention`].
    #[fusion(dtype = queries, shape = context_shape(queries, weights))]
    fn landmark_attention(
        queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        #[extension_type] missing: Flags<Self>,
        #[extension_type] query_padding: Flags<Self>,
    ) -> FloatTensor<Self> {
        super::reference::landmark_attention::<Self>(
            queries,
            landmark_keys,
            weights,
            missing,
            query_padding,
        )
    }

    /// [`landmark_values`] and each row's softmax statistics (`[batch, heads, m, 2]`, f32
    /// whatever the input type: the row's largest score `M` and `ln Σ exp(s − M)`), for a
    /// backward that recomputes the softmax ([`LandmarkSoftmaxOps::landmark_values_backward`]).
    ///
    /// Two numbers, not the log-sum-exp `M + ln Σ`: a row whose keys are all padding scores them
    /// all at the masked score (`-1e9` in HF's layout), where an f32 has no room left for
    /// `ln Σ` (its spacing there is 64), and a backward from the sum would weigh each key 1
    /// where the forward weighed it `1/n`.
    // Only the CubeCL devices' autodiff implementation calls it.
    #[cfg_attr(
        not(all(feature = "autodiff", feature = "cube-kernels")),
        allow(dead_code)
    )]
    #[fusion(meta = |landmark_queries, _keys, values, _padding, _missing, _masked_score, _zero_padded| with_statistics(landmark_queries, values_shape(&landmark_queries.shape, &values.shape)))]
    fn landmark_values_with_statistics(
        landmark_queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        #[extension_type] padding: Flags<Self>,
        #[extension_type] missing: Flags<Self>,
        masked_score: f32,
        zero_padded: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        super::reference::landmark_values_with_statistics::<Self>(
            landmark_queries,
            keys,
            values,
            padding,
            missing,
            masked_score,
            zero_padded,
        )
    }

    /// [`landmark_attention`] and each row's softmax statistics (`[batch, heads, n, 2]`, f32
    /// whatever the input type; as [`LandmarkSoftmaxOps::landmark_values_with_statistics`]
    /// has them), for a backward that recomputes the softmax
    /// ([`LandmarkSoftmaxOps::landmark_attention_backward`]).
    // Only the CubeCL devices' autodiff implementation calls it.
    #[cfg_attr(
        not(all(feature = "autodiff", feature = "cube-kernels")),
        allow(dead_code)
    )]
    #[fusion(meta = |queries, _landmark_keys, weights, _missing, _query_padding| with_statistics(queries, context_shape(&queries.shape, &weights.shape)))]
    fn landmark_attention_with_statistics(
        queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        #[extension_type] missing: Flags<Self>,
        #[extension_type] query_padding: Flags<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        super::reference::landmark_attention_with_statistics::<Self>(
            queries,
            landmark_keys,
            weights,
            missing,
            query_padding,
        )
    }

    /// The gradients of [`LandmarkSoftmaxOps::landmark_values`]' landmark queries, keys and
    /// values for the gradient `grad` of its output, from what
    /// [`LandmarkSoftmaxOps::landmark_values_with_statistics`] gave (`output`, and
    /// `softmax_statistics`, `[.., m, 2]` in f32). The default body is tensor ops
    /// ([`super::backward::landmark_values_backward`]); CubeCL devices run two kernels.
    #[cfg_attr(
        not(all(feature = "autodiff", feature = "cube-kernels")),
        allow(dead_code)
    )]
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |landmark_queries, keys, values, _padding, _missing, _masked_score, _zero_padded, _output, _softmax_statistics, _grad| (landmark_queries.clone(), keys.clone(), values.clone()))]
    fn landmark_values_backward(
        landmark_queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        #[extension_type] padding: Flags<Self>,
        #[extension_type] missing: Flags<Self>,
        masked_score: f32,
        zero_padded: bool,
        output: FloatTensor<Self>,
        softmax_statistics: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        super::backward::landmark_values_backward::<Self>(
            landmark_queries,
            keys,
            values,
            padding,
            missing,
            masked_score,
            zero_padded,
            output,
            softmax_statistics,
            grad,
        )
    }

    /// The gradients of [`LandmarkSoftmaxOps::landmark_attention`]'s queries, landmark keys and
    /// weights for the gradient `grad` of its output, from what
    /// [`LandmarkSoftmaxOps::landmark_attention_with_statistics`] gave (`output`, and
    /// `softmax_statistics`, `[.., n, 2]` in f32). The default body is tensor ops
    /// ([`super::backward::landmark_attention_backward`]); CubeCL devices run two kernels.
    #[cfg_attr(
        not(all(feature = "autodiff", feature = "cube-kernels")),
        allow(dead_code)
    )]
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |queries, landmark_keys, weights, _missing, _query_padding, _output, _softmax_statistics, _grad| (queries.clone(), landmark_keys.clone(), weights.clone()))]
    fn landmark_attention_backward(
        queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        #[extension_type] missing: Flags<Self>,
        #[extension_type] query_padding: Flags<Self>,
        output: FloatTensor<Self>,
        softmax_statistics: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        super::backward::landmark_attention_backward::<Self>(
            queries,
            landmark_keys,
            weights,
            missing,
            query_padding,
            output,
            softmax_statistics,
            grad,
        )
    }
}

/// The skip connection's depthwise convolution along the sequence: values `[batch, heads, n, d]`,
/// taps `[heads, 1, k, 1]` (`k` odd, zero padding), the value rows that `padding` (`[batch, n]`)
/// flags taken as zeros. The default bodies are a `mask_fill` and Burn's grouped convolution and
/// its backward ops ([`super::reference::depthwise_conv`],
/// [`super::backward::depthwise_conv_backward`]); flex fuses it forward and, under autodiff,
/// backward (`kernels/flex/depthwise.rs`); CubeCL devices run one kernel forward and two
/// and a sum backward (`kernels/cube/depthwise_conv.rs`), reading the padding flags in place of
/// the `mask_fill`.
#[backend_extension(
    Cube: cfg(feature = "cube-kernels"),
    Fusion: cfg(feature = "cube-kernels"),
    Flex: cfg(feature = "flex-kernels"),
    Autodiff: cfg(feature = "autodiff")
)]
pub trait DepthwiseConvOps: Backend {
    /// See [`depthwise_conv`].
    #[fusion(dtype = values, shape = values)]
    fn depthwise_conv(
        values: FloatTensor<Self>,
        taps: FloatTensor<Self>,
        #[extension_type] padding: Flags<Self>,
    ) -> FloatTensor<Self> {
        super::reference::depthwise_conv::<Self>(values, taps, padding)
    }

    /// The gradients of the values and the taps for the gradient `grad` of
    /// [`DepthwiseConvOps::depthwise_conv`]'s output.
    // Only the CubeCL devices' autodiff implementation calls it (flex keeps its own).
    #[cfg_attr(
        not(all(feature = "autodiff", feature = "cube-kernels")),
        allow(dead_code)
    )]
    #[fusion(meta = |values, taps, _padding, _grad| (values.clone(), taps.clone()))]
    fn depthwise_conv_backward(
        values: FloatTensor<Self>,
        taps: FloatTensor<Self>,
        #[extension_type] padding: Flags<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        super::backward::depthwise_conv_backward::<Self>(values, taps, padding, grad)
    }
}

/// Landmarks as segment means along the sequence: `m` equal runs (no mask, `m` dividing the
/// length) or runs over each sequence's valid rows in order ([`SegmentRows`]). The default
/// bodies are tensor ops ([`super::reference::segment_mean`],
/// [`super::reference::ranked_segment_mean`]); flex fuses [`SegmentMeanOps::segment_mean`]
/// forward and backward, CubeCL devices run it and [`SegmentMeanOps::landmark_means`] as one
/// kernel each, under autodiff too, with [`SegmentMeanOps::segment_mean_backward`] and
/// [`SegmentMeanOps::ranked_segment_mean_backward`] as their backward.
#[backend_extension(
    Cube: cfg(feature = "cube-kernels"),
    Fusion: cfg(feature = "cube-kernels"),
    Flex: cfg(feature = "flex-kernels"),
    Autodiff: cfg(feature = "autodiff")
)]
pub trait SegmentMeanOps: Backend {
    /// See [`segment_mean`]: x `[batch, heads, n, d]`, output `[batch, heads, m, d]`.
    #[fusion(meta = |x, _rows, m| segment_means_spec(x, *m))]
    fn segment_mean(
        x: FloatTensor<Self>,
        #[extension_type] rows: SegmentRows<Self>,
        m: usize,
    ) -> FloatTensor<Self> {
        match rows {
            SegmentRows::Equal => super::reference::segment_mean::<Self>(x, m),
            SegmentRows::Ranked { rank, lengths, .. } => {
                super::reference::ranked_segment_mean::<Self>(x, rank, lengths, m)
            }
        }
    }

    /// The gradient of a mean of equal segments' input (`[batch, heads, n, d]`) for the
    /// gradient `grad` (`[batch, heads, m, d]`) of `factor · segment_mean(x, m)`: each row gets
    /// its segment's gradient times `factor / (n / m)`. The default body is tensor ops
    /// ([`super::reference::segment_spread`]), which fusion folds into what reads it.
    // Only the CubeCL devices' autodiff implementation calls it (flex fuses its own).
    #[cfg_attr(
        not(all(feature = "autodiff", feature = "cube-kernels")),
        allow(dead_code)
    )]
    #[fusion(default)]
    fn segment_mean_backward(grad: FloatTensor<Self>, n: usize, factor: f32) -> FloatTensor<Self> {
        super::reference::segment_spread::<Self>(grad, n, factor)
    }

    /// [`SegmentMeanOps::segment_mean_backward`] for ranked segments (`rank` and `lengths` as in
    /// [`SegmentRows::Ranked`]): each valid row gets its segment's gradient times
    /// `factor / count`, padding zero. The default body is tensor ops
    /// ([`super::reference::ranked_segment_spread`]); CubeCL devices run one kernel.
    #[cfg_attr(
        not(all(feature = "autodiff", feature = "cube-kernels")),
        allow(dead_code)
    )]
    #[fusion(meta = |grad, rank, _lengths, _factor| spread_spec(grad, rank))]
    fn ranked_segment_mean_backward(
        grad: FloatTensor<Self>,
        rank: IntTensor<Self>,
        lengths: IntTensor<Self>,
        factor: f32,
    ) -> FloatTensor<Self> {
        super::reference::ranked_segment_spread::<Self>(grad, rank, lengths, factor)
    }

    /// See [`landmark_means`]: `(Q̃, Q̃ · scale, K̃ · scale)`, each `[batch, heads, m, d]`.
    #[fusion(meta = |queries, _keys, _query_rows, _key_rows, m, _scale| {
        let landmarks = segment_means_spec(queries, *m);
        (landmarks.clone(), landmarks.clone(), landmarks)
    })]
    fn landmark_means(
        queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        #[extension_type] query_rows: SegmentRows<Self>,
        #[extension_type] key_rows: SegmentRows<Self>,
        m: usize,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let landmark_queries = Self::segment_mean(queries, query_rows, m);
        let scaled_keys =
            Self::float_mul_scalar(Self::segment_mean(keys, key_rows, m), scale.into());
        let scaled_queries = Self::float_mul_scalar(landmark_queries.clone(), scale.into());
        (landmark_queries, scaled_queries, scaled_keys)
    }
}

/// The ranked segments of a padding mask (`[batch, n]`, `true` = padding) into `m` segments, as
/// [`crate::attention::landmarks::Segments`] cuts them: `(order, rank, lengths, missing, short)`,
/// the integers in `int_like`'s type (a tensor that is not read), and the padding and the missing
/// segments as flags (`1.0` at `true`) in `float_like`'s type (not read either), as the
/// attention's kernels take them. CubeCL devices run one kernel;
/// there is no default body: [`super::fused_ranked_segments`] calls it on CubeCL devices only,
/// and elsewhere the segments are built as tensor ops.
#[cfg(feature = "cube-kernels")]
#[backend_extension(
    Cube: cfg(feature = "cube-kernels"),
    Fusion: cfg(feature = "cube-kernels"),
    Autodiff: cfg(feature = "autodiff")
)]
pub trait SegmentLayoutOps: Backend {
    /// See [`ranked_segments`].
    #[fusion(meta = |mask, int_like, float_like, m| ranked_segments_spec(mask, int_like, float_like, *m))]
    // One tuple of the seven tensors, as the fusion metadata mirrors it.
    #[allow(clippy::type_complexity)]
    fn ranked_segments(
        mask: BoolTensor<Self>,
        int_like: IntTensor<Self>,
        float_like: FloatTensor<Self>,
        m: usize,
    ) -> (
        IntTensor<Self>,
        IntTensor<Self>,
        IntTensor<Self>,
        BoolTensor<Self>,
        BoolTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}

/// What [`SegmentLayoutOps::ranked_segments`] returns for a `[batch, n]` mask: `order` and
/// `rank` `[batch, n]`, `lengths` `[batch]` in `int_like`'s type, `missing` `[batch, m]` and
/// `short` `[batch]` in the mask's, the padding's and the missing segments' flags (`[batch, n]`,
/// `[batch, m]`) in `float_like`'s.
#[cfg(feature = "cube-kernels")]
#[allow(clippy::type_complexity)]
fn ranked_segments_spec(
    mask: &burn::backend::fusion::custom::TensorSpec,
    int_like: &burn::backend::fusion::custom::TensorSpec,
    float_like: &burn::backend::fusion::custom::TensorSpec,
    m: usize,
) -> (
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
) {
    use burn::backend::fusion::custom::TensorSpec;
    let [batch, n] = mask.shape.dims::<2>();
    (
        TensorSpec::new(Shape::new([batch, n]), int_like.dtype),
        TensorSpec::new(Shape::new([batch, n]), int_like.dtype),
        TensorSpec::new(Shape::new([batch]), int_like.dtype),
        TensorSpec::new(Shape::new([batch, m]), mask.dtype),
        TensorSpec::new(Shape::new([batch]), mask.dtype),
        TensorSpec::new(Shape::new([batch, n]), float_like.dtype),
        TensorSpec::new(Shape::new([batch, m]), float_like.dtype),
    )
}

/// See [`super::fused_ranked_segments`]; the flags in `dtype`.
#[cfg(feature = "cube-kernels")]
pub fn ranked_segments(mask: &Tensor<2, Bool>, m: usize, dtype: FloatDType) -> RankedSegments {
    let device = mask.device();
    let int_like = Tensor::<1, Int>::empty([1], &device);
    let float_like = Tensor::<1>::empty([1], (&device, DType::from(dtype)));
    let (order, rank, lengths, missing, short, padding_flags, missing_flags) =
        <Dispatch as SegmentLayoutOps>::ranked_segments(
            mask.clone().into_dispatch(),
            int_like.into_dispatch(),
            float_like.into_dispatch(),
            m,
        );
    RankedSegments {
        ranks: SegmentRanks {
            order: Tensor::from_dispatch(order),
            rank: Tensor::from_dispatch(rank),
            lengths: Tensor::from_dispatch(lengths),
        },
        missing: Tensor::from_dispatch(missing),
        short: Tensor::from_dispatch(short),
        padding_flags: Tensor::from_dispatch(padding_flags),
        missing_flags: Tensor::from_dispatch(missing_flags),
    }
}

/// Only CubeCL devices have the fused layout: [`super::fused_ranked_segments`] asks for one first.
#[cfg(not(feature = "cube-kernels"))]
pub fn ranked_segments(_mask: &Tensor<2, Bool>, _m: usize, _dtype: FloatDType) -> RankedSegments {
    unreachable!("the fused ranked segments run on CubeCL devices only")
}

/// The `[batch, heads, m, d]` means of `x`'s `[batch, heads, n, d]`, in `x`'s type.
#[cfg(feature = "cube-kernels")]
fn segment_means_spec(
    x: &burn::backend::fusion::custom::TensorSpec,
    m: usize,
) -> burn::backend::fusion::custom::TensorSpec {
    let [batch, heads, _, d] = x.shape.dims::<4>();
    burn::backend::fusion::custom::TensorSpec::new(Shape::new([batch, heads, m, d]), x.dtype)
}

/// The `[batch, heads, n, d]` gradient of a segment mean's input from its output's gradient
/// (`[batch, heads, m, d]`) and the `[batch or 1, n]` ranks.
#[cfg(feature = "cube-kernels")]
#[cfg_attr(
    not(all(feature = "autodiff", feature = "cube-kernels")),
    allow(dead_code)
)]
fn spread_spec(
    grad: &burn::backend::fusion::custom::TensorSpec,
    rank: &burn::backend::fusion::custom::TensorSpec,
) -> burn::backend::fusion::custom::TensorSpec {
    let [batch, heads, _, d] = grad.shape.dims::<4>();
    let n = rank.shape[1];
    burn::backend::fusion::custom::TensorSpec::new(Shape::new([batch, heads, n, d]), grad.dtype)
}

/// Elementwise steps of a training step that flex runs slowly: dropout (whose Bernoulli mask
/// flex draws one element at a time on one core) and exact GELU (scalar `erf`). Any shape.
#[cfg(feature = "flex-kernels")]
#[backend_extension(
    Flex: cfg(feature = "flex-kernels"),
    Autodiff: cfg(feature = "autodiff")
)]
pub trait ElementwiseOps: Backend {
    /// See [`dropout`].
    fn dropout(x: FloatTensor<Self>, prob: f64) -> FloatTensor<Self>;

    /// See [`gelu`].
    fn gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// LayerNorm over the last dimension (`gamma`, `beta`: `[d]`), which flex runs as a chain of
/// serial tensor ops and CubeCL devices as about three launches forward and twenty-five
/// backward. The default bodies are tensor ops ([`super::reference::layer_norm_with_statistics`],
/// [`super::backward::layer_norm_backward`]); flex fuses the forward (and under autodiff its
/// backward, `kernels/flex/autodiff.rs`), CubeCL devices run one kernel forward and, under
/// autodiff, one kernel and two sums backward (`kernels/cube/layer_norm.rs`).
#[backend_extension(
    Cube: cfg(feature = "cube-kernels"),
    Fusion: cfg(feature = "cube-kernels"),
    Flex: cfg(feature = "flex-kernels"),
    Autodiff: cfg(feature = "autodiff")
)]
pub trait LayerNormOps: Backend {
    /// See [`layer_norm`].
    #[fusion(dtype = x, shape = x)]
    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        super::reference::layer_norm_with_statistics::<Self>(x, gamma, beta, epsilon).0
    }

    /// [`LayerNormOps::layer_norm`] and each row's `(mean, 1/√(var + ε))`, `[rows, 2]` in f32,
    /// from which [`LayerNormOps::layer_norm_backward`] recomputes the normalised rows.
    // Only the CubeCL devices' autodiff implementation calls it (flex keeps its own).
    #[cfg_attr(
        not(all(feature = "autodiff", feature = "cube-kernels")),
        allow(dead_code)
    )]
    #[fusion(meta = |x, _gamma, _beta, _epsilon| layer_norm_statistics_spec(x))]
    fn layer_norm_with_statistics(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        super::reference::layer_norm_with_statistics::<Self>(x, gamma, beta, epsilon)
    }

    /// The gradients of `x`, `gamma` and `beta` for the gradient `grad` of
    /// [`LayerNormOps::layer_norm`]'s output, from its input, `gamma` and the statistics of
    /// [`LayerNormOps::layer_norm_with_statistics`].
    #[cfg_attr(
        not(all(feature = "autodiff", feature = "cube-kernels")),
        allow(dead_code)
    )]
    #[fusion(meta = |x, gamma, _statistics, _grad| (x.clone(), gamma.clone(), gamma.clone()))]
    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        statistics: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        super::backward::layer_norm_backward::<Self>(x, gamma, statistics, grad)
    }
}

/// A LayerNorm's output (like `x`) and its `[rows, 2]` f32 statistics.
#[cfg(feature = "cube-kernels")]
#[cfg_attr(
    not(all(feature = "autodiff", feature = "cube-kernels")),
    allow(dead_code)
)]
fn layer_norm_statistics_spec(
    x: &burn::backend::fusion::custom::TensorSpec,
) -> (
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
) {
    let [rows, _] = super::reference::rows_and_width(&x.shape);
    (
        x.clone(),
        burn::backend::fusion::custom::TensorSpec::new(
            Shape::new([rows, 2]),
            burn::tensor::DType::F32,
        ),
    )
}

/// The pseudo-inverse iteration; `c` flattened to `[batch · heads]`. The default body is the
/// tensor-op iteration ([`super::reference::pinv`]); CubeCL devices run one kernel, flex one
/// task per matrix, and under autodiff both walk the iterations back (flex fused, CubeCL
/// devices in one kernel, [`PinvOps::pinv_backward`]). With it, `W = A⁺ (B V)` from the landmarks: the default body builds
/// `A` and `c` as tensor ops around [`PinvOps::pinv`] ([`super::reference::landmark_weights`]),
/// CubeCL devices run it all as one kernel, and under autodiff its backward as one more.
#[backend_extension(
    Cube: cfg(feature = "cube-kernels"),
    Fusion: cfg(feature = "cube-kernels"),
    Flex: cfg(feature = "flex-kernels"),
    Autodiff: cfg(feature = "autodiff")
)]
pub trait PinvOps: Backend {
    /// See [`pinv`].
    #[fusion(dtype = a, shape = a)]
    fn pinv(
        a: FloatTensor<Self>,
        coefficient: FloatTensor<Self>,
        iterations: usize,
    ) -> FloatTensor<Self> {
        super::reference::pinv::<Self>(a, coefficient, iterations)
    }

    /// The gradients of `A` and `c` (as [`PinvOps::pinv`] takes them) for the gradient `grad` of
    /// its result: the iteration replayed from `A` and `c` and walked back. The default body is
    /// tensor ops ([`super::backward::pinv_backward`]); CubeCL devices run one kernel. The
    /// `Autodiff` implementations call it from their backward.
    #[cfg_attr(
        not(all(feature = "autodiff", feature = "cube-kernels")),
        allow(dead_code)
    )]
    #[fusion(meta = pinv_backward_meta)]
    fn pinv_backward(
        a: FloatTensor<Self>,
        coefficient: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        iterations: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        super::backward::pinv_backward::<Self>(a, coefficient, grad, iterations)
    }

    /// The gradients of [`PinvOps::landmark_weights`]' landmark queries, landmark keys and
    /// landmark values (`B V`), and of the short sequences' value means (`[batch, heads, m,
    /// d_v]`, `grad` itself in a short sequence's rows, zero elsewhere, where the first three are
    /// zero in them), for the gradient `grad` of `W`, from its inputs: `A`, `c` and the
    /// iteration are rebuilt. The caller spreads the means' gradient over the values. The
    /// default body is tensor ops ([`super::backward::landmark_weights_backward`]); CubeCL
    /// devices run one kernel.
    #[cfg_attr(
        not(all(feature = "autodiff", feature = "cube-kernels")),
        allow(dead_code)
    )]
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |landmark_queries, landmark_keys, landmark_values, _missing_queries, _missing_keys, _key_rows, _iterations, _grad| (landmark_queries.clone(), landmark_keys.clone(), landmark_values.clone(), landmark_values.clone()))]
    fn landmark_weights_backward(
        landmark_queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        landmark_values: FloatTensor<Self>,
        #[extension_type] missing_queries: Flags<Self>,
        #[extension_type] missing_keys: Flags<Self>,
        #[extension_type] key_rows: SegmentRows<Self>,
        iterations: usize,
        grad: FloatTensor<Self>,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let (grad, short_grad) = super::reference::split_short_gradient::<Self>(grad, &key_rows);
        let (query_grad, key_grad, value_grad) = super::backward::landmark_weights_backward::<Self>(
            landmark_queries,
            landmark_keys,
            landmark_values,
            missing_queries,
            missing_keys,
            iterations,
            grad,
        );
        (query_grad, key_grad, value_grad, short_grad)
    }

    /// See [`landmark_weights`]; missing landmarks as `1.0`. With ranked `key_rows` a sequence
    /// of at most `m` valid keys takes the segment means of `values` (`[batch, heads, n,
    /// d_v]`) as its rows; `values` is not read for equal rows, which mark no sequence short.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = landmark_queries, shape = values_shape(landmark_queries, landmark_values))]
    fn landmark_weights(
        landmark_queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        landmark_values: FloatTensor<Self>,
        #[extension_type] missing_queries: Flags<Self>,
        #[extension_type] missing_keys: Flags<Self>,
        values: FloatTensor<Self>,
        #[extension_type] key_rows: SegmentRows<Self>,
        iterations: usize,
    ) -> FloatTensor<Self> {
        let weights = super::reference::landmark_weights::<Self>(
            landmark_queries,
            landmark_keys,
            landmark_values,
            missing_queries,
            missing_keys,
            iterations,
        );
        super::reference::short_sequences_take_means::<Self>(weights, values, key_rows)
    }
}

/// The gradients of [`PinvOps::pinv_backward`]: `A`'s shape and `[batch · heads]`, in `A`'s type.
#[cfg(feature = "cube-kernels")]
fn pinv_backward_meta(
    a: &burn::backend::fusion::custom::TensorSpec,
    _coefficient: &burn::backend::fusion::custom::TensorSpec,
    _grad: &burn::backend::fusion::custom::TensorSpec,
    _iterations: &usize,
) -> (
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
) {
    let [batch, heads, _, _] = a.shape.dims::<4>();
    (
        a.clone(),
        burn::backend::fusion::custom::TensorSpec::new(Shape::new([batch * heads]), a.dtype),
    )
}

/// `[batch, heads, m, d_v]` from the landmark queries' `[batch, heads, m, d]` and the values'
/// `[batch, heads, n, d_v]`.
#[cfg(feature = "cube-kernels")]
fn values_shape(landmark_queries: &Shape, values: &Shape) -> Shape {
    Shape::new([
        landmark_queries[0],
        landmark_queries[1],
        landmark_queries[2],
        values[3],
    ])
}

/// `[batch, heads, n, d_v]` from the queries' `[batch, heads, n, d]` and the weights'
/// `[batch, heads, m, d_v]`.
#[cfg(feature = "cube-kernels")]
fn context_shape(queries: &Shape, weights: &Shape) -> Shape {
    Shape::new([queries[0], queries[1], queries[2], weights[3]])
}

/// The output of a softmax product (`shape`, in `input`'s type) and its softmax statistics per
/// row (`[batch, heads, rows, 2]`, f32).
#[cfg(feature = "cube-kernels")]
#[cfg_attr(
    not(all(feature = "autodiff", feature = "cube-kernels")),
    allow(dead_code)
)]
fn with_statistics(
    input: &burn::backend::fusion::custom::TensorSpec,
    shape: Shape,
) -> (
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
) {
    let [batch, heads, rows, _] = shape.dims::<4>();
    (
        burn::backend::fusion::custom::TensorSpec::new(shape, input.dtype),
        burn::backend::fusion::custom::TensorSpec::new(
            Shape::new([batch, heads, rows, 2]),
            burn::tensor::DType::F32,
        ),
    )
}

#[cfg(all(test, feature = "cube-kernels"))]
mod tests {
    use super::*;

    #[test]
    fn a_device_binding_webgpus_guaranteed_eight_buffers_runs_tensor_ops() {
        assert!(!binds_enough(8));
        assert!(!binds_enough(super::super::KERNEL_STORAGE_BUFFERS - 1));
        assert!(binds_enough(super::super::KERNEL_STORAGE_BUFFERS));
    }
}
