//! The tensor-op body of each backward operation of the extension traits
//! ([`LandmarkSoftmaxOps`](super::extension::LandmarkSoftmaxOps)'s `*_backward`,
//! [`PinvOps::pinv_backward`]), on backend primitives, from what the forward kept. The
//! `Autodiff` implementations over a backend with fused kernels call these operations from their
//! backward; a backend without its own implementation runs these bodies, with Burn's autotuned
//! matmul for the products and, on fusion backends, the elementwise steps merged.
//!
//! The softmax products follow FlashAttention-2's backward. With `P = softmax(S)` recomputed from
//! the scores and each row's statistics that the forward left, its largest score `M` and
//! `L = ln Σ exp(S − M)` (`P = exp(S − M − L)`, no reductions), `O = P V` and `dO` the gradient
//! of `O`:
//!
//! ```text
//! dV = Pᵀ dO,   dP = dO Vᵀ,   D = rowsum(dO ∘ O),   dS = P ∘ (dP − D),
//! dQ = dS K,    dK = dSᵀ Q
//! ```
//!
//! (`Q` already carries the `1/√d` scale.) `P` exists only inside the backward, one stage at a
//! time; between forward and backward only the output, `M` and `L` are kept. The pseudo-inverse
//! replays its iteration from `A` and `c` and walks it back; `W = A⁺ (B V)` from the landmarks
//! rebuilds `A` and `c` and chains the pseudo-inverse's backward between those of the product
//! and of `A`'s softmax.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata, get_or_init_device_settings};
use burn::tensor::{DType, FloatDType, Shape};

use super::extension::PinvOps;
use super::flags::Flags;
use super::reference::{
    as_rows, cast_to, depthwise_options, dims, fill_keys, fill_rows, landmark_matrix,
    norm_coefficient, padded_as_zeros,
};
use crate::attention::pinv::MIN_COEFFICIENT;

/// See [`LandmarkSoftmaxOps::landmark_attention_backward`][attention_backward]: the gradients
/// of the queries, landmark keys and weights of `softmax(Q K̃ᵀ) W`, missing landmarks at zero
/// weight, the query rows that `query_padding` flags taken as zeros (no gradient).
///
/// [attention_backward]: super::extension::LandmarkSoftmaxOps::landmark_attention_backward
#[allow(clippy::too_many_arguments)]
pub fn landmark_attention_backward<B: Backend>(
    queries: FloatTensor<B>,
    landmark_keys: FloatTensor<B>,
    weights: FloatTensor<B>,
    missing: Flags<B>,
    query_padding: Flags<B>,
    output: FloatTensor<B>,
    softmax_statistics: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let queries = fill_rows::<B>(queries, &query_padding, 0.0);
    let scores = B::float_matmul(queries.clone(), B::float_transpose(landmark_keys.clone()));
    let probabilities =
        fill_keys::<B>(softmax_from::<B>(scores, softmax_statistics), &missing, 0.0);
    let [score_grad, weights_grad] =
        softmax_product_backward::<B>(probabilities, weights, output, grad);
    let query_grad = B::float_matmul(score_grad.clone(), landmark_keys);
    (
        fill_rows::<B>(query_grad, &query_padding, 0.0),
        B::float_matmul(B::float_transpose(score_grad), queries),
        weights_grad,
    )
}

