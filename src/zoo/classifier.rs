//! `SequenceClassifier`: encoder + the head of transformers'
//! `BertForSequenceClassification` (pooler dense+tanh on [CLS] → dropout → classifier) or
//! `DistilBertForSequenceClassification` ([CLS] → pre_classifier → ReLU → dropout →
//! classifier), with checkpoint I/O and Hugging Face / PEFT exports.

use candle_core::{Device, Tensor};
use rand::Rng;
use std::collections::HashMap;
use std::path::Path;

use super::bert::{dropout, put_linear, Encoder, ParamBuilder, Tuning};
use super::config::{EncoderArch, EncoderConfig};
use super::export::{copy_present, save_safetensors, write_json, write_peft_adapter, PeftAdapter};
use super::linear::{Param, TrainLinear};
use super::params::{self, NamedVar};
use super::{EncodedBatch, ZooError};
use crate::domain::hyperparams::LoraSettings;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassifierSpec {
    pub num_labels: usize,
    /// `Some` with rank > 0: LoRA; `None`: full fine-tuning.
    pub lora: Option<LoraSettings>,
    /// Overrides the config's classifier dropout.
    pub classifier_dropout: Option<f64>,
}

/// Tokenizer files an exported directory carries over from the base model.
pub(crate) const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
];

pub struct SequenceClassifier {
    encoder: Encoder,
    /// BERT's pooler, or DistilBERT's pre_classifier.
    pre_head: TrainLinear,
    classifier: TrainLinear,
    classifier_dropout: f64,
    tuning: Tuning,
    /// PEFT `modules_to_save`: head modules trained in full in LoRA mode.
    modules_to_save: Vec<String>,
    vars: Vec<NamedVar>,
}

