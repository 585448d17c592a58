//! Hyperparameters: what the user asked for (OpenAI's three knobs, each `"auto"` or a
//! number, plus temper's extra keys) and the resolved numbers a trainer runs with.
//!
//! Requests are parsed at job creation, so an unknown key or an out-of-range value is a
//! 400 naming the param; `"auto"` is resolved when the job starts, once the task and the
//! number of examples are known.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::task::{DefaultsKey, Task};

mod task_options;
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
    /// Task-specific keys, under their own names in the request and its echo.
    #[serde(flatten)]
    pub task_options: TaskOptions,
}

/// A bad hyperparameter: `param` is the key as the user wrote it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct HyperparamError {
    pub param: String,
    pub message: String,
}

fn bad(param: &str, message: impl Into<String>) -> HyperparamError {
    HyperparamError {
        param: param.to_string(),
        message: message.into(),
    }
}

const METRICS_FOR_BEST: &[&str] = &[
    "valid_entity_f1",
    "valid_entity_precision",
    "valid_entity_recall",
    "valid_token_accuracy",
    "valid_accuracy",
    "valid_exact_match",
    "valid_f1",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
    "train_loss",
    "train_mean_token_accuracy",
    // DPO (tasks/dpo): TRL's reward metrics.
    "valid_reward_accuracy",
    "valid_reward_margin",
    "train_reward_accuracy",
    "train_reward_margin",
];

fn int_in(param: &str, value: &Value, min: u64, max: u64) -> Result<usize, HyperparamError> {
    let n = value
        .as_u64()
        .or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        })
        .ok_or_else(|| bad(param, format!("`{param}` must be an integer")))?;
    if n < min || n > max {
        return Err(bad(
            param,
            format!("`{param}` must be between {min} and {max}, got {n}"),
        ));
    }
    usize::try_from(n).map_err(|_| bad(param, format!("`{param}` is too large")))
}

fn float_in(
    param: &str,
    value: &Value,
    min: f64,
    max: f64,
    min_exclusive: bool,
) -> Result<f64, HyperparamError> {
    let x = value
        .as_f64()
        .ok_or_else(|| bad(param, format!("`{param}` must be a number")))?;
    let below = if min_exclusive { x <= min } else { x < min };
    if below || x > max || !x.is_finite() {
        let lower = if min_exclusive {
            "greater than"
        } else {
            "at least"
        };
        return Err(bad(
            param,
            format!("`{param}` must be {lower} {min} and at most {max}, got {x}"),
        ));
    }
    Ok(x)
}

fn is_auto(value: &Value) -> bool {
    value.as_str() == Some("auto") || value.is_null()
}

