//! Landmarks as segment means in one parallel pass: `m` equal segments of the sequence (no mask,
//! `m` divides `n`), where flex reduces the `[batch, heads, m, n/m, d]` view on one core, a
//! tenth of the forward at n = 16 384; or ranked segments (a padding mask, or `m` not dividing
//! `n`), where the tensor ops multiply a `[batch, m, n]` weight matrix with every head, half
//! the masked forward at n = 16 384.
//!
//! Tensors are contiguous row-major `f32` slices, `[batch · heads, n, d]` in and
//! `[batch · heads, m, d]` out.

use rayon::prelude::*;

multiversion! {
    /// `out = scale · Σ rows`, for rows of `out.len()` elements.
    fn mean_of_rows(rows: &[f32], scale: f32, out: &mut [f32]) {
        out.fill(0.0);
        for row in rows.chunks_exact(out.len()) {
            for (o, x) in out.iter_mut().zip(row) {
                *o += x;
            }
        }
        out.iter_mut().for_each(|o| *o *= scale);
    }
}

multiversion! {
    /// Every row of `rows` (rows of `grad.len()` elements) set to `scale · grad`.
    fn spread(grad: &[f32], scale: f32, rows: &mut [f32]) {
        for row in rows.chunks_exact_mut(grad.len()) {
            for (r, g) in row.iter_mut().zip(grad) {
                *r = g * scale;
            }
        }
    }
}

/// The mean of each of the `m` segments of `n / m` rows, per `(batch, head)`.
pub fn forward(x: &[f32], n: usize, d: usize, m: usize) -> Vec<f32> {
    let segment = n / m;
    let mut out = vec![0.0f32; x.len() / n * m];
    out.par_chunks_mut(d)
        .zip(x.par_chunks(segment * d))
        .for_each(|(out, rows)| mean_of_rows(rows, 1.0 / segment as f32, out));
    out
}

/// The gradient of [`forward`]'s input for its output gradient `grad`: each row gets its
/// segment's gradient over the segment's length.
pub fn backward(grad: &[f32], n: usize, d: usize, m: usize) -> Vec<f32> {
    let segment = n / m;
    let mut dx = vec![0.0f32; grad.len() / m * n];
    dx.par_chunks_mut(segment * d)
        .zip(grad.par_chunks(d))
        .for_each(|(rows, grad)| spread(grad, 1.0 / segment as f32, rows));
    dx
}

/// Ranked segments on the host (see `SegmentRows::Ranked`): segment `s` of sequence `b` holds
/// the rows `order[b, r]` for `r ∈ ⌈s·L/m⌉..⌈(s+1)·L/m⌉`, `L = lengths[b]`; `rank[b, j]` is row
/// `j`'s rank, `n` for padding. One sequence's entries (`sequences == 1`) serve every sequence.
#[derive(Debug, Clone)]
pub struct Ranks {
    pub order: Vec<i64>,
    pub rank: Vec<i64>,
    pub lengths: Vec<i64>,
}

impl Ranks {
    /// `(order, rank, L)` of sequence `batch`, for sequences of `n` rows.
    fn of(&self, batch: usize, n: usize) -> (&[i64], &[i64], i64) {
        let b = if self.lengths.len() == 1 { 0 } else { batch };
        let rows = b * n..(b + 1) * n;
        (&self.order[rows.clone()], &self.rank[rows], self.lengths[b])
    }
}

/// The first rank of segment `s` of `m` over `length` rows, `⌈s·L/m⌉`.
fn start(s: i64, length: i64, m: i64) -> usize {
    ((s * length + m - 1) / m) as usize
}

multiversion! {
    /// `out = scale · Σ x[row]` over `rows`, rows of `out.len()` elements.
    fn mean_of_rows_at(x: &[f32], rows: &[i64], scale: f32, out: &mut [f32]) {
        let d = out.len();
        out.fill(0.0);
        for &row in rows {
            let row = row as usize * d;
            for (o, x) in out.iter_mut().zip(&x[row..row + d]) {
                *o += x;
            }
        }
        out.iter_mut().for_each(|o| *o *= scale);
    }
}

