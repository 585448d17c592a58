#![allow(clippy::unwrap_used)]

//! The q8_0 product: its packing against candle's own q8_0 blocks, the vector kernels
//! against the portable ones to the bit, and the product against candle's quantized matmul
//! and the dense product of the dequantized weight, at shapes with every kind of remainder
//! (rows not a multiple of the tile's four, columns not of the sixteen a register holds).

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::*;

/// Deterministic values in about [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(7);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

/// `[n, k]` weight values as candle quantizes them to q8_0, and the blocks' bytes.
fn q8_0_weight(n: usize, k: usize, seed: u64) -> (QTensor, Vec<u8>) {
    let weight = Tensor::from_vec(values(n * k, seed), (n, k), &Device::Cpu).unwrap();
    let blocks = QTensor::quantize(&weight, GgmlDType::Q8_0).unwrap();
    let bytes = blocks.data().unwrap().to_vec();
    (blocks, bytes)
}

/// `(m, k, n)`: rows past a tile of four, columns past a group of sixteen, a weight of one
/// block, SmolLM2's width.
const SHAPES: [(usize, usize, usize); 6] = [
    (1, 576, 64),
    (5, 64, 40),
    (9, 96, 200),
    (3, 32, 16),
    (33, 128, 48),
    (2, 576, 1),
];

#[test]
fn packed_blocks_dequantize_as_candle_does() {
    for &(_, k, n) in &SHAPES {
        let (blocks, bytes) = q8_0_weight(n, k, 3);
        let packed = PackedQ8::from_q8_0(&bytes, n, k).unwrap();
        let expected = blocks
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap();
        assert_eq!(
            packed.dequantized(),
            expected.to_vec1::<f32>().unwrap(),
            "{n}x{k}"
        );
        assert_eq!(packed.dims(), (n, k));
        // A byte a value and an f16 scale a block, the last group padded to sixteen rows.
        assert_eq!(
            packed.storage_bytes(),
            n.div_ceil(16) * 16 * (k + k / 32 * 2)
        );
    }
}

#[test]
fn every_int8_value_survives_the_offset() {
    // One column of one block holding -128…127 (GGUF files may hold -128; candle never
    // writes it), the scale 1.0.
    let mut bytes = vec![0x00, 0x3c]; // f16 1.0, little-endian
    let mut all = Vec::new();
    for first in [-128i32, -96, -64, -32, 0, 32, 64, 96] {
        let block: Vec<i8> = (first..first + 32).map(|v| v as i8).collect();
        all.extend(block.iter().map(|&v| v as f32));
        if first != -128 {
            bytes.extend_from_slice(&[0x00, 0x3c]);
        }
        bytes.extend(block.iter().map(|&v| v as u8));
    }
    let packed = PackedQ8::from_q8_0(&bytes, 1, 256).unwrap();
    assert_eq!(packed.dequantized(), all);
}

#[test]
fn the_vector_quantization_rounds_as_the_portable_one() {
    let mut blocks = vec![vec![0f32; BLOCK], values(BLOCK, 1)];
    // Halves after scaling: amax 127 makes the scale 1, so x·(1/d) lands on .5 exactly.
    blocks.push(
        (0..BLOCK - 1)
            .map(|i| i as f32 - 15.5)
            .chain([127.0])
            .collect(),
    );
    blocks.push(values(BLOCK, 2).iter().map(|v| v * 1e-30).collect());
    for x in &blocks {
        let mut portable = [0i8; BLOCK];
        let (d, sum) = quantize_block_portable(x, &mut portable);
        assert_eq!(sum, portable.iter().map(|&q| q as i32).sum::<i32>());
        assert!(portable.iter().all(|q| (-127..=127).contains(q)));
        if !available() {
            eprintln!("skipped: the vector quantization (no AVX512-VNNI here)");
            continue;
        }
        let mut vector = [0i8; BLOCK];
        assert_eq!(quantize_block(x, &mut vector), (d, sum));
        assert_eq!(vector, portable);
    }
    let halves = &blocks[2];
    let mut q = [0i8; BLOCK];
    quantize_block_portable(halves, &mut q);
    // -15.5 → -16 and -14.5 → -14 (ties to even), 127 → 127.
    assert_eq!((q[0], q[1], q[BLOCK - 1]), (-16, -14, 127));
}

