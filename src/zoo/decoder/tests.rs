//! Numeric tests of the decoder on tiny random checkpoints (CPU, deterministic).
#![allow(clippy::unwrap_used)]

use super::config::RopeScaling;
use super::*;
pub(super) use crate::zoo::test_tensors::{max_abs, max_abs_diff, wave};
use crate::zoo::testing::{write_tiny_decoder, TINY_SPECIAL_TOKENS};

#[test]
fn tiny_tokenizer_round_trips_text_and_keeps_specials_whole() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_decoder(dir.path(), DecoderArch::Llama, 1).unwrap();
    let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let text = "Is the answer 42? Yes, you're right: ünïcode ✓ works.";
    let enc = tok.encode(text, false).unwrap();
    // Merges apply: " the" is one token, so fewer ids than bytes.
    assert!(enc.get_ids().len() < text.len(), "{:?}", enc.get_ids());
    assert!(enc.get_tokens().iter().any(|t| t == "Ġthe"));
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    for (id, special) in TINY_SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_to_id(special), Some(id as u32));
    }
    let chat = "<|im_start|>user\nhi<|im_end|>\n";
    let ids = tok.encode(chat, false).unwrap().get_ids().to_vec();
    assert_eq!(ids[0], 1);
    assert!(ids.contains(&2));
    assert_eq!(tok.decode(&ids, false).unwrap(), chat);
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nhi\n");
    let (cfg, _) = DecoderConfig::from_dir(dir.path()).unwrap();
    assert_eq!(cfg.vocab_size, tok.get_vocab_size(true));
}

#[test]
fn tiny_configs_parse_as_both_transformers_versions_write_them() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_decoder(dir.path(), DecoderArch::Llama, 1).unwrap();
    let (llama, raw) = DecoderConfig::from_dir(dir.path()).unwrap();
    assert_eq!(raw["torch_dtype"], "float32");
    assert_eq!(llama.arch, DecoderArch::Llama);
    assert_eq!((llama.hidden_size, llama.head_dim), (64, 16));
    assert_eq!(
        (llama.num_attention_heads, llama.num_key_value_heads),
        (4, 2)
    );
    assert!(!llama.tie_word_embeddings && !llama.attention_bias);
    assert_eq!(llama.rope_theta, 10000.0);
    assert_eq!(
        (llama.bos_token_id, llama.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
    write_tiny_decoder(dir.path(), DecoderArch::Qwen2, 1).unwrap();
    let (qwen, raw) = DecoderConfig::from_dir(dir.path()).unwrap();
    assert_eq!(raw["dtype"], "float32");
    assert_eq!(qwen.arch, DecoderArch::Qwen2);
    assert!(qwen.tie_word_embeddings && qwen.attention_bias);
    assert_eq!(qwen.rope_theta, 1_000_000.0);
    assert_eq!(qwen.rope_scaling, None);
}

#[test]
fn config_handles_nesting_eos_lists_defaults_and_llama3_scaling() {
    let text = r#"{"architectures":["X"],"text_config":{"model_type":"llama","hidden_size":96,
        "intermediate_size":64,"num_hidden_layers":1,"num_attention_heads":3,"head_dim":40,
        "eos_token_id":[5,7],"rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,
        "factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
        "original_max_position_embeddings":8192}}}"#;
    let (c, _) = DecoderConfig::from_json(text).unwrap();
    assert_eq!(c.head_dim, 40);
    assert_eq!(c.num_key_value_heads, 3);
    assert_eq!(c.eos_token_ids, vec![5, 7]);
    assert_eq!(c.bos_token_id, None);
    assert_eq!((c.rms_norm_eps, c.rope_theta), (1e-6, 500000.0));
    assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0));
    let f = c.inv_freq();
    assert_eq!(f.len(), 20);
    // Highest frequency kept, lowest divided by the factor.
    assert_eq!(f[0], 1.0);
    let plain_last = 1.0 / 500000f64.powf(38.0 / 40.0);
    assert!(((f[19] as f64) - plain_last / 8.0).abs() < 1e-12);
    let bad = r#"{"model_type":"gpt2","hidden_size":8}"#;
    assert!(matches!(
        DecoderConfig::from_json(bad),
        Err(crate::zoo::ZooError::Unsupported(_))
    ));
    let missing = r#"{"model_type":"qwen2","hidden_size":8,"num_attention_heads":2}"#;
    assert!(DecoderConfig::from_json(missing).is_err());
    assert_eq!(QuantKind::parse("Q4_0"), Some(QuantKind::Q4_0));
    assert_eq!(QuantKind::parse("q8_0"), Some(QuantKind::Q8_0));
    assert_eq!(QuantKind::parse("q4_1"), None);
}

