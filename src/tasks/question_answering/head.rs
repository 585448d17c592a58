//! `QuestionAnsweringModel`: our differentiable encoder + the head of transformers'
//! `BertForQuestionAnswering` / `DistilBertForQuestionAnswering`, a `qa_outputs` linear
//! (hidden → 2) giving each token a start and an end logit. Loss as transformers: the mean
//! of the start and end cross-entropies. Full fine-tuning by default; with LoRA the
//! encoder's targets get adapters and `qa_outputs` trains in full (PEFT `modules_to_save`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::windows::{QaWindow, SpanLabel};
use crate::domain::hyperparams::LoraSettings;
use crate::zoo::bert::{dropout, put_linear, Encoder, ParamBuilder, Tuning};
use crate::zoo::classifier::{default_targets, new_head_linear, TOKENIZER_FILES};
use crate::zoo::config::{EncoderArch, EncoderConfig};
use crate::zoo::export::{
    copy_present, save_safetensors, write_json, write_peft_adapter, PeftAdapter,
};
use crate::zoo::params::{self, NamedVar};
use crate::zoo::{collate, EncodedBatch, TrainLinear, ZooError};

/// How the model is tuned; `lora` with rank > 0: LoRA, else full fine-tuning.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QaModelSpec {
    pub lora: Option<LoraSettings>,
}

/// The head module's name in transformers and PEFT.
const HEAD: &str = "qa_outputs";

/// Added to padding positions' logits so that they take no probability (the loss is then
/// independent of how much padding a batch has).
const PADDING_LOGIT: f64 = -1e9;

/// A right-padded batch of windows.
#[derive(Debug, Clone)]
pub struct QaBatch {
    pub inputs: EncodedBatch,
    /// `[B, T]` u32 segment ids (0 at padding).
    pub token_type_ids: Tensor,
}

/// Pads the windows to the longest one (dynamic padding).
pub fn collate_windows(
    windows: &[&QaWindow],
    pad_id: u32,
    device: &Device,
) -> Result<QaBatch, ZooError> {
    let ids: Vec<&[u32]> = windows.iter().map(|w| w.input_ids.as_slice()).collect();
    let inputs = collate(&ids, pad_id, device)?;
    let width = inputs.input_ids.dim(1)?;
    let mut types = Vec::with_capacity(windows.len() * width);
    for w in windows {
        types.extend_from_slice(&w.type_ids);
        types.extend(std::iter::repeat_n(0u32, width - w.type_ids.len()));
    }
    let token_type_ids = Tensor::from_vec(types, (windows.len(), width), device)?;
    Ok(QaBatch {
        inputs,
        token_type_ids,
    })
}

/// `[B, T]` f32 start and end logits (padding positions hold the head's bias).
#[derive(Debug, Clone)]
pub struct SpanLogits {
    pub start: Tensor,
    pub end: Tensor,
}

pub struct QuestionAnsweringModel {
    encoder: Encoder,
    qa_outputs: TrainLinear,
    /// DistilBERT's `qa_dropout` before the head; BERT has none.
    head_dropout: f64,
    tuning: Tuning,
    vars: Vec<NamedVar>,
}