impl HyperparamRequest {
    /// Parses the merged hyperparameter object (`method.<type>.hyperparameters` over the
    /// deprecated top-level `hyperparameters`). Unknown keys are rejected.
    pub fn parse(object: &Map<String, Value>) -> Result<Self, HyperparamError> {
        let mut req = HyperparamRequest::default();
        for (key, value) in object {
            let k = key.as_str();
            match k {
                "n_epochs" if !is_auto(value) => req.n_epochs = Some(int_in(k, value, 1, 50)?),
                "batch_size" if !is_auto(value) => req.batch_size = Some(int_in(k, value, 1, 256)?),
                "learning_rate_multiplier" if !is_auto(value) => {
                    req.learning_rate_multiplier = Some(float_in(k, value, 0.0, 1000.0, true)?)
                }
                "n_epochs" | "batch_size" | "learning_rate_multiplier" => {}
                "learning_rate" => req.learning_rate = Some(float_in(k, value, 0.0, 1.0, true)?),
                "lr_scheduler" => {
                    req.lr_scheduler = Some(match value.as_str() {
                        Some("linear") => LrScheduler::Linear,
                        Some("cosine") => LrScheduler::Cosine,
                        Some("constant") => LrScheduler::Constant,
                        _ => {
                            return Err(bad(
                                k,
                                "`lr_scheduler` must be one of `linear`, `cosine`, `constant`",
                            ))
                        }
                    })
                }
                "warmup_ratio" => req.warmup_ratio = Some(float_in(k, value, 0.0, 0.99, false)?),
                "weight_decay" => req.weight_decay = Some(float_in(k, value, 0.0, 10.0, false)?),
                "max_grad_norm" => req.max_grad_norm = Some(float_in(k, value, 0.0, 1e6, false)?),
                "gradient_accumulation_steps" => {
                    req.gradient_accumulation_steps = Some(int_in(k, value, 1, 1024)?)
                }
                "max_seq_len" => req.max_seq_len = Some(int_in(k, value, 8, 32768)?),
                "eval_steps" => req.eval_steps = Some(int_in(k, value, 1, u32::MAX as u64)?),
                "save_steps" => req.save_steps = Some(int_in(k, value, 1, u32::MAX as u64)?),
                "early_stopping_patience" => {
                    req.early_stopping_patience = Some(int_in(k, value, 1, 1000)?)
                }
                "metric_for_best_model" => {
                    let name = value
                        .as_str()
                        .filter(|m| METRICS_FOR_BEST.contains(m))
                        .ok_or_else(|| {
                            bad(
                                k,
                                format!(
                                    "`metric_for_best_model` must be one of {}",
                                    METRICS_FOR_BEST.join(", ")
                                ),
                            )
                        })?;
                    req.metric_for_best_model = Some(name.to_string());
                }
                "lora_rank" => req.lora_rank = Some(int_in(k, value, 0, 1024)?),
                "lora_alpha" => req.lora_alpha = Some(float_in(k, value, 0.0, 1e6, true)?),
                "lora_dropout" => req.lora_dropout = Some(float_in(k, value, 0.0, 0.9, false)?),
                "target_modules" => {
                    let modules = value
                        .as_array()
                        .filter(|a| !a.is_empty())
                        .and_then(|a| {
                            a.iter()
                                .map(|m| m.as_str().map(str::to_string))
                                .collect::<Option<Vec<_>>>()
                        })
                        .ok_or_else(|| {
                            bad(
                                k,
                                "`target_modules` must be a non-empty list of module names",
                            )
                        })?;
                    req.target_modules = Some(modules);
                }
                "quantize" => {
                    let q = value
                        .as_str()
                        .filter(|q| matches!(*q, "q4_0" | "q8_0"))
                        .ok_or_else(|| bad(k, "`quantize` must be `q4_0` or `q8_0`"))?;
                    req.quantize = Some(q.to_string());
                }
                _ if TaskOptions::is_key(k) => req.task_options.parse_key(k, value)?,
                _ => return Err(bad(k, format!("Unknown hyperparameter `{k}`"))),
            }
        }
        if let Some(max_seq_len) = req.max_seq_len {
            req.task_options.check_lengths(max_seq_len)?;
        }
        Ok(req)
    }

    /// Refuses an option of another task than `task` (the job would ignore it) and checks
    /// the task's options against the `max_seq_len` the job will run with.
    pub fn check_task(&self, task: Task) -> Result<(), HyperparamError> {
        let max_seq_len = self.max_seq_len.unwrap_or(defaults(task).max_seq_len);
        self.task_options.check_task(task, max_seq_len)
    }
}

/// Per-task defaults, as transformers' `Trainer` recipes and peft examples use them.
struct TaskDefaults {
    full_lr: f64,
    lora_lr: f64,
    lora_rank: usize,
    lora_alpha: f64,
    batch_size: usize,
    max_seq_len: usize,
}

fn defaults(task: Task) -> TaskDefaults {
    if task == Task::QuestionAnswering {
        // run_qa's recipe: windows of 384 tokens.
        let encoder = defaults_for(DefaultsKey::EncoderFineTune);
        return TaskDefaults {
            max_seq_len: 384,
            ..encoder
        };
    }
    defaults_for(task.defaults_key())
}

