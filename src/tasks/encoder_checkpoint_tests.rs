//! The three encoder tasks' exports from one tiny model: the same encoder tensors, each
//! head under transformers' names, each task's `config.json` entries and PEFT settings.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::Device;
use serde_json::{json, Value};

use crate::domain::hyperparams::LoraSettings;
use crate::tasks::question_answering::{QaModelSpec, QuestionAnsweringModel};
use crate::tasks::token_classification::TokenClassifier;
use crate::zoo::testing::write_tiny_bert;
use crate::zoo::{ClassifierSpec, SequenceClassifier};

fn lora() -> Option<LoraSettings> {
    Some(LoraSettings {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        target_modules: vec![],
    })
}

fn classifier_spec() -> ClassifierSpec {
    ClassifierSpec {
        num_labels: 3,
        lora: lora(),
        classifier_dropout: Some(0.0),
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tensor_names(path: &Path) -> BTreeSet<String> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_keys()
        .collect()
}

/// What an export wrote: the `config.json` entries that differ from the base's, the merged
/// tensor names, `adapter_config.json` and the adapter's tensor names.
struct Exported {
    config_changes: serde_json::Map<String, Value>,
    merged: BTreeSet<String>,
    adapter_config: Value,
    adapter: BTreeSet<String>,
}

/// Where one model's merged directory and adapter directory are written.
struct ExportDirs {
    merged: tempfile::TempDir,
    adapter: tempfile::TempDir,
}

impl ExportDirs {
    fn new() -> Self {
        Self {
            merged: tempfile::tempdir().unwrap(),
            adapter: tempfile::tempdir().unwrap(),
        }
    }

    fn read(self, base: &Path) -> Exported {
        let base_config = read_json(&base.join("config.json"));
        let config = read_json(&self.merged.path().join("config.json"));
        let config_changes = config
            .as_object()
            .unwrap()
            .iter()
            .filter(|(key, value)| base_config.get(key.as_str()) != Some(*value))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        for file in ["tokenizer.json", "tokenizer_config.json", "vocab.txt"] {
            assert!(self.merged.path().join(file).exists(), "{file}");
        }
        let adapter = self.adapter.path();
        Exported {
            config_changes,
            merged: tensor_names(&self.merged.path().join("model.safetensors")),
            adapter_config: read_json(&adapter.join("adapter_config.json")),
            adapter: tensor_names(&adapter.join("adapter_model.safetensors")),
        }
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_three_encoder_tasks_export_one_encoder_with_their_own_heads_and_configs() {
    let base = tempfile::tempdir().unwrap();
    write_tiny_bert(base.path(), 3).unwrap();
    let base = base.path();
    let labels: Vec<String> = ["O", "B-PER", "I-PER"].map(String::from).to_vec();
    let device = Device::Cpu;

    let mut sequence =
        SequenceClassifier::from_pretrained(base, &classifier_spec(), &device, 0).unwrap();
    let dirs = ExportDirs::new();
    sequence
        .export_adapter("base-id", dirs.adapter.path())
        .unwrap();
    sequence.merge_lora().unwrap();
    sequence
        .export_merged(base, &labels, dirs.merged.path())
        .unwrap();
    let sequence = dirs.read(base);

    let mut token = TokenClassifier::from_pretrained(base, &classifier_spec(), &device, 0).unwrap();
    let dirs = ExportDirs::new();
    token
        .export_adapter("base-id", dirs.adapter.path())
        .unwrap();
    token.merge_lora().unwrap();
    token
        .export_merged(base, &labels, dirs.merged.path())
        .unwrap();
    let token = dirs.read(base);

    let qa_spec = QaModelSpec { lora: lora() };
    let mut qa = QuestionAnsweringModel::from_pretrained(base, &qa_spec, &device, 0).unwrap();
    let dirs = ExportDirs::new();
    qa.export_adapter("base-id", dirs.adapter.path()).unwrap();
    qa.merge_lora().unwrap();
    qa.export_merged(base, dirs.merged.path()).unwrap();
    let qa = dirs.read(base);

    // One encoder: 3 embeddings + 2 LayerNorm + 16 per layer × 2 layers, under `bert.`.
    let head = names(&["classifier.weight", "classifier.bias"]);
    let encoder: BTreeSet<String> = token.merged.difference(&head).cloned().collect();
    assert_eq!(encoder.len(), 3 + 2 + 2 * 16);
    assert!(
        encoder.iter().all(|n| n.starts_with("bert.")),
        "{encoder:?}"
    );
    let with =
        |extra: &[&str]| -> BTreeSet<String> { encoder.union(&names(extra)).cloned().collect() };
    assert_eq!(
        token.merged,
        with(&["classifier.weight", "classifier.bias"])
    );
    assert_eq!(
        sequence.merged,
        with(&[
            "bert.pooler.dense.weight",
            "bert.pooler.dense.bias",
            "classifier.weight",
            "classifier.bias",
        ])
    );
    assert_eq!(qa.merged, with(&["qa_outputs.weight", "qa_outputs.bias"]));

    let label_entries = json!({
        "id2label": {"0": "O", "1": "B-PER", "2": "I-PER"},
        "label2id": {"O": 0, "B-PER": 1, "I-PER": 2},
        "num_labels": 3,
    });
    let mut expected_sequence = label_entries.clone();
    expected_sequence["architectures"] = json!(["BertForSequenceClassification"]);
    expected_sequence["problem_type"] = json!("single_label_classification");
    assert_eq!(
        Value::Object(sequence.config_changes.clone()),
        expected_sequence
    );
    let mut expected_token = label_entries;
    expected_token["architectures"] = json!(["BertForTokenClassification"]);
    assert_eq!(Value::Object(token.config_changes.clone()), expected_token);
    assert_eq!(
        Value::Object(qa.config_changes.clone()),
        json!({
            "architectures": ["BertForQuestionAnswering"],
            "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
            "label2id": {"LABEL_0": 0, "LABEL_1": 1},
        })
    );

    // Adapters: the same LoRA tensors on query/value, the head saved in full.
    let lora_names: BTreeSet<String> = token
        .adapter
        .iter()
        .filter(|n| n.contains(".lora_"))
        .cloned()
        .collect();
    assert_eq!(lora_names.len(), 2 * 2 * 2, "{lora_names:?}");
    let adapter_with =
        |extra: &[&str]| -> BTreeSet<String> { lora_names.union(&names(extra)).cloned().collect() };
    let classifier_vars = [
        "base_model.model.classifier.weight",
        "base_model.model.classifier.bias",
    ];
    assert_eq!(token.adapter, adapter_with(&classifier_vars));
    assert_eq!(sequence.adapter, adapter_with(&classifier_vars));
    assert_eq!(
        qa.adapter,
        adapter_with(&[
            "base_model.model.qa_outputs.weight",
            "base_model.model.qa_outputs.bias",
        ])
    );
    for (exported, task_type, modules) in [
        (&sequence, "SEQ_CLS", json!(["classifier"])),
        (&token, "TOKEN_CLS", json!(["classifier"])),
        (&qa, "QUESTION_ANS", json!(["qa_outputs"])),
    ] {
        let config = &exported.adapter_config;
        assert_eq!(config["task_type"], task_type);
        assert_eq!(config["modules_to_save"], modules);
        assert_eq!(config["target_modules"], json!(["query", "value"]));
        assert_eq!(config["base_model_name_or_path"], "base-id");
        assert_eq!(config["r"], 2);
    }
}
