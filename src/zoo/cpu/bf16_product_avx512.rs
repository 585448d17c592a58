//! The pair dot product kernel of `super`: AVX512-BF16's `vdpbf16ps` on the activations
//! rounded to bf16 and the weight's bf16 rows as they lie, f32 sums.

use std::arch::x86_64::*;

use super::round_to_bf16;

/// bf16 values one `vdpbf16ps` takes from each operand.
const LANES: usize = 32;

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
}

/// `x`'s rows rounded to bf16 (to nearest, ties to even, as `vcvtne2ps2bf16` rounds),
/// each padded with zeros to a multiple of [`LANES`].
pub fn rounded_rows(x: &[f32], m: usize, k: usize) -> Vec<u16> {
    let padded = k.div_ceil(LANES) * LANES;
    let mut out = vec![0u16; m * padded];
    for (row, values) in out.chunks_exact_mut(padded).zip(x.chunks_exact(k)) {
        super::round_into(values, row);
    }
    out
}

/// [`super::round_into`] on AVX512-BF16: `vcvtneps2bf16` rounds to nearest even, as
/// [`round_to_bf16`] does.
///
/// # Safety
/// The CPU must have AVX512-BF16 ([`available`]); `out` must hold `values.len()` values.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn round_into(values: &[f32], out: &mut [u16]) {
    let whole = values.len() / 16 * 16;
    for at in (0..whole).step_by(16) {
        let rounded = _mm512_cvtneps_pbh(_mm512_loadu_ps(values.as_ptr().add(at)));
        _mm256_storeu_si256(
            out.as_mut_ptr().add(at).cast::<__m256i>(),
            std::mem::transmute::<__m256bh, __m256i>(rounded),
        );
    }
    for (bits, value) in out[whole..].iter_mut().zip(&values[whole..]) {
        *bits = round_to_bf16(*value);
    }
}

/// One block of output columns for every row of `x` (bf16, rows padded to [`LANES`]).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/BF16 ([`available`]); `columns` must be rows of `w`
/// (`w.len() >= columns.end · k`) and `block` must hold `m · columns.len()` values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn block(
    x: &[u16],
    w: &[u16],
    (m, k): (usize, usize),
    columns: std::ops::Range<usize>,
    block: &mut [f32],
) {
    let padded = k.div_ceil(LANES) * LANES;
    let width = columns.len();
    let mut r = 0;
    while r < m {
        let rows = if m - r >= 4 { 4 } else { 1 };
        let mut c = 0;
        while c < width {
            let cols = if width - c >= 4 { 4 } else { 1 };
            let x_at = x.as_ptr().add(r * padded);
            let w_at = w.as_ptr().add((columns.start + c) * k);
            let out = |rr: usize, cc: usize| (r + rr) * width + c + cc;
            match (rows, cols) {
                (4, 4) => {
                    let sums = tile::<4, 4>(x_at, padded, w_at, k);
                    for (rr, row) in sums.iter().enumerate() {
                        for (cc, sum) in row.iter().enumerate() {
                            block[out(rr, cc)] = *sum;
                        }
                    }
                }
                (4, _) => {
                    let sums = tile::<4, 1>(x_at, padded, w_at, k);
                    for (rr, row) in sums.iter().enumerate() {
                        block[out(rr, 0)] = row[0];
                    }
                }
                (_, 4) => {
                    let sums = tile::<1, 4>(x_at, padded, w_at, k);
                    for (cc, sum) in sums[0].iter().enumerate() {
                        block[out(0, cc)] = *sum;
                    }
                }
                _ => block[out(0, 0)] = tile::<1, 1>(x_at, padded, w_at, k)[0][0],
            }
            c += cols;
        }
        r += rows;
    }
}

/// The `R × C` dot products of `R` rows of `x` (stride `x_stride`, zero-padded) with `C`
/// consecutive weight rows of `k` values, kept in `R · C` registers over the whole `k`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile<const R: usize, const C: usize>(
    x: *const u16,
    x_stride: usize,
    w: *const u16,
    k: usize,
) -> [[f32; C]; R] {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut at = 0;
    while at < k {
        let left = k - at;
        // The last step reads only the row's remaining values (x is zero past k).
        let mask: __mmask32 = if left >= LANES {
            u32::MAX
        } else {
            (1u32 << left) - 1
        };
        let mut weights = [_mm512_setzero_si512(); C];
        for (c, weight) in weights.iter_mut().enumerate() {
            *weight = _mm512_maskz_loadu_epi16(mask, w.add(c * k + at) as *const i16);
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let xs = _mm512_loadu_si512(x.add(r * x_stride + at) as *const __m512i);
            let xs: __m512bh = std::mem::transmute(xs);
            for (sum, weight) in row.iter_mut().zip(&weights) {
                *sum =
                    _mm512_dpbf16_ps(*sum, xs, std::mem::transmute::<__m512i, __m512bh>(*weight));
            }
        }
        at += LANES;
    }
    let mut out = [[0f32; C]; R];
    for (sums, row) in out.iter_mut().zip(&acc) {
        for (sum, lanes) in sums.iter_mut().zip(row) {
            *sum = _mm512_reduce_add_ps(*lanes);
        }
    }
    out
}

#[cfg(test)]
pub(super) fn rounded(value: f32) -> f32 {
    super::widened(round_to_bf16(value))
}
