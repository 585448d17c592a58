//! What a user asked a fine-tuning job to do, typed: the method (`supervised` or `dpo`) and
//! its hyperparameters, parsed once from the create request and stored as is. The worker
//! reads it (never OpenAI's echo JSON), and OpenAI's `method` / legacy `hyperparameters`
//! echo is made from it at the wire, with the numbers every `"auto"` became
//! ([`ResolvedHyperparameters`]) once the job starts.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::dataset::DataFormat;
use super::echo;
use super::hyperparams::{HyperparamError, HyperparamRequest, TrainingConfig};
use super::task::Task;

/// DPO's `beta` under `"auto"`: the default of Rafailov et al.'s paper and of TRL.
pub const AUTO_DPO_BETA: f64 = 0.1;
/// OpenAI's upper bound for `beta` (higher is more conservative).
pub const MAX_DPO_BETA: f64 = 2.0;

/// The job as requested. The request's other fields (model, files, suffix, seed, metadata)
/// are columns of the job row of their own.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobSpec {
    pub method: Method,
}

/// OpenAI's `FineTuneMethod`, minus `reinforcement` (refused at creation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Method {
    Supervised {
        hyperparameters: HyperparamRequest,
    },
    Dpo {
        hyperparameters: HyperparamRequest,
        /// `None`: `"auto"` ([`AUTO_DPO_BETA`]).
        beta: Option<f64>,
    },
}

impl Default for Method {
    /// OpenAI's default when a request has no `method`.
    fn default() -> Self {
        Method::Supervised {
            hyperparameters: HyperparamRequest::default(),
        }
    }
}

impl Method {
    /// The name OpenAI uses in `method.type`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Supervised { .. } => "supervised",
            Method::Dpo { .. } => "dpo",
        }
    }

    pub fn hyperparameters(&self) -> &HyperparamRequest {
        match self {
            Method::Supervised { hyperparameters }
            | Method::Dpo {
                hyperparameters, ..
            } => hyperparameters,
        }
    }

    /// DPO's `beta` with `"auto"` resolved, and when it was `"auto"` a sentence saying what
    /// it became (the job's events show it); `None` for supervised jobs, which have none.
    pub fn resolved_beta(&self) -> Option<(f64, Option<String>)> {
        match self {
            Method::Supervised { .. } => None,
            Method::Dpo {
                beta: Some(beta), ..
            } => Some((*beta, None)),
            Method::Dpo { beta: None, .. } => Some((
                AUTO_DPO_BETA,
                Some(format!(
                    "beta=auto → {AUTO_DPO_BETA}: the DPO paper's and TRL's default"
                )),
            )),
        }
    }
}

/// The numbers a job trains with, recorded by the worker when it resolves `"auto"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedHyperparameters {
    pub config: TrainingConfig,
    /// DPO's `beta`; `None` for supervised jobs.
    #[serde(default)]
    pub beta: Option<f64>,
}

/// A bad `method` or hyperparameter in a create request: `param` names it as OpenAI does
/// (`method.type`, `beta`, `n_epochs`…).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    pub param: String,
    pub message: String,
}

impl From<HyperparamError> for SpecError {
    fn from(error: HyperparamError) -> Self {
        SpecError {
            param: error.param,
            message: error.message,
        }
    }
}

fn invalid(param: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        param: param.to_string(),
        message: message.into(),
    }
}

fn object_or_empty(value: Option<&Value>, param: &str) -> Result<Map<String, Value>, SpecError> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(_) => Err(invalid(param, format!("`{param}` must be an object."))),
    }
}

/// `method.type`: `supervised` when absent, as OpenAI defaults it.
fn method_type(method: &Map<String, Value>) -> Result<&'static str, SpecError> {
    match method.get("type") {
        None | Some(Value::Null) => Ok("supervised"),
        Some(Value::String(kind)) if kind == "supervised" => Ok("supervised"),
        Some(Value::String(kind)) if kind == "dpo" => Ok("dpo"),
        Some(Value::String(kind)) if kind == "reinforcement" => Err(invalid(
            "method.type",
            "Reinforcement fine-tuning is not supported by temper.",
        )),
        Some(other) => Err(invalid(
            "method.type",
            format!(
                "`method.type` must be `supervised` or `dpo`, got {}.",
                echo(&other.to_string())
            ),
        )),
    }
}

