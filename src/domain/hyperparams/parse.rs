//! Parsing a request's hyperparameter object at job creation: every key checked, an
//! unknown key or an out-of-range value a [`HyperparamError`] naming the param.

use serde_json::{Map, Value};

use super::resolve::defaults;
use super::{HyperparamRequest, LrScheduler, Precision, TaskOptions};
use crate::domain::task::Task;

/// A bad hyperparameter: `param` is the key as the user wrote it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct HyperparamError {
    pub param: String,
    pub message: String,
}

pub(super) fn bad(param: &str, message: impl Into<String>) -> HyperparamError {
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

pub(super) fn int_in(
    param: &str,
    value: &Value,
    min: u64,
    max: u64,
) -> Result<usize, HyperparamError> {
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

pub(super) fn float_in(
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
                "gradient_checkpointing" => {
                    let flag = value
                        .as_bool()
                        .ok_or_else(|| bad(k, "`gradient_checkpointing` must be true or false"))?;
                    req.gradient_checkpointing = Some(flag);
                }
                "precision" | "export_dtype" => {
                    let dtype = value
                        .as_str()
                        .and_then(Precision::parse)
                        .ok_or_else(|| bad(k, format!("`{k}` must be `f32` or `bf16`")))?;
                    match k {
                        "precision" => req.precision = Some(dtype),
                        _ => req.export_dtype = Some(dtype),
                    }
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
        if task == Task::ImageClassification && self.gradient_checkpointing == Some(true) {
            return Err(bad(
                "gradient_checkpointing",
                "`gradient_checkpointing` recomputes transformer layers (text tasks); image classification trains a CNN and does not take it",
            ));
        }
        if task == Task::ImageClassification && self.precision.is_some() {
            return Err(bad(
                "precision",
                "`precision` applies to transformer jobs (text tasks); image classification trains its CNN in f32",
            ));
        }
        let decoder = matches!(task, Task::ChatSft | Task::CompletionSft | Task::Dpo);
        if self.export_dtype.is_some() && !decoder {
            return Err(bad(
                "export_dtype",
                format!("`export_dtype` applies to causal-LM jobs (chat, prompt/completion, DPO); this job's training data is {} data", task.label()),
            ));
        }
        let max_seq_len = self.max_seq_len.unwrap_or(defaults(task).max_seq_len);
        self.task_options.check_task(task, max_seq_len)
    }
}
