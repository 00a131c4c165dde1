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

use std::sync::{Arc, OnceLock};

use burn::tensor::{Bool, Device, FloatDType, IndexingUpdateOp, Int, Tensor, TensorData};

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
    n: usize,
    m: usize,
    dtype: FloatDType,
    /// `None` when `m` divides `n` and there is no mask: `m` equal runs of `n / m` tokens.
    ranks: Option<SegmentRanks>,
    /// The tensor-op mean's averaging weights `[batch or 1, 1, m, n]`, `1/count` where a token
    /// lies in a segment: built on the first [`mean`](Self::mean) of ranked segments (the
    /// custom kernels read the ranks instead), and shared by the clones (self-attention's query
    /// and key segments are one).
    weights: Arc<OnceLock<Tensor<4>>>,
    missing: Option<Tensor<2, Bool>>,
    short: Option<Tensor<1, Bool>>,
    /// The mask and `missing` as the attention's kernels read them (`1.0` at `true`, in
    /// `dtype`), when the segments kernel made them in its launch.
    flags: Option<[Tensor<2>; 2]>,
}

/// Segments cut over each sequence's valid tokens in order: the valid token of rank `r` among
/// `L` lies in segment `⌊r·m/L⌋`. A batch dimension of 1 (no mask) serves every sequence.
#[derive(Debug, Clone)]
pub struct SegmentRanks {
    /// `[batch or 1, n]`: the position of the valid token of each rank; entries from the
    /// sequence's length on are 0 and mean nothing.
    pub order: Tensor<2, Int>,
    /// `[batch or 1, n]`: each position's rank among the valid tokens, `n` for padding.
    pub rank: Tensor<2, Int>,
    /// `[batch or 1]`: the number of valid tokens `L`.
    pub lengths: Tensor<1, Int>,
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
        Self::new_with_kernels(n, m, mask_pad, dtype, device, false)
    }

    /// [`new`](Self::new), with a mask's ranked segments cut by one kernel where
    /// `custom_kernels` is set and [`kernels::fused_ranked_segments`] applies.
    pub fn new_with_kernels(
        n: usize,
        m: usize,
        mask_pad: Option<&Tensor<2, Bool>>,
        dtype: FloatDType,
        device: &Device,
        custom_kernels: bool,
    ) -> Self {
        assert!(m > 0, "Segments needs at least one landmark (m = 0)");
        let segments = |ranks, missing, short| Self {
            n,
            m,
            dtype,
            ranks,
            weights: Arc::new(OnceLock::new()),
            missing,
            short,
            flags: None,
        };
        let Some(mask_pad) = mask_pad else {
            if n.is_multiple_of(m) {
                return segments(None, None, None);
            }
            let position = positions(n, device);
            let ranks = SegmentRanks {
                order: position.clone(),
                rank: position,
                lengths: Tensor::<1, Int>::full([1], n as i64, device),
            };
            return segments(Some(ranks), None, None);
        };
        let fused = custom_kernels
            .then(|| kernels::fused_ranked_segments(mask_pad, m, dtype))
            .flatten();
        if let Some(fused) = fused {
            return Self {
                flags: Some([fused.padding_flags, fused.missing_flags]),
                ..segments(Some(fused.ranks), Some(fused.missing), Some(fused.short))
            };
        }
        let [batch, _] = mask_pad.dims();
        let ones = mask_pad.clone().bool_not().int(); // [batch, n]
        let valid_so_far = prefix_sums(ones.clone());
        // The last prefix sum, not a `sum_dim`: CubeCL reduces a row of n in one loop, which
        // llvmpipe ends after 65 535 entries.
        let length = valid_so_far.clone().slice([0..batch, n - 1..n]); // [batch, 1]
        let rank = valid_so_far - ones.clone(); // valid tokens before each token
        // Each valid token's position goes to its rank's slot; a padded token adds 0 to the slot
        // of the next valid token (its rank is below n, since L < n when anything is padded).
        let position = positions(n, device).expand([batch, n]);
        let order = Tensor::<2, Int>::zeros([batch, n], device).scatter(
            1,
            rank.clone(),
            position * ones,
            IndexingUpdateOp::Add,
        );
        let starts = segment_starts(length.clone(), m); // [batch, m + 1]
        let missing = starts
            .clone()
            .slice([0..batch, 1..m + 1])
            .equal(starts.slice([0..batch, 0..m]));
        let ranks = SegmentRanks {
            order,
            rank: rank.mask_fill(mask_pad.clone(), n as i64),
            lengths: length.clone().reshape([batch]),
        };
        let short = length.lower_equal_elem(m as i64).reshape([batch]);
        segments(Some(ranks), Some(missing), Some(short))
    }

    /// Segment means of `x` over valid tokens (zero for a missing segment), as tensor ops.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, heads, n, d]`
    /// - output: `[batch, heads, m, d]`
    pub fn mean(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.ranks {
            Some(ranks) => self
                .weights
                .get_or_init(|| averaging_weights(ranks, self.m, self.dtype))
                .clone()
                .matmul(x),
            None => {
                let [batch, heads, n, d] = x.dims();
                let m = self.m;
                x.reshape([batch, heads, m, n / m, d])
                    .mean_dim(3)
                    .reshape([batch, heads, m, d])
            }
        }
    }

    /// [`mean`](Self::mean), as one parallel pass where `custom_kernels` is set and
    /// [`kernels::fused_segment_mean`] applies.
    pub fn mean_with_kernels(&self, x: Tensor<4>, custom_kernels: bool) -> Tensor<4> {
        let fused = custom_kernels
            .then(|| kernels::fused_segment_mean(&x, self))
            .flatten();
        fused.unwrap_or_else(|| self.mean(x))
    }

    /// The number of tokens `n` the segments cut.
    pub fn num_tokens(&self) -> usize {
        self.n
    }

    /// The number of segments `m`.
    pub fn num_segments(&self) -> usize {
        self.m
    }

    /// The ranks the segments are cut over; `None` when every segment is a run of `n / m`
    /// tokens (no mask, `m` divides `n`).
    pub fn ranks(&self) -> Option<&SegmentRanks> {
        self.ranks.as_ref()
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

    /// The mask these segments were cut from and [`missing`](Self::missing) as float flags
    /// (`[batch, n]` and `[batch, m]`, `1.0` at `true`, in `dtype`), where the segments kernel made
    /// them; `None` otherwise.
    pub(crate) fn flags(&self) -> Option<&[Tensor<2>; 2]> {
        self.flags.as_ref()
    }
}

