//! The backward of the two softmax products on flex, FlashAttention-2 style: the forward saved
//! each row's softmax statistics (max and sum), so a block's probabilities come back from one
//! matrix product and one `exp`, and no `[n, m]` matrix is stored between the passes or formed
//! within one.
//!
//! For `O = softmax(S) X` with `S = Q Kᵀ` and `P` the softmax:
//! `dX = Pᵀ dO`, `dP = dO Xᵀ`, `dS = P ∘ (dP − δ)` with `δ = rowsum(dO ∘ O)`, `dQ = dS K` and
//! `dK = dSᵀ Q`. Masked scores are constants, so their `dS` is zero; a row whose output the
//! forward zeroed (a missing landmark query, a query without any landmark) passes no gradient.

use std::borrow::Cow;

use rayon::prelude::*;

use super::products::{Dims, KEY_BLOCK, QUERY_BLOCK, RowSoftmax, matmul};
use super::rows::{
    all_flagged, fill_columns, fill_flagged_rows, masked_keys_vanish, row_dots, rows_zeroed,
    softmax_backward, softmax_from_stats,
};

/// Query rows per step of `F · W`'s backward: larger than the forward's blocks, since one task
/// runs a whole head here and five matrix products per step want enough rows to amortise.
const ROW_BLOCK: usize = 512;

/// What one product's forward saw and gave, as contiguous row-major slices:
/// `[batch, heads, rows, cols]`.
pub struct Forward<'a> {
    /// The side whose rows are the output's rows (landmark queries for `B · V`).
    pub queries: &'a [f32],
    /// The side the softmax runs over.
    pub keys: &'a [f32],
    /// What the softmax weighs (`V` or `W`).
    pub values: &'a [f32],
    /// The forward's output.
    pub output: &'a [f32],
    /// Each output row's softmax.
    pub row_softmax: &'a [RowSoftmax],
}

/// The gradients of a product's three inputs, shaped like them.
pub struct InputGrads {
    /// Of the queries.
    pub queries: Vec<f32>,
    /// Of the keys.
    pub keys: Vec<f32>,
    /// Of the values.
    pub values: Vec<f32>,
}

impl InputGrads {
    /// Gradients of `batch_heads` `(batch, head)` pairs holding `sizes` elements each (queries,
    /// keys, values), each pair's filled by `fill(bh, queries, keys, values)`, in parallel.
    fn per_head(
        batch_heads: usize,
        sizes: [usize; 3],
        fill: impl Fn(usize, &mut [f32], &mut [f32], &mut [f32]) + Send + Sync,
    ) -> Self {
        let mut grads = InputGrads {
            queries: vec![0.0; batch_heads * sizes[0]],
            keys: vec![0.0; batch_heads * sizes[1]],
            values: vec![0.0; batch_heads * sizes[2]],
        };
        grads
            .queries
            .par_chunks_mut(sizes[0])
            .zip(grads.keys.par_chunks_mut(sizes[1]))
            .zip(grads.values.par_chunks_mut(sizes[2]))
            .enumerate()
            .for_each(|(bh, ((queries, keys), values))| fill(bh, queries, keys, values));
        grads
    }
}

