//! A pipeline's connections, as every node sees them: kept by a backend,
//! the file log's [`super::journal`] (fsynced before an answer) or a
//! JetStream log's [`super::bucket`] (acknowledged by a quorum before an
//! answer), with every change made durable there before it is current here.
//!
//! Credentials are stored sealed ([`super::seal`]), bound to
//! `<pipeline>/<id>`; nothing else a connection holds is secret. A removed
//! connection stays as a tombstone without credentials, so its webhook URL
//! can answer 410 Gone and its id is not taken again by mistake.

use std::collections::BTreeMap;

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::bucket::Bucket;
use super::journal::Journal;
use super::seal::Keys;
use super::{Credentials, Fields, State};
use crate::source::poll::health::PollHealth;

pub use super::journal::{FILE, JOURNAL};
pub use super::stored::StoreError;

/// How many changes a store remembers the ids of for its runners; a runner
/// further behind reads every connection again.
const RECENT: usize = 65_536;
use super::stored::{Stored, RETRIES};

/// A connection as the admin API shows it: no credential values.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// Its id.
    pub id: String,
    /// `active`, `paused`, `needs_reauth` or `removed`.
    pub state: State,
    /// Its params.
    pub params: BTreeMap<String, String>,
    /// The names of its credential fields.
    pub credential_fields: Vec<String>,
    /// When it was added (RFC 3339, UTC).
    pub created_at: String,
    /// When it last changed (through the API, or to `needs_reauth`).
    pub updated_at: String,
    /// Why it is `needs_reauth`: the API's answer that refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The values that attribute a webhook to it.
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<String>,
    /// How its poll runs go, once one has ended since the start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<crate::source::poll::health::PollSnapshot>,
    /// Records of this connection made durable (polled, or received by
    /// webhook) since this process started, like a Prometheus counter: on
    /// a JetStream log, those this node stored.
    pub records_total: u64,
}

impl From<&Stored> for View {
    fn from(s: &Stored) -> Self {
        View {
            id: s.id.clone(),
            state: s.state,
            params: s.params.clone(),
            credential_fields: s.credential_fields.clone(),
            created_at: s.created_at.clone(),
            updated_at: s.updated_at.clone(),
            error: s.error.clone(),
            matches: s.matches.clone(),
            last_run: None,
            records_total: 0,
        }
    }
}

/// A new connection, as the admin API takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct New {
    /// Its id (`[A-Za-z0-9._-]{1,128}`).
    pub id: String,
    /// Its credentials, by field name.
    #[serde(default)]
    pub credentials: Credentials,
    /// Its params, by name.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Values that attribute a webhook to it (a shop's domain, a portal
    /// id), with `[connections] attribute`.
    #[serde(default, rename = "match")]
    pub matches: Vec<String>,
}

/// A change to a connection, as the admin API takes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    /// `active` or `paused`.
    pub state: Option<State>,
    /// New credentials (all fields; a connection in `needs_reauth` becomes `active`).
    pub credentials: Option<Credentials>,
    /// New params (all of them).
    pub params: Option<BTreeMap<String, String>>,
    /// New attribution values (all of them).
    #[serde(rename = "match")]
    pub matches: Option<Vec<String>>,
}

/// Most failing connections a summary lists (all are counted).
const SUMMARY_FAILING: usize = 20;

/// A pipeline's connections at a glance.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// How many are in each state.
    pub states: BTreeMap<&'static str, usize>,
    /// Failing ones (at most 20), with their errors.
    pub failing: Vec<Failing>,
    /// How many are failing in all.
    pub failing_total: usize,
}

/// A failing connection.
#[derive(Debug, Serialize)]
pub struct Failing {
    /// Its id.
    pub id: String,
    /// `active` (its last run failed) or `needs_reauth`.
    pub state: &'static str,
    /// The error.
    pub error: String,
}

