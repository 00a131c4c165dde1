//! The functional core on `[batch, heads, n, head_dim]` tensors: `F · A⁺ · (B · V)`.
//!
//! For users who bring their own projections. [`NystromAttention`](super::NystromAttention)
//! calls [`nystrom_attention`] after projecting and splitting heads.

use burn::config::Config;
use burn::tensor::{Bool, FloatDType, Int, Tensor};

use super::config::MaskPolicy;
use super::exact::exact_attention;
use super::landmarks::Segments;
use super::mask::{MASKED_SCORE, PaddingMasks, finite_min, zero_rows};
use super::pinv::{PinvInit, iterative_pinv};
use super::shape_check::expect_shape;
use super::softmax_kernels::{kernel_a, kernel_b, kernel_f};
use crate::kernels::{self, MaskFlags};

/// Options of [`nystrom_attention`]: the approximation and how it runs. What to compute for one
/// call (masks, the kernels for inspection) goes in [`NystromHeadsInput`].
#[derive(Config, Debug, PartialEq)]
pub struct NystromOptions {
    /// Number of landmarks `m`. Default: 64.
    #[config(default = 64)]
    pub num_landmarks: usize,
    /// Iterations of the pseudo-inverse. Default: 6.
    #[config(default = 6)]
    pub pinv_iterations: usize,
    /// Initialisation of the pseudo-inverse. Default: [`PinvInit::Exact`].
    #[config(default = "PinvInit::Exact")]
    pub pinv_init: PinvInit,
    /// How the padding mask enters the landmarks. Default: [`MaskPolicy::LeakFree`].
    #[config(default = "MaskPolicy::LeakFree")]
    pub mask_policy: MaskPolicy,
    /// Score given to masked entries before each softmax, like burn-nn's `min_float`; clamped
    /// to the lowest finite value of f32, in which the softmaxes run. Default: -1e9.
    #[config(default = "MASKED_SCORE")]
    pub min_float: f64,
    /// A runtime switch, not part of the model: run the custom kernels (CubeCL, fused flex) where
    /// they apply (see [`crate::kernels`]); `false` keeps the tensor-op stages everywhere. Both
    /// compute the same maths to float rounding. Default: true.
    #[config(default = true)]
    pub custom_kernels: bool,
}

/// Input of [`nystrom_attention`]: per-head queries, keys and values with their padding masks,
/// built like [`NystromInput`](super::NystromInput).
#[derive(Debug, Clone)]
pub struct NystromHeadsInput {
    pub(crate) q: Tensor<4>,
    pub(crate) k: Tensor<4>,
    pub(crate) v: Tensor<4>,
    pub(crate) padding: PaddingMasks,
    pub(crate) return_kernels: bool,
}

