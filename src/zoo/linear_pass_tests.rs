//! `Pass::BaseOnly`: the frozen base alone, without adapters or gradient.

#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{LoraAdapter, Param, Pass, TrainLinear};
use crate::zoo::test_tensors::max_abs_diff;

fn ramp(shape: (usize, usize), step: f32) -> Tensor {
    let n = shape.0 * shape.1;
    let data: Vec<f32> = (0..n).map(|i| ((i % 11) as f32 - 5.0) * step).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

#[test]
fn base_only_pass_skips_the_adapter_and_records_no_gradient() {
    let mut rng = StdRng::seed_from_u64(3);
    let lora = LoraAdapter::new(4, 3, 2, 4.0, 0.5, &mut rng, &Device::Cpu).unwrap();
    // A "trained" adapter: B no longer zero, so it changes the output.
    lora.b.as_var().unwrap().set(&ramp((3, 2), 0.2)).unwrap();
    let (a, b) = (lora.a.tensor().clone(), lora.b.tensor().clone());
    let weight = Var::from_tensor(&ramp((3, 4), 0.1)).unwrap();
    let bias = Var::from_tensor(&ramp((1, 3), 0.05).squeeze(0).unwrap()).unwrap();
    // Trainable base and bias too: the pass must not reach them either.
    let lin = TrainLinear::new(
        Param::Trainable(weight.clone()),
        Some(Param::Trainable(bias.clone())),
    )
    .with_lora(lora);
    let x = Var::from_tensor(&ramp((5, 4), 0.7)).unwrap();
    let composed = x
        .as_tensor()
        .matmul(&weight.as_tensor().t().unwrap())
        .unwrap()
        .broadcast_add(bias.as_tensor())
        .unwrap();
    // The CPU pass runs the training passes' product (it may sum in another order than
    // candle's matmul), so it equals theirs to the bit and candle's to rounding.
    let base = crate::zoo::cpu::linear_op::linear(
        &x.as_tensor().detach(),
        &weight.as_tensor().detach(),
        Some(&bias.as_tensor().detach()),
    )
    .unwrap();
    let off = lin.forward_pass(x.as_tensor(), Pass::BaseOnly).unwrap();
    assert_eq!(max_abs_diff(&off, &base), 0.0);
    assert!(max_abs_diff(&off, &composed) < 1e-5);
    assert!(!off.track_op(), "the base-only pass builds no graph");
    let on = lin.forward_pass(x.as_tensor(), Pass::Eval).unwrap();
    assert!(
        max_abs_diff(&on, &base) > 1e-2,
        "the adapter does change the output"
    );
    // Reference and adapted outputs in one loss: only the adapted one has gradients.
    let loss = (on.sum_all().unwrap() + off.sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    assert!(grads.get(&a).is_some());
    assert!(grads.get(&b).is_some());
    let off_only = off.sum_all().unwrap();
    assert!(!off_only.track_op());
    assert!(off_only.backward().unwrap().get(&b).is_none());
    // The x gradient comes from the adapted pass alone: Wᵀ-sum plus the adapter's.
    let gx = grads.get(x.as_tensor()).unwrap();
    let on_grads = on.sum_all().unwrap().backward().unwrap();
    assert_eq!(max_abs_diff(gx, on_grads.get(x.as_tensor()).unwrap()), 0.0);
}