/// The product through `q8_products`, and through the portable kernel alone.
fn both_ways(x: &[f32], k: usize, w: &PackedQ8) -> (Vec<f32>, Vec<f32>) {
    let product = q8_products(x, k, &[w]).unwrap().pop().unwrap();
    let rows = QuantizedRows::new(x, k);
    let mut portable = vec![f32::NAN; rows.rows() * w.n];
    // SAFETY: `portable` is `[m, n]`, all of its columns at once.
    unsafe { portable_columns(&rows, w, 0..w.n, (portable.as_mut_ptr(), w.n)) };
    (product, portable)
}

#[test]
fn the_vector_kernel_gives_the_portable_sums_to_the_bit() {
    if !available() {
        eprintln!("skipped: the vector kernel (no AVX512-VNNI here)");
        return;
    }
    for &(m, k, n) in &SHAPES {
        let (_, bytes) = q8_0_weight(n, k, 5);
        let packed = PackedQ8::from_q8_0(&bytes, n, k).unwrap();
        let x = values(m * k, 6);
        let (product, portable) = both_ways(&x, k, &packed);
        assert_eq!(product.len(), m * n);
        assert_eq!(product, portable, "{m}x{k}x{n}");
    }
}

#[test]
fn the_product_is_candles_quantized_matmul_and_near_the_dense_product() {
    for &(m, k, n) in &SHAPES {
        let (blocks, bytes) = q8_0_weight(n, k, 7);
        let packed = PackedQ8::from_q8_0(&bytes, n, k).unwrap();
        let x = values(m * k, 8);
        let (product, _) = both_ways(&x, k, &packed);
        let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
        // candle's matmul quantizes the activations the same way, but keeps each block's
        // scale as an f16 (as llama.cpp's q8_0 does): 2^-11 of a block's terms at most.
        let candle = QMatMul::from_qtensor(blocks).unwrap().forward(&xt).unwrap();
        let candle = candle.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dense = packed.dequantized();
        for row in 0..m {
            for column in 0..n {
                let got = product[row * n + column];
                let exact: f32 = (0..k).map(|i| x[row * k + i] * dense[column * k + i]).sum();
                let scale: f32 = (0..k)
                    .map(|i| (x[row * k + i] * dense[column * k + i]).abs())
                    .sum();
                let to_candle = (got - candle[row * n + column]).abs();
                assert!(
                    to_candle <= 5e-4 * scale,
                    "{m}x{k}x{n} [{row},{column}]: {got} vs candle"
                );
                // Activations rounded to 8 bits: each term off by at most 1/254 of its block's
                // largest |x|, i.e. well under 1 % of the terms' magnitudes summed.
                assert!(
                    (got - exact).abs() <= 0.01 * scale,
                    "{m}x{k}x{n} [{row},{column}]: {got} vs {exact}"
                );
            }
        }
        assert!(product.iter().any(|v| v.abs() > 0.1));
    }
}

#[test]
fn weights_multiplied_together_give_what_each_gives_alone() {
    let k = 96;
    let weights: Vec<PackedQ8> = [48, 16, 200]
        .iter()
        .enumerate()
        .map(|(i, &n)| PackedQ8::from_q8_0(&q8_0_weight(n, k, 10 + i as u64).1, n, k).unwrap())
        .collect();
    let refs: Vec<&PackedQ8> = weights.iter().collect();
    for m in [1, 6, 70] {
        let x = values(m * k, 20 + m as u64);
        let together = q8_products(&x, k, &refs).unwrap();
        for (w, out) in weights.iter().zip(&together) {
            assert_eq!(out.len(), m * w.n);
            assert_eq!(out, &q8_products(&x, k, &[w]).unwrap()[0]);
        }
    }
}

#[test]
fn mismatched_shapes_are_errors() {
    let (_, bytes) = q8_0_weight(16, 64, 1);
    assert!(PackedQ8::from_q8_0(&bytes, 16, 96).is_err());
    assert!(PackedQ8::from_q8_0(&bytes[..bytes.len() - 1], 16, 64).is_err());
    assert!(PackedQ8::from_q8_0(&[], 0, 48).is_err());
    let packed = PackedQ8::from_q8_0(&bytes, 16, 64).unwrap();
    assert!(q8_products(&values(96, 1), 96, &[&packed]).is_err());
    assert!(q8_products(&values(65, 1), 64, &[&packed]).is_err());
    // No weight to check the width against: still whole blocks or nothing.
    assert!(q8_products(&values(40, 1), 20, &[]).is_err());
}
