#![allow(clippy::unwrap_used)]

//! The bf16 product against f64 sums of the same values, on both kernels, at shapes with
//! every kind of remainder (rows not a multiple of 4, columns not of 4 or of the column
//! block, inputs not of the 32 values one instruction takes).

use super::*;

/// Deterministic values in about [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

fn bf16_bits(values: &[f32]) -> Vec<u16> {
    values.iter().map(|v| (v.to_bits() >> 16) as u16).collect()
}

const SHAPES: [(usize, usize, usize); 5] = [
    (1, 576, 70),
    (5, 40, 9),
    (8, 33, 130),
    (4, 64, 4),
    (3, 7, 5),
];

/// `x · wᵀ` in f64 over `x` as `x_value` reads it, and the sum of the terms' magnitudes (the
/// scale of an f32 sum's rounding).
fn reference(
    x: &[f32],
    w: &[u16],
    (m, k, n): (usize, usize, usize),
    x_value: impl Fn(f32) -> f32,
) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(m * n);
    for r in 0..m {
        for c in 0..n {
            let terms =
                (0..k).map(|i| f64::from(x_value(x[r * k + i])) * f64::from(widened(w[c * k + i])));
            out.push(terms.fold((0.0, 0.0), |(sum, scale), t| (sum + t, scale + t.abs())));
        }
    }
    out
}

fn assert_close(got: &[f32], want: &[(f64, f64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (value, (exact, scale))) in got.iter().zip(want).enumerate() {
        let error = (f64::from(*value) - exact).abs();
        assert!(
            error <= 1e-5 * scale.max(1.0),
            "{what}[{i}]: {value} vs {exact} (scale {scale})"
        );
    }
}

#[test]
fn the_portable_kernel_sums_the_widened_weight_with_the_f32_inputs() {
    for (seed, &(m, k, n)) in SHAPES.iter().enumerate() {
        let x = values(m * k, seed as u64);
        let w = bf16_bits(&values(n * k, 100 + seed as u64));
        let mut y = vec![f32::NAN; m * n];
        in_column_blocks(&mut y, (m, n), |columns, block| {
            portable_block(&x, &w, (m, k), columns, block)
        });
        assert_close(
            &y,
            &reference(&x, &w, (m, k, n), |v| v),
            &format!("portable {m}x{k}x{n}"),
        );
    }
}

#[test]
fn the_avx512_kernel_sums_the_weight_with_the_inputs_rounded_to_bf16() {
    #[cfg(target_arch = "x86_64")]
    {
        if !avx512::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16 (the portable kernel is tested alone)");
            return;
        }
        for (seed, &(m, k, n)) in SHAPES.iter().enumerate() {
            let x = values(m * k, seed as u64);
            let w = bf16_bits(&values(n * k, 100 + seed as u64));
            let mut y = vec![f32::NAN; m * n];
            pair_dot_product(&x, &w, (m, k, n), &mut y);
            let want = reference(&x, &w, (m, k, n), avx512::rounded);
            assert_close(&y, &want, &format!("avx512 {m}x{k}x{n}"));
            // Rounding the inputs is what differs from the f32 product, and only that much.
            let exact = reference(&x, &w, (m, k, n), |v| v);
            let worst = y
                .iter()
                .zip(&exact)
                .map(|(v, (e, scale))| (f64::from(*v) - e).abs() / scale.max(1e-9))
                .fold(0.0, f64::max);
            assert!(worst < 4e-3, "{m}x{k}x{n}: {worst}");
        }
    }
}

/// Shapes `(m, k, n)` for the AMX kernels. Rows: one, part of a group of 16, two groups and
/// a part, exactly two; columns: one tile, an odd count of tiles beside pairs of groups,
/// passes of four and a tail, several column blocks.
#[cfg(target_arch = "x86_64")]
const TILE_SHAPES: [(usize, usize, usize); 8] = [
    (1, 64, 16),
    (5, 32, 112),
    (33, 96, 48),
    (32, 64, 80),
    (16, 576, 192),
    (40, 64, 1040),
    // Prompts: many groups of 16 rows with an odd one left beside an odd column tile left;
    // and a padded last group.
    (592, 64, 48),
    (565, 32, 64),
];

