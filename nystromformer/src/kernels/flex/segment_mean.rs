//! Landmarks as the means of `m` equal segments of the sequence (no mask, `m` divides `n`), in
//! one parallel pass: flex reduces the `[batch, heads, m, n/m, d]` view on one core, a tenth of
//! the forward at n = 16 384.
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
}