/// One pipeline's connections.
pub struct Store {
    pipeline: String,
    keys: Arc<Keys>,
    fields: Fields,
    /// The connections as this node sees them: held only to read or apply.
    connections: Mutex<Inner>,
    /// Where they are kept: held across a whole change (one at a time on
    /// this node), so readers never wait for a write.
    backend: Mutex<Backend>,
    /// Whether the backend is a bucket (a change then waits on the network).
    clustered: bool,
    /// Where the connections are kept, for messages.
    place: String,
    /// Bumped after every change is durable, for the connections' runner.
    changes: tokio::sync::watch::Sender<u64>,
    /// The ids of the latest changes, each with its number in `changes`,
    /// oldest first (at most [`RECENT`]): a runner follows them one by one
    /// instead of reading every connection at each change.
    recent: Mutex<std::collections::VecDeque<(u64, String)>>,
    /// How each connection's poll runs go (shared with its poller).
    health: Mutex<BTreeMap<String, Arc<PollHealth>>>,
    /// Tells the app about its connections, if `[connections] notify` is set.
    notifier: Option<Arc<super::notify::Notifier>>,
    /// Ends the bucket's watch when the store goes (a reload that stops or
    /// restarts the pipeline), so no watch outlives its pipeline.
    _watching: Option<tokio_util::sync::DropGuard>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

/// The connections as this node sees them.
struct Inner {
    map: BTreeMap<String, Stored>,
    /// Attribution value → connection id.
    by_match: std::collections::HashMap<String, String>,
    /// On a bucket: the revision of each connection this node saw.
    revisions: std::collections::HashMap<String, u64>,
}

/// Where a store keeps its connections.
enum Backend {
    /// The file log's snapshot and journal.
    Files(Journal),
    /// A JetStream log's KV bucket.
    Bucket(Box<Bucket>),
}

impl Inner {
    /// Makes `stored` current here (it is durable already).
    fn apply(&mut self, stored: Stored) {
        if let Some(old) = self.map.get(&stored.id) {
            for m in &old.matches {
                if self.by_match.get(m) == Some(&stored.id) {
                    self.by_match.remove(m);
                }
            }
        }
        for m in &stored.matches {
            self.by_match.insert(m.clone(), stored.id.clone());
        }
        self.map.insert(stored.id.clone(), stored);
    }

    /// Applies `stored`, at `revision` of a bucket, if this node saw no
    /// newer one; whether it did.
    fn applied(&mut self, revision: u64, stored: Stored) -> bool {
        let seen = self.revisions.entry(stored.id.clone()).or_default();
        if revision <= *seen {
            return false;
        }
        *seen = revision;
        self.apply(stored);
        true
    }
}

impl std::ops::Deref for Inner {
    type Target = BTreeMap<String, Stored>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Store {
    /// The connections of `pipeline` kept in `dir` (created if missing),
    /// sealed with `keys`; `fields` are the credential fields its source takes.
    pub fn open(
        dir: &Path,
        pipeline: &str,
        keys: Arc<Keys>,
        fields: Fields,
    ) -> Result<Store, StoreError> {
        let (map, journal) = Journal::open(dir)?;
        Ok(Store::with(
            pipeline,
            keys,
            fields,
            map,
            Backend::Files(journal),
        ))
    }

    /// The connections of `pipeline` in the JetStream bucket `kv`, loaded
    /// whole; every change any node makes to them is applied here until
    /// the store is dropped.
    pub async fn open_bucket(
        kv: async_nats::jetstream::kv::Store,
        pipeline: &str,
        keys: Arc<Keys>,
        fields: Fields,
        notifier: Option<Arc<super::notify::Notifier>>,
    ) -> Result<Arc<Store>, StoreError> {
        let bucket = Bucket::new(kv.clone(), tokio::runtime::Handle::current());
        let stop = tokio_util::sync::CancellationToken::new();
        let mut store = Store::with(
            pipeline,
            keys,
            fields,
            BTreeMap::new(),
            Backend::Bucket(Box::new(bucket)),
        )
        .notifying(notifier);
        store._watching = Some(stop.clone().drop_guard());
        let store = Arc::new(store);
        let weak = Arc::downgrade(&store);
        let apply: super::bucket::Apply = Box::new(move |change| match (weak.upgrade(), change) {
            (None, _) => false,
            (Some(store), Some((revision, stored))) => {
                store.applied(revision, stored);
                true
            }
            (Some(_), None) => true,
        });
        super::bucket::watch(kv, apply, stop).await?;
        Ok(store)
    }

    fn with(
        pipeline: &str,
        keys: Arc<Keys>,
        fields: Fields,
        map: BTreeMap<String, Stored>,
        backend: Backend,
    ) -> Store {
        let (clustered, place) = match &backend {
            Backend::Files(journal) => (false, journal.place()),
            Backend::Bucket(bucket) => (true, bucket.place()),
        };
        Store {
            pipeline: pipeline.to_string(),
            keys,
            fields,
            connections: Mutex::new(Inner {
                by_match: map
                    .values()
                    .flat_map(|c| c.matches.iter().map(|m| (m.clone(), c.id.clone())))
                    .collect(),
                map,
                revisions: Default::default(),
            }),
            backend: Mutex::new(backend),
            clustered,
            place,
            changes: tokio::sync::watch::Sender::new(0),
            recent: Mutex::default(),
            health: Mutex::default(),
            notifier: None,
            _watching: None,
        }
    }

    /// Applies `stored`, at `revision` of the bucket, if it is newer than
    /// what this node saw (a change made on any node, seen by the watch).
    fn applied(&self, revision: u64, stored: Stored) {
        let id = stored.id.clone();
        let applied = self.lock().applied(revision, stored);
        if applied {
            self.changed(&id);
        }
    }

    /// Records that connection `id` changed, and wakes the runners.
    fn changed(&self, id: &str) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let number = *self.changes.borrow() + 1;
        recent.push_back((number, id.to_string()));
        if recent.len() > RECENT {
            recent.pop_front();
        }
        self.changes.send_replace(number);
    }

