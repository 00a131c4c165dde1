//! Landmarks: segment means of the queries and keys (step 2 of the algorithm).
//!
//! Each sequence's valid tokens are cut into `m` contiguous segments over the sequence's **own**
//! length: the valid token of rank `r` (the `r`-th valid token from the left, counting from 0)
//! among `L` belongs to segment `⌊r·m/L⌋`, so every segment holds `⌊L/m⌋` or `⌈L/m⌉` tokens.
//! Padded tokens belong to no segment. A sequence therefore gets the same landmarks alone,
//! padded on either side, or batched with longer sequences: the padded length `n` never enters.
//! Without a mask `r` is the position and `L = n`, which gives the blocks of HF transformers and
//! the official code when `m` divides `n`. Nothing is padded to make `n` divisible.
//!
//! When `L < m` some segments are empty and are reported as missing; then every valid token is
//! its own landmark (`⌊r·m/L⌋` is distinct for distinct `r`), which the attention uses to return
//! exact softmax attention for such a sequence, as it does when `n ≤ m`.

use burn::tensor::{Bool, Device, FloatDType, Int, Tensor};

use crate::kernels;

/// Landmark queries and keys with the landmarks that exist (self-attention: one segmentation).
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

/// How the tokens of each sequence fall into `m` segments; [`mean`](Self::mean) averages any
/// `[batch, heads, n, d]` tensor over them.
#[derive(Debug, Clone)]
pub struct Segments {
    m: usize,
    /// Averaging weights `[batch or 1, 1, m, n]`, `1/count` where a token lies in a segment;
    /// `None` when `m` divides `n` and there is no mask: a reshape and a mean, no weight matrix.
    weights: Option<Tensor<4>>,
    missing: Option<Tensor<2, Bool>>,
    short: Option<Tensor<1, Bool>>,
}

impl Segments {
    /// Segments of `n` tokens into `m` landmarks, over valid tokens only when `mask_pad` is given.
    ///
    /// `dtype` is the dtype of the tensors that [`mean`](Self::mean) will average.
    ///
    /// # Shapes
    ///
    /// - mask_pad: `[batch, n]` (`true` = padding)
    ///
    /// # Panics
    ///
    /// Panics if `m` is 0.
    pub fn new(
        n: usize,
        m: usize,
        mask_pad: Option<&Tensor<2, Bool>>,
        dtype: FloatDType,
        device: &Device,
    ) -> Self {
        assert!(m > 0, "Segments needs at least one landmark (m = 0)");
        let Some(mask_pad) = mask_pad else {
            if n.is_multiple_of(m) {
                return Self {
                    m,
                    weights: None,
                    missing: None,
                    short: None,
                };
            }
            let position = Tensor::<1, Int>::arange(0..n as i64, device).reshape([1, n]);
            let length = Tensor::<2, Int>::full([1, 1], n as i64, device);
            let membership = one_hot_segments(segment_index(position, length, m), m).float();
            let counts = membership.clone().sum_dim(2); // [1, m, 1]
            let weights = (membership / counts).cast(dtype).reshape([1, 1, m, n]);
            return Self {
                m,
                weights: Some(weights),
                missing: None,
                short: None,
            };
        };
        let [batch, _] = mask_pad.dims();
        let valid = mask_pad.clone().bool_not(); // [batch, n]
        let ones = valid.clone().int();
        let length = ones.clone().sum_dim(1); // [batch, 1]
        let rank = ones.clone().cumsum(1) - ones; // valid tokens before each token
        let membership = one_hot_segments(segment_index(rank, length.clone(), m), m)
            .bool_and(valid.reshape([batch, 1, n]).expand([batch, m, n]))
            .float(); // [batch, m, n]
        let counts = membership.clone().sum_dim(2); // [batch, m, 1]
        let missing = counts.clone().equal_elem(0.0).reshape([batch, m]);
        let weights = (membership / counts.clamp_min(1.0))
            .cast(dtype)
            .reshape([batch, 1, m, n]);
        Self {
            m,
            weights: Some(weights),
            missing: Some(missing),
            short: Some(length.lower_equal_elem(m as i64).reshape([batch])),
        }
    }

    /// Segment means of `x` over valid tokens (zero for a missing segment).
    ///
    /// # Shapes
    ///
    /// - x: `[batch, heads, n, d]`
    /// - output: `[batch, heads, m, d]`
    pub fn mean(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.weights {
            Some(weights) => weights.clone().matmul(x),
            None => {
                let [batch, heads, n, d] = x.dims();
                let m = self.m;
                x.reshape([batch, heads, m, n / m, d])
                    .mean_dim(3)
                    .reshape([batch, heads, m, d])
            }
        }
    }

    /// [`mean`](Self::mean), as one parallel pass on flex when `custom_kernels` is set and the
    /// segments are equal (no mask, `m` divides `n`): see [`kernels::fused_segment_mean`].
    pub fn mean_with_kernels(&self, x: Tensor<4>, custom_kernels: bool) -> Tensor<4> {
        let fused = (custom_kernels && self.weights.is_none())
            .then(|| kernels::fused_segment_mean(&x, self.m))
            .flatten();
        fused.unwrap_or_else(|| self.mean(x))
    }

    /// Whether every segment is a run of `n / m` tokens (no mask, `m` divides `n`), as
    /// [`kernels::fused_landmark_means`] takes them.
    pub fn equal_runs(&self) -> bool {
        self.weights.is_none()
    }

    /// `[batch, m]`, `true` where a segment holds no valid token; `None` when none can be empty.
    pub fn missing(&self) -> Option<&Tensor<2, Bool>> {
        self.missing.as_ref()
    }

