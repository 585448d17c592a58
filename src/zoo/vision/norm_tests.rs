//! BatchNorm: training mode against the composed formula (output and the three gradients)
//! and PyTorch's running-statistics update; evaluation mode uses the running statistics.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor, Var};

use super::*;
use crate::zoo::test_tensors::max_abs_diff;

fn layer(channels: usize) -> (BatchNorm, Var, Var) {
    let weight =
        Var::from_tensor(&Tensor::new(&[1.5f32, -0.5, 2.0][..channels], &Device::Cpu).unwrap())
            .unwrap();
    let bias =
        Var::from_tensor(&Tensor::new(&[0.1f32, 0.2, -0.3][..channels], &Device::Cpu).unwrap())
            .unwrap();
    let bn = BatchNorm {
        name: "bn1".into(),
        weight: Param::Trainable(weight.clone()),
        bias: Param::Trainable(bias.clone()),
        running_mean: Var::from_tensor(
            &Tensor::new(&[0.5f32, -1.0, 0.0][..channels], &Device::Cpu).unwrap(),
        )
        .unwrap(),
        running_var: Var::from_tensor(
            &Tensor::new(&[2.0f32, 0.5, 1.0][..channels], &Device::Cpu).unwrap(),
        )
        .unwrap(),
        eps: 1e-5,
    };
    (bn, weight, bias)
}

#[test]
fn training_mode_normalises_by_the_batch_and_matches_the_composed_gradients() {
    let (bn, weight, bias) = layer(3);
    let x =
        Var::from_tensor(&Tensor::randn(0.3f32, 2.0, (2, 3, 4, 3), &Device::Cpu).unwrap()).unwrap();
    let probe = Tensor::randn(0f32, 1.0, (2, 3, 4, 3), &Device::Cpu).unwrap();
    let y = bn
        .forward(x.as_tensor(), Role::Train, Activation::Identity)
        .unwrap();
    let grads = (&y * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();

    let x2 = x.as_tensor().reshape((24, 3)).unwrap();
    let mean = x2.mean_keepdim(0).unwrap();
    let centred = x2.broadcast_sub(&mean).unwrap();
    let var = centred.sqr().unwrap().mean_keepdim(0).unwrap();
    let composed = centred
        .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(weight.as_tensor())
        .unwrap()
        .broadcast_add(bias.as_tensor())
        .unwrap()
        .reshape((2, 3, 4, 3))
        .unwrap();
    assert!(max_abs_diff(&y, &composed) < 1e-5);
    let ref_grads = (&composed * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for t in [x.as_tensor(), weight.as_tensor(), bias.as_tensor()] {
        let d = max_abs_diff(grads.get(t).unwrap(), ref_grads.get(t).unwrap());
        assert!(d < 1e-4, "gradient differs by {d}");
    }
}

#[test]
fn training_mode_moves_the_running_statistics_like_pytorch() {
    let (bn, _, _) = layer(1);
    // Four values 1, 2, 3, 6: mean 3, biased variance 3.5, unbiased 14/3.
    let x = Tensor::new(&[1f32, 2., 3., 6.], &Device::Cpu)
        .unwrap()
        .reshape((1, 2, 2, 1))
        .unwrap();
    bn.forward(&x, Role::Train, Activation::Identity).unwrap();
    let mean = bn.running_mean.as_tensor().to_vec1::<f32>().unwrap()[0];
    let var = bn.running_var.as_tensor().to_vec1::<f32>().unwrap()[0];
    assert!((mean - (0.9 * 0.5 + 0.1 * 3.0)).abs() < 1e-6, "{mean}");
    assert!((var - (0.9 * 2.0 + 0.1 * 14.0 / 3.0)).abs() < 1e-6, "{var}");
}

#[test]
fn evaluation_mode_applies_the_running_statistics_and_leaves_them_alone() {
    let (bn, _, _) = layer(1);
    let x = Tensor::new(&[1f32, 2.5], &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 2, 1))
        .unwrap();
    let y = bn.forward(&x, Role::Frozen, Activation::Identity).unwrap();
    let expected: Vec<f32> = [1f32, 2.5]
        .iter()
        .map(|v| (v - 0.5) / (2f32 + 1e-5).sqrt() * 1.5 + 0.1)
        .collect();
    let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(
        got.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6),
        "{got:?}"
    );
    assert!(!y.track_op());
    assert_eq!(bn.running_mean.as_tensor().to_vec1::<f32>().unwrap(), [0.5]);
}

#[test]
fn training_mode_refuses_a_single_value_per_channel() {
    let (bn, _, _) = layer(1);
    let x = Tensor::new(&[1f32], &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 1, 1))
        .unwrap();
    let err = bn
        .forward(&x, Role::Train, Activation::Identity)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 2 images"), "{err}");
}

#[test]
fn the_fused_frozen_path_equals_the_composed_one_for_each_activation() {
    let (bn, _, _) = layer(3);
    let frozen = BatchNorm {
        weight: Param::Frozen(bn.weight.tensor().detach()),
        bias: Param::Frozen(bn.bias.tensor().detach()),
        ..bn.clone()
    };
    let x = (Tensor::randn(0f32, 4.0, (2, 5, 3, 3), &Device::Cpu).unwrap() + 2.0).unwrap();
    for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
        let fused = frozen.forward(&x, Role::Frozen, act).unwrap();
        // A tracked input takes the composed path.
        let tracked = Var::from_tensor(&x).unwrap();
        let composed = frozen
            .forward(tracked.as_tensor(), Role::Frozen, act)
            .unwrap();
        assert!(max_abs_diff(&fused, &composed) < 1e-6, "{act:?}");
    }
    let six = frozen
        .forward(&(x * 100.0).unwrap(), Role::Frozen, Activation::Relu6)
        .unwrap();
    let max = six.max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(max, 6.0);
}

#[test]
fn training_mode_with_an_activation_matches_the_composed_gradients() {
    for act in [Activation::Relu, Activation::Relu6] {
        let (bn, weight, bias) = layer(3);
        // Values spread past 0 and 6 after the affine, so both clamps matter.
        let x = Var::from_tensor(&Tensor::randn(0.5f32, 3.0, (2, 4, 4, 3), &Device::Cpu).unwrap())
            .unwrap();
        let probe = Tensor::randn(0f32, 1.0, (2, 4, 4, 3), &Device::Cpu).unwrap();
        let y = bn.forward(x.as_tensor(), Role::Train, act).unwrap();
        let grads = (&y * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();

        let (plain, _, _) = layer(3);
        let composed = act
            .forward(
                &plain
                    .forward(x.as_tensor(), Role::Train, Activation::Identity)
                    .unwrap(),
            )
            .unwrap();
        assert!(max_abs_diff(&y, &composed) < 1e-5, "{act:?}");
        let ref_grads = (&composed * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let d = max_abs_diff(
            grads.get(x.as_tensor()).unwrap(),
            ref_grads.get(x.as_tensor()).unwrap(),
        );
        assert!(d < 1e-4, "{act:?}: input gradient differs by {d}");
        for (ours, theirs) in [(&weight, &plain.weight), (&bias, &plain.bias)] {
            let Param::Trainable(theirs) = theirs else {
                panic!("trainable")
            };
            let d = max_abs_diff(
                grads.get(ours.as_tensor()).unwrap(),
                ref_grads.get(theirs.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "{act:?}: parameter gradient differs by {d}");
        }
    }
}
