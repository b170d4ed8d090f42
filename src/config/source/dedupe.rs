//! A webhook's `dedupe` (raw form, spec, checks): on by default for the verify schemes
//! whose deliveries carry an id, off otherwise unless configured.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::verify::VerifyScheme;
use crate::config::check::{positive_duration, Errors};

/// `source.dedupe`: `false`, `true`, or a table.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum RawDedupe {
    /// `true` (the scheme's delivery id) or `false` (off).
    Switch(bool),
    /// Where the id is and how long it is remembered.
    Table(RawDedupeTable),
}

/// `source.dedupe = { … }`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDedupeTable {
    /// Request header carrying the delivery id.
    pub header: Option<String>,
    /// JSON pointer to each event's id, e.g. `"/id"` (Stripe).
    pub pointer: Option<String>,
    /// How long an id is remembered, e.g. `"24h"`.
    pub window: Option<String>,
}

/// `source.dedupe`, defaulted from the verify scheme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DedupeSpec {
    /// Where a delivery's id is.
    #[serde(flatten)]
    pub by: DedupeBy,
    /// How long an id is remembered (also across restarts).
    #[serde(serialize_with = "crate::config::check::shown::duration")]
    pub window: Duration,
}

/// Where a delivery's id is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DedupeBy {
    /// The first of these request headers (lower-case) that is present: one id per request.
    #[serde(rename = "header")]
    Headers(Vec<String>),
    /// A JSON pointer into each event: one id per event.
    #[serde(rename = "pointer")]
    Pointer(String),
}

/// Default `source.dedupe.window`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Longest `source.dedupe.window`: ids are kept in memory for that long.
const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// The delivery-id headers a provider's scheme sends, first match wins.
fn scheme_headers(scheme: Option<&VerifyScheme>) -> Option<Vec<String>> {
    let names: &[&str] = match scheme? {
        VerifyScheme::Shopify => &["x-shopify-webhook-id"],
        VerifyScheme::Github => &["x-github-delivery"],
        VerifyScheme::StandardWebhooks => &["webhook-id", "svix-id"],
        _ => return None,
    };
    Some(names.iter().map(|n| n.to_string()).collect())
}

/// Validates `source.dedupe` given the source's verify scheme.
pub(in crate::config) fn validate(
    raw: Option<&RawDedupe>,
    scheme: Option<&VerifyScheme>,
    e: &mut Errors<'_>,
) -> Option<DedupeSpec> {
    let by_scheme = scheme_headers(scheme);
    let table = match raw {
        None => {
            return by_scheme.map(|headers| DedupeSpec {
                by: DedupeBy::Headers(headers),
                window: DEFAULT_WINDOW,
            })
        }
        Some(RawDedupe::Switch(false)) => return None,
        Some(RawDedupe::Switch(true)) => None,
        Some(RawDedupe::Table(t)) => Some(t),
    };
    let header = table.and_then(|t| t.header.as_deref());
    let pointer = table.and_then(|t| t.pointer.as_deref());
    let by = match (header, pointer) {
        (Some(_), Some(_)) => {
            e.push(
                "source.dedupe",
                "has both header and pointer",
                "keep one: header = \"…\" for an id per request, pointer = \"/id\" for an id in each event",
            );
            None
        }
        (Some(h), None) => {
            if axum::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                e.push(
                    "source.dedupe.header",
                    format!("\"{h}\" is not a header name"),
                    "name the header that carries the delivery id, e.g. header = \"X-Request-Id\"",
                );
                None
            } else {
                Some(DedupeBy::Headers(vec![h.to_ascii_lowercase()]))
            }
        }
        (None, Some(p)) => {
            if !p.starts_with('/') {
                e.push(
                    "source.dedupe.pointer",
                    format!("\"{p}\" is not a JSON pointer"),
                    "start it with '/', e.g. pointer = \"/id\"",
                );
                None
            } else {
                Some(DedupeBy::Pointer(p.to_string()))
            }
        }
        (None, None) => match by_scheme {
            Some(headers) => Some(DedupeBy::Headers(headers)),
            None => {
                e.push(
                    "source.dedupe",
                    "does not say where the delivery id is, and the verify scheme (if any) sends none",
                    "add header = \"<header with the delivery id>\" or pointer = \"/id\" (e.g. Stripe's event id)",
                );
                None
            }
        },
    };
    let window = positive_duration(
        table.and_then(|t| t.window.as_deref()),
        "source.dedupe.window",
        DEFAULT_WINDOW,
        "24h",
        e,
    );
    if window > MAX_WINDOW {
        e.push(
            "source.dedupe.window",
            "is longer than 30 days",
            "ids are held in memory for the whole window; use e.g. \"24h\" or \"7d\"",
        );
    }
    Some(DedupeSpec { by: by?, window })
}