    /// The ids of the connections changed after change number `seen` (the
    /// value [`Store::subscribe`]'s receiver had), oldest first, repeats
    /// included; `None` if some of them are no longer remembered (read
    /// them all again).
    pub fn changed_since(&self, seen: u64) -> Option<Vec<String>> {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let newest = *self.changes.borrow();
        match recent.front() {
            Some((oldest, _)) if *oldest > seen + 1 => return None,
            None if newest > seen => return None,
            _ => {}
        }
        let from = recent.partition_point(|(number, _)| *number <= seen);
        Some(recent.range(from..).map(|(_, id)| id.clone()).collect())
    }

    /// This store telling the app about its connections through `notifier`.
    pub fn notifying(mut self, notifier: Option<Arc<super::notify::Notifier>>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Sends event `kind` about `connection` to the app, if it listens.
    pub fn notify(&self, kind: &'static str, connection: &str, data: serde_json::Value) {
        if let Some(notifier) = &self.notifier {
            notifier.send(kind, connection, data);
        }
    }

    /// Wakes on every change (a connection added, changed or removed).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Where connection `id`'s poll runs are reported.
    pub fn health_of(&self, id: &str) -> Arc<PollHealth> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// `view` with how its runs go.
    fn with_health(&self, mut view: View) -> View {
        let health = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let of = health.get(&view.id);
        view.last_run = of
            .map(|h| h.snapshot())
            .filter(|s| s.state != crate::source::poll::health::PollRuns::Waiting);
        view.records_total = of.map_or(0, |h| h.records_total());
        view
    }

    /// Counts one durable record for each connection in `owners` (one
    /// entry per record).
    pub fn count<'e>(&self, owners: impl IntoIterator<Item = &'e Arc<str>>) {
        let mut counts: std::collections::HashMap<&str, u64> = Default::default();
        for id in owners {
            *counts.entry(id).or_default() += 1;
        }
        for (id, n) in counts {
            self.health_of(id).add_records(n);
        }
    }

