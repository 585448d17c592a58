//! Standard Webhooks signatures, as OpenAI signs its webhooks (and as the official SDKs'
//! `client.webhooks.unwrap` verifies them): HMAC-SHA256 over `"{id}.{timestamp}.{body}"`
//! keyed by the secret's decoded bytes, sent base64 as `v1,<signature>`.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::WebhookSecret;

/// The `webhook-signature` header's value for one delivery attempt.
pub fn signature(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    // Hmac accepts a key of any length, so `new_from_slice` cannot fail here; the fallback
    // keeps the function total without a panic path.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.key()) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (and its reference libraries'
    /// tests): the same secret, id, timestamp and body give this signature.
    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            .parse()
            .expect("ok");
        let signed = signature(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signed, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn any_change_to_id_time_or_body_changes_the_signature() {
        let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            .parse()
            .expect("ok");
        let base = signature(&secret, "evt_1", 10, b"{}");
        assert_ne!(base, signature(&secret, "evt_2", 10, b"{}"));
        assert_ne!(base, signature(&secret, "evt_1", 11, b"{}"));
        assert_ne!(base, signature(&secret, "evt_1", 10, b"{ }"));
    }
}