#[test]
fn the_tile_kernel_sums_the_weight_with_the_inputs_rounded_to_bf16() {
    #[cfg(target_arch = "x86_64")]
    {
        if !super::super::bf16_tiles::available() {
            eprintln!("skipped: this CPU (or kernel) gives no AMX tiles");
            return;
        }
        for (seed, &(m, k, n)) in TILE_SHAPES.iter().enumerate() {
            let x = values(m * k, 30 + seed as u64);
            let w = bf16_bits(&values(n * k, 130 + seed as u64));
            let mut y = vec![f32::NAN; m * n];
            assert!(tile_product(&x, &w, (m, k, n), &mut y));
            let want = reference(&x, &w, (m, k, n), avx512::rounded);
            assert_close(&y, &want, &format!("tiles {m}x{k}x{n}"));
            // Into a new, uncleared output: every value written, the same as into `y`.
            let fresh = super::super::bf16_tiles::new_product(&x, &w, (m, k, n)).unwrap();
            assert_eq!(fresh, y, "new {m}x{k}x{n}");
            if m >= TILES_FROM_ROWS {
                assert_eq!(new_product(&x, &w, (m, k, n)), y, "new_product {m}x{k}x{n}");
            }
        }
        // Widths that are not whole tiles are left to the other kernels.
        let mut y = vec![0f32; 70];
        assert!(!tile_product(
            &values(40, 1),
            &bf16_bits(&values(40 * 70, 2)),
            (1, 40, 70),
            &mut y
        ));
        assert!(y.iter().all(|v| *v == 0.0));
    }
}

#[test]
fn many_rows_multiply_the_widened_weight_with_the_f32_inputs() {
    for (seed, (k, n)) in [(576, 70), (33, 130)].into_iter().enumerate() {
        let m = WIDENED_FROM_ROWS + 3;
        let x = values(m * k, 50 + seed as u64);
        let w = bf16_bits(&values(n * k, 60 + seed as u64));
        let mut y = vec![f32::NAN; m * n];
        product(&x, &w, (m, k, n), &mut y);
        // The inputs unrounded: the f32 product's sums, to its rounding.
        assert_close(
            &y,
            &reference(&x, &w, (m, k, n), |v| v),
            &format!("widened {m}x{k}x{n}"),
        );
    }
}

