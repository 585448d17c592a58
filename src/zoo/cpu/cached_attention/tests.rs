#![allow(clippy::unwrap_used)]

use half::slice::HalfFloatSliceExt;

use super::*;

const SHAPE: HeadShape = HeadShape {
    heads: 4,
    kv_heads: 2,
    head_dim: 8,
};

/// Deterministic values in about [-1, 1].
fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 37 + seed * 101) % 97) as f32 / 48.0 - 1.0) * 0.9)
        .collect()
}

/// One sequence's cache: `history` tokens already in it (values of `seed`), room for
/// `capacity`.
struct Cache {
    keys: Vec<f32>,
    values: Vec<f32>,
    history: usize,
    capacity: usize,
}

fn cache(history: usize, capacity: usize, seed: usize) -> Cache {
    let d = SHAPE.head_dim;
    let mut keys = vec![0.0; SHAPE.kv_heads * capacity * d];
    let mut vals = keys.clone();
    let (old_k, old_v) = (values(keys.len(), seed), values(keys.len(), seed + 1));
    for h in 0..SHAPE.kv_heads {
        let at = h * capacity * d;
        keys[at..at + history * d].copy_from_slice(&old_k[at..at + history * d]);
        vals[at..at + history * d].copy_from_slice(&old_v[at..at + history * d]);
    }
    Cache {
        keys,
        values: vals,
        history,
        capacity,
    }
}

