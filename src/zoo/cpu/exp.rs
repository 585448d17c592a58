//! `exp` for the element-wise training kernels, written so that a loop calling it
//! vectorises.
//!
//! `f32::exp` is a call into libm (glibc's `__expf_fma`): correctly rounded, but one element
//! at a time, and a loop that calls it cannot be vectorised. In the MiniLM / WNUT-16 step the
//! GELU's `exp(−z²)` (forward and backward) and the attention softmax were ~7 % of the CPU
//! time with libm's `exp`. Here the range reduction and the polynomial are plain
//! arithmetic and bit operations with no branch and no call, which the compiler turns into
//! SIMD over the loop (SSE2 on the baseline x86-64 target: four lanes).
//!
//! Method (Cody & Waite's reduction, Moshier's Cephes `expf` polynomial): `x = n·ln 2 + r`
//! with `n = round(x / ln 2)` and `|r| ≤ ln 2 / 2`, `ln 2` split in two so `r` is exact to
//! f32; `exp(r)` by a degree-7 polynomial; `2ⁿ` built in the exponent bits. The rounding
//! uses the 1.5·2²³ trick (adding it leaves `n` in the low mantissa bits), so no `round`
//! call either. Relative error ≤ 2.4e-7 (two units in the last place) against f64 `exp`,
//! tested below over the whole range.

/// Below this `exp(x)` is under f32's smallest normal number: the result is 0 (libm would
/// give a subnormal; every caller adds or multiplies it into numbers ≥ 2⁻¹²⁶ times larger).
const MIN_ARG: f32 = -87.336_54;
/// Above this `n` could reach 128, whose `2ⁿ` does not fit the exponent field: the result
/// is +∞ (the true value is finite up to 88.72; the callers feed `exp` arguments ≤ 0, or
/// take `1 / (1 + exp(x))`, 0 either way).
const MAX_ARG: f32 = 88.0;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 = `LN2_HI + LN2_LO`, `LN2_HI` with few enough mantissa bits that `n · LN2_HI` is
/// exact for every `n` in range.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: `y + ROUNDER` is `ROUNDER + round(y)` exactly for |y| < 2²², and its bits are
/// `ROUNDER`'s bits plus `round(y)`.
const ROUNDER: f32 = 12_582_912.0;
const ROUNDER_BITS: i32 = 0x4B40_0000;
/// exp(r) ≈ 1 + r + r²·P(r) on |r| ≤ ln 2 / 2.
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5.000_000_3e-1,
];

/// eˣ (see the module's comment for the range and accuracy); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let clamped = x.clamp(MIN_ARG, MAX_ARG);
    let shifted = clamped * LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = P[1..].iter().fold(P[0], |p, &c| p * r + c);
    let exp_r = p * (r * r) + r + 1.0;
    // n + 127 in the exponent field is 2ⁿ; `shifted`'s low bits hold n.
    let exponent = (shifted.to_bits() as i32)
        .wrapping_sub(ROUNDER_BITS)
        .wrapping_add(127);
    let scale = f32::from_bits((exponent << 23) as u32);
    let y = exp_r * scale;
    if x < MIN_ARG {
        0.0
    } else if x > MAX_ARG {
        f32::INFINITY
    } else {
        y
    }
}

/// Softmax of `values` in place: the exponentials first, a loop that vectorises, then their
/// sum in order. The packed attention and the decoder's masked softmax both use it, so
/// their probabilities agree value for value.
#[inline(always)]
pub(crate) fn softmax_in_place(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    values
        .iter_mut()
        .for_each(|value| *value = exp(*value - max));
    let inverse = 1.0 / values.iter().sum::<f32>();
    values.iter_mut().for_each(|value| *value *= inverse);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error against f64's `exp` at `x`.
    fn relative_error(x: f32) -> f64 {
        let exact = f64::from(x).exp();
        (f64::from(exp(x)) - exact).abs() / exact
    }

    #[test]
    fn within_two_ulp_of_the_exact_value_over_the_whole_range() {
        let (mut worst, mut at) = (0f64, 0f32);
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = (MIN_ARG + (MAX_ARG - MIN_ARG) * (i as f32 / steps as f32)).min(MAX_ARG);
            let error = relative_error(x);
            if error > worst {
                (worst, at) = (error, x);
            }
        }
        assert!(worst <= 2.4e-7, "relative error {worst:e} at {at}");
        // The points where the reduction changes n, and around zero.
        for x in [-0.346_573_6f32, 0.346_573_6, 0.0, -1e-30, 1e-30, 1.0, -1.0] {
            assert!(relative_error(x) <= 2.4e-7, "{x}: {:e}", relative_error(x));
        }
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn saturates_outside_the_range_and_keeps_nan() {
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        // The ends of the range are finite and not zero.
        assert!(exp(MIN_ARG) > 0.0 && exp(MAX_ARG).is_normal());
    }
}
