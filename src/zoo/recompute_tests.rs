//! Gradient checkpointing gives the gradients the full graph gives: for a toy segment, and
//! for whole tiny decoders (Llama, Qwen2; LoRA with dropout, full fine-tuning, QLoRA) on
//! the fused CPU path and on the device-generic path a GPU runs.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use candle_core::{Device, Tensor, Var};

use super::{checkpointed, RecomputedGradients, Segment};
use crate::domain::hyperparams::LoraSettings;
use crate::tasks::sft::batch::masked_next_token_loss;
use crate::zoo::cpu::dropout::seed_dropout;
use crate::zoo::decoder::{CausalLm, DecoderArch, DecoderSpec, QuantKind};
use crate::zoo::fused::with_generic_ops;
use crate::zoo::test_tensors::{max_abs, max_abs_diff, wave};
use crate::zoo::testing::write_tiny_decoder;

#[test]
fn a_checkpointed_segment_gives_the_input_and_parameter_gradients_of_the_plain_one() {
    let w = Var::from_tensor(&wave(&[4, 3], 0.5, 0.3)).unwrap();
    let x0 = wave(&[5, 4], 1.0, 0.1);
    let w_in = w.as_tensor().clone();
    let segment: Segment = Arc::new(move |x: &Tensor| Ok(x.matmul(&w_in)?.tanh()?.sqr()?));

    let plain_x = Var::from_tensor(&x0).unwrap();
    let plain = segment(plain_x.as_tensor()).unwrap();
    let plain_grads = (plain.clone() * 3.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();

    let sink = Arc::new(RecomputedGradients::default());
    let x = Var::from_tensor(&x0).unwrap();
    let out = checkpointed(x.as_tensor(), segment, vec![w.as_tensor().clone()], &sink).unwrap();
    assert_eq!(max_abs_diff(&out, &plain), 0.0);
    let mut grads = (out * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
    // The weight's gradient is in the sink until drained, the input's in the store.
    assert!(grads.get(w.as_tensor()).is_none());
    assert!(!sink.is_empty());
    sink.drain_into(&mut grads).unwrap();
    assert!(sink.is_empty());
    for (name, a, b) in [("x", &plain_x, &x), ("w", &w, &w)] {
        let expected = plain_grads.get(a.as_tensor()).unwrap();
        let got = grads.get(b.as_tensor()).unwrap();
        assert!(max_abs(expected) > 1e-3, "{name}: a gradient to compare");
        assert!(max_abs_diff(expected, got) < 1e-6, "{name}");
    }
}

#[test]
fn a_parameter_used_inside_and_outside_the_segment_sums_both_gradients() {
    let w = Var::from_tensor(&wave(&[3], 0.5, 0.2)).unwrap();
    let x0 = wave(&[2, 3], 1.0, 0.4);
    let w_in = w.as_tensor().clone();
    let segment: Segment = Arc::new(move |x: &Tensor| Ok(x.broadcast_mul(&w_in)?.exp()?));
    let loss_of = |y: Tensor| y.broadcast_mul(w.as_tensor()).unwrap().sum_all().unwrap();

    let plain = loss_of(segment(&Var::from_tensor(&x0).unwrap()).unwrap());
    let expected = plain
        .backward()
        .unwrap()
        .get(w.as_tensor())
        .unwrap()
        .clone();

    let sink = Arc::new(RecomputedGradients::default());
    let x = Var::from_tensor(&x0).unwrap();
    let y = checkpointed(x.as_tensor(), segment, vec![w.as_tensor().clone()], &sink).unwrap();
    let mut grads = loss_of(y).backward().unwrap();
    sink.drain_into(&mut grads).unwrap();
    assert!(max_abs_diff(&expected, grads.get(w.as_tensor()).unwrap()) < 1e-6);
}

fn lora(dropout: f64) -> Option<LoraSettings> {
    Some(LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout,
        target_modules: vec![],
    })
}

/// Loss and every trainable tensor's gradient (by name) for one seeded training pass.
fn decoder_gradients(
    dir: &std::path::Path,
    spec: &DecoderSpec,
    checkpointing: bool,
    dropout_seed: u64,
) -> (f32, Vec<(String, Tensor)>) {
    let device = Device::Cpu;
    let mut model = CausalLm::from_pretrained(dir, spec, &device, 11).unwrap();
    if checkpointing {
        model.enable_gradient_checkpointing();
    }
    let vars = model.trainable_vars();
    for (i, nv) in vars.iter().enumerate() {
        if nv.name.contains(".lora_B.") {
            nv.var.set(&wave(nv.var.dims(), 0.05, i as f32)).unwrap();
        }
    }
    let seqs: [&[u32]; 2] = [&[1, 40, 41, 42, 43, 44, 45, 2], &[1, 50, 51, 2]];
    let inputs = crate::zoo::collate(&seqs, 0, &device).unwrap();
    let width = seqs[0].len();
    let mut targets = crate::tasks::sft::batch::TokenTargets {
        targets: vec![0; 2 * width],
        trained: vec![false; 2 * width],
    };
    for (b, seq) in seqs.iter().enumerate() {
        for t in 0..seq.len() - 1 {
            targets.targets[b * width + t] = seq[t + 1];
            targets.trained[b * width + t] = true;
        }
    }
    seed_dropout(dropout_seed);
    let hidden = model.hidden_states(&inputs, true).unwrap();
    let out = masked_next_token_loss(&hidden, |h| model.lm_head(h), &targets).unwrap();
    let mut grads = out.loss.backward().unwrap();
    model.drain_recomputed_gradients(&mut grads).unwrap();
    let named = vars
        .iter()
        .map(|nv| {
            let g = nv.take_gradient(&grads).unwrap();
            let g = g.unwrap_or_else(|| panic!("{} has no gradient", nv.name));
            (nv.name.clone(), g)
        })
        .collect();
    (out.loss.to_scalar::<f32>().unwrap(), named)
}

fn assert_checkpointing_changes_nothing(generic: bool) {
    let dir = tempfile::tempdir().unwrap();
    for arch in [DecoderArch::Llama, DecoderArch::Qwen2] {
        let base = dir.path().join(format!("{arch:?}"));
        write_tiny_decoder(&base, arch, 3).unwrap();
        let specs = [
            ("lora with dropout", lora(0.2), None),
            ("full", None, None),
            ("qlora q8_0", lora(0.0), Some(QuantKind::Q8_0)),
        ];
        for (what, lora, quantize) in specs {
            let spec = DecoderSpec { lora, quantize };
            let run = |checkpointing| {
                if generic {
                    with_generic_ops(|| decoder_gradients(&base, &spec, checkpointing, 5))
                } else {
                    decoder_gradients(&base, &spec, checkpointing, 5)
                }
            };
            let (loss, plain) = run(false);
            let (loss_ckpt, recomputed) = run(true);
            let at = format!("{arch:?} {what} (generic path: {generic})");
            assert!(
                (loss - loss_ckpt).abs() < 1e-6,
                "{at}: loss {loss} vs {loss_ckpt}"
            );
            assert_eq!(plain.len(), recomputed.len());
            for ((name, a), (_, b)) in plain.iter().zip(&recomputed) {
                let scale = max_abs(a).max(1e-4);
                let diff = max_abs_diff(a, b) / scale;
                assert!(diff < 1e-4, "{at}: {name} differs by {diff} of its scale");
            }
        }
    }
}

#[test]
fn checkpointed_decoders_get_the_gradients_of_the_full_graph_on_the_fused_path() {
    assert_checkpointing_changes_nothing(false);
}

#[test]
fn checkpointed_decoders_get_the_gradients_of_the_full_graph_on_the_generic_path() {
    assert_checkpointing_changes_nothing(true);
}

#[test]
fn dropout_masks_matter_so_equal_checkpointed_gradients_mean_they_were_replayed() {
    // Guard of the tests above: with dropout, differently seeded passes differ, so equal
    // results under checkpointing mean the forward's masks were drawn again.
    let dir = tempfile::tempdir().unwrap();
    write_tiny_decoder(dir.path(), DecoderArch::Llama, 3).unwrap();
    let spec = DecoderSpec {
        lora: lora(0.2),
        quantize: None,
    };
    let (seeded, _) = decoder_gradients(dir.path(), &spec, true, 5);
    let (same_seed, _) = decoder_gradients(dir.path(), &spec, false, 5);
    let (other_seed, _) = decoder_gradients(dir.path(), &spec, false, 6);
    assert!((seeded - same_seed).abs() < 1e-6, "{seeded} vs {same_seed}");
    assert!(
        (seeded - other_seed).abs() > 1e-5,
        "other masks change the loss: {seeded} vs {other_seed}"
    );
}
