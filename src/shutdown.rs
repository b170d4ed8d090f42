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
    /// Resolves on the first SIGTERM or SIGINT after the call. The signals
    /// are taken over when this is called, not when the future is first
    /// polled: a waiter spawned as a task may not have run yet when the
    /// server already answers, and a SIGTERM then would kill the process
    /// instead of stopping it (seen under load: a test's SIGTERM right after
    /// `/healthz` answered ended the process with the signal's status).
    pub fn signal() -> impl std::future::Future<Output = ()> + Send + 'static {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, Signal, SignalKind};
            let term = signal(SignalKind::terminate()).ok();
            let interrupt = signal(SignalKind::interrupt()).ok();
            let first = |s: Option<Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            async move {
                tokio::select! {
                    () = first(term) => {},
                    () = first(interrupt) => {},
                }
            }
        }
        #[cfg(not(unix))]
        async {
            let _ = tokio::signal::ctrl_c().await;
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
