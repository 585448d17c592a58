//! `POST /v1/fine_tuning/jobs` body → `NewJob`: every field checked, each error a
//! 400 naming its param. Checks that need the store (files, base model) are
//! `jobs::JobService`'s.

use rand::Rng;
use serde::Deserialize;
use serde_json::Value;

use super::error::echo;
use super::ApiError;
use crate::domain::hyperparams::HyperparamError;
use crate::domain::job_spec::{JobSpec, SpecError};
use crate::domain::model_name::{normalize_model_id, validate_suffix};
use crate::jobs::NewJob;

/// OpenAI's seed range.
pub const MAX_SEED: i64 = 2_147_483_647;
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;

/// The wire body. Loosely typed on purpose: type errors become 400s naming the param
/// instead of serde's generic message.
#[derive(Debug, Default, Deserialize)]
pub struct CreateJobBody {
    pub model: Option<Value>,
    pub training_file: Option<Value>,
    pub validation_file: Option<Value>,
    pub suffix: Option<Value>,
    pub seed: Option<Value>,
    pub metadata: Option<Value>,
    pub hyperparameters: Option<Value>,
    pub method: Option<Value>,
    pub integrations: Option<Value>,
}

impl From<SpecError> for ApiError {
    /// A 400 naming the param, echoed short like a bad hyperparameter's (it may be a
    /// client's unknown key).
    fn from(error: SpecError) -> ApiError {
        HyperparamError {
            param: error.param,
            message: error.message,
        }
        .into()
    }
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).with_param(param)
}

fn required_string(value: Option<Value>, param: &str) -> Result<String, ApiError> {
    match optional_string(value, param)? {
        Some(text) => Ok(text),
        None => Err(invalid(
            param,
            format!("Missing required parameter: '{param}'."),
        )),
    }
}

fn optional_string(value: Option<Value>, param: &str) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => {
            Err(invalid(param, format!("`{param}` must not be empty.")))
        }
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(invalid(param, format!("`{param}` must be a string."))),
    }
}

fn parse_seed(value: Option<Value>) -> Result<i64, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(rand::rng().random_range(0..=MAX_SEED)),
        Some(v) => v
            .as_i64()
            .filter(|s| (0..=MAX_SEED).contains(s))
            .ok_or_else(|| {
                invalid(
                    "seed",
                    format!("`seed` must be an integer between 0 and {MAX_SEED}."),
                )
            }),
    }
}

fn parse_metadata(value: Option<Value>) -> Result<Option<Value>, ApiError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(invalid(
                "metadata",
                "`metadata` must be an object of string values.",
            ))
        }
    };
    if map.len() > MAX_METADATA_PAIRS {
        return Err(invalid(
            "metadata",
            format!(
                "`metadata` can have at most {MAX_METADATA_PAIRS} pairs, got {}.",
                map.len()
            ),
        ));
    }
    for (key, value) in &map {
        let Some(text) = value.as_str() else {
            return Err(invalid(
                "metadata",
                format!("`metadata.{}` must be a string.", echo(key)),
            ));
        };
        if key.chars().count() > MAX_METADATA_KEY_CHARS
            || text.chars().count() > MAX_METADATA_VALUE_CHARS
        {
            return Err(invalid(
                "metadata",
                format!(
                    "`metadata` keys are limited to {MAX_METADATA_KEY_CHARS} characters and values to {MAX_METADATA_VALUE_CHARS}."
                ),
            ));
        }
    }
    Ok(Some(Value::Object(map)))
}

/// The job's base model, normalised (`normalize_model_id`) so one model has one id.
fn parse_model(value: Option<Value>) -> Result<String, ApiError> {
    let model = normalize_model_id(&required_string(value, "model")?);
    if model.is_empty() {
        return Err(invalid(
            "model",
            "`model` must name a model, not only slashes.",
        ));
    }
    Ok(model)
}

