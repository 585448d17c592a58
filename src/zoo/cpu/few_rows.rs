//! `y [m, n] = x [m, k] · Wᵀ` for a few f32 rows (`m` ≤ [`MAX_ROWS`]: decoding one to eight
//! streams), on AVX-512: the weight's rows read once, straight from memory, with the next
//! group's rows requested ahead.
//!
//! Such a product is a read of the whole weight (SmolLM2-135M's 540 MB a token in f32) with
//! a few FMAs per value: its speed is the memory's. OpenBLAS's `sgemm` at one row read it
//! at about 16 GB/s on the 2-core VM of bench/README.md, whose cores read 24 GB/s together.
//! Here each task takes a block of output columns four (from five rows: two) weight rows at
//! a time, keeps the sums in registers over all of `k`, and prefetches the next weight rows
//! into L2 as it reads the current ones, so the core's loads rarely wait on a row's first
//! lines.

use super::bf16_product::new_column_blocks;

/// The most rows this kernel takes; more are a matrix product's work.
pub const MAX_ROWS: usize = 8;

/// Whether the CPU runs [`few_rows_product`].
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x [m, k] · wᵀ` for `w [n, k]` (both row-major), `m` at most [`MAX_ROWS`]; `None` where
/// the CPU lacks AVX-512 or the shapes do not fit.
pub fn few_rows_product(
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
) -> Option<Vec<f32>> {
    if !available() || m == 0 || m > MAX_ROWS || x.len() != m * k || w.len() != n * k {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let fill = |_: usize, columns: std::ops::Range<usize>, (at, stride): (*mut f32, usize)| {
            // SAFETY: AVX-512 is there (checked above); `at` is row 0 of these columns of an
            // `[m, n]` output, which `new_column_blocks` gives this task alone.
            unsafe { avx512::columns(x, w, (m, k), columns, (at, stride)) }
        };
        // SAFETY: the kernel writes every row of its columns, and nothing else.
        Some(unsafe { new_column_blocks(m, &[n], fill) }.swap_remove(0))
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// f32 values a register holds.
    const LANES: usize = 16;

    /// # Safety
    /// The CPU must have AVX-512 F; `x` is `[m, k]` (`m` ≤ 8), `w` holds `columns`' rows
    /// of `k` values, and `at` is row 0 of `columns` of an `[m, stride]` output.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn columns(
        x: &[f32],
        w: &[f32],
        (m, k): (usize, usize),
        columns: Range<usize>,
        out: (*mut f32, usize),
    ) {
        // Up to four rows by four columns, then two columns (sums, weights and an input
        // row: at most 21 of the 32 registers).
        match m {
            1 => rows::<1, 4>(x, w, k, columns, out),
            2 => rows::<2, 4>(x, w, k, columns, out),
            3 => rows::<3, 4>(x, w, k, columns, out),
            4 => rows::<4, 4>(x, w, k, columns, out),
            5 => rows::<5, 2>(x, w, k, columns, out),
            6 => rows::<6, 2>(x, w, k, columns, out),
            7 => rows::<7, 2>(x, w, k, columns, out),
            _ => rows::<8, 2>(x, w, k, columns, out),
        }
    }

    /// [`columns`] for `R` rows: `C` columns at a time, then the block's last ones singly.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize, const C: usize>(
        x: &[f32],
        w: &[f32],
        k: usize,
        columns: Range<usize>,
        (at, stride): (*mut f32, usize),
    ) {
        let store = |column: usize, row: usize, sum: f32| {
            *at.add(row * stride + column - columns.start) = sum;
        };
        let mut column = columns.start;
        while column < columns.end {
            let count = (columns.end - column).min(C);
            // The rows after these: requested while these are read.
            let next = column + count;
            let ahead = columns.end - next;
            if count == C {
                let sums = group::<R, C>(x, w, k, column, (next, ahead));
                for (row, sums) in sums.iter().enumerate() {
                    for (c, sum) in sums.iter().enumerate() {
                        store(column + c, row, *sum);
                    }
                }
            } else {
                for c in 0..count {
                    let sums = group::<R, 1>(x, w, k, column + c, (next, 0));
                    for (row, sums) in sums.iter().enumerate() {
                        store(column + c, row, sums[0]);
                    }
                }
            }
            column += count;
        }
    }

    /// The `R × C` dot products of `x`'s rows with weight rows `column..column + C`, while
    /// the first lines of up to `C` rows from `next` (of `ahead` left) are prefetched.
    #[target_feature(enable = "avx512f")]
    unsafe fn group<const R: usize, const C: usize>(
        x: &[f32],
        w: &[f32],
        k: usize,
        column: usize,
        (next, ahead): (usize, usize),
    ) -> [[f32; C]; R] {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let rows = w.as_ptr().add(column * k);
        let prefetched = w.as_ptr().add(next * k);
        // Lines of the next rows to request each step: all of them over this pass.
        let lines = ahead.min(C) * k;
        let mut at = 0;
        while at < k {
            let left = k - at;
            let mask: __mmask16 = if left >= LANES {
                u16::MAX
            } else {
                (1u16 << left) - 1
            };
            // One line (16 values) of each next row per step: as far ahead as this pass is.
            if at < lines {
                for c in 0..ahead.min(C) {
                    _mm_prefetch::<_MM_HINT_T1>(prefetched.add(c * k + at).cast());
                }
            }
            let mut weights = [_mm512_setzero_ps(); C];
            for (c, weight) in weights.iter_mut().enumerate() {
                *weight = _mm512_maskz_loadu_ps(mask, rows.add(c * k + at));
            }
            for (r, sums) in acc.iter_mut().enumerate() {
                let xs = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(r * k + at));
                for (sum, weight) in sums.iter_mut().zip(&weights) {
                    *sum = _mm512_fmadd_ps(xs, *weight, *sum);
                }
            }
            at += LANES;
        }
        let mut out = [[0f32; C]; R];
        for (sums, lanes) in out.iter_mut().zip(&acc) {
            for (sum, lane) in sums.iter_mut().zip(lanes) {
                *sum = _mm512_reduce_add_ps(*lane);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 37 + seed * 11) % 103) as f32 / 51.0 - 1.0) * 0.5)
            .collect()
    }

    #[test]
    fn few_rows_give_the_f64_sums_within_f32_rounding() {
        if !available() {
            eprintln!("skipped: the few-rows kernel (no AVX-512 here)");
            assert!(few_rows_product(&[1.0], &[1.0], (1, 1, 1)).is_none());
            return;
        }
        // Columns past a group of four and a block; k past a register of sixteen.
        for (m, k, n) in [
            (1, 576, 70),
            (2, 33, 9),
            (3, 16, 130),
            (4, 100, 5),
            (1, 7, 1),
            (5, 40, 67),
            (8, 576, 33),
            (7, 17, 3),
        ] {
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let y = few_rows_product(&x, &w, (m, k, n)).unwrap();
            assert_eq!(y.len(), m * n);
            for row in 0..m {
                for col in 0..n {
                    let terms = (0..k).map(|i| x[row * k + i] as f64 * w[col * k + i] as f64);
                    let exact: f64 = terms.clone().sum();
                    let scale: f64 = terms.map(f64::abs).sum();
                    let got = y[row * n + col] as f64;
                    assert!(
                        (got - exact).abs() <= 1e-6 * scale.max(1.0),
                        "{m}x{k}x{n} [{row},{col}]: {got} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn more_rows_or_mismatched_shapes_are_left_to_the_matrix_product() {
        assert!(few_rows_product(&values(9 * 8, 1), &values(8, 2), (9, 8, 1)).is_none());
        assert!(few_rows_product(&values(8, 1), &values(9, 2), (1, 8, 1)).is_none());
        assert!(few_rows_product(&[], &[], (0, 8, 0)).is_none());
    }
}