/// DPO's `beta`: `"auto"` (or null) or a number in (0, [`MAX_DPO_BETA`]]; a zero beta
/// would make the loss constant.
fn parse_beta(beta: Option<Value>) -> Result<Option<f64>, SpecError> {
    match beta {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text == "auto" => Ok(None),
        Some(value) => value
            .as_f64()
            .filter(|b| *b > 0.0 && *b <= MAX_DPO_BETA)
            .map(Some)
            .ok_or_else(|| {
                invalid(
                    "beta",
                    format!(
                        "`beta` must be \"auto\" or a number greater than 0 and at most {MAX_DPO_BETA}."
                    ),
                )
            }),
    }
}

impl JobSpec {
    /// The task a job of this spec trains on a training file of `format`: DPO for a `dpo`
    /// job (other data fails it when it starts, with OpenAI's mismatch error), else the
    /// format's task (`None`: preference data under `supervised`, which fails likewise).
    pub fn task_on(&self, format: DataFormat) -> Option<Task> {
        match self.method {
            Method::Dpo { .. } => Some(Task::Dpo),
            Method::Supervised { .. } => format.task_kind(),
        }
    }

    /// Refuses a hyperparameter of another task than `task` (`doc_stride` on a
    /// classification job…) and task options that do not fit `max_seq_len`.
    pub fn check_task(&self, task: Task) -> Result<(), SpecError> {
        Ok(self.method.hyperparameters().check_task(task)?)
    }

    /// Parses a create request's `method` and its deprecated top-level `hyperparameters`
    /// (the method's keys win). Unknown keys and bad values are errors naming their param.
    pub fn parse(method: Option<&Value>, legacy: Option<&Value>) -> Result<JobSpec, SpecError> {
        JobSpec::parse_with(method, legacy, BetaOutsideDpo::Refused)
    }

    /// The spec of a job stored before specs were: its `method` echo column (which the
    /// worker rewrote with resolved numbers, so those read back as explicit values) over
    /// its legacy `hyperparameters` column. Creation then let a supervised job carry a
    /// `beta`; it never meant anything, so it is dropped rather than making the row
    /// unreadable.
    pub fn from_legacy_echo(method: &Value, hyperparameters: &Value) -> Result<Self, SpecError> {
        JobSpec::parse_with(Some(method), Some(hyperparameters), BetaOutsideDpo::Dropped)
    }

    fn parse_with(
        method: Option<&Value>,
        legacy: Option<&Value>,
        beta_outside_dpo: BetaOutsideDpo,
    ) -> Result<JobSpec, SpecError> {
        let mut merged = object_or_empty(legacy, "hyperparameters")?;
        let method = object_or_empty(method, "method")?;
        let kind = method_type(&method)?;
        let section = object_or_empty(method.get(kind), &format!("method.{kind}"))?;
        let hyper = object_or_empty(
            section.get("hyperparameters"),
            &format!("method.{kind}.hyperparameters"),
        )?;
        merged.extend(hyper);
        let beta = merged.remove("beta");
        let method = if kind == "dpo" {
            Method::Dpo {
                beta: parse_beta(beta)?,
                hyperparameters: HyperparamRequest::parse(&merged)?,
            }
        } else {
            if beta.is_some() && beta_outside_dpo == BetaOutsideDpo::Refused {
                return Err(invalid(
                    "beta",
                    "`beta` is a DPO hyperparameter; set `method.type` to `dpo` to use it.",
                ));
            }
            Method::Supervised {
                hyperparameters: HyperparamRequest::parse(&merged)?,
            }
        };
        Ok(JobSpec { method })
    }
}

/// What a `beta` in a supervised job's hyperparameters gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BetaOutsideDpo {
    /// A create request: a knob the job would ignore is a 400.
    Refused,
    /// A row stored before specs existed.
    Dropped,
}

#[cfg(test)]
mod tests;