/// See [`LandmarkSoftmaxOps::landmark_values_backward`][values_backward]: the gradients of the
/// landmark queries, keys and values of `softmax(Q̃ Kᵀ) V`, padded keys at the masked score (and
/// with `zero_padded` taken as zeros with their values: no gradient) and the rows of missing
/// landmarks zero.
///
/// [values_backward]: super::extension::LandmarkSoftmaxOps::landmark_values_backward
#[allow(clippy::too_many_arguments)]
pub fn landmark_values_backward<B: Backend>(
    landmark_queries: FloatTensor<B>,
    keys: FloatTensor<B>,
    values: FloatTensor<B>,
    padding: Flags<B>,
    missing: Flags<B>,
    masked_score: f32,
    zero_padded: bool,
    output: FloatTensor<B>,
    softmax_statistics: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let [keys, values] = padded_as_zeros::<B, _>([keys, values], &padding, zero_padded);
    // A missing landmark's row was zeroed after the softmax: no gradient reaches its scores.
    let grad = fill_rows::<B>(grad, &missing, 0.0);
    let scores = B::float_matmul(landmark_queries.clone(), B::float_transpose(keys.clone()));
    let scores = fill_keys::<B>(scores, &padding, masked_score);
    let probabilities = softmax_from::<B>(scores, softmax_statistics);
    let [score_grad, values_grad] =
        softmax_product_backward::<B>(probabilities, values, output, grad);
    // A padded key's score is the constant masked score.
    let score_grad = fill_keys::<B>(score_grad, &padding, 0.0);
    let [values_grad] = padded_as_zeros::<B, _>([values_grad], &padding, zero_padded);
    (
        B::float_matmul(score_grad.clone(), keys),
        B::float_matmul(B::float_transpose(score_grad), landmark_queries),
        values_grad,
    )
}

/// `exp((S − max) − ln Σ)`, the softmax of each row of `scores` from its statistics
/// `[.., rows, 2]` (f32: the row's largest score and the logarithm of its sum of exponentials
/// below it): in f32, as the kernels compute it, and returned in the scores' type.
fn softmax_from<B: Backend>(
    scores: FloatTensor<B>,
    softmax_statistics: FloatTensor<B>,
) -> FloatTensor<B> {
    let (shape, dtype) = (Shape::new(dims(&scores)), scores.dtype());
    let [batch, heads, rows, _] = dims(&softmax_statistics);
    let statistic = |i: usize| {
        let column = B::float_slice(
            softmax_statistics.clone(),
            &[
                (0..batch).into(),
                (0..heads).into(),
                (0..rows).into(),
                (i..i + 1).into(),
            ],
        );
        B::float_expand(column, shape.clone())
    };
    let scores = cast_to::<B>(scores, DType::F32);
    let shifted = B::float_sub(B::float_sub(scores, statistic(0)), statistic(1));
    cast_to::<B>(B::float_exp(shifted), dtype)
}

/// For `O = P V` with `P` a row softmax of scores `S`: the gradients of `S` and of `V`.
fn softmax_product_backward<B: Backend>(
    probabilities: FloatTensor<B>,
    values: FloatTensor<B>,
    output: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 2] {
    let values_grad = B::float_matmul(B::float_transpose(probabilities.clone()), grad.clone());
    let probability_grad = B::float_matmul(grad.clone(), B::float_transpose(values));
    // D = rowsum(dO ∘ O) = rowsum(P ∘ dP), one per row.
    let row_dot = B::float_sum_dim(B::float_mul(grad, output), 3);
    let shape = Shape::new(dims(&probability_grad));
    let score_grad = B::float_mul(
        probabilities,
        B::float_sub(probability_grad, B::float_expand(row_dot, shape)),
    );
    [score_grad, values_grad]
}

