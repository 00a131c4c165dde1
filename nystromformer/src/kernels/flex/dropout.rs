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

    /// `out[i] = x[i] · scale` where element `i` is kept, `0` elsewhere; `x` holds the elements
    /// from index `first` on.
    fn apply(self, first: usize, x: &[f32], out: &mut [f32]) {
        apply(self.seed, self.threshold, self.scale, first as u64, x, out)
    }

    /// The mask applied to all of `x` (the forward; the backward applies it to the gradient).
    pub fn apply_all(self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(chunk, (out, x))| self.apply(chunk * CHUNK, x, out));
        out
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

/// The hash of element `index` under `seed`: two rounds, so that both halves of the seed and
/// of the index reach every bit.
#[inline(always)]
fn element_hash(seed: u64, index: u64) -> u32 {
    let round = mix((index as u32) ^ (seed as u32));
    mix(round.wrapping_add((index >> 32) as u32) ^ (seed >> 32) as u32)
}

multiversion! {
    fn apply(seed: u64, threshold: u32, scale: f32, first: u64, x: &[f32], out: &mut [f32]) {
        for (i, (out, x)) in out.iter_mut().zip(x).enumerate() {
            let kept = element_hash(seed, first + i as u64) < threshold;
            *out = if kept { x * scale } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(mask: DropoutMask, n: usize) -> Vec<bool> {
        mask.apply_all(&vec![1.0; n])
            .iter()
            .map(|&x| x != 0.0)
            .collect()
    }

    #[test]
    fn keeps_the_expected_share_and_scales_it() {
        let n = 1 << 20;
        for prob in [0.1, 0.5, 0.9] {
            let out = DropoutMask::new(7, prob).apply_all(&vec![2.0; n]);
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
        // Element by element from an offset, as another split into tasks would compute it.
        let mut tail = vec![0.0; 100];
        mask.apply(n - 100, &[1.0; 100], &mut tail);
        let tail: Vec<bool> = tail.iter().map(|&x| x != 0.0).collect();
        assert_eq!(tail, whole[n - 100..]);
    }
}