// ---------------------------------------------------------------------------------------
// Training forward: parity, gradients, LoRA invariants.

use crate::domain::hyperparams::LoraSettings;
use crate::zoo::{collate, EncodedBatch};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

pub(super) const PROMPTS: [&str; 2] = [
    "<|im_start|>user\nIs the answer in the text?<|im_end|>\n<|im_start|>assistant\nYes, it is.",
    "<|im_start|>user\nhi there<|im_end|>\n",
];

/// The real SmolLM2-135M-Instruct materialized from the GGUF asset into a temp dir (kept
/// alive by the returned guard), or `None` with a note when `TEMPER_ASSETS` is unset.
pub(super) fn real_smollm2() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    let Some(assets) = std::env::var_os("TEMPER_ASSETS") else {
        eprintln!("TEMPER_ASSETS unset: skipping a real SmolLM2 test (scripts/test.sh sets it)");
        return None;
    };
    let gguf =
        std::path::PathBuf::from(assets).join("models/HuggingFaceTB/SmolLM2-135M-Instruct.gguf");
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("smollm2");
    crate::zoo::materialize_gguf(&gguf, &base).unwrap();
    Some((dir, base))
}

pub(super) fn tiny(arch: DecoderArch) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_decoder(dir.path(), arch, 7).unwrap();
    dir
}

pub(super) fn encode(dir: &Path, text: &str) -> Vec<u32> {
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tok.encode(text, false).unwrap().get_ids().to_vec()
}

pub(super) fn batch_of(seqs: &[Vec<u32>]) -> EncodedBatch {
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    collate(&refs, 2, &Device::Cpu).unwrap()
}

pub(super) fn full_spec() -> DecoderSpec {
    DecoderSpec {
        lora: None,
        quantize: None,
    }
}

/// alpha / rank = 4: catches code that forgets (or double-applies) the scale.
pub(super) fn lora_spec() -> DecoderSpec {
    DecoderSpec {
        lora: Some(LoraSettings {
            rank: 4,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: vec![],
        }),
        quantize: None,
    }
}

pub(super) fn load(dir: &Path, spec: &DecoderSpec, seed: u64) -> CausalLm {
    CausalLm::from_pretrained(dir, spec, &Device::Cpu, seed).unwrap()
}

/// Gives every LoRA B a non-zero value, so adapters change the output.
pub(super) fn perturb_lora(model: &CausalLm) {
    for (i, nv) in model.trainable_vars().iter().enumerate() {
        if nv.name.contains(".lora_B.") {
            nv.var.set(&wave(nv.var.dims(), 0.05, i as f32)).unwrap();
        }
    }
}

fn candle_mmap(dir: &Path) -> VarBuilder<'static> {
    let file = dir.join("model.safetensors");
    unsafe { VarBuilder::from_mmaped_safetensors(&[file], DType::F32, &Device::Cpu).unwrap() }
}

