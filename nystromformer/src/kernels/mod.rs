//! Custom kernels for the hot paths (CubeCL, and fused CPU stages on flex), with the tensor-op
//! stages as the fallback.
//!
//! On a CubeCL device (wgpu, Vulkan, Metal, WebGPU), for f32 tensors, four stages of
//! [`nystrom_attention`](crate::nystrom_attention) run as custom kernels (`kernels/cube/`)
//! instead of chains of tensor operations:
//!
//! - `B · V` (`landmark_values`): each landmark query's softmax over all keys times the values,
//!   in chunks of keys merged by a second kernel, so the `[m, n]` kernel `B` is never written;
//! - the pseudo-inverse iteration (`pinv`): one launch per forward pass instead of about ten
//!   per iteration, which matters because the `[m, m]` matrices are far too small to hide a
//!   launch each (under autodiff, and for [`PinvInit::Original`]);
//! - `F · W` (`landmark_attention`): each query's softmax over the landmark keys and its
//!   product with `W = A⁺ (B V)`, row by row, so the `[n, m]` kernel `F` is never written;
//! - `W = A⁺ (B V)` itself (`landmark_weights`): `A = softmax(Q̃ K̃ᵀ)`, the pseudo-inverse's
//!   coefficient, its iteration and the product with `B V` in one launch, one cube per matrix,
//!   where the tensor ops take a dozen launches on `m × m` matrices.
//!
//! The landmarks are one kernel too (`landmark_means`), for equal segments and for ranked ones
//! (a padding mask, or `m` not dividing the length: each segment's rows found through its
//! ranks, where the tensor ops multiply a `[batch, m, n]` weight matrix with every head). The
//! attention then holds no `n × m` matrix at all. Under autodiff (feature `autodiff`) the same
//! kernels run forward, the softmax products also leaving each row's softmax statistics (its
//! largest score and the log of its sum of exponentials), and the backward is kernels too: two
//! per softmax product that recompute its softmax from those statistics (FlashAttention-2's
//! backward, `cube/softmax_backward.rs`), one that replays the
//! pseudo-inverse iteration and walks it back (`cube/pinv_backward.rs`, and
//! `cube/landmark_weights_backward.rs` for `W`, which also goes back through `A`), and the
//! landmarks' spread over their segments: training keeps no `n × m` matrix from forward to
//! backward.
//!
//! On flex (feature `flex-kernels`, on with `flex`), `B · V` and `F · W` run as fused CPU stages
//! (`kernels/flex/`: gemm blocks, an online softmax with a vectorised `exp`, rayon per head),
//! and with the `autodiff` feature their backward is fused too: the forward keeps each row's
//! softmax statistics and the backward recomputes the softmax block by block, so training never
//! stores an `n × m` matrix for these stages; the pseudo-inverse runs as one task per matrix,
//! with a backward through its iterations. The same `B · V` stage with every query as a row is
//! exact attention ([`fused_softmax_attention`]), which the softmax baseline runs on flex: flex's
//! own `attention` differentiates as tensor ops over the whole `[n, n]` scores. The skip
//! connection's depthwise convolution is fused on flex as well, forward and backward
//! ([`fused_depthwise_conv`]), as are the landmarks, equal or ranked ([`fused_segment_mean`])
//! and the training step's dropout, exact GELU and LayerNorm
//! ([`dropout`], [`gelu`], [`layer_norm`]), which flex runs element by element on one core. The
//! LayerNorm is a CubeCL kernel too, forward and backward (`cube/layer_norm.rs`), where Burn
//! takes about three launches forward and twenty-five backward.
//!
//! The CubeCL kernels also take f16, forward and backward: they read and write f16, keep their
//! softmax state, tiles, statistics and partial gradients in f32 and run the pseudo-inverse in
//! f32. Everywhere else (ndarray, bf16, f16 on flex, tracked tensors without the `autodiff`
//! feature) the tensor-op stages run; all paths compute the same maths and agree to float
//! rounding (`tests/custom_kernels.rs`, gradients included). The CubeCL kernels
//! only compile with a GPU backend feature (`cube-kernels`); both families reach Burn through its
//! backend-extension machinery, which routes a call by the device of its tensors.

use burn::nn::{Dropout, LayerNorm};
use burn::tensor::{Bool, DType, Device, FloatDType, Tensor, activation};

use crate::attention::PinvInit;
use crate::attention::landmarks::{SegmentRanks, Segments};
use crate::attention::mask::MASKED_SCORE;
use crate::attention::shape_check::expect_shape;
pub(crate) use mask_flags::MaskFlags;

