//! What every decoder job (SFT and DPO) shares before its first step: the sequence length
//! its model's context allows, its LoRA / QLoRA / full specification, the model loaded in
//! the job's precision, and its peak memory, estimated for its plan and checked before
//! the model loads (`train::memory`).

use candle_core::{DType, Device};

use crate::artifacts::checkpoint::LmSpec;
use crate::domain::hyperparams::TrainingConfig;
use crate::train::memory;
use crate::train::setup::compute_dtype;
use crate::train::{EventLevel, TrainError, TrainObserver};
use crate::zoo::decoder::config::lora_targets;
use crate::zoo::decoder::{CausalLm, DecoderConfig, DecoderSpec, QuantKind};

/// `max_seq_len` cut to the model's context (`max_position_embeddings`), saying so: positions
/// past it have no rotary angles, and the default 512 is longer than a small model's context.
pub(crate) fn fit_to_context(
    max_seq_len: usize,
    context: usize,
    observer: &mut dyn TrainObserver,
) -> usize {
    if max_seq_len <= context {
        return max_seq_len;
    }
    observer.on_event(
        EventLevel::Warn,
        format!(
            "max_seq_len={max_seq_len} is longer than the model's context of {context} tokens (max_position_embeddings); training with max_seq_len={context}"
        ),
    );
    context
}

/// Where and how a decoder job runs, for its memory: the device, examples per step,
/// whether full fine-tuning also holds a frozen copy of the starting weights (DPO's
/// reference), and the job's `gradient_checkpointing` and `precision` (its `host` is set
/// from the device).
pub(crate) type Placement<'a> = (&'a Device, usize, bool, memory::RunMode);

/// Calls `with` on the memory query of a decoder job whose training examples have these
/// (tokens, trained positions) `lengths`.
fn with_fit_query<T>(
    model_config: &DecoderConfig,
    spec: &DecoderSpec,
    lengths: &[(usize, usize)],
    (device, batch_size, frozen_reference, mode): Placement<'_>,
    with: impl FnOnce(&memory::FitQuery<'_>) -> T,
) -> T {
    let tuning = match &spec.lora {
        None => memory::Tuning::Full,
        Some(lora) => memory::Tuning::Lora {
            rank: lora.rank,
            targets: lora_targets(lora),
            quantize: spec.quantize,
        },
    };
    let device_name = memory::device_name(device);
    let query = memory::FitQuery {
        config: model_config,
        tuning,
        batch_size,
        step_of: &|n| memory::largest_step(lengths, n),
        device: &device_name,
        frozen_reference,
        mode: memory::RunMode {
            host: device.is_cpu(),
            ..mode
        },
    };
    with(&query)
}

/// The estimated peak memory of a decoder job (`train::memory`), for its plan.
pub(crate) fn decoder_memory(
    model_config: &DecoderConfig,
    spec: &DecoderSpec,
    lengths: &[(usize, usize)],
    placement: Placement<'_>,
) -> memory::MemoryEstimate {
    with_fit_query(model_config, spec, lengths, placement, |query| {
        query.estimate()
    })
}

/// Fails the job before its model loads when its estimated peak memory is over what the
/// device has (`train::memory`), saying what would fit; logs the estimate otherwise.
/// `lengths`: each training example's (tokens, trained positions).
pub(crate) fn check_memory(
    model_config: &DecoderConfig,
    spec: &DecoderSpec,
    lengths: &[(usize, usize)],
    placement: Placement<'_>,
    observer: &mut dyn TrainObserver,
) -> Result<(), TrainError> {
    let device = placement.0;
    let Some(available) = memory::available_bytes(device) else {
        return Ok(());
    };
    let device_name = memory::device_name(device);
    let estimate = with_fit_query(model_config, spec, lengths, placement, |query| {
        memory::check_fits(query, available)
    })
    .map_err(TrainError::DoesNotFit)?;
    observer.on_event(
        EventLevel::Info,
        format!(
            "Estimated peak memory {:.2} GiB of {:.2} GiB available on {device_name}",
            estimate.total() as f64 / (1u64 << 30) as f64,
            available as f64 / (1u64 << 30) as f64,
        ),
    );
    Ok(())
}

/// LoRA / QLoRA / full fine-tuning from the job's hyperparameters.
pub(crate) fn decoder_spec(lm: &LmSpec) -> Result<DecoderSpec, TrainError> {
    let quantize = match lm.quantize.as_deref() {
        None => None,
        Some(name) => Some(QuantKind::parse(name).ok_or_else(|| {
            TrainError::InvalidData(format!("`quantize` must be `q4_0` or `q8_0`, got `{name}`"))
        })?),
    };
    Ok(DecoderSpec {
        lora: lm.lora.clone().filter(|l| l.rank > 0),
        quantize,
    })
}

/// The model a decoder job trains: the base in the job's `precision`, its layers
/// checkpointed when the job asks.
pub(crate) fn decoder_for_job(
    base_model_dir: &std::path::Path,
    spec: &DecoderSpec,
    cfg: &TrainingConfig,
    device: &Device,
) -> Result<CausalLm, TrainError> {
    let compute = compute_dtype(cfg, device);
    let mut model = CausalLm::from_pretrained_in(base_model_dir, spec, device, cfg.seed, compute)?;
    if cfg.gradient_checkpointing {
        model.enable_gradient_checkpointing();
    }
    Ok(model)
}

/// The job's checkpointing and precision, for its memory check.
pub(crate) fn run_mode(cfg: &TrainingConfig, device: &Device) -> memory::RunMode {
    memory::RunMode {
        host: device.is_cpu(),
        checkpointing: cfg.gradient_checkpointing,
        bf16: compute_dtype(cfg, device) == DType::BF16,
    }
}

/// What a causal-LM checkpoint records of the job's LoRA / QLoRA settings.
pub(crate) fn lm_spec(cfg: &TrainingConfig) -> LmSpec {
    LmSpec {
        lora: (cfg.lora.rank > 0).then(|| cfg.lora.clone()),
        quantize: cfg.quantize.clone(),
        export_dtype: cfg.export_dtype,
    }
}
