//! `[connections] notify = { url, secret_env }`: your app hears about its
//! connections. Each event is a POST of JSON signed the Standard Webhooks
//! way (`webhook-id`, `webhook-timestamp`, `webhook-signature`, as the HTTPS
//! sink signs; `secret_env` holds a `whsec_` secret):
//!
//! ```json
//! {"type": "connection.needs_reauth", "pipeline": "crm", "connection": "acme",
//!  "timestamp": "2026-12-07T06:40:00Z", "data": {"error": "…"}}
//! ```
//!
//! Types: `connection.needs_reauth` (`data.error`), `connection.backfill_done`
//! (a first run without a lower bound finished: `data.records`),
//! `connection.failing` (the third failed run in a row: `data.error`,
//! `data.failures`), `connection.removed` (`data.purged` after a purge).
//! Sent in the background, tried 3 times (after 1 s and 5 s), then logged at
//! WARN: a notification is advice, never a condition of the pipeline's work.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::warn;

use crate::signature::sign::Signer;

/// Sends a pipeline's connection events to the app's URL.
pub struct Notifier {
    pipeline: String,
    url: url::Url,
    signer: Signer,
    http: reqwest::Client,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("pipeline", &self.pipeline)
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// The notifier of `pipeline`, its secret read from `secret_env` now.
    pub fn new(pipeline: &str, url: &url::Url, secret_env: &str) -> Result<Self, String> {
        let secret = std::env::var(secret_env).map_err(|_| {
            format!("connections.notify.secret_env names {secret_env}, which is not set")
        })?;
        let signer = Signer::standard_webhooks(&[secret])
            .map_err(|e| format!("connections.notify.secret_env ({secret_env}): {e}"))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("tributary/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the notifications' HTTP client: {e}"))?;
        Ok(Self {
            pipeline: pipeline.to_string(),
            url: url.clone(),
            signer,
            http,
        })
    }

    /// Sends event `kind` about `connection` with `data`, in the background.
    pub fn send(self: &Arc<Self>, kind: &'static str, connection: &str, data: Value) {
        let body = json!({
            "type": kind,
            "pipeline": self.pipeline,
            "connection": connection,
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "data": data,
        })
        .to_string();
        let (this, connection) = (self.clone(), connection.to_string());
        let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        tokio::spawn(async move {
            let mut last = String::new();
            for wait in [
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(5),
            ] {
                tokio::time::sleep(wait).await;
                let timestamp = chrono::Utc::now().timestamp();
                let mut request = this
                    .http
                    .post(this.url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json");
                for (name, value) in this.signer.headers(&id, timestamp, body.as_bytes()) {
                    request = request.header(name, value);
                }
                match request.body(body.clone()).send().await {
                    Ok(answer) if answer.status().is_success() => return,
                    Ok(answer) => last = answer.status().to_string(),
                    Err(e) => last = crate::http_retry::describe(e),
                }
            }
            warn!(pipeline = %this.pipeline, connection = %connection, event = kind, error = %last, "A connection notification was not delivered after 3 tries.");
        });
    }
}
