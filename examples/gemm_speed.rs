//! GFLOP/s of the fused ops' matrix products (`zoo::cpu::gemm`) on whichever library this
//! process uses (`TEMPER_BLAS`: OpenBLAS where installed, `off` for the gemm crate), at the
//! MiniLM training shapes, for one SmolLM2 MLP product after a serial pause, and for one
//! SmolLM2-135M decoding step. Prints one JSON line.
//!
//!     cargo run --release --example gemm_speed
//!     TEMPER_BLAS=off cargo run --release --example gemm_speed

use std::time::Instant;

use temper::zoo::cpu::few_rows::few_rows_product;
use temper::zoo::cpu::gemm::{matmul, Threads, View, ViewMut};

/// A MiniLM-L6 batch of 16 Rotten Tomatoes snippets is about 432 tokens.
const TOKENS: usize = 432;

fn ramp(len: usize, period: usize) -> Vec<f32> {
    (0..len).map(|i| (i % period) as f32 * 0.01).collect()
}

/// `y [m, out] = x [m, inp] · wᵀ` for `w [out, inp]`: a linear layer's forward product.
fn forward_product(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    (m, inp, out): (usize, usize, usize),
) -> anyhow::Result<()> {
    Ok(matmul(
        ViewMut::rows(&mut y[..m * out], m, out),
        View::rows(&x[..m * inp], m, inp),
        View::rows(&w[..out * inp], out, inp).t(),
        1.0,
        false,
        Threads::Pool,
    )?)
}