    /// Counts by state, and the failing connections (refused, or whose last
    /// run failed) with their errors: the status page's and `/metrics`' view.
    pub fn summary(&self) -> Summary {
        let views = {
            let connections = self.lock();
            connections.values().map(View::from).collect::<Vec<_>>()
        };
        let mut summary = Summary::default();
        for state in ["active", "paused", "needs_reauth", "removed"] {
            summary.states.insert(state, 0);
        }
        for view in views {
            let state = match view.state {
                State::Active => "active",
                State::Paused => "paused",
                State::NeedsReauth => "needs_reauth",
                State::Removed => "removed",
            };
            *summary.states.entry(state).or_default() += 1;
            let view = self.with_health(view);
            let error = match (view.state, &view.error, &view.last_run) {
                (State::NeedsReauth, error, _) => Some(error.clone().unwrap_or_default()),
                (State::Active, _, Some(run))
                    if run.state == crate::source::poll::health::PollRuns::Failing =>
                {
                    run.last_error.clone()
                }
                _ => None,
            };
            if let Some(error) = error {
                if summary.failing.len() < SUMMARY_FAILING {
                    summary.failing.push(Failing {
                        id: view.id,
                        state,
                        error,
                    });
                }
                summary.failing_total += 1;
            }
        }
        summary
    }

    /// The connections that run now, with their params.
    pub fn active(&self) -> Vec<View> {
        let connections = self.lock();
        connections
            .values()
            .filter(|c| c.state == State::Active)
            .map(View::from)
            .collect()
    }

    /// Marks connection `id` as refused by the API: it runs no more until
    /// its credentials are replaced.
    pub fn needs_reauth(&self, id: &str, why: &str) -> Result<View, StoreError> {
        let mut changed = false;
        let view = self.change(id, |stored| {
            if stored.state == State::Active {
                stored.state = State::NeedsReauth;
                stored.error = Some(why.to_string());
                stored.updated_at = now();
                changed = true;
            }
            Ok(())
        })?;
        if changed {
            self.notify(
                "connection.needs_reauth",
                id,
                serde_json::json!({ "error": why }),
            );
        }
        Ok(view)
    }

    /// Keeps the refresh token an OAuth endpoint rotated for connection
    /// `id` (sealed, fsynced) before the new access token is used. Not a
    /// change the connection's runner restarts for (`updated_at` stays).
    pub fn keep_refresh_token(&self, id: &str, token: &str) -> Result<(), StoreError> {
        // Opened from the newest value (on a bucket, another node may have
        // changed the connection meanwhile).
        self.change(id, |stored| {
            let sealed = stored.credentials.as_deref().unwrap_or_default();
            let plain = self.keys.open(sealed, &context(&self.pipeline, id))?;
            let mut credentials: Credentials =
                serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt {
                    path: format!("the credentials of connection {id}"),
                    message: e.to_string(),
                })?;
            credentials.insert("refresh_token".into(), token.to_string());
            stored.credentials = Some(self.seal(id, &credentials)?);
            Ok(())
        })
        .map(|_| ())
    }

    /// Applies `edit` to the live connection `id`, durably. On a bucket,
    /// a change another node made first is read and `edit` applied again.
    fn change(
        &self,
        id: &str,
        mut edit: impl FnMut(&mut Stored) -> Result<(), StoreError>,
    ) -> Result<View, StoreError> {
        self.exclusive(|backend| {
            for _ in 0..RETRIES {
                let (mut stored, seen) = {
                    let mut connections = self.lock();
                    let seen = connections.revisions.get(id).copied();
                    (self.live(&mut connections.map, id)?.clone(), seen)
                };
                edit(&mut stored)?;
                let view = View::from(&stored);
                if self.commit(backend, stored, seen)? {
                    self.changed(id);
                    return Ok(view);
                }
            }
            Err(StoreError::Contended(id.to_string()))
        })
    }

    /// Runs `change` with the backend to itself. On a bucket it waits on
    /// the network: off the runtime's workers, so that the tasks it waits
    /// for (the cluster connection's) and readers keep running.
    fn exclusive<T>(&self, change: impl FnOnce(&mut Backend) -> T) -> T {
        let run = || {
            let mut backend = self
                .backend
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            change(&mut backend)
        };
        if self.clustered {
            tokio::task::block_in_place(run)
        } else {
            run()
        }
    }

