//! Checkpoint directories as artifacts: `work_dir/checkpoints/step-N/` with
//! `trainable.safetensors` (the trained tensors: LoRA factors and heads, or every weight of
//! a full fine-tune), `optimizer.safetensors` (newest checkpoint only), `state.json` (where
//! training stands; `train::checkpoint`) and `meta.json` (what model this is, its base named
//! by id, so the directory can be served or exported on its own). `train` writes them;
//! `tasks` and `infer` read them through this module.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::base::BaseLocation;
use super::ArtifactError;
use crate::domain::hyperparams::LoraSettings;
use crate::zoo::vision::{ImageClassifierSpec, ImagePrep};
use crate::zoo::ClassifierSpec;

pub const TRAINABLE_FILE: &str = "trainable.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const META_FILE: &str = "meta.json";
/// What `meta.json` named the base by before [`CheckpointMeta::base_model`]: its path.
const LEGACY_BASE_FIELD: &str = "base_model_dir";

/// What model a checkpoint holds; enough to rebuild it without the job. In `meta.json`
/// the task's parts sit beside the common fields, tagged by `task`
/// (`{"task": "sequence_classification", "labels": […], "spec": {…}, "base_model": {…}}`),
/// the layout the string-tagged meta of earlier versions had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    #[serde(flatten)]
    pub task: CheckpointTask,
    /// The model the trained tensors sit on (`base_model` in `meta.json`).
    pub base_model: BaseLocation,
    pub max_seq_len: usize,
    pub seed: u64,
}

/// The task a checkpoint was trained for, with what rebuilding its model needs. A new
/// task adds its variant here (token classification: labels + its spec; QA: its spec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum CheckpointTask {
    /// An encoder with a sequence-classification head; label id = index in `labels`.
    SequenceClassification {
        labels: Vec<String>,
        spec: ClassifierSpec,
    },
    /// A decoder (chat / completion SFT).
    CausalLm { lm: LmSpec },
    /// An encoder with a per-token head (`tasks::token_classification`); label id = index in
    /// `labels`.
    TokenClassification {
        labels: Vec<String>,
        spec: ClassifierSpec,
    },
    /// An encoder with an extractive-QA head (`qa_outputs`), and how it cuts contexts into
    /// windows (`max_seq_len` above, `doc_stride`) and picks answers.
    QuestionAnswering {
        lora: Option<LoraSettings>,
        doc_stride: usize,
        max_answer_length: usize,
        /// Trained with unanswerable questions: may answer "" (SQuAD v2).
        allow_no_answer: bool,
    },
    /// A CNN backbone with a new classification head (`tasks::image_classification`);
    /// class id = index in `labels`, images prepared by `prep`.
    ImageClassification {
        labels: Vec<String>,
        spec: ImageClassifierSpec,
        prep: ImagePrep,
    },
}

impl CheckpointTask {
    /// The `task` tag in `meta.json`.
    pub fn name(&self) -> &'static str {
        match self {
            CheckpointTask::SequenceClassification { .. } => "sequence_classification",
            CheckpointTask::CausalLm { .. } => "causal_lm",
            CheckpointTask::TokenClassification { .. } => "token_classification",
            CheckpointTask::QuestionAnswering { .. } => "question_answering",
            CheckpointTask::ImageClassification { .. } => "image_classification",
        }
    }

    /// Every tag this build reads.
    pub const NAMES: [&'static str; 5] = [
        "sequence_classification",
        "causal_lm",
        "token_classification",
        "question_answering",
        "image_classification",
    ];
}

/// How a causal-LM checkpoint's trainable tensors sit on its base model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmSpec {
    /// `None`: full fine-tuning (every weight is in `trainable.safetensors`).
    pub lora: Option<LoraSettings>,
    /// `"q4_0"` / `"q8_0"`: QLoRA over a quantized frozen base.
    pub quantize: Option<String>,
    /// The job's `export_dtype`: the merged export's tensors (absent: f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_dtype: Option<crate::domain::hyperparams::Precision>,
}

impl CheckpointMeta {
    /// The labels and spec of a sequence-classification checkpoint.
    pub fn classifier(&self, dir: &Path) -> Result<(&[String], &ClassifierSpec), ArtifactError> {
        match &self.task {
            CheckpointTask::SequenceClassification { labels, spec } => Ok((labels, spec)),
            other => Err(ArtifactError::checkpoint(
                dir,
                format!("a `{}` checkpoint is not a classifier", other.name()),
            )),
        }
    }