#[cfg(any(feature = "cube-kernels", feature = "flex-kernels"))]
mod backward;
#[cfg(feature = "cube-kernels")]
mod cube;
#[cfg(any(feature = "cube-kernels", feature = "flex-kernels"))]
mod extension;
#[cfg(any(feature = "cube-kernels", feature = "flex-kernels"))]
mod flags;
#[cfg(feature = "flex-kernels")]
mod flex;
mod mask_flags;
#[cfg(all(
    feature = "autodiff",
    any(feature = "cube-kernels", feature = "flex-kernels")
))]
mod recorded;
#[cfg(any(feature = "cube-kernels", feature = "flex-kernels"))]
mod reference;
#[cfg(any(feature = "cube-kernels", feature = "flex-kernels"))]
mod segment_rows;

/// Whether [`nystrom_attention`](crate::nystrom_attention) runs its custom kernels for inputs
/// like `x` (and `NystromOptions::custom_kernels` is on): f32 on a CubeCL device or flex, and
/// f16 on a CubeCL device (the kernels read and write f16 and accumulate in f32). Under autodiff
/// this needs the `autodiff` feature, which routes tracked tensors too: flex runs its fused
/// backward, CubeCL devices backward kernels from what the forward kernels keep.
pub fn custom_kernels_apply<const D: usize>(x: &Tensor<D>) -> bool {
    trackable(x)
        && match x.dtype() {
            DType::F32 => extension::on_cube_device(x) || extension::on_flex_device(x),
            DType::F16 => extension::on_cube_device(x),
            _ => false,
        }
}

/// Untracked, or tracked with the `autodiff` feature (which compiles the extension's autodiff
/// routes).
fn trackable<const D: usize>(x: &Tensor<D>) -> bool {
    routes_autodiff(&x.device())
}

/// Whether the extension's calls on `device` have a route: any device without autodiff, and
/// with it only where the `autodiff` feature compiles the extension's autodiff routes.
fn routes_autodiff(device: &Device) -> bool {
    !device.is_autodiff() || cfg!(feature = "autodiff")
}

/// Whether the fused flex stages take `x`: f32 on flex, [`trackable`].
fn on_flex<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && trackable(x) && extension::on_flex_device(x)
}

/// `softmax(Q̃ Kᵀ) · V` for the landmark queries without the `[m, n]` softmax in memory, as two
/// kernels; padded keys get the score `masked_score` (so zero weight) and the rows of missing
/// landmarks are zero. `None` where the kernels do not apply (see [`custom_kernels_apply`]), and
/// on CubeCL devices for head sizes above [`MAX_KERNEL_HEAD_DIM`].
///
/// # Shapes
///
/// - landmark_queries: `[batch, heads, m, d]` (already scaled by `1/√d`)
/// - keys: `[batch, heads, n, d]`, values: `[batch, heads, n, d_v]`
/// - mask_pad: `[batch, n]` (`true` = padding)
/// - missing: `[batch, m]` (`true` = not a landmark)
/// - output: `[batch, heads, m, d_v]`
///
/// # Panics
///
/// Panics, naming the argument, if the shapes disagree.
pub fn fused_landmark_values(
    landmark_queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    mask_pad: Option<&Tensor<2, Bool>>,
    missing: Option<&Tensor<2, Bool>>,
    masked_score: f32,
) -> Option<Tensor<4>> {
    let [batch, heads, m, d] = landmark_queries.dims();
    let [_, _, n, _] = keys.dims();
    let op = "fused_landmark_values";
    expect_shape(op, "keys", &keys.dims(), &[batch, heads, n, d]);
    expect_shape(op, "values", &values.dims(), &[batch, heads, n]);
    if let Some(mask_pad) = mask_pad {
        expect_shape(op, "mask_pad", &mask_pad.dims(), &[batch, n]);
    }
    if let Some(missing) = missing {
        expect_shape(op, "missing", &missing.dims(), &[batch, m]);
    }
    let dtype = FloatDType::from(keys.dtype());
    landmark_values_with_flags(
        landmark_queries,
        keys,
        values,
        &MaskFlags::new(mask_pad, dtype),
        &MaskFlags::new(missing, dtype),
        masked_score,
        false,
    )
}

/// [`fused_landmark_values`] with its masks' flags converted once for the whole attention call;
/// with `zero_padded` the padded keys and their values count as zeros (the leak-free policy's
/// padding, which the CubeCL kernels then never use; zero gradient there).
pub(crate) fn landmark_values_with_flags(
    landmark_queries: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    padding: &MaskFlags,
    missing: &MaskFlags,
    masked_score: f32,
    zero_padded: bool,
) -> Option<Tensor<4>> {
    let d = keys.dims()[3];
    let d_v = values.dims()[3];
    (custom_kernels_apply(landmark_queries) && fits_cube_kernels(keys, [d, d_v])).then(|| {
        extension::landmark_values(
            landmark_queries,
            keys,
            values,
            padding,
            missing,
            masked_score,
            zero_padded,
        )
    })
}

