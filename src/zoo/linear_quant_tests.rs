//! QLoRA numerics of `TrainLinear::quantized`: forward within the quantization error,
//! exact input gradient through the dequantized weight, LoRA gradients, merge.

#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::zoo::test_tensors::{max_abs, max_abs_diff};

fn uniform(shape: (usize, usize), seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    max_abs_diff(a, b) / max_abs(b)
}

const OUT: usize = 48;
const IN: usize = 64;

fn adapter_with_b(seed: u64) -> LoraAdapter {
    let mut rng = StdRng::seed_from_u64(seed);
    let lora = LoraAdapter::new(IN, OUT, 4, 12.0, 0.0, &mut rng, &Device::Cpu).unwrap();
    lora.b
        .as_var()
        .unwrap()
        .set(&(uniform((OUT, 4), seed + 1) * 0.1).unwrap())
        .unwrap();
    lora
}

#[test]
fn quant_kind_parses_the_hyperparameter_spelling() {
    assert_eq!(QuantKind::parse("q4_0"), Some(QuantKind::Q4_0));
    assert_eq!(QuantKind::parse("Q8_0"), Some(QuantKind::Q8_0));
    assert_eq!(QuantKind::parse("q4_k"), None);
    assert_eq!(QuantKind::Q8_0.as_str(), "q8_0");
}

#[test]
fn quantized_forward_matches_dense_within_the_quantization_error() {
    let w = uniform((OUT, IN), 1);
    let b = uniform((1, OUT), 2).squeeze(0).unwrap();
    let x = uniform((7, IN), 3);
    let dense = TrainLinear::new(Param::Frozen(w.clone()), Some(Param::Frozen(b.clone())));
    let expected = dense.forward(&x, false).unwrap();
    // Measured: q8_0 5.3e-3, q4_0 8.0e-2 (weights and Q8 activations both rounded); the
    // dequantized weights themselves: q8_0 < 1e-2, q4_0 0.12 (4-bit: 16 levels per block).
    for (kind, bound, w_bound) in [
        (QuantKind::Q8_0, 1e-2f32, 1e-2f32),
        (QuantKind::Q4_0, 1e-1, 0.15),
    ] {
        let q = TrainLinear::quantized(&w, Some(Param::Frozen(b.clone())), kind).unwrap();
        let got = q.forward(&x, false).unwrap();
        assert_eq!(got.dims(), &[7, OUT]);
        let err = rel_err(&got, &expected);
        eprintln!("{} forward max relative error {err:.3e}", kind.as_str());
        assert!(err < bound, "{}: {err}", kind.as_str());
        assert!(err > 0.0, "{}: the base was not quantized", kind.as_str());
        let w_err = rel_err(&q.base_weight().unwrap(), &w);
        eprintln!("{} weight max relative error {w_err:.3e}", kind.as_str());
        assert!(w_err < w_bound, "{} weight: {w_err}", kind.as_str());
    }
}

