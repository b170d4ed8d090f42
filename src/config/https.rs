//! Validation of `[[sink]]` with `type = "https"` and of a webhook's
//! `verify` (both signature settings).

use std::path::Path;
use std::time::Duration;

use super::raw::{RawHttpsSink, RawSigning, RawVerify};
use super::spec::{HttpsSinkSpec, KeySource, SigningSpec, VerifyScheme, VerifySpec};
use super::validate::{positive_duration, valid_name, Errors};

/// Default `concurrency`.
pub const DEFAULT_CONCURRENCY: u64 = 32;
/// Default `timeout` of one delivery.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default `max_retry_duration`.
pub const DEFAULT_MAX_RETRY: Duration = Duration::from_secs(24 * 3600);
/// Headers tributary sets on every POST; a signature header may not be one.
const RESERVED: [&str; 6] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
];
/// Default signature header of `rsa-sha256` and `hmac-sha256`.
pub const DEFAULT_HEADER: &str = "X-Tributary-Signature";

/// Validates an HTTPS sink.
pub(super) fn sink(
    key: &str,
    raw: &RawHttpsSink,
    root: &Path,
    e: &mut Errors<'_>,
) -> Option<HttpsSinkSpec> {
    let start = e.list.len();
    let name = raw.name.clone().unwrap_or_else(|| "https".into());
    if !valid_name(&name) {
        e.push(
            format!("{key}.name"),
            format!("\"{name}\" is not a valid name"),
            "use lower-case letters, digits, '_' or '-'",
        );
    }
    let allow_http = raw.allow_http.unwrap_or(false);
    let url = match raw.url.as_deref() {
        None => {
            e.push(
                format!("{key}.url"),
                "missing",
                "add url = \"https://your-server.example/hooks/tributary\"",
            );
            None
        }
        Some(text) => match url::Url::parse(text) {
            Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && allow_http) => {
                Some(text.to_string())
            }
            Ok(u) if u.scheme() == "http" => {
                e.push(format!("{key}.url"), format!("\"{text}\" is not https"), "use https://, or set allow_http = true (for loopback and tests only: events travel in clear)");
                None
            }
            _ => {
                e.push(
                    format!("{key}.url"),
                    format!("\"{text}\" is not an http(s) URL"),
                    "write a full URL such as \"https://your-server.example/hooks/tributary\"",
                );
                None
            }
        },
    };
    let ca_file = raw.ca_file.as_ref().map(|f| root.join(f));
    if let Some(f) = &ca_file {
        if !f.is_file() {
            e.push(
                format!("{key}.ca_file"),
                format!("{} is not a file", f.display()),
                "point it at a PEM file of CA certificates",
            );
        }
    }
    let concurrency = raw.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if concurrency == 0 || concurrency > 1024 {
        e.push(
            format!("{key}.concurrency"),
            format!("{concurrency} is out of range"),
            "use 1 to 1024 (default 32)",
        );
    }
    let timeout = positive_duration(
        raw.timeout.as_deref(),
        &format!("{key}.timeout"),
        DEFAULT_TIMEOUT,
        "15s",
        e,
    );
    let max_retry_duration = positive_duration(
        raw.max_retry_duration.as_deref(),
        &format!("{key}.max_retry_duration"),
        DEFAULT_MAX_RETRY,
        "15s",
        e,
    );
    let signing = match &raw.signing {
        None => {
            e.push(format!("{key}.signing"), "missing: receivers must be able to tell tributary's POSTs from anyone's", "add signing = { scheme = \"standard-webhooks\", secret_env = \"TRIBUTARY_SIGNING_SECRET\" }");
            None
        }
        Some(s) => signing(key, s, root, e),
    };
    if e.list.len() > start {
        return None;
    }
    Some(HttpsSinkSpec {
        name,
        url: url?,
        ca_file,
        signing: signing?,
        concurrency: concurrency as usize,
        timeout,
        max_retry_duration,
        ordered: raw.ordered.unwrap_or(false),
    })
}

