//! Exports: the merged directory reloads to the same logits; the PEFT adapter has the
//! names, shapes and config PEFT expects.
#![allow(clippy::unwrap_used)]

use candle_core::Device;

use super::tests::{
    batch_of, encode, full_spec, load, lora_spec, max_abs_diff, perturb_lora, tiny, PROMPTS,
};
use super::*;

#[test]
fn merged_export_reloads_to_the_same_logits() {
    for arch in [DecoderArch::Llama, DecoderArch::Qwen2] {
        let dir = tiny(arch);
        let seqs: Vec<Vec<u32>> = PROMPTS.iter().map(|p| encode(dir.path(), p)).collect();
        let b = batch_of(&seqs);
        let model = load(dir.path(), &lora_spec(), 0);
        perturb_lora(&model);
        let expected = model.forward(&b, false).unwrap();
        let out = tempfile::tempdir().unwrap();
        model.export_merged(dir.path(), out.path()).unwrap();
        let reloaded = load(out.path(), &full_spec(), 0);
        let d = max_abs_diff(&reloaded.forward(&b, false).unwrap(), &expected);
        eprintln!("{arch:?} merged export reload: max |Δ| {d:e}");
        assert!(d < 1e-4, "{arch:?}: {d}");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
                .unwrap();
        let dtype_key = if arch == DecoderArch::Qwen2 {
            "dtype"
        } else {
            "torch_dtype"
        };
        assert_eq!(config[dtype_key], "float32");
        assert_eq!(config["model_type"], arch.model_type());
        let tensors =
            candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        // 1 embedding + 2 layers × (2 norms + 7 weights) + final norm (+ lm_head, + qkv biases)
        let expected_count = match arch {
            DecoderArch::Llama => 1 + 2 * 9 + 1 + 1,
            DecoderArch::Qwen2 => 1 + 2 * 12 + 1,
        };
        assert_eq!(tensors.len(), expected_count);
        assert_eq!(
            tensors.contains_key("lm_head.weight"),
            arch == DecoderArch::Llama
        );
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
            "special_tokens_map.json",
        ] {
            assert_eq!(
                std::fs::read(out.path().join(name)).unwrap(),
                std::fs::read(dir.path().join(name)).unwrap(),
                "{name}"
            );
        }
    }
}

#[test]
fn adapter_export_has_peft_names_shapes_and_config() {
    let dir = tiny(DecoderArch::Llama);
    let model = load(dir.path(), &lora_spec(), 0);
    perturb_lora(&model);
    let out = tempfile::tempdir().unwrap();
    model
        .export_adapter("HuggingFaceTB/SmolLM2-135M-Instruct", out.path())
        .unwrap();
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 16.0);
    assert_eq!(config["lora_dropout"], 0.0);
    assert_eq!(config["bias"], "none");
    assert_eq!(
        config["base_model_name_or_path"],
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    );
    let targets: Vec<&str> = config["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj"
        ]
    );
    let tensors =
        candle_core::safetensors::load(out.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(tensors.len(), 28);
    let a = &tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"];
    let b = &tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"];
    assert_eq!((a.dims(), b.dims()), (&[4, 64][..], &[32, 4][..]));
    let down_b = &tensors["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"];
    assert_eq!(down_b.dims(), &[64, 4]);
    let saved = model.trainable_tensors().unwrap();
    for (name, t) in &tensors {
        assert_eq!(max_abs_diff(t, &saved[name]), 0.0, "{name}");
    }
    // Full fine-tuning has no adapter.
    let full = load(dir.path(), &full_spec(), 0);
    assert!(full.export_adapter("x", out.path()).is_err());
}

/// Manual cross-check with transformers (not CI): writes merged Llama and Qwen2 dirs,
/// their adapters and our logits under `$TEMPER_DECODER_EXPORT`, for a Python script to
/// load with `AutoModelForCausalLM` / `PeftModel` and compare.
#[test]
#[ignore = "writes files for a manual transformers comparison"]
fn write_exports_for_a_transformers_cross_check() {
    let Ok(root) = std::env::var("TEMPER_DECODER_EXPORT") else {
        return;
    };
    let root = std::path::PathBuf::from(root);
    for arch in [DecoderArch::Llama, DecoderArch::Qwen2] {
        let base = root.join(format!("{}-base", arch.model_type()));
        crate::zoo::testing::write_tiny_decoder(&base, arch, 7).unwrap();
        let seqs: Vec<Vec<u32>> = PROMPTS.iter().map(|p| encode(&base, p)).collect();
        let model = load(&base, &lora_spec(), 0);
        perturb_lora(&model);
        let logits = model.forward(&batch_of(&seqs), false).unwrap();
        model
            .export_merged(&base, &root.join(format!("{}-merged", arch.model_type())))
            .unwrap();
        model
            .export_adapter(
                base.to_str().unwrap(),
                &root.join(format!("{}-adapter", arch.model_type())),
            )
            .unwrap();
        let dump = serde_json::json!({"ids": seqs, "logits": logits.to_vec3::<f32>().unwrap()});
        std::fs::write(
            root.join(format!("{}-logits.json", arch.model_type())),
            dump.to_string(),
        )
        .unwrap();
    }
}