fn defaults_for(key: DefaultsKey) -> TaskDefaults {
    match key {
        // BERT recipe: full fine-tuning, lr 2e-5, batch 16, 128 tokens.
        DefaultsKey::EncoderFineTune => TaskDefaults {
            full_lr: 2e-5,
            lora_lr: 5e-4,
            lora_rank: 0,
            lora_alpha: 16.0,
            batch_size: 16,
            max_seq_len: 128,
        },
        // Decoder SFT: LoRA r=8, α=16, lr 2e-4 (peft's usual recipe).
        DefaultsKey::DecoderLora => TaskDefaults {
            full_lr: 2e-5,
            lora_lr: 2e-4,
            lora_rank: 8,
            lora_alpha: 16.0,
            batch_size: 4,
            max_seq_len: 512,
        },
    }
}

/// OpenAI's `"auto"` epochs, the rule of its fine-tuning cookbook: 3 epochs, but at least
/// 100 and at most 25,000 example passes, and between 1 and 25 epochs.
pub fn auto_epochs(n_examples: usize) -> usize {
    let n = n_examples.max(1);
    if n * TARGET_EPOCHS < MIN_TARGET_EXAMPLES {
        (MIN_TARGET_EXAMPLES / n).min(MAX_AUTO_EPOCHS)
    } else if n * TARGET_EPOCHS > MAX_TARGET_EXAMPLES {
        (MAX_TARGET_EXAMPLES / n).max(1)
    } else {
        TARGET_EPOCHS
    }
}

const TARGET_EPOCHS: usize = 3;
const MIN_TARGET_EXAMPLES: usize = 100;
const MAX_TARGET_EXAMPLES: usize = 25_000;
const MAX_AUTO_EPOCHS: usize = 25;

/// Fewer optimizer steps than this leave a fresh head or LoRA adapter where it started (60
/// examples in batches of 16 for 3 epochs are 12 steps: nothing learned). OpenAI reaches
/// about this many on a small set by its batch size (~0.2% of the examples, so 1) times the
/// cookbook's epochs; `"auto"` does the same: a smaller batch first, then more epochs.
pub const MIN_AUTO_STEPS: usize = 100;

/// The learning rate of a classification head made from scratch, under an `"auto"`
/// learning rate (times the multiplier): a random head next to a pretrained encoder at the
/// encoder's 2e-5 barely moves in a small set's steps, so it gets the rate a linear probe
/// is trained at.
pub const AUTO_HEAD_LEARNING_RATE: f64 = 1e-3;

/// Optimizer steps in one epoch of `n` examples.
fn steps_per_epoch(n: usize, batch_size: usize, accumulation: usize) -> usize {
    n.div_ceil(batch_size.max(1)).div_ceil(accumulation.max(1))
}

/// The largest batch, at most the task's default, with which `n_epochs` over `n` examples
/// take [`MIN_AUTO_STEPS`] optimizer steps (1 when none does).
fn auto_batch_size(default: usize, n: usize, n_epochs: usize, accumulation: usize) -> usize {
    (1..=default.max(1))
        .rev()
        .find(|&batch| n_epochs * steps_per_epoch(n, batch, accumulation) >= MIN_AUTO_STEPS)
        .unwrap_or(1)
}

impl HyperparamRequest {
    /// Replaces every `"auto"` with the number the job will use.
    pub fn resolve(&self, task: Task, n_examples: usize, seed: u64) -> TrainingConfig {
        self.resolve_explained(task, n_examples, seed).0
    }

