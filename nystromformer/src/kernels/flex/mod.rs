//! The fused CPU stages on flex: [`LandmarkSoftmaxOps`] (see [`products`]), [`PinvOps`] (see
//! [`pinv`]), [`DepthwiseConvOps`] (see [`depthwise`]), [`SegmentMeanOps`] (see
//! [`segment_mean`]), [`ElementwiseOps`] (see [`dropout`] and [`gelu`]) and [`LayerNormOps`] (see
//! [`layer_norm`]) for burn-flex's backend, on contiguous `f32` slices, and for `Autodiff<Flex>`
//! with fused backwards (see [`backward`] and `autodiff.rs`).

/// Defines `fn NAME(args) -> R { body }` that runs `body` compiled for AVX2 + FMA when the CPU
/// has them, and as compiled for the baseline otherwise. Written `fn NAME<A>(…)`, the body is
/// generic over `A:` [`exp::MulAdd`], which is one fused multiply-add in the AVX2 build and a
/// multiply then an add in the baseline one (where `f32::mul_add` would be a call into libm).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])* $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$arith:ident>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])* $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body<$arith: $crate::kernels::flex::exp::MulAdd>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body::<$crate::kernels::flex::exp::Fused>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body::<$crate::kernels::flex::exp::Separate>($($arg),*)
        }
    };
}

#[cfg(feature = "autodiff")]
mod autodiff;
#[cfg(feature = "autodiff")]
mod backward;
// Each stage's module holds its forward and its backward; without `autodiff` the backward
// halves (and the helpers only they use) are compiled but never called.
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
mod depthwise;
mod dropout;
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
mod exp;
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
mod gelu;
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
mod layer_norm;
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
mod pinv;
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
mod products;
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
mod rows;
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
mod segment_mean;

use burn::backend::ops::IntTensorOps;
use burn::tensor::{Distribution, IntDType, Shape, TensorData};
use burn_flex::{Flex, FlexDevice, FlexTensor};

use self::depthwise::ConvDims;
use self::dropout::DropoutMask;
use self::layer_norm::RowStats;
use self::products::{Dims, RowSoftmax};
use self::segment_mean::Ranks;
use super::extension::{
    DepthwiseConvOps, ElementwiseOps, LandmarkSoftmaxOps, LayerNormOps, PinvOps, SegmentMeanOps,
};
use super::flags::Flags;
use super::segment_rows::SegmentRows;

/// A tensor's `f32` elements in row-major order (a copy only when it is strided) and its shape.
fn contiguous(tensor: FlexTensor) -> (FlexTensor, Vec<usize>) {
    let tensor = tensor.to_contiguous();
    let shape = tensor.layout().shape().to_vec();
    (tensor, shape)
}

/// Flags as the fused products read them, `[batch, len]`: zeros where they are absent (a host
/// allocation, which costs flex next to nothing).
fn flag_values(flags: Flags<Flex>, batch: usize, len: usize) -> FlexTensor {
    match flags {
        Flags::Present(flags) => contiguous(flags).0,
        Flags::Absent => output(vec![0.0; batch * len], [batch, len]),
    }
}

fn slice(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("the fused flex stages take contiguous f32 tensors")
}