/// Gradients of [`super::products::landmark_values`] for the output gradient `grad`
/// (`[batch, heads, m, dv]`), per `(batch, head)` in blocks of keys. With `zero_padded` the
/// padded keys and values counted as zeros: what they hold never reaches a gradient, and they
/// get zero gradients.
#[allow(clippy::too_many_arguments)]
pub fn landmark_values(
    dims: Dims,
    forward: Forward,
    padding: &[f32],
    missing: &[f32],
    masked_score: f32,
    zero_padded: bool,
    grad: &[f32],
) -> InputGrads {
    let Dims {
        batch,
        heads,
        n,
        m,
        d,
        dv,
    } = dims;
    InputGrads::per_head(
        batch * heads,
        [m * d, n * d, n * dv],
        |bh, d_q, d_k, d_v| {
            let b = bh / heads;
            let q = &forward.queries[bh * m * d..][..m * d];
            let k = &forward.keys[bh * n * d..][..n * d];
            let v = &forward.values[bh * n * dv..][..n * dv];
            let stats = &forward.row_softmax[bh * m..][..m];
            let pad = &padding[b * n..][..n];
            let g = row_gradients(&grad[bh * m * dv..][..m * dv], dv, &missing[b * m..][..m]);
            let delta = row_dots(&g, &forward.output[bh * m * dv..][..m * dv], dv);
            let block = KEY_BLOCK.min(n);
            let chunk = QUERY_BLOCK.min(m);
            let mut probs = vec![0.0f32; chunk * block];
            let mut d_scores = vec![0.0f32; chunk * block];
            for start in (0..n).step_by(KEY_BLOCK) {
                let width = KEY_BLOCK.min(n - start);
                let masked = &pad[start..start + width];
                let k_block = &k[start * d..][..width * d];
                // dQ̃'s product reads the keys; a padded one's dS is 0, and 0 · NaN is NaN. (A
                // block of padding alone never reads them.)
                let k_block = match zero_padded && !all_flagged(masked) {
                    true => rows_zeroed(k_block, d, masked),
                    false => Cow::Borrowed(k_block),
                };
                let k_block: &[f32] = &k_block;
                let v_block = &v[start * dv..][..width * dv];
                let d_k = &mut d_k[start * d..][..width * d];
                let d_v = &mut d_v[start * dv..][..width * dv];
                // In chunks of query rows (one for m ≤ 256), so that exact attention's
                // `[rows, width]` blocks stay in L2.
                for first in (0..m).step_by(QUERY_BLOCK) {
                    let rows = QUERY_BLOCK.min(m - first);
                    let probs = &mut probs[..rows * width];
                    let d_scores = &mut d_scores[..rows * width];
                    let q = &q[first * d..][..rows * d];
                    let g = &g[first * dv..][..rows * dv];
                    // P, padded keys at the score the forward gave them.
                    let padding_only = all_flagged(masked);
                    let stats = &stats[first..first + rows];
                    if padding_only
                        && masked_keys_vanish(stats.iter().map(|row| row.max), masked_score)
                    {
                        // P is below `exp`'s floor (see the forward): no gradient anywhere.
                        continue;
                    }
                    if padding_only {
                        probs.fill(masked_score);
                    } else {
                        matmul(rows, width, d, probs, false, q, (d, 1), k_block, (1, d));
                        fill_columns(probs, width, masked, masked_score);
                    }
                    softmax_from_stats(probs, width, stats);
                    // dV += Pᵀ dO (for padded values that count as zeros, cleared below)
                    if !(padding_only && zero_padded) {
                        matmul(width, dv, rows, d_v, true, probs, (1, width), g, (dv, 1));
                    }
                    if padding_only {
                        // Masked scores are constants: dS is zero, and so are its products.
                        continue;
                    }
                    // dP = dO Vᵀ, then dS = P ∘ (dP − δ); padded columns, whatever their values
                    // hold, are then overwritten.
                    matmul(
                        rows,
                        width,
                        dv,
                        d_scores,
                        false,
                        g,
                        (dv, 1),
                        v_block,
                        (1, dv),
                    );
                    softmax_backward(d_scores, probs, &delta[first..first + rows], width);
                    fill_columns(d_scores, width, masked, 0.0);
                    // dQ̃ += dS K, dK += dSᵀ Q̃
                    let d_q = &mut d_q[first * d..][..rows * d];
                    matmul(
                        rows,
                        d,
                        width,
                        d_q,
                        true,
                        d_scores,
                        (width, 1),
                        k_block,
                        (d, 1),
                    );
                    matmul(width, d, rows, d_k, true, d_scores, (1, width), q, (d, 1));
                }
                if zero_padded {
                    // Exact zeros, whatever the products left there.
                    fill_flagged_rows(d_k, d, masked, 0.0);
                    fill_flagged_rows(d_v, dv, masked, 0.0);
                }
            }
        },
    )
}