impl QuestionAnsweringModel {
    /// The base encoder from `base_dir` with a new `qa_outputs` (N(0, initializer_range)
    /// weight from `seed`, zero bias).
    pub fn from_pretrained(
        base_dir: &Path,
        spec: &QaModelSpec,
        device: &Device,
        seed: u64,
    ) -> Result<Self, ZooError> {
        let (cfg, _) = EncoderConfig::from_dir(base_dir)?;
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
        let std = cfg.initializer_range;
        let qa_outputs = new_head_linear(&mut pb, HEAD, cfg.hidden_size, 2, std)?;
        let head_dropout = match cfg.arch {
            EncoderArch::Bert => 0.0,
            EncoderArch::DistilBert => cfg.hidden_dropout,
        };
        Ok(Self {
            encoder,
            qa_outputs,
            head_dropout,
            tuning,
            vars: pb.vars,
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.encoder.cfg
    }

    /// Start and end logits of every token; dropout only when `train`.
    pub fn forward(&self, batch: &QaBatch, train: bool) -> Result<SpanLogits, ZooError> {
        let inputs = &batch.inputs;
        let hidden = self.encoder.forward_with_token_types(
            &inputs.input_ids,
            Some(&batch.token_type_ids),
            &inputs.attention_mask,
            train,
        )?;
        let hidden = dropout(&hidden, self.head_dropout, train)?;
        let (b, t, _) = hidden.dims3()?;
        let logits = self
            .qa_outputs
            .forward(&hidden, train)?
            .reshape((b, t, 2))?;
        Ok(SpanLogits {
            start: logits.narrow(2, 0, 1)?.squeeze(2)?,
            end: logits.narrow(2, 1, 1)?.squeeze(2)?,
        })
    }

    /// `(CE(start) + CE(end)) / 2`, each the mean over the batch's windows, with padding
    /// positions excluded from the softmax.
    pub fn loss(
        logits: &SpanLogits,
        batch: &QaBatch,
        labels: &[SpanLabel],
    ) -> Result<Tensor, ZooError> {
        let device = logits.start.device();
        let padding = batch
            .inputs
            .attention_mask
            .to_dtype(DType::F32)?
            .affine(-PADDING_LOGIT, PADDING_LOGIT)?;
        let starts: Vec<u32> = labels.iter().map(|l| l.start as u32).collect();
        let ends: Vec<u32> = labels.iter().map(|l| l.end as u32).collect();
        let ce = |logits: &Tensor, targets: Vec<u32>| -> Result<Tensor, ZooError> {
            let targets = Tensor::from_vec(targets, labels.len(), device)?;
            Ok(candle_nn::loss::cross_entropy(
                &(logits + &padding)?,
                &targets,
            )?)
        };
        let total = (ce(&logits.start, starts)? + ce(&logits.end, ends)?)?;
        Ok((total / 2.0)?)
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

    /// Every tensor under the name transformers' QA model uses, adapters merged.
    pub fn merged_tensors(&self) -> Result<HashMap<String, Tensor>, ZooError> {
        let mut out = HashMap::new();
        self.encoder.merged_tensors(&mut out)?;
        let mut put = |name: String, t: &Tensor| {
            out.insert(name, t.clone());
        };
        put_linear(&mut put, HEAD, &self.qa_outputs)?;
        Ok(out)
    }

    /// A directory `AutoModelForQuestionAnswering.from_pretrained` loads: the base's
    /// config with the QA architecture and transformers' default two labels (the head's
    /// outputs), merged weights, the base's tokenizer files.
    pub fn export_merged(&self, base_dir: &Path, out_dir: &Path) -> Result<(), ZooError> {
        std::fs::create_dir_all(out_dir)?;
        let (_, raw) = EncoderConfig::from_dir(base_dir)?;
        let serde_json::Value::Object(mut config) = raw else {
            return Err(ZooError::Config("config.json is not an object".into()));
        };
        let architecture = match self.encoder.cfg.arch {
            EncoderArch::Bert => "BertForQuestionAnswering",
            EncoderArch::DistilBert => "DistilBertForQuestionAnswering",
        };
        config.insert("architectures".into(), serde_json::json!([architecture]));
        config.insert(
            "id2label".into(),
            serde_json::json!({"0": "LABEL_0", "1": "LABEL_1"}),
        );
        config.insert(
            "label2id".into(),
            serde_json::json!({"LABEL_0": 0, "LABEL_1": 1}),
        );
        write_json(
            &out_dir.join("config.json"),
            &serde_json::Value::Object(config),
        )?;
        save_safetensors(&self.merged_tensors()?, &out_dir.join("model.safetensors"))?;
        copy_present(base_dir, out_dir, &TOKENIZER_FILES)
    }

    /// PEFT adapter directory (`task_type` `QUESTION_ANS`, `qa_outputs` saved in full).
    pub fn export_adapter(&self, base_model_id: &str, out_dir: &Path) -> Result<(), ZooError> {
        let modules_to_save = [HEAD.to_string()];
        let adapter = PeftAdapter {
            task_type: "QUESTION_ANS",
            base_model_id,
            modules_to_save: Some(&modules_to_save),
        };
        write_peft_adapter(&self.tuning, &self.vars, &adapter, out_dir)
    }

    pub fn parameter_bytes(&self) -> usize {
        self.encoder.parameter_bytes() + self.qa_outputs.parameter_bytes()
    }
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
