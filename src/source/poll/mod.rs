//! The poll source: scheduled runs that page through a REST API and append
//! what they fetch to the pipeline's log.
//!
//! # Durability
//! Each page is one append: its records, then a state record saying which page
//! comes next and the largest cursor value seen so far. Both become durable in
//! one fsync, so a crash at any moment either keeps a page with the state
//! that says it was fetched, or neither (recovery cuts a torn append whole:
//! every record says on disk whether it ended its append).
//! A restarted run resumes at the page after the last durable one. The run's
//! last page also moves the cursor (the next run's lower bound) forward, in
//! that same append. The next request is sent while the previous page is
//! worked through, and the pages go to the log in their order without
//! waiting for each one's fsync: up to [`PAGES_IN_FLIGHT`] wait for theirs
//! together (the log's writer shares one fsync among them) while the run
//! fetches on. The state held in memory, its side copy and `progress` move
//! only as pages become durable, in order.

pub mod client;
pub mod health;
pub mod oauth1;
pub mod page;
pub mod schedule;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::spec::{PipelineSpec, PollSpec};
use crate::encode::pointer;
use crate::event::{now_us, Event, RecordKind};
use crate::log::{AppendError, Appender, Chain, Log, Pending};
use client::Client;
use health::PollHealth;
use state::{PageRef, PollState, RunState};

