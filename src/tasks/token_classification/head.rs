//! `TokenClassifier`: our encoder plus the head of transformers'
//! `BertForTokenClassification` / `DistilBertForTokenClassification`: dropout, then one
//! linear (`classifier.weight` / `classifier.bias`) applied to every token. Full fine-tuning
//! by default; with LoRA the encoder's targeted linears get adapters and the head trains in
//! full (PEFT's `modules_to_save = ["classifier"]`, its `TOKEN_CLS` default).

use std::path::Path;

use candle_core::{DType, Tensor, D};

use crate::domain::hyperparams::LoraSettings;
use crate::train::TrainError;
use crate::zoo::bert::{dropout, ParamBuilder};
use crate::zoo::config::{EncoderArch, EncoderConfig};
use crate::zoo::encoder_head::{check_num_labels, new_head_linear};
use crate::zoo::{ClassifierSpec, EncodedBatch, EncoderHead, EncoderModel, TrainLinear, ZooError};

/// The token classifier's spec: the same fields as the sequence classifier's (label count,
/// LoRA or full, dropout before the classifier: transformers' BERT `classifier_dropout`, else
/// `hidden_dropout_prob`; DistilBERT's `dropout`).
pub type TokenClassifierSpec = ClassifierSpec;

/// The encoder with the token-classification head.
pub type TokenClassifier = EncoderModel<TokenHead>;

/// Dropout, then one `classifier` linear applied to every token.
pub struct TokenHead {
    classifier: TrainLinear,
    classifier_dropout: f64,
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

impl EncoderHead for TokenHead {
    type Spec = TokenClassifierSpec;
    const PEFT_TASK_TYPE: &'static str = "TOKEN_CLS";

    fn lora(spec: &TokenClassifierSpec) -> Option<&LoraSettings> {
        spec.lora.as_ref()
    }

    fn build(
        cfg: &EncoderConfig,
        spec: &TokenClassifierSpec,
        pb: &mut ParamBuilder,
    ) -> Result<Self, ZooError> {
        check_num_labels(spec.num_labels)?;
        let classifier = new_head_linear(
            pb,
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
            classifier,
            classifier_dropout: spec.classifier_dropout.unwrap_or(default_dropout),
        })
    }

    fn architecture(arch: EncoderArch) -> &'static str {
        match arch {
            EncoderArch::Bert => "BertForTokenClassification",
            EncoderArch::DistilBert => "DistilBertForTokenClassification",
        }
    }

    fn named_linears(&self) -> Vec<(&'static str, &TrainLinear)> {
        vec![("classifier", &self.classifier)]
    }

    fn linears_mut(&mut self) -> Vec<&mut TrainLinear> {
        vec![&mut self.classifier]
    }
}

impl TokenClassifier {
    pub fn num_labels(&self) -> Result<usize, ZooError> {
        Ok(self.head().classifier.merged_weight()?.dim(0)?)
    }

    /// Logits `[B, T, num_labels]` f32 (padding positions hold the bias: never read);
    /// dropout only when `train`.
    pub fn forward(&self, batch: &EncodedBatch, train: bool) -> Result<Tensor, ZooError> {
        let head = self.head();
        let hidden = self
            .encoder()
            .forward(&batch.input_ids, &batch.attention_mask, train)?;
        let (b, t, h) = hidden.dims3()?;
        let hidden = dropout(&hidden, head.classifier_dropout, train)?;
        let logits = head
            .classifier
            .forward(&hidden.reshape((b * t, h))?, train)?;
        Ok(logits.reshape((b, t, ()))?.to_dtype(DType::F32)?)
    }

    /// A merged Hugging Face directory that `AutoModelForTokenClassification` loads, with
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