fn signing(key: &str, raw: &RawSigning, root: &Path, e: &mut Errors<'_>) -> Option<SigningSpec> {
    let scheme = raw.scheme.as_deref().unwrap_or("standard-webhooks");
    let at = |k: &str| format!("{key}.signing.{k}");
    let secrets = |e: &mut Errors<'_>| match &raw.secret_env {
        Some(list) if !list.to_vec().is_empty() && list.to_vec().iter().all(|n| !n.is_empty()) => {
            Some(list.to_vec())
        }
        _ => {
            e.push(at("secret_env"), "missing", "name the env var(s) that hold the secret, e.g. secret_env = \"TRIBUTARY_SIGNING_SECRET\"; several for rotation: [\"NEW\", \"OLD\"]");
            None
        }
    };
    let unused = |keys: &[(&str, bool)], e: &mut Errors<'_>| {
        for (k, set) in keys {
            if *set {
                e.push(
                    at(k),
                    format!("is not used by scheme = \"{scheme}\""),
                    "remove it",
                );
            }
        }
    };
    let header = raw.header.clone().unwrap_or_else(|| DEFAULT_HEADER.into());
    if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
        e.push(
            at("header"),
            format!("\"{header}\" is not a header name"),
            "use e.g. \"X-Signature\"",
        );
    } else if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&header)) {
        e.push(
            at("header"),
            format!("\"{header}\" is a header tributary sets itself"),
            "use e.g. \"X-Signature\"",
        );
    }
    if let Some(prefix) = &raw.prefix {
        if reqwest::header::HeaderValue::from_str(prefix).is_err() {
            e.push(
                at("prefix"),
                format!("\"{prefix}\" cannot start a header value"),
                "use printable ASCII such as \"sha256=\"",
            );
        }
    }
    match scheme {
        "standard-webhooks" => {
            unused(
                &[
                    ("key_env", raw.key_env.is_some()),
                    ("key_file", raw.key_file.is_some()),
                    ("header", raw.header.is_some()),
                    ("prefix", raw.prefix.is_some()),
                    ("encoding", raw.encoding.is_some()),
                ],
                e,
            );
            Some(SigningSpec::StandardWebhooks {
                secret_envs: secrets(e)?,
            })
        }
        "rsa-sha256" => {
            unused(
                &[
                    ("secret_env", raw.secret_env.is_some()),
                    ("prefix", raw.prefix.is_some()),
                    ("encoding", raw.encoding.is_some()),
                ],
                e,
            );
            let source = match (&raw.key_env, &raw.key_file) {
                (Some(env), None) => Some(KeySource::Env(env.clone())),
                (None, Some(file)) => Some(KeySource::File(root.join(file))),
                _ => {
                    e.push(at("key_env"), "set exactly one of key_env and key_file", "key_env = \"SIGNING_KEY_PEM\" (the PEM in an env var) or key_file = \"keys/signing.pem\"");
                    None
                }
            };
            Some(SigningSpec::Rsa {
                key: source?,
                header,
            })
        }
        "hmac-sha256" => {
            unused(
                &[
                    ("key_env", raw.key_env.is_some()),
                    ("key_file", raw.key_file.is_some()),
                ],
                e,
            );
            let base64 = match raw.encoding.as_deref() {
                None | Some("hex") => false,
                Some("base64") => true,
                Some(other) => {
                    e.push(
                        at("encoding"),
                        format!("unknown encoding \"{other}\""),
                        "use \"hex\" or \"base64\"",
                    );
                    false
                }
            };
            let secret_envs = secrets(e)?;
            if secret_envs.len() > 1 {
                // Receivers of one signature header reject a repeated or joined one.
                e.push(at("secret_env"), "hmac-sha256 signs with one secret", "name one env var; for rotation without downtime use scheme = \"standard-webhooks\", which sends one signature per secret");
            }
            Some(SigningSpec::Hmac {
                secret_envs,
                header,
                prefix: raw.prefix.clone().unwrap_or_default(),
                base64,
            })
        }
        other => {
            e.push(
                at("scheme"),
                format!("unknown scheme \"{other}\""),
                "use \"standard-webhooks\", \"rsa-sha256\" or \"hmac-sha256\"",
            );
            None
        }
    }
}

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