/// Softmax attention written out in f64, one query head and row at a time: row `i` of a
/// sequence sees the keys at positions `0..=history + i`.
fn reference(q: &[f32], caches: &[Cache], rows: &[usize]) -> Vec<f32> {
    let HeadShape {
        heads,
        kv_heads,
        head_dim: d,
    } = SHAPE;
    let mut out = Vec::new();
    let mut row = 0;
    for (c, &n) in caches.iter().zip(rows) {
        for i in 0..n {
            for h in 0..heads {
                let at = (h / (heads / kv_heads)) * c.capacity * d;
                let query = &q[(row + i) * heads * d + h * d..][..d];
                let visible = c.history + i + 1;
                let scores: Vec<f64> = (0..visible)
                    .map(|j| {
                        let key = &c.keys[at + j * d..][..d];
                        query.iter().zip(key).map(|(a, b)| f64::from(a * b)).sum()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::MIN, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for e in 0..d {
                    let mixed: f64 = (0..visible)
                        .map(|j| exps[j] / total * f64::from(c.values[at + j * d + e]))
                        .sum();
                    out.push(mixed as f32);
                }
            }
        }
        row += n;
    }
    out
}

/// `cache`'s keys and values stored as `T` would hold them, and back as f32.
fn stored_as<T: CacheValue>(c: &Cache) -> (Vec<T>, Vec<T>) {
    let mut keys = vec![T::default(); c.keys.len()];
    let mut vals = keys.clone();
    T::store(&c.keys, &mut keys);
    T::store(&c.values, &mut vals);
    (keys, vals)
}

/// Four sequences through one call with caches of `T`: the new rows are stored (as `T`
/// stores them) at their positions, and every row's attention is the reference's over the
/// cache as it holds them, within `tolerance`.
fn new_rows_land_and_attend<T: CacheValue>(tolerance: f32) {
    let HeadShape {
        heads,
        kv_heads,
        head_dim: d,
    } = SHAPE;
    // A decoding row over 5 cached tokens, a fresh 4-token prompt, a 3-token chunk over 2
    // cached tokens (chunked prefill) and a first decoding row over an empty cache: the
    // grouped decode loop (two query heads a key/value head) and both gemm cases.
    let rows = [1, 4, 3, 1];
    let mut caches = vec![
        cache(5, 9, 1),
        cache(0, 4, 2),
        cache(2, 6, 3),
        cache(0, 2, 4),
    ];
    let mut stored: Vec<(Vec<T>, Vec<T>)> = caches.iter().map(stored_as).collect();
    let n: usize = rows.iter().sum();
    let (q, k, v) = (
        values(n * heads * d, 7),
        values(n * kv_heads * d, 8),
        values(n * kv_heads * d, 9),
    );
    let mut seqs: Vec<CachedRows<'_, T>> = stored
        .iter_mut()
        .zip(caches.iter().zip(rows))
        .map(|((keys, vals), (c, rows))| CachedRows {
            rows,
            offset: c.history,
            keys,
            values: vals,
            capacity: c.capacity,
        })
        .collect();
    let out = cached_attention(&q, &k, &v, &mut seqs, SHAPE).unwrap();
    drop(seqs);
    // The new keys and values sit at positions history.. of each head's block, as `T`
    // stores them.
    let mut row = 0;
    for ((c, (keys, vals)), &n) in caches.iter_mut().zip(&stored).zip(&rows) {
        let (keys, vals) = (T::widened(keys), T::widened(vals));
        for i in 0..n {
            for h in 0..kv_heads {
                let cached = (h * c.capacity + c.history + i) * d;
                let given = (row + i) * kv_heads * d + h * d;
                let (mut want_k, mut want_v) = (vec![T::default(); d], vec![T::default(); d]);
                T::store(&k[given..given + d], &mut want_k);
                T::store(&v[given..given + d], &mut want_v);
                assert_eq!(keys[cached..cached + d], *T::widened(&want_k));
                assert_eq!(vals[cached..cached + d], *T::widened(&want_v));
            }
        }
        c.keys = keys.into_owned();
        c.values = vals.into_owned();
        row += n;
    }
    let expected = reference(&q, &caches, &rows);
    assert_eq!(out.len(), expected.len());
    let worst = out
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < tolerance, "{worst}");
}

#[test]
fn new_rows_land_in_their_caches_and_attend_causally_to_their_own_sequence() {
    new_rows_land_and_attend::<f32>(1e-5);
}

#[test]
fn a_bf16_cache_stores_rounded_keys_and_values_and_attends_over_them_in_f32() {
    new_rows_land_and_attend::<bf16>(1e-5);
    // Rounded to nearest even: 1 + 2⁻⁸ (a tie) goes down to 1, 1 + 3·2⁻⁸ up to 1 + 2⁻⁶.
    let mut out = [bf16::ZERO; 2];
    bf16::store(&[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0], &mut out);
    assert_eq!(*bf16::widened(&out), [1.0, 1.0 + 1.0 / 64.0]);
}

#[test]
fn rows_beyond_a_caches_capacity_or_mismatched_inputs_are_refused() {
    let d = SHAPE.head_dim;
    let mut full = cache(3, 4, 1);
    let q = values(2 * SHAPE.heads * d, 2);
    let kv = values(2 * SHAPE.kv_heads * d, 3);
    let mut seqs = [CachedRows {
        rows: 2,
        offset: 3,
        keys: &mut full.keys,
        values: &mut full.values,
        capacity: 4,
    }];
    let err = cached_attention(&q, &kv, &kv, &mut seqs, SHAPE).unwrap_err();
    assert!(
        err.to_string().contains("3 + 2 tokens in a cache of 4"),
        "{err}"
    );
    seqs[0].offset = 0;
    let short = &kv[..kv.len() - 1];
    assert!(cached_attention(&q, short, short, &mut seqs, SHAPE).is_err());
    let odd = HeadShape {
        kv_heads: 3,
        ..SHAPE
    };
    assert!(cached_attention(&q, &kv, &kv, &mut seqs, odd).is_err());
}

/// `softmax(q·Kᵀ)·V` in f64 for each query row of `queries` (`[group, d]`).
fn group_reference(queries: &[f32], keys: &[f32], values: &[f32], d: usize) -> Vec<f64> {
    let total = keys.len() / d;
    let mut out = Vec::new();
    for query in queries.chunks_exact(d) {
        let scores: Vec<f64> = keys
            .chunks_exact(d)
            .map(|key| {
                query
                    .iter()
                    .zip(key)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum()
            })
            .collect();
        let max = scores.iter().copied().fold(f64::MIN, f64::max);
        let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        for e in 0..d {
            out.push(
                (0..total)
                    .map(|t| exps[t] / sum * f64::from(values[t * d + e]))
                    .sum(),
            );
        }
    }
    out
}

#[test]
fn the_avx512_decode_kernel_gives_the_attention_of_each_head_of_a_group() {
    #[cfg(target_arch = "x86_64")]
    {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512 (the portable kernel is tested alone)");
            return;
        }
        // Heads of 64 and 128 values; groups of one, three (SmolLM2), five (a block of four
        // heads and one more) and eight; one cached token and many.
        for (d, group, total) in [
            (64, 1, 1),
            (64, 3, 37),
            (64, 5, 300),
            (128, 3, 20),
            (128, 8, 65),
        ] {
            let queries = values(group * d, d + group);
            let keys = values(total * d, 3 * total);
            let vals = values(total * d, 5 * total + 1);
            let mut scores = vec![f32::NAN; group * total];
            let mut out = vec![f32::NAN; group * d];
            assert!(avx512::decode_group(
                &queries,
                &keys,
                &vals,
                d,
                &mut scores,
                &mut out
            ));
            let want = group_reference(&queries, &keys, &vals, d);
            let worst = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (f64::from(*a) - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-5, "d {d}, group {group}, total {total}: {worst}");
            // The same cache held as bf16: widened as it is read, the sums those of the
            // rounded values.
            let to_bf16 = |v: &[f32]| v.iter().map(|x| bf16::from_f32(*x)).collect::<Vec<_>>();
            let (keys_bf16, vals_bf16) = (to_bf16(&keys), to_bf16(&vals));
            let mut bf16_out = vec![f32::NAN; group * d];
            assert!(avx512::decode_group(
                &queries,
                &keys_bf16,
                &vals_bf16,
                d,
                &mut scores,
                &mut bf16_out
            ));
            let want = group_reference(
                &queries,
                &keys_bf16.to_f32_vec(),
                &vals_bf16.to_f32_vec(),
                d,
            );
            let worst = bf16_out
                .iter()
                .zip(&want)
                .map(|(a, b)| (f64::from(*a) - b).abs())
                .fold(0.0, f64::max);
            assert!(
                worst < 1e-5,
                "bf16: d {d}, group {group}, total {total}: {worst}"
            );
            assert!(out.iter().zip(&bf16_out).any(|(a, b)| a != b));
        }
        // Other head widths are left to the portable kernel.
        let (mut scores, mut out) = (vec![0f32; 4], vec![0f32; 16]);
        let row = values(16, 1);
        assert!(!avx512::decode_group(
            &row,
            &row,
            &row,
            16,
            &mut scores,
            &mut out
        ));
        assert!(out.iter().all(|v| *v == 0.0));
    }
}

/// Resident bytes of this process (`/proc/self/statm`, pages of 4 KiB); None off Linux.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn a_cache_is_allocated_zeroed_without_touching_its_pages() {
    const VALUES: usize = 512 << 20; // 1 GiB of bf16, 2 GiB of f32
    let Some(before) = resident_bytes() else {
        eprintln!("skipped: no /proc/self/statm here");
        return;
    };
    let bf16_cache = bf16::zeroed(VALUES);
    let f32_cache = f32::zeroed(VALUES);
    let grown = resident_bytes().unwrap().saturating_sub(before);
    // Touched, the two would be 3 GiB resident; other tests running beside this one
    // allocate far less than the half-GiB allowed.
    assert!(grown < 512 << 20, "{grown} bytes resident after allocating");
    assert_eq!((bf16_cache.len(), f32_cache.len()), (VALUES, VALUES));
    assert!(bf16_cache[VALUES - 1] == bf16::ZERO && f32_cache[VALUES / 2] == 0.0);
}
