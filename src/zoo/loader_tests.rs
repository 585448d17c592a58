//! Loader and tokenizer tests on tiny random checkpoints: checkpoint name prefixes,
//! transformers 5.x configs, legacy LayerNorm names, sharded safetensors, baked-in padding.
#![allow(clippy::unwrap_used)]

use candle_core::Device;
use std::collections::HashMap;

use super::testing::{write_tiny_bert, write_tiny_bert_with, TinyBertStyle};
use super::tests::{batch, full_spec, lora_spec, TEXTS};
use super::*;
use crate::zoo::test_tensors::max_abs_diff;

#[test]
fn loader_accepts_prefixes_v5_configs_and_legacy_layer_norm_names() {
    let b_dir = tempfile::tempdir().unwrap();
    write_tiny_bert(b_dir.path(), 6).unwrap();
    let reference =
        SequenceClassifier::from_pretrained(b_dir.path(), &full_spec(2), &Device::Cpu, 0)
            .unwrap()
            .forward(&batch(b_dir.path(), &TEXTS), false)
            .unwrap();
    let styles = [
        TinyBertStyle {
            bert_prefix: true,
            ..Default::default()
        },
        TinyBertStyle {
            transformers_v5: true,
            ..Default::default()
        },
        TinyBertStyle {
            legacy_layer_norm: true,
            bert_prefix: true,
            ..Default::default()
        },
    ];
    for style in styles {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert_with(dir.path(), 6, style).unwrap();
        let model = SequenceClassifier::from_pretrained(dir.path(), &full_spec(2), &Device::Cpu, 0)
            .unwrap();
        let logits = model.forward(&batch(dir.path(), &TEXTS), false).unwrap();
        assert_eq!(max_abs_diff(&logits, &reference), 0.0, "{style:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let style = TinyBertStyle {
        without_pooler: true,
        ..Default::default()
    };
    write_tiny_bert_with(dir.path(), 6, style).unwrap();
    let model =
        SequenceClassifier::from_pretrained(dir.path(), &lora_spec(2), &Device::Cpu, 0).unwrap();
    let names: Vec<String> = model.trainable_vars().into_iter().map(|v| v.name).collect();
    assert!(names.contains(&"base_model.model.bert.pooler.dense.weight".to_string()));
}

#[test]
fn tokenizer_ignores_baked_in_padding_and_keeps_final_sep() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 7).unwrap();
    let tok = TextTokenizer::from_dir(dir.path()).unwrap();
    // The file itself pads to 128.
    let raw = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(raw.encode("good movie", true).unwrap().get_ids().len(), 128);
    let ids = tok.encode("good movie", 128).unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!((ids[0], ids[3]), (2, 3));
    assert_eq!(tok.pad_id(), 0);
    let long = tok
        .encode("the film was not very good but the music was great", 5)
        .unwrap();
    assert_eq!(long.len(), 5);
    assert_eq!((long[0], long[4]), (2, 3));
}

#[test]
fn loader_reads_sharded_safetensors_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 12).unwrap();
    let b = batch(dir.path(), &TEXTS);
    let single = SequenceClassifier::from_pretrained(dir.path(), &full_spec(2), &Device::Cpu, 0)
        .unwrap()
        .forward(&b, false)
        .unwrap();
    let path = dir.path().join("model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (mut first, mut second) = (HashMap::new(), HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (name, t) in tensors {
        let shard = if name.contains("layer.1") {
            "model-00002-of-00002.safetensors"
        } else {
            "model-00001-of-00002.safetensors"
        };
        weight_map.insert(name.clone(), shard.into());
        if shard.starts_with("model-00001") {
            first.insert(name, t)
        } else {
            second.insert(name, t)
        };
    }
    candle_core::safetensors::save(&first, dir.path().join("model-00001-of-00002.safetensors"))
        .unwrap();
    candle_core::safetensors::save(&second, dir.path().join("model-00002-of-00002.safetensors"))
        .unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let sharded = SequenceClassifier::from_pretrained(dir.path(), &full_spec(2), &Device::Cpu, 0)
        .unwrap()
        .forward(&b, false)
        .unwrap();
    assert_eq!(max_abs_diff(&single, &sharded), 0.0);
}
