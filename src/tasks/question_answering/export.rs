//! A QA checkpoint back into a model: for serving (`infer`) and for the user's downloads
//! (merged Hugging Face directory `AutoModelForQuestionAnswering` loads, or PEFT adapter).

use std::path::Path;

use candle_core::Device;

use super::head::{QaHead, QaModelSpec, QuestionAnsweringModel};
use super::postprocess::AnswerSettings;
use super::serve::QaServer;
use super::windows::{QaTokenizer, WindowSettings};
use crate::artifacts::checkpoint::{CheckpointMeta, CheckpointTask};
use crate::artifacts::{Checkpoint, ExportFormat};
use crate::tasks::encoder_checkpoint::{export_encoder_model, rebuild_encoder_model};
use crate::train::TrainError;
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
fn load_model(ckpt: &Checkpoint, device: &Device) -> Result<QuestionAnsweringModel, TrainError> {
    let (spec, _, _) = qa_settings(&ckpt.meta, &ckpt.dir)?;
    rebuild_encoder_model::<QaHead>(ckpt, &spec, device)
}

/// A checkpoint ready to answer questions: LoRA folded into the base weights, the base
/// model's tokenizer with the training windows, the training answer rules.
pub fn load_qa_server(ckpt: &Checkpoint, device: &Device) -> Result<QaServer, TrainError> {
    let mut model = load_model(ckpt, device)?;
    model.freeze_for_inference()?;
    let (_, windows, answers) = qa_settings(&ckpt.meta, &ckpt.dir)?;
    let text_tokenizer = TextTokenizer::from_dir(&ckpt.base_dir)?;
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
    ckpt: &Checkpoint,
    format: ExportFormat,
    base_model_id: &str,
    out_dir: &Path,
) -> Result<(), TrainError> {
    let model = load_model(ckpt, &Device::Cpu)?;
    // QA's exported config carries transformers' default two labels, not label names.
    export_encoder_model(model, ckpt, &[], format, base_model_id, out_dir)
}
