//! Providers' registration handshakes: before a provider sends events to a
//! URL it asks the URL to prove it is the subscriber's. Where the `verify`
//! scheme names a provider that handshakes in the request body, the
//! request is answered `200` here once its signature verified, and never
//! stored as an event.
//!
//! | scheme | request body | answer |
//! |---|---|---|
//! | `slack` | `{"type": "url_verification", "challenge": "…"}` | `{"challenge": "…"}` |
//! | `zoom` | `{"event": "endpoint.url_validation", "payload": {"plainToken": "…"}}` | `{"plainToken": "…", "encryptedToken": hex HMAC-SHA256(secret, plainToken)}` |

use serde_json::{json, Value};

use crate::config::spec::VerifyScheme;
use crate::signature::verify::{SignedWith, Verifier};

/// Largest body read as a possible handshake. The providers' handshakes are
/// a few hundred bytes; a larger body is an event, and is not parsed twice.
const MAX_HANDSHAKE_BYTES: usize = 4 << 10;

/// A handshake a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// Slack's `url_verification`: the challenge is echoed.
    Slack {
        /// The `challenge` to echo.
        challenge: String,
    },
    /// Zoom's `endpoint.url_validation`: the token and its HMAC.
    Zoom {
        /// `payload.plainToken`.
        plain_token: String,
    },
}

impl Handshake {
    /// The handshake `body` asks for under `scheme`, if it is one.
    pub fn of(scheme: &VerifyScheme, body: &[u8]) -> Option<Self> {
        match scheme {
            VerifyScheme::Slack => token(body, ("/type", "url_verification"), "/challenge")
                .map(|challenge| Handshake::Slack { challenge }),
            VerifyScheme::Zoom => token(
                body,
                ("/event", "endpoint.url_validation"),
                "/payload/plainToken",
            )
            .map(|plain_token| Handshake::Zoom { plain_token }),
            _ => None,
        }
    }

    /// The JSON body of the `200` answer; Zoom's token is signed with the
    /// secret that signed the request (`with`, from `verifier`).
    pub fn answer(&self, verifier: &Verifier, with: SignedWith) -> Value {
        match self {
            Handshake::Slack { challenge } => json!({ "challenge": challenge }),
            Handshake::Zoom { plain_token } => {
                let tag = verifier.mac(with, plain_token.as_bytes());
                let encrypted: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
                json!({ "plainToken": plain_token, "encryptedToken": encrypted })
            }
        }
    }
}

/// The string at `pointer` in `body`, if `body` is a small JSON object
/// whose string at `kind.0` is `kind.1`.
fn token(body: &[u8], kind: (&str, &str), pointer: &str) -> Option<String> {
    if body.len() > MAX_HANDSHAKE_BYTES {
        return None;
    }
    // Slack's slash commands and interactions are form-encoded: not JSON, not a handshake.
    let value: Value = serde_json::from_slice(body).ok()?;
    if value.pointer(kind.0).and_then(Value::as_str) != Some(kind.1) {
        return None;
    }
    Some(value.pointer(pointer)?.as_str()?.to_string())
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;
    use crate::signature::verify::Signed;

    fn hmac_hex(secret: &str, message: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        ring::hmac::sign(&key, message)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Verifies `body` signed with `secret` the way `scheme` signs at `ts`.
    fn signed_with(verifier: &Verifier, scheme: &str, secret: &str, body: &[u8]) -> SignedWith {
        let ts = "1700000000";
        let mut message = format!("v0:{ts}:").into_bytes();
        message.extend_from_slice(body);
        let signature = format!("v0={}", hmac_hex(secret, &message));
        let (ts_header, signature_header) = match scheme {
            "zoom" => ("x-zm-request-timestamp", "x-zm-signature"),
            _ => ("x-slack-request-timestamp", "x-slack-signature"),
        };
        let mut headers = HeaderMap::new();
        headers.insert(ts_header, HeaderValue::from_static(ts));
        headers.insert(signature_header, HeaderValue::from_str(&signature).unwrap());
        verifier
            .verify(&Signed {
                headers: &headers,
                method: "POST",
                url: "https://example.com/hooks/x",
                body,
                now: 1_700_000_000,
            })
            .unwrap()
    }

    #[test]
    fn slack_url_verification_echoes_the_challenge() {
        // Slack's documented example.
        let body = br#"{"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}"#;
        let handshake = Handshake::of(&VerifyScheme::Slack, body).unwrap();
        let verifier = Verifier::with_secrets(VerifyScheme::Slack, &["slack-secret"]);
        let with = signed_with(&verifier, "slack", "slack-secret", body);
        assert_eq!(
            handshake.answer(&verifier, with),
            json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
        );
    }

    #[test]
    fn zoom_url_validation_answers_the_token_signed_with_the_secret_that_signed_it() {
        // Zoom's documented request shape; two secrets while one rotates.
        let body = br#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
        let handshake = Handshake::of(&VerifyScheme::Zoom, body).unwrap();
        assert_eq!(
            handshake,
            Handshake::Zoom {
                plain_token: "qgg8vlvZRS6UYooatFL8Aw".into()
            }
        );
        let verifier = Verifier::with_secrets(VerifyScheme::Zoom, &["new-secret", "old-secret"]);
        for secret in ["new-secret", "old-secret"] {
            let with = signed_with(&verifier, "zoom", secret, body);
            assert_eq!(
                handshake.answer(&verifier, with),
                json!({
                    "plainToken": "qgg8vlvZRS6UYooatFL8Aw",
                    "encryptedToken": hmac_hex(secret, b"qgg8vlvZRS6UYooatFL8Aw"),
                }),
                "{secret}"
            );
        }
    }

    #[test]
    fn events_and_other_schemes_are_not_handshakes() {
        let event =
            br#"{"type": "event_callback", "event": {"type": "message"}, "challenge": "x"}"#;
        assert_eq!(Handshake::of(&VerifyScheme::Slack, event), None);
        let form = b"token=abc&command=%2Fweather&text=94070";
        assert_eq!(Handshake::of(&VerifyScheme::Slack, form), None);
        let no_challenge = br#"{"type": "url_verification"}"#;
        assert_eq!(Handshake::of(&VerifyScheme::Slack, no_challenge), None);
        let slack = br#"{"type": "url_verification", "challenge": "c"}"#;
        assert_eq!(Handshake::of(&VerifyScheme::Github, slack), None);
        assert_eq!(Handshake::of(&VerifyScheme::Zoom, slack), None);
        let zoom_event = br#"{"event": "meeting.started", "payload": {"plainToken": "t"}}"#;
        assert_eq!(Handshake::of(&VerifyScheme::Zoom, zoom_event), None);
        // A large body is an event, however it starts.
        let mut large = br#"{"type": "url_verification", "challenge": "c", "pad": ""#.to_vec();
        large.resize(large.len() + MAX_HANDSHAKE_BYTES, b'x');
        large.extend_from_slice(b"\"}");
        assert_eq!(Handshake::of(&VerifyScheme::Slack, &large), None);
    }
}
