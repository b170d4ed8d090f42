//! Webhook signatures, both ways: [`sign`] the HTTPS sink's (and the
//! connection notifications') POSTs, [`verify`] a provider's on an inbound
//! webhook. What a scheme signs is written once, here, so a POST tributary
//! signs verifies with tributary's own verifier (the round-trip tests below)
//! and with the providers' published vectors (`tests/fixtures/signatures.json`).
//!
//! | scheme | sign | verify | signed message |
//! |---|---|---|---|
//! | `standard-webhooks` | yes (`whsec_` HMAC, `whsk_` Ed25519) | yes (HMAC) | [`standard_webhooks_message`] |
//! | `hmac` / `hmac-sha256` | yes | yes | the body |
//! | `rsa-sha256` | yes | no | `POST` + URL + body |
//! | `shopify`, `github`, `stripe`, `slack`, `zoom`, `hubspot-v3` | no | yes | see [`verify`] |
//!
//! Adding a scheme touches its config (`config/sink/https.rs` to sign,
//! `config/source/verify.rs` to verify) and one file here.
//!
//! Every comparison of a computed MAC with a given one is constant-time
//! ([`constant_time_eq`]); no error names a secret.

pub mod sign;
pub mod verify;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// The parts Standard Webhooks signs, in order: `id.timestamp.body`. A MAC is
/// fed the parts one by one, so the body is never copied.
pub fn standard_webhooks_message<'a>(
    id: &'a [u8],
    timestamp: &'a [u8],
    body: &'a [u8],
) -> [&'a [u8]; 5] {
    [id, b".", timestamp, b".", body]
}

/// The HMAC key of a Standard Webhooks secret: the base64 after `whsec_`.
pub fn whsec_key(secret: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    BASE64.decode(b64.trim())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Hex (either case) → bytes; `None` if it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// Equality whose time depends on the lengths only, never on where the
/// bytes first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

#[cfg(test)]
mod tests;
