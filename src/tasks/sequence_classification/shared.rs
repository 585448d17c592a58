//! LoRA classifiers served over one shared base encoder: the base's weights are read once
//! ([`SharedEncoderBase`]); each fine-tune is a [`ClassifierAdapter`] (its adapters, its
//! head, its labels: a few hundred KB) that the base's engine builds into a model over the
//! shared weights on first use, unmerged, and drops once the adapter is evicted.
//!
//! A round of the engine may carry texts for several adapters: it runs one batched forward
//! per adapter over that adapter's texts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};

use candle_core::{DType, Device, Tensor};

use super::peft_adapter::read_peft_classifier;
use super::serve::{prediction, ClassPrediction};
use crate::artifacts::checkpoint::{self, TRAINABLE_FILE};
use crate::artifacts::BaseLocation;
use crate::tasks::serve::{batched_rows, ServeBackend, ServeError};
use crate::train::TrainError;
use crate::zoo::shared_encoder::SharedEncoderBase;
use crate::zoo::{collate, ClassifierSpec, SequenceClassifier, TextTokenizer};

/// A LoRA classification checkpoint, read but not built: what one fine-tune adds to the
/// shared base.
pub struct ClassifierAdapter {
    spec: ClassifierSpec,
    labels: Vec<String>,
    max_seq_len: usize,
    seed: u64,
    /// The checkpoint's trainable tensors (adapters and head), PEFT-named.
    tensors: HashMap<String, Tensor>,
    tensor_bytes: usize,
}

impl ClassifierAdapter {
    /// The LoRA classifier in `dir`, its tensors on `device`: a classification checkpoint
    /// (a full fine-tune is refused: it is served as its own model), or else a PEFT
    /// sequence-classification adapter directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, TrainError> {
        if !dir.join(checkpoint::META_FILE).exists() {
            let peft = read_peft_classifier(dir, device)?;
            // Not trained here: the context of the base is the limit.
            return Ok(Self::new(
                peft.spec,
                peft.labels,
                usize::MAX,
                0,
                peft.tensors,
            ));
        }
        let meta = checkpoint::read_meta(dir)?;
        let (labels, spec) = meta.classifier(dir)?;
        if spec.lora.as_ref().is_none_or(|l| l.rank == 0) {
            return Err(TrainError::checkpoint(
                dir,
                "a full fine-tune has no adapter to serve over a shared base",
            ));
        }
        let tensors = checkpoint::read_tensors(dir, TRAINABLE_FILE, device)?;
        Ok(Self::new(
            spec.clone(),
            labels.to_vec(),
            meta.max_seq_len,
            meta.seed,
            tensors,
        ))
    }

    fn new(
        spec: ClassifierSpec,
        labels: Vec<String>,
        max_seq_len: usize,
        seed: u64,
        tensors: HashMap<String, Tensor>,
    ) -> Self {
        let tensor_bytes = tensors
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        Self {
            spec,
            labels,
            max_seq_len,
            seed,
            tensors,
            tensor_bytes,
        }
    }

    /// Whether the adapter can be served over `base` as it is: every tensor it holds is
    /// one of the model's adapters or head modules, and every one of those is there, in
    /// its shape.
    pub fn check_over(&self, base: &SharedEncoderBase) -> Result<(), String> {
        let model = SequenceClassifier::over_shared_base(base, &self.spec, &Device::Cpu, self.seed)
            .map_err(|e| e.to_string())?;
        let expected: std::collections::HashSet<String> =
            model.trainable_vars().into_iter().map(|v| v.name).collect();
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        if let Some(extra) = names.into_iter().find(|name| !expected.contains(*name)) {
            return Err(format!(
                "`{extra}` is neither a LoRA factor of this encoder's linears nor its classification head"
            ));
        }
        model
            .load_trainable(&self.tensors)
            .map_err(|e| e.to_string())
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Memory the adapter costs while loaded: its tensors, and the copy the engine's built
    /// model holds of them (frozen model parameters are their own tensors).
    pub fn bytes(&self) -> usize {
        2 * self.tensor_bytes
    }

    /// The model over `base`: the shared weights, this adapter's adapters and head,
    /// frozen unmerged.
    fn build(
        &self,
        base: &SharedEncoderBase,
        device: &Device,
    ) -> Result<SequenceClassifier, ServeError> {
        let mut model = SequenceClassifier::over_shared_base(base, &self.spec, device, self.seed)
            .map_err(ServeError::failed)?;
        model
            .load_trainable(&self.tensors)
            .map_err(ServeError::failed)?;
        model
            .freeze_unmerged_for_inference()
            .map_err(ServeError::failed)?;
        Ok(model)
    }
}

