//! The two softmax products of the Nyström forward on flex, streamed so that neither `[n, m]`
//! matrix exists: blocks of scores from gemm, the softmax on each block with a vectorised `exp`,
//! and the block's product accumulated with gemm. Each `(batch, head)` (and, for `F · W`, each
//! block of query rows) is one rayon task; the matrix products inside run single-threaded.
//!
//! Inputs are contiguous row-major `f32` slices: `[batch, heads, rows, cols]`, masks as
//! `[batch, n]` flags (`1.0` at `true`).

use std::borrow::Cow;

use rayon::prelude::*;

use super::rows::{
    all_flagged, fill_columns, fill_flagged_rows, fold_block, masked_keys_vanish, rows_zeroed,
    softmax_present,
};

/// Keys per block of `B · V`: the `[m, KEY_BLOCK]` scores stay in L2 for m ≤ 256.
pub(super) const KEY_BLOCK: usize = 256;
/// Query rows per task of `F · W`.
pub(super) const ROW_BLOCK: usize = 128;
/// Query rows per task of `B · V`: all m landmark queries at once for m ≤ 256; exact attention
/// (every query a row) in blocks whose `[rows, KEY_BLOCK]` scores stay in L2.
pub(super) const QUERY_BLOCK: usize = 256;

/// `dst [rows, cols] (+)= lhs [rows, depth] · rhs [depth, cols]`, each given by its row and
/// column strides (in elements).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    rows: usize,
    cols: usize,
    depth: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(dst.len() >= rows * cols, "matmul: destination too small");
    if depth > 0 {
        let (lhs_last, rhs_last) = (
            (rows - 1) * lhs_rs + (depth - 1) * lhs_cs,
            (depth - 1) * rhs_rs + (cols - 1) * rhs_cs,
        );
        assert!(
            lhs_last < lhs.len() && rhs_last < rhs.len(),
            "matmul: operand too small"
        );
    }
    // SAFETY: the asserts above keep every element gemm touches inside the slices.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            depth,
            dst.as_mut_ptr(),
            1,
            cols as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// One output row's softmax, kept for the backward: the row's weights are
/// `exp(score − max) · inv_sum`. (Not as one log-sum-exp: beside a masked score of `-1e9` the
/// logarithm of the sum vanishes in f32 rounding.)
#[derive(Debug, Clone, Copy, Default)]
pub struct RowSoftmax {
    /// The largest score of the row.
    pub max: f32,
    /// `1 / Σ exp(score − max)`; 0 for a row the forward zeroed for want of keys.
    pub inv_sum: f32,
}

/// The shapes of one call, per `(batch, head)`.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// Batch size.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Rows of the long side (`n`).
    pub n: usize,
    /// Landmarks.
    pub m: usize,
    /// Head size of queries and keys.
    pub d: usize,
    /// Head size of the values.
    pub dv: usize,
}

/// `softmax(Q̃ Kᵀ) · V` per `(batch, head)` and block of query rows: `[batch, heads, m, dv]`,
/// and each row's softmax, `[batch, heads, m]`, which the backward needs. Padded keys get the
/// score `masked_score`; rows of missing landmark queries are zero. With `zero_padded` the
/// padded values count as zeros, whatever they hold (the leak-free policy's padding), else as
/// they are (HF's). With every query as a "landmark" (`m = n_q`, nothing missing) this is
/// exact attention, FlashAttention-style.
#[allow(clippy::too_many_arguments)]
pub fn landmark_values(
    dims: Dims,
    landmark_queries: &[f32],
    keys: &[f32],
    values: &[f32],
    padding: &[f32],
    missing: &[f32],
    masked_score: f32,
    zero_padded: bool,
) -> (Vec<f32>, Vec<RowSoftmax>) {
    let Dims {
        heads, n, m, d, dv, ..
    } = dims;
    let mut out = vec![0.0f32; dims.batch * heads * m * dv];
    let mut stats = vec![RowSoftmax::default(); dims.batch * heads * m];
    out.par_chunks_mut(m * dv)
        .zip(stats.par_chunks_mut(m))
        .enumerate()
        .for_each(|(bh, (out, stats))| {
            let b = bh / heads;
            let keys = KeyBlocks {
                keys: &keys[bh * n * d..][..n * d],
                values: &values[bh * n * dv..][..n * dv],
                padding: &padding[b * n..][..n],
                masked_score,
                zero_padded,
                d,
                dv,
            };
            out.par_chunks_mut(QUERY_BLOCK * dv)
                .zip(stats.par_chunks_mut(QUERY_BLOCK))
                .enumerate()
                .for_each(|(block, (out, stats))| {
                    let first = block * QUERY_BLOCK;
                    let rows = stats.len();
                    let queries = &landmark_queries[(bh * m + first) * d..][..rows * d];
                    let missing = &missing[b * m + first..][..rows];
                    keys.attend(queries, missing, out, stats);
                });
        });
    (out, stats)
}

