//! Serving a token classifier (`POST /v1/token_classifications`): texts → sub-word tokens
//! with character offsets → length-sorted batched logits → entities, as transformers'
//! token-classification pipeline post-processes them ([`super::pipeline`]). Synchronous;
//! `infer` runs it on an engine thread and batches texts across requests.

use candle_core::Device;

use super::export::load_token_checkpoint;
use super::head::TokenClassifier;
use super::pipeline::{Aggregation, EncodedText, EntityTagger, TokenEntity};
use crate::artifacts::Checkpoint;
use crate::tasks::serve::{batched_rows, ServeBackend, ServeError};
use crate::train::TrainError;
use crate::zoo::collate;

/// One text to tag, and how its tokens become entities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextToTag {
    pub text: String,
    pub aggregation: Aggregation,
}

/// A loaded token classifier with its tokenizer and labels.
pub struct TokenTagger {
    model: TokenClassifier,
    tagger: EntityTagger,
    pad_id: u32,
    device: Device,
}

impl TokenTagger {
    pub fn new(model: TokenClassifier, tagger: EntityTagger, pad_id: u32, device: Device) -> Self {
        Self {
            model,
            tagger,
            pad_id,
            device,
        }
    }

    /// A checkpoint ready to tag: LoRA folded into the base weights, the base model's
    /// tokenizer, texts truncated to the training length (capped by the model's position
    /// embeddings).
    pub fn load(ckpt: &Checkpoint, device: &Device) -> Result<Self, TrainError> {
        let mut loaded = load_token_checkpoint(ckpt, device)?;
        loaded.model.freeze_for_inference()?;
        let max_len = loaded
            .max_seq_len
            .min(loaded.model.config().max_position_embeddings);
        let tagger = EntityTagger::new(loaded.tokenizer.inner(), loaded.labels, max_len);
        Ok(Self::new(
            loaded.model,
            tagger,
            loaded.tokenizer.pad_id(),
            device.clone(),
        ))
    }

    pub fn labels(&self) -> &[String] {
        self.tagger.labels()
    }

    /// Per sequence, its tokens' logits row-major (`len × labels`), padding dropped.
    fn logits(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, ServeError> {
        let batch = collate(seqs, self.pad_id, &self.device).map_err(ServeError::failed)?;
        let logits = self
            .model
            .forward(&batch, false)
            .and_then(|l| Ok(l.to_vec3::<f32>()?))
            .map_err(ServeError::failed)?;
        Ok(logits
            .into_iter()
            .zip(seqs)
            .map(|(rows, seq)| rows.into_iter().take(seq.len()).flatten().collect())
            .collect())
    }
}

impl ServeBackend for TokenTagger {
    type Input = TextToTag;
    type Prepared = EncodedText;
    type Output = Vec<TokenEntity>;

    fn prepare(&self, input: &TextToTag) -> Result<EncodedText, ServeError> {
        self.tagger
            .encode(&input.text)
            .map_err(|e| ServeError::invalid("input", e.to_string()))
    }

    fn serve_round(
        &mut self,
        round: &[(&TextToTag, &EncodedText)],
        max_batch: usize,
    ) -> Vec<Result<Vec<TokenEntity>, ServeError>> {
        let seqs: Vec<&[u32]> = round
            .iter()
            .map(|(_, encoded)| encoded.ids.as_slice())
            .collect();
        let _span = tracing::debug_span!("tag_round", texts = seqs.len()).entered();
        batched_rows(&seqs, max_batch, |batch| self.logits(batch))
            .into_iter()
            .zip(round)
            .map(|(logits, (input, encoded))| {
                let logits = logits?;
                self.tagger
                    .entities(&input.text, encoded, &logits, input.aggregation)
                    .map_err(ServeError::failed)
            })
            .collect()
    }

    fn parameter_bytes(&self) -> usize {
        self.model.parameter_bytes()
    }
}

/// A randomly initialised tiny BERT tagger (in a temp dir that must outlive it): its labels
/// are arbitrary but fixed, which is all offsets, batching and truncation tests need.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn tiny_tagger(labels: Vec<String>, max_len: usize) -> (tempfile::TempDir, TokenTagger) {
    use super::head::TokenClassifierSpec;
    use crate::zoo::{testing::write_tiny_bert, TextTokenizer};

    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 5).unwrap();
    let spec = TokenClassifierSpec {
        num_labels: labels.len(),
        lora: None,
        classifier_dropout: Some(0.0),
    };
    let model = TokenClassifier::from_pretrained(dir.path(), &spec, &Device::Cpu, 0).unwrap();
    let tokenizer = TextTokenizer::from_dir(dir.path()).unwrap();
    let tagger = EntityTagger::new(tokenizer.inner(), labels, max_len);
    let backend = TokenTagger::new(model, tagger, tokenizer.pad_id(), Device::Cpu);
    (dir, backend)
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;
