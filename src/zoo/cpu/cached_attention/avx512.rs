//! A decoding row's attention over its cache with AVX-512, for heads of 64 or 128 values
//! (every decoder temper serves): the query heads that share a key/value head are held in
//! 16-lane registers, each key row is read once and dotted with all of them, and the `p·v`
//! accumulations for up to four heads stay in registers over the whole cache. The portable
//! kernel (`super::decode_group`) goes through the same rows compiled for AVX2, with each
//! head's running context in memory; at 32 SmolLM2 streams it was 38 % of the server's CPU
//! time (`perf`, 320-token contexts). Keys and values stored as bf16 are widened to f32 as
//! they are loaded (a bf16 is the top half of an f32), so the sums are f32 either way.

use std::arch::x86_64::*;

use half::bf16;

use super::super::exp::softmax_in_place;

/// Key rows requested ahead of the one being dotted (see [`attend`]).
const PREFETCH_ROWS: usize = 8;

/// Bytes of a cache line: what one prefetch brings in.
const LINE: usize = 64;

/// f32 lanes of one register.
const LANES: usize = 16;

/// A cache value sixteen of which load into one register of f32 lanes.
pub trait Lanes: Copy {
    /// The sixteen values from `at` as f32.
    ///
    /// # Safety
    /// AVX-512F must be present; `at` must point at sixteen readable values.
    unsafe fn lanes(at: *const Self) -> __m512;
}

impl Lanes for f32 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lanes(at: *const f32) -> __m512 {
        _mm512_loadu_ps(at)
    }
}

impl Lanes for bf16 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lanes(at: *const bf16) -> __m512 {
        let bits = _mm256_loadu_si256(at.cast::<__m256i>());
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
    }
}

/// `softmax(q·Kᵀ)·V` for each of `queries` (`[group, d]`) over `keys`, `values`
/// (`[total, d]`) into `out` (`[group, d]`), with `scores` (`group · total`) as scratch;
/// false (nothing written) where the CPU has no AVX-512 or `d` is not 64 or 128.
pub fn decode_group<T: Lanes>(
    queries: &[f32],
    keys: &[T],
    values: &[T],
    d: usize,
    scores: &mut [f32],
    out: &mut [f32],
) -> bool {
    if !is_x86_feature_detected!("avx512f") || keys.len() != values.len() {
        return false;
    }
    let group = queries.len() / d.max(1);
    let total = keys.len() / d.max(1);
    if scores.len() < group * total || out.len() < group * d {
        return false;
    }
    // SAFETY: AVX-512F is present (checked above); every slice is as long as the loops
    // read (checked above, and the chunk counts come from the slices' own lengths).
    unsafe {
        match d {
            64 => attend::<4, T>(queries, keys, values, scores, out),
            128 => attend::<8, T>(queries, keys, values, scores, out),
            _ => return false,
        }
    }
    true
}

/// [`decode_group`] for heads of `C` registers (`d = 16 · C`).
#[target_feature(enable = "avx512f")]
unsafe fn attend<const C: usize, T: Lanes>(
    queries: &[f32],
    keys: &[T],
    values: &[T],
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = C * LANES;
    let group = queries.len() / d;
    let total = keys.len() / d;
    // The loads of each key row waited on memory (half the kernel's time): each (sequence,
    // head) task reads 16–48 KiB nobody touched since the last step, and the hardware's
    // prefetchers start late on each. So the key rows a few ahead are requested into L1,
    // and each value row into L2 as its key row is read, for the `p·v` pass after the
    // softmax. `examples/attention_speed` (32 sequences of 128 tokens, 30 layers, 2
    // cores): 10.9 → 7.2 ms a step with a bf16 cache, 16.5 → 10.9 with f32.
    let row_bytes = d * std::mem::size_of::<T>();
    let (key_bytes, value_bytes) = (keys.as_ptr().cast::<i8>(), values.as_ptr().cast::<i8>());
    let end = std::mem::size_of_val(keys);
    for (t, key) in keys.chunks_exact(d).enumerate() {
        let (ahead, here) = ((t + PREFETCH_ROWS) * row_bytes, t * row_bytes);
        for line in (0..row_bytes).step_by(LINE) {
            if ahead + line < end {
                _mm_prefetch::<_MM_HINT_T0>(key_bytes.add(ahead + line));
            }
            // `values` is as long as `keys` (checked by `decode_group`).
            _mm_prefetch::<_MM_HINT_T1>(value_bytes.add(here + line));
        }
        let key = load::<C, T>(key);
        for (j, query) in queries.chunks_exact(d).enumerate() {
            let mut sum = _mm512_mul_ps(_mm512_loadu_ps(query.as_ptr()), key[0]);
            for (c, lanes) in key.iter().enumerate().skip(1) {
                let q = _mm512_loadu_ps(query.as_ptr().add(c * LANES));
                sum = _mm512_fmadd_ps(q, *lanes, sum);
            }
            scores[j * total + t] = _mm512_reduce_add_ps(sum);
        }
    }
    for head in scores[..group * total].chunks_exact_mut(total) {
        softmax_in_place(head);
    }
    // Heads in register blocks of at most 16 accumulators (of AVX-512's 32 registers).
    let block = (LANES / C).clamp(1, 4);
    let mut first = 0;
    while first < group {
        let heads = (group - first).min(block);
        let scores = &scores[first * total..(first + heads) * total];
        let out = &mut out[first * d..(first + heads) * d];
        match heads {
            1 => weighted_values::<C, 1, T>(scores, values, out),
            2 => weighted_values::<C, 2, T>(scores, values, out),
            3 => weighted_values::<C, 3, T>(scores, values, out),
            _ => weighted_values::<C, 4, T>(scores, values, out),
        }
        first += heads;
    }
}

/// `out[g] = Σₜ scores[g][t] · values[t]` for `G` heads, their sums in registers.
#[target_feature(enable = "avx512f")]
unsafe fn weighted_values<const C: usize, const G: usize, T: Lanes>(
    scores: &[f32],
    values: &[T],
    out: &mut [f32],
) {
    let d = C * LANES;
    let total = scores.len() / G;
    let mut sums = [[_mm512_setzero_ps(); C]; G];
    for (t, value) in values.chunks_exact(d).enumerate().take(total) {
        let value = load::<C, T>(value);
        for (g, head) in sums.iter_mut().enumerate() {
            let p = _mm512_set1_ps(scores[g * total + t]);
            for (sum, lanes) in head.iter_mut().zip(&value) {
                *sum = _mm512_fmadd_ps(p, *lanes, *sum);
            }
        }
    }
    for (head, context) in sums.iter().zip(out.chunks_exact_mut(d)) {
        for (c, lanes) in head.iter().enumerate() {
            _mm512_storeu_ps(context.as_mut_ptr().add(c * LANES), *lanes);
        }
    }
}

/// A row of `16 · C` values in `C` registers.
#[target_feature(enable = "avx512f")]
unsafe fn load<const C: usize, T: Lanes>(row: &[T]) -> [__m512; C] {
    let mut lanes = [_mm512_setzero_ps(); C];
    for (c, lane) in lanes.iter_mut().enumerate() {
        *lane = T::lanes(row.as_ptr().add(c * LANES));
    }
    lanes
}
