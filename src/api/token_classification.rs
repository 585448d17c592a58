//! `POST /v1/token_classifications`: entities from a fine-tuned token classifier (NER), like
//! transformers' token-classification pipeline: `aggregation` `simple` (the default) groups
//! sub-word tokens into entity spans (`entity_group`), `none` gives one entry per token
//! (`entity`, plus the token's `index`); `start` / `end` are character offsets into the text.

use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, ApiJson};
use super::wire::{required_model, text_inputs, EmptyText};
use super::AppState;
use crate::domain::ids::random_base62;
use crate::infer::{Aggregation, TokenEntity};

pub const ROUTES: &[(Method, &str)] = &[(Method::POST, "/v1/token_classifications")];

/// Texts per request, as for `/v1/classifications`: the engine admits at most this many
/// texts at once (`EngineConfig::max_queued_texts`), so a larger request could never run.
pub const MAX_INPUTS: usize = 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/token_classifications", post(classify_tokens))
}

#[derive(Debug, Deserialize)]
pub struct TokenClassificationBody {
    model: Option<Value>,
    input: Option<Value>,
    aggregation: Option<Value>,
}

#[derive(Debug, PartialEq)]
struct ValidTokenClassification {
    model: String,
    inputs: Vec<String>,
    aggregation: Aggregation,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TokenClassificationResponse {
    pub id: String,
    pub object: String,
    pub model: String,
    pub data: Vec<TaggedText>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TaggedText {
    pub index: usize,
    pub entities: Vec<Entity>,
}

/// The pipeline's entity dict: `entity_group` when aggregated, `entity` and `index` when not.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Entity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    pub score: f32,
    /// The token's position in the model's input (`[CLS]` = 0); `none` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub word: String,
    /// Character offsets into the input text.
    pub start: usize,
    pub end: usize,
}

fn validate(body: TokenClassificationBody) -> Result<ValidTokenClassification, ApiError> {
    let model = required_model(body.model.as_ref())?;
    let inputs = text_inputs(body.input, MAX_INPUTS, EmptyText::Refused)?;
    let aggregation = match body.aggregation {
        None | Some(Value::Null) => Aggregation::default(),
        Some(value) => serde_json::from_value(value).map_err(|_| {
            ApiError::bad_request("`aggregation` must be \"simple\" or \"none\".")
                .with_param("aggregation")
        })?,
    };
    Ok(ValidTokenClassification {
        model,
        inputs,
        aggregation,
    })
}

fn to_wire(entity: TokenEntity, aggregation: Aggregation) -> Entity {
    let (entity_group, label) = match aggregation {
        Aggregation::Simple => (Some(entity.label), None),
        Aggregation::None => (None, Some(entity.label)),
    };
    Entity {
        entity_group,
        entity: label,
        score: entity.score,
        index: entity.index,
        word: entity.word,
        start: entity.start,
        end: entity.end,
    }
}

async fn classify_tokens(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TokenClassificationBody>,
) -> Result<ApiJson<TokenClassificationResponse>, ApiError> {
    let request = validate(body)?;
    let aggregation = request.aggregation;
    let tagged = state
        .inference
        .classify_tokens(request.model.clone(), request.inputs, aggregation)
        .await?;
    Ok(ApiJson(TokenClassificationResponse {
        id: format!("tokcls-{}", random_base62(24)),
        object: "list".to_string(),
        model: request.model,
        data: tagged
            .into_iter()
            .enumerate()
            .map(|(index, entities)| TaggedText {
                index,
                entities: entities
                    .into_iter()
                    .map(|e| to_wire(e, aggregation))
                    .collect(),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> TokenClassificationBody {
        serde_json::from_value(value).expect("shape")
    }

    #[test]
    fn one_text_or_a_list_and_simple_by_default() {
        let one = validate(body(json!({"model": "m", "input": "paris is nice"}))).expect("one");
        assert_eq!(one.inputs, ["paris is nice"]);
        assert_eq!(one.aggregation, Aggregation::Simple);
        let many = validate(body(
            json!({"model": "m", "input": ["a", "b"], "aggregation": "none"}),
        ))
        .expect("many");
        assert_eq!(many.inputs, ["a", "b"]);
        assert_eq!(many.aggregation, Aggregation::None);
        let null = validate(body(
            json!({"model": "m", "input": "a", "aggregation": null}),
        ));
        assert_eq!(null.expect("null").aggregation, Aggregation::Simple);
    }

    #[test]
    fn bad_requests_name_their_param() {
        let too_many = vec![json!("x"); MAX_INPUTS + 1];
        for (input, param) in [
            (json!({"input": "x"}), "model"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": []}), "input"),
            (json!({"model": "m", "input": ""}), "input"),
            (json!({"model": "m", "input": ["a", ""]}), "input"),
            (json!({"model": "m", "input": too_many}), "input"),
            (json!({"model": "m", "input": [1]}), "input"),
            (
                json!({"model": "m", "input": "a", "aggregation": "first"}),
                "aggregation",
            ),
            (
                json!({"model": "m", "input": "a", "aggregation": 1}),
                "aggregation",
            ),
        ] {
            let err = validate(body(input.clone())).expect_err("invalid");
            assert_eq!(err.param.as_deref(), Some(param), "{input}");
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn entities_are_spelled_as_the_pipeline_spells_them() {
        let entity = |index| TokenEntity {
            label: "LOC".into(),
            score: 0.5,
            index,
            word: "paris".into(),
            start: 0,
            end: 5,
        };
        let grouped = serde_json::to_value(to_wire(entity(None), Aggregation::Simple));
        assert_eq!(
            grouped.expect("json"),
            json!({"entity_group": "LOC", "score": 0.5, "word": "paris", "start": 0, "end": 5})
        );
        let token = serde_json::to_value(to_wire(entity(Some(1)), Aggregation::None));
        assert_eq!(
            token.expect("json"),
            json!({"entity": "LOC", "score": 0.5, "index": 1, "word": "paris", "start": 0, "end": 5})
        );
    }
}
