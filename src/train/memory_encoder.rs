//! The encoder jobs' estimate (classification, NER, QA): the body counted exactly, the
//! head as at most a pooler and its outputs, and the activations a BERT layer keeps.

use candle_core::Device;

use super::{
    available_bytes, device_name, gib, largest_step, within_margin, MemoryEstimate, RunMode,
    StepShape, Tuning,
};
use crate::zoo::config::EncoderConfig;

/// The composed ops a GPU runs (LayerNorm, GELU, softmax over padded scores and each LoRA
/// update as chains of candle ops, bf16 casts beside f32 copies) keep this many times the
/// fused count per token and layer, `(numerator, denominator)`. Measured on MiniLM-L6 run on
/// the CPU through the same ops in bf16 (`examples/encoder_memory ... generic bf16`, Rotten
/// Tomatoes): 3.55–3.7× (full and LoRA, batch 32 and 64).
const GENERIC_OVER_FUSED: (u64, u64) = (37, 10);

/// The encoder body's parameters: embeddings (word, position, token type, their norm) and
/// every layer (q, k, v, o with biases, the attention norm, the feed-forward pair with
/// biases, the output norm).
pub fn encoder_parameter_count(c: &EncoderConfig) -> u64 {
    let h = c.hidden_size as u64;
    let embeddings =
        (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) as u64 * h + 2 * h;
    embeddings + encoder_layer_parameters(c)
}

/// The layers' parameters: what every token is multiplied by (the embeddings are looked
/// up, not multiplied), for the FLOPs of a training token.
pub fn encoder_layer_parameters(c: &EncoderConfig) -> u64 {
    let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
    let layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h;
    c.num_layers as u64 * layer
}

/// The estimate of an encoder job's peak memory (classification, NER, QA) on the fused
/// path: the body as [`encoder_parameter_count`] counts it and at most a `[h, h]` pooler
/// plus a `[h, outputs]` head; per token and layer the tensors a layer keeps (q, k, v, the
/// context, two residual sums and norm outputs, the output projections, the three dropout
/// outputs: 14h; the feed-forward's input and activation: 2i) and one row of attention
/// probabilities per head over the longest sequence. With `checkpointing`, backward keeps
/// each layer's output (h per token and layer) and one recomputed layer's tensors and their
/// gradients. Measured on MiniLM-L6 (`examples/encoder_memory`, 512 Rotten Tomatoes
/// examples, peak RSS growth): the estimate is 1.0–1.4× the measured peak, an over-estimate
/// at larger batches (1.28× at batch 64). Off the CPU, or in bf16, the composed ops keep
/// [`GENERIC_OVER_FUSED`] times as much per token and layer.
pub fn estimate_encoder(
    c: &EncoderConfig,
    tuning: &Tuning,
    outputs: usize,
    step: StepShape,
    longest: usize,
    mode: RunMode,
) -> MemoryEstimate {
    let RunMode {
        host,
        checkpointing,
        bf16,
    } = mode;
    let h = c.hidden_size as u64;
    let head = h * h + h + (h + 1) * outputs as u64;
    let params = encoder_parameter_count(c) + head;
    let trained = match tuning {
        Tuning::Full => params,
        Tuning::Lora { rank, targets, .. } => {
            let i = c.intermediate_size as u64;
            // r·(in + out) per adapted module: the attention projections are [h, h]; any
            // other name is counted as every dense layer it can match (BERT's `dense` names
            // three: [h, h], [h, i] and [i, h]), an upper bound.
            let per_layer: u64 = targets
                .iter()
                .map(|t| match t.as_str() {
                    "query" | "key" | "value" | "q_lin" | "k_lin" | "v_lin" | "out_lin" => 2 * h,
                    _ => 4 * h + 2 * i,
                })
                .sum();
            c.num_layers as u64 * *rank as u64 * per_layer + head
        }
    };
    let adapters = match tuning {
        Tuning::Full => 0,
        Tuning::Lora { .. } => trained - head,
    };
    let fused_layer = 14 * h + 2 * c.intermediate_size as u64 + (c.num_heads * longest) as u64;
    let per_layer = if mode.runs_composed_ops() {
        fused_layer * GENERIC_OVER_FUSED.0 / GENERIC_OVER_FUSED.1
    } else {
        fused_layer
    };
    let layers = c.num_layers as u64;
    let per_token = if checkpointing {
        // As the decoder's (`estimate_with`): outputs, one recomputed layer's activations and
        // their gradients, and a LoRA model's first layer kept whole.
        let plain_first = if *tuning == Tuning::Full { 0 } else { 1 };
        layers * h + h + (2 + plain_first) * per_layer
    } else {
        layers * per_layer
    };
    // Mixed precision: a LoRA body's frozen matrices in bf16; full fine-tuning keeps f32
    // masters and each step holds the bf16 casts of the layers' matrices for backward.
    let i = c.intermediate_size as u64;
    let layer_matrices = layers * (4 * h * h + 2 * h * i);
    let body = encoder_parameter_count(c);
    let vectors = layers * (4 * h + i + h + 4 * h) + 2 * h;
    let (weights, casts) = match tuning {
        Tuning::Lora { .. } if bf16 => (2 * (body - vectors) + 4 * (vectors + head + adapters), 0),
        Tuning::Full if bf16 => (4 * params, 2 * layer_matrices),
        _ => (4 * (params + adapters), 0),
    };
    MemoryEstimate {
        weights,
        optimizer: 4 * 3 * trained,
        activations: 4 * step.tokens as u64 * per_token + casts,
        loading: if host { 4 * params } else { 0 },
        checkpoint: if host { 4 * 2 * trained } else { 0 },
    }
}

