//! A webhook's `verify`: checks and defaults.

use std::time::Duration;

use super::raw::RawVerify;
use super::spec::{VerifyScheme, VerifySpec};
use super::validate::{positive_duration, Errors};

/// Default `verify.tolerance`.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Validates a webhook's `verify`.
pub(super) fn verify(raw: &RawVerify, e: &mut Errors<'_>) -> Option<VerifySpec> {
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
            e.push("source.verify.scheme", "missing", "add scheme = \"shopify\", \"github\", \"stripe\", \"slack\", \"standard-webhooks\", \"hubspot-v3\" or \"hmac\"");
            None
        }
        other => {
            e.push("source.verify.scheme", format!("unknown scheme \"{other}\""), "use \"shopify\", \"github\", \"stripe\", \"slack\", \"standard-webhooks\", \"hubspot-v3\" or \"hmac\"");
            None
        }
    };
    let secret_envs = match &raw.secret_env {
        Some(list) if !list.to_vec().is_empty() && list.to_vec().iter().all(|n| !n.is_empty()) => {
            list.to_vec()
        }
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