/// The base the classification checkpoint in `dir` was trained over, when it is a LoRA
/// checkpoint (served over that base, shared); `None` for full fine-tunes and directories
/// without checkpoint metadata, which are served as their own models.
pub fn adapter_base(dir: &Path) -> Result<Option<BaseLocation>, TrainError> {
    if !dir.join(checkpoint::META_FILE).exists() {
        return Ok(None);
    }
    let meta = checkpoint::read_meta(dir)?;
    let (_, spec) = meta.classifier(dir)?;
    let lora = spec.lora.as_ref().is_some_and(|l| l.rank > 0);
    Ok(lora.then_some(meta.base_model))
}

/// One text to classify with one adapter of the base.
pub struct AdapterText {
    pub text: String,
    pub adapter: Arc<ClassifierAdapter>,
}

/// The serving backend of a base encoder shared by its LoRA classifiers.
pub struct SharedEncoderClassifier {
    base: SharedEncoderBase,
    tokenizer: TextTokenizer,
    device: Device,
    /// Adapters built into models, while their adapter is loaded (a dead weak reference
    /// means it was evicted: its model is dropped at the next round).
    built: Vec<(Weak<ClassifierAdapter>, SequenceClassifier)>,
}

impl SharedEncoderClassifier {
    /// The base encoder in `dir` (its weights and tokenizer) on `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ServeError> {
        let failed = |e: &dyn std::fmt::Display| {
            ServeError::failed(format!("loading base encoder `{}`: {e}", dir.display()))
        };
        let base = SharedEncoderBase::load(dir, device).map_err(|e| failed(&e))?;
        let tokenizer = TextTokenizer::from_dir(dir).map_err(|e| failed(&e))?;
        Ok(Self {
            base,
            tokenizer,
            device: device.clone(),
            built: Vec::new(),
        })
    }

    /// The model of `adapter`, built over the base the first time it is asked for.
    fn model_of(&mut self, adapter: &Arc<ClassifierAdapter>) -> Result<usize, ServeError> {
        let position = self
            .built
            .iter()
            .position(|(weak, _)| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(adapter)));
        if let Some(index) = position {
            return Ok(index);
        }
        let model = adapter.build(&self.base, &self.device)?;
        self.built.push((Arc::downgrade(adapter), model));
        Ok(self.built.len() - 1)
    }

    /// How many adapters are built into models now.
    #[cfg(test)]
    pub(crate) fn built_models(&self) -> usize {
        self.built.len()
    }

    fn logits(&self, index: usize, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, ServeError> {
        let batch =
            collate(seqs, self.tokenizer.pad_id(), &self.device).map_err(ServeError::failed)?;
        let (_, model) = &self.built[index];
        model
            .forward(&batch, false)
            .and_then(|l| Ok(l.to_dtype(DType::F32)?.to_vec2::<f32>()?))
            .map_err(ServeError::failed)
    }
}

impl ServeBackend for SharedEncoderClassifier {
    type Input = AdapterText;
    type Prepared = Vec<u32>;
    type Output = ClassPrediction;

    /// Truncated to the adapter's training length, capped by the position embeddings.
    fn prepare(&self, input: &AdapterText) -> Result<Vec<u32>, ServeError> {
        let max_seq_len = input
            .adapter
            .max_seq_len
            .min(self.base.config().max_position_embeddings)
            .max(2);
        self.tokenizer
            .encode(&input.text, max_seq_len)
            .map_err(ServeError::failed)
    }

    fn serve_round(
        &mut self,
        round: &[(&AdapterText, &Vec<u32>)],
        max_batch: usize,
    ) -> Vec<Result<ClassPrediction, ServeError>> {
        self.built.retain(|(weak, _)| weak.strong_count() > 0);
        let mut out: Vec<Result<ClassPrediction, ServeError>> = round
            .iter()
            .map(|_| Err(ServeError::failed("input was not served")))
            .collect();
        // The round's inputs grouped by adapter, in order of first appearance.
        let mut groups: Vec<(&Arc<ClassifierAdapter>, Vec<usize>)> = Vec::new();
        for (i, (input, _)) in round.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|(a, _)| Arc::ptr_eq(a, &input.adapter))
            {
                Some((_, members)) => members.push(i),
                None => groups.push((&input.adapter, vec![i])),
            }
        }
        for (adapter, members) in groups {
            let _span = tracing::debug_span!("classify_adapter", texts = members.len()).entered();
            let seqs: Vec<&[u32]> = members.iter().map(|&i| round[i].1.as_slice()).collect();
            let rows = match self.model_of(adapter) {
                Ok(index) => batched_rows(&seqs, max_batch, |batch| self.logits(index, batch)),
                Err(error) => seqs.iter().map(|_| Err(error.clone())).collect(),
            };
            for (&i, row) in members.iter().zip(rows) {
                out[i] = row.and_then(|logits| prediction(adapter.labels(), &logits));
            }
        }
        out
    }

    /// The shared base's weights; each adapter counts its own against the adapters' budget.
    fn parameter_bytes(&self) -> usize {
        self.base.parameter_bytes()
    }
}

#[cfg(test)]
#[path = "shared_tests.rs"]
pub(crate) mod tests;