fn output(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// One call of a product as its backward needs it: the contiguous inputs, the output and each
/// output row's softmax.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
pub(super) struct SavedProduct {
    dims: Dims,
    queries: FlexTensor,
    keys: FlexTensor,
    values: FlexTensor,
    kind: ProductKind,
    missing: FlexTensor,
    output: FlexTensor,
    row_softmax: Vec<RowSoftmax>,
}

/// Which product a [`SavedProduct`] is, with the flags that only its backward reads.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
enum ProductKind {
    /// `B · V`, with the `[batch, n]` padding flags of its keys, the score they got, and whether
    /// padded keys and values counted as zeros.
    Values {
        padding: FlexTensor,
        masked_score: f32,
        zero_padded: bool,
    },
    /// `F · W`, with the `[batch, n]` flags of the query rows it took as zeros, if any.
    Attention { zeroed_rows: Option<FlexTensor> },
}

/// `B · V` (see [`products::landmark_values`]), kept for its backward.
pub(super) fn values_forward(
    landmark_queries: FlexTensor,
    keys: FlexTensor,
    values: FlexTensor,
    padding: Flags<Flex>,
    missing: Flags<Flex>,
    masked_score: f32,
    zero_padded: bool,
) -> SavedProduct {
    let (queries, lq_shape) = contiguous(landmark_queries);
    let (keys, k_shape) = contiguous(keys);
    let (values, v_shape) = contiguous(values);
    let dims = Dims {
        batch: lq_shape[0],
        heads: lq_shape[1],
        n: k_shape[2],
        m: lq_shape[2],
        d: lq_shape[3],
        dv: v_shape[3],
    };
    let padding = flag_values(padding, dims.batch, dims.n);
    let missing = flag_values(missing, dims.batch, dims.m);
    let (out, row_softmax) = products::landmark_values(
        dims,
        slice(&queries),
        slice(&keys),
        slice(&values),
        slice(&padding),
        slice(&missing),
        masked_score,
        zero_padded,
    );
    SavedProduct {
        dims,
        queries,
        keys,
        values,
        kind: ProductKind::Values {
            padding,
            masked_score,
            zero_padded,
        },
        missing,
        output: output(out, [dims.batch, dims.heads, dims.m, dims.dv]),
        row_softmax,
    }
}

/// `F · W` (see [`products::landmark_attention`]), kept for its backward.
pub(super) fn attention_forward(
    queries: FlexTensor,
    landmark_keys: FlexTensor,
    weights: FlexTensor,
    missing: Flags<Flex>,
    zeroed_rows: Flags<Flex>,
) -> SavedProduct {
    let (queries, q_shape) = contiguous(queries);
    let (keys, lk_shape) = contiguous(landmark_keys);
    let (values, w_shape) = contiguous(weights);
    let dims = Dims {
        batch: q_shape[0],
        heads: q_shape[1],
        n: q_shape[2],
        m: lk_shape[2],
        d: q_shape[3],
        dv: w_shape[3],
    };
    let missing = flag_values(missing, dims.batch, dims.m);
    let zeroed_rows = match zeroed_rows {
        Flags::Present(flags) => Some(contiguous(flags).0),
        Flags::Absent => None,
    };
    let (out, row_softmax) = products::landmark_attention(
        dims,
        slice(&queries),
        slice(&keys),
        slice(&values),
        slice(&missing),
        zeroed_rows.as_ref().map(slice),
    );
    SavedProduct {
        dims,
        queries,
        keys,
        values,
        kind: ProductKind::Attention { zeroed_rows },
        missing,
        output: output(out, [dims.batch, dims.heads, dims.n, dims.dv]),
        row_softmax,
    }
}

/// The gradients of a saved product's queries, keys and values for its output gradient `grad`.
#[cfg(feature = "autodiff")]
pub(super) fn product_backward(saved: SavedProduct, grad: FlexTensor) -> [FlexTensor; 3] {
    let (grad, _) = contiguous(grad);
    let dims = saved.dims;
    let forward = backward::Forward {
        queries: slice(&saved.queries),
        keys: slice(&saved.keys),
        values: slice(&saved.values),
        output: slice(&saved.output),
        row_softmax: &saved.row_softmax,
    };
    let Dims {
        batch,
        heads,
        n,
        m,
        d,
        dv,
    } = dims;
    match &saved.kind {
        ProductKind::Values {
            padding,
            masked_score,
            zero_padded,
        } => {
            let grads = backward::landmark_values(
                dims,
                forward,
                slice(padding),
                slice(&saved.missing),
                *masked_score,
                *zero_padded,
                slice(&grad),
            );
            [
                output(grads.queries, [batch, heads, m, d]),
                output(grads.keys, [batch, heads, n, d]),
                output(grads.values, [batch, heads, n, dv]),
            ]
        }
        ProductKind::Attention { zeroed_rows } => {
            let grads = backward::landmark_attention(
                dims,
                forward,
                slice(&saved.missing),
                zeroed_rows.as_ref().map(slice),
                slice(&grad),
            );
            [
                output(grads.queries, [batch, heads, n, d]),
                output(grads.keys, [batch, heads, m, d]),
                output(grads.values, [batch, heads, m, dv]),
            ]
        }
    }
}

/// Padding that counts as zeros never reaches an output or a gradient: the products overwrite
/// what it gives their scores, and zero their copy of a block of values (backward, of keys or
/// queries) that holds some; the attention then leaves `Q`, `K` and `V` as they are (see
/// `kernels_take_padding`).
impl LandmarkSoftmaxOps for Flex {
    fn landmark_values(
        landmark_queries: FlexTensor,
        keys: FlexTensor,
        values: FlexTensor,
        padding: Flags<Flex>,
        missing: Flags<Flex>,
        masked_score: f32,
        zero_padded: bool,
    ) -> FlexTensor {
        values_forward(
            landmark_queries,
            keys,
            values,
            padding,
            missing,
            masked_score,
            zero_padded,
        )
        .output
    }

    fn landmark_attention(
        queries: FlexTensor,
        landmark_keys: FlexTensor,
        weights: FlexTensor,
        missing: Flags<Flex>,
        query_padding: Flags<Flex>,
    ) -> FlexTensor {
        attention_forward(queries, landmark_keys, weights, missing, query_padding).output
    }
}

/// One call of the depthwise convolution as its backward needs it.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
pub(super) struct SavedConv {
    dims: ConvDims,
    /// The values with their padded rows zeroed.
    values: FlexTensor,
    taps: FlexTensor,
    /// Whether each `[batch, n]` position is padding; `None` without padding flags.
    padded: Option<Vec<bool>>,
}

/// The depthwise convolution (see [`depthwise::forward`]) of the values with the rows that
/// `padding` flags zeroed, and what its backward needs.
pub(super) fn conv_forward(
    values: FlexTensor,
    taps: FlexTensor,
    padding: Flags<Flex>,
) -> (FlexTensor, SavedConv) {
    let (values, v_shape) = contiguous(values);
    let (taps, t_shape) = contiguous(taps);
    let dims = ConvDims {
        batch: v_shape[0],
        heads: v_shape[1],
        n: v_shape[2],
        d: v_shape[3],
        k: t_shape[2],
    };
    let (values, padded) = match padding {
        Flags::Absent => (values, None),
        Flags::Present(flags) => {
            let padded: Vec<bool> = slice(&contiguous(flags).0)
                .iter()
                .map(|&flag| flag != 0.0)
                .collect();
            let mut zeroed = slice(&values).to_vec();
            depthwise::zero_rows(dims, &mut zeroed, &padded);
            (output(zeroed, v_shape), Some(padded))
        }
    };
    let out = depthwise::forward(dims, slice(&values), slice(&taps));
    let out = output(out, [dims.batch, dims.heads, dims.n, dims.d]);
    let saved = SavedConv {
        dims,
        values,
        taps,
        padded,
    };
    (out, saved)
}

/// The gradients of a saved convolution's values and taps for its output gradient `grad`.
#[cfg(feature = "autodiff")]
pub(super) fn conv_backward(saved: SavedConv, grad: FlexTensor) -> [FlexTensor; 2] {
    let (grad, _) = contiguous(grad);
    let ConvDims {
        batch,
        heads,
        n,
        d,
        k,
    } = saved.dims;
    let (mut d_values, d_taps) = depthwise::backward(
        saved.dims,
        slice(&saved.values),
        slice(&saved.taps),
        slice(&grad),
    );
    // The forward read padded rows as zeros: their gradient is zero.
    if let Some(padded) = &saved.padded {
        depthwise::zero_rows(saved.dims, &mut d_values, padded);
    }
    [
        output(d_values, [batch, heads, n, d]),
        output(d_taps, [heads, 1, k, 1]),
    ]
}

impl DepthwiseConvOps for Flex {
    fn depthwise_conv(values: FlexTensor, taps: FlexTensor, padding: Flags<Self>) -> FlexTensor {
        conv_forward(values, taps, padding).0
    }
}

/// One pseudo-inverse call as its backward needs it: `A`, `c` and the iterates.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
pub(super) struct SavedPinv {
    a: FlexTensor,
    coefficient: FlexTensor,
    iterates: Vec<f32>,
}

/// The pseudo-inverse iteration (see [`pinv::forward`]), keeping the iterates when `save`.
pub(super) fn pinv_forward(
    a: FlexTensor,
    coefficient: FlexTensor,
    iterations: usize,
    save: bool,
) -> (FlexTensor, SavedPinv) {
    let (a, shape) = contiguous(a);
    let (coefficient, _) = contiguous(coefficient);
    let m = shape[3];
    let (z, iterates) = pinv::forward(slice(&a), slice(&coefficient), m, iterations, save);
    let saved = SavedPinv {
        a,
        coefficient,
        iterates,
    };
    (output(z, shape), saved)
}

/// The gradients of a saved pseudo-inverse's `A` and `c` for its output gradient `grad`.
#[cfg(feature = "autodiff")]
pub(super) fn pinv_backward(saved: SavedPinv, grad: FlexTensor) -> [FlexTensor; 2] {
    let (grad, _) = contiguous(grad);
    let shape = saved.a.layout().shape().clone();
    let (d_a, d_c) = pinv::backward(
        slice(&saved.a),
        slice(&saved.coefficient),
        shape[3],
        &saved.iterates,
        slice(&grad),
    );
    let matrices = d_c.len();
    [output(d_a, shape), output(d_c, [matrices])]
}

impl PinvOps for Flex {
    fn pinv(a: FlexTensor, coefficient: FlexTensor, iterations: usize) -> FlexTensor {
        pinv_forward(a, coefficient, iterations, false).0
    }
}

/// The landmarks of one call as their backward needs them: the shape of the input, and for
/// ranked segments the ranks.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
pub(super) struct SavedSegmentMean {
    shape: Vec<usize>,
    m: usize,
    ranks: Option<Ranks>,
}

/// The segment means of `x` (see [`segment_mean::forward`], [`segment_mean::ranked_forward`]).
pub(super) fn segment_mean_forward(
    x: FlexTensor,
    rows: SegmentRows<Flex>,
    m: usize,
) -> (FlexTensor, SavedSegmentMean) {
    let (x, shape) = contiguous(x);
    let [batch, heads, n, d] = shape[..] else {
        unreachable!("segment means take [batch, heads, n, d]")
    };
    let ranks = match rows {
        SegmentRows::Equal => None,
        SegmentRows::Ranked {
            order,
            rank,
            lengths,
        } => Some(Ranks {
            order: int_values(order),
            rank: int_values(rank),
            lengths: int_values(lengths),
        }),
    };
    let out = match &ranks {
        None => segment_mean::forward(slice(&x), n, d, m),
        Some(ranks) => segment_mean::ranked_forward(slice(&x), [heads, n, d, m], ranks),
    };
    let out = output(out, [batch, heads, m, d]);
    (out, SavedSegmentMean { shape, m, ranks })
}

/// An integer tensor's elements in row-major order.
fn int_values(tensor: FlexTensor) -> Vec<i64> {
    tensor
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("integer elements")
}

/// The gradient of the segment means' input for their output gradient `grad`.
#[cfg(feature = "autodiff")]
pub(super) fn segment_mean_backward(saved: SavedSegmentMean, grad: FlexTensor) -> FlexTensor {
    let (grad, _) = contiguous(grad);
    let [_, heads, n, d] = saved.shape[..] else {
        unreachable!("segment means take [batch, heads, n, d]")
    };
    let dx = match &saved.ranks {
        None => segment_mean::backward(slice(&grad), n, d, saved.m),
        Some(ranks) => segment_mean::ranked_backward(slice(&grad), [heads, n, d, saved.m], ranks),
    };
    output(dx, saved.shape)
}

impl SegmentMeanOps for Flex {
    fn segment_mean(x: FlexTensor, rows: SegmentRows<Flex>, m: usize) -> FlexTensor {
        segment_mean_forward(x, rows, m).0
    }
}

/// `f` of a tensor's contiguous `f32` elements, as a tensor of the same shape.
fn map_elements(tensor: &FlexTensor, f: impl FnOnce(&[f32]) -> Vec<f32>) -> FlexTensor {
    let shape = tensor.layout().shape().clone();
    output(f(slice(tensor)), shape)
}

/// A fresh dropout mask: its seed is one draw from flex's generator, which `Backend::seed`
/// resets, so seeded runs repeat.
pub(super) fn dropout_mask(prob: f64) -> DropoutMask {
    let draw = Flex::int_random(
        Shape::new([1]),
        Distribution::Default,
        &FlexDevice,
        IntDType::U64,
    );
    let seed = draw.as_slice::<u64>().expect("a u64 tensor of one element")[0];
    DropoutMask::new(seed, prob)
}

/// `f` applied to a tensor's `f32` elements in place when the tensor alone owns its contiguous
/// buffer (as a consumed intermediate or gradient does), to a copy otherwise.
fn update_elements(tensor: FlexTensor, f: impl FnOnce(&mut [f32])) -> FlexTensor {
    let mut tensor = if tensor.is_contiguous() {
        tensor
    } else {
        tensor.to_contiguous()
    };
    let (start, end) = tensor
        .layout()
        .contiguous_offsets()
        .expect("a contiguous tensor");
    if let Some(storage) = tensor.try_storage_mut::<f32>() {
        f(&mut storage[start..end]);
        return tensor;
    }
    let mut values = slice(&tensor).to_vec();
    f(&mut values);
    output(values, tensor.layout().shape().clone())
}

/// Dropout's forward and the mask its backward applies to the output gradient.
pub(super) fn dropout_forward(x: FlexTensor, prob: f64) -> (FlexTensor, DropoutMask) {
    let mask = dropout_mask(prob);
    (update_elements(x, |x| mask.apply_all(x)), mask)
}

/// The gradient of dropout's input for its output gradient `grad`.
#[cfg(feature = "autodiff")]
pub(super) fn dropout_backward(mask: DropoutMask, grad: FlexTensor) -> FlexTensor {
    update_elements(grad, |grad| mask.apply_all(grad))
}

/// GELU's forward and its (contiguous) input, which the backward needs.
pub(super) fn gelu_forward(x: FlexTensor) -> (FlexTensor, FlexTensor) {
    let (x, _) = contiguous(x);
    (map_elements(&x, gelu::forward), x)
}

/// The gradient of GELU's input `x` for its output gradient `grad`.
#[cfg(feature = "autodiff")]
pub(super) fn gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
    update_elements(grad, |grad| gelu::backward(slice(&x), grad))
}

