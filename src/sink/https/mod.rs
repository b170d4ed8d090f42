//! The HTTPS sink: each event as its own signed POST to the user's server,
//! from the pipeline's log, independently of the table sinks.
//!
//! * Body = the event's original bytes; `webhook-id` = its `_event_id`, the
//!   same on every retry and after a restart, so receivers dedupe on it.
//! * Up to `concurrency` deliveries in flight (one at a time, in log order,
//!   with `ordered`). 2xx: delivered. 408, 429, 5xx and transport errors:
//!   retried with exponential backoff and full jitter, honouring
//!   `Retry-After`, until `max_retry_duration`, then a dead letter. 410: the
//!   receiver is gone, the sink stops loudly. Other 4xx and any 3xx (redirects
//!   are not followed): a dead letter with the status and the answer's start.
//! * Progress: the committed offset is the lowest offset not yet delivered
//!   or dead-lettered; a restart resumes there (at-least-once).

pub mod client;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt as _};
use futures::FutureExt as _;
use hyper::http::{HeaderValue, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{dead_letters, SinkError, Storage};
use crate::config::spec::{HttpsSinkSpec, KeySource, SigningSpec};
use crate::encode::DeadLetter;
use crate::event::Event;
use crate::http_retry::{classify, excerpt, full_jitter, Class};
use crate::log::Log;
use crate::signature::sign::{Signer, SigningError};
use client::Client;
pub use client::SetupError;

use crate::sink::health::SinkHealth;

/// Events read from the log at once.
const READ_CHUNK: usize = 1024;
/// Backoff of a failing delivery: first step and ceiling.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(600);
/// The shortest wait between tries, whatever `Retry-After` says.
const MIN_WAIT: Duration = Duration::from_millis(100);
/// Most events read past the committed offset: a head event retrying for
/// hours must not let the rest of the log pile up in memory.
const MAX_AHEAD: u64 = 65_536;
/// Longest wait for a delivered answer's body (read to keep its connection).
const DRAIN_WAIT: Duration = Duration::from_secs(1);
/// The committed offset is written at most this often while deliveries flow.
const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// A ledger commit in flight.
type Commit = tokio::task::JoinHandle<std::io::Result<()>>;

/// A finished commit's result.
fn commit_result(
    joined: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> Result<(), SinkError> {
    joined
        .map_err(|e| SinkError::Ledger(std::io::Error::other(e)))?
        .map_err(SinkError::Ledger)
}

/// How one delivery ended.
enum Outcome {
    Delivered,
    /// Not delivered: why, and the dead-letter metric's class ("rejected"
    /// by the receiver, or "expired" after max_retry_duration).
    Dead(String, &'static str),
    /// 410 Gone: the receiver asked not to be called again.
    Gone(String),
    /// Shutdown's grace period ended while it was retrying.
    Abandoned,
}

/// One HTTPS sink's runner.
pub struct HttpsRunner {
    /// Pipeline name, for logs and dead letters.
    pub pipeline: String,
    /// The sink's spec.
    pub spec: HttpsSinkSpec,
    /// The pipeline's log.
    pub log: Log,
    /// Where dead letters go.
    pub dead_letters: Storage,
    /// Cancelled when shutdown's grace period is over.
    pub abandon: CancellationToken,
    /// Signs each POST; built (secrets and keys read) before the pipeline starts.
    pub signer: Arc<Signer>,
    /// What the admin API shows of this sink.
    pub health: Arc<SinkHealth>,
    /// The JetStream partition it delivers (its dead letters are named by it).
    pub partition: Option<u32>,
}

struct Shared {
    client: Client,
    signer: Arc<Signer>,
    spec: HttpsSinkSpec,
    abandon: CancellationToken,
    health: Arc<SinkHealth>,
    /// Answers by class: 2xx, 3xx, 4xx, 5xx, and transport errors.
    answers: [metrics::Counter; 5],
    retries: metrics::Counter,
}

impl Shared {
    fn count(&self, status: Option<StatusCode>) {
        let class = status.map_or(4, |s| (s.as_u16() / 100).clamp(2, 5) as usize - 2);
        self.answers[class].increment(1);
    }
}

impl HttpsRunner {
    /// Delivers until the log closes and every delivery in flight has ended.
    pub async fn run(self) -> Result<(), SinkError> {
        let mut writing = None;
        let result = self.deliver_all(&mut writing).await;
        // A commit still in flight after an error lands before this returns
        // (never after a restart's or a new owner's); its own error adds
        // nothing to the one returned.
        if let Some(writing) = writing {
            let _ = writing.await;
        }
        result
    }

    /// The delivery loop; `writing` holds the ledger commit in flight.
    async fn deliver_all(&self, writing: &mut Option<Commit>) -> Result<(), SinkError> {
        let name = self.spec.name.clone();
        let setup = |problem: SetupError| SinkError::Setup {
            sink: name.clone(),
            problem,
        };
        let client = Client::new(&self.spec).map_err(setup)?;
        let shared = Arc::new(Shared {
            client,
            signer: self.signer.clone(),
            spec: self.spec.clone(),
            abandon: self.abandon.clone(),
            health: self.health.clone(),
            answers: ["2xx", "3xx", "4xx", "5xx", "error"].map(|class| {
                metrics::counter!("tributary_https_deliveries_total", "pipeline" => self.pipeline.clone(), "sink" => name.clone(), "class" => class)
            }),
            retries: metrics::counter!("tributary_https_retries_total", "pipeline" => self.pipeline.clone(), "sink" => name.clone()),
        });
        let limit = if self.spec.ordered {
            1
        } else {
            self.spec.concurrency
        };
        let mut committed = self.log.sink_state(&name).committed;
        // The highest offset whose commit has started, and the commit in
        // flight: deliveries go on while the ledger is written and fsynced
        // (awaited in place, each commit held every delivery back for the
        // length of its fsync).
        let mut recorded = committed;
        let mut reader = self.log.reader(committed);
        let mut done = BTreeSet::new();
        // Deliveries in flight, polled by this task rather than spawned
        // each as a task of its own: measured on the sink's benchmark, a
        // task per delivery (spawn, schedule, join) cost ~1 µs of the
        // thread's ~11 µs a POST.
        let mut flying = FuturesUnordered::new();
        let mut pending: std::collections::VecDeque<(u64, Event)> = Default::default();
        let mut open = true;
        // One timer for the periodic commit, reset at each commit: a new
        // timer per loop turn (per delivery) would register and cancel one
        // in the timer wheel every time.
        let commit_due = tokio::time::sleep(COMMIT_EVERY);
        tokio::pin!(commit_due);
        loop {
            if self.abandon.is_cancelled() {
                // Shutdown's grace period is over: start nothing new.
                self.last_commit(writing.take(), committed, recorded)
                    .await?;
                return Err(SinkError::Abandoned);
            }
            while flying.len() < limit {
                let Some((offset, event)) = pending.pop_front() else {
                    break;
                };
                let shared = shared.clone();
                // A panic in a delivery ends the sink with an error, as a
                // panicking task did, rather than unwinding its thread.
                flying.push(
                    std::panic::AssertUnwindSafe(async move {
                        let outcome = deliver(&shared, &event).await;
                        (offset, event, outcome)
                    })
                    .catch_unwind(),
                );
            }
            if !open && flying.is_empty() && pending.is_empty() {
                break;
            }
            tokio::select! {
                more = reader.wait(), if open && pending.len() < READ_CHUNK && reader.position() - committed < MAX_AHEAD => {
                    if !more {
                        open = false;
                        continue;
                    }
                    let first = reader.position();
                    let events = reader.read(READ_CHUNK).await.map_err(SinkError::Log)?;
                    for (i, event) in events.into_iter().enumerate() {
                        let offset = first + i as u64;
                        let event = crate::event::unwrap_for(&name, event);
                        if event.is_state() {
                            done.insert(offset);
                        } else {
                            pending.push_back((offset, event));
                        }
                    }
                }
                Some(delivered) = flying.next(), if !flying.is_empty() => {
                    let (offset, event, outcome) = delivered.map_err(|panic| SinkError::Internal(format!("a delivery panicked: {}", panic_message(&*panic))))?;
                    match outcome {
                        Outcome::Delivered => {}
                        Outcome::Dead(reason, class) => {
                            warn!(pipeline = %self.pipeline, sink = %name, offset, reason = %reason, "Event not delivered; kept as a dead letter.");
                            metrics::counter!("tributary_dead_letters_total", "pipeline" => self.pipeline.clone(), "sink" => name.clone(), "reason" => class).increment(1);
                            self.dead_letter(offset, &event, reason).await?;
                            self.health.dead_letters(1);
                        }
                        Outcome::Gone(why) => {
                            error!(pipeline = %self.pipeline, sink = %name, url = %self.spec.url, answer = %why, "The receiver answered 410 Gone; this sink stops. Events stay in the log; fix the receiver and restart.");
                            self.health.stopped(&format!("the receiver answered 410 Gone ({why})"));
                            self.last_commit(writing.take(), committed, recorded).await?;
                            return Err(SinkError::Disabled { sink: name.clone(), reason: why });
                        }
                        Outcome::Abandoned => {
                            self.last_commit(writing.take(), committed, recorded).await?;
                            return Err(SinkError::Abandoned);
                        }
                    }
                    done.insert(offset);
                }
                () = &mut commit_due, if committed > recorded && writing.is_none() => {}
                written = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                    *writing = None;
                    commit_result(written)?;
                }
            }
            while done.first() == Some(&committed) {
                done.pop_first();
                committed += 1;
            }
            if committed > recorded
                && writing.is_none()
                && (commit_due.is_elapsed() || (flying.is_empty() && pending.is_empty()))
            {
                *writing = Some(self.start_commit(committed));
                recorded = committed;
                commit_due
                    .as_mut()
                    .reset(tokio::time::Instant::now() + COMMIT_EVERY);
            }
        }
        self.last_commit(writing.take(), committed, recorded)
            .await?;
        debug!(pipeline = %self.pipeline, sink = %name, "Log closed; HTTPS sink done.");
        Ok(())
    }

    /// Waits for the commit in flight, then commits `offset` if it is past
    /// `recorded` (the offset of the last commit started: the one in flight
    /// may hold a lower offset, and must not land after this one).
    async fn last_commit(
        &self,
        writing: Option<Commit>,
        offset: u64,
        recorded: u64,
    ) -> Result<(), SinkError> {
        if let Some(writing) = writing {
            commit_result(writing.await)?;
        }
        if offset > recorded {
            self.commit(offset).await?;
        }
        Ok(())
    }

    async fn commit(&self, offset: u64) -> Result<(), SinkError> {
        commit_result(self.start_commit(offset).await)
    }

    /// Writes the committed offset (and fsyncs it) off the runtime's thread.
    fn start_commit(&self, offset: u64) -> Commit {
        let (log, sink) = (self.log.clone(), self.spec.name.clone());
        tokio::task::spawn_blocking(move || log.commit(&sink, offset))
    }

    /// One dead letter, in a file named by its offset (a replay rewrites the same file).
    async fn dead_letter(
        &self,
        offset: u64,
        event: &Event,
        reason: String,
    ) -> Result<(), SinkError> {
        let (name, body) = dead_letters::file(
            &self.pipeline,
            &self.spec.name,
            self.partition,
            &(offset..offset + 1),
            &[DeadLetter::new(event, reason)],
        )?;
        let mut wait = Duration::from_millis(100);
        loop {
            match self.dead_letters.put(&name, body.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    warn!(pipeline = %self.pipeline, sink = %self.spec.name, error = %e, "Cannot write a dead letter; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.abandon.cancelled() => return Err(SinkError::Abandoned),
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// The signer the spec asks for, secrets read from the environment now: a
/// missing or unusable secret stops start-up rather than a sink that would
/// hold the log back silently.
pub fn signer(spec: &SigningSpec, url: &str) -> Result<Signer, SigningError> {
    let env = |name: &String| std::env::var(name).map_err(|_| SigningError::Unset(name.clone()));
    match spec {
        SigningSpec::StandardWebhooks { secret_envs } => {
            Signer::standard_webhooks(&secret_envs.iter().map(env).collect::<Result<Vec<_>, _>>()?)
        }
        SigningSpec::Hmac {
            secret_envs,
            header,
            prefix,
            base64,
        } => Signer::hmac(
            &secret_envs.iter().map(env).collect::<Result<Vec<_>, _>>()?,
            header,
            prefix,
            *base64,
        ),
        SigningSpec::Rsa { key, header } => {
            let pem = match key {
                KeySource::Env(name) => env(name)?.into_bytes(),
                KeySource::File(path) => {
                    std::fs::read(path).map_err(|source| SigningError::KeyFile {
                        path: path.clone(),
                        source,
                    })?
                }
            };
            Signer::rsa(&pem, url, header)
        }
    }
}

/// Delivers one event until it is delivered, dead, gone or abandoned.
async fn deliver(shared: &Shared, event: &Event) -> Outcome {
    let started = Instant::now();
    let id = event.id.hyphenated().to_string();
    let mut tries: u32 = 0;
    loop {
        let timestamp = chrono::Utc::now().timestamp();
        // The values are base64, hex and digits after a prefix checked when
        // the config was loaded; should one still not fit in a header, the
        // event is a dead letter rather than an unsigned POST.
        let signed = shared
            .signer
            .headers(&id, timestamp, &event.payload)
            .into_iter()
            .map(|(name, value)| HeaderValue::try_from(value).map(|value| (name, value)))
            .collect::<Result<Vec<_>, _>>();
        let signed = match signed {
            Ok(signed) => signed,
            Err(e) => {
                return Outcome::Dead(
                    format!("cannot sign: a signature header is not a valid header value ({e})"),
                    "rejected",
                )
            }
        };
        let sent = Instant::now();
        let (wait, why) = match shared
            .client
            .post(signed, Bytes::clone(&event.payload))
            .await
        {
            Ok(answer) => {
                let status = answer.response.status();
                shared.count(Some(status));
                let left = shared.spec.timeout.saturating_sub(sent.elapsed());
                let class = classify(status, answer.response.headers());
                if class == Class::Done {
                    // Delivered; its body is read only to keep the connection.
                    client::read_answer(answer, 0, left.min(DRAIN_WAIT)).await;
                    shared.health.committed();
                    return Outcome::Delivered;
                }
                let answer = format!(
                    "{status}: {}",
                    excerpt(&client::read_answer(answer, 300, left).await)
                );
                match class {
                    // Retry-After: 0 (or a past date) must not make a hot loop.
                    Class::Retry { after } => (
                        after.map_or_else(|| backoff(tries), |w| w.max(MIN_WAIT)),
                        answer,
                    ),
                    Class::Gone => return Outcome::Gone(answer),
                    Class::Redirect { .. } => {
                        return Outcome::Dead(
                            format!(
                            "{answer} (redirects are not followed; point url at the final address)"
                        ),
                            "rejected",
                        )
                    }
                    Class::Done | Class::Unauthorized | Class::Permanent => {
                        return Outcome::Dead(answer, "rejected")
                    }
                }
            }
            Err(e) => {
                shared.count(None);
                (backoff(tries), e.to_string())
            }
        };
        shared.retries.increment(1);
        shared.health.failed(&why);
        // The last try happens at the deadline, not before a wait past it.
        let left = shared
            .spec
            .max_retry_duration
            .saturating_sub(started.elapsed());
        let wait = wait.min(left);
        if left.is_zero() {
            return Outcome::Dead(
                format!(
                    "gave up after {} tries over {:?} (max_retry_duration); last: {why}",
                    tries + 1,
                    started.elapsed()
                ),
                "expired",
            );
        }
        if tries == 0 || tries % 10 == 0 {
            info!(id = %id, error = %why, retry_in_ms = wait.as_millis() as u64, tries = tries + 1, "Delivery failed; retrying.");
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.abandon.cancelled() => return Outcome::Abandoned,
        }
        tries += 1;
    }
}

/// What a caught panic said, if it said it as text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Full jitter between tries.
fn backoff(tries: u32) -> Duration {
    full_jitter(tries, BACKOFF_BASE, BACKOFF_CAP)
}
