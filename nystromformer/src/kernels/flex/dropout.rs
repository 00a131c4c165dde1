//! Dropout on flex in one pass, forward and backward, with a counter-based mask.
//!
//! Burn's `Dropout` draws a Bernoulli tensor one element at a time from flex's ChaCha generator
//! behind a mutex, on one core, then multiplies twice: about 15 % of an LRA ListOps training
//! step. Here element `i` is kept when a hash of `(seed, i)` falls below `keep · 2³²`, so the
//! mask costs a few integer multiplies per element, vectorises, splits across threads at any
//! boundary and never needs storing: the backward recomputes it from the seed. The seed is one
//! draw from flex's generator, so `Backend::seed` makes runs (and resumed runs) repeat exactly.

use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 16;

/// Which elements a dropout call keeps, and the scale `1 / keep` of the kept ones.
#[derive(Debug, Clone, Copy)]
pub struct DropoutMask {
    seed: u64,
    /// Kept when the element's hash is below this (`keep · 2³²`, at most `2³² − 1`).
    threshold: u32,
    scale: f32,
}

impl DropoutMask {
    /// The mask of drop probability `prob` (in `[0, 1)`) for `seed`.
    pub fn new(seed: u64, prob: f64) -> Self {
        let keep = 1.0 - prob;
        Self {
            seed,
            threshold: (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32,
            scale: (1.0 / keep) as f32,
        }
    }

    /// Applies the mask in place to `values`, which hold the elements from index `first` on
    /// (any split into tasks gives the same result).
    fn apply(self, first: usize, values: &mut [f32]) {
        debug_assert!(values.len() <= 1 << 32, "one wrap of the low half at most");
        // Element indices as two 32-bit halves, so that the hash runs in 32-bit lanes: the high
        // half is constant on each side of the point where the low half wraps.
        let high = (first >> 32) as u32;
        let wrap = ((((first >> 32) + 1) << 32) - first).min(values.len());
        let (below, above) = values.split_at_mut(wrap);
        apply(
            self.keys(high),
            self.threshold,
            self.scale,
            first as u32,
            below,
        );
        apply(self.keys(high + 1), self.threshold, self.scale, 0, above);
    }

    /// The two round keys for the elements whose index has high half `high`.
    fn keys(self, high: u32) -> [u32; 2] {
        [self.seed as u32, mix(high ^ (self.seed >> 32) as u32)]
    }

    /// The mask applied to all of `values`, in place (the forward applies it to the input, the
    /// backward to the output gradient).
    pub fn apply_all(self, values: &mut [f32]) {
        values
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(chunk, values)| self.apply(chunk * CHUNK, values));
    }
}

/// A 32-bit integer hash with full avalanche (C. Wellons' `lowbias32`, from his hash-prospector
/// search): each output bit depends on every input bit, and it vectorises as two multiplies.
#[inline(always)]
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

multiversion! {
    /// `values[i] · scale` where element `low + i` is kept (its hash below `threshold`), 0
    /// elsewhere. Two rounds of [`mix`]: the first keyed by the seed's low half, the second by
    /// a mix of its high half and the index's, so that every bit of both reaches the result.
    fn apply(keys: [u32; 2], threshold: u32, scale: f32, low: u32, values: &mut [f32]) {
        for (i, value) in values.iter_mut().enumerate() {
            let hash = mix(mix(low.wrapping_add(i as u32) ^ keys[0]) ^ keys[1]);
            *value = if hash < threshold { *value * scale } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(mask: DropoutMask, values: Vec<f32>) -> Vec<f32> {
        let mut values = values;
        mask.apply_all(&mut values);
        values
    }

    fn kept(mask: DropoutMask, n: usize) -> Vec<bool> {
        applied(mask, vec![1.0; n])
            .iter()
            .map(|&x| x != 0.0)
            .collect()
    }

    #[test]
    fn keeps_the_expected_share_and_scales_it() {
        let n = 1 << 20;
        for prob in [0.1, 0.5, 0.9] {
            let out = applied(DropoutMask::new(7, prob), vec![2.0; n]);
            let kept = out.iter().filter(|&&x| x != 0.0).count() as f64;
            let keep = 1.0 - prob;
            // Five standard deviations of a binomial count.
            let sigma = (n as f64 * keep * prob).sqrt();
            assert!(
                (kept - n as f64 * keep).abs() < 5.0 * sigma,
                "prob {prob}: kept {kept} of {n}"
            );
            let scaled = (2.0 / keep) as f32;
            assert!(out.iter().all(|&x| x == 0.0 || x == scaled));
        }
    }

    #[test]
    fn neighbours_and_seeds_are_independent() {
        let n = 1 << 20;
        let a = kept(DropoutMask::new(1, 0.5), n);
        let b = kept(DropoutMask::new(2, 0.5), n);
        let sigma = (n as f64 * 0.25 * 0.75).sqrt();
        // Pairs of neighbours both kept, and the same element kept under two seeds: a quarter
        // each when independent.
        let neighbours = a.windows(2).filter(|w| w[0] && w[1]).count() as f64;
        let across_seeds = a.iter().zip(&b).filter(|(x, y)| **x && **y).count() as f64;
        for (what, count) in [("neighbours", neighbours), ("seeds", across_seeds)] {
            assert!(
                (count - n as f64 * 0.25).abs() < 5.0 * sigma,
                "{what}: {count} pairs kept of {n}"
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_mask_whatever_the_split() {
        let n = 3 * CHUNK + 17;
        let mask = DropoutMask::new(0xdead_beef_0123_4567, 0.3);
        let whole = kept(mask, n);
        assert_eq!(whole, kept(mask, n));
        // From an offset, as another split into tasks would compute it.
        let mut tail = vec![1.0; 100];
        mask.apply(n - 100, &mut tail);
        let tail: Vec<bool> = tail.iter().map(|&x| x != 0.0).collect();
        assert_eq!(tail, whole[n - 100..]);
        // Across the wrap of the index's low half: the same as element by element.
        let first = (1usize << 32) - 50;
        let mut across = vec![1.0; 100];
        mask.apply(first, &mut across);
        for (i, value) in across.iter().enumerate() {
            let mut one = [1.0];
            mask.apply(first + i, &mut one);
            assert_eq!(*value, one[0], "element {}", first + i);
        }
    }
}
