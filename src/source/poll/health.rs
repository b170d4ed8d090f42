//! What a poll source is doing, for `/api/pipelines`, `/readyz`, the status
//! page and `tributary status`: whether its last run succeeded, else its
//! last error, when it happened and how many runs in a row failed. The
//! poller reports into a [`PollHealth`]; the admin API reads it.

use std::sync::Mutex;

use serde::Serialize;

use crate::event::now_us;

/// A poll source's state as an operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PollRuns {
    /// No run has ended since the start.
    Waiting,
    /// The last run succeeded.
    Ok,
    /// The last run failed (or a credential it needs is not set); runs go on
    /// at each tick of the schedule.
    Failing,
}

/// One reading of a [`PollHealth`].
#[derive(Debug, Clone, Serialize)]
pub struct PollSnapshot {
    /// Current state.
    pub state: PollRuns,
    /// When a run last succeeded, µs since the epoch.
    pub last_success_us: Option<i64>,
    /// The latest failure (cleared by a success).
    pub last_error: Option<String>,
    /// When `last_error` happened, µs since the epoch.
    pub last_error_us: Option<i64>,
    /// Failures since the last success.
    pub failures: u64,
}

/// The shared, updatable view of one poll source.
#[derive(Debug)]
pub struct PollHealth {
    /// A std mutex: the poller writes and the admin API reads a few fields,
    /// never across an await.
    inner: Mutex<PollSnapshot>,
    /// Records made durable since this process started (a connection's:
    /// its poll pages' and its webhooks' events).
    records: std::sync::atomic::AtomicU64,
}

impl Default for PollHealth {
    fn default() -> Self {
        Self {
            inner: Mutex::new(PollSnapshot {
                state: PollRuns::Waiting,
                last_success_us: None,
                last_error: None,
                last_error_us: None,
                failures: 0,
            }),
            records: Default::default(),
        }
    }
}

impl PollHealth {
    fn update<T>(&self, change: impl FnOnce(&mut PollSnapshot) -> T) -> T {
        change(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `n` more records are durable.
    pub fn add_records(&self, n: u64) {
        self.records
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records made durable since this process started.
    pub fn records_total(&self) -> u64 {
        self.records.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A run succeeded.
    pub fn succeeded(&self) {
        self.update(|s| {
            s.state = PollRuns::Ok;
            s.last_success_us = Some(now_us());
            s.last_error = None;
            s.last_error_us = None;
            s.failures = 0;
        });
    }

    /// A run failed with `error` (one line); returns the failures since the
    /// last success, this one included.
    pub fn failed(&self, error: &str) -> u64 {
        self.update(|s| {
            s.state = PollRuns::Failing;
            s.last_error = Some(error.to_string());
            s.last_error_us = Some(now_us());
            s.failures += 1;
            s.failures
        })
    }

    /// The current reading.
    pub fn snapshot(&self) -> PollSnapshot {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_until_a_success_clears_them() {
        let health = PollHealth::default();
        assert_eq!(health.snapshot().state, PollRuns::Waiting);
        assert_eq!(health.failed("env var TOKEN is not set"), 1);
        assert_eq!(health.failed("env var TOKEN is not set"), 2);
        let failing = health.snapshot();
        assert_eq!(failing.state, PollRuns::Failing);
        assert_eq!(
            failing.last_error.as_deref(),
            Some("env var TOKEN is not set")
        );
        assert!(failing.last_error_us.is_some() && failing.last_success_us.is_none());
        health.succeeded();
        let ok = health.snapshot();
        assert_eq!((ok.state, ok.failures), (PollRuns::Ok, 0));
        assert!(ok.last_error.is_none() && ok.last_success_us.is_some());
        assert_eq!(health.failed("500 Internal Server Error"), 1);
    }
}
