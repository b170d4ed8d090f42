//! OAuth 1.0a request signing (RFC 5849 §3): the `Authorization: OAuth …`
//! header of one request, HMAC-SHA256 (NetSuite token-based authentication)
//! or HMAC-SHA1 (Magento integrations and older APIs).
//!
//! The signature base string holds the method, the base URI and every
//! parameter of the request: the query's, an `application/x-www-form-urlencoded`
//! body's, and the `oauth_*` ones (not `realm`, not the signature). A JSON body
//! is not a parameter source (§3.4.1.3.1), so a POST with one signs only its
//! query. Each try of a request is signed anew: a fresh nonce and timestamp.

use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::distr::{Alphanumeric, SampleString};

use crate::config::spec::SignatureMethod;

/// Everything but the unreserved characters `ALPHA DIGIT - . _ ~` (§3.6).
const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// §3.6 percent-encoding.
fn enc(s: &str) -> String {
    utf8_percent_encode(s, RESERVED).to_string()
}

/// The secrets and settings one request is signed with.
pub struct Credentials<'a> {
    /// `oauth_consumer_key`.
    pub consumer_key: &'a str,
    /// The consumer secret.
    pub consumer_secret: &'a str,
    /// `oauth_token`.
    pub token: &'a str,
    /// The token secret.
    pub token_secret: &'a str,
    /// `realm` (NetSuite: the account id); not signed.
    pub realm: Option<&'a str>,
    /// HMAC-SHA256 or HMAC-SHA1.
    pub method: SignatureMethod,
}

/// The per-request values; random and the current time outside tests.
pub struct Once {
    /// `oauth_nonce`.
    pub nonce: String,
    /// `oauth_timestamp`, seconds since the epoch.
    pub timestamp: u64,
}

impl Once {
    /// A 32-character random nonce and the current time.
    pub fn now() -> Self {
        Self {
            nonce: Alphanumeric.sample_string(&mut rand::rng(), 32),
            timestamp: chrono::Utc::now().timestamp().max(0) as u64,
        }
    }
}

/// The `oauth_*` parameters of a request, signature excluded, in sorted order.
fn protocol(creds: &Credentials<'_>, once: &Once) -> Vec<(&'static str, String)> {
    vec![
        ("oauth_consumer_key", creds.consumer_key.to_string()),
        ("oauth_nonce", once.nonce.clone()),
        ("oauth_signature_method", creds.method.name().to_string()),
        ("oauth_timestamp", once.timestamp.to_string()),
        ("oauth_token", creds.token.to_string()),
        ("oauth_version", "1.0".to_string()),
    ]
}

/// The signature base string (§3.4.1): `method & base URI & parameters`,
/// each part encoded. `form` holds a form body's pairs (decoded), if any.
pub fn base_string(
    method: &str,
    url: &url::Url,
    form: &[(String, String)],
    oauth: &[(&str, String)],
) -> String {
    // §3.4.1.2: scheme and host lower case (the url crate does that), the
    // port only if not the default, no query or fragment.
    let base_uri = &url[..url::Position::AfterPath];
    // §3.4.1.3.2: encode each name and value, sort by name then value, join.
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (enc(&k), enc(&v)))
        .chain(form.iter().map(|(k, v)| (enc(k), enc(v))))
        .chain(oauth.iter().map(|(k, v)| (enc(k), enc(v))))
        .collect();
    pairs.sort();
    let normalized = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        enc(base_uri),
        enc(&normalized)
    )
}

