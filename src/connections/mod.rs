//! Connections: one end-user account of one pipeline (a customer's HubSpot
//! portal, Shopify shop, NetSuite account). The pipeline is the template; a
//! connection brings its own id (chosen by the user's app), credentials,
//! params and state (`active`, `paused`, `needs_reauth`, or `removed`).
//!
//! A pipeline opts in with `[connections]`. Its connections are kept by a
//! [`store::Store`] (on the file log a [`journal`], fsynced before any
//! answer; on a JetStream log a KV [`bucket`] every node watches), with
//! credentials sealed ([`seal`]) under `TRIBUTARY_SECRET_KEY`. They are managed at run time through the admin
//! API (`/api/pipelines/{pipeline}/connections…`) and `tributary
//! connections`. No answer, log line or error holds a credential value: only
//! field names leave the store unsealed, and only [`store::Store::credentials`]
//! opens them.
//!
//! What a connection's source is given ([`Fields`]): per-user auth fields are
//! named like the auth's keys without `_env` (bearer `token`; basic
//! `username`, `password`; api_key `key`; oauth2 `refresh_token`, and
//! optionally `access_token` and `expires_at`; oauth1 `token`,
//! `token_secret`), and app-level ones may be overridden (oauth2
//! `client_id`, `client_secret`; oauth1 `consumer_key`, `consumer_secret`).

pub mod bucket;
pub mod cluster;
mod journal;
pub mod notify;
pub mod polling;
pub mod purge;
pub mod seal;
pub mod store;
mod stored;
pub mod template;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::spec::{AuthSpec, SourceSpec};

/// A connection's credentials, by field name.
pub type Credentials = BTreeMap<String, String>;

/// A connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Runs on schedule; its webhooks are stored.
    Active,
    /// Does not run; its webhooks are still stored (resuming loses nothing).
    Paused,
    /// Its credentials were refused; it does not run until they are replaced.
    NeedsReauth,
    /// Removed: its webhook URL answers 410 Gone.
    Removed,
}

/// The credential fields a pipeline's connections take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    /// Every connection must give these.
    pub required: Vec<String>,
    /// A connection may give these.
    pub optional: Vec<String>,
    /// The params its source's templates use: every connection gives them.
    pub params: Vec<String>,
}

impl Fields {
    /// The fields `pipeline`'s source takes from each connection.
    pub fn of(pipeline: &crate::config::spec::PipelineSpec) -> Fields {
        let source = &pipeline.source;
        let by_pointer = pipeline
            .connections
            .as_ref()
            .is_some_and(|c| c.attribute_pointer.is_some());
        let (required, optional): (&[&str], &[&str]) = match source {
            // A connection's own verify secret: instead of the pipeline's
            // (required when it has none). Not with attribution by pointer,
            // where the connection is known only once the body is parsed.
            // And `api_token`, the provider API credential `tributary
            // register --connection` subscribes with (a scheme it knows).
            SourceSpec::Webhook(w) => {
                let registers = crate::register::provider_of(pipeline).is_some();
                match &w.verify {
                    // `register --connection` may bring the secret (Stripe's).
                    Some(v) if !by_pointer && v.secret_envs.is_empty() && registers => {
                        (&[], &["secret", "api_token"])
                    }
                    Some(v) if !by_pointer && v.secret_envs.is_empty() => (&["secret"], &[]),
                    Some(_) if !by_pointer && registers => (&[], &["secret", "api_token"]),
                    Some(_) if !by_pointer => (&[], &["secret"]),
                    _ if registers => (&[], &["api_token"]),
                    _ => (&[], &[]),
                }
            }
            SourceSpec::Poll(p) => match &p.auth {
                AuthSpec::None => (&[], &[]),
                AuthSpec::Bearer { .. } => (&["token"], &[]),
                AuthSpec::Basic { .. } => (&["username", "password"], &[]),
                AuthSpec::ApiKey { .. } => (&["key"], &[]),
                AuthSpec::Oauth2 { .. } => (
                    &["refresh_token"],
                    &["access_token", "expires_at", "client_id", "client_secret"],
                ),
                AuthSpec::Oauth1 { .. } => (
                    &["token", "token_secret"],
                    &["consumer_key", "consumer_secret"],
                ),
            },
        };
        let mut params = Vec::new();
        if let SourceSpec::Poll(p) = source {
            let mut texts: Vec<String> = p.url_template.iter().cloned().collect();
            texts.extend(p.query.iter().map(|(_, v)| v.clone()));
            texts.extend(p.headers.iter().map(|(_, v)| v.clone()));
            texts.extend(p.body.iter().map(|b| b.to_string()));
            for text in texts {
                for name in template::params(&text) {
                    if !params.contains(&name) {
                        params.push(name);
                    }
                }
            }
        }
        Fields {
            required: required.iter().map(|s| s.to_string()).collect(),
            optional: optional.iter().map(|s| s.to_string()).collect(),
            params,
        }
    }

    /// Checks that `params` give every param the source uses.
    pub fn check_params(&self, params: &BTreeMap<String, String>) -> Result<(), store::StoreError> {
        let missing: Vec<&str> = self
            .params
            .iter()
            .filter(|p| !params.contains_key(*p))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(store::StoreError::Invalid(format!(
                "missing params: {} (the pipeline's source uses {{params.NAME}} for each)",
                missing.join(", ")
            )))
        }
    }

    /// Checks that `credentials` give every required field (when `whole`)
    /// and no unknown one, and no empty value; names fields, never values.
    pub fn check(&self, credentials: &Credentials, whole: bool) -> Result<(), store::StoreError> {
        let mut problems = Vec::new();
        let missing: Vec<&str> = self
            .required
            .iter()
            .filter(|f| whole && !credentials.contains_key(*f))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            problems.push(format!("missing credential fields: {}", missing.join(", ")));
        }
        let unknown: Vec<String> = credentials
            .keys()
            .filter(|k| !self.required.contains(k) && !self.optional.contains(k))
            .map(|k| printable(k))
            .collect();
        if !unknown.is_empty() {
            let known: Vec<&str> = self
                .required
                .iter()
                .chain(&self.optional)
                .map(String::as_str)
                .collect();
            problems.push(format!(
                "unknown credential fields: {}; this pipeline's connections take {}",
                unknown.join(", "),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
        let empty: Vec<&str> = credentials
            .iter()
            .filter(|(k, v)| v.is_empty() && self.required.contains(k))
            .map(|(k, _)| k.as_str())
            .collect();
        if !empty.is_empty() {
            problems.push(format!("empty credential fields: {}", empty.join(", ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(store::StoreError::Invalid(problems.join("; ")))
        }
    }
}

/// Whether `id` may name a connection: `[A-Za-z0-9._-]{1,128}`.
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `text` cut to 64 characters with control characters escaped, for messages.
pub(crate) fn printable(text: &str) -> String {
    text.chars().take(64).flat_map(char::escape_debug).collect()
}