#[test]
fn rounding_to_bf16_is_to_nearest_even() {
    #[cfg(target_arch = "x86_64")]
    {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even 1.0.
        assert_eq!(avx512::rounded(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(avx512::rounded(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(avx512::rounded(-2.5), -2.5);
        assert!(avx512::rounded(f32::NAN).is_nan());
    }
}

#[test]
fn the_candle_op_multiplies_f32_rows_by_a_bf16_matrix() {
    let (m, k, n) = (3, 40, 70);
    let device = candle_core::Device::Cpu;
    let x = Tensor::from_vec(values(m * k, 7), (m, k), &device).unwrap();
    let w = Tensor::from_vec(values(n * k, 8), (n, k), &device)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    assert!(takes(&x, &w));
    assert!(!takes(&x, &w.to_dtype(DType::F32).unwrap()));
    let y = bf16_linear(&x, &w).unwrap();
    assert_eq!((y.dims2().unwrap(), y.dtype()), ((m, n), DType::F32));
    // What candle's own (widening) product gives, to the rounding of the inputs.
    let want = x
        .matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
        .unwrap();
    let error = (y - want).unwrap().abs().unwrap().max_all().unwrap();
    assert!(error.to_scalar::<f32>().unwrap() < 0.05, "{error}");
}

#[test]
fn the_packed_weight_kernel_sums_the_weight_with_the_inputs_rounded_to_bf16() {
    #[cfg(target_arch = "x86_64")]
    {
        use super::super::bf16_tiled_weight::{packed, unpacked};
        if !super::super::bf16_tiles::available() {
            eprintln!("skipped: this CPU (or kernel) gives no AMX tiles");
            return;
        }
        for (seed, &(m, k, n)) in TILE_SHAPES.iter().enumerate() {
            let x = values(m * k, 70 + seed as u64);
            let w = bf16_bits(&values(n * k, 170 + seed as u64));
            let tiles = packed(&w, n, k).unwrap();
            assert_eq!(unpacked(&tiles, n, k), w, "{n}x{k} round trip");
            // Into a new, uncleared output: straight into `y` where `m` is whole groups of 16
            // rows, the last group through a buffer where it is not.
            let y = new_packed_product(&x, &tiles, (m, k, n)).unwrap();
            let want = reference(&x, &w, (m, k, n), avx512::rounded);
            assert_close(&y, &want, &format!("packed {m}x{k}x{n}"));
            // The same products in the same order as the in-place tile kernel.
            let mut in_place = vec![f32::NAN; m * n];
            assert!(tile_product(&x, &w, (m, k, n), &mut in_place));
            assert_eq!(y, in_place, "{m}x{k}x{n}");
        }
        // A batch of whole groups (32 rows, two of 16) over several tasks' columns.
        let (m, k, n) = (32, 64, 256);
        let (x, w) = (values(m * k, 5), bf16_bits(&values(n * k, 6)));
        let tiles = packed(&w, n, k).unwrap();
        let fresh = new_packed_product(&x, &tiles, (m, k, n)).unwrap();
        let want = reference(&x, &w, (m, k, n), avx512::rounded);
        assert_close(&fresh, &want, "new 32x64x256");
        assert!(new_packed_product(&x, &tiles, (m, k, n - 16)).is_none());
        assert!(packed(&bf16_bits(&values(40 * 70, 3)), 70, 40).is_none());
    }
}

#[test]
fn a_packed_weight_tensor_keeps_its_shape_and_gives_its_rows_back() {
    let (n, k) = (48, 64);
    let device = candle_core::Device::Cpu;
    let w = Tensor::from_vec(values(n * k, 9), (n, k), &device)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    use super::super::bf16_packing::{packed_weight, unpacked_weight};
    let Some(packed) = packed_weight(&w).unwrap() else {
        eprintln!("skipped: this CPU (or kernel) gives no AMX tiles");
        return;
    };
    assert_eq!(
        (packed.dims2().unwrap(), packed.dtype()),
        ((n, k), DType::BF16)
    );
    let rows = unpacked_weight(&packed).unwrap();
    let (rows, w32) = (
        rows.to_dtype(DType::F32).unwrap(),
        w.to_dtype(DType::F32).unwrap(),
    );
    assert_eq!(crate::zoo::test_tensors::max_abs_diff(&rows, &w32), 0.0);
    let x = Tensor::from_vec(values(3 * k, 10), (3, k), &device).unwrap();
    let want = bf16_linear(&x, &w).unwrap();
    let got = packed_bf16_linears(&x, &[&packed])
        .unwrap()
        .unwrap()
        .remove(0);
    let error = (got - want).unwrap().abs().unwrap().max_all().unwrap();
    assert!(error.to_scalar::<f32>().unwrap() < 1e-5);
    // Widths that are not whole tiles are not packed.
    let odd = w.narrow(0, 0, 40).unwrap().contiguous().unwrap();
    assert!(
        packed_weight(&odd.narrow(1, 0, 40).unwrap().contiguous().unwrap())
            .unwrap()
            .is_none()
    );
}

#[test]
fn packed_weights_of_one_input_multiply_together_as_each_alone() {
    use super::super::bf16_packing::packed_weight;
    let device = candle_core::Device::Cpu;
    let k = 64;
    let weight = |n: usize, seed: u64| {
        Tensor::from_vec(values(n * k, seed), (n, k), &device)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
    };
    let dense = [weight(96, 21), weight(32, 22), weight(32, 23)];
    let Some(first) = packed_weight(&dense[0]).unwrap() else {
        eprintln!("skipped: this CPU (or kernel) gives no AMX tiles");
        return;
    };
    let packed = [
        first,
        packed_weight(&dense[1]).unwrap().unwrap(),
        packed_weight(&dense[2]).unwrap().unwrap(),
    ];
    // 32 rows (two whole groups: written in place) and 5 (padded to one group).
    for m in [32, 5] {
        let x = Tensor::from_vec(values(m * k, 30 + m as u64), (m, k), &device).unwrap();
        let together = packed_bf16_linears(&x, &[&packed[0], &packed[1], &packed[2]])
            .unwrap()
            .unwrap();
        assert_eq!(together.len(), 3);
        for (got, w) in together.iter().zip(&packed) {
            let alone = packed_bf16_linears(&x, &[w]).unwrap().unwrap().remove(0);
            assert_eq!(got.dims2().unwrap(), alone.dims2().unwrap());
            let (got, alone) = (
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                alone.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(got, alone, "{m} rows");
        }
    }
    // A weight that is not bf16 (or an input that is not f32) is not taken.
    let x = Tensor::from_vec(values(2 * k, 1), (2, k), &device).unwrap();
    let f32_weight = dense[1].to_dtype(DType::F32).unwrap();
    assert!(packed_bf16_linears(&x, &[&packed[0], &f32_weight])
        .unwrap()
        .is_none());
}

#[test]
fn column_blocks_are_halved_where_that_evens_out_the_threads() {
    // SmolLM2's attention output and down projections: nine blocks of 64 are five and four
    // on two threads, eighteen of 32 nine and nine.
    assert_eq!(balanced_column_block(&[576], 2), 32);
    // q, k and v together (576 + 192 + 192): fifteen blocks of 64, thirty of 32.
    assert_eq!(balanced_column_block(&[576, 192, 192], 2), 32);
    // Already even, or many blocks: 64 (each weight tile loaded feeds more columns).
    assert_eq!(balanced_column_block(&[1536, 1536], 2), 64);
    assert_eq!(balanced_column_block(&[49_152], 2), 64);
    assert_eq!(balanced_column_block(&[576], 1), 64);
    assert_eq!(balanced_column_block(&[576], 3), 64);
}
