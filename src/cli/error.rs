//! `CliError`: every way a client subcommand ends badly, each printed as one line and
//! mapped to an exit code (the codes are listed in `config::client::CLIENT_AFTER_HELP`).

use std::process::ExitCode;

use serde_json::Value;

/// The request failed: the server's error, no server, an unreadable file.
pub const EXIT_REQUEST_FAILED: u8 = 1;
/// Bad arguments: clap's own code, and ours for what clap cannot check.
pub const EXIT_USAGE: u8 = 2;
/// `jobs watch`: the job ended `failed`.
pub const EXIT_JOB_FAILED: u8 = 3;
/// `jobs watch`: the job ended `cancelled`.
pub const EXIT_JOB_CANCELLED: u8 = 4;
/// `jobs watch`: the job is `paused`, which lasts until someone resumes it.
pub const EXIT_JOB_PAUSED: u8 = 5;

/// Characters of a non-JSON error body shown (a proxy's HTML page can be long).
const BODY_EXCERPT_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server's OpenAI envelope `{"error":{"message","type","param","code"}}`.
    #[error("{message} ({})", [vec![format!("HTTP {status}")], details(code, param)].concat().join(", "))]
    Api {
        status: u16,
        message: String,
        code: Option<String>,
        param: Option<String>,
    },
    #[error("cannot connect to {base_url}: {detail}. Is `temper serve` running there? (set --base-url or OPENAI_BASE_URL)")]
    Connect { base_url: String, detail: String },
    #[error("request to {url} failed: {detail}")]
    Http { url: String, detail: String },
    /// `data: {"error": …}` inside a streamed reply: the generation failed midway.
    #[error("the reply stream failed: {message}{}", parenthesized(&details(code, param)))]
    Stream {
        message: String,
        code: Option<String>,
        param: Option<String>,
    },
    #[error("{0}")]
    Usage(String),
    #[error("reading {path}: {detail}")]
    ReadFile { path: String, detail: String },
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("job {id} failed: {message}{}", parenthesized(&details(code, param)))]
    JobFailed {
        id: String,
        message: String,
        code: Option<String>,
        param: Option<String>,
    },
    #[error("job {id} was cancelled")]
    JobCancelled { id: String },
    #[error("job {id} is paused: `temper jobs resume {id}`, then watch it again")]
    JobPaused { id: String },
}

impl CliError {
    /// A failure that may pass by itself: no server (restarting), a dropped connection, or
    /// the server's 429 or 5xx. `jobs watch` polls on through these for a while.
    pub fn is_transient(&self) -> bool {
        match self {
            CliError::Connect { .. } | CliError::Http { .. } => true,
            CliError::Api { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// "code `c`", "param `p`": the parts that are set.
fn details(code: &Option<String>, param: &Option<String>) -> Vec<String> {
    [("code", code), ("param", param)]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name} `{v}`")))
        .collect()
}

/// ` (a, b)`, or nothing for no parts.
fn parenthesized(parts: &[String]) -> String {
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

impl CliError {
    /// A non-2xx reply: the envelope's fields, or an excerpt of whatever the body is.
    pub fn from_reply(status: u16, body: &str) -> CliError {
        let envelope: Option<Value> = serde_json::from_str(body).ok();
        let error = envelope.as_ref().and_then(|e| e.get("error"));
        let text = |key: &str| {
            error
                .and_then(|e| e.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let message = text("message").unwrap_or_else(|| {
            let excerpt: String = body.trim().chars().take(BODY_EXCERPT_CHARS).collect();
            if excerpt.is_empty() {
                "the server sent no error message".to_string()
            } else {
                excerpt
            }
        });
        CliError::Api {
            status,
            message,
            code: text("code"),
            param: text("param"),
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::JobFailed { .. } => EXIT_JOB_FAILED,
            CliError::JobCancelled { .. } => EXIT_JOB_CANCELLED,
            CliError::JobPaused { .. } => EXIT_JOB_PAUSED,
            _ => EXIT_REQUEST_FAILED,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_that_may_pass_by_themselves_are_transient() {
        let api = |status| CliError::Api {
            status,
            message: "m".into(),
            code: None,
            param: None,
        };
        assert!(api(503).is_transient() && api(502).is_transient() && api(429).is_transient());
        assert!(!api(404).is_transient() && !api(401).is_transient() && !api(400).is_transient());
        let connect = CliError::Connect {
            base_url: "http://127.0.0.1:9/v1".into(),
            detail: "refused".into(),
        };
        assert!(connect.is_transient());
        assert!(!CliError::JobCancelled {
            id: "ftjob-1".into()
        }
        .is_transient());
    }

    #[test]
    fn an_envelope_becomes_one_line_with_its_code_and_param() {
        let body = r#"{"error":{"message":"No such FineTuningJob object: ftjob-x","type":"invalid_request_error","param":"id","code":null}}"#;
        let error = CliError::from_reply(404, body);
        assert_eq!(
            error.to_string(),
            "No such FineTuningJob object: ftjob-x (HTTP 404, param `id`)"
        );
        assert_eq!(error.exit_code(), ExitCode::from(1));
        let coded = CliError::from_reply(
            400,
            r#"{"error":{"message":"bad","type":"invalid_request_error","param":"n_epochs","code":"invalid_hyperparameter"}}"#,
        );
        assert_eq!(
            coded.to_string(),
            "bad (HTTP 400, code `invalid_hyperparameter`, param `n_epochs`)"
        );
    }

    #[test]
    fn a_body_without_an_envelope_is_shown_short() {
        let long = "x".repeat(500);
        let error = CliError::from_reply(502, &long);
        assert_eq!(error.to_string(), format!("{} (HTTP 502)", "x".repeat(200)));
        assert_eq!(
            CliError::from_reply(500, "").to_string(),
            "the server sent no error message (HTTP 500)"
        );
    }

    #[test]
    fn job_endings_have_their_own_exit_codes() {
        let failed = CliError::JobFailed {
            id: "ftjob-1".into(),
            message: "too few".into(),
            code: Some("invalid_n_examples".into()),
            param: None,
        };
        assert_eq!(
            failed.to_string(),
            "job ftjob-1 failed: too few (code `invalid_n_examples`)"
        );
        assert_eq!(failed.exit_code(), ExitCode::from(3));
        let cancelled = CliError::JobCancelled {
            id: "ftjob-1".into(),
        };
        assert_eq!(cancelled.exit_code(), ExitCode::from(4));
        let paused = CliError::JobPaused {
            id: "ftjob-1".into(),
        };
        assert_eq!(paused.exit_code(), ExitCode::from(5));
        assert!(paused.to_string().contains("temper jobs resume ftjob-1"));
    }
}