/// Exact `softmax(Q Kᵀ/√d) · V` as the fused flex stage of `B · V` with every query a row:
/// blocks of keys under an online softmax, so the `[n_q, n_k]` scores are never stored, and
/// under autodiff a backward that recomputes them block by block from each row's statistics.
/// (Flex's own `attention` differentiates as tensor ops that keep every `[n_q, n_k]` matrix.)
/// Padded keys get zero weight (they and their values count as zeros, so NaN there cannot
/// leak, forward or backward, and they get no gradient) and a
/// query without any key attends to nothing: its output is zero. `None` where it does not
/// apply: f32 on flex, tracked tensors only with the `autodiff` feature.
///
/// # Shapes
///
/// - q: `[batch, heads, n_q, d]`, k: `[batch, heads, n_k, d]`, v: `[batch, heads, n_k, d_v]`
/// - mask_pad: `[batch, n_k]` (`true` = padding)
/// - output: `[batch, heads, n_q, d_v]`
///
/// # Panics
///
/// Panics, naming the argument, if the shapes disagree.
pub fn fused_softmax_attention(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask_pad: Option<&Tensor<2, Bool>>,
) -> Option<Tensor<4>> {
    let [batch, heads, _, d] = q.dims();
    let [_, _, n_k, _] = k.dims();
    let op = "fused_softmax_attention";
    expect_shape(op, "k", &k.dims(), &[batch, heads, n_k, d]);
    expect_shape(op, "v", &v.dims(), &[batch, heads, n_k]);
    if let Some(mask_pad) = mask_pad {
        expect_shape(op, "mask_pad", &mask_pad.dims(), &[batch, n_k]);
    }
    on_flex(q).then(|| {
        let scaled = q.clone().mul_scalar((d as f64).powf(-0.5));
        let dtype = FloatDType::F32;
        // Keys too: the backward's dQ sums ds · k over the keys, and 0 · NaN is NaN.
        extension::landmark_values(
            &scaled,
            k,
            v,
            &MaskFlags::new(mask_pad, dtype),
            &MaskFlags::new(None, dtype),
            MASKED_SCORE as f32,
            true,
        )
    })
}

/// [`iterative_pinv`](crate::attention::iterative_pinv) as one kernel; `None` where the kernel
/// does not apply (see [`custom_kernels_apply`]).
///
/// # Shapes
///
/// - a: `[batch, heads, m, m]`, non-negative with rows summing to at most 1
/// - output: `[batch, heads, m, m]`
///
/// On flex it is one task per matrix, and under autodiff its backward runs through the saved
/// iterates (the gradient of `c` flows on into its tensor ops). On CubeCL devices it is one
/// cube per matrix, `None` when `batch · heads` exceeds [`MAX_PINV_MATRICES`] or `m` exceeds
/// [`MAX_KERNEL_LANDMARKS`]; under autodiff its backward is one kernel too, which replays the
/// iteration and walks it back.
///
/// # Panics
///
/// Panics if the matrices are not square.
pub fn fused_pinv(a: &Tensor<4>, iterations: usize, init: PinvInit) -> Option<Tensor<4>> {
    let [batch, heads, m, _] = a.dims();
    expect_shape("fused_pinv", "a", &a.dims(), &[batch, heads, m, m]);
    let on_cube = extension::on_cube_device(a);
    (custom_kernels_apply(a)
        && (extension::on_flex_device(a)
            || (on_cube && batch * heads <= MAX_PINV_MATRICES && m <= MAX_KERNEL_LANDMARKS)))
        .then(|| match a.dtype() {
            DType::F32 => extension::pinv(a, iterations, init),
            // In f32, as the tensor-op path does: the iteration's `13I − …` cancels too much in
            // half precision.
            dtype => extension::pinv(&a.clone().cast(FloatDType::F32), iterations, init)
                .cast(FloatDType::from(dtype)),
        })
}