/// An encoder job's estimate at any batch size: `config` gives its LoRA settings,
/// checkpointing and precision, `lengths` each training example's tokens.
fn encoder_job_need(
    encoder: EncoderConfig,
    config: &crate::domain::hyperparams::TrainingConfig,
    outputs: usize,
    lengths: &[usize],
    device: &Device,
) -> impl Fn(usize) -> MemoryEstimate {
    let tuning = match Some(&config.lora).filter(|l| l.rank > 0) {
        None => Tuning::Full,
        Some(l) => Tuning::Lora {
            rank: l.rank,
            targets: crate::zoo::encoder_head::encoder_lora_targets(encoder.arch, l),
            quantize: None,
        },
    };
    let pairs: Vec<(usize, usize)> = lengths.iter().map(|&n| (n, 0)).collect();
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let mode = RunMode {
        host: device.is_cpu(),
        checkpointing: config.gradient_checkpointing,
        bf16: crate::train::setup::compute_dtype(config, device) == candle_core::DType::BF16,
    };
    move |batch: usize| {
        let step = largest_step(&pairs, batch);
        estimate_encoder(&encoder, &tuning, outputs, step, longest, mode)
    }
}

/// The estimated peak memory of an encoder job at its batch size on `device`, and the
/// parameters of its layers (for its plan's FLOPs).
pub fn encoder_job_estimate(
    base_model_dir: &std::path::Path,
    config: &crate::domain::hyperparams::TrainingConfig,
    outputs: usize,
    lengths: &[usize],
    device: &Device,
) -> Result<(MemoryEstimate, u64), crate::train::TrainError> {
    let (encoder, _) = EncoderConfig::from_dir(base_model_dir)?;
    let layers = encoder_layer_parameters(&encoder);
    let need = encoder_job_need(encoder, config, outputs, lengths, device);
    Ok((need(config.batch_size), layers))
}

/// Fails an encoder job before its model loads when its estimate and a 15 % margin are over
/// what `device` has free; `config` gives its batch size and LoRA settings, `lengths` each
/// training example's tokens.
pub fn check_encoder_job(
    base_model_dir: &std::path::Path,
    config: &crate::domain::hyperparams::TrainingConfig,
    outputs: usize,
    lengths: &[usize],
    device: &Device,
) -> Result<(), crate::train::TrainError> {
    let batch_size = config.batch_size;
    let Some(available) = available_bytes(device) else {
        return Ok(());
    };
    let (encoder, _) = EncoderConfig::from_dir(base_model_dir)?;
    let need = encoder_job_need(encoder, config, outputs, lengths, device);
    let fits = |batch: usize| within_margin(need(batch).total(), available);
    if fits(batch_size) {
        return Ok(());
    }
    let smaller = (1..batch_size).rev().find(|&b| fits(b));
    let advice = match smaller {
        Some(batch) => format!(
            " It would fit with `batch_size` {batch} (with `gradient_accumulation_steps` {} to keep the effective batch).",
            batch_size.div_ceil(batch)
        ),
        None => " Shorter examples (`max_seq_len`) or a smaller model would.".into(),
    };
    Err(crate::train::TrainError::DoesNotFit(format!(
        "This job needs about {} on `{}` for {batch_size} examples per step and a 15 % margin, \
         but the device has {} available.{advice}",
        gib(need(batch_size).total()),
        device_name(device),
        gib(available),
    )))
}