    /// Makes `stored` durable, then current. On a bucket, `seen` is the
    /// revision this node last saw of it: false (and the newer value made
    /// current) if another node changed it since.
    fn commit(
        &self,
        backend: &mut Backend,
        stored: Stored,
        seen: Option<u64>,
    ) -> Result<bool, StoreError> {
        match backend {
            Backend::Files(journal) => {
                journal.append(&stored)?;
                let mut connections = self.lock();
                connections.apply(stored);
                if journal.is_long(connections.map.len()) {
                    // The change is durable already: a failed fold is retried later.
                    if let Err(e) = journal.fold(&connections.map) {
                        tracing::warn!(pipeline = %self.pipeline, error = %crate::error::chain(&e), "Cannot fold the connections' journal into a snapshot; it keeps growing until this works.");
                    }
                }
                Ok(true)
            }
            Backend::Bucket(bucket) => match bucket.write(&stored, seen)? {
                Some(revision) => {
                    self.lock().applied(revision, stored);
                    Ok(true)
                }
                None => {
                    if let Some((revision, newer)) = bucket.read(&stored.id)? {
                        self.lock().applied(revision, newer);
                    }
                    Ok(false)
                }
            },
        }
    }

    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// The credential fields this pipeline's connections take.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// Every connection not removed, by id.
    pub fn list(&self) -> Vec<View> {
        let views: Vec<View> = {
            let connections = self.lock();
            connections
                .values()
                .filter(|c| c.state != State::Removed)
                .map(View::from)
                .collect()
        };
        views.into_iter().map(|v| self.with_health(v)).collect()
    }

    /// The connection `id`: removed ones too (their state says so).
    pub fn get(&self, id: &str) -> Result<View, StoreError> {
        let view = {
            let connections = self.lock();
            connections
                .get(id)
                .map(View::from)
                .ok_or_else(|| self.not_found(id))?
        };
        Ok(self.with_health(view))
    }

    /// The connection a webhook's attribution value names, with its state.
    pub fn by_match(&self, value: &str) -> Option<(String, State)> {
        let inner = self.lock();
        let id = inner.by_match.get(value)?;
        inner.map.get(id).map(|c| (c.id.clone(), c.state))
    }

    /// Refuses attribution values another connection holds.
    fn check_matches(&self, inner: &Inner, id: &str, matches: &[String]) -> Result<(), StoreError> {
        for m in matches {
            if m.is_empty() {
                return Err(StoreError::Invalid("an empty match value".into()));
            }
            if let Some(other) = inner.by_match.get(m).filter(|o| *o != id) {
                return Err(StoreError::Invalid(format!(
                    "match value {} is already connection {other}'s; a webhook must name one connection",
                    super::printable(m)
                )));
            }
        }
        Ok(())
    }

    /// Whether connection `id` exists and is not removed (for webhooks: a
    /// look-up, no copy).
    pub fn state_of(&self, id: &str) -> Option<State> {
        self.lock().get(id).map(|c| c.state)
    }

    /// Adds `new`, durably.
    pub fn add(&self, new: New) -> Result<View, StoreError> {
        if !super::valid_id(&new.id) {
            return Err(StoreError::Invalid(format!(
                "\"{}\" is not a connection id: use 1 to 128 letters, digits, '.', '_' or '-' (e.g. your customer's id)",
                super::printable(&new.id)
            )));
        }
        self.fields.check(&new.credentials, true)?;
        self.fields.check_params(&new.params)?;
        self.exclusive(|backend| self.add_to(backend, new))
    }

    fn add_to(&self, backend: &mut Backend, new: New) -> Result<View, StoreError> {
        {
            let connections = self.lock();
            if connections.contains_key(&new.id) {
                return Err(StoreError::Exists {
                    pipeline: self.pipeline.clone(),
                    id: new.id,
                });
            }
            self.check_matches(&connections, &new.id, &new.matches)?;
        }
        let now = now();
        let stored = Stored {
            credentials: Some(self.seal(&new.id, &new.credentials)?),
            credential_fields: new.credentials.keys().cloned().collect(),
            id: new.id.clone(),
            state: State::Active,
            params: new.params,
            created_at: now.clone(),
            updated_at: now,
            error: None,
            matches: new.matches,
        };
        let view = View::from(&stored);
        if !self.commit(backend, stored, None)? {
            // Another node added it first.
            return Err(StoreError::Exists {
                pipeline: self.pipeline.clone(),
                id: new.id,
            });
        }
        self.changed(&view.id);
        Ok(view)
    }

