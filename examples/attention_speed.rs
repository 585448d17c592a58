//! Milliseconds of a decoding step's cached attention (`zoo::cpu::cached_attention`) at
//! SmolLM2-135M's shape (9 query heads over 3 key/value heads of 64, 30 layers), for 32
//! sequences each with 127 tokens in its cache, f32 and bf16 caches: every layer its own
//! caches, so the keys and values come from memory as in a server. Prints one JSON line.
//!
//!     cargo run --release --example attention_speed

use std::time::Instant;

use half::bf16;
use temper::zoo::cpu::cached_attention::{cached_attention, CacheValue, CachedRows, HeadShape};

const LAYERS: usize = 30;
const SEQUENCES: usize = 32;
const CACHED: usize = 127;
const CAPACITY: usize = 192;
const SHAPE: HeadShape = HeadShape {
    heads: 9,
    kv_heads: 3,
    head_dim: 64,
};

/// Milliseconds of one step over every layer (the best of a few rounds), and the checksum
/// of its contexts so the work cannot be dropped.
fn step_ms<T: CacheValue>() -> (f64, f64) {
    let per_head = CAPACITY * SHAPE.head_dim;
    let values = SHAPE.kv_heads * per_head;
    let fill = |i: usize| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5;
    let mut caches: Vec<Vec<(Vec<T>, Vec<T>)>> = (0..LAYERS)
        .map(|_| {
            (0..SEQUENCES)
                .map(|s| {
                    let row: Vec<f32> = (0..values).map(|i| fill(i + s)).collect();
                    let (mut keys, mut vals) = (T::zeroed(values), T::zeroed(values));
                    T::store(&row, &mut keys);
                    T::store(&row, &mut vals);
                    (keys, vals)
                })
                .collect()
        })
        .collect();
    let q: Vec<f32> = (0..SEQUENCES * SHAPE.heads * SHAPE.head_dim)
        .map(fill)
        .collect();
    let kv: Vec<f32> = (0..SEQUENCES * SHAPE.kv_heads * SHAPE.head_dim)
        .map(fill)
        .collect();
    let mut best = f64::INFINITY;
    let mut checksum = 0.0;
    for _ in 0..8 {
        let start = Instant::now();
        for layer in caches.iter_mut() {
            let mut seqs: Vec<CachedRows<'_, T>> = layer
                .iter_mut()
                .map(|(keys, values)| CachedRows {
                    rows: 1,
                    offset: CACHED,
                    keys,
                    values,
                    capacity: CAPACITY,
                })
                .collect();
            let out = cached_attention(&q, &kv, &kv, &mut seqs, SHAPE).unwrap_or_default();
            checksum += f64::from(out[0]);
        }
        best = best.min(start.elapsed().as_secs_f64() * 1e3);
    }
    (best, checksum)
}

fn main() {
    let (f32_ms, a) = step_ms::<f32>();
    let (bf16_ms, b) = step_ms::<bf16>();
    println!(
        "{{\"layers\": {LAYERS}, \"sequences\": {SEQUENCES}, \"cached\": {CACHED}, \
         \"threads\": {}, \"f32_ms\": {f32_ms:.3}, \"bf16_ms\": {bf16_ms:.3}, \"checksum\": {:.4}}}",
        rayon::current_num_threads(),
        a + b
    );
}
