//! Serving a classifier: texts → token ids → length-sorted batched logits → one
//! prediction (softmax, arg-max) per text. Synchronous; `infer` runs it on an engine
//! thread and batches texts across requests.
//!
//! The real backend is a training checkpoint rebuilt by [`load_classifier_checkpoint`],
//! with LoRA folded into the base weights (one matmul per projection instead of three)
//! and the base model's tokenizer.

use candle_core::{DType, Device};

use super::load_classifier_checkpoint;
use crate::artifacts::Checkpoint;
use crate::tasks::serve::{batched_rows, ServeBackend, ServeError};
use crate::zoo::{collate, SequenceClassifier, TextTokenizer};

/// One prediction per input text.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPrediction {
    /// The most probable label.
    pub label: String,
    /// The probability of `label`.
    pub score: f32,
    /// Every label with its probability, in label-id order; they sum to 1.
    pub scores: Vec<(String, f32)>,
}

/// The model side of a classification engine: tokenization and batched logits.
/// Implemented by the checkpoint classifier and by test fakes.
pub trait ClassifierBackend: Send + 'static {
    /// Label names, id = index.
    fn labels(&self) -> &[String];
    /// Token ids, truncated to what the model was trained on.
    fn encode(&self, text: &str) -> Result<Vec<u32>, ServeError>;
    /// Logits `[seqs.len()][labels.len()]` for one batch (eval mode).
    fn logits(&mut self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, ServeError>;
    fn parameter_bytes(&self) -> usize;
}

/// A [`ClassifierBackend`] as the batched engine drives it. A struct rather than the box
/// itself: the engine's futures must not name `dyn Trait + 'static` through an associated
/// type, which rustc cannot prove `Send` for every lifetime.
pub struct ClassifierServing(pub Box<dyn ClassifierBackend>);

impl ServeBackend for ClassifierServing {
    type Input = String;
    type Prepared = Vec<u32>;
    type Output = ClassPrediction;

    fn prepare(&self, text: &String) -> Result<Vec<u32>, ServeError> {
        self.0.encode(text)
    }

    fn serve_round(
        &mut self,
        round: &[(&String, &Vec<u32>)],
        max_batch: usize,
    ) -> Vec<Result<ClassPrediction, ServeError>> {
        let seqs: Vec<&[u32]> = round.iter().map(|(_, ids)| ids.as_slice()).collect();
        let _span = tracing::debug_span!("classify_round", texts = seqs.len()).entered();
        batched_rows(&seqs, max_batch, |batch| self.0.logits(batch))
            .into_iter()
            .map(|row| row.and_then(|logits| prediction(self.0.labels(), &logits)))
            .collect()
    }

    fn parameter_bytes(&self) -> usize {
        self.0.parameter_bytes()
    }
}

/// Softmax (in f64, so the probabilities sum to 1 well within f32 precision) and argmax.
pub fn prediction(labels: &[String], logits: &[f32]) -> Result<ClassPrediction, ServeError> {
    if logits.len() != labels.len() || labels.is_empty() {
        return Err(ServeError::failed(format!(
            "model returned {} logits for {} labels",
            logits.len(),
            labels.len()
        )));
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    let probs: Vec<f32> = exps.iter().map(|e| (e / total) as f32).collect();
    let mut best = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > probs[best] {
            best = i;
        }
    }
    Ok(ClassPrediction {
        label: labels[best].clone(),
        score: probs[best],
        scores: labels.iter().cloned().zip(probs).collect(),
    })
}

/// A classification checkpoint ready to serve.
pub struct CheckpointClassifier {
    model: SequenceClassifier,
    tokenizer: TextTokenizer,
    labels: Vec<String>,
    /// Longer texts are truncated to this many tokens (the training length, capped
    /// by the model's position embeddings).
    max_seq_len: usize,
    device: Device,
}

impl CheckpointClassifier {
    pub fn load(ckpt: &Checkpoint, device: &Device) -> Result<Self, ServeError> {
        let (mut model, tokenizer, labels, max_seq_len) = load_classifier_checkpoint(ckpt, device)
            .map_err(|e| {
                ServeError::failed(format!("loading checkpoint `{}`: {e}", ckpt.dir.display()))
            })?;
        model.freeze_for_inference().map_err(ServeError::failed)?;
        let max_seq_len = max_seq_len
            .min(model.config().max_position_embeddings)
            .max(2);
        Ok(Self {
            model,
            tokenizer,
            labels,
            max_seq_len,
            device: device.clone(),
        })
    }
}

impl ClassifierBackend for CheckpointClassifier {
    fn labels(&self) -> &[String] {
        &self.labels
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, ServeError> {
        self.tokenizer
            .encode(text, self.max_seq_len)
            .map_err(ServeError::failed)
    }

    fn logits(&mut self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, ServeError> {
        let batch =
            collate(seqs, self.tokenizer.pad_id(), &self.device).map_err(ServeError::failed)?;
        let logits = self
            .model
            .forward(&batch, false)
            .map_err(ServeError::failed)?;
        logits
            .to_dtype(DType::F32)
            .and_then(|l| l.to_vec2::<f32>())
            .map_err(ServeError::failed)
    }

    fn parameter_bytes(&self) -> usize {
        self.model.parameter_bytes()
    }
}
