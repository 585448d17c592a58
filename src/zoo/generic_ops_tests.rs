//! Each op with a fused CPU kernel, called through the layer code the models use, against
//! the same call on the device-generic path ([`crate::zoo::fused::with_generic_ops`]): the
//! composed candle ops a GPU runs. Forward and every gradient (input, weight, bias, LoRA A
//! and B) agree within rounding. `tasks::generic_path_tests` does the same for whole steps.
#![allow(clippy::unwrap_used)]

use candle_core::{Tensor, Var};
use rand::SeedableRng;

use super::bert::LayerNormW;
use super::decoder::kernels::{masked_softmax, rms_norm, rope, CausalPrefix};
use super::decoder::swiglu::swiglu;
use super::fused::{gelu_erf, uses_fused_kernels, with_generic_ops};
use super::linear::{Param, Pass, TrainLinear};
use super::lora::LoraAdapter;
use super::test_tensors::{max_abs, max_abs_diff, wave};

/// Output and the gradients of `Σ out · w` for a fixed pattern `w`, one per entry of
/// `wrt` (`None` where it got none).
fn run(f: &dyn Fn() -> Tensor, wrt: &[&Tensor]) -> (Tensor, Vec<Option<Tensor>>) {
    let out = f();
    let weights = wave(out.dims(), 1.0, 0.37);
    let grads = (&out * weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grads = wrt.iter().map(|t| grads.get(t).cloned()).collect();
    (out, grads)
}

/// `f` on the fused kernels and on the generic path agree: the output to `tol` of its
/// scale, each gradient to `tol` of its own; the same gradients exist on both.
fn assert_paths_agree(what: &str, f: &dyn Fn() -> Tensor, wrt: &[&Tensor], tol: f32) {
    let probe = Tensor::zeros(1, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    assert!(uses_fused_kernels(&probe));
    let (fused, fused_grads) = run(f, wrt);
    let (generic, generic_grads) = with_generic_ops(|| run(f, wrt));
    let scale = max_abs(&fused).max(1e-6);
    let d = max_abs_diff(&fused, &generic) / scale;
    assert!(d < tol, "{what}: forward differs by {d:e}");
    for (i, (a, b)) in fused_grads.iter().zip(&generic_grads).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => {
                let d = max_abs_diff(a, b) / max_abs(a).max(1e-6);
                assert!(d < tol, "{what}: gradient {i} differs by {d:e}");
            }
            (None, None) => {}
            _ => panic!("{what}: gradient {i} exists on one path only"),
        }
    }
}

fn var(dims: &[usize], amplitude: f32, phase: f32) -> Var {
    Var::from_tensor(&wave(dims, amplitude, phase)).unwrap()
}

#[test]
fn gelu_and_swiglu_agree_on_both_paths() {
    // More elements than one parallel task holds, and values far into both tails.
    let x = var(&[300, 70], 6.0, 0.1);
    assert_paths_agree(
        "gelu",
        &|| gelu_erf(x.as_tensor()).unwrap(),
        &[x.as_tensor()],
        1e-5,
    );
    let (gate, up) = (var(&[260, 90], 9.0, 0.3), var(&[260, 90], 2.0, 1.1));
    let f = || swiglu(gate.as_tensor(), up.as_tensor()).unwrap();
    assert_paths_agree("swiglu", &f, &[gate.as_tensor(), up.as_tensor()], 1e-5);
}

#[test]
fn norms_agree_on_both_paths_with_trainable_and_frozen_weights() {
    let x = var(&[3, 400, 48], 3.0, 0.2);
    let (w, b) = (var(&[48], 0.5, 0.4), var(&[48], 0.2, 2.0));
    let trainable = LayerNormW {
        weight: Param::Trainable(w.clone()),
        bias: Param::Trainable(b.clone()),
        eps: 1e-12,
    };
    let f = || trainable.forward(x.as_tensor()).unwrap();
    let wrt = [x.as_tensor(), w.as_tensor(), b.as_tensor()];
    assert_paths_agree("layer norm", &f, &wrt, 1e-4);
    let frozen = LayerNormW {
        weight: Param::Frozen(w.as_tensor().detach()),
        bias: Param::Frozen(b.as_tensor().detach()),
        eps: 1e-5,
    };
    let f = || frozen.forward(x.as_tensor()).unwrap();
    assert_paths_agree("frozen layer norm", &f, &[x.as_tensor()], 1e-4);
    let f = || rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
    assert_paths_agree("rms norm", &f, &[x.as_tensor(), w.as_tensor()], 1e-4);
}

