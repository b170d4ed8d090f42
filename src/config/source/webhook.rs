//! A webhook source (`[source] type = "webhook"`): raw form, spec,
//! defaults and checks; its `verify` and `dedupe` are in [`super::verify`]
//! and [`super::dedupe`].

use serde::{Deserialize, Serialize, Serializer};

use super::dedupe::{DedupeSpec, RawDedupe};
use super::verify::{RawVerify, VerifySpec};
use crate::config::check::{size, Errors, RawSize};

/// Default `source.max_body`: 10 MiB, enough for Shopify's and GitHub's largest payloads.
pub const DEFAULT_MAX_BODY: u64 = 10 << 20;
/// Paths the HTTP server keeps for itself.
const RESERVED_PATHS: [&str; 5] = ["/healthz", "/readyz", "/metrics", "/api", "/status"];

/// `[source]` with `type = "webhook"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// URL path that receives the POSTs, e.g. `"/hooks/shopify/customers"`.
    pub path: Option<String>,
    /// Largest accepted request body, e.g. `"10MiB"`.
    pub max_body: Option<RawSize>,
    /// Provider signature verification.
    pub verify: Option<RawVerify>,
    /// Most requests per second this path accepts (burst: one second's worth); more get 429.
    pub rate_limit: Option<f64>,
    /// Provider retries stored once, by delivery id.
    pub dedupe: Option<RawDedupe>,
}

/// `type = "webhook"`.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookSpec {
    /// URL path, starting with `/`.
    pub path: String,
    /// Largest accepted body in bytes.
    #[serde(serialize_with = "crate::config::check::shown::size")]
    pub max_body: u64,
    /// Provider signature verification, if configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    /// Requests per second accepted (burst: one second's worth), if limited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
    /// Repeated deliveries stored once, if on.
    #[serde(serialize_with = "dedupe_or_off")]
    pub dedupe: Option<DedupeSpec>,
}

/// `check --explain` shows dedupe that is off as `dedupe = false`.
fn dedupe_or_off<S: Serializer>(dedupe: &Option<DedupeSpec>, s: S) -> Result<S::Ok, S::Error> {
    match dedupe {
        None => s.serialize_bool(false),
        Some(d) => d.serialize(s),
    }
}

/// Checks a webhook source; with `connections`, each connection may bring
/// its own verify secret.
pub(in crate::config) fn validate(
    raw: &RawWebhook,
    connections: bool,
    e: &mut Errors<'_>,
) -> Option<WebhookSpec> {
    let verify = raw
        .verify
        .as_ref()
        .and_then(|v| super::verify::validate(v, connections, e));
    let path = match raw.path.as_deref() {
        None => {
            e.push(
                "source.path",
                "missing",
                "add path = \"/hooks/<app>/<topic>\"",
            );
            None
        }
        Some(p) if !p.starts_with('/') || p.contains(['?', '#', ' ']) => {
            e.push(
                "source.path",
                format!("\"{p}\" is not a URL path"),
                "start it with '/' and leave out query strings, e.g. \"/hooks/shopify/customers\"",
            );
            None
        }
        Some(p)
            if RESERVED_PATHS
                .iter()
                .any(|r| p == *r || p.starts_with(&format!("{r}/"))) =>
        {
            e.push(
                "source.path",
                format!("\"{p}\" is reserved for tributary's own endpoints"),
                "choose a path under /hooks/",
            );
            None
        }
        Some(p) => Some(p.to_string()),
    };
    let max_body = match &raw.max_body {
        None => DEFAULT_MAX_BODY,
        Some(s) => size(s, "source.max_body", e).unwrap_or(DEFAULT_MAX_BODY),
    };
    if max_body == 0 {
        e.push(
            "source.max_body",
            "must be above zero",
            "set e.g. \"10MiB\"",
        );
    } else if max_body > crate::event::MAX_PAYLOAD_BYTES as u64 {
        e.push(
            "source.max_body",
            format!("{max_body} bytes is more than one log record holds"),
            "set at most \"1023MiB\"",
        );
    }
    if let Some(rate) = raw.rate_limit {
        if !(rate.is_finite() && rate > 0.0) {
            e.push(
                "source.rate_limit",
                format!("{rate} is not a rate"),
                "set requests per second above zero, e.g. rate_limit = 100",
            );
        }
    }
    if raw.verify.is_some() && verify.is_none() {
        return None;
    }
    let dedupe_errors = e.list.len();
    let dedupe =
        super::dedupe::validate(raw.dedupe.as_ref(), verify.as_ref().map(|v| &v.scheme), e);
    if e.list.len() > dedupe_errors {
        return None;
    }
    Some(WebhookSpec {
        path: path?,
        max_body,
        verify,
        rate_limit: raw.rate_limit,
        dedupe,
    })
}

impl super::SourceKind for WebhookSpec {
    fn type_tag(&self) -> &'static str {
        "webhook"
    }
    fn label(&self) -> String {
        format!("webhook:{}", self.path)
    }
    fn secret_envs(&self) -> Vec<(String, &str)> {
        self.verify
            .iter()
            .flat_map(|v| &v.secret_envs)
            .map(|var| ("verify.secret_env".to_string(), var.as_str()))
            .collect()
    }
    fn http_path(&self) -> Option<&str> {
        Some(&self.path)
    }
    fn dedupe_window(&self) -> Option<std::time::Duration> {
        self.dedupe.as_ref().map(|d| d.window)
    }
    fn explain(&self) -> toml::Value {
        crate::config::check::shown::explained("webhook", self)
    }
}
