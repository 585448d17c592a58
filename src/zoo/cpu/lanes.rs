//! Sums over a row in eight interleaved partial sums, so that the loops computing them
//! vectorise.
//!
//! A left-to-right `f32` sum is one dependency chain: the compiler may not reorder it, so
//! the loop around it stays scalar and waits on each addition's latency. Eight running sums
//! (element `i` into lane `i mod 8`, combined pairwise at the end) are eight independent
//! chains that fit one AVX2 register or two SSE2 ones. The order differs from the left fold's,
//! so the result can differ in the last bits; it is the same on every run and machine.

use std::ops::Add;

const LANES: usize = 8;

/// Σ `f(x)` over `row`, in eight lanes (see the module's comment); `T` is `f32`, or `f64`
/// for a sum of squares over millions of elements.
#[inline(always)]
pub(crate) fn sum_lanes<T>(row: &[f32], f: impl Fn(f32) -> T) -> T
where
    T: Copy + Default + Add<Output = T> + std::iter::Sum,
{
    sum2_lanes(row, row, |x, _| f(x))
}

/// Σ `f(a[i], b[i])` over two rows of the same length, in eight lanes.
#[inline(always)]
pub(crate) fn sum2_lanes<T>(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> T) -> T
where
    T: Copy + Default + Add<Output = T> + std::iter::Sum,
{
    let mut lanes = [T::default(); LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: T = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            lanes[i] = lanes[i] + f(a[i], b[i]);
        }
    }
    let [l0, l1, l2, l3, l4, l5, l6, l7] = lanes;
    ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_element_once_including_the_tail() {
        // 8·k + 5 elements, integers: every order gives the exact sum.
        let row: Vec<f32> = (1..=37).map(|i| i as f32).collect();
        assert_eq!(sum_lanes(&row, |x| x), 703.0);
        assert_eq!(sum_lanes(&row, |x| x * x), 17_575.0);
        let other: Vec<f32> = row.iter().map(|x| 2.0 - x).collect();
        let expected: f32 = row.iter().zip(&other).map(|(a, b)| a * b).sum();
        assert_eq!(sum2_lanes(&row, &other, |a, b| a * b), expected);
        assert_eq!(sum_lanes(&[], |x| x), 0.0);
        assert_eq!(sum_lanes(&row, |x| f64::from(x) * 0.5), 351.5);
        assert_eq!(sum_lanes(&row[..3], |x| x), 6.0);
    }

    #[test]
    fn close_to_the_left_fold_on_rounding_sums() {
        let row: Vec<f32> = (0..384)
            .map(|i| ((i * 37) % 101) as f32 * 0.013 - 0.6)
            .collect();
        let (lanes, fold) = (sum_lanes(&row, |x| x), row.iter().sum::<f32>());
        let magnitude: f32 = row.iter().map(|x| x.abs()).sum();
        assert!(
            (lanes - fold).abs() <= 1e-6 * magnitude,
            "{lanes} vs {fold}"
        );
    }
}