#[test]
fn rotary_and_masked_softmax_agree_on_both_paths() {
    let q = var(&[700, 3, 16], 1.0, 0.7);
    let (cos, sin) = (wave(&[700, 8], 1.0, 0.2), wave(&[700, 8], 1.0, 1.9));
    let f = || rope(q.as_tensor(), &cos, &sin).unwrap();
    assert_paths_agree("rope", &f, &[q.as_tensor()], 1e-5);
    // Right padding and a cached prefix (offset): decode-time masks as well as training's.
    let s = var(&[2, 3, 5, 9], 4.0, 0.4);
    for offset in [0, 4] {
        let mask = CausalPrefix {
            key_len: vec![9, 6],
            offset,
        };
        let f = || masked_softmax(s.as_tensor(), &mask).unwrap();
        assert_paths_agree("masked softmax", &f, &[s.as_tensor()], 1e-5);
    }
}

#[test]
fn linear_layers_agree_on_both_paths_trainable_frozen_and_with_lora() {
    let x = var(&[37, 24], 1.5, 0.3);
    let (w, b) = (var(&[20, 24], 0.3, 0.9), var(&[20], 0.1, 0.5));
    let dense = TrainLinear::new(
        Param::Trainable(w.clone()),
        Some(Param::Trainable(b.clone())),
    );
    let f = || dense.forward(x.as_tensor(), true).unwrap();
    let wrt = [x.as_tensor(), w.as_tensor(), b.as_tensor()];
    assert_paths_agree("trainable linear", &f, &wrt, 1e-5);

    // A frozen base: the input gradient alone (FrozenLinearGrad on the generic path).
    let frozen_w = w.as_tensor().detach();
    let frozen = TrainLinear::new(Param::Frozen(frozen_w.clone()), None);
    let f = || frozen.forward(x.as_tensor(), true).unwrap();
    assert_paths_agree("frozen linear", &f, &[x.as_tensor(), &frozen_w], 1e-5);

    // LoRA over the frozen base, B non-zero so A has a gradient too.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let lora = LoraAdapter::new(24, 20, 4, 16.0, 0.0, &mut rng, &candle_core::Device::Cpu).unwrap();
    lora.b
        .as_var()
        .unwrap()
        .set(&wave(&[20, 4], 0.2, 0.6))
        .unwrap();
    let (lora_a, lora_b) = (lora.a.tensor().clone(), lora.b.tensor().clone());
    let frozen_bias = Some(Param::Frozen(b.as_tensor().detach()));
    let adapted = TrainLinear::new(Param::Frozen(frozen_w), frozen_bias).with_lora(lora);
    for pass in [Pass::Train, Pass::Eval] {
        let f = || adapted.forward_pass(x.as_tensor(), pass).unwrap();
        let wrt = [x.as_tensor(), &lora_a, &lora_b];
        assert_paths_agree("lora linear", &f, &wrt, 1e-5);
    }
}

#[test]
fn dropout_on_the_generic_path_keeps_the_expected_share_and_scales_it() {
    // Masks come from different generators, so compare what both must satisfy: every
    // output is 0 or x/(1−p), about 1−p of them kept, and the gradient uses the same mask.
    let p = 0.25;
    let x = Var::from_tensor(&(wave(&[64, 128], 1.0, 0.3) + 2.0).unwrap()).unwrap();
    for generic in [false, true] {
        let call = || {
            let y = super::bert::dropout(x.as_tensor(), p, true).unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            (y, g.get(x.as_tensor()).unwrap().clone())
        };
        let (y, g) = if generic {
            with_generic_ops(call)
        } else {
            call()
        };
        let (y, g, x) = (
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            x.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        let scale = 1.0 / (1.0 - p as f32);
        let mut kept = 0;
        for ((y, g), x) in y.iter().zip(&g).zip(&x) {
            if *y == 0.0 {
                assert_eq!(*g, 0.0);
            } else {
                assert!((y - x * scale).abs() < 1e-5 && (g - scale).abs() < 1e-6);
                kept += 1;
            }
        }
        let share = kept as f64 / y.len() as f64;
        assert!(
            (share - 0.75).abs() < 0.02,
            "generic={generic}: kept {share}"
        );
    }
}
