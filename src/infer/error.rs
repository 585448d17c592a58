//! The inference layer's error; `api` maps it to HTTP in one place
//! (`ModelNotFound` → 404, `Overloaded` → 429, `InvalidRequest` → 400, `Engine` → 500,
//! `ContextLengthExceeded` → 400 with the code `context_length_exceeded`).

/// Errors from resolving, loading and running a served model.
///
/// `Clone` because one failed load is reported to every request that waited on it
/// (the registry keeps it as `Failed(Arc<InferError>)` and hands each waiter a copy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// The catalog does not know this model name.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// `ModelNotFound` with what does exist: `hint` names the closest id and the ids
    /// available (`basemodels::not_found_hint`), added where the models dir is known.
    #[error("The model `{model}` does not exist or you do not have access to it.{hint}")]
    ModelNotFoundWithHint { model: String, hint: String },
    /// The model's queue is full; the client should retry later.
    #[error("The model is overloaded with requests; retry later.")]
    Overloaded,
    /// The request cannot be served as given; `param` names the offending field.
    #[error("{message}")]
    InvalidRequest { param: String, message: String },
    /// Prompt + completion exceed the model's context: a 400 with OpenAI's code
    /// `context_length_exceeded`; `param` names the prompt or the token limit.
    #[error("{message}")]
    ContextLengthExceeded { param: String, message: String },
    /// Loading or running the model failed; detail for the logs, not for clients.
    #[error("inference engine error: {0}")]
    Engine(String),
}

impl InferError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            param: param.to_string(),
            message: message.into(),
        }
    }

    pub fn engine(error: impl std::fmt::Display) -> Self {
        Self::Engine(error.to_string())
    }
}