    /// Changes the connection `id` as `patch` says, durably.
    pub fn patch(&self, id: &str, patch: Patch) -> Result<View, StoreError> {
        if patch.state == Some(State::Removed) || patch.state == Some(State::NeedsReauth) {
            return Err(StoreError::Invalid(
                "state may be set to \"active\" or \"paused\"; remove a connection with DELETE, and new credentials end needs_reauth".into(),
            ));
        }
        if let Some(credentials) = &patch.credentials {
            self.fields.check(credentials, true)?;
        }
        if let Some(params) = &patch.params {
            self.fields.check_params(params)?;
        }
        if let Some(matches) = &patch.matches {
            self.check_matches(&self.lock(), id, matches)?;
        }
        let sealed = match &patch.credentials {
            Some(credentials) => Some(self.seal(id, credentials)?),
            None => None,
        };
        self.change(id, |stored| {
            if let (Some(credentials), Some(sealed)) = (&patch.credentials, &sealed) {
                stored.credentials = Some(sealed.clone());
                stored.credential_fields = credentials.keys().cloned().collect();
                if stored.state == State::NeedsReauth {
                    stored.state = State::Active;
                }
                stored.error = None;
            }
            if let Some(params) = &patch.params {
                stored.params = params.clone();
            }
            if let Some(matches) = &patch.matches {
                stored.matches = matches.clone();
            }
            if let Some(state) = patch.state {
                // A connection waiting for credentials stays so until they come.
                if !(stored.state == State::NeedsReauth && patch.credentials.is_none()) {
                    stored.state = state;
                }
            }
            stored.updated_at = now();
            Ok(())
        })
    }

    /// Removes the connection `id`: its credentials are dropped, a tombstone stays.
    pub fn remove(&self, id: &str) -> Result<View, StoreError> {
        let view = self.change(id, |stored| {
            stored.state = State::Removed;
            stored.credentials = None;
            stored.credential_fields.clear();
            stored.updated_at = now();
            Ok(())
        })?;
        // Its sealed credentials must not linger in the journal's older
        // lines (a bucket keeps one value per key).
        self.exclusive(|backend| {
            if let Backend::Files(journal) = backend {
                if let Err(e) = journal.fold(&self.lock().map) {
                    tracing::warn!(pipeline = %self.pipeline, error = %crate::error::chain(&e), "Cannot fold the connections' journal; a removed connection's sealed credentials stay in it until this works.");
                }
            }
        });
        Ok(view)
    }

