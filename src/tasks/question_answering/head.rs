//! `QuestionAnsweringModel`: our differentiable encoder + the head of transformers'
//! `BertForQuestionAnswering` / `DistilBertForQuestionAnswering`, a `qa_outputs` linear
//! (hidden → 2) giving each token a start and an end logit. Loss as transformers: the mean
//! of the start and end cross-entropies. Full fine-tuning by default; with LoRA the
//! encoder's targets get adapters and `qa_outputs` trains in full (PEFT `modules_to_save`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::windows::{QaWindow, SpanLabel};
use crate::domain::hyperparams::LoraSettings;
use crate::zoo::bert::{dropout, ParamBuilder};
use crate::zoo::config::{EncoderArch, EncoderConfig};
use crate::zoo::encoder_head::new_head_linear;
use crate::zoo::{collate, EncodedBatch, EncoderHead, EncoderModel, TrainLinear, ZooError};

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

/// The encoder with the extractive-QA head.
pub type QuestionAnsweringModel = EncoderModel<QaHead>;

/// `qa_outputs`: hidden → (start, end) logits for every token.
pub struct QaHead {
    qa_outputs: TrainLinear,
    /// DistilBERT's `qa_dropout` before the head; BERT has none.
    head_dropout: f64,
}

impl EncoderHead for QaHead {
    type Spec = QaModelSpec;
    const PEFT_TASK_TYPE: &'static str = "QUESTION_ANS";

    fn lora(spec: &QaModelSpec) -> Option<&LoraSettings> {
        spec.lora.as_ref()
    }

    /// A new `qa_outputs`: N(0, initializer_range) weight from the seed, zero bias.
    fn build(
        cfg: &EncoderConfig,
        _spec: &QaModelSpec,
        pb: &mut ParamBuilder,
    ) -> Result<Self, ZooError> {
        let std = cfg.initializer_range;
        let qa_outputs = new_head_linear(pb, HEAD, cfg.hidden_size, 2, std)?;
        let head_dropout = match cfg.arch {
            EncoderArch::Bert => 0.0,
            EncoderArch::DistilBert => cfg.hidden_dropout,
        };
        Ok(Self {
            qa_outputs,
            head_dropout,
        })
    }

    fn architecture(arch: EncoderArch) -> &'static str {
        match arch {
            EncoderArch::Bert => "BertForQuestionAnswering",
            EncoderArch::DistilBert => "DistilBertForQuestionAnswering",
        }
    }

    fn named_linears(&self) -> Vec<(&'static str, &TrainLinear)> {
        vec![(HEAD, &self.qa_outputs)]
    }

    fn linears_mut(&mut self) -> Vec<&mut TrainLinear> {
        vec![&mut self.qa_outputs]
    }

    /// transformers' default two labels (the head's outputs); QA data has no label names.
    fn config_entries(_labels: &[String]) -> Vec<(&'static str, serde_json::Value)> {
        vec![
            (
                "id2label",
                serde_json::json!({"0": "LABEL_0", "1": "LABEL_1"}),
            ),
            ("label2id", serde_json::json!({"LABEL_0": 0, "LABEL_1": 1})),
        ]
    }
}

impl QuestionAnsweringModel {
    /// Start and end logits of every token; dropout only when `train`.
    pub fn forward(&self, batch: &QaBatch, train: bool) -> Result<SpanLogits, ZooError> {
        let inputs = &batch.inputs;
        let head = self.head();
        let hidden = self.encoder().forward_with_token_types(
            &inputs.input_ids,
            Some(&batch.token_type_ids),
            &inputs.attention_mask,
            train,
        )?;
        let hidden = dropout(&hidden, head.head_dropout, train)?;
        let (b, t, _) = hidden.dims3()?;
        let logits = head
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

    /// A directory `AutoModelForQuestionAnswering.from_pretrained` loads: the base's
    /// config with the QA architecture and transformers' default two labels (the head's
    /// outputs), merged weights, the base's tokenizer files.
    pub fn export_merged(&self, base_dir: &Path, out_dir: &Path) -> Result<(), ZooError> {
        self.write_merged_dir(base_dir, &[], out_dir)
    }
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
