//! Polling every active connection of a `[connections]` pipeline: one
//! poller per connection, each on the pipeline's schedule (its `jitter`
//! spreads their starts), with its own cursor, its own credentials and its
//! params filled into the request; `connections.max_concurrent_runs` bounds
//! the runs in flight, and one connection's failures (401, 429, 5xx,
//! timeouts) never hold another's run.
//!
//! A connection's cursor travels in the pipeline's log like a plain poll
//! source's, in the same append as its records, tagged with its id; a copy
//! goes to `<data_dir>/<pipeline>/connections/<id>/source.json`. At start the
//! newer of the two wins, so each connection resumes from its own cursor
//! after a crash.
//!
//! On a JetStream log, a runner polls one shard of the connections (see
//! [`super::cluster`]) and loads each connection's cursor from the cluster
//! when it starts it.
//!
//! The runner follows the store: a connection added or resumed starts, one
//! paused, removed or refused stops (its run ends where its last durable
//! page left it), one whose credentials or params change starts again with
//! them. A 401 or 403 that a token renewal does not cure, an OAuth
//! `invalid_grant` or a missing credential sets `needs_reauth`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::store::{Store, View};
use super::template;
use crate::config::spec::{PipelineSpec, PollSpec};
use crate::log::{Appender, Log};
use crate::source::poll::state::RunState;
use crate::source::poll::{ConnectionRun, PollError, Poller};

/// The runner of one pipeline's connections.
#[derive(Clone)]
pub struct Runner {
    /// The pipeline.
    pub pipeline: PipelineSpec,
    /// Its poll source (with templates).
    pub spec: PollSpec,
    /// Its connections.
    pub store: Arc<Store>,
    /// Its log.
    pub appender: Appender,
    /// Its log, for the connections' last states.
    pub log: Log,
    /// `<data_dir>/<pipeline>`.
    pub dir: PathBuf,
    /// Shutdown.
    pub stop: CancellationToken,
    /// On a JetStream log: the shard of the connections it polls.
    pub shard: Option<Shard>,
}

/// The connections one runner polls on a JetStream log, and where their
/// cursors are kept.
#[derive(Clone)]
pub struct Shard {
    /// This shard.
    pub index: u32,
    /// Of how many.
    pub of: u32,
    /// The pipeline's streams, which keep each connection's cursor.
    pub cursors: Arc<crate::log::jetstream::Pipeline>,
}

impl Shard {
    /// The shard connection `id` belongs to, of `of`.
    pub fn of_id(id: &str, of: u32) -> u32 {
        crc32c::crc32c(id.as_bytes()) % of.max(1)
    }

    fn holds(&self, id: &str) -> bool {
        Shard::of_id(id, self.of) == self.index
    }
}

/// How long a connection whose cursor could not be read waits to try again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);
/// How often a runner looks at every connection again.
const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_secs(60);

