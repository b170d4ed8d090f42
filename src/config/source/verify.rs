//! A webhook's `verify`: raw form, spec, defaults and checks.

use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::config::check::{positive_duration, Errors, OneOrMany};

/// `source.verify` of a webhook.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    /// `shopify`, `github`, `stripe`, `slack`, `zoom`, `standard-webhooks`, `hubspot-v3` or `hmac`.
    pub scheme: Option<String>,
    /// Env var(s) of the secret(s); several for rotation.
    pub secret_env: Option<OneOrMany>,
    /// How far a signed timestamp may be from now, e.g. `"5m"`.
    pub tolerance: Option<String>,
    /// `hmac`: the signature header.
    pub header: Option<String>,
    /// `hmac`: text before the signature, e.g. `"sha256="`.
    pub prefix: Option<String>,
    /// `hmac`: `"hex"` (default) or `"base64"`.
    pub encoding: Option<String>,
}

/// `source.verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifySpec {
    /// The provider's scheme.
    #[serde(flatten)]
    pub scheme: VerifyScheme,
    /// Env vars of the secrets (rotation: any verifies).
    #[serde(rename = "secret_env")]
    pub secret_envs: Vec<String>,
    /// How far a signed timestamp may be from now.
    #[serde(serialize_with = "crate::config::check::shown::duration")]
    pub tolerance: Duration,
}

/// A provider's signature scheme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "scheme", rename_all = "kebab-case")]
pub enum VerifyScheme {
    /// `X-Shopify-Hmac-Sha256`.
    Shopify,
    /// `X-Hub-Signature-256`.
    Github,
    /// `Stripe-Signature`.
    Stripe,
    /// `X-Slack-Signature` v0.
    Slack,
    /// `x-zm-signature` v0 (Slack's scheme under Zoom's header names).
    Zoom,
    /// `webhook-*` / `svix-*`.
    StandardWebhooks,
    /// `X-HubSpot-Signature-v3`.
    HubspotV3,
    /// A generic HMAC-SHA256 of the body.
    Hmac {
        /// Header name.
        header: String,
        /// Text before the signature.
        prefix: String,
        /// Base64 instead of hex.
        #[serde(rename = "encoding", serialize_with = "encoding")]
        base64: bool,
    },
}

fn encoding<S: Serializer>(base64: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *base64 { "base64" } else { "hex" })
}

/// Default `verify.tolerance`.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Validates a webhook's `verify`.
/// With `connections`, `secret_env` may be left out: each connection then
/// gives its own secret.
pub(in crate::config) fn validate(
    raw: &RawVerify,
    connections: bool,
    e: &mut Errors<'_>,
) -> Option<VerifySpec> {
    let start = e.list.len();
    let scheme_name = raw.scheme.as_deref().unwrap_or("");
    let generic = scheme_name == "hmac";
    for (key, set) in [
        ("header", raw.header.is_some()),
        ("prefix", raw.prefix.is_some()),
        ("encoding", raw.encoding.is_some()),
    ] {
        if set && !generic {
            e.push(
                format!("source.verify.{key}"),
                format!("is used only by scheme = \"hmac\", not \"{scheme_name}\""),
                "remove it: the provider's scheme fixes its header and encoding",
            );
        }
    }
    let scheme = match scheme_name {
        "shopify" => Some(VerifyScheme::Shopify),
        "github" => Some(VerifyScheme::Github),
        "stripe" => Some(VerifyScheme::Stripe),
        "slack" => Some(VerifyScheme::Slack),
        "zoom" => Some(VerifyScheme::Zoom),
        "standard-webhooks" | "svix" => Some(VerifyScheme::StandardWebhooks),
        "hubspot-v3" => Some(VerifyScheme::HubspotV3),
        "hmac" => {
            let header = raw.header.clone().unwrap_or_default();
            if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                e.push(
                    "source.verify.header",
                    "missing or not a header name",
                    "name the header that carries the signature, e.g. header = \"X-Signature\"",
                );
            }
            let base64 = match raw.encoding.as_deref() {
                None | Some("hex") => false,
                Some("base64") => true,
                Some(other) => {
                    e.push(
                        "source.verify.encoding",
                        format!("unknown encoding \"{other}\""),
                        "use \"hex\" or \"base64\"",
                    );
                    false
                }
            };
            Some(VerifyScheme::Hmac {
                header: header.to_ascii_lowercase(),
                prefix: raw.prefix.clone().unwrap_or_default(),
                base64,
            })
        }
        "" => {
            e.push("source.verify.scheme", "missing", "add scheme = \"shopify\", \"github\", \"stripe\", \"slack\", \"zoom\", \"standard-webhooks\", \"hubspot-v3\" or \"hmac\"");
            None
        }
        other => {
            e.push("source.verify.scheme", format!("unknown scheme \"{other}\""), "use \"shopify\", \"github\", \"stripe\", \"slack\", \"zoom\", \"standard-webhooks\", \"hubspot-v3\" or \"hmac\"");
            None
        }
    };
    let secret_envs = match &raw.secret_env {
        Some(list) if !list.to_vec().is_empty() && list.to_vec().iter().all(|n| !n.is_empty()) => {
            list.to_vec()
        }
        // Each connection gives "secret".
        None if connections => Vec::new(),
        _ => {
            e.push("source.verify.secret_env", "missing", "name the env var that holds the provider's webhook secret, e.g. secret_env = \"SHOPIFY_WEBHOOK_SECRET\"; several for rotation");
            Vec::new()
        }
    };
    let tolerance = positive_duration(
        raw.tolerance.as_deref(),
        "source.verify.tolerance",
        DEFAULT_TOLERANCE,
        "5m",
        e,
    );
    (e.list.len() == start).then_some(VerifySpec {
        scheme: scheme?,
        secret_envs,
        tolerance,
    })
}
