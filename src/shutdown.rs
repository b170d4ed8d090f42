//! Shutdown: one `CancellationToken` tree plus a `TaskTracker`.
//!
//! Only sources watch the token. Everything downstream ends when its input
//! closes, flushing on the way. A grace deadline bounds the wait and names what
//! did not finish; since the buffer is durable and sinks are idempotent, an
//! unfinished task loses nothing — it resumes from its offset at the next start.
//! SIGHUP does not stop `tributary run`: it reloads the configuration
//! (`pipeline::reload`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long `run` waits for sinks to flush after the sources stopped.
pub const GRACE: Duration = Duration::from_secs(30);

/// The process-wide shutdown handles.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled on SIGTERM/SIGINT; watched by sources only.
    pub stop: CancellationToken,
    /// Cancelled when the grace deadline passed; retry loops give up on it
    /// between attempts (never in the middle of an upload or a commit).
    pub abandon: CancellationToken,
    /// Every long-lived task, so `run` can wait for them.
    pub tasks: TaskTracker,
}

impl Shutdown {
    /// Resolves on the first SIGTERM or SIGINT.
    pub async fn signal() {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
    }

    /// A stop and tasks of their own (one pipeline's, which a reload stops
    /// alone): cancelled with these, drained on their own.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            stop: self.stop.child_token(),
            abandon: self.abandon.child_token(),
            tasks: TaskTracker::new(),
        }
    }

    /// Waits for every tracked task, up to `grace`; returns false if some did
    /// not finish in time (they are abandoned; their data stays in the log).
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_ok() {
            return true;
        }
        self.abandon.cancel();
        // Give retry loops a moment to notice and log what they give up.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        false
    }
}