    /// The credentials of connection `id`, opened.
    pub fn credentials(&self, id: &str) -> Result<Credentials, StoreError> {
        let sealed = {
            let mut connections = self.lock();
            let stored = self.live(&mut connections.map, id)?;
            stored.credentials.clone().unwrap_or_default()
        };
        let plain = self.keys.open(&sealed, &context(&self.pipeline, id))?;
        serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt {
            path: self.place.clone(),
            message: e.to_string(),
        })
    }

    /// Seals every connection's credentials again under the current key;
    /// returns how many were sealed under another one (on a bucket, one
    /// another node changed meanwhile is left: run it again).
    pub fn rekey(&self) -> Result<usize, StoreError> {
        self.exclusive(|backend| {
            let mut resealed = Vec::new();
            {
                let connections = self.lock();
                for stored in connections.values() {
                    let Some(sealed) = &stored.credentials else {
                        continue;
                    };
                    if Keys::key_of(sealed) == Some(self.keys.current_id()) {
                        continue;
                    }
                    let context = context(&self.pipeline, &stored.id);
                    let plain = self.keys.open(sealed, &context)?;
                    let mut stored = stored.clone();
                    stored.credentials = Some(self.keys.seal(&plain, &context)?);
                    let seen = connections.revisions.get(&stored.id).copied();
                    resealed.push((stored, seen));
                }
            }
            let mut changed = 0;
            for (stored, seen) in resealed {
                if self.commit(backend, stored, seen)? {
                    changed += 1;
                }
            }
            Ok(changed)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn not_found(&self, id: &str) -> StoreError {
        StoreError::NotFound {
            pipeline: self.pipeline.clone(),
            id: id.to_string(),
        }
    }

    /// The connection `id` in `connections`, if it is not removed.
    fn live<'a>(
        &self,
        connections: &'a mut BTreeMap<String, Stored>,
        id: &str,
    ) -> Result<&'a mut Stored, StoreError> {
        match connections.get_mut(id) {
            None => Err(self.not_found(id)),
            Some(s) if s.state == State::Removed => Err(StoreError::Removed {
                pipeline: self.pipeline.clone(),
                id: id.to_string(),
            }),
            Some(s) => Ok(s),
        }
    }

    fn seal(&self, id: &str, credentials: &Credentials) -> Result<String, StoreError> {
        let plain = serde_json::to_vec(credentials).expect("a map of strings serialises");
        Ok(self.keys.seal(&plain, &context(&self.pipeline, id))?)
    }
}