pub fn parse_create(body: CreateJobBody) -> Result<NewJob, ApiError> {
    let model = parse_model(body.model)?;
    let training_file = required_string(body.training_file, "training_file")?;
    let validation_file = optional_string(body.validation_file, "validation_file")?;
    let suffix = optional_string(body.suffix, "suffix")?;
    if let Some(suffix) = &suffix {
        validate_suffix(suffix).map_err(|e| invalid(e.param, e.message))?;
    }
    let seed = parse_seed(body.seed)?;
    let metadata = parse_metadata(body.metadata)?;
    if body
        .integrations
        .as_ref()
        .is_some_and(|i| i.as_array().is_some_and(|a| !a.is_empty()))
    {
        return Err(invalid(
            "integrations",
            "Integrations (Weights & Biases) are not supported by temper.",
        ));
    }
    let spec = JobSpec::parse(body.method.as_ref(), body.hyperparameters.as_ref())?;
    Ok(NewJob {
        model,
        training_file,
        validation_file,
        suffix,
        seed,
        metadata,
        spec,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::*;
    use crate::domain::hyperparams::HyperparamRequest;
    use crate::domain::job_spec::Method;

    fn body(value: Value) -> CreateJobBody {
        serde_json::from_value(value).expect("body shape")
    }

    #[test]
    fn minimal_request_is_supervised_with_auto_hyperparameters_and_a_seed() {
        let valid = parse_create(body(json!({"model": "org/m", "training_file": "file-a"})))
            .expect("valid");
        assert_eq!(
            valid.spec.method,
            Method::Supervised {
                hyperparameters: HyperparamRequest::default()
            }
        );
        assert!((0..=MAX_SEED).contains(&valid.seed));
    }

    #[test]
    fn method_keys_override_legacy_ones_and_extras_are_kept() {
        let valid = parse_create(body(json!({
            "model": "org/m", "training_file": "file-a", "seed": 42,
            "hyperparameters": {"n_epochs": 5, "batch_size": 4},
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "lora_rank": 8}}}
        })))
        .expect("valid");
        assert_eq!(valid.seed, 42);
        let hyperparams = valid.spec.method.hyperparameters();
        assert_eq!(hyperparams.n_epochs, Some(3));
        assert_eq!(hyperparams.batch_size, Some(4));
        assert_eq!(hyperparams.lora_rank, Some(8));
    }

    #[test]
    fn errors_name_their_param() {
        let cases = [
            (json!({"training_file": "file-a"}), "model"),
            (json!({"model": "m"}), "training_file"),
            (json!({"model": "m", "training_file": 3}), "training_file"),
            (
                json!({"model": "m", "training_file": "f", "seed": -1}),
                "seed",
            ),
            (
                json!({"model": "m", "training_file": "f", "suffix": "a:b"}),
                "suffix",
            ),
            (
                json!({"model": "m", "training_file": "f", "metadata": {"k": 1}}),
                "metadata",
            ),
            (
                json!({"model": "m", "training_file": "f", "method": {"type": "reinforcement"}}),
                "method.type",
            ),
            (
                json!({"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": 0}}),
                "n_epochs",
            ),
            (
                json!({"model": "m", "training_file": "f", "method": {"type": "supervised",
                "supervised": {"hyperparameters": {"lora_rank": -3}}}}),
                "lora_rank",
            ),
            (
                json!({"model": "m", "training_file": "f", "method": {"type": "dpo",
                "dpo": {"hyperparameters": {"beta": 5}}}}),
                "beta",
            ),
            (
                json!({"model": "m", "training_file": "f", "method": {"type": "dpo",
                "dpo": {"hyperparameters": {"beta": 0}}}}),
                "beta",
            ),
            (
                json!({"model": "m", "training_file": "f", "method": {"type": "supervised",
                "supervised": {"hyperparameters": {"beta": 0.1}}}}),
                "beta",
            ),
        ];
        for (input, param) in cases {
            let err = parse_create(body(input.clone())).expect_err("must fail");
            assert_eq!(err.param.as_deref(), Some(param), "{input}");
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn model_ids_are_normalised_and_bad_values_echo_a_short_prefix() {
        let valid = parse_create(body(
            json!({"model": " test-org//tiny-llama/ ", "training_file": "file-a"}),
        ))
        .expect("valid");
        assert_eq!(valid.model, "test-org/tiny-llama");
        let err = parse_create(body(json!({"model": "//", "training_file": "f"})))
            .expect_err("only slashes");
        assert_eq!(err.param.as_deref(), Some("model"));

        let long_key = "k".repeat(10_000);
        let mut metadata = Map::new();
        metadata.insert(long_key, json!(1));
        let err = parse_create(body(
            json!({"model": "m", "training_file": "f", "metadata": metadata}),
        ))
        .expect_err("non-string value");
        assert_eq!(
            err.message,
            format!("`metadata.{}…` must be a string.", "k".repeat(64))
        );
        let err = parse_create(body(json!({"model": "m", "training_file": "f",
            "method": {"type": "x".repeat(10_000)}})))
        .expect_err("bad type");
        assert!(err.message.len() < 200, "{}", err.message);
        assert!(err.message.ends_with("…."), "{}", err.message);
    }

    #[test]
    fn too_many_metadata_pairs_are_rejected() {
        let pairs: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        let err = parse_create(body(
            json!({"model": "m", "training_file": "f", "metadata": pairs}),
        ))
        .expect_err("17 pairs");
        assert_eq!(err.param.as_deref(), Some("metadata"));
    }

    #[test]
    fn a_dpo_request_is_a_typed_dpo_spec_with_its_beta() {
        let valid = parse_create(body(json!({"model": "m", "training_file": "f",
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 2}}}})))
        .expect("valid");
        let Method::Dpo {
            hyperparameters,
            beta,
        } = &valid.spec.method
        else {
            panic!("dpo expected: {:?}", valid.spec);
        };
        assert_eq!(*beta, Some(0.1));
        assert_eq!(hyperparameters.n_epochs, Some(2));
    }

    #[test]
    fn an_unknown_hyperparameter_key_is_echoed_short() {
        let key = "k".repeat(200);
        let mut hyper = Map::new();
        hyper.insert(key, json!(1));
        let err = parse_create(body(json!({"model": "m", "training_file": "f",
            "method": {"type": "dpo", "dpo": {"hyperparameters": hyper}}})))
        .expect_err("unknown key");
        assert_eq!(err.param, Some(format!("{}…", "k".repeat(64))));
        assert!(err.message.len() < 200, "{}", err.message);
    }
}
