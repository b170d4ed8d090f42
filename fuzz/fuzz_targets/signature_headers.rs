//! Arbitrary signature headers and bodies through every verify scheme: a
//! request is accepted or refused with a reason, never a panic.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tributary::config::spec::{VerifyScheme, VerifySpec};
use tributary::source::webhook::verify::{Signed, Verifier};

/// Every scheme reads one of these; the input says which header gets which bytes.
const HEADERS: [&str; 14] = [
    "x-shopify-hmac-sha256",
    "x-hub-signature-256",
    "stripe-signature",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "x-hubspot-signature-v3",
    "x-hubspot-request-timestamp",
    "x-signature",
];

fn verifiers() -> &'static Vec<Verifier> {
    static VERIFIERS: OnceLock<Vec<Verifier>> = OnceLock::new();
    VERIFIERS.get_or_init(|| {
        std::env::set_var("FUZZ_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let schemes = [
            VerifyScheme::Shopify,
            VerifyScheme::Github,
            VerifyScheme::Stripe,
            VerifyScheme::Slack,
            VerifyScheme::StandardWebhooks,
            VerifyScheme::HubspotV3,
            VerifyScheme::Hmac {
                header: "x-signature".into(),
                prefix: "sha256=".into(),
                base64: false,
            },
            VerifyScheme::Hmac {
                header: "x-signature".into(),
                prefix: String::new(),
                base64: true,
            },
        ];
        schemes
            .into_iter()
            .map(|scheme| {
                Verifier::new(&VerifySpec {
                    scheme,
                    secret_envs: vec!["FUZZ_SECRET".into()],
                    tolerance: Duration::from_secs(300),
                })
                .unwrap()
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    // Input: records of [header index, length, bytes...], the rest is the body.
    let mut headers = HeaderMap::new();
    let mut rest = data;
    while rest.len() >= 2 && rest[0] < 0x80 {
        let (index, len) = (rest[0] as usize % HEADERS.len(), rest[1] as usize);
        let value = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(HEADERS[index]), value);
        }
    }
    let signed = Signed {
        headers: &headers,
        method: "POST",
        url: "https://example.com/hooks/fuzz?x=1",
        body: rest,
        now: 1_700_000_000,
    };
    for verifier in verifiers() {
        let _ = verifier.verify(&signed);
    }
});
