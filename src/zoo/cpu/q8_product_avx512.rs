//! The kernels of `super` on AVX-512: activations quantized a block at a time, and tiles of
//! up to four rows by two column groups whose sums stay in registers over all of `k`.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{PackedQ8, QuantizedRows, BLOCK, GROUP, STEP};

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// `super::quantize_block_portable` on two registers.
///
/// # Safety
/// The CPU must have AVX-512 F/BW; `x` and `out` must hold [`BLOCK`] values.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_block(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    let low = _mm512_loadu_ps(x.as_ptr());
    let high = _mm512_loadu_ps(x.as_ptr().add(GROUP));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high)));
    let d = amax / 127.0;
    let inverse = _mm512_set1_ps(if d == 0.0 { 0.0 } else { 1.0 / d });
    // Rounded to nearest, ties to even (the default MXCSR mode), as the portable one rounds.
    let low = _mm512_cvtps_epi32(_mm512_mul_ps(low, inverse));
    let high = _mm512_cvtps_epi32(_mm512_mul_ps(high, inverse));
    _mm_storeu_si128(out.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(low));
    _mm_storeu_si128(
        out.as_mut_ptr().add(GROUP).cast(),
        _mm512_cvtepi32_epi8(high),
    );
    (d, _mm512_reduce_add_epi32(_mm512_add_epi32(low, high)))
}

/// `columns` of every row of the product (`columns.start` a multiple of [`GROUP`], else the
/// portable kernel takes them).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VNNI ([`available`]); `at` must be row 0 of `columns` of
/// an `[rows, stride]` output; `columns` must lie within the weight's `n`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn columns(
    rows: &QuantizedRows,
    w: &PackedQ8,
    columns: Range<usize>,
    out: (*mut f32, usize),
) {
    if !columns.start.is_multiple_of(GROUP) {
        super::portable_columns(rows, w, columns, out);
        return;
    }
    let m = rows.rows();
    let (first, end) = (columns.start / GROUP, columns.end.div_ceil(GROUP));
    let mut row = 0;
    while row < m {
        let count = (m - row).min(4);
        let mut group = first;
        while group < end {
            let pair = end - group >= 2;
            let at = (row, group);
            match (count, pair) {
                (4, true) => tile::<4, 2>(rows, w, at, &columns, out),
                (4, false) => tile::<4, 1>(rows, w, at, &columns, out),
                (3, true) => tile::<3, 2>(rows, w, at, &columns, out),
                (3, false) => tile::<3, 1>(rows, w, at, &columns, out),
                (2, true) => tile::<2, 2>(rows, w, at, &columns, out),
                (2, false) => tile::<2, 1>(rows, w, at, &columns, out),
                (_, true) => tile::<1, 2>(rows, w, at, &columns, out),
                (_, false) => tile::<1, 1>(rows, w, at, &columns, out),
            }
            group += if pair { 2 } else { 1 };
        }
        row += count;
    }
}

/// Rows `row..row + R` by column groups `group..group + C`: per block, `BLOCK / STEP`
/// `vpdpbusd` into integer sums for each pair of row and group, then the block's
/// `(dot − offset) · dw · dx` fused into the f32 sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const R: usize, const C: usize>(
    rows: &QuantizedRows,
    w: &PackedQ8,
    (row, group): (usize, usize),
    columns: &Range<usize>,
    (at, stride): (*mut f32, usize),
) {
    let (k, blocks) = (w.k, w.blocks());
    let (group_bytes, group_scales) = (blocks * BLOCK * GROUP, blocks * GROUP);
    let quants = w.quants.as_ptr().add(group * group_bytes);
    let scales = w.scales.as_ptr().add(group * group_scales);
    let values = rows.values.as_ptr().add(row * k);
    let mut sums = [[_mm512_setzero_ps(); C]; R];
    for b in 0..blocks {
        let mut dots = [[_mm512_setzero_si512(); C]; R];
        for step in 0..BLOCK / STEP {
            let from = (b * (BLOCK / STEP) + step) * GROUP * STEP;
            let mut weights = [_mm512_setzero_si512(); C];
            for (c, weight) in weights.iter_mut().enumerate() {
                *weight = _mm512_loadu_si512(quants.add(c * group_bytes + from).cast());
            }
            for (r, dots) in dots.iter_mut().enumerate() {
                let four = values.add(r * k + b * BLOCK + step * STEP);
                let inputs = _mm512_set1_epi32(four.cast::<i32>().read_unaligned());
                for (dot, weight) in dots.iter_mut().zip(&weights) {
                    *dot = _mm512_dpbusd_epi32(*dot, *weight, inputs);
                }
            }
        }
        let mut block_scales = [_mm512_setzero_ps(); C];
        for (c, scale) in block_scales.iter_mut().enumerate() {
            let halves = scales.add(c * group_scales + b * GROUP);
            *scale = _mm512_cvtph_ps(_mm256_loadu_si256(halves.cast()));
        }
        for (r, (sums, dots)) in sums.iter_mut().zip(&dots).enumerate() {
            let at_block = (row + r) * blocks + b;
            let dx = _mm512_set1_ps(*rows.scales.get_unchecked(at_block));
            let offset = _mm512_set1_epi32(*rows.offsets.get_unchecked(at_block));
            for ((sum, dot), scale) in sums.iter_mut().zip(dots).zip(&block_scales) {
                let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(*dot, offset));
                *sum = _mm512_fmadd_ps(dot, _mm512_mul_ps(*scale, dx), *sum);
            }
        }
    }
    for (r, sums) in sums.iter().enumerate() {
        for (c, sum) in sums.iter().enumerate() {
            let first = (group + c) * GROUP;
            // The last group of a weight whose `n` is no multiple of GROUP: its own columns.
            let lanes = columns.end.saturating_sub(first).min(GROUP);
            let mask = ((1u32 << lanes) - 1) as __mmask16;
            let to = at.add((row + r) * stride + first - columns.start);
            _mm512_mask_storeu_ps(to, mask, *sum);
        }
    }
}