/// Gradients of [`super::products::landmark_attention`] for the output gradient `grad`
/// (`[batch, heads, n, dv]`), per `(batch, head)` in blocks of query rows. `zeroed_rows`
/// (`[batch, n]` flags) marks the query rows the forward took as zeros, whatever they held:
/// what they hold never reaches a gradient, they get a zero `dQ`, and a block of them only adds
/// its share to `dW`.
pub fn landmark_attention(
    dims: Dims,
    forward: Forward,
    missing: &[f32],
    zeroed_rows: Option<&[f32]>,
    grad: &[f32],
) -> InputGrads {
    let Dims {
        batch,
        heads,
        n,
        m,
        d,
        dv,
    } = dims;
    InputGrads::per_head(
        batch * heads,
        [n * d, m * d, m * dv],
        |bh, d_q, d_k, d_w| {
            let b = bh / heads;
            let lk = &forward.keys[bh * m * d..][..m * d];
            let w = &forward.values[bh * m * dv..][..m * dv];
            let absent = &missing[b * m..][..m];
            let block = ROW_BLOCK.min(n);
            let mut probs = vec![0.0f32; block * m];
            let mut d_scores = vec![0.0f32; block * m];
            for first in (0..n).step_by(ROW_BLOCK) {
                let rows = ROW_BLOCK.min(n - first);
                let probs = &mut probs[..rows * m];
                let d_scores = &mut d_scores[..rows * m];
                let q = &forward.queries[(bh * n + first) * d..][..rows * d];
                let g = &grad[(bh * n + first) * dv..][..rows * dv];
                let out = &forward.output[(bh * n + first) * dv..][..rows * dv];
                let stats = &forward.row_softmax[bh * n + first..][..rows];
                if zeroed_rows.is_some_and(|flags| all_flagged(&flags[b * n + first..][..rows])) {
                    // Rows of zeros score 0 against every landmark: P is uniform over the
                    // present ones, and with Q = 0 the term dSᵀ Q of dK̃ vanishes.
                    add_uniform_rows(d_w, g, stats, absent, dv);
                    continue;
                }
                let zeroed = zeroed_rows.map(|flags| &flags[b * n + first..][..rows]);
                // dK̃'s product reads the queries, and 0 · NaN is NaN.
                let q = match zeroed {
                    Some(flags) => rows_zeroed(q, d, flags),
                    None => Cow::Borrowed(q),
                };
                let q: &[f32] = &q;
                // P over the landmarks present, zero elsewhere.
                matmul(rows, m, d, probs, false, q, (d, 1), lk, (1, d));
                softmax_from_stats(probs, m, stats);
                fill_columns(probs, m, absent, 0.0);
                // dW += Pᵀ dO
                matmul(m, dv, rows, d_w, true, probs, (1, m), g, (dv, 1));
                // dP = dO Wᵀ, then dS = P ∘ (dP − δ)
                matmul(rows, m, dv, d_scores, false, g, (dv, 1), w, (1, dv));
                softmax_backward(d_scores, probs, &row_dots(g, out, dv), m);
                // dQ = dS K̃, dK̃ += dSᵀ Q
                let d_q = &mut d_q[first * d..][..rows * d];
                matmul(rows, d, m, d_q, false, d_scores, (m, 1), lk, (d, 1));
                matmul(m, d, rows, d_k, true, d_scores, (1, m), q, (d, 1));
                if let Some(flags) = zeroed {
                    fill_flagged_rows(d_q, d, flags, 0.0);
                }
            }
        },
    )
}

/// `dW += Pᵀ dO` for rows whose softmax is uniform over the present landmarks (rows of zeros):
/// each present landmark's row of `d_w` (`[m, dv]`) gains `Σ_i inv_sum_i · dO_i`.
fn add_uniform_rows(
    d_w: &mut [f32],
    grad: &[f32],
    stats: &[RowSoftmax],
    absent: &[f32],
    dv: usize,
) {
    let mut weighted = vec![0.0f32; dv];
    for (row, softmax) in grad.chunks_exact(dv).zip(stats) {
        weighted
            .iter_mut()
            .zip(row)
            .for_each(|(sum, g)| *sum += softmax.inv_sum * g);
    }
    for (d_w, gone) in d_w.chunks_exact_mut(dv).zip(absent) {
        if *gone <= 0.5 {
            d_w.iter_mut().zip(&weighted).for_each(|(x, w)| *x += w);
        }
    }
}

/// The output gradient of one `(batch, head)` with the rows the forward zeroed cleared: their
/// output is a constant.
fn row_gradients(grad: &[f32], width: usize, zeroed: &[f32]) -> Vec<f32> {
    let mut grad = grad.to_vec();
    for (row, flag) in grad.chunks_exact_mut(width).zip(zeroed) {
        if *flag > 0.5 {
            row.fill(0.0);
        }
    }
    grad
}