/// candle-transformers' logits at every position of `ids` ([T, V]).
fn reference_logits(dir: &Path, arch: DecoderArch, ids: &[u32]) -> Tensor {
    use candle_transformers::models::{llama, qwen2};
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    match arch {
        DecoderArch::Llama => {
            let cfg: llama::LlamaConfig = serde_json::from_str(&text).unwrap();
            let cfg = cfg.into_config(false);
            let model = llama::Llama::load(candle_mmap(dir), &cfg).unwrap();
            // `Llama::forward` returns the last position only: run every prefix.
            let rows: Vec<Tensor> = (1..=ids.len())
                .map(|t| {
                    let mut cache =
                        llama::Cache::new(false, DType::F32, &cfg, &Device::Cpu).unwrap();
                    let prefix = input.narrow(1, 0, t).unwrap();
                    model
                        .forward(&prefix, 0, &mut cache)
                        .unwrap()
                        .squeeze(0)
                        .unwrap()
                })
                .collect();
            Tensor::stack(&rows, 0).unwrap()
        }
        DecoderArch::Qwen2 => {
            let (c, _) = DecoderConfig::from_json(&text).unwrap();
            let cfg = qwen2::Config {
                vocab_size: c.vocab_size,
                hidden_size: c.hidden_size,
                intermediate_size: c.intermediate_size,
                num_hidden_layers: c.num_hidden_layers,
                num_attention_heads: c.num_attention_heads,
                num_key_value_heads: c.num_key_value_heads,
                max_position_embeddings: c.max_position_embeddings,
                sliding_window: 4096,
                max_window_layers: c.num_hidden_layers,
                tie_word_embeddings: true,
                rope_theta: c.rope_theta,
                rms_norm_eps: c.rms_norm_eps,
                use_sliding_window: false,
                hidden_act: candle_nn::Activation::Silu,
            };
            let vb = candle_mmap(dir);
            let embed = vb
                .get((c.vocab_size, c.hidden_size), "model.embed_tokens.weight")
                .unwrap();
            let mut model = qwen2::Model::new(&cfg, vb).unwrap();
            let hidden = model.forward(&input, 0, None).unwrap().squeeze(0).unwrap();
            hidden.matmul(&embed.t().unwrap()).unwrap()
        }
    }
}

fn assert_parity(arch: DecoderArch) -> (f32, f32) {
    let dir = tiny(arch);
    let model = load(dir.path(), &full_spec(), 0);
    let seqs: Vec<Vec<u32>> = PROMPTS.iter().map(|p| encode(dir.path(), p)).collect();
    let mut worst = (0f32, 0f32);
    // Alone (no padding), then in one right-padded batch.
    for (i, ids) in seqs.iter().enumerate() {
        let reference = reference_logits(dir.path(), arch, ids);
        let alone = model.forward(&batch_of(&seqs[i..=i]), false).unwrap();
        let d_alone = max_abs_diff(&alone.squeeze(0).unwrap(), &reference);
        let padded = model.forward(&batch_of(&seqs), false).unwrap();
        let ours = padded.get(i).unwrap().narrow(0, 0, ids.len()).unwrap();
        let d_padded = max_abs_diff(&ours, &reference);
        worst = (worst.0.max(d_alone), worst.1.max(d_padded));
    }
    assert!(
        seqs[0].len() > seqs[1].len() + 5,
        "the batch must be padded"
    );
    assert!(
        worst.0 < 1e-4 && worst.1 < 1e-4,
        "{arch:?} parity {worst:?}"
    );
    worst
}

#[test]
fn llama_logits_match_candle_transformers_with_and_without_padding() {
    let (alone, padded) = assert_parity(DecoderArch::Llama);
    eprintln!("llama parity: max |Δ| alone {alone:e}, padded {padded:e}");
}

#[test]
fn qwen2_logits_match_candle_transformers_with_and_without_padding() {
    let (alone, padded) = assert_parity(DecoderArch::Qwen2);
    eprintln!("qwen2 parity: max |Δ| alone {alone:e}, padded {padded:e}");
}