impl ElementwiseOps for Flex {
    fn dropout(x: FlexTensor, prob: f64) -> FlexTensor {
        dropout_forward(x, prob).0
    }

    fn gelu(x: FlexTensor) -> FlexTensor {
        gelu_forward(x).0
    }
}

/// One LayerNorm call as its backward needs it.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
pub(super) struct SavedLayerNorm {
    x: FlexTensor,
    gamma: FlexTensor,
    stats: Vec<RowStats>,
}

/// LayerNorm (see [`layer_norm::forward`]) and what its backward needs.
pub(super) fn layer_norm_forward(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> (FlexTensor, SavedLayerNorm) {
    let (x, _) = contiguous(x);
    let (gamma, _) = contiguous(gamma);
    let (beta, _) = contiguous(beta);
    let (out, stats) = layer_norm::forward(slice(&x), slice(&gamma), slice(&beta), epsilon as f32);
    let out = output(out, x.layout().shape().clone());
    (out, SavedLayerNorm { x, gamma, stats })
}

/// The gradients of a saved LayerNorm's input, gamma and beta for its output gradient `grad`.
#[cfg(feature = "autodiff")]
pub(super) fn layer_norm_backward(saved: SavedLayerNorm, grad: FlexTensor) -> [FlexTensor; 3] {
    let (grad, _) = contiguous(grad);
    let (dx, d_gamma, d_beta) = layer_norm::backward(
        slice(&saved.x),
        slice(&saved.gamma),
        &saved.stats,
        slice(&grad),
    );
    let d = d_gamma.len();
    [
        output(dx, saved.x.layout().shape().clone()),
        output(d_gamma, [d]),
        output(d_beta, [d]),
    ]
}

impl LayerNormOps for Flex {
    fn layer_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f64) -> FlexTensor {
        layer_norm_forward(x, gamma, beta, epsilon).0
    }
}
