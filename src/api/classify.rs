//! `POST /v1/classifications`: predictions from a fine-tuned classifier or checkpoint.

use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{ApiError, ApiJson};
use super::wire::{required_model, text_inputs, EmptyText};
use super::AppState;
use crate::domain::ids::random_base62;
use crate::infer::ClassPrediction;

pub const ROUTES: &[(Method, &str)] = &[(Method::POST, "/v1/classifications")];

/// Inputs per request; larger batches should be split by the client. The engine admits at
/// most this many texts at once (`EngineConfig::max_queued_texts`, checked by a test), so a
/// larger request could never be served.
pub const MAX_INPUTS: usize = 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/classifications", post(classify))
}

#[derive(Debug, Deserialize)]
pub struct ClassifyBody {
    model: Option<Value>,
    input: Option<Value>,
}

/// A validated request.
#[derive(Debug, PartialEq)]
struct ValidClassify {
    model: String,
    inputs: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ClassificationResponse {
    pub id: String,
    pub object: String,
    pub model: String,
    pub data: Vec<Classification>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Classification {
    pub index: usize,
    pub label: String,
    pub score: f32,
    /// Every label's probability; they sum to 1.
    pub scores: Map<String, Value>,
}

fn validate(body: ClassifyBody) -> Result<ValidClassify, ApiError> {
    let model = required_model(body.model.as_ref())?;
    let inputs = text_inputs(body.input, MAX_INPUTS, EmptyText::Allowed)?;
    Ok(ValidClassify { model, inputs })
}

fn to_wire(index: usize, prediction: ClassPrediction) -> Classification {
    let scores = prediction
        .scores
        .into_iter()
        .map(|(label, p)| (label, Value::from(f64::from(p))))
        .collect();
    Classification {
        index,
        label: prediction.label,
        score: prediction.score,
        scores,
    }
}

async fn classify(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ClassifyBody>,
) -> Result<ApiJson<ClassificationResponse>, ApiError> {
    let request = validate(body)?;
    let predictions = state
        .inference
        .classify(request.model.clone(), request.inputs)
        .await?;
    Ok(ApiJson(ClassificationResponse {
        id: format!("classif-{}", random_base62(24)),
        object: "list".to_string(),
        model: request.model,
        data: predictions
            .into_iter()
            .enumerate()
            .map(|(i, p)| to_wire(i, p))
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> ClassifyBody {
        serde_json::from_value(value).expect("shape")
    }

    #[test]
    fn input_may_be_a_string_or_a_list() {
        let one = validate(body(json!({"model": "m", "input": "hi"}))).expect("string");
        assert_eq!(one.inputs, ["hi"]);
        let many = validate(body(json!({"model": "m", "input": ["a", "b"]}))).expect("list");
        assert_eq!(many.inputs, ["a", "b"]);
    }

    #[test]
    fn the_input_limit_is_what_the_engine_admits() {
        assert_eq!(
            MAX_INPUTS,
            crate::infer::EngineConfig::default().max_queued_texts
        );
        let inputs = vec![json!("x"); MAX_INPUTS];
        assert!(validate(body(json!({"model": "m", "input": inputs}))).is_ok());
        let inputs = vec![json!("x"); MAX_INPUTS + 1];
        let err = validate(body(json!({"model": "m", "input": inputs}))).expect_err("1025");
        assert_eq!(err.param.as_deref(), Some("input"));
        assert!(err.message.contains("1 to 1024"), "{}", err.message);
    }

    #[test]
    fn model_ids_are_normalised() {
        let valid = validate(body(json!({"model": " org//m/ ", "input": "x"}))).expect("valid");
        assert_eq!(valid.model, "org/m");
    }

    #[test]
    fn bad_requests_name_their_param() {
        for (input, param) in [
            (json!({"input": "x"}), "model"),
            (json!({"model": " / ", "input": "x"}), "model"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": []}), "input"),
            (json!({"model": "m", "input": [1]}), "input"),
        ] {
            let err = validate(body(input.clone())).expect_err("invalid");
            assert_eq!(err.param.as_deref(), Some(param), "{input}");
        }
    }
}
