//! `SequenceClassifier`: encoder + the head of transformers'
//! `BertForSequenceClassification` (pooler dense+tanh on [CLS] → dropout → classifier) or
//! `DistilBertForSequenceClassification` ([CLS] → pre_classifier → ReLU → dropout →
//! classifier). Loading, checkpoint vars and exports are [`EncoderModel`]'s.

use std::path::Path;

use candle_core::Tensor;

use super::bert::{dropout, ParamBuilder};
use super::config::{EncoderArch, EncoderConfig};
use super::encoder_head::{
    check_num_labels, label_entries, new_head_linear, EncoderHead, EncoderModel,
};
use super::linear::TrainLinear;
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

/// The encoder with the sequence-classification head.
pub type SequenceClassifier = EncoderModel<SequenceHead>;

/// The pooling linear and the classifier on top of [CLS].
pub struct SequenceHead {
    arch: EncoderArch,
    /// BERT's pooler, or DistilBERT's pre_classifier.
    pre_head: TrainLinear,
    classifier: TrainLinear,
    classifier_dropout: f64,
    /// Head modules the base does not have (PEFT trains them in full in LoRA mode).
    modules_to_save: Vec<String>,
}

impl EncoderHead for SequenceHead {
    type Spec = ClassifierSpec;
    const PEFT_TASK_TYPE: &'static str = "SEQ_CLS";

    fn lora(spec: &ClassifierSpec) -> Option<&LoraSettings> {
        spec.lora.as_ref()
    }

    fn build(
        cfg: &EncoderConfig,
        spec: &ClassifierSpec,
        pb: &mut ParamBuilder,
    ) -> Result<Self, ZooError> {
        check_num_labels(spec.num_labels)?;
        let h = cfg.hidden_size;
        let std = cfg.initializer_range;
        let mut modules_to_save = vec!["classifier".to_string()];
        let pre_head = match cfg.arch {
            EncoderArch::Bert if pb.contains("pooler.dense.weight") => {
                pb.linear("pooler.dense", h, h)?
            }
            EncoderArch::Bert => {
                modules_to_save.push("pooler".into());
                new_head_linear(pb, "bert.pooler.dense", h, h, std)?
            }
            EncoderArch::DistilBert => {
                modules_to_save.push("pre_classifier".into());
                new_head_linear(pb, "pre_classifier", h, h, std)?
            }
        };
        let classifier = new_head_linear(pb, "classifier", h, spec.num_labels, std)?;
        Ok(Self {
            arch: cfg.arch,
            pre_head,
            classifier,
            classifier_dropout: spec.classifier_dropout.unwrap_or(cfg.classifier_dropout),
            modules_to_save,
        })
    }

    fn architecture(arch: EncoderArch) -> &'static str {
        match arch {
            EncoderArch::Bert => "BertForSequenceClassification",
            EncoderArch::DistilBert => "DistilBertForSequenceClassification",
        }
    }

    fn named_linears(&self) -> Vec<(&'static str, &TrainLinear)> {
        let pre = match self.arch {
            EncoderArch::Bert => "bert.pooler.dense",
            EncoderArch::DistilBert => "pre_classifier",
        };
        vec![(pre, &self.pre_head), ("classifier", &self.classifier)]
    }

    fn linears_mut(&mut self) -> Vec<&mut TrainLinear> {
        vec![&mut self.pre_head, &mut self.classifier]
    }

    /// BERT's pooler comes from the checkpoint and may carry an adapter.
    fn merge_lora(&mut self) -> Result<(), ZooError> {
        self.pre_head.merge()
    }

    fn modules_to_save(&self) -> Vec<String> {
        self.modules_to_save.clone()
    }

    fn config_entries(labels: &[String]) -> Vec<(&'static str, serde_json::Value)> {
        let mut entries = label_entries(labels);
        entries.push(("problem_type", "single_label_classification".into()));
        entries
    }
}

impl SequenceClassifier {
    /// Logits `[B, num_labels]` f32; dropout only when `train`.
    pub fn forward(&self, batch: &EncodedBatch, train: bool) -> Result<Tensor, ZooError> {
        let head = self.head();
        let cls =
            self.encoder()
                .forward_first_tokens(&batch.input_ids, &batch.attention_mask, train)?;
        let pooled = head.pre_head.forward(&cls, train)?;
        let pooled = match head.arch {
            EncoderArch::Bert => pooled.tanh()?,
            EncoderArch::DistilBert => pooled.relu()?,
        };
        let pooled = dropout(&pooled, head.classifier_dropout, train)?;
        head.classifier.forward(&pooled, train)
    }

    /// A merged Hugging Face directory `AutoModelForSequenceClassification` loads, with
    /// `id2label` / `label2id` from `labels` (label id = index).
    pub fn export_merged(
        &self,
        base_dir: &Path,
        labels: &[String],
        out_dir: &Path,
    ) -> Result<(), ZooError> {
        self.write_merged_dir(base_dir, labels, out_dir)
    }
}