/// PEFT's defaults for sequence classification.
pub(crate) fn default_targets(arch: EncoderArch) -> Vec<String> {
    let names: &[&str] = match arch {
        EncoderArch::Bert => &["query", "value"],
        EncoderArch::DistilBert => &["q_lin", "v_lin"],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// A new head linear: weight ~ N(0, std) from the seeded RNG, zero bias, always trainable.
pub(crate) fn new_head_linear(
    pb: &mut ParamBuilder,
    hf_module: &str,
    in_dim: usize,
    out_dim: usize,
    std: f64,
) -> Result<TrainLinear, ZooError> {
    let data: Vec<f32> = (0..in_dim * out_dim)
        .map(|_| {
            // Box-Muller: rand 0.9 has no normal distribution without rand_distr.
            let u1: f64 = pb.rng.random_range(f64::EPSILON..1.0);
            let u2: f64 = pb.rng.random();
            (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    let weight = Tensor::from_vec(data, (out_dim, in_dim), &pb.device)?;
    let bias = Tensor::zeros(out_dim, candle_core::DType::F32, &pb.device)?;
    let w = pb.register(&format!("{hf_module}.weight"), &weight, true)?;
    let b = pb.register(&format!("{hf_module}.bias"), &bias, false)?;
    Ok(TrainLinear::new(
        Param::Trainable(w),
        Some(Param::Trainable(b)),
    ))
}

impl SequenceClassifier {
    pub fn from_pretrained(
        base_dir: &Path,
        spec: &ClassifierSpec,
        device: &Device,
        seed: u64,
    ) -> Result<Self, ZooError> {
        let (cfg, _) = EncoderConfig::from_dir(base_dir)?;
        if spec.num_labels == 0 {
            return Err(ZooError::Config("num_labels must be > 0".into()));
        }
        let tuning = match &spec.lora {
            Some(l) if l.rank > 0 => Tuning::Lora {
                rank: l.rank,
                alpha: l.alpha,
                dropout: l.dropout,
                targets: if l.target_modules.is_empty() {
                    default_targets(cfg.arch)
                } else {
                    l.target_modules.clone()
                },
            },
            _ => Tuning::Full,
        };
        let mut pb = ParamBuilder::new(base_dir, cfg.arch, tuning.clone(), device, seed)?;
        let encoder = Encoder::load(&cfg, &mut pb)?;
        let h = cfg.hidden_size;
        let std = cfg.initializer_range;
        let mut modules_to_save = vec!["classifier".to_string()];
        let pre_head = match cfg.arch {
            EncoderArch::Bert if pb.contains("pooler.dense.weight") => {
                pb.linear("pooler.dense", h, h)?
            }
            EncoderArch::Bert => {
                modules_to_save.push("pooler".into());
                new_head_linear(&mut pb, "bert.pooler.dense", h, h, std)?
            }
            EncoderArch::DistilBert => {
                modules_to_save.push("pre_classifier".into());
                new_head_linear(&mut pb, "pre_classifier", h, h, std)?
            }
        };
        let classifier = new_head_linear(&mut pb, "classifier", h, spec.num_labels, std)?;
        Ok(Self {
            encoder,
            pre_head,
            classifier,
            classifier_dropout: spec.classifier_dropout.unwrap_or(cfg.classifier_dropout),
            tuning,
            modules_to_save,
            vars: pb.vars,
        })
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.encoder.cfg
    }

    /// Logits `[B, num_labels]` f32; dropout only when `train`.
    pub fn forward(&self, batch: &EncodedBatch, train: bool) -> Result<Tensor, ZooError> {
        let hidden = self
            .encoder
            .forward(&batch.input_ids, &batch.attention_mask, train)?;
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pre_head.forward(&cls, train)?;
        let pooled = match self.encoder.cfg.arch {
            EncoderArch::Bert => pooled.tanh()?,
            EncoderArch::DistilBert => pooled.relu()?,
        };
        let pooled = dropout(&pooled, self.classifier_dropout, train)?;
        self.classifier.forward(&pooled, train)
    }

    pub fn trainable_vars(&self) -> Vec<NamedVar> {
        self.vars.clone()
    }

    /// Snapshot copies of the trainable tensors (the optimizer updates vars in place).
    pub fn trainable_tensors(&self) -> Result<HashMap<String, Tensor>, ZooError> {
        params::snapshot(&self.vars)
    }

    pub fn load_trainable(&self, tensors: &HashMap<String, Tensor>) -> Result<(), ZooError> {
        params::load_into(&self.vars, tensors)
    }

    /// Folds every adapter into its base weight; afterwards only the head is trainable.
    pub fn merge_lora(&mut self) -> Result<(), ZooError> {
        self.encoder.merge_lora()?;
        self.pre_head.merge()?;
        params::drop_adapters(&mut self.vars);
        Ok(())
    }

    fn head_module_names(&self) -> (&'static str, &'static str) {
        match self.encoder.cfg.arch {
            EncoderArch::Bert => ("bert.pooler.dense", "classifier"),
            EncoderArch::DistilBert => ("pre_classifier", "classifier"),
        }
    }

    /// Every tensor under the name transformers' classification model uses, merged.
    pub fn merged_tensors(&self) -> Result<HashMap<String, Tensor>, ZooError> {
        let mut out = HashMap::new();
        self.encoder.merged_tensors(&mut out)?;
        let (pre, cls) = self.head_module_names();
        let mut put = |name: String, t: &Tensor| {
            out.insert(name, t.clone());
        };
        put_linear(&mut put, pre, &self.pre_head)?;
        put_linear(&mut put, cls, &self.classifier)?;
        Ok(out)
    }

    pub fn export_merged(
        &self,
        base_dir: &Path,
        labels: &[String],
        out_dir: &Path,
    ) -> Result<(), ZooError> {
        std::fs::create_dir_all(out_dir)?;
        let (_, raw) = EncoderConfig::from_dir(base_dir)?;
        let mut config = match raw {
            serde_json::Value::Object(map) => map,
            _ => return Err(ZooError::Config("config.json is not an object".into())),
        };
        let architecture = match self.encoder.cfg.arch {
            EncoderArch::Bert => "BertForSequenceClassification",
            EncoderArch::DistilBert => "DistilBertForSequenceClassification",
        };
        let id2label: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone().into()))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i.into()))
            .collect();
        config.insert("architectures".into(), serde_json::json!([architecture]));
        config.insert("id2label".into(), id2label.into());
        config.insert("label2id".into(), label2id.into());
        config.insert("num_labels".into(), labels.len().into());
        config.insert("problem_type".into(), "single_label_classification".into());
        write_json(
            &out_dir.join("config.json"),
            &serde_json::Value::Object(config),
        )?;
        save_safetensors(&self.merged_tensors()?, &out_dir.join("model.safetensors"))?;
        copy_present(base_dir, out_dir, &TOKENIZER_FILES)
    }

    /// PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
    pub fn export_adapter(&self, base_model_id: &str, out_dir: &Path) -> Result<(), ZooError> {
        let adapter = PeftAdapter {
            task_type: "SEQ_CLS",
            base_model_id,
            modules_to_save: Some(&self.modules_to_save),
        };
        write_peft_adapter(&self.tuning, &self.vars, &adapter, out_dir)
    }

    pub fn parameter_bytes(&self) -> usize {
        self.encoder.parameter_bytes()
            + self.pre_head.parameter_bytes()
            + self.classifier.parameter_bytes()
    }
}
