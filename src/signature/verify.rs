//! Verifying: provider signatures on inbound webhooks, checked on the raw body before
//! anything parses it. Each key's MAC is computed once per request, however
//! many candidate signatures a header carries (at most [`MAX_CANDIDATES`]),
//! and compared with each in constant time; a failure's reason names what is
//! wrong, never a secret.
//!
//! | scheme | header(s) | signed | encoding |
//! |---|---|---|---|
//! | `shopify` | `X-Shopify-Hmac-Sha256` | body | base64 |
//! | `github` | `X-Hub-Signature-256` | body | `sha256=` hex |
//! | `stripe` | `Stripe-Signature: t=…,v1=…` | `t.body` (key = the whole `whsec_` text) | hex |
//! | `slack` | `X-Slack-Signature`, `X-Slack-Request-Timestamp` | `v0:ts:body` | `v0=` hex |
//! | `zoom` | `x-zm-signature`, `x-zm-request-timestamp` | `v0:ts:body` | `v0=` hex |
//! | `standard-webhooks` | `webhook-*` or `svix-*` id/timestamp/signature | `id.ts.body` (key = base64 after `whsec_`) | `v1,` base64 |
//! | `hubspot-v3` | `X-HubSpot-Signature-v3`, `X-HubSpot-Request-Timestamp` (ms) | method + URL + body + ts | base64 |
//! | `hmac` | configurable | body | hex or base64, optional prefix |

use std::time::Duration;

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::hmac;

use super::constant_time_eq;

#[cfg(test)]
use crate::config::source::verify::DEFAULT_TOLERANCE;
use crate::config::spec::{VerifyScheme, VerifySpec};

/// Most signatures one header may offer. Providers send one, or two while a
/// secret rotates; more only makes an unauthenticated request cost more.
pub const MAX_CANDIDATES: usize = 8;

/// Why a verifier cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret's env var is not set.
    #[error("env var {0} is not set; export the provider's webhook secret")]
    Unset(String),
    /// A Standard Webhooks secret that is not base64.
    #[error("env var {name}: a Standard Webhooks secret is base64 after whsec_ ({source})")]
    NotBase64 {
        /// The env var.
        name: String,
        /// What the decoder said.
        source: base64::DecodeError,
    },
}

/// Why a request is refused: the text of its 401 body. Names what is wrong,
/// never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// A header the scheme needs is absent.
    #[error("the {0} header is missing")]
    Missing(String),
    /// A header that is not visible ASCII.
    #[error("the {0} header is not text")]
    NotText(String),
    /// A provider's header without its fixed prefix (`sha256=`, `v0=`).
    #[error("{header} does not start with {prefix}")]
    Prefix {
        /// The header.
        header: &'static str,
        /// The prefix it must start with.
        prefix: &'static str,
    },
    /// A configured (`hmac`) header without its configured prefix.
    #[error("the {header} header does not start with {prefix:?}")]
    HmacPrefix {
        /// The header.
        header: String,
        /// The prefix.
        prefix: String,
    },
    /// A signature header without one of its parts.
    #[error("{header} has no {part}")]
    NoPart {
        /// The header.
        header: &'static str,
        /// The part, as the provider writes it.
        part: &'static str,
    },
    /// A timestamp that is not a number of seconds.
    #[error("{0} is not a Unix timestamp")]
    NotTimestamp(&'static str),
    /// HubSpot's millisecond timestamp that is not a number.
    #[error("X-HubSpot-Request-Timestamp is not a number")]
    NotMillis,
    /// A signature that is not base64.
    #[error("{0} is not base64")]
    NotBase64(String),
    /// A signature that is not hex.
    #[error("{0} is not hex")]
    NotHex(String),
    /// More than [`MAX_CANDIDATES`] signatures.
    #[error("{0} offers more than {MAX_CANDIDATES} signatures; send the current one (and the previous one while a secret rotates)")]
    TooMany(&'static str),
    /// A connection's own secret cannot be used with the scheme.
    #[error("the connection's secret is unusable: {0}")]
    Unusable(String),
    /// The check itself failed to finish (its task panicked).
    #[error("the signature check did not finish")]
    Unfinished,
    /// No key signs the body so.
    #[error("the signature does not match the body (check the secret and that nothing rewrote the body)")]
    Mismatch,
    /// A signed timestamp too far from now.
    #[error("the signed timestamp is {age} s away from now, beyond the {tolerance} s tolerance (a replay, or a clock off)")]
    Stale {
        /// Seconds between the timestamp and now.
        age: u64,
        /// The tolerance in seconds.
        tolerance: u64,
    },
}

/// Which of a verifier's secrets signed a request (while a secret rotates,
/// either may): a provider's handshake answer is signed with the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedWith(usize);

/// A source's verifier, keys read from the environment when it starts.
pub struct Verifier {
    scheme: VerifyScheme,
    /// One key per secret (rotation): a request verifies with any.
    keys: Vec<hmac::Key>,
    tolerance: Duration,
}

/// What a request looks like to a verifier.
pub struct Signed<'a> {
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// `POST`.
    pub method: &'a str,
    /// The full URL the provider called (HubSpot v3 signs it).
    pub url: &'a str,
    /// The raw body.
    pub body: &'a [u8],
    /// Now, Unix seconds.
    pub now: i64,
}

