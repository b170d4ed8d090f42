//! `[[sink]] type = "https"`: raw form, spec, defaults, checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::config::check::{positive_duration, valid_name, Errors, OneOrMany};

/// `[[sink]]` with `type = "https"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttpsSink {
    /// Sink name, unique in the pipeline; defaults to the type.
    pub name: Option<String>,
    /// The receiver, `https://…`.
    pub url: Option<String>,
    /// Permit `http://` (loopback and tests).
    pub allow_http: Option<bool>,
    /// Extra trusted CA certificates (PEM), besides the system roots.
    pub ca_file: Option<String>,
    /// How each POST is signed.
    pub signing: Option<RawSigning>,
    /// Deliveries in flight at once (default 32).
    pub concurrency: Option<u64>,
    /// Longest wait for one answer, e.g. `"15s"`.
    pub timeout: Option<String>,
    /// How long an event is retried before it becomes a dead letter, e.g. `"24h"`.
    pub max_retry_duration: Option<String>,
    /// Deliver one at a time, in log order.
    pub ordered: Option<bool>,
}

/// `signing` of an HTTPS sink.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    /// `"standard-webhooks"` (default), `"rsa-sha256"` or `"hmac-sha256"`.
    pub scheme: Option<String>,
    /// Env var(s) holding the secret(s); several sign with each (rotation).
    pub secret_env: Option<OneOrMany>,
    /// Env var holding a PEM private key (`rsa-sha256`).
    pub key_env: Option<String>,
    /// File holding a PEM private key (`rsa-sha256`).
    pub key_file: Option<String>,
    /// Signature header (`rsa-sha256`, `hmac-sha256`).
    pub header: Option<String>,
    /// Written before an HMAC signature, e.g. `"sha256="`.
    pub prefix: Option<String>,
    /// `"hex"` (default) or `"base64"` for `hmac-sha256`.
    pub encoding: Option<String>,
}

/// `type = "https"`.
#[derive(Debug, Clone, Serialize)]
pub struct HttpsSinkSpec {
    /// Unique within the pipeline; names its progress.
    pub name: String,
    /// The receiver's URL exactly as configured (what `rsa-sha256` signs).
    pub url: String,
    /// Extra trusted CA certificates (PEM file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// How each POST is signed.
    pub signing: SigningSpec,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Longest wait for one answer.
    #[serde(serialize_with = "crate::config::check::shown::duration")]
    pub timeout: Duration,
    /// How long an event is retried before it becomes a dead letter.
    #[serde(serialize_with = "crate::config::check::shown::duration")]
    pub max_retry_duration: Duration,
    /// One at a time, in log order.
    pub ordered: bool,
}

impl SigningSpec {
    /// The env vars this signing reads its secrets or key from.
    pub fn secret_envs(&self) -> Vec<&str> {
        match self {
            SigningSpec::StandardWebhooks { secret_envs }
            | SigningSpec::Hmac { secret_envs, .. } => {
                secret_envs.iter().map(String::as_str).collect()
            }
            SigningSpec::Rsa {
                key: KeySource::Env(name),
                ..
            } => vec![name.as_str()],
            SigningSpec::Rsa { .. } => vec![],
        }
    }
}

/// How an HTTPS sink signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "scheme")]
pub enum SigningSpec {
    /// Standard Webhooks; env vars of `whsec_`/`whsk_` secrets.
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks {
        /// Env vars, one secret each.
        #[serde(rename = "secret_env")]
        secret_envs: Vec<String>,
    },
    /// RSA PKCS#1 v1.5 SHA-256 of method + url + body, hex.
    #[serde(rename = "rsa-sha256")]
    Rsa {
        /// Where the PEM key is.
        #[serde(flatten)]
        key: KeySource,
        /// Signature header.
        header: String,
    },
    /// HMAC-SHA256 of the body.
    #[serde(rename = "hmac-sha256")]
    Hmac {
        /// Env vars, one secret each.
        #[serde(rename = "secret_env")]
        secret_envs: Vec<String>,
        /// Signature header.
        header: String,
        /// Written before the signature.
        prefix: String,
        /// Base64 instead of hex.
        #[serde(rename = "encoding", serialize_with = "encoding")]
        base64: bool,
    },
}

/// Where a private key is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum KeySource {
    /// An env var holding the PEM.
    #[serde(rename = "key_env")]
    Env(String),
    /// A PEM file.
    #[serde(rename = "key_file")]
    File(PathBuf),
}

fn encoding<S: Serializer>(base64: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *base64 { "base64" } else { "hex" })
}

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
pub(in crate::config) fn validate(
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

impl super::SinkKind for HttpsSinkSpec {
    fn type_tag(&self) -> &'static str {
        "https"
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn secret_envs(&self) -> Vec<(String, &str)> {
        self.signing
            .secret_envs()
            .into_iter()
            .map(|var| ("signing".to_string(), var))
            .collect()
    }
    fn explain(&self) -> toml::Value {
        crate::config::check::shown::explained("https", self)
    }
}