/// A connection's poller as the runner keeps it.
struct Running {
    /// When the connection last changed: a newer one restarts it.
    updated_at: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// `spec` with connection `id`'s params filled in.
pub fn expand(
    spec: &PollSpec,
    id: &str,
    params: &BTreeMap<String, String>,
) -> Result<PollSpec, String> {
    let mut spec = spec.clone();
    if let Some(text) = spec.url_template.take() {
        let filled = template::fill(&text, id, params, true)?;
        spec.url = url::Url::parse(&filled).map_err(|e| format!("the URL {filled}: {e}"))?;
    }
    for (_, value) in spec.query.iter_mut() {
        *value = template::fill(value, id, params, false)?;
    }
    for (_, value) in spec.headers.iter_mut() {
        *value = template::fill(value, id, params, false)?;
    }
    if let Some(body) = spec.body.as_mut() {
        fill_json(body, id, params)?;
    }
    Ok(spec)
}

fn fill_json(
    value: &mut serde_json::Value,
    id: &str,
    params: &BTreeMap<String, String>,
) -> Result<(), String> {
    match value {
        serde_json::Value::String(s) => *s = template::fill(s, id, params, false)?,
        serde_json::Value::Array(items) => {
            for item in items {
                fill_json(item, id, params)?;
            }
        }
        serde_json::Value::Object(map) => {
            for item in map.values_mut() {
                fill_json(item, id, params)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `tributary poll` of a connections pipeline: one run of each active
/// connection (or of `only`), one after another; their pages and records
/// added up. A connection that fails is logged and the others run; the
/// first failure is returned at the end.
pub async fn once(
    pipeline: &PipelineSpec,
    spec: &PollSpec,
    (store, (appender, log), dir): (&Arc<Store>, (Appender, Log), &std::path::Path),
    only: Option<&str>,
    stop: CancellationToken,
    progress: &mut (dyn FnMut(&RunState) + Send),
) -> Result<RunState, PollError> {
    let connections: Vec<View> = match only {
        None => store.active(),
        Some(id) => match store.get(id) {
            Ok(view) if view.state == super::State::Active => vec![view],
            Ok(view) => {
                return Err(PollError::Request(format!(
                "connection {id} is {:?}, not active: resume it (or give it new credentials) first",
                view.state
            )))
            }
            Err(e) => return Err(PollError::Request(crate::error::chain(&e))),
        },
    };
    let mut in_log = log.connection_states().map_err(PollError::State)?;
    let http = crate::source::poll::client::http(spec)?;
    let permits = Arc::new(tokio::sync::Semaphore::new(1));
    let mut total: Option<RunState> = None;
    let mut first_error = None;
    for view in connections {
        let id: Arc<str> = Arc::from(view.id.as_str());
        let made = Made {
            pipeline,
            spec,
            store,
            appender: &appender,
            dir,
        };
        let shared = (&permits, &http);
        let run = async {
            let mut poller = made
                .poller(&view, in_log.remove(&id), shared, stop.clone())
                .map_err(PollError::Request)?;
            poller.poll(progress).await
        };
        match run.await {
            Ok(run) => {
                info!(pipeline = %pipeline.name, connection = %id, pages = run.pages, records = run.records, "Polled a connection.");
                total = Some(match total {
                    None => run,
                    Some(mut sum) => {
                        sum.pages += run.pages;
                        sum.records += run.records;
                        sum
                    }
                });
            }
            Err(PollError::Stopped) => return Err(PollError::Stopped),
            Err(e) => {
                let why = crate::error::chain(&e);
                if e.refuses_credentials() {
                    let _ = store.needs_reauth(&id, &why);
                }
                error!(pipeline = %pipeline.name, connection = %id, error = %why, "The connection's poll failed.");
                first_error.get_or_insert(e);
            }
        }
    }
    drop(appender);
    match first_error {
        Some(e) => Err(e),
        None => Ok(total.unwrap_or_else(|| RunState {
            started_us: crate::event::now_us(),
            lower: None,
            max_seen: None,
            next: crate::source::poll::state::PageRef::First,
            pages: 0,
            records: 0,
        })),
    }
}

/// Passes a connection's run events to its store's notifier.
fn events(store: &Arc<Store>, id: &Arc<str>) -> crate::source::poll::RunEvents {
    let (store, id) = (store.clone(), id.clone());
    Arc::new(move |kind, data| store.notify(kind, &id, data))
}

/// Keeps a connection's rotated refresh token in its store.
fn keep_refresh(store: &Arc<Store>, id: &Arc<str>) -> crate::source::poll::client::KeepRefresh {
    let (store, id) = (store.clone(), id.clone());
    Arc::new(move |token: &str| {
        store
            .keep_refresh_token(&id, token)
            .map_err(|e| crate::error::chain(&e))
    })
}

impl Runner {
    /// Runs until shutdown; returns once every connection's poller ended.
    pub async fn run(self) {
        let limit = self
            .pipeline
            .connections
            .as_ref()
            .map_or(16, |c| c.max_concurrent_runs) as usize;
        let permits = Arc::new(tokio::sync::Semaphore::new(limit));
        // One HTTP client for every connection: its pool and TLS roots are shared.
        let http = match crate::source::poll::client::http(&self.spec) {
            Ok(http) => http,
            Err(e) => {
                error!(pipeline = %self.pipeline.name, error = %e, "No connection polls.");
                return;
            }
        };
        // Each connection's newest state record in the log, read once (on
        // JetStream, each one's from the cluster as it starts).
        let log = self.log.clone();
        let read = tokio::task::spawn_blocking(move || log.connection_states());
        let mut in_log: HashMap<Arc<str>, (u64, Bytes)> = match read.await {
            Ok(Ok(_)) if self.shard.is_some() => HashMap::new(),
            Ok(Ok(states)) => states,
            Ok(Err(e)) => {
                error!(pipeline = %self.pipeline.name, error = %e, "Cannot read the connections' cursors from the log; no connection polls until the next start.");
                return;
            }
            Err(e) => {
                error!(pipeline = %self.pipeline.name, error = %e, "Reading the connections' cursors failed.");
                return;
            }
        };
        let mut changes = self.store.subscribe();
        let mut running: HashMap<String, Running> = HashMap::new();
        let shared = (&permits, &http);
        // The change number last followed; none: read every connection.
        let mut seen: Option<u64> = None;
        let mut look_again = tokio::time::Instant::now() + LOOK_AGAIN;
        loop {
            let now = *changes.borrow_and_update();
            let changed = seen.and_then(|seen| self.store.changed_since(seen));
            seen = Some(now);
            let mut retry = false;
            match changed {
                // Only the connections that changed: a burst of adds costs
                // each one look, not one look at every connection.
                Some(ids) => {
                    let mut looked = std::collections::HashSet::new();
                    for id in ids {
                        if looked.insert(id.clone()) {
                            let view = self.store.get(&id).ok();
                            retry |= !self
                                .reconcile(&id, view, &mut running, &mut in_log, shared)
                                .await;
                        }
                    }
                }
                None => {
                    let mut active: HashMap<String, View> = self
                        .store
                        .active()
                        .into_iter()
                        .map(|v| (v.id.clone(), v))
                        .collect();
                    let ids: Vec<String> = running.keys().cloned().collect();
                    for id in ids {
                        let view = active.remove(&id);
                        retry |= !self
                            .reconcile(&id, view, &mut running, &mut in_log, shared)
                            .await;
                    }
                    for (id, view) in active {
                        retry |= !self
                            .reconcile(&id, Some(view), &mut running, &mut in_log, shared)
                            .await;
                    }
                }
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(RETRY), if retry => seen = None,
                // Now and then every connection is looked at again: a
                // poller that ended by itself starts again.
                _ = tokio::time::sleep_until(look_again) => {
                    seen = None;
                    look_again = tokio::time::Instant::now() + LOOK_AGAIN;
                }
            }
        }
        for (_, r) in running {
            r.stop.cancel();
            let _ = r.task.await;
        }
    }

    /// Brings connection `id`'s poller in line with `view` (none: removed):
    /// an active one of this runner's shard runs, with its latest
    /// credentials and params; any other does not. False if its cursor
    /// could not be read (try again).
    async fn reconcile(
        &self,
        id: &str,
        view: Option<View>,
        running: &mut HashMap<String, Running>,
        in_log: &mut HashMap<Arc<str>, (u64, Bytes)>,
        shared: (&Arc<tokio::sync::Semaphore>, &reqwest::Client),
    ) -> bool {
        let view = view.filter(|v| {
            v.state == super::State::Active && self.shard.as_ref().is_none_or(|s| s.holds(&v.id))
        });
        if let (Some(r), Some(v)) = (running.get(id), &view) {
            if !r.task.is_finished() && r.updated_at == v.updated_at {
                return true;
            }
        }
        // Stopped: it no longer runs, or changed (it starts again below).
        if let Some(r) = running.remove(id) {
            r.stop.cancel();
        }
        let Some(view) = view else { return true };
        let key: Arc<str> = Arc::from(id);
        let state = match &self.shard {
            None => in_log.remove(&key),
            Some(shard) => match shard.cursors.load_connection_state(&key).await {
                Ok(state) => state,
                Err(e) => {
                    warn!(pipeline = %self.pipeline.name, connection = %id, error = %e, "Cannot read the connection's cursor from JetStream; trying again in 5 s.");
                    return false;
                }
            },
        };
        if let Some(started) = self.start(&key, &view, state, shared) {
            running.insert(id.to_string(), started);
        }
        true
    }

    /// Starts connection `view`'s poller; `None` (logged) if it cannot run.
    fn start(
        &self,
        id: &Arc<str>,
        view: &View,
        in_log: Option<(u64, Bytes)>,
        shared: (&Arc<tokio::sync::Semaphore>, &reqwest::Client),
    ) -> Option<Running> {
        let name = &self.pipeline.name;
        let stop = self.stop.child_token();
        let made = Made {
            pipeline: &self.pipeline,
            spec: &self.spec,
            store: &self.store,
            appender: &self.appender,
            dir: &self.dir,
        };
        let poller = match made.poller(view, in_log, shared, stop.clone()) {
            Ok(poller) => poller,
            Err(why) => {
                self.store.health_of(id).failed(&why);
                warn!(pipeline = %name, connection = %id, error = %why, "This connection cannot run.");
                return None;
            }
        };
        let (store, id_text) = (self.store.clone(), id.to_string());
        let health = self.store.health_of(id);
        let task = tokio::spawn(async move {
            if poller.run_connection().await {
                // It ended because the API refused its credentials.
                let why = health.snapshot().last_error.unwrap_or_default();
                if let Err(e) = store.needs_reauth(&id_text, &why) {
                    warn!(connection = %id_text, error = %crate::error::chain(&e), "Cannot mark the connection as needing new credentials.");
                }
            }
        });
        info!(pipeline = %name, connection = %id, "Connection polling.");
        Some(Running {
            updated_at: view.updated_at.clone(),
            stop,
            task,
        })
    }
}

/// What a connection's poller is made from: the pipeline's pieces.
struct Made<'a> {
    pipeline: &'a PipelineSpec,
    spec: &'a PollSpec,
    store: &'a Arc<Store>,
    appender: &'a Appender,
    dir: &'a std::path::Path,
}

impl Made<'_> {
    /// Connection `view`'s poller: its params filled into the spec, its
    /// credentials opened, its state from `in_log` and its side copy; the
    /// error says why it cannot run.
    fn poller(
        &self,
        view: &View,
        in_log: Option<(u64, Bytes)>,
        (permits, http): (&Arc<tokio::sync::Semaphore>, &reqwest::Client),
        stop: CancellationToken,
    ) -> Result<Poller, String> {
        let id: Arc<str> = Arc::from(view.id.as_str());
        let spec = expand(self.spec, &id, &view.params)?;
        let credentials = self
            .store
            .credentials(&id)
            .map_err(|e| crate::error::chain(&e))?;
        let connection = ConnectionRun {
            id: id.clone(),
            credentials,
            keep_refresh: Some(keep_refresh(self.store, &id)),
            permits: permits.clone(),
            http: http.clone(),
            health: self.store.health_of(&id),
            events: Some(events(self.store, &id)),
        };
        let dir = self.dir.join("connections").join(id.as_ref());
        Poller::for_connection(
            self.pipeline,
            &spec,
            (self.appender.clone(), &dir, in_log),
            connection,
            stop,
        )
        .map_err(|e| crate::error::chain(&e))
    }
}
