//! A pipeline's connections on disk, in `<data_dir>/<pipeline>/`:
//! `connections.json`, a snapshot, and `connections.journal`, one JSON line
//! per change since (the changed connection whole). A change is appended to
//! the journal and fsynced before it is answered: one small write, however
//! many connections there are. On open the journal is replayed over the
//! snapshot (a torn last line, never acknowledged, is dropped) and both are
//! folded into a new snapshot; the same happens when the journal outgrows
//! the snapshot. A snapshot is replaced whole (temporary file, fsync,
//! rename, directory fsync), so a crash leaves the old one or the new one;
//! replaying a journal over a snapshot that already holds it changes
//! nothing.
//!
//! Credentials are stored sealed ([`super::seal`]), bound to
//! `<pipeline>/<id>`; nothing else in the file is secret. A removed
//! connection stays as a tombstone without credentials, so its webhook URL
//! can answer 410 Gone and its id is not taken again by mistake.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::seal::{Keys, SealError};
use super::{Credentials, Fields, State};
use crate::source::poll::health::PollHealth;

/// The store's snapshot, under the pipeline's data directory.
pub const FILE: &str = "connections.json";
/// Its journal of changes since the snapshot.
pub const JOURNAL: &str = "connections.journal";
/// The journal is folded into the snapshot beyond this many lines (or as
/// many as there are connections, if more).
const JOURNAL_LINES: usize = 1024;

/// Why a connection could not be stored or found.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection has the id.
    #[error("pipeline {pipeline} has no connection {id}")]
    NotFound {
        /// The pipeline.
        pipeline: String,
        /// The id.
        id: String,
    },
    /// The connection was removed.
    #[error("connection {id} of pipeline {pipeline} was removed")]
    Removed {
        /// The pipeline.
        pipeline: String,
        /// The id.
        id: String,
    },
    /// The id is taken.
    #[error("pipeline {pipeline} already has a connection {id}; change it with PATCH, or remove it first")]
    Exists {
        /// The pipeline.
        pipeline: String,
        /// The id.
        id: String,
    },
    /// The request is not a valid connection; what is wrong and the fix.
    #[error("{0}")]
    Invalid(String),
    /// Sealing or opening credentials failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The file could not be read or written.
    #[error("connections file {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not one tributary wrote.
    #[error(
        "connections file {path} is not one tributary wrote ({message}); restore it from a backup"
    )]
    Corrupt {
        /// The file.
        path: String,
        /// What serde said.
        message: String,
    },
}

/// One connection as the file holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    id: String,
    state: State,
    #[serde(default)]
    params: BTreeMap<String, String>,
    /// The names of its credential fields (never their values).
    #[serde(default)]
    credential_fields: Vec<String>,
    /// The credentials, sealed; none once removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credentials: Option<String>,
    created_at: String,
    updated_at: String,
    /// Why it needs new credentials (kept across restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The values that attribute a webhook to it (`[connections] attribute`).
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    matches: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    connections: Vec<Stored>,
}

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
    path: PathBuf,
    keys: Arc<Keys>,
    fields: Fields,
    connections: Mutex<Inner>,
    /// Bumped after every change is durable, for the connections' runner.
    changes: tokio::sync::watch::Sender<u64>,
    /// How each connection's poll runs go (shared with its poller).
    health: Mutex<BTreeMap<String, Arc<PollHealth>>>,
    /// Tells the app about its connections, if `[connections] notify` is set.
    notifier: Option<Arc<super::notify::Notifier>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pipeline", &self.pipeline)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The connections and the journal they are appended to.