/// `W = A⁺ (B V)` from the landmarks as one CubeCL kernel, one cube per matrix, where the
/// tensor-op stages take a dozen launches on `m × m` matrices: `A = softmax(Q̃ K̃ᵀ)` as
/// [`kernel_a`](crate::attention::softmax_kernels::kernel_a) builds it, its pseudo-inverse by
/// `iterations` steps of [`iterative_pinv`](crate::attention::iterative_pinv) from
/// [`PinvInit::Exact`], and the product with `B V`; under autodiff its backward is one kernel
/// too, which rebuilds `A` and `c` and replays the iteration. `None` where that kernel does not
/// run: off CubeCL devices (on flex [`fused_pinv`]'s stage runs between tensor ops), where
/// [`fused_pinv`] would not take the matrices, and for [`PinvInit::Original`], whose
/// coefficient spans the batch.
///
/// # Shapes
///
/// - landmark_queries, landmark_keys: `[batch, heads, m, d]` (the keys already scaled by `1/√d`)
/// - landmark_values: `[batch, heads, m, d_v]` (`B V`)
/// - missing_queries, missing_keys: `[batch, m]` (`true` = not a landmark)
/// - output: `[batch, heads, m, d_v]`
///
/// # Panics
///
/// Panics, naming the argument, if the shapes disagree.
pub fn fused_landmark_weights(
    landmark_queries: &Tensor<4>,
    landmark_keys: &Tensor<4>,
    landmark_values: &Tensor<4>,
    missing_queries: Option<&Tensor<2, Bool>>,
    missing_keys: Option<&Tensor<2, Bool>>,
    iterations: usize,
    init: PinvInit,
) -> Option<Tensor<4>> {
    let [batch, heads, m, d] = landmark_queries.dims();
    let op = "fused_landmark_weights";
    expect_shape(
        op,
        "landmark_keys",
        &landmark_keys.dims(),
        &[batch, heads, m, d],
    );
    expect_shape(
        op,
        "landmark_values",
        &landmark_values.dims(),
        &[batch, heads, m],
    );
    for (name, missing) in [
        ("missing_queries", missing_queries),
        ("missing_keys", missing_keys),
    ] {
        if let Some(missing) = missing {
            expect_shape(op, name, &missing.dims(), &[batch, m]);
        }
    }
    let dtype = FloatDType::from(landmark_queries.dtype());
    landmark_weights_with_flags(
        landmark_queries,
        landmark_keys,
        landmark_values,
        &MaskFlags::new(missing_queries, dtype),
        &MaskFlags::new(missing_keys, dtype),
        None,
        iterations,
        init,
    )
}

/// [`fused_landmark_weights`] with its masks' flags converted once for the whole attention call,
/// and with `short`, the values and the keys' ranks, the rows of each sequence of at most `m`
/// valid keys replaced by its values' segment means in the same launch (the attention's exact
/// result for such a sequence, see [`nystrom_attention`](crate::attention::nystrom_attention)).
#[allow(clippy::too_many_arguments)]
pub(crate) fn landmark_weights_with_flags(
    landmark_queries: &Tensor<4>,
    landmark_keys: &Tensor<4>,
    landmark_values: &Tensor<4>,
    missing_queries: &MaskFlags,
    missing_keys: &MaskFlags,
    short: Option<(&Tensor<4>, &SegmentRanks)>,
    iterations: usize,
    init: PinvInit,
) -> Option<Tensor<4>> {
    let [batch, heads, m, _] = landmark_queries.dims();
    (init == PinvInit::Exact
        && custom_kernels_apply(landmark_queries)
        && extension::on_cube_device(landmark_queries)
        && batch * heads <= MAX_PINV_MATRICES
        && m <= MAX_KERNEL_LANDMARKS)
        .then(|| {
            extension::landmark_weights(
                landmark_queries,
                landmark_keys,
                landmark_values,
                missing_queries,
                missing_keys,
                short,
                iterations,
            )
        })
}

/// The largest head size (of queries and keys, and of values) that the CubeCL softmax products
/// take: each unit holds a row of each in registers, sized at compile time, which larger heads
/// would spill. Larger heads run as tensor ops there (flex has no such limit).
pub const MAX_KERNEL_HEAD_DIM: usize = 128;

/// The most storage buffers that one of the library's CubeCL kernels binds (its tensors and
/// CubeCL's metadata buffer; `W`'s backward binds that many). On a device that binds fewer per
/// kernel every stage runs as tensor ops, which Burn's fusion sizes to the device: WebGPU
/// guarantees only 8, which is what a browser grants a page that asks for no more (wgpu asks for
/// the adapter's limit, which desktop drivers put well above). CI's WGSL check
/// (`tools/wgsl_check`) fails if a kernel binds more than this.
pub const KERNEL_STORAGE_BUFFERS: u32 = 13;

/// The largest `m` that the CubeCL pseudo-inverse takes: each of a cube's 256 units holds
/// `(m / 16)²` entries of every product in registers. Larger `m` runs as tensor ops there.
pub const MAX_KERNEL_LANDMARKS: usize = 256;

