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
