//! Milliseconds of one bf16 product (`zoo::cpu::bf16_product`) at SmolLM2-135M's shapes by
//! row count, through the bf16 pair dot products, the widened weight and (where the CPU has
//! AMX) the tiles over the weight's rows and over the weight repacked once, beside the f32
//! product of the same sizes: where `WIDENED_FROM_ROWS` and `TILES_FROM_ROWS` come from; and
//! the milliseconds of repacking each weight for the tiles, once a layer when a model is
//! frozen for serving. Prints one JSON line.
//!
//!     cargo run --release --example bf16_speed

use std::time::Instant;

use temper::zoo::cpu::bf16_product::{
    new_packed_product, pair_dot_product, tile_product, widened_product, WIDENED_FROM_ROWS,
};
use temper::zoo::cpu::gemm::{matmul, Threads, View, ViewMut};

/// Milliseconds a call of `run` takes, the best of a few rounds (the least disturbed).
fn best_ms(mut run: impl FnMut()) -> f64 {
    run();
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..10 {
                run();
            }
            start.elapsed().as_secs_f64() * 100.0
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> anyhow::Result<()> {
    // The MLP's up and down projections and the output layer.
    let shapes = [(576usize, 1536usize), (1536, 576), (576, 49152)];
    let mut results = Vec::new();
    let mut packing = Vec::new();
    for (k, n) in shapes {
        let w_f32: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 * 0.01 - 0.06).collect();
        let w: Vec<u16> = w_f32.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
        // What serving pays once a layer at load: the weight repacked for the AMX tiles.
        let as_tensor =
            candle_core::Tensor::from_vec(w_f32.clone(), (n, k), &candle_core::Device::Cpu)?
                .to_dtype(candle_core::DType::BF16)?;
        let start = Instant::now();
        let packed_tensor = temper::zoo::cpu::bf16_packing::packed_weight(&as_tensor)?;
        let packed: Option<Vec<u16>> = packed_tensor
            .as_ref()
            .map(|t| t.flatten_all()?.to_vec1::<half::bf16>())
            .transpose()?
            .map(|values| values.iter().map(|v| v.to_bits()).collect());
        packing.push(serde_json::json!({
            "in": k, "out": n, "packed": packed.is_some(),
            "pack_ms": start.elapsed().as_secs_f64() * 1e3,
        }));
        for m in [1usize, 2, 4, 8, 16, 32, 48, 64, 128, 512] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
            let mut y = vec![0f32; m * n];
            let pairs = best_ms(|| pair_dot_product(&x, &w, (m, k, n), &mut y));
            let widened = best_ms(|| widened_product(&x, &w, (m, k, n), &mut y));
            // The AMX tile kernel, where this CPU has it (null elsewhere).
            let mut tiled = true;
            let tiles = best_ms(|| tiled = tile_product(&x, &w, (m, k, n), &mut y));
            // The same product over the weight repacked once (what a served layer holds).
            let packed_ms = packed.as_ref().map(|tiles| {
                best_ms(|| {
                    let _ = new_packed_product(&x, tiles, (m, k, n));
                })
            });
            let mut y32 = vec![0f32; m * n];
            let f32_ms = best_ms(|| {
                let _ = matmul(
                    ViewMut::rows(&mut y32, m, n),
                    View::rows(&x, m, k),
                    View::rows(&w_f32, n, k).t(),
                    1.0,
                    false,
                    Threads::Pool,
                );
            });
            results.push(serde_json::json!({
                "rows": m, "in": k, "out": n,
                "bf16_pair_dots_ms": pairs, "bf16_widened_ms": widened,
                "bf16_tiles_ms": tiled.then_some(tiles), "bf16_packed_ms": packed_ms,
                "f32_ms": f32_ms,
            }));
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "widened_from_rows": WIDENED_FROM_ROWS, "products": results, "packing": packing,
        })
    );
    Ok(())
}