    /// [`HyperparamRequest::resolve`], and for each `"auto"` a sentence saying what it
    /// became and why (the job's events show them).
    pub fn resolve_explained(
        &self,
        task: Task,
        n_examples: usize,
        seed: u64,
    ) -> (TrainingConfig, Vec<String>) {
        let d = defaults(task);
        let n = n_examples.max(1);
        let rank = self.lora_rank.unwrap_or(d.lora_rank);
        let multiplier = self.learning_rate_multiplier.unwrap_or(1.0);
        let base_lr = if rank == 0 { d.full_lr } else { d.lora_lr };
        let accumulation = self.gradient_accumulation_steps.unwrap_or(1);
        let mut why = Vec::new();
        let cookbook_epochs = self.n_epochs.unwrap_or_else(|| auto_epochs(n));
        let batch_size = self.batch_size.unwrap_or_else(|| {
            let batch = auto_batch_size(d.batch_size, n, cookbook_epochs, accumulation);
            let default_steps = cookbook_epochs * steps_per_epoch(n, d.batch_size, accumulation);
            why.push(if batch < d.batch_size {
                format!(
                    "batch_size=auto → {batch} for {n} examples: {}'s usual {} would make only {default_steps} optimizer steps in {cookbook_epochs} epochs, too few to learn from; {batch} makes {} (at least {MIN_AUTO_STEPS} where the data allows)",
                    task.label(),
                    d.batch_size,
                    cookbook_epochs * steps_per_epoch(n, batch, accumulation),
                )
            } else {
                format!(
                    "batch_size=auto → {batch} for {n} examples: {}'s usual batch, already {default_steps} optimizer steps in {cookbook_epochs} epochs",
                    task.label()
                )
            });
            batch
        });
        let per_epoch = steps_per_epoch(n, batch_size, accumulation);
        let n_epochs = self.n_epochs.unwrap_or_else(|| {
            let for_steps = MIN_AUTO_STEPS.div_ceil(per_epoch).min(MAX_AUTO_EPOCHS);
            let epochs = cookbook_epochs.max(for_steps);
            let reason = if epochs > cookbook_epochs {
                format!(
                    "raised from OpenAI's {cookbook_epochs} so that the run takes at least {MIN_AUTO_STEPS} optimizer steps ({per_epoch} per epoch; at most {MAX_AUTO_EPOCHS} epochs)"
                )
            } else if cookbook_epochs != TARGET_EPOCHS {
                format!(
                    "OpenAI's rule: {TARGET_EPOCHS} epochs, but at least {MIN_TARGET_EXAMPLES} and at most {MAX_TARGET_EXAMPLES} example passes"
                )
            } else {
                format!("OpenAI's {TARGET_EPOCHS} epochs")
            };
            why.push(format!(
                "n_epochs=auto → {epochs} for {n} examples: {reason}; {} optimizer steps in all",
                epochs * per_epoch
            ));
            epochs
        });
        let learning_rate = self.learning_rate.unwrap_or(base_lr * multiplier);
        let head_learning_rate = (task == Task::SequenceClassification
            && self.learning_rate.is_none())
        .then(|| (AUTO_HEAD_LEARNING_RATE * multiplier).max(learning_rate));
        if self.learning_rate.is_none() {
            let tuning = if rank == 0 {
                "full fine-tuning"
            } else {
                "LoRA"
            };
            let mut sentence = format!(
                "learning_rate=auto → {learning_rate:e}: the {} recipe's {base_lr:e} for {tuning}, times learning_rate_multiplier {multiplier}",
                task.label()
            );
            if let Some(head) = head_learning_rate {
                sentence.push_str(&format!(
                    "; the new classification head learns at its own {head:e}, so a small set moves it"
                ));
            }
            why.push(sentence);
        }
        let config = TrainingConfig {
            n_epochs,
            batch_size,
            learning_rate_multiplier: multiplier,
            learning_rate,
            head_learning_rate,
            lr_scheduler: self.lr_scheduler.unwrap_or(LrScheduler::Linear),
            warmup_ratio: self.warmup_ratio.unwrap_or(0.0),
            weight_decay: self.weight_decay.unwrap_or(0.0),
            max_grad_norm: self.max_grad_norm.unwrap_or(1.0),
            gradient_accumulation_steps: accumulation,
            max_seq_len: self.max_seq_len.unwrap_or(d.max_seq_len),
            eval_steps: self.eval_steps,
            save_steps: self.save_steps,
            early_stopping_patience: self.early_stopping_patience,
            metric_for_best_model: self.metric_for_best_model.clone(),
            lora: LoraSettings {
                rank,
                alpha: self.lora_alpha.unwrap_or(d.lora_alpha),
                dropout: self.lora_dropout.unwrap_or(0.0),
                target_modules: self.target_modules.clone().unwrap_or_default(),
            },
            quantize: self.quantize.clone(),
            seed,
            task_options: self.task_options.resolve(task),
        };
        (config, why)
    }
}

#[cfg(test)]
mod tests;