/// `[1, n]`: `0, 1, …, n − 1`, uploaded. Burn's fusion backend builds `arange` as a cumulative
/// sum of ones, which CubeCL computes entry by entry over everything before it: `O(n²)`, and
/// wrong past 65 535 on lavapipe, whose llvmpipe ends a loop there.
fn positions(n: usize, device: &Device) -> Tensor<2, Int> {
    let positions: Vec<i64> = (0..n as i64).collect();
    Tensor::<2, Int>::from_data(TensorData::new(positions, [1, n]), device)
}

/// Rows of a cumulative sum at most this long: CubeCL's cumulative sum loops over every entry
/// before the one it writes.
const PREFIX_BLOCK: usize = 256;

/// The inclusive prefix sums of each row of `x` (`[batch, n]`), as cumulative sums within
/// blocks of [`PREFIX_BLOCK`] entries plus those of the blocks' totals: no loop of CubeCL's
/// cumulative sum (see [`positions`]) runs past `max(PREFIX_BLOCK, n / PREFIX_BLOCK)` entries.
fn prefix_sums(x: Tensor<2, Int>) -> Tensor<2, Int> {
    let [batch, n] = x.dims();
    if n <= PREFIX_BLOCK {
        return x.cumsum(1);
    }
    let blocks = n.div_ceil(PREFIX_BLOCK);
    let padding = blocks * PREFIX_BLOCK - n;
    let x = match padding {
        0 => x,
        _ => Tensor::cat(
            vec![x.clone(), Tensor::zeros([batch, padding], &x.device())],
            1,
        ),
    };
    let within = x.reshape([batch, blocks, PREFIX_BLOCK]).cumsum(2);
    let totals = within
        .clone()
        .slice([0..batch, 0..blocks, PREFIX_BLOCK - 1..PREFIX_BLOCK])
        .reshape([batch, blocks]);
    let before = totals.clone().cumsum(1) - totals; // the sum of the blocks before each block
    (within + before.reshape([batch, blocks, 1]))
        .reshape([batch, blocks * PREFIX_BLOCK])
        .slice([0..batch, 0..n])
}

/// `[batch or 1, 1, m, n]`: `1/count` where position `j` lies in segment `i`, else 0.
fn averaging_weights(ranks: &SegmentRanks, m: usize, dtype: FloatDType) -> Tensor<4> {
    let [batch, n] = ranks.rank.dims();
    let length = ranks.lengths.clone().reshape([batch, 1]);
    let valid = ranks.rank.clone().lower(length.clone().expand([batch, n]));
    let membership = one_hot_segments(segment_index(ranks.rank.clone(), length, m), m)
        .bool_and(valid.reshape([batch, 1, n]).expand([batch, m, n]))
        .float(); // [batch, m, n]
    let counts = membership.clone().sum_dim(2); // [batch, m, 1]
    (membership / counts.clamp_min(1.0))
        .cast(dtype)
        .reshape([batch, 1, m, n])
}

