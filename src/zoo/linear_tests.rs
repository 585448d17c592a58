#![allow(clippy::unwrap_used)]

use super::*;
use crate::zoo::test_tensors::max_abs_diff;
use candle_core::Device;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn ramp(shape: (usize, usize), step: f32) -> Tensor {
    let n = shape.0 * shape.1;
    let data: Vec<f32> = (0..n).map(|i| ((i % 11) as f32 - 5.0) * step).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

#[test]
fn frozen_base_gives_the_plain_input_gradient_and_no_weight_gradient() {
    let w = ramp((3, 4), 0.1);
    let b = ramp((1, 3), 0.05).squeeze(0).unwrap();
    let x = Var::from_tensor(&ramp((2, 4), 0.3)).unwrap();
    let frozen = TrainLinear::new(Param::Frozen(w.clone()), Some(Param::Frozen(b.clone())));
    let y = frozen.forward(x.as_tensor(), true).unwrap();
    let grads = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
    let gx = grads.get(x.as_tensor()).unwrap();
    assert!(grads.get(&w).is_none());

    let plain = x
        .as_tensor()
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&b)
        .unwrap();
    let plain_grads = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let diff = max_abs_diff(gx, plain_grads.get(x.as_tensor()).unwrap());
    assert!(diff < 1e-6, "input gradient differs by {diff}");
    // Within rounding: the fused layer may run on OpenBLAS, candle's matmul on gemm.
    let dy = max_abs_diff(&y, &plain);
    assert!(dy < 1e-6, "output differs by {dy}");
}

#[test]
fn merge_folds_scaled_adapter_into_the_weight() {
    let mut rng = StdRng::seed_from_u64(1);
    let lora = LoraAdapter::new(4, 3, 2, 6.0, 0.0, &mut rng, &Device::Cpu).unwrap();
    assert_eq!(lora.scale, 3.0);
    lora.b.as_var().unwrap().set(&ramp((3, 2), 0.2)).unwrap();
    let mut lin = TrainLinear::new(Param::Frozen(ramp((3, 4), 0.1)), None).with_lora(lora);
    let x = ramp((5, 4), 0.7);
    let before = lin.forward(&x, false).unwrap();
    lin.merge().unwrap();
    assert!(lin.lora().is_none());
    let after = lin.forward(&x, false).unwrap();
    let diff = (before - after).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
}

/// A layer served in bf16 with its weight repacked for the AMX tiles answers as the same
/// layer with its rows kept (the same products in the same order), and still gives its
/// weight back as rows.
#[test]
fn a_weight_repacked_for_serving_gives_the_same_outputs_and_its_rows_back() {
    let (out_dim, in_dim) = (48, 64);
    let w = ramp((out_dim, in_dim), 0.01).to_dtype(DType::BF16).unwrap();
    let b = ramp((1, out_dim), 0.05).squeeze(0).unwrap();
    let layer = || {
        TrainLinear::new(Param::Frozen(w.clone()), Some(Param::Frozen(b.clone())))
            .with_compute_dtype(DType::BF16)
    };
    let (mut rows, mut packed) = (layer(), layer());
    rows.serve_bf16_on_cpu(false).unwrap();
    packed.serve_bf16_on_cpu(true).unwrap();
    assert!(matches!(rows.base(), LinearBase::Dense(_)));
    if !matches!(packed.base(), LinearBase::PackedBf16(_)) {
        eprintln!("skipped: this CPU (or kernel) gives no AMX tiles, so nothing is repacked");
        return;
    }
    assert_eq!(packed.parameter_bytes(), rows.parameter_bytes());
    assert_eq!(
        (packed.out_dim().unwrap(), packed.in_dim().unwrap()),
        (out_dim, in_dim)
    );
    let original = w.to_dtype(DType::F32).unwrap();
    assert_eq!(max_abs_diff(&packed.base_weight().unwrap(), &original), 0.0);
    assert!(packed.weight().is_err());
    // 1, 17 and 40 rows: one group of rows, two, and two plus a part.
    for m in [1, 17, 40] {
        let x = ramp((m, in_dim), 0.07);
        let want = rows.forward(&x, false).unwrap();
        let got = packed.forward(&x, false).unwrap();
        assert_eq!(got.dims(), &[m, out_dim]);
        assert!(max_abs_diff(&got, &want) < 1e-5, "{m} rows");
        let base_only = packed.forward_pass(&x, Pass::BaseOnly).unwrap();
        assert!(
            max_abs_diff(&base_only, &want) < 1e-5,
            "{m} rows, base only"
        );
    }
    // An input the tile product does not take (f64) goes through the rows unpacked.
    let x = ramp((2, in_dim), 0.07);
    let want = rows.forward(&x, false).unwrap();
    let got = packed
        .forward(&x.to_dtype(DType::F64).unwrap(), false)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert!(max_abs_diff(&got, &want) < 0.05, "f64 input");
}
