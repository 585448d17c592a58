//! The classifier's loss, predictions and evaluation passes, shared by the training loop
//! and the final report.

use candle_core::{DType, Device, Tensor, D};

use super::data::{make_batch, EncodedExample, LabeledBatch};
use super::metrics::Confusion;
use crate::train::data::sequential_batches;
use crate::train::evaluate::scalar;
use crate::train::named_metrics::MetricsRow;
use crate::train::TrainError;
use crate::zoo::SequenceClassifier;

/// Mean cross-entropy of a batch (differentiable) and its arg-max predictions.
pub struct BatchOutput {
    pub loss: Tensor,
    pub predictions: Vec<usize>,
}

pub fn forward_batch(
    model: &SequenceClassifier,
    batch: &LabeledBatch,
    train: bool,
) -> Result<BatchOutput, TrainError> {
    let logits = model.forward(&batch.inputs, train)?.to_dtype(DType::F32)?;
    let loss = candle_nn::loss::cross_entropy(&logits, &batch.labels)?;
    let predictions = logits
        .detach()
        .argmax(D::Minus1)?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|p| p as usize)
        .collect();
    Ok(BatchOutput { loss, predictions })
}

/// Loss, accuracy, macro F1 and confusion over a whole split, in eval mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub confusion: Confusion,
}

impl Evaluation {
    /// The validation metrics every classifier reports (`CLASSIFICATION_METRICS`).
    pub fn record_valid(&self, row: &mut MetricsRow) {
        row.set("valid_loss", self.loss);
        row.set("valid_accuracy", self.accuracy);
        row.set("valid_f1", self.macro_f1);
    }
}

pub struct EvalSet<'a> {
    pub examples: &'a [EncodedExample],
    pub n_labels: usize,
    pub batch_size: usize,
    pub pad_id: u32,
}

pub fn evaluate(
    model: &SequenceClassifier,
    set: &EvalSet,
    device: &Device,
) -> Result<Evaluation, TrainError> {
    let mut loss_sum = 0f64;
    let mut truth = Vec::with_capacity(set.examples.len());
    let mut predicted = Vec::with_capacity(set.examples.len());
    for indices in sequential_batches(set.examples.len(), set.batch_size) {
        let batch = make_batch(set.examples, &indices, set.pad_id, device)?;
        let out = forward_batch(model, &batch, false)?;
        loss_sum += scalar(&out.loss)? * batch.len() as f64;
        truth.extend_from_slice(&batch.label_ids);
        predicted.extend(out.predictions);
    }
    let confusion = Confusion::new(set.n_labels, &truth, &predicted);
    Ok(Evaluation {
        loss: if truth.is_empty() {
            0.0
        } else {
            loss_sum / truth.len() as f64
        },
        accuracy: confusion.accuracy(),
        macro_f1: confusion.macro_f1(),
        confusion,
    })
}
