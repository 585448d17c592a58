//! The one HTTP error: `ApiError` renders OpenAI's envelope
//! `{"error":{"message","type","param","code"}}`, and every layer error maps to it here.
//!
//! Status choices, with the SDK's retry rule in mind (it retries 408/409/429/5xx and sends
//! no idempotency key): 400 for bad input, for permanent conflicts (never 409) and for a
//! request body that ended early (a client that went away is not our failure), 401 for a
//! missing or wrong key, 404 for missing objects, 413 for uploads and JSON bodies over
//! their limit, 429 (with `Retry-After`) when an engine is saturated, 500 for our own
//! failures, with a generic message (the cause is logged, never sent).
//!
//! Messages never echo more than [`ECHO_CHARS`] characters of a value the client sent:
//! [`echo`] for one value, [`shorten_quoted`] for text (serde's) that quotes values.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::blobs::BlobError;
use crate::domain::dataset::DatasetError;
use crate::domain::hyperparams::HyperparamError;
use crate::infer::InferError;
use crate::store::StoreError;

pub use crate::domain::{echo, ECHO_CHARS};

const GENERIC_SERVER_MESSAGE: &str =
    "The server had an error while processing your request. Sorry about that!";

/// Seconds a client should wait after a 429 (`Retry-After`): an engine frees its queue
/// within one batch, so a second is enough and keeps the SDK's backoff short.
pub const RETRY_AFTER_SECS: u64 = 1;

