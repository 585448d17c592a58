//! Wire helpers shared by the resources: OpenAI's list envelope, limits, the clock.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use super::ApiError;
use crate::domain::model_name::normalize_model_id;

/// `{"object":"list","data":[…],"has_more",…,"first_id","last_id"}`. The SDK pages with
/// `after = data[-1].id`, so `first_id`/`last_id` are informative only.
#[derive(Debug, Serialize)]
pub struct ListResponse<T> {
    pub object: &'static str,
    pub data: Vec<T>,
    pub has_more: bool,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

/// Anything with an id, so lists can fill `first_id`/`last_id`.
pub trait HasId {
    fn id(&self) -> &str;
}

impl<T: HasId> ListResponse<T> {
    pub fn new(data: Vec<T>, has_more: bool) -> Self {
        ListResponse {
            object: "list",
            first_id: data.first().map(|d| d.id().to_string()),
            last_id: data.last().map(|d| d.id().to_string()),
            data,
            has_more,
        }
    }
}

/// The `limit` query parameter of one list endpoint: `1..=max`, `default` when absent.
/// `openapi.yaml` states the same numbers (checked by the e2e suite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    pub default: i64,
    pub max: i64,
}

/// `GET /v1/files`: OpenAI's default and maximum.
pub const FILES_PAGE: PageLimits = PageLimits {
    default: 10_000,
    max: 10_000,
};
/// `GET /v1/fine_tuning/jobs`.
pub const JOBS_PAGE: PageLimits = PageLimits {
    default: 20,
    max: 100,
};
/// `GET /v1/fine_tuning/jobs/{id}/events`.
pub const EVENTS_PAGE: PageLimits = PageLimits {
    default: 20,
    max: 1000,
};
/// `GET /v1/fine_tuning/jobs/{id}/checkpoints`.
pub const CHECKPOINTS_PAGE: PageLimits = PageLimits {
    default: 10,
    max: 100,
};

/// Checks a `limit` query parameter against `1..=max`, defaulting to `default`.
pub fn page_limit(limit: Option<i64>, page: PageLimits) -> Result<i64, ApiError> {
    let PageLimits { default, max } = page;
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {max}, got {limit}."
        ))
        .with_param("limit"));
    }
    Ok(limit)
}

/// Unix seconds, the store's clock.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_reject_out_of_range() {
        assert_eq!(page_limit(None, JOBS_PAGE).expect("default"), 20);
        assert_eq!(page_limit(Some(100), JOBS_PAGE).expect("max"), 100);
        let err = page_limit(Some(0), JOBS_PAGE).expect_err("zero");
        assert_eq!(err.param.as_deref(), Some("limit"));
        assert!(page_limit(Some(101), JOBS_PAGE).is_err());
    }
}

/// The `model` of an inference request, normalised (`normalize_model_id`); a 400 on
/// `model` when it is missing, not a string or empty.
pub fn required_model(model: Option<&Value>) -> Result<String, ApiError> {
    let model = match model {
        Some(Value::String(model)) => normalize_model_id(model),
        _ => String::new(),
    };
    if model.is_empty() {
        return Err(
            ApiError::bad_request("`model` must be a non-empty string.").with_param("model")
        );
    }
    Ok(model)
}

/// Whether an `input` text may be the empty string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyText {
    Allowed,
    Refused,
}

/// The `input` of a text endpoint: one string or a list of 1 to `max` strings; a 400 on
/// `input` otherwise.
pub fn text_inputs(
    input: Option<Value>,
    max: usize,
    empty: EmptyText,
) -> Result<Vec<String>, ApiError> {
    let strings = match empty {
        EmptyText::Allowed => "strings",
        EmptyText::Refused => "non-empty strings",
    };
    let a_string = match empty {
        EmptyText::Allowed => "a string",
        EmptyText::Refused => "a non-empty string",
    };
    let bad_input = || {
        ApiError::bad_request(format!(
            "`input` must be {a_string} or a list of 1 to {max} {strings}."
        ))
        .with_param("input")
    };
    let inputs = match input {
        Some(Value::String(text)) => vec![text],
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= max => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                _ => Err(bad_input()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(bad_input()),
    };
    if empty == EmptyText::Refused && inputs.iter().any(String::is_empty) {
        return Err(bad_input());
    }
    Ok(inputs)
}