impl Verifier {
    /// The verifier `spec` asks for; an unset env var or unusable secret is an error.
    pub fn new(spec: &VerifySpec) -> Result<Self, SecretError> {
        let secrets = spec
            .secret_envs
            .iter()
            .map(|name| {
                let secret = std::env::var(name).map_err(|_| SecretError::Unset(name.clone()))?;
                Ok((name.as_str(), secret))
            })
            .collect::<Result<Vec<_>, SecretError>>()?;
        Self::from_secrets(&spec.scheme, spec.tolerance, &secrets)
    }

    /// The verifier of `scheme` with `secrets`, each with the name of the
    /// env var it came from (for the error).
    pub fn from_secrets(
        scheme: &VerifyScheme,
        tolerance: Duration,
        secrets: &[(&str, String)],
    ) -> Result<Self, SecretError> {
        let keys = secrets
            .iter()
            .map(|(name, secret)| {
                let bytes = match scheme {
                    VerifyScheme::StandardWebhooks => {
                        super::whsec_key(secret).map_err(|source| SecretError::NotBase64 {
                            name: name.to_string(),
                            source,
                        })?
                    }
                    _ => secret.as_bytes().to_vec(),
                };
                Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
            })
            .collect::<Result<_, SecretError>>()?;
        Ok(Self {
            scheme: scheme.clone(),
            keys,
            tolerance,
        })
    }

    /// Whether it holds a secret (a connections pipeline may leave them all
    /// to its connections).
    pub fn has_secrets(&self) -> bool {
        !self.keys.is_empty()
    }

    /// A verifier of the same scheme and tolerance with `secret` alone (a
    /// connection's own), named `name` in errors.
    pub fn with_secret(&self, name: &str, secret: String) -> Result<Self, SecretError> {
        Self::from_secrets(&self.scheme, self.tolerance, &[(name, secret)])
    }

    /// A verifier of `scheme` with `secrets` as they are (tests).
    #[cfg(test)]
    pub(crate) fn with_secrets(scheme: VerifyScheme, secrets: &[&str]) -> Self {
        Self {
            scheme,
            keys: secrets
                .iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))
                .collect(),
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// The provider's scheme.
    pub fn scheme(&self) -> &VerifyScheme {
        &self.scheme
    }

    /// HMAC-SHA256 of `message` under the secret that signed a request.
    pub fn mac(&self, with: SignedWith, message: &[u8]) -> hmac::Tag {
        let key = self
            .keys
            .get(with.0)
            .expect("a SignedWith names a key of the verifier that checked the request");
        hmac::sign(key, message)
    }