    /// The classifier spec of a classification checkpoint.
    pub fn classifier_spec(&self, dir: &Path) -> Result<&ClassifierSpec, ArtifactError> {
        Ok(self.classifier(dir)?.1)
    }

    /// Whether the checkpoint holds LoRA adapters (and so can be exported as one).
    pub fn has_lora(&self) -> bool {
        let lora = match &self.task {
            CheckpointTask::SequenceClassification { spec, .. }
            | CheckpointTask::TokenClassification { spec, .. } => spec.lora.as_ref(),
            CheckpointTask::CausalLm { lm } => lm.lora.as_ref(),
            CheckpointTask::QuestionAnswering { lora, .. } => lora.as_ref(),
            CheckpointTask::ImageClassification { .. } => None,
        };
        lora.is_some_and(|l| l.rank > 0)
    }

    /// The decoder spec of a causal-LM checkpoint.
    pub fn lm_spec(&self, dir: &Path) -> Result<&LmSpec, ArtifactError> {
        match &self.task {
            CheckpointTask::CausalLm { lm } => Ok(lm),
            other => Err(ArtifactError::checkpoint(
                dir,
                format!(
                    "a `{}` checkpoint is not a causal language model",
                    other.name()
                ),
            )),
        }
    }
}

pub fn checkpoints_root(work_dir: &Path) -> PathBuf {
    work_dir.join("checkpoints")
}

pub fn step_dir(work_dir: &Path, step: usize) -> PathBuf {
    checkpoints_root(work_dir).join(format!("step-{step}"))
}

pub(crate) fn parse_step(name: &str) -> Option<usize> {
    name.strip_prefix("step-")?.parse().ok()
}

/// Complete checkpoints (`step-N/` with a `state.json`), oldest first.
pub fn list_checkpoints(work_dir: &Path) -> Result<Vec<(usize, PathBuf)>, ArtifactError> {
    let root = checkpoints_root(work_dir);
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(&root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(parse_step) else {
            continue;
        };
        if entry.path().join(STATE_FILE).is_file() {
            found.push((step, entry.path()));
        }
    }
    found.sort_by_key(|(step, _)| *step);
    Ok(found)
}

/// The newest checkpoint that can resume training (it still has its optimizer state).
pub fn latest_resumable(work_dir: &Path) -> Result<Option<(usize, PathBuf)>, ArtifactError> {
    Ok(list_checkpoints(work_dir)?
        .into_iter()
        .rev()
        .find(|(_, dir)| dir.join(OPTIMIZER_FILE).is_file()))
}

/// The `meta.json` of the checkpoint in `dir`. Checkpoints written before bases were named
/// by id recorded the base's absolute directory (`base_model_dir`): they read as a
/// [`BaseLocation::Directory`], so every model trained before keeps loading.
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta, ArtifactError> {
    let mut value: serde_json::Value = serde_json::from_slice(&fs::read(dir.join(META_FILE))?)?;
    if let Some(fields) = value.as_object_mut() {
        if !fields.contains_key("base_model") {
            if let Some(path) = fields.remove(LEGACY_BASE_FIELD) {
                let location = serde_json::json!({"source": "directory", "path": path});
                fields.insert("base_model".to_string(), location);
            }
        }
    }
    let task = value
        .get("task")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    if !CheckpointTask::NAMES.contains(&task) {
        return Err(ArtifactError::checkpoint(
            dir,
            format!("unsupported task `{task}`"),
        ));
    }
    Ok(serde_json::from_value(value)?)
}

pub fn read_tensors(
    dir: &Path,
    file: &str,
    device: &Device,
) -> Result<HashMap<String, Tensor>, ArtifactError> {
    read_safetensors(&dir.join(file), device)
}

/// The tensors of a safetensors file, its bytes read into an anonymous mapping rather than a
/// heap buffer. The bytes are a transient copy as large as the file (an adapter's: 9.4 MiB
/// for SmolLM2 at rank 16 on every projection); in a heap, which temper's allocator tuning
/// never shrinks (`runtime::keep_freed_memory_for_reuse`), its pages could stay resident
/// after the load, and a mapping goes back to the system when it is dropped. Not a mapping of
/// the file itself: a file changed while mapped would fault the process.
pub fn read_safetensors(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, ArtifactError> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| ArtifactError::checkpoint(path, "the file is larger than memory"))?;
    // An empty mapping is refused by the system: one byte, of which none is read.
    let mut bytes = memmap2::MmapMut::map_anon(len.max(1))?;
    file.read_exact(&mut bytes[..len])?;
    Ok(candle_core::safetensors::load_buffer(
        &bytes[..len],
        device,
    )?)
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
pub(crate) mod tests;
