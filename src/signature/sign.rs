//! Signing: the HTTPS sink's (and connection notifications') POSTs, computed over the exact body bytes.
//!
//! * `standard-webhooks`: `webhook-id`, `webhook-timestamp`, and
//!   `webhook-signature: v1,<base64 HMAC-SHA256(key, id.timestamp.body)>` for a
//!   `whsec_` secret (key = base64 after the prefix), `v1a,<base64 Ed25519>`
//!   for a `whsk_` key; several secrets give several space-separated signatures.
//! * `rsa-sha256`: hex RSA PKCS#1 v1.5 signature of SHA-256(method + url + body).
//! * `hmac-sha256`: hex or base64 HMAC-SHA256 of the body, with a prefix.
//!
//! ring does the cryptography; keys are parsed once, when the sink starts.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::hex;
use hyper::http::HeaderName;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use ring::{hmac, signature::KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

/// How a sink signs.
pub enum Signer {
    /// Standard Webhooks, one entry per secret (rotation).
    StandardWebhooks(Vec<SwKey>),
    /// RSA PKCS#1 v1.5 over SHA-256(method + url + body), hex, in `header`.
    Rsa {
        /// The private key.
        key: Box<RsaKeyPair>,
        /// `POST` + the sink's URL exactly as configured.
        prefix: Vec<u8>,
        /// Header name.
        header: HeaderName,
    },
    /// HMAC-SHA256 of the body, in `header`, one value per secret.
    Hmac {
        /// Keys, in rotation order.
        keys: Vec<hmac::Key>,
        /// Header name.
        header: HeaderName,
        /// Written before the signature, e.g. `sha256=`.
        prefix: String,
        /// Base64 instead of hex.
        base64: bool,
    },
}

/// A secret or key that cannot sign; the message says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The env var holding a secret is not set.
    #[error("env var {0} is not set; export the signing secret")]
    Unset(String),
    /// The key file cannot be read.
    #[error("cannot read key_file {}: {source}", path.display())]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `whsec_` secret whose rest is not base64.
    #[error("a whsec_ secret is not base64 after the prefix ({0})")]
    WhsecBase64(#[source] base64::DecodeError),
    /// A `whsk_` key whose rest is not base64.
    #[error("a whsk_ key is not base64 after the prefix ({0})")]
    WhskBase64(#[source] base64::DecodeError),
    /// A `whsk_` key of the wrong length.
    #[error("a whsk_ key must hold a 32-byte Ed25519 seed (or seed + public key)")]
    WhskSeed,
    /// A Standard Webhooks secret with neither prefix.
    #[error("a Standard Webhooks secret starts with whsec_ (or whsk_ for Ed25519)")]
    SwPrefix,
    /// Not PEM.
    #[error("not a PEM private key ({0})")]
    NotPem(#[source] rustls_pki_types::pem::Error),
    /// PEM, but not an RSA key.
    #[error("not an RSA key (PKCS#8 or PKCS#1 expected)")]
    NotRsa,
    /// An RSA key ring refuses.
    #[error("not a usable RSA key ({0})")]
    BadRsa(ring::error::KeyRejected),
    /// A header name that HTTP does not allow.
    #[error("\"{0}\" is not a header name")]
    HeaderName(String),
}

/// A Standard Webhooks key.
pub enum SwKey {
    /// `whsec_…`: symmetric.
    Hmac(hmac::Key),
    /// `whsk_…`: Ed25519.
    Ed25519(Box<Ed25519KeyPair>),
}

impl Signer {
    /// A Standard Webhooks signer from `whsec_` / `whsk_` secrets.
    pub fn standard_webhooks(secrets: &[String]) -> Result<Self, SigningError> {
        let keys = secrets
            .iter()
            .map(|s| {
                if s.starts_with("whsec_") {
                    let key = super::whsec_key(s).map_err(SigningError::WhsecBase64)?;
                    Ok(SwKey::Hmac(hmac::Key::new(hmac::HMAC_SHA256, &key)))
                } else if let Some(b64) = s.strip_prefix("whsk_") {
                    let key = BASE64
                        .decode(b64.trim())
                        .map_err(SigningError::WhskBase64)?;
                    // The 32-byte seed, or seed + public key (64 bytes).
                    let seed = key.get(..32).filter(|_| key.len() == 32 || key.len() == 64);
                    let pair = seed
                        .and_then(|seed| Ed25519KeyPair::from_seed_unchecked(seed).ok())
                        .ok_or(SigningError::WhskSeed)?;
                    Ok(SwKey::Ed25519(Box::new(pair)))
                } else {
                    Err(SigningError::SwPrefix)
                }
            })
            .collect::<Result<Vec<_>, SigningError>>()?;
        Ok(Signer::StandardWebhooks(keys))
    }

    /// An RSA signer from a PEM private key (PKCS#8 or PKCS#1).
    pub fn rsa(pem: &[u8], url: &str, header: &str) -> Result<Self, SigningError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(SigningError::NotPem)?;
        let key = match &der {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => return Err(SigningError::NotRsa),
        }
        .map_err(SigningError::BadRsa)?;
        let mut prefix = b"POST".to_vec();
        prefix.extend_from_slice(url.as_bytes());
        Ok(Signer::Rsa {
            key: Box::new(key),
            prefix,
            header: header_name(header)?,
        })
    }

    /// An HMAC signer of the body.
    pub fn hmac(
        secrets: &[String],
        header: &str,
        prefix: &str,
        base64: bool,
    ) -> Result<Self, SigningError> {
        Ok(Signer::Hmac {
            keys: secrets
                .iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))
                .collect(),
            header: header_name(header)?,
            prefix: prefix.to_string(),
            base64,
        })
    }

    /// The headers that sign `body` for the delivery `id` at `timestamp` (Unix seconds).
    pub fn headers(&self, id: &str, timestamp: i64, body: &[u8]) -> Vec<(HeaderName, String)> {
        match self {
            Signer::StandardWebhooks(keys) => {
                let timestamp = timestamp.to_string();
                let parts =
                    super::standard_webhooks_message(id.as_bytes(), timestamp.as_bytes(), body);
                let signatures: Vec<String> = keys
                    .iter()
                    .map(|k| match k {
                        // HMAC over the parts as they are: no copy of the body.
                        SwKey::Hmac(key) => {
                            let mut mac = hmac::Context::with_key(key);
                            parts.iter().for_each(|part| mac.update(part));
                            format!("v1,{}", BASE64.encode(mac.sign()))
                        }
                        SwKey::Ed25519(pair) => {
                            format!("v1a,{}", BASE64.encode(pair.sign(&parts.concat())))
                        }
                    })
                    .collect();
                vec![
                    (WEBHOOK_ID, id.to_string()),
                    (HeaderName::from_static("webhook-timestamp"), timestamp),
                    (
                        HeaderName::from_static("webhook-signature"),
                        signatures.join(" "),
                    ),
                ]
            }
            Signer::Rsa {
                key,
                prefix,
                header,
            } => {
                let mut message = prefix.clone();
                message.extend_from_slice(body);
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    &message,
                    &mut signature,
                )
                .expect("an RSA key ring accepted signs any message");
                vec![
                    (header.clone(), hex(&signature)),
                    (WEBHOOK_ID, id.to_string()),
                ]
            }
            Signer::Hmac {
                keys,
                header,
                prefix,
                base64,
            } => {
                let mut out: Vec<(HeaderName, String)> = keys
                    .iter()
                    .map(|key| {
                        let tag = hmac::sign(key, body);
                        let text = if *base64 {
                            BASE64.encode(tag)
                        } else {
                            hex(tag.as_ref())
                        };
                        (header.clone(), format!("{prefix}{text}"))
                    })
                    .collect();
                out.push((WEBHOOK_ID, id.to_string()));
                out
            }
        }
    }

    /// The Ed25519 public keys, base64 (for receivers of `whsk_` signatures).
    pub fn public_keys(&self) -> Vec<String> {
        match self {
            Signer::StandardWebhooks(keys) => keys
                .iter()
                .filter_map(|k| match k {
                    SwKey::Ed25519(pair) => Some(BASE64.encode(pair.public_key().as_ref())),
                    SwKey::Hmac(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The delivery id every scheme sends (receivers dedupe on it).
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");

fn header_name(name: &str) -> Result<HeaderName, SigningError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| SigningError::HeaderName(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> serde_json::Value {
        // A copy of ../shared/fixtures/signatures.json (the providers' published vectors).
        serde_json::from_str(include_str!("../../tests/fixtures/signatures.json")).unwrap()
    }

    fn header<'a>(headers: &'a [(HeaderName, String)], name: &str) -> &'a str {
        &headers.iter().find(|(n, _)| n.as_str() == name).unwrap().1
    }

    #[test]
    fn the_published_standard_webhooks_vector() {
        let f = &fixtures()["standard_webhooks"];
        let signer =
            Signer::standard_webhooks(&[f["secret"].as_str().unwrap().to_string()]).unwrap();
        let ts: i64 = f["webhook-timestamp"].as_str().unwrap().parse().unwrap();
        let headers = signer.headers(
            f["webhook-id"].as_str().unwrap(),
            ts,
            f["body"].as_str().unwrap().as_bytes(),
        );
        assert_eq!(
            header(&headers, "webhook-signature"),
            f["webhook-signature"].as_str().unwrap()
        );
        assert_eq!(
            header(&headers, "webhook-id"),
            f["webhook-id"].as_str().unwrap()
        );
        assert_eq!(
            header(&headers, "webhook-timestamp"),
            f["webhook-timestamp"].as_str().unwrap()
        );
    }

    #[test]
    fn the_published_github_vector() {
        let f = &fixtures()["github"];
        let signer = Signer::hmac(
            &[f["secret"].as_str().unwrap().to_string()],
            "X-Hub-Signature-256",
            "sha256=",
            false,
        )
        .unwrap();
        let headers = signer.headers("id", 0, f["body"].as_str().unwrap().as_bytes());
        assert_eq!(
            header(&headers, "x-hub-signature-256"),
            f["X-Hub-Signature-256"].as_str().unwrap()
        );
        assert_eq!(header(&headers, "webhook-id"), "id");
    }

    /// Ed25519 is deterministic: the seed [7; 32] signs `msg_1.1700000000.{}`
    /// as Python's `cryptography` 48.0.0 does
    /// (`Ed25519PrivateKey.from_private_bytes(bytes([7] * 32)).sign(…)`), and
    /// its public key is the one `cryptography` derives. The HTTPS sink's
    /// integration tests verify live v1a signatures with `cryptography` too.
    #[test]
    fn ed25519_signatures_match_an_independent_implementation() {
        let seed = [7u8; 32];
        let signer = Signer::standard_webhooks(&[
            format!("whsk_{}", BASE64.encode(seed)),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        ])
        .unwrap();
        let headers = signer.headers("msg_1", 1_700_000_000, b"{}");
        let signatures: Vec<&str> = header(&headers, "webhook-signature").split(' ').collect();
        assert_eq!(
            signatures[0],
            "v1a,QESuo8ZerNypqBlsdXnXgdlWogCEhcYyDeVpCjcMwSL9wMoLAq3x5/ZSQ6hLeASal5lascFaA1CLQwBYX6gYDA=="
        );
        assert!(signatures[1].starts_with("v1,"));
        assert_eq!(
            signer.public_keys(),
            ["6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="]
        );
        // The seed followed by its public key (64 bytes) is the same key.
        let mut pair = seed.to_vec();
        pair.extend(
            BASE64
                .decode("6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=")
                .unwrap(),
        );
        let again = Signer::standard_webhooks(&[format!("whsk_{}", BASE64.encode(&pair))]).unwrap();
        assert_eq!(
            header(
                &again.headers("msg_1", 1_700_000_000, b"{}"),
                "webhook-signature"
            ),
            signatures[0]
        );
        assert!(Signer::standard_webhooks(&["plain".into()]).is_err());
        assert!(Signer::standard_webhooks(&["whsk_AAAA".into()]).is_err());
    }
}
