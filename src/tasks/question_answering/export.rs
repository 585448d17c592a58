//! A QA checkpoint back into a model: for serving (`infer`) and for the user's downloads
//! (merged Hugging Face directory `AutoModelForQuestionAnswering` loads, or PEFT adapter).

use std::path::Path;

use candle_core::Device;

use super::head::{QaHead, QaModelSpec, QuestionAnsweringModel};
use super::postprocess::AnswerSettings;
use super::serve::QaServer;
use super::windows::{QaTokenizer, WindowSettings};
use crate::tasks::encoder_checkpoint::{export_encoder_model, rebuild_encoder_model};
use crate::train::checkpoint::{self, CheckpointMeta, CheckpointTask};
use crate::train::{ExportFormat, TrainError};
use crate::zoo::TextTokenizer;

/// The model spec, window and answer settings a QA checkpoint's `meta.json` records.
fn qa_settings(
    meta: &CheckpointMeta,
    dir: &Path,
) -> Result<(QaModelSpec, WindowSettings, AnswerSettings), TrainError> {
    let CheckpointTask::QuestionAnswering {
        lora,
        doc_stride,
        max_answer_length,
        allow_no_answer,
    } = &meta.task
    else {
        return Err(TrainError::checkpoint(
            dir,
            format!("a `{}` checkpoint is not a QA model", meta.task.name()),
        ));
    };
    let spec = QaModelSpec { lora: lora.clone() };
    let windows = WindowSettings {
        max_seq_len: meta.max_seq_len,
        doc_stride: *doc_stride,
    };
    let answers = AnswerSettings {
        max_answer_length: *max_answer_length,
        allow_no_answer: *allow_no_answer,
        ..AnswerSettings::default()
    };
    Ok((spec, windows, answers))
}

/// Rebuilds the QA model a checkpoint holds from `meta.json` and `trainable.safetensors`.
fn load_model(
    dir: &Path,
    device: &Device,
) -> Result<(CheckpointMeta, QuestionAnsweringModel), TrainError> {
    let meta = checkpoint::read_meta(dir)?;
    let (spec, _, _) = qa_settings(&meta, dir)?;
    let model = rebuild_encoder_model::<QaHead>(dir, &meta, &spec, device)?;
    Ok((meta, model))
}

/// A checkpoint ready to answer questions: LoRA folded into the base weights, the base
/// model's tokenizer with the training windows, the training answer rules.
pub fn load_qa_server(dir: &Path, device: &Device) -> Result<QaServer, TrainError> {
    let (meta, mut model) = load_model(dir, device)?;
    model.freeze_for_inference()?;
    let (_, windows, answers) = qa_settings(&meta, dir)?;
    let text_tokenizer = TextTokenizer::from_dir(&meta.base_model_dir)?;
    let tokenizer = QaTokenizer::new(text_tokenizer.inner(), windows)?;
    Ok(QaServer::new(
        model,
        tokenizer,
        text_tokenizer.pad_id(),
        answers,
        device.clone(),
    ))
}

/// Writes a QA checkpoint as a merged HF directory or a PEFT adapter.
pub(crate) fn export_qa_checkpoint(
    dir: &Path,
    format: ExportFormat,
    base_model_id: &str,
    out_dir: &Path,
) -> Result<(), TrainError> {
    let (meta, model) = load_model(dir, &Device::Cpu)?;
    // QA's exported config carries transformers' default two labels, not label names.
    export_encoder_model(model, dir, &meta, &[], format, base_model_id, out_dir)
}