struct Inner {
    map: BTreeMap<String, Stored>,
    /// Attribution value → connection id.
    by_match: std::collections::HashMap<String, String>,
    journal: fs::File,
    lines: usize,
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
        let path = dir.join(FILE);
        let io_error = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_error)?;
        let file: File = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(io_error(e)),
        };
        let mut map: BTreeMap<String, Stored> = file
            .connections
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        let journal_path = dir.join(JOURNAL);
        let journal = match fs::read(&journal_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error(e)),
        };
        let mut lines = journal.split(|b| *b == b'\n').peekable();
        while let Some(line) = lines.next() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Stored>(line) {
                Ok(stored) => {
                    map.insert(stored.id.clone(), stored);
                }
                // The last line, cut by a crash before its fsync: never acknowledged.
                Err(_) if lines.peek().is_none() => {}
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        path: journal_path.display().to_string(),
                        message: e.to_string(),
                    })
                }
            }
        }
        let store = Store {
            pipeline: pipeline.to_string(),
            keys,
            fields,
            connections: Mutex::new(Inner {
                by_match: map
                    .values()
                    .flat_map(|c| c.matches.iter().map(|m| (m.clone(), c.id.clone())))
                    .collect(),
                map,
                journal: open_journal(&journal_path).map_err(io_error)?,
                lines: 0,
            }),
            path,
            changes: tokio::sync::watch::Sender::new(0),
            health: Mutex::default(),
            notifier: None,
        };
        if !journal.is_empty() {
            let mut inner = store.lock();
            store.compact(&mut inner)?;
        }
        Ok(store)
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
        view.last_run = health
            .get(&view.id)
            .map(|h| h.snapshot())
            .filter(|s| s.state != crate::source::poll::health::PollRuns::Waiting);
        view
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
        let mut credentials = self.credentials(id)?;
        credentials.insert("refresh_token".into(), token.to_string());
        let sealed = self.seal(id, &credentials)?;
        self.change(id, |stored| {
            stored.credentials = Some(sealed);
            Ok(())
        })
        .map(|_| ())
    }

    /// Applies `edit` to the live connection `id`, durably.
    fn change(
        &self,
        id: &str,
        edit: impl FnOnce(&mut Stored) -> Result<(), StoreError>,
    ) -> Result<View, StoreError> {
        let mut connections = self.lock();
        let mut stored = self.live(&mut connections.map, id)?.clone();
        edit(&mut stored)?;
        let view = View::from(&stored);
        self.commit(&mut connections, stored)?;
        drop(connections);
        self.changes.send_modify(|n| *n += 1);
        Ok(view)
    }

    /// Makes `stored` durable (a journal line, fsynced), then current.
    fn commit(&self, inner: &mut Inner, stored: Stored) -> Result<(), StoreError> {
        let io_error = |source| StoreError::Io {
            path: self.journal_path().display().to_string(),
            source,
        };
        let mut line = serde_json::to_vec(&stored).expect("a connection serialises");
        line.push(b'\n');
        inner.journal.write_all(&line).map_err(io_error)?;
        inner.journal.sync_data().map_err(io_error)?;
        if let Some(old) = inner.map.get(&stored.id) {
            for m in old.matches.clone() {
                inner.by_match.remove(&m);
            }
        }
        for m in &stored.matches {
            inner.by_match.insert(m.clone(), stored.id.clone());
        }
        inner.map.insert(stored.id.clone(), stored);
        inner.lines += 1;
        if inner.lines > JOURNAL_LINES.max(inner.map.len()) {
            // The change is durable already: a failed fold is retried later.
            if let Err(e) = self.compact(inner) {
                tracing::warn!(pipeline = %self.pipeline, error = %crate::error::chain(&e), "Cannot fold the connections' journal into a snapshot; it keeps growing until this works.");
            }
        }
        Ok(())
    }

    fn journal_path(&self) -> PathBuf {
        self.path.with_file_name(JOURNAL)
    }

    /// Folds the journal into a new snapshot, then empties it.
    fn compact(&self, inner: &mut Inner) -> Result<(), StoreError> {
        self.write(&inner.map)?;
        let io_error = |source| StoreError::Io {
            path: self.journal_path().display().to_string(),
            source,
        };
        let journal = self.journal_path();
        let tmp = journal.with_extension("journal.tmp");
        fs::File::create(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_error)?;
        fs::rename(&tmp, &journal).map_err(io_error)?;
        sync_dir(&journal).map_err(io_error)?;
        inner.journal = open_journal(&journal).map_err(io_error)?;
        inner.lines = 0;
        Ok(())
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
        let mut connections = self.lock();
        if connections.contains_key(&new.id) {
            return Err(StoreError::Exists {
                pipeline: self.pipeline.clone(),
                id: new.id,
            });
        }
        self.check_matches(&connections, &new.id, &new.matches)?;
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
        self.commit(&mut connections, stored)?;
        drop(connections);
        self.changes.send_modify(|n| *n += 1);
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
            if let (Some(credentials), Some(sealed)) = (&patch.credentials, sealed) {
                stored.credentials = Some(sealed);
                stored.credential_fields = credentials.keys().cloned().collect();
                if stored.state == State::NeedsReauth {
                    stored.state = State::Active;
                }
                stored.error = None;
            }
            if let Some(params) = patch.params {
                stored.params = params;
            }
            if let Some(matches) = patch.matches {
                stored.matches = matches;
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
        // Its sealed credentials must not linger in the journal's older lines.
        let mut inner = self.lock();
        if let Err(e) = self.compact(&mut inner) {
            tracing::warn!(pipeline = %self.pipeline, error = %crate::error::chain(&e), "Cannot fold the connections' journal; a removed connection's sealed credentials stay in it until this works.");
        }
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
            path: self.path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Seals every connection's credentials again under the current key;
    /// returns how many were sealed under another one.
    pub fn rekey(&self) -> Result<usize, StoreError> {
        let mut connections = self.lock();
        let mut resealed = Vec::new();
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
            resealed.push(stored);
        }
        let changed = resealed.len();
        for stored in resealed {
            self.commit(&mut connections, stored)?;
        }
        Ok(changed)
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

    /// Replaces the file with `connections`: temporary file, fsync, rename, directory fsync.
    fn write(&self, connections: &BTreeMap<String, Stored>) -> Result<(), StoreError> {
        let io_error = |source| StoreError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let file = File {
            version: 1,
            connections: connections.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("the file serialises");
        let tmp = self.path.with_extension("json.tmp");
        let mut out = fs::File::create(&tmp).map_err(io_error)?;
        out.write_all(&bytes).map_err(io_error)?;
        out.sync_all().map_err(io_error)?;
        drop(out);
        fs::rename(&tmp, &self.path).map_err(io_error)?;
        sync_dir(&self.path).map_err(io_error)?;
        Ok(())
    }
}

/// The journal at `path`, opened to append (created if missing).
fn open_journal(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new().create(true).append(true).open(path)
}

/// Fsyncs the directory holding `path` (a rename in it is then durable).
fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
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

    fn store(dir: &Path) -> Store {
        let keys = Keys::new(&KEY, "").unwrap();
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
        for i in 0..=JOURNAL_LINES {
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
