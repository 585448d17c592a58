//! Hyperparameters: what the user asked for (OpenAI's three knobs, each `"auto"` or a
//! number, plus temper's extra keys) and the resolved numbers a trainer runs with.
//!
//! Requests are parsed at job creation, so an unknown key or an out-of-range value is a
//! 400 naming the param; `"auto"` is resolved when the job starts, once the task and the
//! number of examples are known.

use serde::{Deserialize, Serialize};
mod image_options;
mod parse;
mod resolve;
mod task_options;
pub use image_options::{ImageOptions, OptimizerKind, UnfreezeStep};
pub use parse::HyperparamError;
use parse::{bad, int_in};
pub use resolve::{auto_epochs, AUTO_HEAD_LEARNING_RATE, MIN_AUTO_STEPS};
pub use task_options::{TaskOptions, DEFAULT_DOC_STRIDE, DEFAULT_MAX_ANSWER_LENGTH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduler {
    Linear,
    Cosine,
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSettings {
    /// 0 means full fine-tuning.
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// PEFT module names (`query`, `value`, `q_proj`…); empty means the task's default set.
    pub target_modules: Vec<String>,
}

/// The floating-point format of a decoder job's matmuls (`precision`) or of its exported
/// weights (`export_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "f32" => Some(Precision::F32),
            "bf16" => Some(Precision::Bf16),
            _ => None,
        }
    }
}

/// The numbers a trainer runs with; every `"auto"` is gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingConfig {
    pub n_epochs: usize,
    pub batch_size: usize,
    pub learning_rate_multiplier: f64,
    pub learning_rate: f64,
    /// The learning rate of a classification head made from scratch; `None`: the head
    /// learns at `learning_rate` like every other tensor (what an explicit
    /// `learning_rate` asks for).
    #[serde(default)]
    pub head_learning_rate: Option<f64>,
    pub lr_scheduler: LrScheduler,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    /// 0 disables clipping.
    pub max_grad_norm: f64,
    pub gradient_accumulation_steps: usize,
    pub max_seq_len: usize,
    /// Evaluate on the validation set every N optimizer steps (besides each epoch end).
    pub eval_steps: Option<usize>,
    /// Save a checkpoint every N optimizer steps (besides each epoch end).
    pub save_steps: Option<usize>,
    /// Stop after this many evaluations without improvement of `metric_for_best_model`.
    pub early_stopping_patience: Option<usize>,
    /// `valid_accuracy`, `valid_f1`, `valid_loss`, `train_loss`, …; `None` = task default.
    pub metric_for_best_model: Option<String>,
    pub lora: LoraSettings,
    /// `q4_0` / `q8_0`: a frozen quantized base (QLoRA).
    pub quantize: Option<String>,
    /// Recompute each transformer layer's activations in backward instead of keeping them
    /// (text tasks); configs stored before the option read as off.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Decoder jobs: `bf16` runs the projections' matmuls in bf16 over bf16 frozen weights
    /// (f32 master copies of trained ones); `None`: bf16 on a GPU, f32 on the CPU.
    #[serde(default)]
    pub precision: Option<Precision>,
    /// Decoder jobs: the dtype of the exported merged weights; `None`: f32.
    #[serde(default)]
    pub export_dtype: Option<Precision>,
    pub seed: u64,
    /// The options of the job's task (QA windows, NER labelling, DPO prompt length);
    /// configs stored before they existed read as none given.
    #[serde(default)]
    pub task_options: TaskOptions,
}

/// A hyperparameter that is `"auto"` until the job starts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Auto<T> {
    Value(T),
    Auto(AutoLiteral),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoLiteral {
    Auto,
}

impl<T: Copy> Auto<T> {
    pub fn value(&self) -> Option<T> {
        match self {
            Auto::Value(v) => Some(*v),
            Auto::Auto(_) => None,
        }
    }
}

/// What the user asked for, validated but not resolved.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HyperparamRequest {
    pub n_epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub learning_rate_multiplier: Option<f64>,
    pub learning_rate: Option<f64>,
    pub lr_scheduler: Option<LrScheduler>,
    pub warmup_ratio: Option<f64>,
    pub weight_decay: Option<f64>,
    pub max_grad_norm: Option<f64>,
    pub gradient_accumulation_steps: Option<usize>,
    pub max_seq_len: Option<usize>,
    pub eval_steps: Option<usize>,
    pub save_steps: Option<usize>,
    pub early_stopping_patience: Option<usize>,
    pub metric_for_best_model: Option<String>,
    pub lora_rank: Option<usize>,
    pub lora_alpha: Option<f64>,
    pub lora_dropout: Option<f64>,
    pub target_modules: Option<Vec<String>>,
    pub quantize: Option<String>,
    pub gradient_checkpointing: Option<bool>,
    pub precision: Option<Precision>,
    pub export_dtype: Option<Precision>,
    /// Task-specific keys, under their own names in the request and its echo.
    #[serde(flatten)]
    pub task_options: TaskOptions,
}

#[cfg(test)]
mod tests;
