//! What tributary signs, tributary verifies: each scheme both sides know,
//! signed by [`Signer`] and checked by [`Verifier`], and refused once a byte
//! of the body or of the secret differs.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::sign::Signer;
use super::verify::{Rejected, Signed, Verifier};
use crate::config::spec::VerifyScheme;

const NOW: i64 = 1_765_000_000;
const BODY: &[u8] = br#"{"type":"order.created","id":42}"#;
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WHSEC_OTHER: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn as_map(headers: Vec<(HeaderName, String)>) -> HeaderMap {
    headers
        .into_iter()
        .map(|(name, value)| (name, HeaderValue::from_str(&value).unwrap()))
        .collect()
}

fn verifier(scheme: VerifyScheme, secret: &str) -> Verifier {
    let secrets = [("SECRET", secret.to_string())];
    Verifier::from_secrets(&scheme, Duration::from_secs(300), &secrets).unwrap()
}

fn check(verifier: &Verifier, headers: &HeaderMap, body: &[u8]) -> Result<(), Rejected> {
    verifier
        .verify(&Signed {
            headers,
            method: "POST",
            url: "https://example.test/hook",
            body,
            now: NOW,
        })
        .map(|_| ())
}

#[test]
fn standard_webhooks_round_trips_and_refuses_a_changed_body_or_secret() {
    let signer = Signer::standard_webhooks(&[WHSEC.to_string()]).unwrap();
    let headers = as_map(signer.headers("msg_1", NOW, BODY));
    let scheme = VerifyScheme::StandardWebhooks;
    assert_eq!(
        check(&verifier(scheme.clone(), WHSEC), &headers, BODY),
        Ok(())
    );
    assert_eq!(
        check(&verifier(scheme.clone(), WHSEC), &headers, b"{}"),
        Err(Rejected::Mismatch)
    );
    assert_eq!(
        check(&verifier(scheme, WHSEC_OTHER), &headers, BODY),
        Err(Rejected::Mismatch)
    );
}

#[test]
fn a_rotating_standard_webhooks_signer_verifies_under_either_secret() {
    let signer = Signer::standard_webhooks(&[WHSEC.to_string(), WHSEC_OTHER.to_string()]).unwrap();
    let headers = as_map(signer.headers("msg_2", NOW, BODY));
    for secret in [WHSEC, WHSEC_OTHER] {
        let v = verifier(VerifyScheme::StandardWebhooks, secret);
        assert_eq!(check(&v, &headers, BODY), Ok(()), "{secret}");
    }
}

#[test]
fn hmac_round_trips_in_hex_and_base64_with_a_prefix() {
    for base64 in [false, true] {
        let signer =
            Signer::hmac(&["s3cret".to_string()], "x-signature", "sha256=", base64).unwrap();
        let headers = as_map(signer.headers("msg_3", NOW, BODY));
        let scheme = VerifyScheme::Hmac {
            header: "x-signature".into(),
            prefix: "sha256=".into(),
            base64,
        };
        assert_eq!(
            check(&verifier(scheme.clone(), "s3cret"), &headers, BODY),
            Ok(())
        );
        assert_eq!(
            check(
                &verifier(scheme.clone(), "s3cret"),
                &headers,
                b"{\"id\":43}"
            ),
            Err(Rejected::Mismatch)
        );
        assert_eq!(
            check(&verifier(scheme, "other"), &headers, BODY),
            Err(Rejected::Mismatch)
        );
    }
}

#[test]
fn hex_round_trips_and_unhex_refuses_what_is_not_hex() {
    let bytes = [0u8, 1, 0x7f, 0x80, 0xff];
    assert_eq!(super::hex(&bytes), "00017f80ff");
    assert_eq!(super::unhex("00017F80ff").unwrap(), bytes);
    for bad in ["0", "zz", "é1"] {
        assert_eq!(super::unhex(bad), None, "{bad}");
    }
}