/// The median of `times`, which it sorts.
fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Best-of-`reps` GFLOP/s of `work`, which does `flops` floating-point operations.
fn gflops(
    flops: f64,
    reps: usize,
    mut work: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..reps {
        let start = Instant::now();
        work()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(flops / best / 1e9)
}

/// A linear layer's three products: forward `x·Wᵀ`, input gradient `g·W`, weight gradient
/// `gᵀ·x` (accumulated, as across micro-batches).
fn training_shapes() -> anyhow::Result<serde_json::Value> {
    let mut rows = serde_json::Map::new();
    for (inp, out) in [(384usize, 384usize), (384, 1536), (1536, 384)] {
        let (x, w, g) = (
            ramp(TOKENS * inp, 13),
            ramp(out * inp, 7),
            ramp(TOKENS * out, 11),
        );
        let (mut y, mut dx, mut dw) = (
            vec![0.0; TOKENS * out],
            vec![0.0; TOKENS * inp],
            vec![0.0; out * inp],
        );
        let flops = 2.0 * (TOKENS * inp * out) as f64;
        let (xv, wv, gv) = (
            View::rows(&x, TOKENS, inp),
            View::rows(&w, out, inp),
            View::rows(&g, TOKENS, out),
        );
        let forward = gflops(flops, 50, || {
            forward_product(&mut y, &x, &w, (TOKENS, inp, out))
        })?;
        let input_grad = gflops(flops, 50, || {
            Ok(matmul(
                ViewMut::rows(&mut dx, TOKENS, inp),
                gv,
                wv,
                1.0,
                false,
                Threads::Pool,
            )?)
        })?;
        let weight_grad = gflops(flops, 50, || {
            Ok(matmul(
                ViewMut::rows(&mut dw, out, inp),
                gv.t(),
                xv,
                1.0,
                true,
                Threads::Pool,
            )?)
        })?;
        rows.insert(
            format!("{TOKENS}x{inp}·{inp}x{out}"),
            serde_json::json!({"forward": round(forward), "input_grad": round(input_grad), "weight_grad": round(weight_grad)}),
        );
    }
    Ok(rows.into())
}

/// Median milliseconds of one decoding step's linear products (30 layers of q, k, v, o,
/// gate, up, down, then the tied LM head) for `m` sequences: the weights (540 MB) come
/// from memory, as in serving. With `few_rows`, on `cpu::few_rows` (at most eight rows).
fn decode_step_ms(m: usize, few_rows: bool) -> anyhow::Result<f64> {
    let layer = [
        (576usize, 576usize),
        (576, 192),
        (576, 192),
        (576, 576),
        (576, 1536),
        (576, 1536),
        (1536, 576),
    ];
    let mut weights: Vec<(usize, usize, Vec<f32>)> = (0..30)
        .flat_map(|_| layer.iter().map(|&(i, o)| (i, o, ramp(i * o, 7))))
        .collect();
    weights.push((576, 49152, ramp(576 * 49152, 7)));
    let x = ramp(m * 1536, 13);
    let mut y = vec![0.0; m * 49152];
    let mut times = Vec::new();
    for _ in 0..21 {
        let start = Instant::now();
        for (inp, out, w) in &weights {
            match few_rows {
                // What serving's linear layers run for up to eight rows, where there is AVX-512.
                true => {
                    let product = few_rows_product(&x[..m * inp], w, (m, *inp, *out));
                    let product = product.ok_or_else(|| anyhow::anyhow!("no few-rows kernel"))?;
                    y[..m * out].copy_from_slice(&product);
                }
                false => forward_product(&mut y, &x, w, (m, *inp, *out))?,
            }
        }
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(round(median(&mut times)))
}

/// Median milliseconds of one SmolLM2 MLP product (216 × 576 · 576 × 1536, an SFT
/// micro-batch) run after `pause_us` of serial work, with the pool's other threads left to
/// sleep or kept polling (`runtime::keep_pool_awake`), as a training step's products follow
/// its serial stretches.
fn product_after_pause_ms(pause_us: u128, awake: bool) -> anyhow::Result<f64> {
    let (m, k, n) = (216, 576, 1536);
    let (x, w) = (ramp(m * k, 13), ramp(n * k, 7));
    let mut y = vec![0.0; m * n];
    let mut run = || -> anyhow::Result<f64> {
        let mut times = Vec::new();
        for _ in 0..101 {
            let pause = Instant::now();
            while pause.elapsed().as_micros() < pause_us {
                std::hint::spin_loop();
            }
            let start = Instant::now();
            forward_product(&mut y, &x, &w, (m, k, n))?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok((median(&mut times) * 100.0).round() / 100.0)
    };
    if awake {
        temper::runtime::keep_pool_awake(run)
    } else {
        run()
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn main() -> anyhow::Result<()> {
    temper::runtime::tune_for_cpu_training();
    let library = temper::zoo::cpu::blas::describe();
    // Training runs its products on a pool of its own (runtime::on_own_pool); serving's
    // decode calls them from its engine thread.
    let training = temper::runtime::on_own_pool(training_shapes)?;
    let mut after_pause = serde_json::Map::new();
    for pause_us in [0, 200, 1000] {
        let asleep = temper::runtime::on_own_pool(|| product_after_pause_ms(pause_us, false))?;
        let awake = temper::runtime::on_own_pool(|| product_after_pause_ms(pause_us, true))?;
        after_pause.insert(
            format!("{pause_us}us"),
            serde_json::json!({"pool_asleep": asleep, "pool_awake": awake}),
        );
    }
    let decode: Vec<f64> = [1, 8]
        .into_iter()
        .map(|m| decode_step_ms(m, false))
        .collect::<anyhow::Result<_>>()?;
    let few_rows: Option<Vec<f64>> = match temper::zoo::cpu::few_rows::available() {
        true => Some(
            [1, 4, 8]
                .into_iter()
                .map(|m| decode_step_ms(m, true))
                .collect::<anyhow::Result<_>>()?,
        ),
        false => None,
    };
    let few_rows = few_rows.map(|ms| serde_json::json!({"1": ms[0], "4": ms[1], "8": ms[2]}));
    println!(
        "{}",
        serde_json::json!({"library": library, "threads": rayon::current_num_threads(),
            "training_gflops": training, "mlp_product_ms_after_pause": after_pause, "decode_step_ms": {"1": decode[0], "8": decode[1]},
            "decode_step_few_rows_ms": few_rows})
    );
    Ok(())
}