#[test]
fn quantized_input_gradient_equals_the_gradient_through_the_dequantized_weight() {
    let w = uniform((OUT, IN), 4);
    let upstream = uniform((5, OUT), 5);
    for kind in [QuantKind::Q8_0, QuantKind::Q4_0] {
        let q = TrainLinear::quantized(&w, None, kind).unwrap();
        let reference = TrainLinear::new(
            Param::Trainable(Var::from_tensor(&q.base_weight().unwrap()).unwrap()),
            None,
        );
        // A linear loss: the upstream gradient is the same fixed tensor for both layers,
        // whatever their (slightly different) forward values.
        let grad_of = |layer: &TrainLinear| {
            let x = Var::from_tensor(&uniform((5, IN), 6)).unwrap();
            let y = layer.forward(x.as_tensor(), true).unwrap();
            let grads = (y * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            grads.get(x.as_tensor()).unwrap().clone()
        };
        let diff = max_abs_diff(&grad_of(&q), &grad_of(&reference));
        eprintln!("{} input gradient max abs diff {diff:.3e}", kind.as_str());
        assert!(diff < 1e-5, "{}: {diff}", kind.as_str());
    }
}

#[test]
fn lora_on_a_quantized_base_gets_gradients_through_a_second_quantized_layer() {
    let first = TrainLinear::quantized(&uniform((OUT, IN), 7), None, QuantKind::Q4_0)
        .unwrap()
        .with_lora(adapter_with_b(8));
    // OUT (48) is not a block multiple, so the second layer maps 64 -> 64 after a pad.
    let second = TrainLinear::quantized(&uniform((IN, IN), 9), None, QuantKind::Q8_0).unwrap();
    let x = uniform((3, IN), 10);
    let h = first.forward(&x, true).unwrap();
    let h = h.pad_with_zeros(1, 0, IN - OUT).unwrap();
    let y = second.forward(&h, true).unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let lora = first.lora().unwrap();
    let ga = max_abs(grads.get(lora.a.tensor()).unwrap());
    let gb = max_abs(grads.get(lora.b.tensor()).unwrap());
    eprintln!("lora grads through a quantized stack: max|dA| {ga:.3e} max|dB| {gb:.3e}");
    assert!(ga > 1e-3 && gb > 1e-3, "dA {ga}, dB {gb}");
}

#[test]
fn trainable_bias_on_a_quantized_base_gets_its_gradient() {
    let bias =
        Var::from_tensor(&Tensor::zeros(OUT, candle_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap();
    let q = TrainLinear::quantized(
        &uniform((OUT, IN), 11),
        Some(Param::Trainable(bias.clone())),
        QuantKind::Q8_0,
    )
    .unwrap();
    let y = q.forward(&uniform((4, IN), 12), true).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let g = grads
        .get(bias.as_tensor())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(g.iter().all(|v| (v - 4.0).abs() < 1e-6), "{g:?}");
}

#[test]
fn merge_of_a_quantized_base_equals_the_unmerged_layer() {
    let w = uniform((OUT, IN), 13);
    let x = uniform((6, IN), 14);
    for kind in [QuantKind::Q8_0, QuantKind::Q4_0] {
        let mut lin = TrainLinear::quantized(&w, None, kind)
            .unwrap()
            .with_lora(adapter_with_b(15));
        let delta = lin.lora().unwrap().delta_weight().unwrap();
        let expected_weight = (lin.base_weight().unwrap() + &delta).unwrap();
        assert_eq!(
            max_abs_diff(&lin.merged_weight().unwrap(), &expected_weight),
            0.0
        );

        // Unmerged: quantized matmul (+ Q8 activations on CPU); merged: dense f32.
        let unmerged = lin.forward(&x, false).unwrap();
        let exact = x.matmul(&expected_weight.t().unwrap()).unwrap();
        lin.merge().unwrap();
        assert!(lin.lora().is_none());
        assert!(matches!(lin.base(), LinearBase::Dense(Param::Frozen(_))));
        let merged = lin.forward(&x, false).unwrap();
        assert!(max_abs_diff(&merged, &exact) < 1e-5);
        // What remains is the activation rounding of the quantized matmul only.
        let err = rel_err(&unmerged, &merged);
        eprintln!(
            "{} merged vs unmerged max relative diff {err:.3e}",
            kind.as_str()
        );
        assert!(err < 1e-2, "{}: {err}", kind.as_str());
    }
}

#[test]
fn quantized_base_reports_its_block_size_and_rejects_unaligned_inputs() {
    let w = uniform((OUT, IN), 16);
    let q8 = TrainLinear::quantized(&w, None, QuantKind::Q8_0).unwrap();
    let q4 = TrainLinear::quantized(&w, None, QuantKind::Q4_0).unwrap();
    // 48 rows × 2 blocks of 32; a block is 2 bytes of scale + 32 (q8) or 16 (q4) bytes.
    assert_eq!(q8.parameter_bytes(), 48 * 2 * 34);
    assert_eq!(q4.parameter_bytes(), 48 * 2 * 18);
    assert_eq!(
        q4.with_lora(adapter_with_b(17)).parameter_bytes(),
        48 * 2 * 18 + 4 * (4 * IN + OUT * 4)
    );
    assert_eq!((q8.in_dim().unwrap(), q8.out_dim().unwrap()), (IN, OUT));
    assert!(q8.weight().is_err());
    let err = TrainLinear::quantized(&uniform((8, 48), 18), None, QuantKind::Q4_0).unwrap_err();
    assert!(err.to_string().contains("divisible by 32"), "{err}");
}

/// The quantized base's forward on a GPU against the CPU's (candle's CUDA kernels, which
/// quantize the activations to q8_1 for some batch sizes): finite and as close as the two
/// devices' rounding allows, at batch sizes that take each kernel.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::*;

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn a_quantized_forward_on_cuda_equals_the_cpu() {
        let gpu = Device::new_cuda(0).unwrap();
        for kind in [QuantKind::Q8_0, QuantKind::Q4_0] {
            let weight = uniform((OUT, IN), 3);
            let cpu = TrainLinear::quantized(&weight, None, kind).unwrap();
            let cuda =
                TrainLinear::quantized(&weight.to_device(&gpu).unwrap(), None, kind).unwrap();
            for rows in [1, 5, 8, 9, 40, 150] {
                let x = uniform((rows, IN), 7 + rows as u64);
                let want = cpu.forward_pass(&x, Pass::Eval).unwrap();
                let got = cuda
                    .forward_pass(&x.to_device(&gpu).unwrap(), Pass::Eval)
                    .unwrap()
                    .to_device(&Device::Cpu)
                    .unwrap();
                let finite = got
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .all(|v| v.is_finite());
                let err = rel_err(&got, &want);
                eprintln!("cuda {kind:?} rows {rows}: finite {finite}, rel err {err:e}");
                assert!(finite && err < 2e-2, "{kind:?} rows {rows}: {err}");
            }
        }
    }
}
