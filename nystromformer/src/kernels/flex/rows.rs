//! The row-wise softmax work of the fused flex stages (between their matrix products), compiled
//! twice: for the baseline x86-64 this crate is built for (SSE2) and for AVX2 with FMA, chosen
//! at run time. gemm picks its own kernels the same way; these loops are a third of the forward
//! and the `exp` polynomial vectorises twice as wide with AVX2.

use std::borrow::Cow;

use super::exp::{EXP_FLOOR, dot, exp, max, sum};
use super::products::RowSoftmax;

multiversion! {
    /// One block of `B · V`'s online softmax: folds the block's scores (`[rows, width]`, replaced
    /// by their `exp(score − new max)`) into each row's running max and sum, and rescales the
    /// rows of the running output (`[rows, dv]`) whose max moved.
    pub fn fold_block<A>(
        scores: &mut [f32],
        width: usize,
        row_max: &mut [f32],
        row_sum: &mut [f32],
        out: &mut [f32],
        dv: usize,
    ) {
        let rows = scores.chunks_exact_mut(width).zip(out.chunks_exact_mut(dv));
        for ((row, out), (running_max, running_sum)) in rows.zip(row_max.iter_mut().zip(row_sum)) {
            let new_max = running_max.max(max(row));
            let correction = exp::<A>(*running_max - new_max);
            for x in row.iter_mut() {
                *x = exp::<A>(*x - new_max);
            }
            *running_sum = *running_sum * correction + sum(row);
            *running_max = new_max;
            if correction != 1.0 {
                out.iter_mut().for_each(|x| *x *= correction);
            }
        }
    }
}

multiversion! {
    /// `F`'s rows in place: each row of scores (`[rows, m]`) becomes its softmax over the
    /// landmarks present (`absent[j] > 0.5` marks a missing one, which gets 0); a row without any
    /// is zero. Each row's statistics go to `stats`.
    pub fn softmax_present<A>(scores: &mut [f32], m: usize, absent: &[f32], stats: &mut [RowSoftmax]) {
        let any_absent = absent.iter().any(|gone| *gone > 0.5);
        for (row, stats) in scores.chunks_exact_mut(m).zip(stats) {
            if any_absent {
                for (s, gone) in row.iter_mut().zip(absent) {
                    if *gone > 0.5 {
                        *s = f32::MIN;
                    }
                }
            }
            let row_max = max(row);
            for x in row.iter_mut() {
                *x = exp::<A>(*x - row_max);
            }
            if any_absent {
                for (s, gone) in row.iter_mut().zip(absent) {
                    if *gone > 0.5 {
                        *s = 0.0;
                    }
                }
            }
            let total = sum(row);
            let inv_sum = if total > 0.0 { 1.0 / total } else { 0.0 };
            row.iter_mut().for_each(|s| *s *= inv_sum);
            *stats = RowSoftmax { max: row_max, inv_sum };
        }
    }
}

multiversion! {
    /// The forward's softmax of each row of scores (`[rows, width]`), in place, from its saved
    /// statistics; rows the forward zeroed are zero.
    pub fn softmax_from_stats<A>(scores: &mut [f32], width: usize, stats: &[RowSoftmax]) {
        for (row, stats) in scores.chunks_exact_mut(width).zip(stats) {
            if stats.inv_sum > 0.0 {
                for s in row.iter_mut() {
                    *s = exp::<A>(*s - stats.max) * stats.inv_sum;
                }
            } else {
                row.fill(0.0);
            }
        }
    }
}

multiversion! {
    /// The softmax backward in place of `dP`: `dS = P ∘ (dP − δ)` for rows of `width`.
    pub fn softmax_backward(d_scores: &mut [f32], probs: &[f32], delta: &[f32], width: usize) {
        let rows = d_scores.chunks_exact_mut(width).zip(probs.chunks_exact(width));
        for ((ds_row, p_row), delta) in rows.zip(delta) {
            for (ds, p) in ds_row.iter_mut().zip(p_row) {
                *ds = p * (*ds - delta);
            }
        }
    }
}

multiversion! {
    /// `δ_i = Σ_c a[i, c] · b[i, c]` for rows of `width`.
    pub fn row_dots(a: &[f32], b: &[f32], width: usize) -> Vec<f32> {
        a.chunks_exact(width)
            .zip(b.chunks_exact(width))
            .map(|(a, b)| dot(a, b))
            .collect()
    }
}

/// Sets column `j` of the row-major `[rows, width]` matrix to `value` wherever `flags[j]` is set.
pub fn fill_columns(matrix: &mut [f32], width: usize, flags: &[f32], value: f32) {
    for (j, flag) in flags.iter().enumerate() {
        if *flag > 0.5 {
            matrix[j..]
                .iter_mut()
                .step_by(width)
                .for_each(|x| *x = value);
        }
    }
}

/// Sets row `i` of the row-major `[rows, width]` matrix to `value` wherever `flags[i]` is set.
pub fn fill_flagged_rows(matrix: &mut [f32], width: usize, flags: &[f32], value: f32) {
    for (row, flag) in matrix.chunks_exact_mut(width).zip(flags) {
        if *flag > 0.5 {
            row.fill(value);
        }
    }
}