/// See [`PinvOps::pinv_backward`]: the gradients of `A` and `c` of the pseudo-inverse
/// iteration for the gradient `grad` of its result; the iterates are replayed from
/// `Z₀ = Aᵀ / c`, then each iteration walked back (`cube/pinv_backward.rs` has the steps).
pub fn pinv_backward<B: Backend>(
    a: FloatTensor<B>,
    coefficient: FloatTensor<B>,
    grad: FloatTensor<B>,
    iterations: usize,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [batch, heads, m, _] = dims(&a);
    let c = B::float_expand(
        B::float_reshape(coefficient, Shape::new([batch, heads, 1, 1])),
        Shape::new([batch, heads, m, m]),
    );
    let scaled = |x: FloatTensor<B>, factor: f32| B::float_mul_scalar(x, factor.into());
    let product = |x: &FloatTensor<B>, y: &FloatTensor<B>| B::float_matmul(x.clone(), y.clone());
    let transpose = |x: &FloatTensor<B>| B::float_transpose(x.clone());
    // P = A Z, T = 7P − P P, U = 15P − P T of the iteration that starts from `z`.
    let stages = |z: &FloatTensor<B>| {
        let p = product(&a, z);
        let t = B::float_sub(scaled(p.clone(), 7.0), product(&p, &p));
        let u = B::float_sub(scaled(p.clone(), 15.0), product(&p, &t));
        (p, t, u)
    };

    // Each iteration's Z, P, T and U, replayed from Z₀ = Aᵀ / c.
    let z0 = B::float_div(transpose(&a), c.clone());
    let mut steps: Vec<[FloatTensor<B>; 4]> = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let z = match steps.last() {
            None => z0.clone(),
            Some([z, _, _, u]) => {
                scaled(B::float_sub(scaled(z.clone(), 13.0), product(z, u)), 0.25)
            }
        };
        let (p, t, u) = stages(&z);
        steps.push([z, p, t, u]);
    }
    // Walked back: `z_grad` becomes the gradient of each earlier Z, down to Z₀.
    let mut a_grad_terms = Vec::with_capacity(iterations);
    let mut z_grad = grad;
    for [z, p, t, u] in steps.iter().rev() {
        let g = z_grad;
        // dZ = ¼ (13G − G Uᵀ), dU = −¼ Zᵀ G, dT = −Pᵀ dU
        let dz = scaled(
            B::float_sub(scaled(g.clone(), 13.0), product(&g, &transpose(u))),
            0.25,
        );
        let du = scaled(product(&transpose(z), &g), -0.25);
        let dt = B::float_neg(product(&transpose(p), &du));
        // dP = 15 dU − dU Tᵀ + 7 dT − dT Pᵀ − Pᵀ dT
        let dp = B::float_sub(
            B::float_add(scaled(du.clone(), 15.0), scaled(dt.clone(), 7.0)),
            B::float_add(
                B::float_add(product(&du, &transpose(t)), product(&dt, &transpose(p))),
                product(&transpose(p), &dt),
            ),
        );
        // P = A Z: dA += dP Zᵀ, dZ += Aᵀ dP.
        a_grad_terms.push(product(&dp, &transpose(z)));
        z_grad = B::float_add(dz, product(&transpose(&a), &dp));
    }
    // Z₀ = Aᵀ / c: dA += dZ₀ᵀ / c, dc = −Σ dZ₀ ∘ Z₀ / c.
    let a_grad = a_grad_terms
        .into_iter()
        .fold(B::float_div(transpose(&z_grad), c.clone()), B::float_add);
    let c_grad = B::float_neg(B::float_sum_dim(
        B::float_sum_dim(B::float_div(B::float_mul(z_grad, z0), c), 3),
        2,
    ));
    (
        a_grad,
        B::float_reshape(c_grad, Shape::new([batch * heads])),
    )
}

/// The first three gradients of [`PinvOps::landmark_weights_backward`], for no short sequence:
/// those of the landmark queries, landmark keys and `B V` of `W = A⁺ (B V)` for the gradient
/// `grad` of `W`. The coefficient's gradient
/// reaches `A` through the column that gives `c = ‖A‖₁` (every such column, should two tie),
/// unless `c` sits at its floor.
pub fn landmark_weights_backward<B: PinvOps>(
    landmark_queries: FloatTensor<B>,
    landmark_keys: FloatTensor<B>,
    landmark_values: FloatTensor<B>,
    missing_queries: Flags<B>,
    missing_keys: Flags<B>,
    iterations: usize,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let a = landmark_matrix::<B>(
        landmark_queries.clone(),
        landmark_keys.clone(),
        &missing_queries,
        &missing_keys,
    );
    let [batch, heads, m, _] = dims(&a);
    let coefficient = norm_coefficient::<B>(&a);
    let product = |x: FloatTensor<B>, y: FloatTensor<B>| B::float_matmul(x, y);
    let transpose = |x: FloatTensor<B>| B::float_transpose(x);

    // W = Z (B V)
    let z = B::pinv(a.clone(), coefficient.clone(), iterations);
    let values_grad = product(transpose(z), grad.clone());
    let z_grad = product(grad, transpose(landmark_values));
    let (a_grad, c_grad) = B::pinv_backward(a.clone(), coefficient, z_grad, iterations);

    // c = max over columns of the column sums, clamped: dc reaches every entry of that column.
    let device = a.device();
    let settings = get_or_init_device_settings::<B>(&device);
    let float = FloatDType::from(a.dtype());
    let sums = B::float_sum_dim(a.clone(), 2); // [batch, heads, 1, m]
    let largest = B::float_max_dim(sums.clone(), 3); // [batch, heads, 1, 1]
    let column = B::bool_into_float(
        B::float_equal(
            sums,
            B::float_expand(largest.clone(), Shape::new([batch, heads, 1, m])),
            settings.bool_dtype,
        ),
        float,
    );
    let above_floor = B::bool_into_float(
        B::float_greater_elem(largest, MIN_COEFFICIENT.into(), settings.bool_dtype),
        float,
    );
    let c_grad = B::float_mul(
        B::float_reshape(c_grad, Shape::new([batch, heads, 1, 1])),
        above_floor,
    );
    let column_grad = B::float_mul(
        column,
        B::float_expand(c_grad, Shape::new([batch, heads, 1, m])),
    );
    let a_grad = B::float_add(
        a_grad,
        B::float_expand(column_grad, Shape::new([batch, heads, m, m])),
    );

    // A = softmax(S), masked entries zero in A: dS = A ∘ (dA − rowsum(dA ∘ A)).
    let row_dot = B::float_sum_dim(B::float_mul(a_grad.clone(), a.clone()), 3);
    let score_grad = B::float_mul(
        a.clone(),
        B::float_sub(
            a_grad,
            B::float_expand(row_dot, Shape::new([batch, heads, m, m])),
        ),
    );
    (
        product(score_grad.clone(), landmark_keys),
        product(transpose(score_grad), landmark_queries),
        values_grad,
    )
}