/// Sum of logits weighted by a fixed pattern over real positions: every parameter that
/// influences a real logit gets a gradient.
fn weighted_loss(model: &CausalLm, batch: &EncodedBatch) -> Tensor {
    let logits = model.forward(batch, true).unwrap();
    let w = wave(logits.dims(), 1.0, 0.3);
    (logits * w).unwrap().sum_all().unwrap()
}

fn assert_every_var_gets_a_gradient(model: &CausalLm, expected: usize) {
    let dir_seqs = [vec![5u32, 80, 81, 1, 90, 44, 2], vec![7u32, 9, 11]];
    let grads = weighted_loss(model, &batch_of(&dir_seqs))
        .backward()
        .unwrap();
    let vars = model.trainable_vars();
    assert_eq!(vars.len(), expected);
    for nv in &vars {
        let g = grads
            .get(nv.var.as_tensor())
            .unwrap_or_else(|| panic!("{} has no gradient", nv.name));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{} gradient norm {norm}",
            nv.name
        );
    }
}

#[test]
fn full_fine_tuning_gives_every_tensor_a_gradient() {
    for (arch, expected) in [
        (DecoderArch::Llama, 2 + 2 * 9 + 1),
        (DecoderArch::Qwen2, 1 + 2 * 12 + 1),
    ] {
        let dir = tiny(arch);
        let model = load(dir.path(), &full_spec(), 0);
        let names: Vec<String> = model.trainable_vars().into_iter().map(|v| v.name).collect();
        assert!(names.contains(&"model.layers.1.self_attn.q_proj.weight".to_string()));
        assert_eq!(
            names.contains(&"lm_head.weight".to_string()),
            arch == DecoderArch::Llama
        );
        if arch == DecoderArch::Qwen2 {
            assert!(names.contains(&"model.layers.0.self_attn.k_proj.bias".to_string()));
        }
        assert_every_var_gets_a_gradient(&model, expected);
    }
}

