//! PEFT adapter directories served unmerged: temper's own export loads back as the adapter
//! it came from, and the PEFT options temper does not implement are refused by name.
#![allow(clippy::unwrap_used)]

use candle_core::Device;
use serde_json::Value;

use super::adapter::{load_adapter, load_peft_adapter};
use crate::artifacts::peft::PEFT_CONFIG_FILE;
use crate::infer::adapter_handle_tests::write_lora_checkpoint;
use crate::zoo::decoder::tests_adapter::{adapter_tensors, tuned_model};
use crate::zoo::decoder::{CausalLm, DecoderArch, DecoderSpec, SeqChunk, ServedAdapter};

fn logits(model: &CausalLm, adapter: &ServedAdapter, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    let mut chunk = [SeqChunk {
        tokens: ids,
        cache: &mut cache,
        adapter: Some(adapter),
    }];
    model.forward_cached(&mut chunk).unwrap().remove(0)
}

#[test]
fn an_exported_peft_adapter_serves_like_its_checkpoint_and_unsupported_options_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let base_dir = root.path().join("base");
    crate::zoo::testing::write_tiny_decoder(&base_dir, DecoderArch::Llama, 5).unwrap();
    let spec = DecoderSpec {
        lora: None,
        quantize: None,
    };
    let base = CausalLm::from_pretrained(&base_dir, &spec, &Device::Cpu, 0).unwrap();
    let tuned = tuned_model(&base_dir, 1);
    let checkpoint = write_lora_checkpoint(
        &root.path().join("job"),
        &base_dir,
        &adapter_tensors(&tuned),
    );
    let peft = root.path().join("peft");
    tuned.export_adapter("base", &peft).unwrap();

    let config = base.config();
    let from_checkpoint = load_adapter(&checkpoint, config, &Device::Cpu).unwrap();
    let from_peft = load_adapter(&peft, config, &Device::Cpu).unwrap();
    assert_eq!(from_peft.bytes(), from_checkpoint.bytes());
    let ids = [1, 5, 9, 12, 3];
    let (a, b) = (
        logits(&base, &from_checkpoint, &ids),
        logits(&base, &from_peft, &ids),
    );
    assert_eq!(a, b);
    let plain: Vec<f32> = {
        let mut cache = base.new_cache();
        let mut chunk = [SeqChunk {
            tokens: &ids,
            cache: &mut cache,
            adapter: None,
        }];
        base.forward_cached(&mut chunk).unwrap().remove(0)
    };
    let moved = a
        .iter()
        .zip(&plain)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(moved > 1e-2, "the adapter changed nothing ({moved})");

    let config_path = peft.join(PEFT_CONFIG_FILE);
    let original: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    for (key, value, expected) in [
        ("use_dora", Value::Bool(true), "DoRA"),
        ("bias", Value::from("all"), "`bias`"),
        (
            "modules_to_save",
            serde_json::json!(["lm_head"]),
            "modules_to_save",
        ),
        ("fan_in_fan_out", Value::Bool(true), "fan_in_fan_out"),
        (
            "alpha_pattern",
            serde_json::json!({"q_proj": 8}),
            "alpha_pattern",
        ),
        ("task_type", Value::from("SEQ_CLS"), "task_type"),
        ("peft_type", Value::from("IA3"), "peft_type"),
        (
            "lora_alpha",
            Value::from("sixteen"),
            "not a PEFT LoRA config",
        ),
    ] {
        let mut changed = original.clone();
        changed[key] = value;
        std::fs::write(&config_path, serde_json::to_vec(&changed).unwrap()).unwrap();
        let error = load_peft_adapter(&peft, config, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{key}: {error}");
    }
    std::fs::remove_file(&config_path).unwrap();
    let error = load_peft_adapter(&peft, config, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(error.contains("reading adapter_config.json"), "{error}");
}
