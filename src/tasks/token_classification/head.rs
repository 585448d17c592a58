//! `TokenClassifier`: our encoder plus the head of transformers'
//! `BertForTokenClassification` / `DistilBertForTokenClassification`: dropout, then one
//! linear (`classifier.weight` / `classifier.bias`) applied to every token. Full fine-tuning
//! by default; with LoRA the encoder's targeted linears get adapters and the head trains in
//! full (PEFT's `modules_to_save = ["classifier"]`, its `TOKEN_CLS` default).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use crate::train::TrainError;
use crate::zoo::bert::{dropout, put_linear, Encoder, ParamBuilder, Tuning};
use crate::zoo::classifier::{default_targets, new_head_linear, TOKENIZER_FILES};
use crate::zoo::config::{EncoderArch, EncoderConfig};
use crate::zoo::export::{
    copy_present, save_safetensors, write_json, write_peft_adapter, PeftAdapter,
};
use crate::zoo::params::{self, NamedVar};
use crate::zoo::{ClassifierSpec, EncodedBatch, TrainLinear, ZooError};

/// The token classifier's spec: the same fields as the sequence classifier's (label count,
/// LoRA or full, dropout before the classifier: transformers' BERT `classifier_dropout`, else
/// `hidden_dropout_prob`; DistilBERT's `dropout`).
pub type TokenClassifierSpec = ClassifierSpec;

pub struct TokenClassifier {
    encoder: Encoder,
    classifier: TrainLinear,
    classifier_dropout: f64,
    tuning: Tuning,
    /// PEFT `modules_to_save`: the head, trained in full in LoRA mode.
    modules_to_save: Vec<String>,
    vars: Vec<NamedVar>,
}

/// Mean cross-entropy over a batch's labelled positions and the arg-max there.
pub struct TokenLoss {
    /// Differentiable mean over the labelled positions.
    pub loss: Tensor,
    /// Labelled positions, in batch order (`b·T + t`).
    pub positions: Vec<usize>,
    /// Their gold and predicted label ids.
    pub gold: Vec<u32>,
    pub predicted: Vec<u32>,
}

impl TokenLoss {
    pub fn correct(&self) -> usize {
        self.gold
            .iter()
            .zip(&self.predicted)
            .filter(|(g, p)| g == p)
            .count()
    }
}

