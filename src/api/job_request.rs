//! `POST /v1/fine_tuning/jobs` body → `ValidJobRequest`: every field checked, each error a
//! 400 naming its param. Checks that need the store (files, base model) live in `jobs.rs`.

use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::echo;
use super::ApiError;
use crate::domain::hyperparams::HyperparamRequest;
use crate::domain::model_name::{normalize_model_id, validate_suffix};

/// OpenAI's seed range.
pub const MAX_SEED: i64 = 2_147_483_647;
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;
/// OpenAI's three knobs, echoed in the legacy `hyperparameters` object.
const LEGACY_KEYS: [&str; 3] = ["batch_size", "learning_rate_multiplier", "n_epochs"];

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

/// A create request that passed every check that needs no IO.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJobRequest {
    pub model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub suffix: Option<String>,
    pub seed: i64,
    pub metadata: Option<Value>,
    /// `FineTuneMethod` echo: `{"type", "<type>": {"hyperparameters": {…}}}`.
    pub method: Value,
    /// Legacy `{batch_size, learning_rate_multiplier, n_epochs}` ("auto" until resolved);
    /// `null` for DPO, as OpenAI returns it.
    pub hyperparameters: Value,
    pub hyperparams: HyperparamRequest,
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

fn object_or_empty(value: Option<&Value>, param: &str) -> Result<Map<String, Value>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(_) => Err(invalid(param, format!("`{param}` must be an object."))),
    }
}

/// The method type and its merged hyperparameters (method's keys over the deprecated
/// top-level object).
fn method_hyperparameters(
    method: Option<&Value>,
    legacy: Option<&Value>,
) -> Result<(String, Map<String, Value>), ApiError> {
    let mut merged = object_or_empty(legacy, "hyperparameters")?;
    let method = object_or_empty(method, "method")?;
    let kind = match method.get("type") {
        None | Some(Value::Null) => "supervised".to_string(),
        Some(Value::String(kind)) if kind == "supervised" || kind == "dpo" => kind.clone(),
        Some(Value::String(kind)) if kind == "reinforcement" => {
            return Err(invalid(
                "method.type",
                "Reinforcement fine-tuning is not supported by temper.",
            ))
        }
        Some(other) => {
            return Err(invalid(
                "method.type",
                format!(
                    "`method.type` must be `supervised` or `dpo`, got {}.",
                    echo(&other.to_string())
                ),
            ))
        }
    };
    let section = object_or_empty(method.get(&kind), &format!("method.{kind}"))?;
    let hyper = object_or_empty(
        section.get("hyperparameters"),
        &format!("method.{kind}.hyperparameters"),
    )?;
    merged.extend(hyper);
    Ok((kind, merged))
}

/// DPO's `beta` ("auto" or 0–2) is not a trainer knob yet; it is checked and echoed.
fn take_beta(hyper: &mut Map<String, Value>) -> Result<Option<Value>, ApiError> {
    let Some(beta) = hyper.remove("beta") else {
        return Ok(None);
    };
    let ok =
        beta.as_str() == Some("auto") || beta.as_f64().is_some_and(|b| (0.0..=2.0).contains(&b));
    if !ok {
        return Err(invalid(
            "beta",
            "`beta` must be \"auto\" or a number between 0 and 2.",
        ));
    }
    Ok(Some(beta))
}

/// `"auto"` for every legacy knob the user left unset, else the value they gave.
fn legacy_echo(hyper: &Map<String, Value>) -> Value {
    let mut echo = Map::new();
    for key in LEGACY_KEYS {
        let value = hyper
            .get(key)
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or_else(|| json!("auto"));
        echo.insert(key.to_string(), value);
    }
    Value::Object(echo)
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

pub fn parse_create(body: CreateJobBody) -> Result<ValidJobRequest, ApiError> {
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
    let (kind, mut hyper) =
        method_hyperparameters(body.method.as_ref(), body.hyperparameters.as_ref())?;
    let beta = take_beta(&mut hyper)?;
    let hyperparams = HyperparamRequest::parse(&hyper)?;
    let mut echoed = hyper.clone();
    for (key, value) in legacy_echo(&hyper).as_object().into_iter().flatten() {
        echoed.insert(key.clone(), value.clone());
    }
    if let Some(beta) = beta {
        echoed.insert("beta".to_string(), beta);
    }
    let hyperparameters = if kind == "supervised" {
        legacy_echo(&hyper)
    } else {
        Value::Null
    };
    let mut method = Map::new();
    method.insert("type".to_string(), json!(kind));
    method.insert(kind.clone(), json!({ "hyperparameters": echoed }));
    let method = Value::Object(method);
    Ok(ValidJobRequest {
        model,
        training_file,
        validation_file,
        suffix,
        seed,
        metadata,
        method,
        hyperparameters,
        hyperparams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> CreateJobBody {
        serde_json::from_value(value).expect("body shape")
    }

    #[test]
    fn minimal_request_gets_auto_hyperparameters_and_a_seed() {
        let valid = parse_create(body(json!({"model": "org/m", "training_file": "file-a"})))
            .expect("valid");
        assert_eq!(
            valid.hyperparameters,
            json!({"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"})
        );
        assert_eq!(valid.method["type"], "supervised");
        assert_eq!(
            valid.method["supervised"]["hyperparameters"]["n_epochs"],
            "auto"
        );
        assert!((0..=MAX_SEED).contains(&valid.seed));
        assert_eq!(valid.hyperparams, HyperparamRequest::default());
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
        assert_eq!(valid.hyperparams.n_epochs, Some(3));
        assert_eq!(valid.hyperparams.batch_size, Some(4));
        assert_eq!(valid.hyperparams.lora_rank, Some(8));
        assert_eq!(valid.hyperparameters["n_epochs"], 3);
        assert_eq!(
            valid.method["supervised"]["hyperparameters"]["lora_rank"],
            8
        );
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
    fn dpo_has_null_legacy_hyperparameters_and_echoes_beta() {
        let valid = parse_create(body(json!({"model": "m", "training_file": "f",
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}})))
        .expect("valid");
        assert_eq!(valid.hyperparameters, Value::Null);
        assert_eq!(valid.method["dpo"]["hyperparameters"]["beta"], 0.1);
    }
}
