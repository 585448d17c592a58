//! tasks: one folder per fine-tuning task, each with its data preparation, model head
//! (on a `zoo` body), [`crate::train::runner`] task, metric names, report, export and
//! checkpoint variant. `train/` keeps the generic core (runner, optimizer, schedules,
//! checkpoint I/O, named metrics, summaries); like `train`, nothing here imports
//! tokio/sqlx/axum. Adding a task means adding a folder here, a `domain::task::Task`
//! variant and an `artifacts::checkpoint::CheckpointTask` variant.
//!
//! # Layout
//! - `sequence_classification/`: text → label (`Task::SequenceClassification`).
//! - `sft/`: supervised fine-tuning of decoders; chat and prompt/completion data share it
//!   (`Task::ChatSft`, `Task::CompletionSft`: only the data preparation differs).
//! - `dpo/`: preference tuning of chat decoders (`Task::Dpo`); its checkpoints hold a
//!   causal LM like SFT's, served and exported the same way.
//! - `token_classification/`: tagged words → one label per token, NER
//!   (`Task::TokenClassification`).
//! - `question_answering/`: extractive QA, SQuAD v1/v2 (`Task::QuestionAnswering`).
//! - `image_classification/`: transfer learning on a timm CNN, image → label
//!   (`Task::ImageClassification`).
//! - `serve.rs`: the tokio-free half of `infer`'s batched engine that each task's
//!   `serve.rs` implements (its serving backend).

use std::path::Path;

use crate::artifacts::checkpoint::CheckpointTask;
use crate::artifacts::{BaseModels, ExportFormat};
use crate::train::TrainError;

pub mod dpo;
mod encoder_checkpoint;
#[cfg(test)]
mod generic_path_tests;
pub mod image_classification;
pub mod parity_models;
pub(crate) mod peft_config;
pub mod question_answering;
pub mod sequence_classification;
pub mod serve;
pub mod sft;
pub mod token_classification;

/// Writes the checkpoint in `dir` (its base found through `bases`) as a merged HF directory
/// or a PEFT adapter into `out_dir`, by the task in its `meta.json`. `base_model_id` is what
/// `adapter_config.json` names as the base model.
pub fn export_checkpoint(
    dir: &Path,
    bases: &BaseModels,
    format: ExportFormat,
    base_model_id: &str,
    out_dir: &Path,
) -> Result<(), TrainError> {
    let ckpt = bases.open(dir)?;
    let id = base_model_id;
    match ckpt.meta.task {
        CheckpointTask::SequenceClassification { .. } => {
            sequence_classification::export_classifier_checkpoint(&ckpt, format, id, out_dir)
        }
        CheckpointTask::CausalLm { .. } => {
            sft::export::export_lm_checkpoint(&ckpt, format, id, out_dir)
        }
        CheckpointTask::TokenClassification { .. } => {
            token_classification::export::export_token_checkpoint(&ckpt, format, id, out_dir)
        }
        CheckpointTask::QuestionAnswering { .. } => {
            question_answering::export_qa_checkpoint(&ckpt, format, id, out_dir)
        }
        CheckpointTask::ImageClassification { .. } => {
            image_classification::export::export_image_checkpoint(&ckpt, format, out_dir)
        }
    }
}