impl NystromHeadsInput {
    /// Attention of `q` `[batch, heads, n_q, d]` over `k` `[batch, heads, n_k, d]` and `v`
    /// `[batch, heads, n_k, d_v]`. With one tensor for all three roles the call is
    /// self-attention, and [`mask_pad`](Self::mask_pad) masks the queries too; prefer
    /// [`self_attention`](Self::self_attention) then.
    pub fn new(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Self {
        Self {
            q,
            k,
            v,
            padding: PaddingMasks::default(),
            return_kernels: false,
        }
    }

    /// Self-attention: `q`, `k` and `v` are projections of the same sequence, so
    /// [`mask_pad`](Self::mask_pad) masks the queries too.
    pub fn self_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Self {
        let mut input = Self::new(q, k, v);
        input.padding.self_attention = true;
        input
    }

    /// Registers the padding mask of the keys and values, `[batch, n_k]`, `true` at padded
    /// positions (and of the queries in self-attention).
    pub fn mask_pad(mut self, mask_pad: Tensor<2, Bool>) -> Self {
        self.padding.mask_pad = Some(mask_pad);
        self
    }

    /// Registers the padding mask of the queries in cross-attention, `[batch, n_q]`, `true` at
    /// padded positions. Without it every query is valid.
    pub fn mask_pad_query(mut self, mask_pad_query: Tensor<2, Bool>) -> Self {
        self.padding.mask_pad_query = Some(mask_pad_query);
        self
    }

    /// Asks for `F`, `A`, `A⁺` and `B` in the output (see [`NystromAttentionOutput::kernels`]).
    pub fn return_kernels(mut self) -> Self {
        self.return_kernels = true;
        self
    }
}

/// The three factors of the Nyström approximation, for inspection.
#[derive(Debug, Clone)]
pub struct NystromKernels {
    /// `F = softmax(Q K̃ᵀ)`, `[batch, heads, n_q, m]`.
    pub f: Tensor<4>,
    /// `A = softmax(Q̃ K̃ᵀ)`, the landmarks' own kernel, `[batch, heads, m, m]`.
    pub a: Tensor<4>,
    /// `A⁺`, the iterative pseudo-inverse of `A`, `[batch, heads, m, m]`.
    pub a_pinv: Tensor<4>,
    /// `B = softmax(Q̃ Kᵀ)`, `[batch, heads, m, n_k]`.
    pub b: Tensor<4>,
}

/// Output of [`nystrom_attention`].
#[derive(Debug, Clone)]
pub struct NystromAttentionOutput {
    /// The attention context, `[batch, heads, n_q, d_v]`.
    pub context: Tensor<4>,
    /// The kernels, when [`NystromHeadsInput::return_kernels`] asked for them and the Nyström
    /// path ran. `None` on the exact path, taken when `n_k ≤ num_landmarks`, where there is no
    /// approximation to inspect.
    pub kernels: Option<NystromKernels>,
}

/// Nyström attention of the queries over the keys and values of `input`.
///
/// When `n_k ≤ num_landmarks` the approximation has nothing to save and exact softmax attention
/// is returned. Otherwise the products are associated as `F · (A⁺ · (B · V))`: no `n_q × n_k`
/// matrix is formed, time is `O((n_q + n_k)·m·d + m³)` and memory `O((n_q + n_k)·m)`.
///
/// Under [`MaskPolicy::LeakFree`] a sequence's output at its valid positions does not depend on
/// the batch it comes in: its segments are cut over its own valid tokens, padded rows count as
/// zeros in every product (so NaN or infinity in the padding cannot leak, and they get no
/// gradient; the custom kernels never use them, the tensor-op path zeroes them first), and a
/// sequence with at most `num_landmarks` valid keys gets exact softmax attention, as it would
/// alone. [`PinvInit::Original`] takes its scale from the whole batch and so is not invariant.
///
/// # Shapes
///
/// - q: `[batch, heads, n_q, d]`, k: `[batch, heads, n_k, d]`, v: `[batch, heads, n_k, d_v]`
/// - mask_pad: `[batch, n_k]`, mask_pad_query: `[batch, n_q]` (`true` = padding)
/// - output context: `[batch, heads, n_q, d_v]`
///
/// # Panics
///
/// Panics, naming the argument, if the shapes disagree, and if `num_landmarks` is 0.
pub fn nystrom_attention(
    input: NystromHeadsInput,
    options: &NystromOptions,
) -> NystromAttentionOutput {
    let mask_pad = input.padding.mask_pad.clone();
    let padding_flags = MaskFlags::new(mask_pad.as_ref(), FloatDType::from(input.q.dtype()));
    nystrom_attention_with_flags(input, options, &padding_flags)
}

/// [`nystrom_attention`] with the flags of `mask_pad` made by the caller, who shares them (with
/// the skip convolution).
pub(crate) fn nystrom_attention_with_flags(
    input: NystromHeadsInput,
    options: &NystromOptions,
    padding_flags: &MaskFlags,
) -> NystromAttentionOutput {
    check_shapes(&input);
    assert!(
        options.num_landmarks > 0,
        "nystrom_attention: num_landmarks must be at least 1"
    );
    let NystromHeadsInput {
        q,
        k,
        v,
        padding,
        return_kernels,
    } = input;
    let [_, _, n_q, d] = q.dims();
    let [_, _, n_k, _] = k.dims();
    let m = options.num_landmarks;
    if n_k <= m {
        return NystromAttentionOutput {
            context: exact_attention(
                q,
                k,
                v,
                &padding,
                options.mask_policy,
                options.custom_kernels,
            ),
            kernels: None,
        };
    }

    let mask_keys = padding.mask_pad.clone();
    let mask_queries = padding.queries().cloned();
    let leak_free = options.mask_policy == MaskPolicy::LeakFree;
    // The custom stages take padded rows as zeros (nothing they hold reaches a result), which
    // saves zeroing them: three passes over Q, K and V forward, three backward.
    let kernels_take_padding = leak_free
        && options.custom_kernels
        && !return_kernels
        && kernels::kernels_take_padding(&q, &k, &v);
    let (q, k, v) = match leak_free && !kernels_take_padding {
        // Select, not multiply: 0 · NaN is NaN.
        true => (
            zero_rows(q, mask_queries.as_ref()),
            zero_rows(k, mask_keys.as_ref()),
            zero_rows(v, mask_keys.as_ref()),
        ),
        // HF transformers averages the padding into the landmarks as it is.
        false => (q, k, v),
    };

    let dtype = FloatDType::from(q.dtype());
    let device = q.device();
    let [batch, ..] = q.dims();
    // The mask the landmarks see. Fewer queries than landmarks (cross-attention) leave segments
    // empty, which only the masked segmentation reports as missing.
    let landmark_mask = |mask: Option<Tensor<2, Bool>>, n: usize| {
        mask.filter(|_| leak_free)
            .or_else(|| (n < m).then(|| Tensor::<2, Int>::zeros([batch, n], &device).bool()))
    };
    let key_segments = Segments::new_with_kernels(
        n_k,
        m,
        landmark_mask(mask_keys.clone(), n_k).as_ref(),
        dtype,
        &device,
        options.custom_kernels,
    );
    let same_segments =
        padding.self_attention || (n_q == n_k && mask_queries.is_none() && mask_keys.is_none());
    let query_segments = match same_segments {
        true => key_segments.clone(),
        false => Segments::new_with_kernels(
            n_q,
            m,
            landmark_mask(mask_queries.clone(), n_q).as_ref(),
            dtype,
            &device,
            options.custom_kernels,
        ),
    };
    let missing_queries = query_segments.missing();
    let missing_keys = key_segments.missing();
    let min_float = finite_min(options.min_float, FloatDType::F32);

    // Every score matrix carries the usual 1/√d. Segment means are linear, so the factor can
    // sit on the small landmark side of each product (Q K̃ᵀ/√d = Q (K̃/√d)ᵀ, and likewise for
    // Q̃ Kᵀ and Q̃ K̃ᵀ): the [n, d] queries and keys are never rescaled, which saves two full
    // passes over them and their allocations.
    let scale = (d as f64).powf(-0.5);
    let [landmark_queries, scaled_queries, scaled_keys] = scaled_landmarks(
        &q,
        &k,
        [&query_segments, &key_segments],
        scale,
        options.custom_kernels,
    );
    let a = || {
        kernel_a(
            landmark_queries.clone(),
            scaled_keys.clone(),
            missing_queries,
            missing_keys,
            min_float,
        )
    };

    // Returning the kernels needs `F` and `B` themselves, which the custom kernels never form.
    // `None` where they do not apply: another backend or dtype, or head sizes past
    // `kernels::MAX_KERNEL_HEAD_DIM` on a CubeCL device (then `F · W` does not apply either).
    // Each mask becomes flags once for all the stages that take it; in self-attention the
    // queries' missing landmarks are the keys'.
    let missing_key_flags = MaskFlags::new(missing_keys, dtype);
    let missing_query_flags = (!same_segments).then(|| MaskFlags::new(missing_queries, dtype));
    let missing_query_flags = missing_query_flags.as_ref().unwrap_or(&missing_key_flags);
    // The padded queries that `F · W` takes as zeros: in self-attention the keys' padding.
    let own_query_padding =
        (!padding.self_attention).then(|| MaskFlags::new(mask_queries.as_ref(), dtype));
    let unmasked = MaskFlags::new(None, dtype);
    let query_padding = match kernels_take_padding {
        true => own_query_padding.as_ref().unwrap_or(padding_flags),
        false => &unmasked,
    };
    // The segments kernel wrote its mask and missing segments as flags too, sparing their
    // conversions. Its mask is the padding only under the leak-free policy.
    if let Some([padding, missing]) = key_segments.flags() {
        if leak_free {
            padding_flags.offer(padding);
        }
        missing_key_flags.offer(missing);
    }
    if let (false, Some([padding, missing])) = (same_segments, query_segments.flags()) {
        if let (true, Some(own)) = (leak_free, &own_query_padding) {
            own.offer(padding);
        }
        missing_query_flags.offer(missing);
    }
    let fused_values = (options.custom_kernels && !return_kernels)
        .then(|| {
            kernels::landmark_values_with_flags(
                &scaled_queries,
                &k,
                &v,
                padding_flags,
                missing_query_flags,
                min_float as f32,
                kernels_take_padding,
            )
        })
        .flatten();
    if let Some(values) = fused_values {
        let (iterations, init) = (options.pinv_iterations, options.pinv_init);
        // The weights kernel takes the short sequences' rows as well, sparing a launch for the
        // values' means and one for the selection.
        let short = key_segments
            .short()
            .and_then(|_| key_segments.ranks())
            .map(|ranks| (&v, ranks));
        let weights = kernels::landmark_weights_with_flags(
            &landmark_queries,
            &scaled_keys,
            &values,
            missing_query_flags,
            &missing_key_flags,
            short,
            iterations,
            init,
        )
        .unwrap_or_else(|| {
            let a = a();
            // The separate pseudo-inverse stage: flex, PinvInit::Original, or past
            // kernels::MAX_PINV_MATRICES matrices (then as tensor ops).
            let a_pinv = kernels::fused_pinv(&a, iterations, init)
                .unwrap_or_else(|| iterative_pinv(a, iterations, init));
            exact_for_short(
                a_pinv.matmul(values),
                &key_segments,
                &v,
                options.custom_kernels,
            )
        });
        let context = kernels::landmark_attention_with_flags(
            &q,
            &scaled_keys,
            &weights,
            &missing_key_flags,
            query_padding,
        )
        .expect(APPLIES);
        return NystromAttentionOutput {
            context,
            kernels: None,
        };
    }

    let a = a();
    let b = kernel_b(
        scaled_queries,
        k,
        mask_keys.as_ref(),
        missing_queries,
        min_float,
    );
    let a_pinv = iterative_pinv(a.clone(), options.pinv_iterations, options.pinv_init);
    let f = kernel_f(q, scaled_keys, missing_keys, min_float);
    let weights = exact_for_short(
        a_pinv.clone().matmul(b.clone().matmul(v.clone())),
        &key_segments,
        &v,
        options.custom_kernels,
    );
    NystromAttentionOutput {
        context: f.clone().matmul(weights),
        kernels: return_kernels.then(|| NystromKernels { f, a, a_pinv, b }),
    }
}

const APPLIES: &str = "F · W takes what B · V took: the same device, dtype and head sizes";

/// `[Q̃, Q̃ · scale, K̃ · scale]`: the landmark queries, and both landmarks scaled as the softmax
/// products take them; one kernel where the CubeCL kernels apply, else the segment means (fused
/// on flex) and two scalings.
fn scaled_landmarks(
    q: &Tensor<4>,
    k: &Tensor<4>,
    [query_segments, key_segments]: [&Segments; 2],
    scale: f64,
    custom_kernels: bool,
) -> [Tensor<4>; 3] {
    let fused = custom_kernels
        .then(|| kernels::fused_landmark_means(q, k, [query_segments, key_segments], scale))
        .flatten();
    fused.unwrap_or_else(|| {
        let landmark_queries = query_segments.mean_with_kernels(q.clone(), custom_kernels);
        let scaled_keys = key_segments
            .mean_with_kernels(k.clone(), custom_kernels)
            .mul_scalar(scale);
        let scaled_queries = landmark_queries.clone().mul_scalar(scale);
        [landmark_queries, scaled_queries, scaled_keys]
    })
}

/// `W = A⁺ (B V)`, `[batch, heads, m, d_v]`, with the rows of each sequence of at most `m` valid
/// keys replaced by its values themselves (their segment means, one key per segment): then
/// `F · W = softmax(Q Kᵀ/√d) V` exactly, as for that sequence alone, where `n_k ≤ m` takes the
/// exact path.
fn exact_for_short(
    weights: Tensor<4>,
    key_segments: &Segments,
    v: &Tensor<4>,
    custom_kernels: bool,
) -> Tensor<4> {
    match key_segments.short() {
        Some(short) => {
            let dims = weights.dims();
            let short = short.clone().reshape([dims[0], 1, 1, 1]).expand(dims);
            weights.mask_where(
                short,
                key_segments.mean_with_kernels(v.clone(), custom_kernels),
            )
        }
        None => weights,
    }
}

fn check_shapes(input: &NystromHeadsInput) {
    let [batch, heads, n_q, d] = input.q.dims();
    let [_, _, n_k, _] = input.k.dims();
    let op = "nystrom_attention";
    expect_shape(op, "k", &input.k.dims(), &[batch, heads, n_k, d]);
    expect_shape(op, "v", &input.v.dims(), &[batch, heads, n_k]);
    input.padding.check(op, batch, n_q, n_k);
    assert!(
        !(input.padding.self_attention && n_q != n_k),
        "nystrom_attention: self-attention needs q and k of one length, got n_q = {n_q}, n_k = {n_k}"
    );
}