/// The base64 HMAC of `base` under `consumer_secret&token_secret` (§3.4.2).
pub fn sign(base: &str, creds: &Credentials<'_>) -> String {
    let key = format!("{}&{}", enc(creds.consumer_secret), enc(creds.token_secret));
    let algorithm = match creds.method {
        SignatureMethod::HmacSha256 => ring::hmac::HMAC_SHA256,
        SignatureMethod::HmacSha1 => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
    };
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(algorithm, key.as_bytes()),
        base.as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// The `Authorization` header value of one request (§3.5.1).
pub fn authorization(
    method: &str,
    url: &url::Url,
    form: &[(String, String)],
    creds: &Credentials<'_>,
    once: &Once,
) -> String {
    let oauth = protocol(creds, once);
    let signature = sign(&base_string(method, url, form, &oauth), creds);
    let mut fields = Vec::with_capacity(oauth.len() + 2);
    if let Some(realm) = creds.realm {
        fields.push(format!("realm=\"{}\"", enc(realm)));
    }
    fields.extend(oauth.iter().map(|(k, v)| format!("{k}=\"{}\"", enc(v))));
    fields.push(format!("oauth_signature=\"{}\"", enc(&signature)));
    format!("OAuth {}", fields.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(
        method: SignatureMethod,
        secret: &'static str,
        token_secret: &'static str,
    ) -> Credentials<'static> {
        Credentials {
            consumer_key: "xvz1evFS4wEEPTGEFPHBog",
            consumer_secret: secret,
            token: "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb",
            token_secret,
            realm: None,
            method,
        }
    }

    /// The worked example of Twitter's "Creating a signature" guide: a POST
    /// with a query parameter and a form body, HMAC-SHA1.
    #[test]
    fn the_published_twitter_example_signs_to_its_published_signature() {
        let c = creds(
            SignatureMethod::HmacSha1,
            "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
            "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE",
        );
        let once = Once {
            nonce: "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg".into(),
            timestamp: 1318622958,
        };
        let url = url::Url::parse(
            "https://api.twitter.com/1.1/statuses/update.json?include_entities=true",
        )
        .unwrap();
        let form = vec![(
            "status".to_string(),
            "Hello Ladies + Gentlemen, a signed OAuth request!".to_string(),
        )];
        let base = base_string("POST", &url, &form, &protocol(&c, &once));
        assert_eq!(
            base,
            "POST&https%3A%2F%2Fapi.twitter.com%2F1.1%2Fstatuses%2Fupdate.json&include_entities%3Dtrue%26oauth_consumer_key%3Dxvz1evFS4wEEPTGEFPHBog%26oauth_nonce%3DkYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D1318622958%26oauth_token%3D370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb%26oauth_version%3D1.0%26status%3DHello%2520Ladies%2520%252B%2520Gentlemen%252C%2520a%2520signed%2520OAuth%2520request%2521"
        );
        assert_eq!(sign(&base, &c), "hCtSmYh+iHYCEqBWrE7C7hYmtUk=");
        let header = authorization("POST", &url, &form, &c, &once);
        assert!(
            header.ends_with("oauth_signature=\"hCtSmYh%2BiHYCEqBWrE7C7hYmtUk%3D\""),
            "{header}"
        );
    }

    /// RFC 5849 §3.4.1.1's base string: repeated names, encoded values, an
    /// empty value, parameters from the query and the form body.
    #[test]
    fn the_rfc_example_base_string_is_reproduced() {
        let url =
            url::Url::parse("http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b").unwrap();
        let form = vec![
            ("c2".to_string(), String::new()),
            ("a3".to_string(), "2 q".to_string()),
        ];
        let oauth = vec![
            ("oauth_consumer_key", "9djdj82h48djs9d2".to_string()),
            ("oauth_token", "kkk9d7dh3k39sjv7".to_string()),
            ("oauth_signature_method", "HMAC-SHA1".to_string()),
            ("oauth_timestamp", "137131201".to_string()),
            ("oauth_nonce", "7d8f3e4a".to_string()),
        ];
        assert_eq!(
            base_string("POST", &url, &form, &oauth),
            "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q%26a3%3Da%26b5%3D%253D%25253D%26c%2540%3D%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26oauth_nonce%3D7d8f3e4a%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131201%26oauth_token%3Dkkk9d7dh3k39sjv7"
        );
    }

    #[test]
    fn the_realm_is_in_the_header_but_not_signed_and_each_try_has_its_own_nonce() {
        let mut c = creds(SignatureMethod::HmacSha256, "cs", "ts");
        let url = url::Url::parse("https://1234567.suitetalk.api.netsuite.com/services/rest/query/v1/suiteql?limit=2&offset=0").unwrap();
        let once = Once {
            nonce: "n".into(),
            timestamp: 1,
        };
        let without = authorization("POST", &url, &[], &c, &once);
        c.realm = Some("1234567_SB1");
        let with = authorization("POST", &url, &[], &c, &once);
        assert!(
            with.starts_with("OAuth realm=\"1234567_SB1\", oauth_consumer_key="),
            "{with}"
        );
        assert!(with.contains("oauth_signature_method=\"HMAC-SHA256\""));
        let signature = |h: &str| h.rsplit_once("oauth_signature=").unwrap().1.to_string();
        assert_eq!(signature(&with), signature(&without), "realm is not signed");
        let (a, b) = (Once::now(), Once::now());
        assert_ne!(a.nonce, b.nonce);
        assert_eq!(a.nonce.len(), 32);
    }
}
