//! SmolLM2-135M-Instruct (the GGUF `scripts/fetch-assets.sh` fetches: Q4_1 blocks, Q8_0
//! embeddings) materialized for real; skipped when `TEMPER_ASSETS` is unset.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use candle_core::Device;

use super::decoder_tests::{
    argmax, causal_lm_last_logits, gguf_reference_last_logits, max_abs_diff,
};
use super::*;
use crate::zoo::{CausalLm, DecoderSpec};

pub(crate) fn smollm2_gguf() -> Option<PathBuf> {
    let Some(assets) = std::env::var_os("TEMPER_ASSETS") else {
        eprintln!("TEMPER_ASSETS unset: skipping a real-GGUF test (scripts/test.sh sets it)");
        return None;
    };
    let path = PathBuf::from(assets).join("models/HuggingFaceTB/SmolLM2-135M-Instruct.gguf");
    assert!(path.exists(), "TEMPER_ASSETS set but {path:?} is missing");
    Some(path)
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn real_gguf_smollm2_materializes_config_weights_and_tokenizer() {
    let Some(gguf) = smollm2_gguf() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("SmolLM2-135M-Instruct");
    materialize_gguf(&gguf, &out).unwrap();

    let c = read_json(&out.join("config.json"));
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["hidden_size"], 576);
    assert_eq!(c["num_hidden_layers"], 30);
    assert_eq!(c["num_attention_heads"], 9);
    assert_eq!(c["num_key_value_heads"], 3);
    assert_eq!(c["head_dim"], 64);
    assert_eq!(c["intermediate_size"], 1536);
    assert_eq!(c["vocab_size"], 49152);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["rope_theta"], 100000.0);
    assert_eq!(c["max_position_embeddings"], 8192);
    assert_eq!(
        (c["bos_token_id"].as_u64(), c["eos_token_id"].as_u64()),
        (Some(1), Some(2))
    );

    let weights =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    // embed + norm + 30 × (4 attention + 3 MLP + 2 norms); no lm_head (tied).
    assert_eq!(weights.len(), 2 + 30 * 9);
    assert!(!weights.contains_key("lm_head.weight"));
    assert_eq!(weights["model.embed_tokens.weight"].dims(), &[49152, 576]);
    assert_eq!(
        weights["model.layers.29.self_attn.k_proj.weight"].dims(),
        &[192, 576]
    );
    assert_eq!(
        weights["model.layers.0.mlp.down_proj.weight"].dims(),
        &[576, 1536]
    );

    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["pad_token"], "<|im_end|>");
    assert_eq!(tc["add_bos_token"], false);
    assert!(tc["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>assistant"));

    // Expected ids from transformers 5.23 reading the same file (run by hand):
    //   AutoTokenizer.from_pretrained(dir, gguf_file="SmolLM2-135M-Instruct.gguf")
    //       .encode(text, add_special_tokens=True)
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let cases: [(&str, &[u32]); 2] = [
        (
            "Hello, world! 1234",
            &[19556, 28, 905, 17, 216, 33, 34, 35, 36],
        ),
        (
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
            &[
                1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198,
            ],
        ),
    ];
    for (text, expected) in cases {
        let enc = tok.encode(text, true).unwrap();
        assert_eq!(enc.get_ids(), expected, "{text:?}");
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    }
}

/// SmolLM2 materialized and run by our differentiable decoder (f32, dequantized weights)
/// against candle-transformers' `quantized_llama` on the GGUF itself (Q4_1/Q8_0 blocks
/// with Q8-rounded activations, permuted Q/K with interleaved rope).
#[test]
fn real_gguf_smollm2_logits_match_quantized_llama() {
    let Some(gguf) = smollm2_gguf() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("SmolLM2-135M-Instruct");
    materialize_gguf(&gguf, &out).unwrap();
    let spec = DecoderSpec {
        lora: None,
        quantize: None,
    };
    let lm = CausalLm::from_pretrained(&out, &spec, &Device::Cpu, 0).unwrap();
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let prompts = [
        "The capital of France is",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "def fibonacci(n):",
    ];
    for prompt in prompts {
        let ids = tok.encode(prompt, true).unwrap().get_ids().to_vec();
        let ours = causal_lm_last_logits(&lm, &ids);
        let reference = gguf_reference_last_logits(&gguf, &ids);
        let diff = max_abs_diff(&ours, &reference);
        let top = argmax(&ours);
        eprintln!(
            "{prompt:?}: max |dlogit| {diff:.3e}, argmax {top} ({:?}) vs {}",
            tok.decode(&[top], false).unwrap(),
            argmax(&reference)
        );
        // Measured: 0.60-0.70 on logits up to ~34. It is the reference's Q8 activation
        // rounding: with CANDLE_DEQUANTIZE_ALL=1 (dense reference) the diff is <= 5.4e-5,
        // and transformers 5.23 loading the same GGUF differs from ours by <= 7.7e-5.
        assert!(diff < 1.0, "{prompt:?}: {diff}");
        assert_eq!(top, argmax(&reference), "{prompt:?}");
    }
}

/// QLoRA on the materialized SmolLM2 (every dimension is a multiple of 32): a fresh
/// adapter leaves the f32 model's output up to the base's rounding. Q8_0 keeps the
/// prediction (" Paris", max |dlogit| 1.19). Q4_0 on top of this Q4_1 checkpoint is far
/// lossier (11.0, argmax " located"); checked by hand to be the format, not this code:
/// gguf-py's own Q4_0 quantize/dequantize of the same seven projections in transformers
/// gives max |dlogit| 10.9 and also loses " Paris" (" located" in its top 3).
#[test]
fn real_gguf_smollm2_qlora_stays_within_the_base_rounding() {
    let Some(gguf) = smollm2_gguf() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("SmolLM2-135M-Instruct");
    materialize_gguf(&gguf, &out).unwrap();
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let ids = tok
        .encode("The capital of France is", true)
        .unwrap()
        .get_ids()
        .to_vec();
    let spec = |quantize| DecoderSpec {
        lora: Some(crate::domain::hyperparams::LoraSettings {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: Vec::new(),
        }),
        quantize,
    };
    let dense = CausalLm::from_pretrained(&out, &spec(None), &Device::Cpu, 0).unwrap();
    let dense_logits = causal_lm_last_logits(&dense, &ids);
    for (kind, bound) in [
        (crate::zoo::QuantKind::Q8_0, 2.0f32),
        (crate::zoo::QuantKind::Q4_0, 15.0),
    ] {
        let q = CausalLm::from_pretrained(&out, &spec(Some(kind)), &Device::Cpu, 0).unwrap();
        let logits = causal_lm_last_logits(&q, &ids);
        let diff = max_abs_diff(&logits, &dense_logits);
        eprintln!(
            "{} QLoRA SmolLM2: max |dlogit| {diff:.3e} vs f32, argmax {} vs {}, {} MB vs {} MB",
            kind.as_str(),
            argmax(&logits),
            argmax(&dense_logits),
            q.parameter_bytes() / 1_000_000,
            dense.parameter_bytes() / 1_000_000
        );
        assert!(diff < bound, "{}: {diff}", kind.as_str());
        if kind == crate::zoo::QuantKind::Q8_0 {
            assert_eq!(argmax(&logits), argmax(&dense_logits));
        }
        assert!(q.parameter_bytes() < dense.parameter_bytes());
    }
}