#[test]
fn lora_gives_every_adapter_a_gradient_with_peft_names() {
    let dir = tiny(DecoderArch::Qwen2);
    let model = load(dir.path(), &lora_spec(), 0);
    perturb_lora(&model);
    let names: Vec<String> = model.trainable_vars().into_iter().map(|v| v.name).collect();
    assert!(names
        .contains(&"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string()));
    assert!(
        names.contains(&"base_model.model.model.layers.1.mlp.down_proj.lora_B.weight".to_string())
    );
    // 7 projections × 2 layers × (A, B)
    assert_every_var_gets_a_gradient(&model, 28);
}

#[test]
fn fresh_adapter_changes_nothing_and_merge_equals_unmerged() {
    let dir = tiny(DecoderArch::Llama);
    let seqs: Vec<Vec<u32>> = PROMPTS.iter().map(|p| encode(dir.path(), p)).collect();
    let b = batch_of(&seqs);
    let base = load(dir.path(), &full_spec(), 0)
        .forward(&b, false)
        .unwrap();
    let mut lora = load(dir.path(), &lora_spec(), 0);
    let fresh = lora.forward(&b, false).unwrap();
    assert_eq!(max_abs_diff(&base, &fresh), 0.0);
    perturb_lora(&lora);
    let unmerged = lora.forward(&b, false).unwrap();
    let moved = max_abs_diff(&base, &unmerged);
    assert!(moved > 1e-2, "the adapters must matter: {moved}");
    lora.merge_lora().unwrap();
    assert!(lora.trainable_vars().is_empty());
    let merged = lora.forward(&b, false).unwrap();
    let d = max_abs_diff(&merged, &unmerged);
    eprintln!("merged vs unmerged: max |Δ| {d:e} (adapters moved logits by {moved})");
    assert!(d < 1e-4, "merged differs by {d}");
}

#[test]
fn trainable_tensors_round_trip_through_load_trainable() {
    let dir = tiny(DecoderArch::Qwen2);
    let seqs: Vec<Vec<u32>> = PROMPTS.iter().map(|p| encode(dir.path(), p)).collect();
    let b = batch_of(&seqs);
    let trained = load(dir.path(), &lora_spec(), 1);
    perturb_lora(&trained);
    let saved = trained.trainable_tensors().unwrap();
    assert_eq!(saved.len(), 28);
    let restored = load(dir.path(), &lora_spec(), 2);
    let before = restored.forward(&b, false).unwrap();
    restored.load_trainable(&saved).unwrap();
    let after = restored.forward(&b, false).unwrap();
    assert_eq!(
        max_abs_diff(&after, &trained.forward(&b, false).unwrap()),
        0.0
    );
    assert!(max_abs_diff(&before, &after) > 1e-3);
    let mut missing = saved.clone();
    missing.remove("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    assert!(restored.load_trainable(&missing).is_err());
}

#[test]
fn batch_of_two_equals_two_batches_of_one() {
    let dir = tiny(DecoderArch::Qwen2);
    let model = load(dir.path(), &lora_spec(), 0);
    perturb_lora(&model);
    let seqs: Vec<Vec<u32>> = PROMPTS.iter().map(|p| encode(dir.path(), p)).collect();
    let together = model.hidden_states(&batch_of(&seqs), false).unwrap();
    let mut worst = 0f32;
    for (i, s) in seqs.iter().enumerate() {
        let alone = model.hidden_states(&batch_of(&seqs[i..=i]), false).unwrap();
        let row = together.get(i).unwrap().narrow(0, 0, s.len()).unwrap();
        worst = worst.max(max_abs_diff(&row, &alone.squeeze(0).unwrap()));
    }
    eprintln!("batch of two vs one: max |Δ| {worst:e}");
    assert!(worst < 1e-5, "{worst}");
    // Padding rows are exactly zero.
    let pad = together
        .get(1)
        .unwrap()
        .narrow(0, seqs[1].len(), 1)
        .unwrap();
    assert_eq!(
        pad.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

#[test]
fn qlora_trains_adapters_over_a_quantized_base() {
    let dir = tiny(DecoderArch::Qwen2);
    let seqs: Vec<Vec<u32>> = PROMPTS.iter().map(|p| encode(dir.path(), p)).collect();
    let b = batch_of(&seqs);
    let dense = load(dir.path(), &full_spec(), 0)
        .forward(&b, false)
        .unwrap();
    let mut spec = lora_spec();
    spec.quantize = Some(QuantKind::Q8_0);
    let mut qlora = load(dir.path(), &spec, 0);
    let quantized = qlora.forward(&b, false).unwrap();
    // Q8_0 rounds weights and (in the matmul) activations to 8 bits: a small relative error.
    let scale = max_abs(&dense);
    let rounding = max_abs_diff(&dense, &quantized) / scale;
    eprintln!("q8_0 base vs dense: max |Δ logit| / max |logit| = {rounding:e}");
    assert!(rounding > 0.0 && rounding < 0.05, "{rounding}");
    perturb_lora(&qlora);
    assert_every_var_gets_a_gradient(&qlora, 28);
    let unmerged = qlora.forward(&b, false).unwrap();
    qlora.merge_lora().unwrap();
    let merged = qlora.forward(&b, false).unwrap();
    // Merging dequantizes, so the result is the unmerged model up to activation rounding.
    let d = max_abs_diff(&merged, &unmerged) / scale;
    eprintln!("q8_0 merged vs unmerged: max |Δ| / max |logit| = {d:e}");
    assert!(d < 0.05, "{d}");
    let full_qlora = DecoderSpec {
        lora: None,
        quantize: Some(QuantKind::Q4_0),
    };
    assert!(CausalLm::from_pretrained(dir.path(), &full_qlora, &Device::Cpu, 0).is_err());
}