    /// Checks a request: which secret signed it, or why it is refused (for a 401 body).
    pub fn verify(&self, r: &Signed<'_>) -> Result<SignedWith, Rejected> {
        let header = |name: &str| -> Result<&str, Rejected> {
            r.headers
                .get(name)
                .ok_or_else(|| Rejected::Missing(name.to_string()))?
                .to_str()
                .map_err(|_| Rejected::NotText(name.to_string()))
        };
        match &self.scheme {
            VerifyScheme::Shopify => {
                let given = decode_b64(header("x-shopify-hmac-sha256")?, "X-Shopify-Hmac-Sha256")?;
                self.check(&[given], &[r.body])
            }
            VerifyScheme::Github => {
                let value = header("x-hub-signature-256")?;
                let hex = value.strip_prefix("sha256=").ok_or(Rejected::Prefix {
                    header: "X-Hub-Signature-256",
                    prefix: "sha256=",
                })?;
                self.check(&[decode_hex(hex, "X-Hub-Signature-256")?], &[r.body])
            }
            VerifyScheme::Stripe => {
                let value = header("stripe-signature")?;
                let mut t = None;
                let mut given = Vec::new();
                for part in value.split(',') {
                    match part.trim().split_once('=') {
                        Some(("t", v)) => t = Some(v),
                        Some(("v1", v)) => {
                            candidate(&given, "Stripe-Signature")?;
                            given.push(decode_hex(v, "Stripe-Signature v1")?);
                        }
                        _ => {}
                    }
                }
                let t = t.ok_or(Rejected::NoPart {
                    header: "Stripe-Signature",
                    part: "t= timestamp",
                })?;
                self.fresh(parse_ts(t, "Stripe-Signature t")?, r.now)?;
                if given.is_empty() {
                    return Err(Rejected::NoPart {
                        header: "Stripe-Signature",
                        part: "v1= signature",
                    });
                }
                self.check(&given, &[t.as_bytes(), b".", r.body])
            }
            VerifyScheme::Slack => {
                let ts = header("x-slack-request-timestamp")?;
                let signature = header("x-slack-signature")?;
                self.v0(
                    r,
                    (ts, "X-Slack-Request-Timestamp"),
                    (signature, "X-Slack-Signature"),
                )
            }
            VerifyScheme::Zoom => {
                let ts = header("x-zm-request-timestamp")?;
                let signature = header("x-zm-signature")?;
                self.v0(
                    r,
                    (ts, "x-zm-request-timestamp"),
                    (signature, "x-zm-signature"),
                )
            }
            VerifyScheme::StandardWebhooks => {
                // Svix sends the same three headers under svix-* names.
                let pick = |name: &str| {
                    header(&format!("webhook-{name}")).or_else(|_| header(&format!("svix-{name}")))
                };
                let id = pick("id")?;
                let ts = pick("timestamp")?;
                self.fresh(parse_ts(ts, "webhook-timestamp")?, r.now)?;
                let mut given = Vec::new();
                for entry in pick("signature")?.split_ascii_whitespace() {
                    if let Some(b64) = entry.strip_prefix("v1,") {
                        candidate(&given, "webhook-signature")?;
                        given.push(decode_b64(b64, "webhook-signature")?);
                    }
                }
                if given.is_empty() {
                    return Err(Rejected::NoPart {
                        header: "webhook-signature",
                        part: "v1, signature",
                    });
                }
                let message =
                    super::standard_webhooks_message(id.as_bytes(), ts.as_bytes(), r.body);
                self.check(&given, &message)
            }
            VerifyScheme::HubspotV3 => {
                let ts = header("x-hubspot-request-timestamp")?;
                let ms: i64 = ts.parse().map_err(|_| Rejected::NotMillis)?;
                self.fresh(ms / 1000, r.now)?;
                let given =
                    decode_b64(header("x-hubspot-signature-v3")?, "X-HubSpot-Signature-v3")?;
                let message = [r.method.as_bytes(), r.url.as_bytes(), r.body, ts.as_bytes()];
                self.check(&[given], &message)
            }
            VerifyScheme::Hmac {
                header: name,
                prefix,
                base64,
            } => {
                let value = header(name)?;
                let text =
                    value
                        .strip_prefix(prefix.as_str())
                        .ok_or_else(|| Rejected::HmacPrefix {
                            header: name.clone(),
                            prefix: prefix.clone(),
                        })?;
                let given = if *base64 {
                    decode_b64(text, name)?
                } else {
                    decode_hex(text, name)?
                };
                self.check(&[given], &[r.body])
            }
        }
    }

    /// Whether any given signature matches any key: each key's MAC over the
    /// message (its parts in order) is computed once, then compared with
    /// every candidate in constant time.
    fn check(&self, given: &[Vec<u8>], message: &[&[u8]]) -> Result<SignedWith, Rejected> {
        self.keys
            .iter()
            .position(|key| {
                let mut mac = hmac::Context::with_key(key);
                for part in message {
                    mac.update(part);
                }
                let mac = mac.sign();
                given.iter().any(|g| constant_time_eq(mac.as_ref(), g))
            })
            .map(SignedWith)
            .ok_or(Rejected::Mismatch)
    }

    /// Slack's scheme, which Zoom shares: the timestamp header's value
    /// within the tolerance, and the signature header `v0=` + hex HMAC of
    /// `v0:timestamp:body`. Each value comes with its header's name for
    /// the reasons.
    fn v0(
        &self,
        r: &Signed<'_>,
        (ts, ts_header): (&str, &'static str),
        (signature, signature_header): (&str, &'static str),
    ) -> Result<SignedWith, Rejected> {
        self.fresh(parse_ts(ts, ts_header)?, r.now)?;
        let hex = signature.strip_prefix("v0=").ok_or(Rejected::Prefix {
            header: signature_header,
            prefix: "v0=",
        })?;
        let given = decode_hex(hex, signature_header)?;
        self.check(&[given], &[b"v0:", ts.as_bytes(), b":", r.body])
    }

    fn fresh(&self, ts: i64, now: i64) -> Result<(), Rejected> {
        let age = (now - ts).unsigned_abs();
        let tolerance = self.tolerance.as_secs();
        if age > tolerance {
            return Err(Rejected::Stale { age, tolerance });
        }
        Ok(())
    }
}

/// Refuses one more candidate signature once [`MAX_CANDIDATES`] are taken.
fn candidate(given: &[Vec<u8>], what: &'static str) -> Result<(), Rejected> {
    if given.len() >= MAX_CANDIDATES {
        return Err(Rejected::TooMany(what));
    }
    Ok(())
}

fn parse_ts(text: &str, what: &'static str) -> Result<i64, Rejected> {
    text.trim()
        .parse()
        .map_err(|_| Rejected::NotTimestamp(what))
}

fn decode_b64(text: &str, what: &str) -> Result<Vec<u8>, Rejected> {
    BASE64
        .decode(text.trim())
        .map_err(|_| Rejected::NotBase64(what.to_string()))
}

fn decode_hex(text: &str, what: &str) -> Result<Vec<u8>, Rejected> {
    super::unhex(text).ok_or_else(|| Rejected::NotHex(what.to_string()))
}

#[cfg(test)]
mod tests;