    /// `[batch]`, `true` for a sequence of at most `m` valid tokens, each of which is then a
    /// landmark of its own; `None` without a mask (every sequence has `n` tokens).
    pub fn short(&self) -> Option<&Tensor<1, Bool>> {
        self.short.as_ref()
    }
}

/// The segment of each token: `⌊rank·m/length⌋` for `rank < length`, without forming
/// `rank·m`, which overflows a 32-bit Int once `n·m ≥ 2³¹`.
///
/// An f32 estimate is within one of the answer (its relative error is about 2⁻²²); it is then
/// corrected against the exact start of its segment, `start(s) = ⌈s·L/m⌉ = s·⌊L/m⌋ +
/// ⌈s·(L mod m)/m⌉`, whose products stay below `L` and `m²`.
///
/// # Shapes
///
/// - rank: `[batch, n]`, length: `[batch or 1, 1]`
/// - output: `[batch, n]`, in `0..m` where `rank < length`
///
/// # Panics
///
/// Panics if `m` is 0 or `m²` does not fit in 31 bits.
pub fn segment_index(rank: Tensor<2, Int>, length: Tensor<2, Int>, m: usize) -> Tensor<2, Int> {
    assert!(
        m > 0 && m < 46_341,
        "segment_index: m = {m} must lie in 1..46341"
    );
    let dims = rank.dims();
    let length = length.expand(dims);
    let estimate = (rank.clone().float() * (m as f64) / length.clone().float().clamp_min(1.0))
        .floor()
        .int()
        .clamp(0, m as i64 - 1);
    let blocks = length.clone().div_scalar(m as i64); // ⌊L/m⌋
    let rest = length.clone() - blocks.clone().mul_scalar(m as i64); // L mod m
    let start = |s: Tensor<2, Int>| {
        s.clone() * blocks.clone()
            + (s * rest.clone())
                .add_scalar(m as i64 - 1)
                .div_scalar(m as i64)
    };
    let too_high = start(estimate.clone()).greater(rank.clone()).int();
    let too_low = start(estimate.clone().add_scalar(1))
        .lower_equal(rank)
        .int();
    estimate - too_high + too_low
}

/// `[batch, m, n]`, `true` where token `j` lies in segment `i`.
fn one_hot_segments(segment: Tensor<2, Int>, m: usize) -> Tensor<3, Bool> {
    let [batch, n] = segment.dims();
    let device = segment.device();
    let ids = Tensor::<1, Int>::arange(0..m as i64, &device).reshape([1, m, 1]);
    segment
        .reshape([batch, 1, n])
        .expand([batch, m, n])
        .equal(ids.expand([batch, m, n]))
}

/// Segment means of `q` and `k` over valid tokens: [`Segments`] shared by both.
///
/// With `mask_pad`, padded tokens are left out of every mean and each sequence is cut over its
/// own valid length; a segment with no valid token is reported in [`Landmarks::missing`] (its
/// mean is zero). Padded rows must be finite (the attention zeroes them first).
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
    let [_, _, n, _] = q.dims();
    assert!(
        m > 0 && m <= n,
        "segment_means needs 0 < m <= n, got m = {m}, n = {n}"
    );
    let segments = Segments::new(n, m, mask_pad, q.dtype().into(), &q.device());
    Landmarks {
        queries: segments.mean(q),
        keys: segments.mean(k),
        missing: segments.missing().cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_ints(t: Tensor<2, Int>) -> Vec<i64> {
        t.into_data().convert::<i64>().try_into_vec().unwrap()
    }

    #[test]
    fn segment_index_matches_integer_division() {
        let device = Device::flex();
        for (n, m) in [(10, 4), (16, 4), (7, 7), (9, 1), (100, 64), (1000, 3)] {
            let rank = Tensor::<1, Int>::arange(0..n as i64, &device).reshape([1, n]);
            let length = Tensor::<2, Int>::full([1, 1], n as i64, &device);
            let got = host_ints(segment_index(rank, length, m));
            let want: Vec<i64> = (0..n).map(|j| (j * m / n) as i64).collect();
            assert_eq!(got, want, "n = {n}, m = {m}");
        }
    }

    #[test]
    fn every_valid_token_lies_in_one_segment_of_balanced_size() {
        let device = Device::flex();
        // Left padding, a hole and right padding: valid lengths 7, 5 and 10 over n = 10.
        let mask = Tensor::<2, Bool>::from_bool(
            burn::tensor::TensorData::new(
                [
                    [
                        true, true, true, false, false, false, false, false, false, false,
                    ],
                    [
                        false, false, true, false, false, false, true, true, true, true,
                    ],
                    [false; 10],
                ]
                .concat(),
                [3, 10],
            ),
            &device,
        );
        let m = 4;
        let segments = Segments::new(10, m, Some(&mask), FloatDType::F32, &device);
        let weights = segments.weights.as_ref().expect("a mask needs weights");
        let weights: Vec<f32> = weights
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        for (row, valid) in [7usize, 5, 10].into_iter().enumerate() {
            let sizes: Vec<usize> = (0..m)
                .map(|i| {
                    (0..10)
                        .filter(|j| weights[(row * m + i) * 10 + j] > 0.0)
                        .count()
                })
                .collect();
            assert_eq!(sizes.iter().sum::<usize>(), valid, "row {row}: {sizes:?}");
            assert!(
                sizes
                    .iter()
                    .all(|s| *s == valid / m || *s == valid.div_ceil(m)),
                "row {row}: {sizes:?}"
            );
        }
        let short: Vec<bool> = segments
            .short()
            .unwrap()
            .clone()
            .into_data()
            .try_to_vec::<bool>()
            .unwrap();
        assert_eq!(short, vec![false, false, false]);
    }
}