/// The row-major `[rows, width]` matrix with the rows that `flags` sets zeroed, in a copy only
/// when some flag is set: padded rows that count as zeros, for a product that would otherwise
/// read what they hold (0 · NaN is NaN).
pub fn rows_zeroed<'a>(matrix: &'a [f32], width: usize, flags: &[f32]) -> Cow<'a, [f32]> {
    if flags.iter().all(|flag| *flag <= 0.5) {
        return Cow::Borrowed(matrix);
    }
    let mut copy = matrix.to_vec();
    fill_flagged_rows(&mut copy, width, flags, 0.0);
    Cow::Owned(copy)
}

/// Whether every flag is set: a block of keys that is all padding, whose scores are all the
/// masked score whatever the keys hold, so that no product with the keys is needed.
pub fn all_flagged(flags: &[f32]) -> bool {
    flags.iter().all(|flag| *flag > 0.5)
}

/// Whether `masked_score − max` is at most [`EXP_FLOOR`] for every row's largest score `max`:
/// a masked key's weight is then what `exp` gives for anything below its floor (about 1e-38,
/// which stands in for 0 and vanishes beside the row's sum of at least 1; at a masking score
/// like the default −1e9 the tensor ops' softmax gives exactly 0). A row that has met no key yet
/// (`max` = −∞) keeps the weights.
pub fn masked_keys_vanish(maxima: impl IntoIterator<Item = f32>, masked_score: f32) -> bool {
    maxima
        .into_iter()
        .all(|max| masked_score - max <= EXP_FLOOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_keys_vanish_only_far_below_every_row() {
        assert!(masked_keys_vanish([0.0, 3.0], -1e9));
        // A row that has met no key, and a mild masking score, keep the masked keys' weights.
        assert!(!masked_keys_vanish([0.0, f32::NEG_INFINITY], -1e9));
        assert!(!masked_keys_vanish([0.0], -3.0));
        assert!(masked_keys_vanish([0.0], EXP_FLOOR));
        assert!(!masked_keys_vanish([0.0], EXP_FLOOR + 1.0));
    }

    #[test]
    fn folding_blocks_gives_the_softmax_of_the_whole_row() {
        let row: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 23) as f32 * 0.37 - 3.0)
            .collect();
        let (mut running_max, mut running_sum, mut out) = ([f32::NEG_INFINITY], [0.0f32], [0.0f32]);
        for block in row.chunks(10) {
            let mut block = block.to_vec();
            let width = block.len();
            fold_block(
                &mut block,
                width,
                &mut running_max,
                &mut running_sum,
                &mut out,
                1,
            );
        }
        let true_max = row.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
        let true_sum: f32 = row.iter().map(|x| (x - true_max).exp()).sum();
        assert_eq!(running_max[0], true_max);
        assert!((running_sum[0] - true_sum).abs() < 1e-5 * true_sum);
    }

    #[test]
    fn missing_landmarks_get_no_weight_and_a_row_without_any_is_zero() {
        let mut scores = vec![1.0, 2.0, 3.0, 0.5, 0.5, 0.5];
        let mut stats = [RowSoftmax::default(); 2];
        softmax_present(&mut scores, 3, &[0.0, 1.0, 0.0], &mut stats);
        let e = (1.0f32 - 3.0).exp();
        assert!((scores[0] - e / (1.0 + e)).abs() < 1e-6 && scores[1] == 0.0);
        assert!((scores[0] + scores[2] - 1.0).abs() < 1e-6);
        let mut none = vec![1.0, 2.0];
        let mut stats = [RowSoftmax::default(); 1];
        softmax_present(&mut none, 2, &[1.0, 1.0], &mut stats);
        assert_eq!((none, stats[0].inv_sum), (vec![0.0, 0.0], 0.0));
        // The saved statistics give the same weights back.
        let scores = vec![1.0, 2.0, 3.0];
        let mut weights = scores.clone();
        softmax_present(&mut weights, 3, &[0.0; 3], &mut stats);
        let mut again = scores;
        softmax_from_stats(&mut again, 3, &stats);
        assert!(
            again
                .iter()
                .zip(&weights)
                .all(|(a, b)| (a - b).abs() < 1e-6)
        );
    }

    #[test]
    fn flagged_rows_are_zeroed_in_a_copy_whatever_they_hold() {
        let matrix = [1.0, 2.0, f32::NAN, f32::INFINITY, 5.0, 6.0];
        let flags = [0.0, 1.0, 0.0];
        let zeroed = rows_zeroed(&matrix, 2, &flags);
        assert!(matches!(zeroed, Cow::Owned(_)));
        assert_eq!(*zeroed, [1.0, 2.0, 0.0, 0.0, 5.0, 6.0]);
        // Without a flag set, the matrix itself: no copy.
        assert!(matches!(
            rows_zeroed(&matrix, 2, &[0.0; 3]),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn row_dots_sum_every_product() {
        let a: Vec<f32> = (0..26).map(|i| i as f32).collect();
        let dots = row_dots(&a, &a, 13);
        let expect = |range: std::ops::Range<usize>| range.map(|i| (i * i) as f32).sum::<f32>();
        assert_eq!(dots, vec![expect(0..13), expect(13..26)]);
    }
}