/// The mean of each of the `m` ranked segments per `(batch, head)`; zero for an empty one.
pub fn ranked_forward(x: &[f32], [heads, n, d, m]: [usize; 4], ranks: &Ranks) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len() / n * m];
    out.par_chunks_mut(m * d)
        .zip(x.par_chunks(n * d))
        .enumerate()
        .for_each(|(matrix, (out, x))| {
            let (order, _, length) = ranks.of(matrix / heads, n);
            for (s, out) in out.chunks_exact_mut(d).enumerate() {
                let s = s as i64;
                let rows = start(s, length, m as i64)..start(s + 1, length, m as i64);
                let scale = 1.0 / rows.len().max(1) as f32;
                mean_of_rows_at(x, &order[rows], scale, out);
            }
        });
    out
}

/// The gradient of [`ranked_forward`]'s input for its output gradient `grad`: each valid row
/// gets its segment's gradient over the segment's length, padding zero.
pub fn ranked_backward(grad: &[f32], [heads, n, d, m]: [usize; 4], ranks: &Ranks) -> Vec<f32> {
    let mut dx = vec![0.0f32; grad.len() / m * n];
    dx.par_chunks_mut(n * d)
        .zip(grad.par_chunks(m * d))
        .enumerate()
        .for_each(|(matrix, (dx, grad))| {
            let (_, rank, length) = ranks.of(matrix / heads, n);
            let m = m as i64;
            for (row, &r) in dx.chunks_exact_mut(d).zip(rank) {
                if r < length {
                    let s = r * m / length;
                    let count = start(s + 1, length, m) - start(s, length, m);
                    let s = s as usize;
                    spread(&grad[s * d..(s + 1) * d], 1.0 / count as f32, row);
                }
            }
        });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_of_equal_segments_and_their_gradient() {
        // Two (batch, head) pairs of n = 6 rows of d = 2, m = 3 segments of 2 rows.
        let x: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let means = forward(&x, 6, 2, 3);
        let expected: Vec<f32> = (0..6)
            .flat_map(|s| [(4 * s) as f32 + 1.0, (4 * s) as f32 + 2.0])
            .collect();
        assert_eq!(means, expected);
        // d(Σ g · mean)/dx: each row gets its segment's g / 2.
        let grad: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let dx = backward(&grad, 6, 2, 3);
        for (i, row) in dx.chunks(2).enumerate() {
            let segment = i / 2;
            assert_eq!(row, [grad[2 * segment] / 2.0, grad[2 * segment + 1] / 2.0]);
        }
    }

    #[test]
    fn means_of_ranked_segments_and_their_gradient() {
        // One head of n = 6 rows of d = 1 (x = position), two sequences: the first with rows 1
        // and 4 padded (L = 4: ranks 0..4 at rows 0, 2, 3, 5), the second with L = 1 (row 3).
        let x: Vec<f32> = (0..12).map(|i| (i % 6) as f32).collect();
        let ranks = Ranks {
            order: vec![0, 2, 3, 5, 0, 0, 3, 0, 0, 0, 0, 0],
            rank: vec![0, 6, 1, 2, 6, 3, 6, 6, 6, 0, 6, 6],
            lengths: vec![4, 1],
        };
        // m = 2: L = 4 gives ranks {0, 1} and {2, 3}; L = 1 gives {0} and an empty segment.
        let means = ranked_forward(&x, [1, 6, 1, 2], &ranks);
        assert_eq!(means, vec![1.0, 4.0, 3.0, 0.0]);
        let grad = vec![2.0, 4.0, 6.0, 8.0];
        let dx = ranked_backward(&grad, [1, 6, 1, 2], &ranks);
        assert_eq!(
            dx,
            vec![1.0, 0.0, 1.0, 2.0, 0.0, 2.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0]
        );
    }
}
