//! What the three encoder tasks (sequence classification, token classification, extractive
//! QA) share about their models: a job's plan from its prepared sequences, building the
//! [`EncoderModel`] a job trains, rebuilding it
//! from a checkpoint's `meta.json` and `trainable.safetensors`, and writing it as a merged
//! Hugging Face directory or a PEFT adapter. Each task's `export.rs` only picks its spec
//! and labels out of the checkpoint.

use std::path::Path;

use candle_core::{DType, Device};

use crate::artifacts::checkpoint::{self, TRAINABLE_FILE};
use crate::artifacts::Checkpoint;
use crate::artifacts::ExportFormat;
use crate::domain::hyperparams::TrainingConfig;
use crate::train::memory::encoder_job_estimate;
use crate::train::plan::{training_flops_per_token, TrainingPlan};
use crate::train::setup::compute_dtype;
use crate::train::TrainError;
use crate::zoo::{EncoderHead, EncoderModel};

/// An encoder job's plan (`train::plan`) from the token count of each prepared training
/// sequence (an example; a window for QA), its validation count and its head's outputs.
pub(crate) fn encoder_plan(
    base_model_dir: &Path,
    config: &TrainingConfig,
    device: &Device,
    (train_lengths, valid_examples): (&[usize], usize),
    outputs: usize,
) -> Result<TrainingPlan, TrainError> {
    let (memory, parameters) =
        encoder_job_estimate(base_model_dir, config, outputs, train_lengths, device)?;
    let flops = training_flops_per_token(parameters as f64, config.lora.rank == 0);
    let tokens = train_lengths.iter().map(|&n| n as u64).sum();
    let examples = (train_lengths.len(), valid_examples);
    Ok(TrainingPlan::new(
        config,
        examples,
        tokens,
        memory,
        Some(flops),
    ))
}

/// The model a job trains: the base with the head `spec` describes, its linears in the
/// job's `precision`, its layers checkpointed when the job asks.
pub(crate) fn encoder_for_job<H: EncoderHead>(
    base_model_dir: &Path,
    spec: &H::Spec,
    config: &TrainingConfig,
    device: &Device,
) -> Result<EncoderModel<H>, TrainError> {
    let compute = compute_dtype(config, device);
    let mut model =
        EncoderModel::<H>::from_pretrained_in(base_model_dir, spec, device, config.seed, compute)?;
    if config.gradient_checkpointing {
        model.enable_gradient_checkpointing();
    }
    Ok(model)
}

/// The base model a checkpoint names with the head `spec` describes, its trainable tensors
/// loaded from the checkpoint: in f32 on the CPU (exports, CPU serving), with its linears in
/// bf16 on a GPU (serving).
pub(crate) fn rebuild_encoder_model<H: EncoderHead>(
    ckpt: &Checkpoint,
    spec: &H::Spec,
    device: &Device,
) -> Result<EncoderModel<H>, TrainError> {
    let compute = if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    rebuild_encoder_model_in(ckpt, spec, device, compute)
}

/// [`rebuild_encoder_model`] with the linears' matmuls in `compute` (bf16: frozen matrices
/// stored in bf16, a full fine-tune's once frozen for serving).
pub(crate) fn rebuild_encoder_model_in<H: EncoderHead>(
    ckpt: &Checkpoint,
    spec: &H::Spec,
    device: &Device,
    compute: DType,
) -> Result<EncoderModel<H>, TrainError> {
    let seed = ckpt.meta.seed;
    let model = EncoderModel::<H>::from_pretrained_in(&ckpt.base_dir, spec, device, seed, compute)?;
    model.load_trainable(&checkpoint::read_tensors(
        &ckpt.dir,
        TRAINABLE_FILE,
        device,
    )?)?;
    Ok(model)
}

/// Writes the model rebuilt from `ckpt` as a merged HF directory (with `labels` as its
/// `id2label`) or a PEFT adapter naming `base_model_id`.
pub(crate) fn export_encoder_model<H: EncoderHead>(
    mut model: EncoderModel<H>,
    ckpt: &Checkpoint,
    labels: &[String],
    format: ExportFormat,
    base_model_id: &str,
    out_dir: &Path,
) -> Result<(), TrainError> {
    match format {
        ExportFormat::Merged => {
            model.merge_lora()?;
            model.write_merged_dir(&ckpt.base_dir, labels, out_dir)?;
        }
        ExportFormat::Adapter => {
            if !ckpt.meta.has_lora() {
                return Err(TrainError::checkpoint(
                    &ckpt.dir,
                    "this checkpoint is a full fine-tune and has no LoRA adapter; export it as a merged model",
                ));
            }
            model.export_adapter(base_model_id, out_dir)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "encoder_checkpoint_tests.rs"]
mod tests;
