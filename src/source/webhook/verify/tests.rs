use axum::http::{HeaderName, HeaderValue};

use super::*;

fn fixtures() -> serde_json::Value {
    // A copy of ../shared/fixtures/signatures.json (the providers' published vectors).
    serde_json::from_str(include_str!("../../../../tests/fixtures/signatures.json")).unwrap()
}

fn verifier(scheme: VerifyScheme, secret: &str) -> Verifier {
    let bytes = match scheme {
        VerifyScheme::StandardWebhooks => BASE64
            .decode(secret.strip_prefix("whsec_").unwrap())
            .unwrap(),
        _ => secret.as_bytes().to_vec(),
    };
    Verifier {
        scheme,
        keys: vec![
            hmac::Key::new(hmac::HMAC_SHA256, b"an old secret, still accepted"),
            hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        ],
        tolerance: Duration::from_secs(300),
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

/// Checks `body` with `pairs` at `now`; also that a flipped body byte, each
/// missing header and (if `stale`) an old timestamp are refused.
fn accepts_and_rejects(v: &Verifier, pairs: &[(&str, &str)], body: &str, now: i64, stale: bool) {
    let check = |pairs: &[(&str, &str)], body: &[u8], now: i64| {
        v.verify(&Signed {
            headers: &headers(pairs),
            method: "POST",
            url: "https://example.com/hook",
            body,
            now,
        })
        .map_err(|e| e.to_string())
    };
    check(pairs, body.as_bytes(), now).unwrap();
    let mut flipped = body.as_bytes().to_vec();
    flipped[0] ^= 1;
    assert!(check(pairs, &flipped, now)
        .unwrap_err()
        .contains("does not match"));
    for skip in 0..pairs.len() {
        let fewer: Vec<_> = pairs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, p)| *p)
            .collect();
        let why = check(&fewer, body.as_bytes(), now).unwrap_err();
        assert!(why.contains("missing"), "{why}");
    }
    if stale {
        let why = check(pairs, body.as_bytes(), now + 3600).unwrap_err();
        assert!(why.contains("tolerance"), "{why}");
    }
}

#[test]
fn the_published_vectors_verify_and_tampering_is_refused() {
    let f = fixtures();
    let sw = &f["standard_webhooks"];
    let ts: i64 = sw["webhook-timestamp"].as_str().unwrap().parse().unwrap();
    accepts_and_rejects(
        &verifier(
            VerifyScheme::StandardWebhooks,
            sw["secret"].as_str().unwrap(),
        ),
        &[
            ("webhook-id", sw["webhook-id"].as_str().unwrap()),
            (
                "webhook-timestamp",
                sw["webhook-timestamp"].as_str().unwrap(),
            ),
            (
                "webhook-signature",
                sw["webhook-signature"].as_str().unwrap(),
            ),
        ],
        sw["body"].as_str().unwrap(),
        ts + 10,
        true,
    );
    // Svix's header names carry the same scheme.
    accepts_and_rejects(
        &verifier(
            VerifyScheme::StandardWebhooks,
            sw["secret"].as_str().unwrap(),
        ),
        &[
            ("svix-id", sw["webhook-id"].as_str().unwrap()),
            ("svix-timestamp", sw["webhook-timestamp"].as_str().unwrap()),
            ("svix-signature", sw["webhook-signature"].as_str().unwrap()),
        ],
        sw["body"].as_str().unwrap(),
        ts,
        true,
    );
    let gh = &f["github"];
    accepts_and_rejects(
        &verifier(VerifyScheme::Github, gh["secret"].as_str().unwrap()),
        &[(
            "x-hub-signature-256",
            gh["X-Hub-Signature-256"].as_str().unwrap(),
        )],
        gh["body"].as_str().unwrap(),
        0,
        false,
    );
    let slack = &f["slack"];
    let ts: i64 = slack["X-Slack-Request-Timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    accepts_and_rejects(
        &verifier(VerifyScheme::Slack, slack["secret"].as_str().unwrap()),
        &[
            (
                "x-slack-request-timestamp",
                slack["X-Slack-Request-Timestamp"].as_str().unwrap(),
            ),
            (
                "x-slack-signature",
                slack["X-Slack-Signature"].as_str().unwrap(),
            ),
        ],
        slack["body"].as_str().unwrap(),
        ts,
        true,
    );
}

/// HMAC-SHA256 with ring, for schemes without a published vector.
fn mac(secret: &[u8], message: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), message)
        .as_ref()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn shopify_stripe_hubspot_and_generic_hmac() {
    let body = r#"{"id": 820982911946154508, "email": "jon@example.com"}"#;
    let sig = BASE64.encode(mac(b"shpss_secret", body.as_bytes()));
    accepts_and_rejects(
        &verifier(VerifyScheme::Shopify, "shpss_secret"),
        &[("x-shopify-hmac-sha256", &sig)],
        body,
        0,
        false,
    );

    // Stripe: the whole whsec_ text is the key; several v1 entries during a rotation.
    let secret = "whsec_test_secret";
    let t = "1700000000";
    let good = hex(&mac(secret.as_bytes(), format!("{t}.{body}").as_bytes()));
    let header = format!("t={t},v1={},v1={good},v0=ignored", "00".repeat(32));
    accepts_and_rejects(
        &verifier(VerifyScheme::Stripe, secret),
        &[("stripe-signature", &header)],
        body,
        1_700_000_100,
        true,
    );

    // HubSpot v3: method + URL + body + the millisecond timestamp.
    let ms = "1700000000123";
    let signed = format!("POSThttps://example.com/hook{body}{ms}");
    let sig = BASE64.encode(mac(b"hs-secret", signed.as_bytes()));
    accepts_and_rejects(
        &verifier(VerifyScheme::HubspotV3, "hs-secret"),
        &[
            ("x-hubspot-request-timestamp", ms),
            ("x-hubspot-signature-v3", &sig),
        ],
        body,
        1_700_000_000,
        true,
    );

    let generic = VerifyScheme::Hmac {
        header: "x-signature".into(),
        prefix: "sha256=".into(),
        base64: false,
    };
    let sig = format!("sha256={}", hex(&mac(b"k", body.as_bytes())));
    accepts_and_rejects(
        &verifier(generic, "k"),
        &[("x-signature", &sig)],
        body,
        0,
        false,
    );
}

#[test]
fn malformed_headers_get_a_reason_and_never_a_panic() {
    let v = verifier(VerifyScheme::Stripe, "whsec_x");
    for header in [
        "",
        "t=",
        "t=abc,v1=00",
        "v1=zz",
        "t=1700000000",
        "t=1700000000,v1=0",
    ] {
        let why = v
            .verify(&Signed {
                headers: &headers(&[("stripe-signature", header)]),
                method: "POST",
                url: "",
                body: b"{}",
                now: 1_700_000_000,
            })
            .unwrap_err()
            .to_string();
        assert!(
            !why.is_empty() && !why.contains("whsec_x"),
            "{header:?}: {why}"
        );
    }
    let gh = verifier(VerifyScheme::Github, "s");
    let why = gh
        .verify(&Signed {
            headers: &headers(&[("x-hub-signature-256", "sha1=abcd")]),
            method: "POST",
            url: "",
            body: b"{}",
            now: 0,
        })
        .unwrap_err()
        .to_string();
    assert!(why.contains("sha256="), "{why}");
}
