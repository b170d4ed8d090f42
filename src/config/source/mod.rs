//! The sources' configuration, one file per component: a webhook
//! ([`webhook`]) with its signature check ([`verify`]) and retry dedupe
//! ([`dedupe`]), and a poll source ([`poll`]). Each holds its raw form,
//! spec, defaults and checks; `check --explain` prints the spec through
//! `Serialize`. This file holds the kinds' registry in the config: the
//! tagged [`RawSource`], the [`SourceSpec`] enum, the one `validate` and
//! `kind` match over them, and the [`SourceKind`] trait every spec answers.

pub mod dedupe;
pub mod poll;
pub mod verify;
pub mod webhook;

use poll::{PollSpec, RawPoll};
use webhook::{RawWebhook, WebhookSpec};

use super::check::Errors;

/// `[source]`, tagged by `type`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RawSource {
    /// Events POSTed to a path of the HTTP server.
    Webhook(Box<RawWebhook>),
    /// Cron-scheduled REST pulls.
    Poll(Box<RawPoll>),
}

impl RawSource {
    /// Whether events are sent to tributary (with request headers a
    /// `[route]` may read), rather than fetched.
    pub fn is_sent(&self) -> bool {
        matches!(self, RawSource::Webhook(_))
    }
}

/// A trigger.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// Events POSTed to a path.
    Webhook(WebhookSpec),
    /// Scheduled REST pulls.
    Poll(Box<PollSpec>),
}

impl SourceSpec {
    /// What the source's kind answers about it: the one `match` over source
    /// kinds in the config.
    pub fn kind(&self) -> &dyn SourceKind {
        match self {
            SourceSpec::Webhook(w) => w,
            SourceSpec::Poll(p) => p.as_ref(),
        }
    }

    /// The value of the `_source` column.
    pub fn label(&self) -> String {
        self.kind().label()
    }
}

/// Checks `[source]`.
/// With `connections`, per-user secrets come from each connection.
pub(super) fn validate(
    raw: Option<&RawSource>,
    connections: bool,
    e: &mut Errors<'_>,
) -> Option<SourceSpec> {
    let raw = match raw {
        None => {
            e.push(
                "source",
                "missing",
                "add a [source] table with type = \"webhook\" and path = \"/hooks/…\", or type = \"poll\" and url = \"https://…\"",
            );
            return None;
        }
        Some(RawSource::Poll(p)) => return poll::source(p, connections, e),
        Some(RawSource::Webhook(w)) => w,
    };
    webhook::validate(raw, connections, e).map(SourceSpec::Webhook)
}

/// What every source kind answers from its config alone. Each kind's spec
/// implements it in its own file; [`super::SourceSpec::kind`] is the one
/// `match` over kinds in `config/` (parsing aside), and
/// [`crate::source::build`] the one that builds. Questions a kind may not
/// need have defaults.
pub trait SourceKind: Send + Sync {
    /// The value of its `type` key (and the source's kind in the admin API).
    fn type_tag(&self) -> &'static str;
    /// The value of the `_source` column.
    fn label(&self) -> String;
    /// The env vars its secrets come from, each with the key that names it
    /// (relative to `source`).
    fn secret_envs(&self) -> Vec<(String, &str)> {
        Vec::new()
    }
    /// On a JetStream log, whether one node at a time runs it (under a
    /// lease) rather than every node: a source that fetches, as opposed to
    /// one that is sent events.
    fn needs_leader(&self) -> bool {
        false
    }
    /// The HTTP path it is served at, if events are sent to it (unique
    /// across pipelines).
    fn http_path(&self) -> Option<&str> {
        None
    }
    /// How long a repeated delivery is recognised, if it is deduplicated.
    fn dedupe_window(&self) -> Option<std::time::Duration> {
        None
    }
    /// Its keys as `check --explain` prints them.
    fn explain(&self) -> toml::Value;
}