#[cfg(all(test, feature = "flex", feature = "autodiff"))]
mod tests {
    use burn::backend::Dispatch;
    use burn::tensor::{Bool, Device, Distribution, Tensor, TensorData};

    use super::*;
    use crate::PinvInit;
    use crate::attention::iterative_pinv;
    use crate::attention::mask::MASKED_SCORE;
    use crate::attention::softmax_kernels::kernel_a;

    fn host(t: Tensor<4>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec().unwrap()
    }

    /// The largest difference relative to the largest entry of `expected`.
    fn relative_diff(got: &[f32], expected: &[f32]) -> f32 {
        let scale = expected.iter().fold(1e-12f32, |s, x| s.max(x.abs()));
        let diff = got
            .iter()
            .zip(expected)
            .fold(0.0f32, |d, (g, e)| d.max((g - e).abs()));
        diff / scale
    }

    /// The tensor-op body of `W`'s backward, which the CubeCL kernel replaces, against autodiff
    /// through `A`'s masked softmax, the exact coefficient, the iteration and the product.
    #[test]
    fn the_weights_backward_body_matches_autodiff_through_the_forward() {
        let device = Device::flex();
        let [batch, heads, m, d, d_v] = [2, 2, 6, 4, 3];
        let random = |columns, std| {
            Tensor::<4>::random(
                [batch, heads, m, columns],
                Distribution::Normal(0.0, std),
                &device,
            )
        };
        let (q, k, v, probe) = (
            random(d, 0.8),
            random(d, 0.8),
            random(d_v, 1.0),
            random(d_v, 1.0),
        );
        // Sequence 1 misses landmarks 1 and 4.
        let missing: Vec<bool> = (0..batch * m).map(|i| i / m == 1 && i % 3 == 1).collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(missing, [batch, m]), &device);
        for iterations in [0, 2, 6] {
            let flags = || Flags::Present(mask.clone().float().into_dispatch());
            let (q_grad, k_grad, v_grad) = landmark_weights_backward::<Dispatch>(
                q.clone().into_dispatch(),
                k.clone().into_dispatch(),
                v.clone().into_dispatch(),
                flags(),
                flags(),
                iterations,
                probe.clone().into_dispatch(),
            );

            let tracked = device.clone().autodiff();
            let on_tracked = |x: &Tensor<4>| Tensor::<4>::from_data(x.to_data(), &tracked);
            let [tq, tk, tv] = [&q, &k, &v].map(|x| on_tracked(x).require_grad());
            let tracked_mask = Tensor::<2, Bool>::from_data(mask.to_data(), &tracked);
            let a = kernel_a(
                tq.clone(),
                tk.clone(),
                Some(&tracked_mask),
                Some(&tracked_mask),
                MASKED_SCORE,
            );
            let w = iterative_pinv(a, iterations, PinvInit::Exact).matmul(tv.clone());
            let grads = (w * on_tracked(&probe)).sum().backward();
            for (name, got, x) in [("Q̃", q_grad, &tq), ("K̃", k_grad, &tk), ("B V", v_grad, &tv)]
            {
                let expected = host(x.grad(&grads).unwrap());
                let diff = relative_diff(&host(Tensor::from_dispatch(got)), &expected);
                assert!(diff < 1e-4, "{iterations} iterations, {name}: {diff}");
            }
        }
    }
}

