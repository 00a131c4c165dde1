//! The backward of the CubeCL softmax products, as tensor ops of the backend below autodiff: Burn's
//! autotuned matmul does the products, and its fusion backend merges the elementwise steps.
//!
//! The softmax products follow FlashAttention-2's backward. With `P = softmax(S)` recomputed from
//! the scores and each row's log-sum-exp `L` that the forward kernel left (`P = exp(S − L)`, no
//! reductions), `O = P V` and `dO` the gradient of `O`:
//!
//! ```text
//! dV = Pᵀ dO,   dP = dO Vᵀ,   D = rowsum(dO ∘ O),   dS = P ∘ (dP − D),
//! dQ = dS K,    dK = dSᵀ Q
//! ```
//!
//! (`Q` already carries the `1/√d` scale.) `P` exists only inside the backward, one stage at a
//! time; between forward and backward only the output and `L` are kept. The pseudo-inverse's
//! backward is its own kernel ([`super::pinv_backward`]), which replays the iteration from `A`
//! and `c`.

use burn::backend::Backend;
use burn::backend::tensor::FloatTensor;
use burn::tensor::Shape;

use crate::kernels::flags::Flags;
use crate::kernels::reference::{dims, fill_keys, fill_rows};

/// What the `F · W` stage keeps: its inputs, the missing-landmark flags, its output and each
/// row's log-sum-exp (`[batch, heads, n, 1]`).
#[derive(Debug, Clone)]
pub struct SavedAttention<B: Backend> {
    pub queries: FloatTensor<B>,
    pub landmark_keys: FloatTensor<B>,
    pub weights: FloatTensor<B>,
    pub missing: Flags<B>,
    pub output: FloatTensor<B>,
    pub log_sum_exp: FloatTensor<B>,
}

/// What the `B · V` stage keeps: its inputs, both masks' flags, the score of a padded key, its
/// output and each row's log-sum-exp (`[batch, heads, m, 1]`).
#[derive(Debug, Clone)]
pub struct SavedValues<B: Backend> {
    pub landmark_queries: FloatTensor<B>,
    pub keys: FloatTensor<B>,
    pub values: FloatTensor<B>,
    pub padding: Flags<B>,
    pub missing: Flags<B>,
    pub masked_score: f32,
    pub output: FloatTensor<B>,
    pub log_sum_exp: FloatTensor<B>,
}

/// What the pseudo-inverse keeps: `A`, `c` (`[batch · heads]`) and the number of iterations.
#[derive(Debug, Clone)]
pub struct SavedPinv<B: Backend> {
    pub a: FloatTensor<B>,
    pub coefficient: FloatTensor<B>,
    pub iterations: usize,
}

/// The gradients of the queries, landmark keys and weights of `softmax(Q K̃ᵀ) W`, missing
/// landmarks at zero weight.
pub fn attention_backward<B: Backend>(
    saved: SavedAttention<B>,
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let SavedAttention {
        queries,
        landmark_keys,
        weights,
        missing,
        output,
        log_sum_exp,
    } = saved;
    let scores = B::float_matmul(queries.clone(), B::float_transpose(landmark_keys.clone()));
    let probabilities = fill_keys::<B>(softmax_from::<B>(scores, log_sum_exp), &missing, 0.0);
    let [score_grad, weights_grad] =
        softmax_product_backward::<B>(probabilities, weights, output, grad);
    [
        B::float_matmul(score_grad.clone(), landmark_keys),
        B::float_matmul(B::float_transpose(score_grad), queries),
        weights_grad,
    ]
}

/// The gradients of the landmark queries, keys and values of `softmax(Q̃ Kᵀ) V`, padded keys at
/// the masked score and the rows of missing landmarks zero.
pub fn values_backward<B: Backend>(
    saved: SavedValues<B>,
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let SavedValues {
        landmark_queries,
        keys,
        values,
        padding,
        missing,
        masked_score,
        output,
        log_sum_exp,
    } = saved;
    // A missing landmark's row was zeroed after the softmax: no gradient reaches its scores.
    let grad = fill_rows::<B>(grad, &missing, 0.0);
    let scores = B::float_matmul(landmark_queries.clone(), B::float_transpose(keys.clone()));
    let scores = fill_keys::<B>(scores, &padding, masked_score);
    let probabilities = softmax_from::<B>(scores, log_sum_exp);
    let [score_grad, values_grad] =
        softmax_product_backward::<B>(probabilities, values, output, grad);
    // A padded key's score is the constant masked score.
    let score_grad = fill_keys::<B>(score_grad, &padding, 0.0);
    [
        B::float_matmul(score_grad.clone(), keys),
        B::float_matmul(B::float_transpose(score_grad), landmark_queries),
        values_grad,
    ]
}

/// `exp(S − L)`, the softmax of each row of `scores` from its log-sum-exp `[.., rows, 1]`.
fn softmax_from<B: Backend>(scores: FloatTensor<B>, log_sum_exp: FloatTensor<B>) -> FloatTensor<B> {
    let shape = Shape::new(dims(&scores));
    B::float_exp(B::float_sub(scores, B::float_expand(log_sum_exp, shape)))
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
