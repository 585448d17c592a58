//! `--webhook-url` and `--webhook-secret`: where `fine_tuning.job.*` events go and the key
//! that signs them (Standard Webhooks, as OpenAI signs its own).

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use clap::Args;

/// The prefix of a Standard Webhooks signing secret; the rest is the key, base64.
pub const SECRET_PREFIX: &str = "whsec_";
/// Keys shorter than this are refused: HMAC-SHA256 wants at least its output's length of
/// entropy to be worth signing with, and Standard Webhooks asks for 24–64 bytes.
pub const MIN_SECRET_BYTES: usize = 24;

#[derive(Debug, Clone, Default, Args)]
pub struct WebhookConfig {
    /// Endpoint that receives `fine_tuning.job.succeeded`, `.failed` and `.cancelled` events
    /// as signed POSTs; repeat the flag (or comma-separate the variable) for several.
    /// Needs --webhook-secret.
    #[arg(
        long = "webhook-url",
        env = "TEMPER_WEBHOOK_URL",
        value_delimiter = ','
    )]
    pub urls: Vec<WebhookUrl>,
    /// Signing secret, `whsec_` followed by base64 of 24–64 random bytes (make one with
    /// `echo whsec_$(openssl rand -base64 32)`); receivers verify with the same secret.
    #[arg(
        long = "webhook-secret",
        env = "TEMPER_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<WebhookSecret>,
}

impl WebhookConfig {
    /// The configuration's one rule clap cannot state: endpoints need a secret.
    pub fn check(&self) -> Result<(), String> {
        if !self.urls.is_empty() && self.secret.is_none() {
            return Err(
                "--webhook-url needs --webhook-secret (TEMPER_WEBHOOK_SECRET): \
                        temper signs every webhook, as OpenAI does"
                    .to_string(),
            );
        }
        Ok(())
    }
}

/// An http(s) URL, checked at start-up rather than at the first delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for WebhookUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let url =
            reqwest::Url::parse(text.trim()).map_err(|e| format!("`{text}` is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!("`{text}` is not an http(s) URL with a host"));
        }
        Ok(WebhookUrl(url.to_string()))
    }
}

/// The HMAC key of a `whsec_…` secret. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    pub fn key(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl FromStr for WebhookSecret {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some(encoded) = text.trim().strip_prefix(SECRET_PREFIX) else {
            return Err(format!(
                "a webhook secret starts with `{SECRET_PREFIX}` followed by base64"
            ));
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| {
                format!("the webhook secret after `{SECRET_PREFIX}` is not base64 ({e})")
            })?;
        if key.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the webhook secret's key is {} bytes; use at least {MIN_SECRET_BYTES} \
                 (`echo whsec_$(openssl rand -base64 32)`)",
                key.len()
            ));
        }
        Ok(WebhookSecret(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_the_base64_after_the_prefix_and_never_printed() {
        let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            .parse()
            .expect("ok");
        assert_eq!(secret.key().len(), 24);
        assert_eq!(&secret.key()[..3], &[0x31, 0xf2, 0x90]);
        assert_eq!(format!("{secret:?}"), "WebhookSecret(<redacted>)");
    }

    #[test]
    fn bad_secrets_say_what_is_wrong() {
        let no_prefix = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse::<WebhookSecret>();
        assert!(no_prefix.expect_err("prefix").contains("whsec_"));
        let not_base64 = "whsec_not base64!".parse::<WebhookSecret>();
        assert!(not_base64.expect_err("b64").contains("not base64"));
        let short = "whsec_c2hvcnQ=".parse::<WebhookSecret>();
        assert!(short.expect_err("short").contains("5 bytes"));
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        let url: WebhookUrl = "http://127.0.0.1:9/hooks".parse().expect("ok");
        assert_eq!(url.as_str(), "http://127.0.0.1:9/hooks");
        assert!("ftp://example.com/x".parse::<WebhookUrl>().is_err());
        assert!("not a url".parse::<WebhookUrl>().is_err());
    }

    #[test]
    fn endpoints_without_a_secret_are_refused() {
        let config = WebhookConfig {
            urls: vec!["http://127.0.0.1:9/".parse().expect("url")],
            secret: None,
        };
        assert!(config
            .check()
            .expect_err("no secret")
            .contains("--webhook-secret"));
        assert!(WebhookConfig::default().check().is_ok());
    }
}
