//! `ApiClient`: the base URL and key of one server, and the requests the subcommands make.
//! Every reply passes through [`ApiClient::send`], so a non-2xx status always becomes the
//! server's error message and a refused connection always names the base URL.

use std::path::Path;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::error::CliError;
use crate::config::client::Connection;
use crate::config::ApiKey;

/// Long enough for a busy host, short enough that a wrong address fails while the user
/// still waits; requests themselves have no deadline (uploads and streams are long).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An id as one path segment: only RFC 3986's unreserved characters stay as they are, so
/// an id holding `/`, `?` or `#` cannot reach another route.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// One page of OpenAI's list envelope.
#[derive(Debug, Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
}

pub struct ApiClient {
    http: reqwest::Client,
    /// Without a trailing `/`; paths start with one.
    base_url: String,
    api_key: Option<ApiKey>,
}

impl ApiClient {
    pub fn new(connection: &Connection) -> Result<ApiClient, CliError> {
        let base_url = connection.base_url.trim_end_matches('/').to_string();
        match reqwest::Url::parse(&base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => {
                return Err(CliError::Usage(format!(
                    "the base URL `{base_url}` is not an http(s) URL (set --base-url or OPENAI_BASE_URL, e.g. http://127.0.0.1:8080/v1)"
                )))
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("temper-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| CliError::Http {
                url: base_url.clone(),
                detail: innermost(&error),
            })?;
        Ok(ApiClient {
            http,
            base_url,
            api_key: connection
                .api_key
                .clone()
                .filter(|key| !key.expose().is_empty()),
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        match &self.api_key {
            Some(key) => request.bearer_auth(key.expose()),
            None => request,
        }
    }

    /// Sends `request`; any non-2xx reply becomes [`CliError::Api`].
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, CliError> {
        let response = request
            .send()
            .await
            .map_err(|error| self.transport_error(&error))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(CliError::from_reply(status.as_u16(), &body))
    }

    /// A failure below HTTP: the connection (naming the base URL) or the transfer.
    pub fn transport_error(&self, error: &reqwest::Error) -> CliError {
        let url = error.url().map_or(&*self.base_url, reqwest::Url::as_str);
        if error.is_connect() {
            CliError::Connect {
                base_url: self.base_url.clone(),
                detail: innermost(error),
            }
        } else {
            CliError::Http {
                url: url.to_string(),
                detail: innermost(error),
            }
        }
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, CliError> {
        let response = self.send(request).await?;
        let url = response.url().to_string();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.transport_error(&error))?;
        serde_json::from_slice(&bytes).map_err(|error| CliError::Http {
            url,
            detail: format!("unexpected reply ({error})"),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.json(self.request(Method::GET, path)).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, CliError> {
        self.json(self.request(Method::POST, path).json(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.json(self.request(Method::DELETE, path)).await
    }

    /// `POST /files`: the file streamed from disk as multipart `file`, plus `purpose`.
    pub async fn upload(&self, path: &Path, purpose: &str) -> Result<Value, CliError> {
        let form = reqwest::multipart::Form::new()
            .text("purpose", purpose.to_string())
            .file("file", path)
            .await
            .map_err(|error| CliError::ReadFile {
                path: path.display().to_string(),
                detail: error.to_string(),
            })?;
        self.json(self.request(Method::POST, "/files").multipart(form))
            .await
    }

    /// `POST /chat/completions` with a streamed reply: the response, body unread.
    pub async fn stream_chat(&self, body: &Value) -> Result<Response, CliError> {
        self.send(self.request(Method::POST, "/chat/completions").json(body))
            .await
    }
}

/// A reply kept as JSON (for `--json`) read into its wire type.
pub fn parse<T: DeserializeOwned>(value: Value) -> Result<T, CliError> {
    serde_json::from_value(value).map_err(|error| CliError::Http {
        url: "the server".to_string(),
        detail: format!("unexpected reply ({error})"),
    })
}

/// `id` percent-encoded as one path segment.
pub fn segment(id: &str) -> String {
    utf8_percent_encode(id, PATH_SEGMENT).to_string()
}

/// The deepest cause's text ("Connection refused (os error 111)"): reqwest's own message
/// says only "error sending request".
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(base_url: &str) -> Connection {
        Connection {
            base_url: base_url.to_string(),
            api_key: None,
        }
    }

    #[test]
    fn the_base_url_must_be_http_and_loses_its_trailing_slash() {
        let client = ApiClient::new(&connection("http://127.0.0.1:8080/v1/")).expect("valid");
        assert_eq!(client.base_url, "http://127.0.0.1:8080/v1");
        for bad in ["127.0.0.1:8080/v1", "ftp://host/v1", "not a url"] {
            let error = ApiClient::new(&connection(bad))
                .err()
                .map(|e| e.to_string());
            assert!(
                error
                    .as_deref()
                    .is_some_and(|e| e.contains("OPENAI_BASE_URL")),
                "{bad}: {error:?}"
            );
        }
    }

    #[test]
    fn an_empty_key_is_no_key() {
        let mut with_key = connection("http://h/v1");
        with_key.api_key = Some(ApiKey::new("sk-1"));
        let client = ApiClient::new(&with_key).expect("valid");
        assert_eq!(client.api_key.as_ref().map(ApiKey::expose), Some("sk-1"));
        with_key.api_key = Some(ApiKey::new(""));
        assert!(ApiClient::new(&with_key).expect("valid").api_key.is_none());
    }

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(segment("ftjob-abc_1.2~"), "ftjob-abc_1.2~");
        assert_eq!(segment("a/b?c#d"), "a%2Fb%3Fc%23d");
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_base_url() {
        // A port that was just free: bound, read, released.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let base_url = format!("http://{address}/v1");
        let client = ApiClient::new(&connection(&base_url)).expect("valid");
        let error = client
            .get::<Value>("/models")
            .await
            .expect_err("nothing listens");
        assert!(matches!(error, CliError::Connect { .. }), "{error:?}");
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("cannot connect to {base_url}: ")),
            "{text}"
        );
        assert!(text.contains("refused"), "{text}");
    }
}
