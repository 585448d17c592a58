//! Quantized products at SmolLM2-135M's projection shapes: candle's quantized matmul on the
//! per-core parts (`QuantizedWeight::forward_quantized`) against the same blocks dequantized
//! for the call and multiplied in f32 (`forward_dequantized`), per row count: the
//! measurements behind the row counts at which `forward` switches; and for q8_0 the weight
//! repacked for `cpu::q8_product` as serving multiplies it (`repacked_us`, null where the
//! CPU lacks AVX512-VNNI). Prints JSON lines.
//!
//!     cargo run --release --example quantized_speed

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use temper::zoo::quantized_weight::QuantizedWeight;

fn main() -> anyhow::Result<()> {
    temper::runtime::tune_for_cpu_training();
    // SmolLM2's (hidden 576, MLP 1536) and 512-wide stand-ins (k-quants need inputs in
    // multiples of 256, which 576 is not).
    let widths: &[usize] = &[576, 512];
    let formats = [
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ];
    for (format, &width) in formats
        .iter()
        .flat_map(|f| widths.iter().map(move |w| (*f, w)))
    {
        if width % format.block_size() != 0 {
            continue;
        }
        let shapes = [(1536, width), (width, 1536), (width, width)];
        for rows in [1usize, 2, 4, 8, 16, 32, 64, 128, 256] {
            let mut quantized = 0.0;
            let mut dequantized = 0.0;
            // q8_0 repacked for `cpu::q8_product` (where the CPU has AVX512-VNNI).
            let mut repacked: Option<f64> = None;
            for (out, inp) in shapes {
                let w = Tensor::randn(0f32, 0.05, (out, inp), &Device::Cpu)?;
                let blocks = QTensor::quantize(&w, format)?;
                let q = QuantizedWeight::from_blocks(&blocks, None, &Device::Cpu)?;
                let x = Tensor::randn(0f32, 1.0, (rows, inp), &Device::Cpu)?;
                let reps = 200 / rows.max(1) + 20;
                q.forward_quantized(&x)?;
                let start = Instant::now();
                for _ in 0..reps {
                    q.forward_quantized(&x)?;
                }
                quantized += start.elapsed().as_secs_f64() / reps as f64;
                q.forward_dequantized(&x)?;
                let start = Instant::now();
                for _ in 0..reps {
                    q.forward_dequantized(&x)?;
                }
                dequantized += start.elapsed().as_secs_f64() / reps as f64;
                let packed = q.clone().packed_for_cpu_serving()?;
                if packed.packed_q8().is_some() {
                    packed.forward(&x)?;
                    let start = Instant::now();
                    for _ in 0..reps {
                        packed.forward(&x)?;
                    }
                    let took = start.elapsed().as_secs_f64() / reps as f64;
                    repacked = Some(repacked.unwrap_or(0.0) + took);
                }
            }
            println!(
                "{}",
                serde_json::json!({"format": format!("{format:?}"), "width": width, "rows": rows,
                    "quantized_us": (quantized * 1e6).round(), "dequantized_us": (dequantized * 1e6).round(),
                    "repacked_us": repacked.map(|t| (t * 1e6).round())})
            );
        }
    }
    Ok(())
}
