//! `[connections]`: the pipeline is a template, and each end-user account
//! it streams from is a connection added at run time (see
//! [`crate::connections`]). Per-user secrets then come from each
//! connection: the auth's per-user `*_env` keys must be absent.

use serde::{Deserialize, Serialize};

use super::check::Errors;

/// Runs in flight at once across a pipeline's connections, by default.
pub const DEFAULT_MAX_CONCURRENT_RUNS: u32 = 16;

/// `[connections]` as written.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConnections {
    /// Most poll runs in flight at once across the pipeline's connections.
    pub max_concurrent_runs: Option<u32>,
    /// Where your app hears about its connections.
    pub notify: Option<RawNotify>,
    /// How a webhook sent to the source's own path names its connection.
    pub attribute: Option<RawAttribute>,
}

/// `[connections] attribute`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAttribute {
    /// A request header whose value is one of a connection's `match` values.
    pub header: Option<String>,
    /// A JSON pointer into each event (e.g. `/portalId`) whose value, a
    /// string or number, is one of a connection's `match` values.
    pub pointer: Option<String>,
}

/// `[connections] notify`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// The app's URL.
    pub url: Option<String>,
    /// Env var holding the `whsec_` secret the POSTs are signed with.
    pub secret_env: Option<String>,
}

/// `[connections]`, defaulted.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsSpec {
    /// Most poll runs in flight at once across the pipeline's connections.
    pub max_concurrent_runs: u32,
    /// Where your app hears about its connections, if anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifySpec>,
    /// The request header (lower case) that names a webhook's connection by
    /// one of its `match` values, on the source's own path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribute_header: Option<String>,
    /// The JSON pointer into each event whose value names its connection
    /// by one of its `match` values, on the source's own path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribute_pointer: Option<String>,
}

/// `[connections] notify`, checked.
#[derive(Debug, Clone, Serialize)]
pub struct NotifySpec {
    /// The app's URL (https, or http to this machine).
    #[serde(serialize_with = "crate::config::check::shown::display")]
    pub url: url::Url,
    /// Env var holding the signing secret.
    pub secret_env: String,
}

/// Checks `[connections]`; `webhook` says whether the source is one.
pub(super) fn validate(
    raw: &RawConnections,
    webhook: bool,
    e: &mut Errors<'_>,
) -> Option<ConnectionsSpec> {
    let max = raw
        .max_concurrent_runs
        .unwrap_or(DEFAULT_MAX_CONCURRENT_RUNS);
    if !(1..=10_000).contains(&max) {
        e.push(
            "connections.max_concurrent_runs",
            format!("{max} is out of range"),
            "use a number from 1 to 10000",
        );
        return None;
    }
    let notify = match &raw.notify {
        None => None,
        Some(n) => Some(notify(n, e)?),
    };
    let by = raw
        .attribute
        .as_ref()
        .map(|a| (a.header.as_deref(), a.pointer.as_deref()));
    let (attribute_header, attribute_pointer) = match by {
        None => (None, None),
        Some(_) if !webhook => {
            e.push(
                "connections.attribute",
                "only a webhook source's requests can be attributed",
                "remove attribute; a poll source runs each connection itself",
            );
            return None;
        }
        Some((Some(_), Some(_))) => {
            e.push(
                "connections.attribute",
                "names both a header and a pointer",
                "keep one: a header (the whole request is one connection's) or a pointer (each event names its own)",
            );
            return None;
        }
        Some((Some(h), None))
            if !h.is_empty() && reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_ok() =>
        {
            (Some(h.to_ascii_lowercase()), None)
        }
        Some((None, Some(p))) if p.starts_with('/') => (None, Some(p.to_string())),
        Some((None, Some(_))) => {
            e.push(
                "connections.attribute.pointer",
                "is not a JSON pointer",
                "write attribute = { pointer = \"/portalId\" } (it starts with /, from the top of each event)",
            );
            return None;
        }
        Some(_) => {
            e.push(
                "connections.attribute",
                "missing a header name or a pointer",
                "write attribute = { header = \"X-Shopify-Shop-Domain\" } or attribute = { pointer = \"/portalId\" }",
            );
            return None;
        }
    };
    Some(ConnectionsSpec {
        max_concurrent_runs: max,
        notify,
        attribute_header,
        attribute_pointer,
    })
}

fn notify(raw: &RawNotify, e: &mut Errors<'_>) -> Option<NotifySpec> {
    let url = match raw.url.as_deref().map(url::Url::parse) {
        None => {
            e.push(
                "connections.notify.url",
                "missing",
                "add url = \"https://your-app.example.com/tributary/events\"",
            );
            None
        }
        Some(Ok(u)) if u.scheme() == "https" => Some(u),
        Some(Ok(u))
            if u.scheme() == "http"
                && matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")) =>
        {
            Some(u)
        }
        Some(_) => {
            e.push(
                "connections.notify.url",
                "is not an https URL",
                "use https:// (plain http only to 127.0.0.1 or localhost)",
            );
            None
        }
    };
    let secret_env = match raw.secret_env.as_deref() {
        Some(name) if !name.is_empty() && !name.contains(['=', '\0']) => Some(name.to_string()),
        _ => {
            e.push(
                "connections.notify.secret_env",
                "missing or not an env var name",
                "name the env var holding a whsec_ secret (Standard Webhooks), e.g. secret_env = \"NOTIFY_SECRET\"",
            );
            None
        }
    };
    Some(NotifySpec {
        url: url?,
        secret_env: secret_env?,
    })
}
