//! What each sink is doing, for `/api/pipelines`, `/readyz` and `tributary
//! status`: its state, last commit, last error and dead letters since start.
//! Runners report into a [`SinkHealth`]; the admin API reads it.

use std::sync::Mutex;

use serde::Serialize;

use crate::event::now_us;

/// A sink's state as an operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// Started, nothing written yet.
    Starting,
    /// Its last write succeeded.
    Running,
    /// Its last write failed; it is retrying.
    Failing,
    /// It stopped (an HTTPS 410, an unrecoverable error) until the next start.
    Stopped,
}

/// The shared, updatable view of one sink.
#[derive(Debug)]
pub struct SinkHealth {
    inner: Mutex<Snapshot>,
}

/// One reading of a [`SinkHealth`].
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Current state.
    pub state: SinkState,
    /// When it last committed (or delivered), µs since the epoch.
    pub last_commit_us: Option<i64>,
    /// Its latest error and when it happened (cleared by a success).
    pub last_error: Option<String>,
    /// When `last_error` happened, µs since the epoch.
    pub last_error_us: Option<i64>,
    /// Dead letters it wrote since start.
    pub dead_letters: u64,
}

impl Default for SinkHealth {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Snapshot {
                state: SinkState::Starting,
                last_commit_us: None,
                last_error: None,
                last_error_us: None,
                dead_letters: 0,
            }),
        }
    }
}

impl SinkHealth {
    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        change(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// A commit or delivery succeeded.
    pub fn committed(&self) {
        self.update(|s| {
            if s.state != SinkState::Stopped {
                s.state = SinkState::Running;
            }
            s.last_commit_us = Some(now_us());
            s.last_error = None;
            s.last_error_us = None;
        });
    }

    /// A write failed and will be retried.
    pub fn failed(&self, error: &str) {
        self.update(|s| {
            if s.state != SinkState::Stopped {
                s.state = SinkState::Failing;
            }
            s.last_error = Some(error.to_string());
            s.last_error_us = Some(now_us());
        });
    }

    /// The sink stopped for good (until restart).
    pub fn stopped(&self, error: &str) {
        self.update(|s| {
            s.state = SinkState::Stopped;
            s.last_error = Some(error.to_string());
            s.last_error_us = Some(now_us());
        });
    }

    /// `n` dead letters were written.
    pub fn dead_letters(&self, n: u64) {
        self.update(|s| s.dead_letters += n);
    }

    /// The current reading.
    pub fn snapshot(&self) -> Snapshot {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