/// The key side of one `(batch, head)` of `B · V`.
struct KeyBlocks<'a> {
    /// `[n, d]`.
    keys: &'a [f32],
    /// `[n, dv]`.
    values: &'a [f32],
    /// `[n]` padding flags.
    padding: &'a [f32],
    masked_score: f32,
    /// Whether padded values count as zeros (they then never reach the output).
    zero_padded: bool,
    d: usize,
    dv: usize,
}

impl KeyBlocks<'_> {
    /// `softmax(queries Kᵀ) · V` for a block of query rows (`[rows, d]`) into `out`
    /// (`[rows, dv]`, zeroed), streaming the keys in blocks with an online softmax; rows flagged
    /// in `missing` are zero.
    fn attend(&self, queries: &[f32], missing: &[f32], out: &mut [f32], stats: &mut [RowSoftmax]) {
        let (d, dv) = (self.d, self.dv);
        let n = self.padding.len();
        let rows = stats.len();
        let mut row_max = vec![f32::NEG_INFINITY; rows];
        let mut row_sum = vec![0.0f32; rows];
        let mut scores = vec![0.0f32; rows * KEY_BLOCK.min(n)];
        for start in (0..n).step_by(KEY_BLOCK) {
            let width = KEY_BLOCK.min(n - start);
            let scores = &mut scores[..rows * width];
            let pad = &self.padding[start..start + width];
            let padding_only = all_flagged(pad);
            if padding_only && masked_keys_vanish(row_max.iter().copied(), self.masked_score) {
                // Padding after every row's first valid keys (a batch padded to its longest
                // sequence): its weights are below `exp`'s floor, so the block adds nothing.
                continue;
            }
            if padding_only {
                // Padding only (the tail of a batch padded to its longest sequence).
                scores.fill(self.masked_score);
            } else {
                // scores[i, j] = Σ_p q[i, p] · k[start + j, p]; a padded key's column, whatever
                // its key holds, is then overwritten.
                let k_block = &self.keys[start * d..];
                matmul(
                    rows,
                    width,
                    d,
                    scores,
                    false,
                    queries,
                    (d, 1),
                    k_block,
                    (1, d),
                );
                fill_columns(scores, width, pad, self.masked_score);
            }
            fold_block(scores, width, &mut row_max, &mut row_sum, out, dv);
            if padding_only && self.zero_padded {
                // Zero values: the block adds to each row's sum alone.
                continue;
            }
            let v_block = &self.values[start * dv..][..width * dv];
            let v_block = match self.zero_padded {
                true => rows_zeroed(v_block, dv, pad),
                false => Cow::Borrowed(v_block),
            };
            let v_block: &[f32] = &v_block;
            matmul(
                rows,
                dv,
                width,
                out,
                true,
                scores,
                (width, 1),
                v_block,
                (dv, 1),
            );
        }
        for i in 0..rows {
            let row = &mut out[i * dv..][..dv];
            let scale = if missing[i] > 0.5 {
                0.0
            } else {
                1.0 / row_sum[i]
            };
            row.iter_mut().for_each(|x| *x *= scale);
            stats[i] = RowSoftmax {
                max: row_max[i],
                inv_sum: 1.0 / row_sum[i],
            };
        }
    }
}