/// Whether the attention's custom stages run on `q`, `k` and `v` and so take the leak-free
/// policy's padding as it is, which spares the attention its own zeroing of the padded rows of
/// `Q`, `K` and `V` (three passes over them forward and three backward). The landmarks read the
/// valid rows alone; padded rows get a zero gradient.
/// - The CubeCL kernels (f32 or f16, head sizes within [`MAX_KERNEL_HEAD_DIM`]) skip them:
///   `B · V` gives a padded key the masked score and a zero value, `F · W` a padded query row
///   zeros.
/// - The fused flex stages (f32) overwrite what padded rows give their scores, and zero their
///   copy of a block of values (or, backward, keys and queries) that holds some; whole blocks
///   of padding they skip.
pub(crate) fn kernels_take_padding(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> bool {
    let (d, d_v) = (k.dims()[3], v.dims()[3]);
    // The stages decide from the queries (or their landmarks) and the keys: both must apply.
    let on_cube = [q, k]
        .iter()
        .all(|x| custom_kernels_apply(*x) && extension::on_cube_device(*x))
        && fits_cube_kernels(k, [d, d_v]);
    on_cube || [q, k, v].iter().all(|x| on_flex(*x))
}

/// Whether the CubeCL kernels take head sizes `head_dims` for tensors like `x` (always true off
/// CubeCL devices); see [`MAX_KERNEL_HEAD_DIM`].
fn fits_cube_kernels(x: &Tensor<4>, head_dims: [usize; 2]) -> bool {
    !extension::on_cube_device(x) || head_dims.iter().all(|&d| d <= MAX_KERNEL_HEAD_DIM)
}

/// The most matrices [`fused_pinv`] takes: one cube each, in a one-dimensional grid, whose
/// length WebGPU only guarantees up to 65 535.
pub const MAX_PINV_MATRICES: usize = 65_535;

/// `softmax(Q K̃ᵀ) · W` row by row without the `[n, m]` softmax in memory, as one kernel;
/// missing landmarks get zero weight and a row without any landmark is zero. `None` where the
/// kernel does not apply (see [`custom_kernels_apply`]), and on CubeCL devices for head sizes
/// above [`MAX_KERNEL_HEAD_DIM`].
///
/// # Shapes
///
/// - queries: `[batch, heads, n, d]`
/// - landmark_keys: `[batch, heads, m, d]` (already scaled by `1/√d`)
/// - weights: `[batch, heads, m, d_v]`
/// - missing: `[batch, m]` (`true` = not a landmark)
/// - output: `[batch, heads, n, d_v]`
///
/// # Panics
///
/// Panics, naming the argument, if the shapes disagree.
pub fn fused_landmark_attention(
    queries: &Tensor<4>,
    landmark_keys: &Tensor<4>,
    weights: &Tensor<4>,
    missing: Option<&Tensor<2, Bool>>,
) -> Option<Tensor<4>> {
    let [batch, heads, _, d] = queries.dims();
    let [_, _, m, _] = landmark_keys.dims();
    let op = "fused_landmark_attention";
    expect_shape(
        op,
        "landmark_keys",
        &landmark_keys.dims(),
        &[batch, heads, m, d],
    );
    expect_shape(op, "weights", &weights.dims(), &[batch, heads, m]);
    if let Some(missing) = missing {
        expect_shape(op, "missing", &missing.dims(), &[batch, m]);
    }
    let dtype = FloatDType::from(queries.dtype());
    landmark_attention_with_flags(
        queries,
        landmark_keys,
        weights,
        &MaskFlags::new(missing, dtype),
        &MaskFlags::new(None, dtype),
    )
}

/// [`fused_landmark_attention`] with its mask's flags converted once for the whole attention
/// call, and the query rows that `query_padding` flags taken as zeros (the leak-free policy's
/// padding, which the CubeCL kernel then never reads; zero gradient there).
pub(crate) fn landmark_attention_with_flags(
    queries: &Tensor<4>,
    landmark_keys: &Tensor<4>,
    weights: &Tensor<4>,
    missing: &MaskFlags,
    query_padding: &MaskFlags,
) -> Option<Tensor<4>> {
    let d = queries.dims()[3];
    let d_v = weights.dims()[3];
    (custom_kernels_apply(queries) && fits_cube_kernels(queries, [d, d_v])).then(|| {
        extension::landmark_attention(queries, landmark_keys, weights, missing, query_padding)
    })
}

/// The landmarks scaled as the later stages take them, `[Q̃, Q̃ · scale, K̃ · scale]`, as one
/// CubeCL kernel that reads the head split's strided views in place (where tensor ops take four
/// launches for equal segments, and for ranked ones, a padding mask or `m` not dividing the
/// length, a `[batch, m, n]` weight matrix multiplied with every head); under autodiff each
/// mean's backward gives every row its segment's gradient. `None` where that kernel does not
/// run (see [`custom_kernels_apply`]; off CubeCL devices, [`fused_segment_mean`] (flex) or
/// tensor ops take the means).
///
/// # Shapes
///
/// - q: `[batch, heads, n_q, d]`, k: `[batch, heads, n_k, d]`
/// - segments: of `n_q` and of `n_k` tokens, both into `m` segments
/// - output: three `[batch, heads, m, d]`
///
/// # Panics
///
/// Panics, naming the argument, if the shapes disagree.
pub fn fused_landmark_means(
    q: &Tensor<4>,
    k: &Tensor<4>,
    [query_segments, key_segments]: [&Segments; 2],
    scale: f64,
) -> Option<[Tensor<4>; 3]> {
    let [batch, heads, n_q, d] = q.dims();
    let [_, _, n_k, _] = k.dims();
    let op = "fused_landmark_means";
    expect_shape(op, "k", &k.dims(), &[batch, heads, n_k, d]);
    check_segments(op, "query_segments", query_segments, batch, n_q);
    check_segments(op, "key_segments", key_segments, batch, n_k);
    let m = query_segments.num_segments();
    assert_eq!(
        key_segments.num_segments(),
        m,
        "{op}: query_segments and key_segments cut different numbers of segments"
    );
    (custom_kernels_apply(q) && extension::on_cube_device(q)).then(|| {
        extension::landmark_means(
            q,
            k,
            query_segments.ranks(),
            key_segments.ranks(),
            m,
            scale as f32,
        )
    })
}

/// The segment means of `x` (the landmarks) as one parallel pass forward and backward; `None`
/// where it does not apply: f32 on flex, or f32 and f16 on a CubeCL device (one kernel, as in
/// [`fused_landmark_means`]); tracked tensors only with the `autodiff` feature. The tensor ops it
/// replaces reduce equal segments' `[batch, heads, m, n/m, d]` view (on one core on flex) and
/// multiply ranked segments' `[batch, m, n]` weight matrix with every head.
///
/// # Shapes
///
/// - x: `[batch, heads, n, d]`
/// - segments: of `n` tokens into `m` segments
/// - output: `[batch, heads, m, d]`
///
/// # Panics
///
/// Panics, naming the argument, if the shapes disagree.
pub fn fused_segment_mean(x: &Tensor<4>, segments: &Segments) -> Option<Tensor<4>> {
    let [batch, _, n, _] = x.dims();
    check_segments("fused_segment_mean", "segments", segments, batch, n);
    let applies = on_flex(x) || (custom_kernels_apply(x) && extension::on_cube_device(x));
    applies.then(|| extension::segment_mean(x, segments.ranks(), segments.num_segments()))
}

/// The ranked segments of a padding mask as one CubeCL kernel, where the tensor ops take sixteen
/// launches (prefix sums in blocks, a scatter, the segment starts' arithmetic): the ranks, missing
/// segments and short sequences as [`Segments`] keeps them (see
/// [`crate::attention::landmarks::SegmentRanks`], [`Segments::missing`], [`Segments::short`]),
/// and the mask and the missing segments as the float flags (in `dtype`) that the attention's
/// kernels read, which would otherwise take a conversion launch each. `None` off CubeCL devices,
/// and for masks on an autodiff device without the `autodiff` feature.
///
/// # Shapes
///
/// - mask_pad: `[batch, n]` (`true` = padding)
/// - output: ranks of `[batch, n]` and `[batch]`, missing `[batch, m]`, short `[batch]`;
///   padding flags `[batch, n]`, missing flags `[batch, m]`
///
/// # Panics
///
/// Panics if `m` is 0.
pub fn fused_ranked_segments(
    mask_pad: &Tensor<2, Bool>,
    m: usize,
    dtype: FloatDType,
) -> Option<RankedSegments> {
    assert!(
        m > 0,
        "fused_ranked_segments needs at least one segment (m = 0)"
    );
    let device = mask_pad.device();
    (extension::is_cube_device(&device) && routes_autodiff(&device))
        .then(|| extension::ranked_segments(mask_pad, m, dtype))
}

/// What [`fused_ranked_segments`] gives: a padding mask's segments, and the mask and the missing
/// segments as the attention's kernels read them.
#[derive(Debug, Clone)]
pub struct RankedSegments {
    /// Each valid position's rank, the position of each rank, each sequence's length.
    pub ranks: SegmentRanks,
    /// `[batch, m]`, `true` for a segment without a valid token.
    pub missing: Tensor<2, Bool>,
    /// `[batch]`, `true` for a sequence of at most `m` valid tokens.
    pub short: Tensor<1, Bool>,
    /// The mask as flags, `[batch, n]`, `1.0` at padding.
    pub padding_flags: Tensor<2>,
    /// `missing` as flags, `[batch, m]`, `1.0` at a missing segment.
    pub missing_flags: Tensor<2>,
}

/// Panics, naming `name`, unless `segments` cut `n` tokens of (each of, or all) `batch`
/// sequences.
fn check_segments(op: &str, name: &str, segments: &Segments, batch: usize, n: usize) {
    assert_eq!(
        segments.num_tokens(),
        n,
        "{op}: {name} cut {} tokens, the tensor has {n}",
        segments.num_tokens()
    );
    if let Some(ranks) = segments.ranks() {
        let [rows, _] = ranks.rank.dims();
        assert!(
            rows == batch || rows == 1,
            "{op}: {name} are for {rows} sequences, the tensor has {batch}"
        );
    }
}

/// The skip connection's depthwise convolution along the sequence (one `k`-tap filter per head,
/// zero padding), forward and, under autodiff, backward as fused flex loops or as CubeCL kernels
/// (one forward; two and a sum backward); `None` where it does not apply: f32 on flex or a
/// CubeCL device, tracked tensors only with the `autodiff` feature.
/// Flex runs the `Conv2d` it replaces as a generic 3-d convolution and its backward as a
/// transposed one; CubeCL devices as a direct convolution with layout copies, about a dozen
/// launches forward and backward.
///
/// With `mask_pad`, the values at padded positions count as zeros (NaN there cannot leak) and
/// get a zero gradient, as after a `mask_fill` of the values; the CubeCL kernels read the mask
/// instead of making that pass, and read the values in place (the head split's strided view).
///
/// # Shapes
///
/// - values: `[batch, heads, n, d]`
/// - taps: `[heads, 1, k, 1]` (the `Conv2d` weight), `k` odd
/// - mask_pad: `[batch, n]` (`true` = padding)
/// - output: `[batch, heads, n, d]`
///
/// # Panics
///
/// Panics, naming the argument, if the shapes disagree or `k` is even.
pub fn fused_depthwise_conv(
    values: &Tensor<4>,
    taps: &Tensor<4>,
    mask_pad: Option<&Tensor<2, Bool>>,
) -> Option<Tensor<4>> {
    let [batch, _, n, _] = values.dims();
    if let Some(mask_pad) = mask_pad {
        expect_shape(
            "fused_depthwise_conv",
            "mask_pad",
            &mask_pad.dims(),
            &[batch, n],
        );
    }
    let padding = MaskFlags::new(mask_pad, FloatDType::from(values.dtype()));
    depthwise_conv_with_flags(values, taps, &padding)
}

/// [`fused_depthwise_conv`] with the padding's flags converted once for the whole attention call.
pub(crate) fn depthwise_conv_with_flags(
    values: &Tensor<4>,
    taps: &Tensor<4>,
    padding: &MaskFlags,
) -> Option<Tensor<4>> {
    let [_, heads, _, _] = values.dims();
    let k = taps.dims()[2];
    expect_shape(
        "fused_depthwise_conv",
        "taps",
        &taps.dims(),
        &[heads, 1, k, 1],
    );
    assert!(k % 2 == 1, "fused_depthwise_conv: k must be odd, got {k}");
    let on_cube = trackable(values)
        && extension::on_cube_device(values)
        && values.dtype() == DType::F32
        && taps.dtype() == DType::F32;
    (on_flex(values) || on_cube).then(|| extension::depthwise_conv(values, taps, padding))
}

/// `layer.forward(x)`, which on flex (f32, with `custom_kernels`) runs as one fused pass forward
/// and one backward, with a counter-based mask that the backward recomputes instead of a stored
/// Bernoulli tensor drawn element by element. Like burn-nn's `Dropout`, the identity unless
/// `x` is tracked, the layer is training and its probability is positive; the mask's seed is
/// drawn from flex's generator, so `Backend::seed` makes runs repeat exactly.
///
/// # Shapes
///
/// - x, output: any shape
pub fn dropout<const D: usize>(layer: &Dropout, x: Tensor<D>, custom_kernels: bool) -> Tensor<D> {
    let active = layer.training.is_enabled() && x.device().is_autodiff() && layer.prob > 0.0;
    if active && custom_kernels && on_flex(&x) {
        extension::dropout(x, layer.prob)
    } else {
        layer.forward(x)
    }
}

/// Exact GELU, `x · Φ(x)` (`activation::gelu`), which on flex (f32, with `custom_kernels`)
/// runs as one vectorised pass forward and one backward instead of flex's scalar `erf`; it
/// agrees with libm's `erf` to a few units in the last place.
///
/// # Shapes
///
/// - x, output: any shape
pub fn gelu<const D: usize>(x: Tensor<D>, custom_kernels: bool) -> Tensor<D> {
    if custom_kernels && on_flex(&x) {
        extension::gelu(x)
    } else {
        activation::gelu(x)
    }
}

/// `norm.forward(x)`, which with `custom_kernels` and a norm with a bias runs fused: on flex
/// (f32) as one parallel pass over blocks of rows forward and one backward instead of flex's
/// chain of serial tensor ops; on CubeCL devices (f32, f16) as one kernel forward and, under
/// autodiff with its feature, one kernel and two sums backward, where Burn takes about three
/// launches forward and twenty-five backward. burn-nn's `LayerNorm` keeps its epsilon private:
/// `epsilon` must be the one it was configured with.
///
/// # Shapes
///
/// - x, output: `[..., d]` with `d` the norm's size
pub fn layer_norm<const D: usize>(
    norm: &LayerNorm,
    x: Tensor<D>,
    epsilon: f64,
    custom_kernels: bool,
) -> Tensor<D> {
    match &norm.beta {
        Some(beta) if custom_kernels && layer_norm_fuses(norm, &x) => {
            let gamma = norm.gamma.val();
            let [d] = gamma.dims();
            expect_shape("layer_norm", "x", &x.dims()[D - 1..], &[d]);
            extension::layer_norm(x, gamma, beta.val(), epsilon)
        }
        _ => norm.forward(x),
    }
}

/// Whether [`layer_norm`] with `custom_kernels` runs `norm` on `x` fused: a norm with a bias, a
/// non-empty `x`, and f32 on flex, or on a CubeCL device f32 and f16 with parameters of `x`'s
/// type and rows of at most [`MAX_KERNEL_LAYER_NORM_WIDTH`]; tracked tensors only with the
/// `autodiff` feature.
pub fn layer_norm_fuses<const D: usize>(norm: &LayerNorm, x: &Tensor<D>) -> bool {
    let Some(beta) = &norm.beta else {
        return false;
    };
    let width = x.dims()[D - 1];
    x.shape().num_elements() > 0
        && (on_flex(x)
            || (custom_kernels_apply(x)
                && extension::on_cube_device(x)
                && width <= MAX_KERNEL_LAYER_NORM_WIDTH
                && [norm.gamma.val().dtype(), beta.val().dtype()] == [x.dtype(); 2]))
}

/// The widest rows the CubeCL LayerNorm takes: each of a cube's 64 units keeps `⌈width / 64⌉`
/// entries of four rows in registers, sized at compile time. Wider rows run as tensor ops there.
pub const MAX_KERNEL_LAYER_NORM_WIDTH: usize = 2048;

/// Without a GPU backend or flex there is nothing to launch: [`custom_kernels_apply`] is false
/// and none of these is ever called.
#[cfg(not(any(feature = "cube-kernels", feature = "flex-kernels")))]
mod extension {
    use super::{Bool, FloatDType, MaskFlags, PinvInit, RankedSegments, Tensor};
    use crate::attention::landmarks::SegmentRanks;

    const NOT_COMPILED: &str = "custom kernels are not compiled in (no GPU backend feature)";

    pub fn on_cube_device<const D: usize>(_x: &Tensor<D>) -> bool {
        false
    }

    pub fn on_flex_device<const D: usize>(_x: &Tensor<D>) -> bool {
        false
    }

    pub fn is_cube_device(_device: &burn::tensor::Device) -> bool {
        false
    }

    pub fn ranked_segments(
        _mask: &Tensor<2, Bool>,
        _m: usize,
        _dtype: FloatDType,
    ) -> RankedSegments {
        unreachable!("{NOT_COMPILED}")
    }

    pub fn dropout<const D: usize>(_x: Tensor<D>, _prob: f64) -> Tensor<D> {
        unreachable!("{NOT_COMPILED}")
    }

    pub fn gelu<const D: usize>(_x: Tensor<D>) -> Tensor<D> {
        unreachable!("{NOT_COMPILED}")
    }

    pub fn layer_norm<const D: usize>(
        _x: Tensor<D>,
        _gamma: Tensor<1>,
        _beta: Tensor<1>,
        _epsilon: f64,
    ) -> Tensor<D> {
        unreachable!("{NOT_COMPILED}")
    }

    pub fn landmark_values(
        _landmark_queries: &Tensor<4>,
        _keys: &Tensor<4>,
        _values: &Tensor<4>,
        _padding: &MaskFlags,
        _missing: &MaskFlags,
        _masked_score: f32,
        _zero_padded: bool,
    ) -> Tensor<4> {
        unreachable!("{NOT_COMPILED}")
    }

    pub fn pinv(_a: &Tensor<4>, _iterations: usize, _init: PinvInit) -> Tensor<4> {
        unreachable!("{NOT_COMPILED}")
    }

    pub fn landmark_weights(
        _landmark_queries: &Tensor<4>,
        _landmark_keys: &Tensor<4>,
        _landmark_values: &Tensor<4>,
        _missing_queries: &MaskFlags,
        _missing_keys: &MaskFlags,
        _short: Option<(&Tensor<4>, &SegmentRanks)>,
        _iterations: usize,
    ) -> Tensor<4> {
        unreachable!("{NOT_COMPILED}")
    }

    pub fn depthwise_conv(
        _values: &Tensor<4>,
        _taps: &Tensor<4>,
        _padding: &MaskFlags,
    ) -> Tensor<4> {
        unreachable!("{NOT_COMPILED}")
    }

    pub fn segment_mean(_x: &Tensor<4>, _ranks: Option<&SegmentRanks>, _m: usize) -> Tensor<4> {
        unreachable!("{NOT_COMPILED}")
    }

    pub fn landmark_means(
        _q: &Tensor<4>,
        _k: &Tensor<4>,
        _query_ranks: Option<&SegmentRanks>,
        _key_ranks: Option<&SegmentRanks>,
        _m: usize,
        _scale: f32,
    ) -> [Tensor<4>; 3] {
        unreachable!("{NOT_COMPILED}")
    }

    pub fn landmark_attention(
        _queries: &Tensor<4>,
        _landmark_keys: &Tensor<4>,
        _weights: &Tensor<4>,
        _missing: &MaskFlags,
        _query_padding: &MaskFlags,
    ) -> Tensor<4> {
        unreachable!("{NOT_COMPILED}")
    }
}
