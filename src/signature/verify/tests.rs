use axum::http::{HeaderName, HeaderValue};

use super::*;

fn fixtures() -> serde_json::Value {
    // A copy of ../shared/fixtures/signatures.json (the providers' published vectors).
    serde_json::from_str(include_str!("../../../tests/fixtures/signatures.json")).unwrap()
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

/// Signatures made outside this crate: Stripe's by stripe-python 16.1.0
/// (`stripe.WebhookSignature.generate_signature_header(body, secret,
/// timestamp=1700000000)`), HubSpot's by hubspot-api-client 12.0.0
/// (`Signature.get_signature(secret, body, "v3", http_uri, "POST",
/// timestamp)`), Shopify's and the generic one by Python's `hmac` as their
/// documentation writes them (Shopify's SDK has no webhook signing).
/// tests/it/support/provider_sign.py makes them the same way at run time.
#[test]
fn shopify_stripe_hubspot_and_generic_hmac() {
    let body = r#"{"id": 820982911946154508, "email": "jon@example.com"}"#;
    accepts_and_rejects(
        &verifier(VerifyScheme::Shopify, "shpss_secret"),
        &[(
            "x-shopify-hmac-sha256",
            "DkzU+6wYyLJ0yk4V9T3cTRhKPK8UgIEYvOondEE3qQ4=",
        )],
        body,
        0,
        false,
    );

    // Stripe: the whole whsec_ text is the key; several v1 entries during a rotation.
    let secret = "whsec_test_secret";
    let good = "8f7a90f6edd713b509a965ef1e30c010dfdebceb33a81a418be16f75d1913cb1";
    let header = format!("t=1700000000,v1={},v1={good},v0=ignored", "00".repeat(32));
    accepts_and_rejects(
        &verifier(VerifyScheme::Stripe, secret),
        &[("stripe-signature", &header)],
        body,
        1_700_000_100,
        true,
    );

    // HubSpot v3: method + URL + body + the millisecond timestamp.
    accepts_and_rejects(
        &verifier(VerifyScheme::HubspotV3, "hs-secret"),
        &[
            ("x-hubspot-request-timestamp", "1700000000123"),
            (
                "x-hubspot-signature-v3",
                "AS+AJpbSAsUAqetoxSm11Am0e5jXMc6lL1CpBlcZkWo=",
            ),
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
    accepts_and_rejects(
        &verifier(generic, "k"),
        &[(
            "x-signature",
            "sha256=8459bddfb89fa168ccd159feaea464163e08435af271e2201a776b80fbc5ea90",
        )],
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

#[test]
fn zoom_signs_like_slack_under_its_own_headers_and_names_the_secret_used() {
    // Zoom's documented url_validation request; its signature made as Zoom's docs say.
    let body = r#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
    let ts = "1654503849";
    let sig = format!(
        "v0={}",
        hex(&mac(b"zoom-secret", format!("v0:{ts}:{body}").as_bytes()))
    );
    let pairs = [
        ("x-zm-request-timestamp", ts),
        ("x-zm-signature", sig.as_str()),
    ];
    let v = verifier(VerifyScheme::Zoom, "zoom-secret");
    accepts_and_rejects(&v, &pairs, body, 1_654_503_849, true);
    // The helper's verifier holds an old secret first: the new one signed.
    let with = v
        .verify(&Signed {
            headers: &headers(&pairs),
            method: "POST",
            url: "https://example.com/hook",
            body: body.as_bytes(),
            now: 1_654_503_849,
        })
        .unwrap();
    assert_eq!(with, SignedWith(1));
    // Slack's headers do not verify a Zoom request.
    let slack = [
        ("x-slack-request-timestamp", ts),
        ("x-slack-signature", sig.as_str()),
    ];
    let why = v
        .verify(&Signed {
            headers: &headers(&slack),
            method: "POST",
            url: "https://example.com/hook",
            body: body.as_bytes(),
            now: 1_654_503_849,
        })
        .unwrap_err();
    assert_eq!(why, Rejected::Missing("x-zm-request-timestamp".into()));
}
