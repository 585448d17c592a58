//! Serving attention for a batch of sequences, each over its own preallocated KV cache
//! (no gradient). One call per layer writes every sequence's new keys and values into its
//! cache in place and computes every sequence's attention, the sequences spread over the
//! rayon pool.
//!
//! As candle ops each sequence cost eleven small ops a layer (append to a growing cache,
//! transposes, two matmuls, a masked softmax, reshapes and a concatenation), each an
//! allocation and a dispatch: 32 decoding streams on SmolLM2 meant ~10,000 ops a step
//! around work that is a few dot products per head. Here a decoding row (one new token) is
//! a loop of dot products over its visible keys and a loop of `p·v` accumulations, both
//! vectorised, for all the query heads that share a key/value head at once; a prompt chunk
//! of several rows multiplies its head's strided views with `gemm`.
//!
//! A cache holds its keys and values as f32 or as bf16 ([`CacheValue`]): serving in bf16
//! halves the bytes every decoding step reads (at 32 SmolLM2 streams the cache was a fifth
//! of the server's time, all of it reading keys and values), as transformers and llama.cpp
//! keep theirs in bf16 / f16. The arithmetic stays f32 either way: values are widened as
//! they are read.

use std::borrow::Cow;

use half::bf16;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;
use rayon::prelude::*;

use super::exp::softmax_in_place;
use super::gemm::{matmul, Threads, View, ViewMut};
use super::lanes::sum2_lanes;

/// The attention heads of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadShape {
    pub heads: usize,
    /// Grouped-query attention: query head `h` reads key/value head `h / (heads / kv_heads)`.
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// What the AVX-512 decode kernel loads keys and values as, on x86-64 (`avx512::Lanes`);
/// nothing elsewhere.
#[cfg(target_arch = "x86_64")]
pub use avx512::Lanes as RegisterLanes;

#[cfg(not(target_arch = "x86_64"))]
pub trait RegisterLanes {}

#[cfg(not(target_arch = "x86_64"))]
impl<T> RegisterLanes for T {}

/// What a cache stores its keys and values as.
pub trait CacheValue: RegisterLanes + Copy + Default + Send + Sync + 'static {
    /// `row` stored into `out` (as long), rounded to nearest even where narrower.
    fn store(row: &[f32], out: &mut [Self]);
    /// `rows` as f32: themselves, or widened.
    fn widened(rows: &[Self]) -> Cow<'_, [f32]>;
    /// `len` zeros, allocated zeroed (pages the OS maps only as they are written, so a
    /// cache's unused room costs no memory).
    fn zeroed(len: usize) -> Vec<Self>;
}

impl CacheValue for f32 {
    fn store(row: &[f32], out: &mut [f32]) {
        out.copy_from_slice(row);
    }

    fn widened(rows: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(rows)
    }

    fn zeroed(len: usize) -> Vec<f32> {
        vec![0.0; len]
    }
}

impl CacheValue for bf16 {
    fn store(row: &[f32], out: &mut [bf16]) {
        out.convert_from_f32_slice(row);
    }

    fn widened(rows: &[bf16]) -> Cow<'_, [f32]> {
        Cow::Owned(rows.to_f32_vec())
    }

    fn zeroed(len: usize) -> Vec<bf16> {
        // `vec![bf16::ZERO; len]` is a fill that only the optimiser may turn into a zeroed
        // allocation (bf16 is not a primitive the standard library zeroes); the bits of
        // zeros, reinterpreted in place, are one by construction, as f32's zeros are.
        vec![0u16; len].reinterpret_into()
    }
}

/// The AVX-512 decode kernel (`avx512::decode_group`) where this is x86-64; false (nothing
/// written) where it does not run.
fn decode_group_avx512<T: CacheValue>(
    queries: &[f32],
    keys: &[T],
    values: &[T],
    d: usize,
    scores: &mut [f32],
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::decode_group(queries, keys, values, d, scores, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (queries, keys, values, d, scores, out);
        false
    }
}

