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
use crate::domain::dataset::images::decode_image_payload;
use crate::domain::ids::random_base62;
use crate::infer::ClassPrediction;

pub const ROUTES: &[(Method, &str)] = &[(Method::POST, "/v1/classifications")];

/// Inputs per request; larger batches should be split by the client. The engine admits at
/// most this many texts at once (`EngineConfig::max_queued_texts`, checked by a test), so a
/// larger request could never be served.
pub const MAX_INPUTS: usize = 1024;

/// Images per request: each is prepared (decoded, resized, normalised to floats at the
/// model's size) before its round runs, so this bounds what one request holds in memory
/// (64 × 224² × 3 floats ≈ 38 MB) the way the JSON body limit bounds its bytes.
pub const MAX_IMAGE_INPUTS: usize = 64;

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
    inputs: ClassifyInputs,
}

/// Texts, or images given as OpenAI's `image_url` content parts (decoded to their bytes).
#[derive(Debug, PartialEq)]
enum ClassifyInputs {
    Texts(Vec<String>),
    Images(Vec<Vec<u8>>),
}

/// Whether `input` holds content parts (objects) rather than strings.
fn is_image_input(input: &Option<Value>) -> bool {
    match input {
        Some(Value::Object(_)) => true,
        Some(Value::Array(items)) => items.first().is_some_and(Value::is_object),
        _ => false,
    }
}

/// `{"type": "image_url", "image_url": {"url": "data:image/…;base64,…"}}` (or
/// `"image_url": "data:…"`) → the image's bytes. temper never fetches: a web URL is refused.
fn image_part(index: usize, part: &Value) -> Result<Vec<u8>, ApiError> {
    let bad = |message: String| ApiError::bad_request(message).with_param("input");
    let object = part.as_object().ok_or_else(|| {
        bad(format!(
            "`input[{index}]` must be an image_url content part like the others."
        ))
    })?;
    if object.get("type").and_then(Value::as_str) != Some("image_url") {
        return Err(bad(format!(
            "`input[{index}]` must be {{\"type\": \"image_url\", \"image_url\": {{\"url\": \"data:image/png;base64,…\"}}}}."
        )));
    }
    let url = match object.get("image_url") {
        Some(Value::String(url)) => url.as_str(),
        Some(Value::Object(inner)) => inner.get("url").and_then(Value::as_str).unwrap_or_default(),
        _ => "",
    };
    if url.is_empty() {
        return Err(bad(format!("`input[{index}].image_url.url` is missing.")));
    }
    decode_image_payload(url).map_err(|e| bad(format!("`input[{index}].image_url.url` {e}.")))
}

fn image_inputs(input: Option<Value>) -> Result<Vec<Vec<u8>>, ApiError> {
    let parts = match input {
        Some(Value::Array(items)) => items,
        Some(part) => vec![part],
        None => Vec::new(),
    };
    if parts.is_empty() || parts.len() > MAX_IMAGE_INPUTS {
        return Err(ApiError::bad_request(format!(
            "`input` must be a list of 1 to {MAX_IMAGE_INPUTS} image_url content parts; send more images in more requests."
        ))
        .with_param("input"));
    }
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| image_part(i, part))
        .collect()
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
    let inputs = if is_image_input(&body.input) {
        ClassifyInputs::Images(image_inputs(body.input)?)
    } else {
        ClassifyInputs::Texts(text_inputs(body.input, MAX_INPUTS, EmptyText::Allowed)?)
    };
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
    let model = request.model.clone();
    let predictions = match request.inputs {
        ClassifyInputs::Texts(texts) => state.inference.classify(model, texts).await?,
        ClassifyInputs::Images(images) => state.inference.classify_images(model, images).await?,
    };
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
        let texts = |v: &[&str]| ClassifyInputs::Texts(v.iter().map(|s| s.to_string()).collect());
        let one = validate(body(json!({"model": "m", "input": "hi"}))).expect("string");
        assert_eq!(one.inputs, texts(&["hi"]));
        let many = validate(body(json!({"model": "m", "input": ["a", "b"]}))).expect("list");
        assert_eq!(many.inputs, texts(&["a", "b"]));
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
    fn image_url_parts_are_decoded_and_web_urls_refused() {
        // "PNG" in base64 is "UE5H": the bytes are passed on undecoded as an image.
        let part = |url: &str| json!({"type": "image_url", "image_url": {"url": url}});
        let valid = validate(body(json!({"model": "m", "input": [
            part("data:image/png;base64,UE5H"),
            {"type": "image_url", "image_url": "UE5H"},
        ]})))
        .expect("images");
        assert_eq!(
            valid.inputs,
            ClassifyInputs::Images(vec![b"PNG".to_vec(), b"PNG".to_vec()])
        );
        for (input, needle) in [
            (
                json!([part("https://example.com/cat.png")]),
                "does not fetch",
            ),
            (
                json!([part("data:image/png;base64,@@@")]),
                "not valid base64",
            ),
            (json!([part("data:image/png,UE5H")]), "not base64"),
            (json!([{"type": "text", "text": "x"}]), "input[0]"),
            (
                json!([part("data:image/png;base64,UE5H"), "text"]),
                "input[1]",
            ),
            (json!([{"type": "image_url"}]), "input[0].image_url.url"),
        ] {
            let err = validate(body(json!({"model": "m", "input": input}))).expect_err("invalid");
            assert_eq!(err.param.as_deref(), Some("input"));
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
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