/// Why a poll run failed. A failed run leaves the cursor where it was; the
/// pages it made durable stay, and the next run resumes after them.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// A secret's env var is not set.
    #[error("env var {0} is not set; export it with the secret (secrets are only read from the environment)")]
    Secret(String),
    /// A connection lacks a credential field its pipeline's auth needs.
    #[error("the connection has no \"{0}\" credential; PATCH its credentials with it")]
    MissingCredential(String),
    /// The request failed after its retries, or the response was unusable.
    #[error("{0}")]
    Request(String),
    /// The API refused the request (a 4xx other than 429): retrying will not help.
    #[error("{0}")]
    Rejected(String),
    /// A response cannot be paged through.
    #[error("{url}: {source}")]
    Page {
        /// The request's URL.
        url: String,
        /// What is wrong with the response.
        source: page::PageError,
    },
    /// The fetched page could not be appended to the log.
    #[error("the fetched records could not be made durable")]
    Append(#[source] AppendError),
    /// The state copy could not be written.
    #[error("the poll state could not be saved")]
    State(#[source] std::io::Error),
    /// Shutdown began; the run resumes at the next start.
    #[error("stopped by shutdown")]
    Stopped,
}

impl PollError {
    /// Whether the API refused the credentials themselves (a 401 or 403
    /// that a token renewal did not cure, an OAuth `invalid_grant`), or a
    /// connection lacks one: a connection then needs new credentials.
    pub fn refuses_credentials(&self) -> bool {
        match self {
            PollError::MissingCredential(_) => true,
            PollError::Rejected(why) => {
                why.contains("invalid_grant")
                    || why
                        .split(": ")
                        .any(|part| part.starts_with("401 ") || part.starts_with("403 "))
            }
            _ => false,
        }
    }
}

/// How often a poll waiting for room in a full buffer looks again.
const BUFFER_FULL_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Pages of a run handed to the log whose fsync may still be pending, at
/// most: the log's writer makes them durable together while the next pages
/// are fetched. Bounds the memory they hold, and what a power cut makes the
/// run fetch again (pages written but not yet synced).
const PAGES_IN_FLIGHT: usize = 4;

/// Pages handed to the log, oldest first, each with the state it carries
/// and the run as of that page (for `progress`).
type InFlight = std::collections::VecDeque<(Pending, PollState, RunState)>;

/// One pipeline's poll source.
pub struct Poller {
    pipeline: String,
    spec: Arc<PollSpec>,
    appender: Appender,
    side: PathBuf,
    state: PollState,
    client: Client,
    reader: page::Reader,
    stop: CancellationToken,
    /// `buffer.max_bytes`: a page waits while the log holds this much.
    max_buffer: u64,
    /// How the runs go, for the admin API; shared with it through [`Poller::health`].
    health: Arc<PollHealth>,
    /// The connection this poller runs for, in a `[connections]` pipeline.
    connection: Option<Arc<str>>,
    /// Runs in flight across the pipeline's connections
    /// (`connections.max_concurrent_runs`); a run holds one.
    permits: Option<Arc<tokio::sync::Semaphore>>,
    /// Hears about a connection's runs.
    events: Option<RunEvents>,
}

/// What a connection's poller is given besides the pipeline's.
pub struct ConnectionRun {
    /// The connection's id.
    pub id: Arc<str>,
    /// Its credentials, by field name.
    pub credentials: std::collections::BTreeMap<String, String>,
    /// Keeps a rotated OAuth refresh token in the connection's store.
    pub keep_refresh: Option<client::KeepRefresh>,
    /// The pipeline's run permits.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// The pipeline's HTTP client (shared: one pool, one set of TLS roots).
    pub http: reqwest::Client,
    /// Where its runs are reported.
    pub health: Arc<PollHealth>,
    /// Told `connection.backfill_done` and `connection.failing` (see
    /// [`crate::connections::notify`]).
    pub events: Option<RunEvents>,
}

/// Hears about a connection's runs: an event type and its data.
pub type RunEvents = Arc<dyn Fn(&'static str, serde_json::Value) + Send + Sync>;

impl Poller {
    /// The poller of `pipeline`, its state loaded from the log (`log`) and
    /// the side copy in `dir` (the pipeline's data directory).
    pub fn new(
        pipeline: &PipelineSpec,
        spec: &PollSpec,
        appender: Appender,
        log: &Log,
        dir: &Path,
        stop: CancellationToken,
    ) -> Result<Self, PollError> {
        let in_log = log.last_state().map_err(PollError::State)?;
        Self::with_state(
            pipeline,
            spec,
            (appender, &state::side_path(dir), in_log),
            Client::new(spec)?,
            stop,
        )
    }

    /// The poller of one connection of a `[connections]` pipeline: `spec`
    /// with its params filled in, its own state (the side copy in `dir`, the
    /// connection's directory, and `in_log`, its newest state record), its
    /// records and state tagged with its id.
    pub fn for_connection(
        pipeline: &PipelineSpec,
        spec: &PollSpec,
        (appender, dir, in_log): (Appender, &Path, Option<(u64, Bytes)>),
        connection: ConnectionRun,
        stop: CancellationToken,
    ) -> Result<Self, PollError> {
        std::fs::create_dir_all(dir).map_err(PollError::State)?;
        let mut client = Client::on(connection.http).with_credentials(connection.credentials);
        if let Some(keep) = connection.keep_refresh {
            client = client.keeping_refresh_tokens(keep);
        }
        let mut poller = Self::with_state(
            pipeline,
            spec,
            (appender, &state::side_path(dir), in_log),
            client,
            stop,
        )?;
        poller.connection = Some(connection.id);
        poller.permits = Some(connection.permits);
        poller.events = connection.events;
        poller.health = connection.health;
        Ok(poller)
    }

    fn with_state(
        pipeline: &PipelineSpec,
        spec: &PollSpec,
        (appender, side, in_log): (Appender, &Path, Option<(u64, Bytes)>),
        client: Client,
        stop: CancellationToken,
    ) -> Result<Self, PollError> {
        let side = side.to_path_buf();
        let (state, offset) = state::load(&side, in_log);
        if let Some(offset) = offset {
            // The log's copy may be newer than the side file; make them agree.
            state::save(&side, offset, &state, true).map_err(PollError::State)?;
        }
        let record = pointer::tokens(&pipeline.record_path);
        let [next, has_more, total, links] = page::Reader::signals_of(&spec.paginate);
        let reader = page::Reader {
            records: pointer::tokens(&spec.records),
            cursor: spec.cursor.as_ref().map(|c| pointer::tokens(&c.field)),
            next,
            has_more,
            total,
            links,
            primary_key: pipeline
                .primary_key
                .iter()
                .map(|column| record.iter().cloned().chain([column.clone()]).collect())
                .collect(),
        };
        Ok(Self {
            pipeline: pipeline.name.clone(),
            client,
            spec: Arc::new(spec.clone()),
            appender,
            side,
            max_buffer: pipeline.buffer_max_bytes,
            state,
            reader,
            stop,
            health: Arc::default(),
            connection: None,
            permits: None,
            events: None,
        })
    }

    /// How the runs go (`run_forever` reports into it), for the admin API.
    pub fn health(&self) -> Arc<PollHealth> {
        self.health.clone()
    }

    /// The state as loaded or as the last append left it.
    pub fn state(&self) -> &PollState {
        &self.state
    }

    /// Runs on schedule until shutdown; a failed run is logged and counted,
    /// and tried again at the next tick. A credential that is not set fails
    /// every run until tributary is started with it: that is said once, at
    /// WARN (and shown by the admin API from the start), not at each run.
    pub async fn run_forever(self) {
        self.run_schedule().await;
    }

    /// [`Poller::run_forever`] for a connection: returns `true` when it
    /// ended because the API refused the connection's credentials.
    pub async fn run_connection(self) -> bool {
        self.run_schedule().await
    }

    async fn run_schedule(mut self) -> bool {
        let unset = self
            .spec
            .secret_envs()
            .into_iter()
            // A connection's credentials may stand in for the pipeline's.
            .filter(|_| self.connection.is_none())
            .find(|name| std::env::var_os(name).is_none())
            .map(|name| PollError::Secret(name.to_string()));
        let mut unset_said = false;
        if let Some(e) = unset {
            self.health.failed(&e.to_string());
            warn!(pipeline = %self.pipeline, error = %e, "The poll source has no credentials: its runs fail until tributary is started with them; the other pipelines run.");
            unset_said = true;
        }
        // After a failure or a run cut at max_pages: wait for the tick after this start.
        let mut wait_from: Option<DateTime<Utc>> = None;
        let mut first = true;
        loop {
            let now = Utc::now();
            let due = match wait_from {
                Some(at) => schedule::next_after(&self.spec.schedule, at).map(|d| d.max(now)),
                None => schedule::due(
                    &self.spec.schedule,
                    self.state
                        .last_run_us
                        .and_then(DateTime::from_timestamp_micros),
                    self.state.run.is_some(),
                    now,
                ),
            };
            let Some(due) = due else {
                info!(pipeline = %self.pipeline, "The schedule has no further runs.");
                return false;
            };
            let mut wait = (due - now).to_std().unwrap_or_default();
            if self.connection.is_some() {
                // A connection's runs keep the phase its first one drew (at
                // start, also after a restart), so many connections on one
                // schedule stay spread out and each still runs every tick.
                if first && self.state.run.is_none() {
                    wait += schedule::jitter(self.spec.jitter);
                }
            } else if self.state.run.is_none() && self.state.last_run_us.is_some() {
                // A new pipeline's first run and a resumed run start at once.
                wait += schedule::jitter(self.spec.jitter);
            }
            first = false;
            let planned = std::time::Instant::now() + wait;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return false,
            }
            // A connection's run waits for one of the pipeline's run permits.
            let _permit = match self.permits.clone() {
                None => None,
                Some(permits) => tokio::select! {
                    permit = permits.acquire_owned() => permit.ok(),
                    _ = self.stop.cancelled() => return false,
                },
            };
            if self.connection.is_some() {
                // How late the run starts (waiting for a run permit, a busy runtime).
                metrics::histogram!("tributary_connection_run_delay_seconds", "pipeline" => self.pipeline.clone())
                    .record(Instant::now().saturating_duration_since(planned).as_secs_f64());
            }
            let started = Utc::now();
            let clock = Instant::now();
            // Boxed: a run's future (HTTP, parsing, appends) is large, and
            // inline it would be in every idle connection's task too.
            match Box::pin(self.poll(&mut |_| {})).await {
                Ok(run) => {
                    self.health.succeeded();
                    // A first run (no lower bound) of an incremental source has
                    // fetched everything there was.
                    if let Some(events) = &self.events {
                        if self.spec.cursor.is_some()
                            && run.lower.is_none()
                            && self.state.run.is_none()
                        {
                            events(
                                "connection.backfill_done",
                                serde_json::json!({ "records": run.records, "pages": run.pages }),
                            );
                        }
                    }
                    wait_from = self.state.run.is_some().then_some(started);
                    info!(pipeline = %self.pipeline, pages = run.pages, records = run.records, millis = clock.elapsed().as_millis() as u64, cursor = %self.state.cursor.as_ref().map(page::text).unwrap_or_default(), "Poll run finished.");
                }
                Err(PollError::Stopped) => return false,
                // A connection whose credentials are refused stops until new ones come.
                Err(e) if self.connection.is_some() && e.refuses_credentials() => {
                    let why = crate::error::chain(&e);
                    self.health.failed(&why);
                    warn!(pipeline = %self.pipeline, connection = %self.connection.as_deref().unwrap_or(""), error = %why, "The API refused this connection's credentials; it does not run again until they are replaced (PATCH its credentials).");
                    return true;
                }
                Err(e) => {
                    wait_from = Some(started);
                    let why = crate::error::chain(&e);
                    let failures = self.health.failed(&why);
                    if let (Some(events), 3) = (&self.events, failures) {
                        events(
                            "connection.failing",
                            serde_json::json!({ "error": why, "failures": failures }),
                        );
                    }
                    match e {
                        PollError::Secret(_) if unset_said => {
                            debug!(pipeline = %self.pipeline, failures, error = %why, "Poll run failed: a credential is not set.");
                        }
                        PollError::Secret(_) => {
                            unset_said = true;
                            warn!(pipeline = %self.pipeline, error = %why, "The poll source has no credentials: its runs fail until tributary is started with them; the other pipelines run.");
                        }
                        _ => {
                            error!(pipeline = %self.pipeline, failures, error = %why, "Poll run failed; the cursor stays where it was, pages already stored are kept, and the run resumes at the next tick.");
                        }
                    }
                }
            }
        }
    }

    /// One run now: resumes an unfinished run, or starts one from the cursor.
    /// `progress` sees the run after each durable page. A run that reached
    /// `max_pages` returns with `self.state().run` still set: it goes on from
    /// its next page at the next call.
    pub async fn poll(
        &mut self,
        progress: &mut (dyn FnMut(&RunState) + Send),
    ) -> Result<RunState, PollError> {
        let label = [("pipeline", self.pipeline.clone())];
        let (pages, records) = (
            metrics::counter!("tributary_poll_pages_total", &label),
            metrics::counter!("tributary_poll_records_total", &label),
        );
        let mut counted = self
            .state
            .run
            .as_ref()
            .map_or((0, 0), |r| (r.pages, r.records));
        let health = self.health.clone();
        let result = self
            .run_pages(&mut |run: &RunState| {
                pages.increment(run.pages.saturating_sub(counted.0));
                records.increment(run.records.saturating_sub(counted.1));
                health.add_records(run.records.saturating_sub(counted.1));
                counted = (run.pages, run.records);
                progress(run);
            })
            .await;
        let outcome = match &result {
            Ok(_) if self.state.run.is_some() => "paused",
            Ok(_) => "ok",
            Err(PollError::Stopped) => "stopped",
            Err(_) => "failed",
        };
        metrics::counter!("tributary_poll_runs_total", "pipeline" => self.pipeline.clone(), "outcome" => outcome).increment(1);
        result
    }

    async fn run_pages(
        &mut self,
        progress: &mut (dyn FnMut(&RunState) + Send),
    ) -> Result<RunState, PollError> {
        let resumed = self.state.run.is_some();
        let mut run = match self.state.run.clone() {
            Some(run) => {
                info!(pipeline = %self.pipeline, pages = run.pages, records = run.records, "Resuming the poll run a stop, crash, failure or max_pages interrupted.");
                run
            }
            None => self.new_run(),
        };
        let fetched = self.fetch(&run).await;
        if resumed && run.next != PageRef::First {
            if let Err(PollError::Rejected(why)) = &fetched {
                // A page token or link may expire while the run waits. Going
                // back to the first page would append stored pages again:
                // end the run with what is stored, and let the next run
                // start from the newest cursor it saw (minus lookback).
                warn!(pipeline = %self.pipeline, error = %why, "The API refused the page the interrupted run had reached; ending that run with the pages already stored. The next run starts from the newest cursor value they held.");
                let state = self.finished(&run);
                let payload = serde_json::to_vec(&state).expect("the state serialises");
                durable(
                    &self.appender,
                    &self.side,
                    vec![Event::record(RecordKind::PollState, Bytes::from(payload))
                        .with_connection(self.connection.as_ref())],
                    &state,
                    (self.max_buffer, &self.stop),
                )
                .await?;
                self.state = state;
                return Err(PollError::Rejected(why.clone()));
            }
        }
        let mut flight = InFlight::new();
        let chain = Chain::new();
        let ended = self
            .pages(&mut run, fetched, (&mut flight, &chain), progress)
            .await;
        // Whatever ended the run, every page the log took is settled first,
        // so the state says what is durable (a next run resumes after it).
        // Once a page failed, the log refuses the later ones of the chain
        // (`AppendError::Broken`): none of them is durable, and none moves
        // the state.
        let mut first_error = ended.err();
        let mut gap = false;
        while let Some((pending, state, at)) = flight.pop_front() {
            match pending.await {
                Ok(range) if !gap => {
                    let (state, at) = self.settle(Ok(range), state, at).await?;
                    self.state = state;
                    progress(&at);
                }
                Ok(_) => {
                    error!(pipeline = %self.pipeline, "The log stored a page after one it refused; the run's state stays before the gap.");
                }
                Err(e) => {
                    gap = true;
                    first_error.get_or_insert(PollError::Append(e));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if run.records > 0 && run.max_seen.is_none() && self.state.run.is_none() {
            if let Some(c) = &self.spec.cursor {
                warn!(pipeline = %self.pipeline, field = %c.field, "No record of this run had the cursor field; the cursor stays where it was. Check source.cursor.field against the records.");
            }
        }
        Ok(run)
    }

    /// Works through the run's pages from `fetched` on: each page's records
    /// and state are handed to the log (in page order) while the next page
    /// is fetched, and up to [`PAGES_IN_FLIGHT`] of them wait in `flight` for
    /// their fsync, which the log's writer shares among them. Returns after
    /// handing over the run's last page (or the `max_pages`-th); the caller
    /// settles what is still in `flight`.
    async fn pages(
        &mut self,
        run: &mut RunState,
        mut fetched: Result<(String, client::Response), PollError>,
        (flight, chain): (&mut InFlight, &Chain),
        progress: &mut (dyn FnMut(&RunState) + Send),
    ) -> Result<(), PollError> {
        let mut seen = page::Seen::default();
        loop {
            let (url, response) = fetched?;
            let (list, signals) =
                self.reader
                    .list(&response.body)
                    .map_err(|source| PollError::Page {
                        url: url.clone(),
                        source,
                    })?;
            let next = page::next(
                &self.spec.paginate,
                &run.next,
                &signals,
                &response.headers,
                list.len(),
            );
            if let Some(next) = &next {
                if *next == run.next {
                    return Err(PollError::Page {
                        url,
                        source: page::PageError::Loop,
                    });
                }
                if let PageRef::Url(link) = next {
                    page::same_origin(&self.spec.url, link).map_err(|source| PollError::Page {
                        url: url.clone(),
                        source,
                    })?;
                }
            }
            run.pages += 1;
            let capped = next.is_some() && run.pages % self.spec.max_pages == 0;
            if capped {
                warn!(pipeline = %self.pipeline, pages = run.pages, "The run reached source.max_pages; it stops here and goes on from the next page at the next tick (or the next `tributary poll`).");
            }
            // The next request goes out before this page is worked through
            // and handed to the log; its state record already names that page.
            let following = next.clone().filter(|_| !capped).map(|next| RunState {
                next,
                ..run.clone()
            });
            let last = following.is_none();
            let work = async {
                let records = self.reader.records(&response.body, &list, &mut seen);
                if let Some(max) = records.max_cursor {
                    run.max_seen = Some(page::max(run.max_seen.take(), max));
                }
                run.records += records.items.len() as u64;
                let state = match next {
                    None => self.finished(run),
                    Some(next) => {
                        run.next = next;
                        PollState {
                            cursor: self.state.cursor.clone(),
                            last_run_us: Some(run.started_us),
                            run: Some(run.clone()),
                        }
                    }
                };
                let received_at_us = now_us();
                let mut events: Vec<Event> = records
                    .items
                    .into_iter()
                    .map(|payload| Event {
                        id: uuid::Uuid::now_v7(),
                        received_at_us,
                        kind: RecordKind::Event,
                        payload,
                        topic: None,
                        connection: self.connection.clone(),
                    })
                    .collect();
                let payload = serde_json::to_vec(&state).expect("the state serialises");
                events.push(
                    Event::record(RecordKind::PollState, Bytes::from(payload))
                        .with_connection(self.connection.as_ref()),
                );
                let pending =
                    submit(&self.appender, events, chain, (self.max_buffer, &self.stop)).await?;
                flight.push_back((pending, state, run.clone()));
                // Pages the log already made durable are settled now; the
                // oldest past the limit are waited for before more are
                // fetched. (The caller settles what is left after the run's
                // last page.) A failed one ends the run, after the pages
                // settled before it moved the state.
                let mut settled = Vec::new();
                loop {
                    let must_wait = !last && flight.len() > PAGES_IN_FLIGHT;
                    let Some((pending, _, _)) = flight.front_mut() else {
                        break;
                    };
                    let range = if must_wait {
                        pending.await
                    } else {
                        match pending.now_or_never() {
                            Some(range) => range,
                            None => break,
                        }
                    };
                    let (_, state, at) = flight.pop_front().expect("the front page");
                    match self.settle(range, state, at).await {
                        Ok(page) => settled.push(page),
                        Err(e) => return Ok((settled, Some(e))),
                    }
                }
                Ok::<_, PollError>((settled, None))
            };
            let (next_page, worked) = match following {
                Some(following) => {
                    let (next_page, worked) = tokio::join!(self.fetch(&following), work);
                    (Some(next_page), worked)
                }
                None => (None, work.await),
            };
            let (settled, failed) = worked?;
            for (state, at) in settled {
                self.state = state;
                progress(&at);
            }
            if let Some(e) = failed {
                return Err(e);
            }
            match next_page {
                Some(next_page) => fetched = next_page,
                None => return Ok(()),
            }
        }
    }

    /// Writes the side copy of the state a page carried, once the log
    /// answered its append with `range`; the state and the run as of that
    /// page.
    async fn settle(
        &self,
        range: Result<std::ops::Range<u64>, AppendError>,
        state: PollState,
        at: RunState,
    ) -> Result<(PollState, RunState), PollError> {
        let range = range.map_err(PollError::Append)?;
        save_side_copy(&self.side, range, &state).await;
        Ok((state, at))
    }

    /// The state after `run` ends: the cursor moves to the newest value it saw.
    fn finished(&self, run: &RunState) -> PollState {
        PollState {
            cursor: match (self.state.cursor.clone(), run.max_seen.clone()) {
                (Some(old), Some(new)) => Some(page::max(Some(old), new)),
                (old, new) => new.or(old),
            },
            last_run_us: Some(run.started_us),
            run: None,
        }
    }

    fn new_run(&self) -> RunState {
        let start = self.spec.cursor.as_ref().and_then(|c| c.start.clone());
        let lookback = self
            .spec
            .cursor
            .as_ref()
            .map(|c| c.lookback)
            .unwrap_or_default();
        RunState {
            started_us: now_us(),
            lower: self
                .state
                .cursor
                .clone()
                .or(start)
                .map(|c| page::minus(&c, lookback)),
            max_seen: None,
            next: PageRef::First,
            pages: 0,
            records: 0,
        }
    }

    /// Fetches the page `run.next`; shutdown cancels the wait.
    async fn fetch(&self, run: &RunState) -> Result<(String, client::Response), PollError> {
        let request = page::request(&self.spec, &run.next, run.lower.as_ref());
        let url = request.url.to_string();
        let response = tokio::select! {
            r = self.client.fetch(&self.spec, &request, &self.stop) => r,
            _ = self.stop.cancelled() => Err(PollError::Stopped),
        };
        let context = |why: String| {
            format!(
                "{} {url}: {why}",
                if self.spec.post { "POST" } else { "GET" }
            )
        };
        match response {
            Ok(r) => Ok((url, r)),
            Err(PollError::Request(why)) => Err(PollError::Request(context(why))),
            Err(PollError::Rejected(why)) => Err(PollError::Rejected(context(why))),
            Err(e) => Err(e),
        }
    }
}

/// Appends a page (its records, then `state`) and, once that is durable,
/// writes the state's side copy (see [`submit`]).
async fn durable(
    appender: &Appender,
    side: &Path,
    events: Vec<Event>,
    state: &PollState,
    limits: (u64, &CancellationToken),
) -> Result<(), PollError> {
    let range = submit(appender, events, &Chain::new(), limits)
        .await?
        .await
        .map_err(PollError::Append)?;
    save_side_copy(side, range, state).await;
    Ok(())
}

/// Hands a page (its records, then its state) to the log, in page order.
/// While the log holds `buffer.max_bytes` (its sinks are behind), the page
/// waits: a poll backs off like a webhook client answered 503.
async fn submit(
    appender: &Appender,
    events: Vec<Event>,
    chain: &Chain,
    (max_buffer, stop): (u64, &CancellationToken),
) -> Result<Pending, PollError> {
    if appender.is_full(max_buffer) {
        warn!(
            max_bytes = max_buffer,
            "The buffer is full (buffer.max_bytes); the poll waits for its sinks to catch up."
        );
        while appender.is_full(max_buffer) {
            tokio::select! {
                _ = tokio::time::sleep(BUFFER_FULL_WAIT) => {}
                _ = stop.cancelled() => return Err(PollError::Stopped),
            }
        }
    }
    appender
        .submit(events, chain)
        .await
        .map_err(PollError::Append)
}

/// Writes the side copy of `state`, durable in the log at `range`. The log's
/// record is the state of record: a side copy that cannot be written is only
/// warned about.
async fn save_side_copy(side: &Path, range: std::ops::Range<u64>, state: &PollState) {
    let (side, state) = (side.to_path_buf(), state.clone());
    let saved =
        tokio::task::spawn_blocking(move || state::save(&side, range.end - 1, &state, false))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
    if let Err(e) = saved {
        warn!(error = %e, "Cannot write the poll state copy (source.json); the state is durable in the log, but fix this before the log's segments are cleaned up.");
    }
}