/// See [`LayerNormOps::layer_norm_backward`][layer_norm_backward]: with `x̂` recomputed from
/// the statistics and `g = dy ∘ γ`, `dx = (g − mean(g) − x̂ ∘ mean(g ∘ x̂)) / √(var + ε)`,
/// `dγ = Σ_rows dy ∘ x̂`, `dβ = Σ_rows dy`, in f32 and returned in the inputs' types.
///
/// [layer_norm_backward]: super::extension::LayerNormOps::layer_norm_backward
#[cfg_attr(
    not(all(feature = "autodiff", feature = "cube-kernels")),
    allow(dead_code)
)]
pub fn layer_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    statistics: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (shape, dtype, gamma_dtype) = (x.shape(), x.dtype(), gamma.dtype());
    let (x, [rows, d]) = as_rows::<B>(x);
    let (grad, _) = as_rows::<B>(grad);
    let row_shape = Shape::new([rows, d]);
    let per_row = |t: FloatTensor<B>| B::float_expand(t, row_shape.clone());
    let statistic =
        |i: usize| B::float_slice(statistics.clone(), &[(0..rows).into(), (i..i + 1).into()]);
    let (mean, inv_std) = (statistic(0), statistic(1));
    let normed = B::float_mul(B::float_sub(x, per_row(mean)), per_row(inv_std.clone()));
    let gamma = B::float_reshape(cast_to::<B>(gamma, DType::F32), Shape::new([1, d]));
    let scaled = B::float_mul(grad.clone(), B::float_expand(gamma, row_shape.clone()));
    let mean_g = B::float_mean_dim(scaled.clone(), 1);
    let mean_gh = B::float_mean_dim(B::float_mul(scaled.clone(), normed.clone()), 1);
    let centred = B::float_sub(
        B::float_sub(scaled, per_row(mean_g)),
        B::float_mul(normed.clone(), per_row(mean_gh)),
    );
    let dx = B::float_mul(centred, per_row(inv_std));
    let column_sum = |t: FloatTensor<B>| {
        let sum = B::float_reshape(B::float_sum_dim(t, 0), Shape::new([d]));
        cast_to::<B>(sum, gamma_dtype)
    };
    let d_gamma = column_sum(B::float_mul(grad.clone(), normed));
    let d_beta = column_sum(grad);
    (
        cast_to::<B>(B::float_reshape(dx, shape), dtype),
        d_gamma,
        d_beta,
    )
}

/// See [`DepthwiseConvOps::depthwise_conv_backward`][conv_backward]: Burn's backward ops of its
/// grouped `Conv2d`, the padded rows zeroed in the values and in their gradient.
///
/// [conv_backward]: super::extension::DepthwiseConvOps::depthwise_conv_backward
#[cfg_attr(
    not(all(feature = "autodiff", feature = "cube-kernels")),
    allow(dead_code)
)]
pub fn depthwise_conv_backward<B: Backend>(
    values: FloatTensor<B>,
    taps: FloatTensor<B>,
    padding: Flags<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let options = depthwise_options::<B>(&taps);
    let values = fill_rows::<B>(values, &padding, 0.0);
    let d_values =
        B::conv2d_x_backward(values.clone(), taps.clone(), grad.clone(), options.clone());
    let d_taps = B::conv2d_weight_backward(values, taps, grad, options);
    (fill_rows::<B>(d_values, &padding, 0.0), d_taps)
}
