//! Landmarks: segment means of the queries and keys (step 2 of the algorithm).
//!
//! The sequence of `n` tokens is cut into `m` contiguous segments; token `j` belongs to segment
//! `⌊j·m/n⌋`, so every segment holds `⌊n/m⌋` or `⌈n/m⌉` tokens and, when `m` divides `n`, exactly
//! the blocks of HF transformers and the official code. Nothing is padded to make `n` divisible.

use burn::tensor::{Bool, Device, Int, Tensor};

use super::mask::keep_weights;

/// Landmark queries and keys with the landmarks that exist.
#[derive(Debug, Clone)]
pub struct Landmarks {
    /// Landmark queries `Q̃`, `[batch, heads, m, d]`.
    pub queries: Tensor<4>,
    /// Landmark keys `K̃`, `[batch, heads, m, d]`.
    pub keys: Tensor<4>,
    /// `[batch, m]`, `true` where a segment holds no valid token and so is not a landmark.
    /// `None` when every segment is a landmark.
    pub missing: Option<Tensor<2, Bool>>,
}

/// Membership of tokens in segments: `[m, n]`, `1.0` where token `j` lies in segment `i`.
pub fn segment_membership(n: usize, m: usize, device: &Device) -> Tensor<2> {
    let token = Tensor::<1, Int>::arange(0..n as i64, device);
    let segment_of_token = token
        .mul_scalar(m as i64)
        .div_scalar(n as i64)
        .reshape([1, n]);
    let segment = Tensor::<1, Int>::arange(0..m as i64, device).reshape([m, 1]);
    segment_of_token
        .expand([m, n])
        .equal(segment.expand([m, n]))
        .float()
}

/// Segment means of `q` and `k` over valid tokens.
///
/// With `mask_pad`, padded tokens are left out of every mean and a segment with no valid token
/// is reported in [`Landmarks::missing`] (its mean is zero). With `leak_padding` the mask is
/// ignored here, as HF transformers does.
///
/// # Shapes
///
/// - q, k: `[batch, heads, n, d]`
/// - mask_pad: `[batch, n]` (`true` = padding)
/// - output: landmarks of shape `[batch, heads, m, d]`
///
/// # Panics
///
/// Panics if `m > n` (the caller takes the exact path then) or `m == 0`.
pub fn segment_means(
    q: Tensor<4>,
    k: Tensor<4>,
    m: usize,
    mask_pad: Option<&Tensor<2, Bool>>,
) -> Landmarks {
    let [batch, heads, n, d] = q.dims();
    assert!(
        m > 0 && m <= n,
        "segment_means needs 0 < m <= n, got m = {m}, n = {n}"
    );
    match mask_pad {
        None if n.is_multiple_of(m) => {
            // Equal segments: a reshape and a mean, no membership matrix.
            let mean = |x: Tensor<4>| {
                x.reshape([batch, heads, m, n / m, d])
                    .mean_dim(3)
                    .reshape([batch, heads, m, d])
            };
            Landmarks {
                queries: mean(q),
                keys: mean(k),
                missing: None,
            }
        }
        None => {
            let membership = segment_membership(n, m, &q.device());
            let counts = membership.clone().sum_dim(1); // [m, 1]
            average(q, k, (membership / counts).reshape([1, 1, m, n]), None)
        }
        Some(mask_pad) => {
            let membership = segment_membership(n, m, &q.device()).reshape([1, m, n]);
            let keep = keep_weights(mask_pad).reshape([batch, 1, n]);
            let weights = membership * keep; // [batch, m, n]
            let counts = weights.clone().sum_dim(2); // [batch, m, 1]
            let missing = counts.clone().equal_elem(0.0).reshape([batch, m]);
            let averaging = (weights / counts.clamp_min(1.0)).reshape([batch, 1, m, n]);
            average(q, k, averaging, Some(missing))
        }
    }
}

/// Applies averaging weights `[batch or 1, 1, m, n]` to `q` and `k`.
fn average(
    q: Tensor<4>,
    k: Tensor<4>,
    averaging: Tensor<4>,
    missing: Option<Tensor<2, Bool>>,
) -> Landmarks {
    Landmarks {
        queries: averaging.clone().matmul(q),
        keys: averaging.matmul(k),
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_assigns_every_token_to_one_contiguous_segment() {
        let device = Device::flex();
        for (n, m) in [(10, 4), (16, 4), (7, 7), (9, 1)] {
            let membership = segment_membership(n, m, &device);
            let per_token: Vec<f32> = membership
                .clone()
                .sum_dim(0)
                .into_data()
                .convert::<f32>()
                .try_into_vec()
                .unwrap();
            assert!(
                per_token.iter().all(|c| *c == 1.0),
                "n={n} m={m}: each token in one segment"
            );
            let sizes: Vec<f32> = membership
                .clone()
                .sum_dim(1)
                .into_data()
                .convert::<f32>()
                .try_into_vec()
                .unwrap();
            assert!(
                sizes
                    .iter()
                    .all(|s| *s as usize == n / m || *s as usize == n.div_ceil(m)),
                "{sizes:?}"
            );
            let flat: Vec<f32> = membership
                .into_data()
                .convert::<f32>()
                .try_into_vec()
                .unwrap();
            let owner: Vec<usize> = (0..n)
                .map(|j| (0..m).position(|i| flat[i * n + j] == 1.0).unwrap())
                .collect();
            assert!(
                owner.windows(2).all(|w| w[0] <= w[1]),
                "segments are contiguous: {owner:?}"
            );
        }
    }
}