impl TokenClassifier {
    pub fn from_pretrained(
        base_dir: &Path,
        spec: &TokenClassifierSpec,
        device: &Device,
        seed: u64,
    ) -> Result<Self, ZooError> {
        let (cfg, _) = EncoderConfig::from_dir(base_dir)?;
        if spec.num_labels == 0 {
            return Err(ZooError::Config("num_labels must be > 0".into()));
        }
        let tuning = match &spec.lora {
            Some(lora) if lora.rank > 0 => Tuning::Lora {
                rank: lora.rank,
                alpha: lora.alpha,
                dropout: lora.dropout,
                targets: if lora.target_modules.is_empty() {
                    default_targets(cfg.arch)
                } else {
                    lora.target_modules.clone()
                },
            },
            _ => Tuning::Full,
        };
        let mut pb = ParamBuilder::new(base_dir, cfg.arch, tuning.clone(), device, seed)?;
        let encoder = Encoder::load(&cfg, &mut pb)?;
        let classifier = new_head_linear(
            &mut pb,
            "classifier",
            cfg.hidden_size,
            spec.num_labels,
            cfg.initializer_range,
        )?;
        let default_dropout = match cfg.arch {
            EncoderArch::Bert => cfg.classifier_dropout,
            EncoderArch::DistilBert => cfg.hidden_dropout,
        };
        Ok(Self {
            encoder,
            classifier,
            classifier_dropout: spec.classifier_dropout.unwrap_or(default_dropout),
            tuning,
            modules_to_save: vec!["classifier".to_string()],
            vars: pb.vars,
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.encoder.cfg
    }

    pub fn num_labels(&self) -> Result<usize, ZooError> {
        Ok(self.classifier.merged_weight()?.dim(0)?)
    }

    /// Logits `[B, T, num_labels]` f32 (padding positions hold the bias: never read);
    /// dropout only when `train`.
    pub fn forward(&self, batch: &EncodedBatch, train: bool) -> Result<Tensor, ZooError> {
        let hidden = self
            .encoder
            .forward(&batch.input_ids, &batch.attention_mask, train)?;
        let (b, t, h) = hidden.dims3()?;
        let hidden = dropout(&hidden, self.classifier_dropout, train)?;
        let logits = self
            .classifier
            .forward(&hidden.reshape((b * t, h))?, train)?;
        Ok(logits.reshape((b, t, ()))?.to_dtype(DType::F32)?)
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
        params::drop_adapters(&mut self.vars);
        Ok(())
    }

    /// Every tensor under the name transformers' token-classification model uses, merged.
    pub fn merged_tensors(&self) -> Result<HashMap<String, Tensor>, ZooError> {
        let mut out = HashMap::new();
        self.encoder.merged_tensors(&mut out)?;
        let mut put = |name: String, t: &Tensor| {
            out.insert(name, t.clone());
        };
        put_linear(&mut put, "classifier", &self.classifier)?;
        Ok(out)
    }

    /// A merged Hugging Face directory that `AutoModelForTokenClassification` loads, with
    /// `id2label` / `label2id` from `labels` (label id = index).
    pub fn export_merged(
        &self,
        base_dir: &Path,
        labels: &[String],
        out_dir: &Path,
    ) -> Result<(), ZooError> {
        std::fs::create_dir_all(out_dir)?;
        let (_, raw) = EncoderConfig::from_dir(base_dir)?;
        let serde_json::Value::Object(mut config) = raw else {
            return Err(ZooError::Config("config.json is not an object".into()));
        };
        let architecture = match self.encoder.cfg.arch {
            EncoderArch::Bert => "BertForTokenClassification",
            EncoderArch::DistilBert => "DistilBertForTokenClassification",
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
        write_json(
            &out_dir.join("config.json"),
            &serde_json::Value::Object(config),
        )?;
        save_safetensors(&self.merged_tensors()?, &out_dir.join("model.safetensors"))?;
        copy_present(base_dir, out_dir, &TOKENIZER_FILES)
    }

    /// PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`,
    /// `task_type` `TOKEN_CLS`).
    pub fn export_adapter(&self, base_model_id: &str, out_dir: &Path) -> Result<(), ZooError> {
        let adapter = PeftAdapter {
            task_type: "TOKEN_CLS",
            base_model_id,
            modules_to_save: Some(&self.modules_to_save),
        };
        write_peft_adapter(&self.tuning, &self.vars, &adapter, out_dir)
    }

    pub fn parameter_bytes(&self) -> usize {
        self.encoder.parameter_bytes() + self.classifier.parameter_bytes()
    }
}

/// Cross-entropy over the positions whose label is `Some` (transformers' `-100` is
/// `None`), `labels` row-major `B × T` as the batch's logits.
pub fn token_cross_entropy(
    logits: &Tensor,
    labels: &[Option<u32>],
) -> Result<TokenLoss, TrainError> {
    let (b, t, n_labels) = logits.dims3()?;
    if labels.len() != b * t {
        return Err(TrainError::InvalidData(format!(
            "labels cover {} positions, the batch has {}",
            labels.len(),
            b * t
        )));
    }
    let (positions, gold): (Vec<usize>, Vec<u32>) = labels
        .iter()
        .enumerate()
        .filter_map(|(p, label)| label.map(|l| (p, l)))
        .unzip();
    if positions.is_empty() {
        return Err(TrainError::InvalidData(
            "a batch has no labelled tokens".into(),
        ));
    }
    let device = logits.device();
    let rows: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
    let rows = Tensor::from_vec(rows, positions.len(), device)?;
    let selected = logits.reshape((b * t, n_labels))?.index_select(&rows, 0)?;
    let wanted = Tensor::from_vec(gold.clone(), gold.len(), device)?;
    let loss = candle_nn::loss::cross_entropy(&selected, &wanted)?;
    let predicted = selected.detach().argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok(TokenLoss {
        loss,
        positions,
        gold,
        predicted,
    })
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
