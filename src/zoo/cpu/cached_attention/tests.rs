#![allow(clippy::unwrap_used)]

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

#[test]
fn new_rows_land_in_their_caches_and_attend_causally_to_their_own_sequence() {
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
    let n: usize = rows.iter().sum();
    let (q, k, v) = (
        values(n * heads * d, 7),
        values(n * kv_heads * d, 8),
        values(n * kv_heads * d, 9),
    );
    let mut seqs: Vec<CachedRows<'_>> = caches
        .iter_mut()
        .zip(rows)
        .map(|(c, rows)| CachedRows {
            rows,
            offset: c.history,
            keys: &mut c.keys,
            values: &mut c.values,
            capacity: c.capacity,
        })
        .collect();
    let out = cached_attention(&q, &k, &v, &mut seqs, SHAPE).unwrap();
    drop(seqs);
    // The new keys and values sit at positions history.. of each head's block.
    let mut row = 0;
    for (c, &n) in caches.iter().zip(&rows) {
        for i in 0..n {
            for h in 0..kv_heads {
                let cached = (h * c.capacity + c.history + i) * d;
                let given = (row + i) * kv_heads * d + h * d;
                assert_eq!(c.keys[cached..cached + d], k[given..given + d]);
                assert_eq!(c.values[cached..cached + d], v[given..given + d]);
            }
        }
        row += n;
    }
    let expected = reference(&q, &caches, &rows);
    assert_eq!(out.len(), expected.len());
    let worst = out
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-5, "{worst}");
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