/// One sequence's part of a call: its new rows and its cache of this layer.
pub struct CachedRows<'a, T> {
    /// New tokens (rows of the batch, in order).
    pub rows: usize,
    /// Tokens already in the cache: the new rows sit at positions `offset..offset + rows`.
    pub offset: usize,
    /// Keys and values, each `[kv_heads, capacity, head_dim]`.
    pub keys: &'a mut [T],
    pub values: &'a mut [T],
    pub capacity: usize,
}

/// One (sequence, key/value head) pair of a call: the sequence's cache of that head
/// (`[capacity, d]` keys and values) and its new rows, from row `row` of the batch.
struct HeadCache<'a, T> {
    keys: &'a mut [T],
    values: &'a mut [T],
    rows: usize,
    offset: usize,
    row: usize,
    kv: usize,
}

/// Appends each sequence's rows of `k`, `v` (`[N, kv_heads·d]`) to its cache and returns
/// `softmax(q·kᵀ)·v` for every row of `q` (`[N, heads·d]`, already scaled by 1/√d), each
/// row seeing its own sequence's keys up to its own position. `seqs` tile the `N` rows in
/// order.
pub fn cached_attention<T: CacheValue>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &mut [CachedRows<'_, T>],
    shape: HeadShape,
) -> candle_core::Result<Vec<f32>> {
    let HeadShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let n: usize = seqs.iter().map(|s| s.rows).sum();
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || d == 0 {
        candle_core::bail!(
            "cached attention: {heads} query heads over {kv_heads} key/value heads of {d}"
        );
    }
    if q.len() != n * heads * d || k.len() != n * kv_heads * d || v.len() != k.len() {
        candle_core::bail!(
            "cached attention: q {}, k {}, v {} values for {n} rows of {heads}/{kv_heads} heads of {d}",
            q.len(),
            k.len(),
            v.len()
        );
    }
    for seq in seqs.iter() {
        let need = kv_heads * seq.capacity * d;
        if seq.offset + seq.rows > seq.capacity
            || seq.keys.len() != need
            || seq.values.len() != need
        {
            candle_core::bail!(
                "cached attention: {} + {} tokens in a cache of {} ({} key values for {need})",
                seq.offset,
                seq.rows,
                seq.capacity,
                seq.keys.len()
            );
        }
    }
    // Every (sequence, key/value head) pair is a task of its own: a batch of decoding
    // sequences and a single long prompt both fill the pool, and a head's arithmetic is
    // the same whatever else is in the batch. A task first writes its head's new keys and
    // values (the first write to a cache page faults it in: on the pool, not on the
    // engine's thread while the other cores wait), then a decoding row's query heads that
    // share the key/value head go through its keys and values together (`decode_group`).
    let (kv_width, q_width) = (kv_heads * d, heads * d);
    let group = heads / kv_heads;
    let mut tasks = Vec::with_capacity(seqs.len() * kv_heads);
    let mut row = 0;
    for seq in seqs.iter_mut().filter(|seq| seq.rows > 0) {
        let head_len = seq.capacity * d;
        let heads_of_seq = seq
            .keys
            .chunks_exact_mut(head_len)
            .zip(seq.values.chunks_exact_mut(head_len));
        for (kv, (keys, values)) in heads_of_seq.enumerate() {
            let (rows, offset) = (seq.rows, seq.offset);
            tasks.push(HeadCache {
                keys,
                values,
                rows,
                offset,
                row,
                kv,
            });
        }
        row += seq.rows;
    }
    let contexts = tasks
        .into_par_iter()
        .map(|head| {
            for i in 0..head.rows {
                let source = (head.row + i) * kv_width + head.kv * d;
                let at = (head.offset + i) * d;
                T::store(&k[source..source + d], &mut head.keys[at..at + d]);
                T::store(&v[source..source + d], &mut head.values[at..at + d]);
            }
            let q = &q[head.row * q_width..(head.row + head.rows) * q_width];
            if head.rows == 1 {
                return Ok(attend_decoding_group(&head, q, shape));
            }
            let mut context = Vec::with_capacity(group * head.rows * d);
            for h in head.kv * group..(head.kv + 1) * group {
                context.extend(attend_head(&head, q, h, shape)?);
            }
            Ok(context)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    // Each task's context is its group's heads in turn, each `[rows, d]`.
    let mut out = vec![0f32; n * q_width];
    let mut row = 0;
    let mut contexts = contexts.into_iter();
    for seq in seqs.iter().filter(|seq| seq.rows > 0) {
        for kv in 0..kv_heads {
            let context = contexts.next().unwrap_or_default();
            for (j, head) in context.chunks_exact(seq.rows * d).enumerate() {
                let h = kv * group + j;
                for (i, values) in head.chunks_exact(d).enumerate() {
                    out[(row + i) * q_width + h * d..][..d].copy_from_slice(values);
                }
            }
        }
        row += seq.rows;
    }
    Ok(out)
}

/// The query heads of `head`'s key/value head for one decoding row (`q`: that row,
/// `[heads·d]`) against its cache: their contexts, head after head (`[group, d]`).
fn attend_decoding_group<T: CacheValue>(
    head: &HeadCache<'_, T>,
    q: &[f32],
    shape: HeadShape,
) -> Vec<f32> {
    let HeadShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let group = heads / kv_heads;
    let (total, kv) = (head.offset + 1, head.kv);
    let keys = &head.keys[..total * d];
    let values = &head.values[..total * d];
    let mut scores = vec![0f32; group * total];
    let mut context = vec![0f32; group * d];
    let queries = &q[kv * group * d..(kv + 1) * group * d];
    if decode_group_avx512(queries, keys, values, d, &mut scores, &mut context) {
        return context;
    }
    let (keys, values) = (T::widened(keys), T::widened(values));
    decode_group(queries, &keys, &values, d, &mut scores, &mut context);
    context
}

/// Query head `h` of one sequence's new rows (`q`: those rows, `[rows, heads·d]`; more
/// than one: a prompt chunk) against its cache: the context `[rows, d]`.
fn attend_head<T: CacheValue>(
    seq: &HeadCache<'_, T>,
    q: &[f32],
    h: usize,
    shape: HeadShape,
) -> candle_core::Result<Vec<f32>> {
    let HeadShape {
        heads, head_dim: d, ..
    } = shape;
    let total = seq.offset + seq.rows;
    let keys = T::widened(&seq.keys[..total * d]);
    let values = T::widened(&seq.values[..total * d]);
    let mut scores = vec![0f32; seq.rows * total];
    let mut context = vec![0f32; seq.rows * d];
    let q_head = View {
        data: &q[h * d..],
        rows: seq.rows,
        cols: d,
        row_stride: heads * d,
        col_stride: 1,
    };
    let keys_t = View::rows(&keys, total, d).t();
    let single = Threads::Single;
    matmul(
        ViewMut::rows(&mut scores, seq.rows, total),
        q_head,
        keys_t,
        1.0,
        false,
        single,
    )?;
    for (i, row) in scores.chunks_exact_mut(total).enumerate() {
        let (seen, future) = row.split_at_mut(seq.offset + i + 1);
        softmax_in_place(seen);
        future.fill(0.0);
    }
    let scores = View::rows(&scores, seq.rows, total);
    matmul(
        ViewMut::rows(&mut context, seq.rows, d),
        scores,
        View::rows(&values, total, d),
        1.0,
        false,
        single,
    )?;
    Ok(context)
}

/// The query rows `queries` (`[group, d]`, one decoding token's heads that share a
/// key/value head) against all `keys` (`[total, d]`, all visible): `out = softmax(q·Kᵀ)·V`
/// for each, `[group, d]`. Each key and value row is read once for the whole group.
/// Compiled for AVX2 as well (see `Cargo.toml`).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn decode_group(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    d: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let group = queries.len() / d;
    let total = keys.len() / d;
    for (t, key) in keys.chunks_exact(d).enumerate() {
        for (j, query) in queries.chunks_exact(d).enumerate() {
            scores[j * total + t] = sum2_lanes(query, key, |a, b| a * b);
        }
    }
    for head in scores[..group * total].chunks_exact_mut(total) {
        softmax_in_place(head);
    }
    out.fill(0.0);
    for (t, value) in values.chunks_exact(d).enumerate() {
        for (j, context) in out.chunks_exact_mut(d).enumerate() {
            let p = scores[j * total + t];
            for (o, &x) in context.iter_mut().zip(value) {
                *o += p * x;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx512;

#[cfg(test)]
mod tests;
