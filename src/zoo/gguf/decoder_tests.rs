//! Materialized GGUF directories loaded by `CausalLm`: logits against candle-transformers'
//! `quantized_llama`, which runs the GGUF directly (llama.cpp's permuted Q/K with
//! interleaved rotary embeddings), and QLoRA on a materialized base.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, IndexOp, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

use super::tests::{materialize, vocab, Variant, LLAMA};
use crate::domain::hyperparams::LoraSettings;
pub(super) use crate::zoo::test_tensors::{max_abs, max_abs_diff};
use crate::zoo::{collate, CausalLm, DecoderSpec, QuantKind};

/// `CausalLm`'s logits at the last position of `ids`.
pub(super) fn causal_lm_last_logits(lm: &CausalLm, ids: &[u32]) -> Tensor {
    let batch = collate(&[ids], 0, &Device::Cpu).unwrap();
    let logits = lm.forward(&batch, false).unwrap();
    logits.i((0, ids.len() - 1)).unwrap()
}

/// candle-transformers' quantized Llama on the GGUF itself, last position.
pub(super) fn gguf_reference_last_logits(gguf: &Path, ids: &[u32]) -> Tensor {
    let mut file = std::fs::File::open(gguf).unwrap();
    let content = Content::read(&mut file).unwrap();
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.forward(&input, 0).unwrap().squeeze(0).unwrap()
}

pub(super) fn argmax(t: &Tensor) -> u32 {
    t.argmax(0).unwrap().to_scalar::<u32>().unwrap()
}

fn full() -> DecoderSpec {
    DecoderSpec {
        lora: None,
        quantize: None,
    }
}

fn lora(quantize: Option<QuantKind>) -> DecoderSpec {
    DecoderSpec {
        lora: Some(LoraSettings {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: Vec::new(),
        }),
        quantize,
    }
}

#[test]
fn materialized_tiny_llama_matches_quantized_llama_on_the_gguf() {
    // All-F32 tensors: quantized_llama multiplies them densely too, so the two paths
    // differ only by float rounding, and a wrong Q/K row order would show at once.
    for tied in [true, false] {
        let (tmp, out, _) = materialize(Variant {
            all_f32: true,
            tied,
            ..LLAMA
        });
        let lm = CausalLm::from_pretrained(&out, &full(), &Device::Cpu, 0).unwrap();
        assert_eq!(lm.config().vocab_size, vocab().len());
        let ids: Vec<u32> = vec![1, 40, 71, 90, 5, 200, 261, 33, 2, 100];
        let ours = causal_lm_last_logits(&lm, &ids);
        let reference = gguf_reference_last_logits(&tmp.path().join("tiny.gguf"), &ids);
        let diff = max_abs_diff(&ours, &reference);
        eprintln!("tiny llama (tied {tied}) vs quantized_llama: max |dlogit| {diff:.3e}");
        assert!(diff < 1e-4, "tied {tied}: {diff}");
        assert_eq!(argmax(&ours), argmax(&reference));
    }
}

#[test]
fn qlora_on_a_materialized_base_stays_close_and_trains_its_adapters() {
    let (_tmp, out, _) = materialize(LLAMA);
    let ids: Vec<u32> = vec![1, 40, 71, 90, 5, 200, 261, 33];
    let dense = CausalLm::from_pretrained(&out, &lora(None), &Device::Cpu, 3).unwrap();
    let dense_logits = causal_lm_last_logits(&dense, &ids);
    let scale = dense_logits.abs().unwrap().max_all().unwrap();
    let scale = scale.to_scalar::<f32>().unwrap();
    // Measured: q8_0 1.3e-2, q4_0 1.3e-1 of the largest logit (random tiny weights, both
    // weights and activations rounded); parameter bytes 164 kB / 133 kB vs 344 kB.
    for (kind, bound) in [(QuantKind::Q8_0, 0.05f32), (QuantKind::Q4_0, 0.3)] {
        let q = CausalLm::from_pretrained(&out, &lora(Some(kind)), &Device::Cpu, 3).unwrap();
        assert!(q.parameter_bytes() < dense.parameter_bytes());
        let q_logits = causal_lm_last_logits(&q, &ids);
        let rel = max_abs_diff(&q_logits, &dense_logits) / scale;
        eprintln!(
            "{} QLoRA vs LoRA on the same base: max relative logit diff {rel:.3e}, bytes {} vs {}",
            kind.as_str(),
            q.parameter_bytes(),
            dense.parameter_bytes()
        );
        assert!(rel < bound, "{}: {rel}", kind.as_str());

        let batch = collate(&[&ids], 0, &Device::Cpu).unwrap();
        let loss = q
            .forward(&batch, true)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let vars = q.trainable_vars();
        assert_eq!(vars.len(), 2 * 7 * 2);
        // B starts at zero, so dL/dA is zero at step 0; every B must get a gradient,
        // including the first layer's, which only arrives through the quantized layers.
        for v in vars.iter().filter(|v| v.name.contains("lora_B")) {
            let g = grads.get(v.var.as_tensor()).unwrap();
            let g = max_abs(g);
            assert!(g > 0.0, "{} has no gradient", v.name);
        }
    }
}