/// What a connection's sealed credentials are bound to.
fn context(pipeline: &str, id: &str) -> String {
    format!("{pipeline}/{id}")
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;

    fn store(dir: &Path) -> Store {
        let keys = Keys::new(KEY, "").unwrap();
        Store::open(
            dir,
            "crm",
            Arc::new(keys),
            Fields {
                required: vec!["token".into()],
                optional: vec![],
                params: vec![],
            },
        )
        .unwrap()
    }

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn new(id: &str, token: &str) -> New {
        New {
            id: id.into(),
            credentials: [("token".to_string(), token.to_string())].into(),
            params: [("shop".to_string(), "acme".to_string())].into(),
            matches: vec![],
        }
    }

    #[test]
    fn connections_survive_a_reopen_with_their_credentials_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.add(new("acme", "tok-acme-123")).unwrap();
        s.add(new("globex", "tok-globex-456")).unwrap();
        assert!(matches!(
            s.add(new("acme", "x")),
            Err(StoreError::Exists { .. })
        ));
        s.patch(
            "globex",
            Patch {
                state: Some(State::Paused),
                ..Default::default()
            },
        )
        .unwrap();
        drop(s);
        let mut bytes = fs::read(dir.path().join(FILE)).unwrap_or_default();
        bytes.extend(fs::read(dir.path().join(JOURNAL)).unwrap_or_default());
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("tok-acme-123") && !text.contains("tok-globex-456"),
            "{text}"
        );
        let s = store(dir.path());
        let ids: Vec<_> = s.list().into_iter().map(|v| (v.id, v.state)).collect();
        assert_eq!(
            ids,
            vec![
                ("acme".into(), State::Active),
                ("globex".into(), State::Paused)
            ]
        );
        assert_eq!(s.credentials("acme").unwrap()["token"], "tok-acme-123");
        assert_eq!(s.get("acme").unwrap().credential_fields, vec!["token"]);
    }

    #[test]
    fn a_removed_connection_keeps_a_tombstone_without_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.add(new("acme", "tok-acme-123")).unwrap();
        s.remove("acme").unwrap();
        assert!(s.list().is_empty());
        assert_eq!(s.get("acme").unwrap().state, State::Removed);
        assert!(matches!(
            s.credentials("acme"),
            Err(StoreError::Removed { .. })
        ));
        assert!(matches!(s.remove("acme"), Err(StoreError::Removed { .. })));
        assert!(matches!(s.get("nope"), Err(StoreError::NotFound { .. })));
        let text = fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!text.contains("\"credentials\""), "{text}");
    }

    #[test]
    fn bad_ids_and_credentials_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let e = s.add(new("a b", "t")).unwrap_err().to_string();
        assert!(e.contains("not a connection id"), "{e}");
        let mut missing = new("acme", "t");
        missing.credentials.clear();
        let e = s.add(missing).unwrap_err().to_string();
        assert!(e.contains("token"), "{e}");
        let mut unknown = new("acme", "t");
        unknown
            .credentials
            .insert("tokne".into(), "v-secret".into());
        let e = s.add(unknown).unwrap_err().to_string();
        assert!(e.contains("tokne") && !e.contains("v-secret"), "{e}");
    }

    #[test]
    fn changes_go_to_a_journal_that_a_torn_line_and_a_fold_leave_intact() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        for i in 0..10 {
            s.add(new(&format!("c{i}"), "tok")).unwrap();
        }
        assert!(!dir.path().join(FILE).exists(), "changes go to the journal");
        // Folded once the journal outgrows the limit.
        for i in 0..=super::super::journal::JOURNAL_LINES {
            let state = if i % 2 == 0 {
                State::Paused
            } else {
                State::Active
            };
            let patch = Patch {
                state: Some(state),
                ..Default::default()
            };
            s.patch("c1", patch).unwrap();
        }
        let snapshot = fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(snapshot.contains("\"c9\""));
        s.remove("c3").unwrap();
        drop(s);
        // A crash cut the next change mid-line.
        let mut journal = fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .unwrap();
        journal
            .write_all(b"{\"id\":\"c5\",\"state\":\"pau")
            .unwrap();
        drop(journal);
        let s = store(dir.path());
        assert_eq!(s.list().len(), 9);
        assert_eq!(
            s.get("c1").unwrap().state,
            State::Paused,
            "the last change before the tear"
        );
        assert_eq!(s.get("c3").unwrap().state, State::Removed);
        assert_eq!(
            s.get("c5").unwrap().state,
            State::Active,
            "the torn change never happened"
        );
        // Opening folded the journal: it is empty, the snapshot whole.
        assert_eq!(fs::read(dir.path().join(JOURNAL)).unwrap().len(), 0);
        s.add(new("later", "tok")).unwrap();
        drop(s);
        assert!(store(dir.path()).get("later").is_ok());
    }

    #[test]
    fn runners_follow_the_ids_that_changed_or_read_all_when_too_far_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let seen = *s.subscribe().borrow();
        assert_eq!(s.changed_since(seen), Some(vec![]));
        s.add(new("acme", "t")).unwrap();
        s.add(new("globex", "t")).unwrap();
        s.remove("acme").unwrap();
        assert_eq!(
            s.changed_since(seen),
            Some(vec!["acme".into(), "globex".into(), "acme".into()])
        );
        let now = *s.subscribe().borrow();
        assert_eq!(s.changed_since(now), Some(vec![]));
        assert_eq!(s.changed_since(now - 1), Some(vec!["acme".into()]));
        // Beyond what is remembered: read everything again.
        for i in 0..RECENT + 1 {
            s.recent
                .lock()
                .unwrap()
                .push_back((now + 1 + i as u64, "x".into()));
            if s.recent.lock().unwrap().len() > RECENT {
                s.recent.lock().unwrap().pop_front();
            }
        }
        s.changes.send_replace(now + 1 + RECENT as u64);
        assert_eq!(s.changed_since(now), None);
    }

    #[test]
    fn rekey_seals_again_under_the_current_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.add(new("acme", "tok-acme-123")).unwrap();
        drop(s);
        let newer = Keys::generate().unwrap();
        let keys = Arc::new(Keys::new(&newer, KEY).unwrap());
        let fields = Fields {
            required: vec!["token".into()],
            optional: vec![],
            params: vec![],
        };
        let s = Store::open(dir.path(), "crm", keys, fields.clone()).unwrap();
        assert_eq!(s.rekey().unwrap(), 1);
        assert_eq!(s.rekey().unwrap(), 0);
        drop(s);
        let only_new = Arc::new(Keys::new(&newer, "").unwrap());
        let s = Store::open(dir.path(), "crm", only_new, fields).unwrap();
        assert_eq!(s.credentials("acme").unwrap()["token"], "tok-acme-123");
    }
}
