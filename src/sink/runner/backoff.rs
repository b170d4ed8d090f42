//! The runner's retries: exponential backoff with full jitter between the
//! tries of a failing upload, commit or ledger write.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Runner;
use crate::error::{Classify, ErrorKind};
use crate::sink::health::SinkHealth;
use crate::sink::SinkError;

/// First step and ceiling of the (fully jittered) wait between retries of a
/// failed upload or commit.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Exponential backoff with full jitter ([`crate::http_retry::full_jitter`]) between the tries of a failing operation,
/// until shutdown's grace period gives up on it.
pub(super) struct Backoff {
    /// Failed tries so far: the exponent of the next wait.
    tries: u32,
    what: &'static str,
    pipeline: String,
    sink: String,
    abandon: CancellationToken,
    health: Arc<SinkHealth>,
}

impl Backoff {
    pub(super) fn new(runner: &Runner, what: &'static str) -> Self {
        Self {
            tries: 0,
            what,
            pipeline: runner.pipeline.clone(),
            sink: runner.sink.clone(),
            abandon: runner.abandon.clone(),
            health: runner.health.clone(),
        }
    }

    /// After a failed try: a transient error is logged and waited out; any
    /// other error (or shutdown giving up) ends the retrying.
    pub(super) async fn pause<E>(&mut self, error: E) -> Result<(), SinkError>
    where
        E: Classify + Into<SinkError> + std::error::Error + Send + Sync + 'static,
    {
        if error.kind() != ErrorKind::Transient {
            return Err(error.into());
        }
        // On one line: S3 answers arrive as multi-line XML.
        let error = crate::sink::storage::one_line(&crate::error::chain(&error));
        let wait = crate::http_retry::full_jitter(self.tries, RETRY_MIN, RETRY_MAX);
        warn!(pipeline = %self.pipeline, sink = %self.sink, error = %error, retry_in_ms = wait.as_millis() as u64, "{}; retrying.", self.what);
        self.health.failed(&format!("{}: {error}", self.what));
        metrics::counter!("tributary_sink_retries_total", "pipeline" => self.pipeline.clone(), "sink" => self.sink.clone()).increment(1);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.abandon.cancelled() => return Err(SinkError::Abandoned),
        }
        self.tries += 1;
        Ok(())
    }
}