/// `softmax(Q K̃ᵀ) · W` per `(batch, head)` and block of query rows: `[batch, heads, n, dv]`,
/// and each row's softmax over the present landmarks, `[batch, heads, n]`. Missing landmark
/// keys get zero weight; a row without any landmark is zero. `padded_rows` (`[batch, n]`
/// flags) marks query rows that count as zeros, whatever they hold: a block of them takes the
/// present landmarks' mean of `W` without any product.
pub fn landmark_attention(
    dims: Dims,
    queries: &[f32],
    landmark_keys: &[f32],
    weights: &[f32],
    missing: &[f32],
    padded_rows: Option<&[f32]>,
) -> (Vec<f32>, Vec<RowSoftmax>) {
    let Dims {
        heads, n, m, d, dv, ..
    } = dims;
    let mut out = vec![0.0f32; dims.batch * heads * n * dv];
    let mut stats = vec![RowSoftmax::default(); dims.batch * heads * n];
    out.par_chunks_mut(n * dv)
        .zip(stats.par_chunks_mut(n))
        .enumerate()
        .for_each(|(bh, (out, stats))| {
            let b = bh / heads;
            // K̃ᵀ row-major, once per head: gemm reads it in place, where K̃ itself (a
            // transposed operand) would be packed again for every block of rows.
            let lk_t = transpose(&landmark_keys[bh * m * d..][..m * d], m, d);
            let w = &weights[bh * m * dv..][..m * dv];
            let absent = &missing[b * m..][..m];
            let padded = padded_rows.map(|flags| &flags[b * n..][..n]);
            let zero_row = padded.map(|_| zero_query_row(w, absent, dv));
            out.par_chunks_mut(ROW_BLOCK * dv)
                .zip(stats.par_chunks_mut(ROW_BLOCK))
                .enumerate()
                .for_each(|(block, (out, stats))| {
                    let first = block * ROW_BLOCK;
                    let rows = out.len() / dv;
                    if let (Some(padded), Some((mean, softmax))) = (padded, &zero_row)
                        && all_flagged(&padded[first..first + rows])
                    {
                        out.chunks_exact_mut(dv)
                            .for_each(|row| row.copy_from_slice(mean));
                        stats.fill(*softmax);
                        return;
                    }
                    let q = &queries[(bh * n + first) * d..][..rows * d];
                    let mut scores = vec![0.0f32; rows * m];
                    // scores[r, j] = Σ_p q[r, p] · lk[j, p]; a padded row's, whatever its query
                    // holds, is then 0, as a row of zeros scores.
                    matmul(rows, m, d, &mut scores, false, q, (d, 1), &lk_t, (m, 1));
                    if let Some(padded) = padded {
                        fill_flagged_rows(&mut scores, m, &padded[first..first + rows], 0.0);
                    }
                    softmax_present(&mut scores, m, absent, stats);
                    matmul(rows, dv, m, out, false, &scores, (m, 1), w, (dv, 1));
                });
        });
    (out, stats)
}

/// What `F · W` gives a query row of zeros: it scores 0 against every landmark, so its softmax
/// is uniform over the present ones (`max` 0, `inv_sum` 1 / their count, as
/// [`softmax_present`] leaves it) and its output their mean row of `w` (`[m, dv]`); with none
/// present, zero.
fn zero_query_row(w: &[f32], absent: &[f32], dv: usize) -> (Vec<f32>, RowSoftmax) {
    let present = absent.iter().filter(|gone| **gone <= 0.5).count();
    let mut mean = vec![0.0f32; dv];
    if present == 0 {
        let softmax = RowSoftmax {
            max: f32::MIN,
            inv_sum: 0.0,
        };
        return (mean, softmax);
    }
    let inv_sum = 1.0 / present as f32;
    for (row, gone) in w.chunks_exact(dv).zip(absent) {
        if *gone <= 0.5 {
            mean.iter_mut()
                .zip(row)
                .for_each(|(mean, x)| *mean += inv_sum * x);
        }
    }
    (mean, RowSoftmax { max: 0.0, inv_sum })
}

/// The row-major `[cols, rows]` transpose of the row-major `[rows, cols]` matrix `x`.
pub(super) fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; rows * cols];
    for (i, row) in x.chunks_exact(cols).enumerate() {
        for (j, value) in row.iter().enumerate() {
            t[j * rows + i] = *value;
        }
    }
    t
}