/// `[batch, m + 1]`: the first rank of each segment ([`segment_start`]), and `L` itself last.
fn segment_starts(length: Tensor<2, Int>, m: usize) -> Tensor<2, Int> {
    let [batch, _] = length.dims();
    let s = positions(m + 1, &length.device()).expand([batch, m + 1]);
    segment_start(s, length.expand([batch, m + 1]), m)
}

/// The first rank of segment `s` over `L` valid tokens, `start(s) = ⌈s·L/m⌉ = s·⌊L/m⌋ +
/// ⌈s·(L mod m)/m⌉`, whose products stay below `L` and `m²`; `s` and `length` of one shape.
fn segment_start(s: Tensor<2, Int>, length: Tensor<2, Int>, m: usize) -> Tensor<2, Int> {
    let blocks = length.clone().div_scalar(m as i64); // ⌊L/m⌋
    let rest = length - blocks.clone().mul_scalar(m as i64); // L mod m
    s.clone() * blocks + (s * rest).add_scalar(m as i64 - 1).div_scalar(m as i64)
}

/// The segment of each token: `⌊rank·m/length⌋` for `rank < length`, without forming
/// `rank·m`, which overflows a 32-bit Int once `n·m ≥ 2³¹`.
///
/// An f32 estimate is within one of the answer (its relative error is about 2⁻²²); it is then
/// corrected against the exact start of its segment ([`segment_start`]).
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
    let start = |s: Tensor<2, Int>| segment_start(s, length.clone(), m);
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
        let ranks = segments.ranks().expect("a mask cuts ranked segments");
        let weights = averaging_weights(ranks, m, FloatDType::F32);
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

    #[test]
    fn ranks_list_each_sequences_valid_tokens_in_order() {
        let device = Device::flex();
        let (t, f) = (true, false);
        // Valid lengths 5 (a hole, right padding) and 2 (left padding), n = 10, m = 4.
        let mask = Tensor::<2, Bool>::from_bool(
            burn::tensor::TensorData::new(
                vec![
                    f, f, t, f, f, f, t, t, t, t, //
                    t, t, t, t, t, t, t, t, f, f,
                ],
                [2, 10],
            ),
            &device,
        );
        let segments = Segments::new(10, 4, Some(&mask), FloatDType::F32, &device);
        let ranks = segments.ranks().expect("a mask cuts ranked segments");
        let order = host_ints(ranks.order.clone());
        assert_eq!(&order[..5], &[0, 1, 3, 4, 5]);
        assert_eq!(&order[10..12], &[8, 9]);
        assert_eq!(
            host_ints(ranks.rank.clone()),
            [
                [0, 1, 10, 2, 3, 4, 10, 10, 10, 10],
                [10, 10, 10, 10, 10, 10, 10, 10, 0, 1]
            ]
            .concat()
        );
        let lengths = ranks.lengths.clone().reshape([2, 1]);
        assert_eq!(host_ints(lengths), vec![5, 2]);
        // Two tokens over four segments: ranks 0 and 1 go to segments 0 and 2. The missing
        // segments are those the averaging weights give no token.
        let missing: Vec<bool> = segments
            .missing()
            .unwrap()
            .clone()
            .into_data()
            .try_to_vec::<bool>()
            .unwrap();
        assert_eq!(missing, vec![f, f, f, f, f, t, f, t]);
        let weights = averaging_weights(ranks, 4, FloatDType::F32);
        let empty: Vec<bool> = (weights.sum_dim(3).reshape([2, 4]).equal_elem(0.0))
            .into_data()
            .try_to_vec::<bool>()
            .unwrap();
        assert_eq!(empty, missing);
        // Without a mask and m not dividing n: one row of ranks, the positions themselves.
        let unmasked = Segments::new(10, 4, None, FloatDType::F32, &device);
        let ranks = unmasked.ranks().expect("4 does not divide 10");
        assert_eq!(host_ints(ranks.order.clone()), (0..10).collect::<Vec<_>>());
        assert!(
            Segments::new(12, 4, None, FloatDType::F32, &device)
                .ranks()
                .is_none()
        );
    }

    #[test]
    fn prefix_sums_in_blocks_are_the_cumulative_sums() {
        let device = Device::flex();
        for n in [1, 255, 256, 257, 1000, 3 * PREFIX_BLOCK] {
            let values: Vec<i64> = (0..2 * n as i64).map(|i| (i * 7 + 3) % 5).collect();
            let x = Tensor::<2, Int>::from_data(
                burn::tensor::TensorData::new(values.clone(), [2, n]),
                &device,
            );
            let expected: Vec<i64> = values
                .chunks(n)
                .flat_map(|row| {
                    row.iter().scan(0, |sum, v| {
                        *sum += v;
                        Some(*sum)
                    })
                })
                .collect();
            assert_eq!(host_ints(prefix_sums(x)), expected, "n = {n}");
        }
        assert_eq!(
            host_ints(positions(300, &device)),
            (0..300).collect::<Vec<_>>()
        );
    }
}
