//! Triggers: where events come from, the webhook receiver and the poll
//! source; each source appends to its pipeline's durable log and
//! acknowledges only after the append. [`build`] is the one place that maps
//! a source kind to its code: a webhook becomes a route on the HTTP server,
//! a poll source a task; either may add background tasks (a dedupe journal).

pub mod poll;
pub mod webhook;

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::config::route::RouteBy;
use crate::config::{GlobalSpec, PipelineSpec, SourceSpec};
use crate::log::{Appender, Log};
use webhook::dedupe::{self, Dedupe};

/// A built source.
pub enum Source {
    /// A path the HTTP server answers.
    Webhook {
        /// The path.
        path: String,
        /// What answers it.
        route: Box<webhook::Route>,
    },
    /// Runs until shutdown, or once (`tributary poll`).
    Poll(Box<poll::Poller>),
}

/// A source and what it needs running beside it.
pub struct Built {
    /// The source.
    pub source: Source,
    /// Tasks that run until the log closes (a webhook's dedupe journal).
    pub tasks: Vec<BoxFuture<'static, ()>>,
    /// A webhook's remembered delivery ids, for the admin API.
    pub dedupe: Option<Arc<Dedupe>>,
}

/// Why a source could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// It cannot start as configured (a verification secret is not set).
    #[error(transparent)]
    Secret(#[from] crate::signature::verify::SecretError),
    /// The poll source's state could not be kept.
    #[error(transparent)]
    Poll(#[from] poll::PollError),
    /// The remembered delivery ids could not be read.
    #[error("failed to read the remembered delivery ids")]
    Journal(#[source] std::io::Error),
}

/// The log consumers a source adds besides the sinks (a webhook's dedupe
/// journal), so the log keeps what they have not read.
pub fn consumers(spec: &SourceSpec) -> Vec<String> {
    match spec.kind().dedupe_window() {
        Some(_) => vec![dedupe::CONSUMER.to_string()],
        None => Vec::new(),
    }
}

/// Builds the source of `spec` on its log; starts nothing. A webhook's
/// remembered delivery ids are loaded here, before any request is served.
pub async fn build(
    spec: &PipelineSpec,
    global: &GlobalSpec,
    dir: &Path,
    appender: Appender,
    log: &Log,
    stop: CancellationToken,
) -> Result<Built, SourceError> {
    match &spec.source {
        SourceSpec::Webhook(w) => {
            let verifier = match &w.verify {
                None => None,
                Some(v) => Some(Arc::new(crate::signature::verify::Verifier::new(v)?)),
            };
            let mut tasks: Vec<BoxFuture<'static, ()>> = Vec::new();
            let clustered = matches!(global.log, crate::config::log::LogSpec::JetStream(_));
            let dedupe = match &w.dedupe {
                None => None,
                // On JetStream, the ids are the messages' Nats-Msg-Id: the
                // streams' duplicate window (= dedupe.window) keeps them for
                // every node; this node remembers what it took since it started.
                Some(d) if clustered => Some(Arc::new(Dedupe::new(d))),
                Some(d) => {
                    let dedupe = Arc::new(Dedupe::new(d));
                    let index = dedupe
                        .load(dir, log, crate::event::now_us())
                        .await
                        .map_err(SourceError::Journal)?;
                    let pipeline = spec.name.clone();
                    tasks.push(Box::pin(async move {
                        if let Err(e) = index.run().await {
                            error!(pipeline = %pipeline, error = %e, "The dedupe journal failed; delivery ids stay in the log (it keeps growing) until the next start.");
                        }
                    }));
                    Some(dedupe)
                }
            };
            let route = webhook::Route {
                pipeline: spec.name.clone(),
                max_body: w.max_body,
                max_buffer: spec.buffer_max_bytes,
                appender,
                verifier,
                limiter: w.rate_limit.map(webhook::RateLimiter::new),
                dedupe: dedupe.clone(),
                body_timeout: global.server.body_timeout,
                metrics: webhook::RouteMetrics::new(&spec.name),
                topic_header: match spec.route.as_ref().map(|r| &r.by) {
                    Some(RouteBy::Header(h)) => Some(h.clone()),
                    _ => None,
                },
                // Set by the pipeline once its connections are open.
                connections: None,
                attribute_header: spec
                    .connections
                    .as_ref()
                    .and_then(|c| c.attribute_header.clone()),
                attribute_pointer: spec
                    .connections
                    .as_ref()
                    .and_then(|c| c.attribute_pointer.as_deref())
                    .map(crate::encode::pointer::tokens),
            };
            Ok(Built {
                source: Source::Webhook {
                    path: w.path.clone(),
                    route: Box::new(route),
                },
                tasks,
                dedupe,
            })
        }
        SourceSpec::Poll(p) => Ok(Built {
            source: Source::Poll(Box::new(poll::Poller::new(
                spec, p, appender, log, dir, stop,
            )?)),
            tasks: Vec::new(),
            dedupe: None,
        }),
    }
}