/// `text` with every double-quoted run longer than [`ECHO_CHARS`] cut to that many
/// characters and `…`: serde's messages quote the offending value (`invalid type: string
/// "…"`), which may be megabytes long.
pub fn shorten_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(4 * ECHO_CHARS));
    let mut quoted: Option<usize> = None;
    for c in text.chars() {
        match (c, quoted) {
            ('"', Some(_)) => {
                quoted = None;
                out.push(c);
            }
            ('"', None) => {
                quoted = Some(0);
                out.push(c);
            }
            (_, Some(n)) if n < ECHO_CHARS => {
                quoted = Some(n + 1);
                out.push(c);
            }
            (_, Some(n)) if n == ECHO_CHARS => {
                quoted = Some(n + 1);
                out.push('…');
            }
            (_, Some(_)) => {}
            (_, None) => out.push(c),
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error` for 4xx, `server_error` for 5xx.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
    pub message: String,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn client(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind: "invalid_request_error",
            param: None,
            code: None,
            message: message.into(),
        }
    }

    /// 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::client(StatusCode::BAD_REQUEST, message)
    }

    /// 404 `invalid_request_error`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::client(StatusCode::NOT_FOUND, message)
    }

    /// 401 `invalid_api_key`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::client(StatusCode::UNAUTHORIZED, message).with_code("invalid_api_key")
    }

    /// 413: an upload over the configured limit.
    pub fn too_large(limit: u64) -> ApiError {
        ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The file is larger than the maximum upload size of {limit} bytes."),
        )
        .with_code("file_too_large")
        .with_param("file")
    }

    /// 413 `request_too_large`: a JSON body over `limit` bytes.
    pub fn request_too_large(limit: usize) -> ApiError {
        ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The request body is larger than the limit of {limit} bytes."),
        )
        .with_code("request_too_large")
    }

    /// 429 `rate_limit_exceeded`; the response carries `Retry-After`.
    pub fn overloaded() -> ApiError {
        ApiError::client(
            StatusCode::TOO_MANY_REQUESTS,
            "The model is overloaded with requests; retry shortly.",
        )
        .with_code("rate_limit_exceeded")
    }

    /// 404 `model_not_found` with OpenAI's text.
    pub fn model_not_found(model: &str) -> ApiError {
        ApiError::not_found(format!(
            "The model `{}` does not exist or you do not have access to it.",
            echo(model)
        ))
        .with_code("model_not_found")
        .with_param("model")
    }

    /// [`ApiError::model_not_found`] followed by `hint` (`basemodels::not_found_hint`: the
    /// closest model id and the ids that exist).
    pub fn model_not_found_with_hint(model: &str, hint: &str) -> ApiError {
        let mut error = ApiError::model_not_found(model);
        error.message.push_str(hint);
        error
    }

    /// 500 with a generic message; `cause` is logged, never sent.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(%cause, "request failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            param: None,
            code: None,
            message: GENERIC_SERVER_MESSAGE.to_string(),
        }
    }

    /// 507 `insufficient_storage`: the server's disk is full. `cause` is logged, never sent.
    pub fn insufficient_storage(cause: impl std::fmt::Display) -> ApiError {
        tracing::warn!(%cause, "request refused: the data disk is full");
        ApiError {
            status: StatusCode::INSUFFICIENT_STORAGE,
            kind: "server_error",
            param: None,
            code: Some("insufficient_storage".to_string()),
            message: "The server's disk is full, so this request could not be stored. Free space \
                      (for example with DELETE /v1/files/{file_id}) and retry."
                .to_string(),
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> ApiError {
        self.code = Some(code.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let envelope = Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        };
        let mut response = (self.status, axum::Json(envelope)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(RETRY_AFTER_SECS));
        }
        if self.status.is_server_error() {
            // A 5xx may follow a write that happened; the SDK must not retry blindly.
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::NotFound => ApiError::not_found("No such object."),
            StoreError::Conflict(what) => ApiError::bad_request(format!("Conflict: {what}.")),
            full if full.is_storage_full() => ApiError::insufficient_storage(full),
            other => ApiError::internal(other),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(error: BlobError) -> ApiError {
        match error {
            BlobError::TooLarge { limit } => ApiError::too_large(limit),
            full if full.is_storage_full() => ApiError::insufficient_storage(full),
            other => ApiError::internal(other),
        }
    }
}

impl From<InferError> for ApiError {
    fn from(error: InferError) -> ApiError {
        match error {
            InferError::ModelNotFound(model) => ApiError::model_not_found(&model),
            InferError::ModelNotFoundWithHint { model, hint } => {
                ApiError::model_not_found_with_hint(&model, &hint)
            }
            InferError::Overloaded => ApiError::overloaded(),
            InferError::InvalidRequest { param, message } => {
                ApiError::bad_request(message).with_param(param)
            }
            InferError::ContextLengthExceeded { param, message } => ApiError::bad_request(message)
                .with_param(param)
                .with_code("context_length_exceeded"),
            other => ApiError::internal(other),
        }
    }
}

impl From<HyperparamError> for ApiError {
    /// The param is the client's key (`Unknown hyperparameter `…``), so it is echoed short.
    fn from(error: HyperparamError) -> ApiError {
        let param = echo(&error.param);
        let message = error.message.replace(&error.param, &param);
        ApiError::bad_request(message).with_param(param)
    }
}

impl From<DatasetError> for ApiError {
    fn from(error: DatasetError) -> ApiError {
        ApiError::bad_request(error.message)
            .with_param("file")
            .with_code("invalid_file_format")
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::request_too_large(super::JSON_BODY_LIMIT_BYTES);
        }
        let message = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "Expected a request body with `Content-Type: application/json`.".to_string()
            }
            other => format!(
                "We could not parse the JSON body of your request. ({})",
                shorten_quoted(&other.body_text())
            ),
        };
        ApiError::bad_request(message)
    }
}

/// `axum::Json` whose rejections use the OpenAI envelope.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` whose rejections use the OpenAI envelope.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::bad_request(format!(
            "Invalid query parameters: {}",
            shorten_quoted(&rejection.body_text())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(error: ApiError) -> (StatusCode, serde_json::Value, bool) {
        let response = error.into_response();
        let status = response.status();
        let no_retry = response.headers().get("x-should-retry").is_some();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).expect("json"),
            no_retry,
        )
    }

    #[tokio::test]
    async fn envelope_has_all_four_keys() {
        let (status, body, no_retry) =
            body_of(ApiError::not_found("No such File object: file-x").with_param("id")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            serde_json::json!({"error": {"message": "No such File object: file-x",
                "type": "invalid_request_error", "param": "id", "code": null}})
        );
        assert!(!no_retry);
    }

    #[tokio::test]
    async fn server_errors_hide_their_cause() {
        let (status, body, no_retry) = body_of(ApiError::internal("disk on fire at /secret")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["type"], "server_error");
        assert!(!body.to_string().contains("secret"));
        assert!(no_retry);
    }

    #[test]
    fn echoes_keep_a_short_prefix() {
        let exact = "a".repeat(ECHO_CHARS);
        assert_eq!(echo(&exact), exact);
        assert_eq!(echo(&"a".repeat(500)), format!("{exact}…"));
        let accents = "é".repeat(100);
        assert_eq!(echo(&accents), format!("{}…", "é".repeat(ECHO_CHARS)));
        let serde = format!(
            "invalid type: string \"{}\", expected f64",
            "z".repeat(10_000)
        );
        assert_eq!(
            shorten_quoted(&serde),
            format!(
                "invalid type: string \"{}…\", expected f64",
                "z".repeat(ECHO_CHARS)
            )
        );
        assert_eq!(shorten_quoted("a \"short\" one"), "a \"short\" one");
    }

    #[tokio::test]
    async fn too_many_requests_carry_retry_after() {
        let response = ApiError::overloaded().into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let (_, body, no_retry) = body_of(InferError::Overloaded.into()).await;
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert!(!no_retry);
    }

    #[tokio::test]
    async fn layer_errors_map_to_statuses() {
        let hyper = HyperparamError {
            param: "n_epochs".into(),
            message: "`n_epochs` must be between 1 and 50, got 0".into(),
        };
        let (status, body, _) = body_of(hyper.into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["param"], "n_epochs");
        let key = "k".repeat(1000);
        let unknown = HyperparamError {
            param: key.clone(),
            message: format!("Unknown hyperparameter `{key}`"),
        };
        let (_, body, _) = body_of(unknown.into()).await;
        let short = format!("{}…", "k".repeat(ECHO_CHARS));
        assert_eq!(body["error"]["param"], short.as_str());
        assert_eq!(
            body["error"]["message"],
            format!("Unknown hyperparameter `{short}`")
        );
        let (status, _, _) = body_of(BlobError::TooLarge { limit: 10 }.into()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let (status, body, _) = body_of(StoreError::Conflict("model".into()).into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let (status, body, _) = body_of(InferError::ModelNotFound("m".into()).into()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "model_not_found");
    }
}
