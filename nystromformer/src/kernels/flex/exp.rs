//! `exp` over a slice in a form the compiler vectorises: flex's softmax calls scalar `expf` per
//! element, a fifth of its forward profile.
//!
//! Cephes' method: `x = k·ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by a degree-6 polynomial, `2^k`
//! by building the float's exponent bits. Relative error below 3e-7 on `[-87, 88]`; inputs
//! below are clamped to `-87.3` (`e^-87.3 ≈ 1e-38` stands in for 0, which only ever meets sums
//! of at least one `e^0 = 1`), above to `88` (`2^k` must stay below the infinite exponent).

const LOG2_E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so that `k · LN2_HI` is exact for |k| < 2^9.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// Adding then subtracting 1.5 · 2^23 rounds to the nearest integer without a branch or a call.
const ROUND: f32 = 12_582_912.0;

/// The least input [`exp`] takes: below it, `e^EXP_FLOOR ≈ 1e-38` stands in for 0.
pub const EXP_FLOOR: f32 = -87.3;

/// How `a · b + c` is computed inside a [`multiversion!`] body.
pub trait MulAdd {
    /// `a · b + c`.
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One fused multiply-add (one rounding): for code compiled with the `fma` target feature.
pub struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// A multiply, then an add: for the baseline build, where `f32::mul_add` is a call into libm.
pub struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `e^x`, the polynomial way (see the module), with `A`'s multiply-adds.
#[inline(always)]
pub fn exp<A: MulAdd>(x: f32) -> f32 {
    let x = x.clamp(EXP_FLOOR, 88.0);
    // `ROUND + k` exactly, with `k = round(x / ln 2)` in its low mantissa bits.
    let shifted = A::mul_add(x, LOG2_E, ROUND);
    let k = shifted - ROUND;
    let r = A::mul_add(-k, LN2_HI, x);
    let r = A::mul_add(-k, LN2_LO, r);
    let p = 1.987_569_1e-4;
    let p = A::mul_add(p, r, 1.398_199_9e-3);
    let p = A::mul_add(p, r, 8.333_452e-3);
    let p = A::mul_add(p, r, 4.166_579_6e-2);
    let p = A::mul_add(p, r, 1.666_666_5e-1);
    let p = A::mul_add(p, r, 0.5);
    let e_r = A::mul_add(p * r, r, r) + 1.0;
    // `2^k` from those bits: the shift keeps the low 9 bits of `bits(ROUND) + k + 127`, which
    // are `k + 127` (`bits(ROUND)` ends in 22 zero bits and `k` lies in [-126, 127]). Integer
    // lanes throughout: `k as i32` would be a saturating conversion, which does not vectorise.
    let two_k = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    e_r * two_k
}

/// The sum of `values`, eight running sums at a time (a sum in one running total would stay
/// scalar: float addition is not reassociated).
#[inline(always)]
pub fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane += x;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// `Σ a · b`, eight running sums at a time (see [`sum`]).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    for (a, b) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for ((lane, x), y) in lanes.iter_mut().zip(a).zip(b) {
            *lane += x * y;
        }
    }
    let tail = a.len() / 8 * 8;
    let rest: f32 = a[tail..].iter().zip(&b[tail..]).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + rest
}

/// The largest of `values` (`-inf` for none).
#[inline(always)]
pub fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, b| a.max(*b));
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(*x);
        }
    }
    lanes.iter().fold(rest, |a, b| a.max(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_against_the_standard_library<A: MulAdd>() {
        let exp = exp::<A>;
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let relative = (exp(x) - x.exp()).abs() / x.exp();
            worst = worst.max(relative);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(
            exp(-1e9) < 2e-38 && exp(-1e9) >= 0.0,
            "masked scores vanish"
        );
        assert!(exp(1e9).is_finite());
    }

    #[test]
    fn matches_the_standard_library_to_float_rounding() {
        check_against_the_standard_library::<Separate>();
        // `f32::mul_add` is exact here whatever the CPU (libm's `fmaf` without FMA).
        check_against_the_standard_library::<Fused>();
    }
}
