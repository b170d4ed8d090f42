//! A pipeline's connections on disk: `<data_dir>/<pipeline>/connections.json`,
//! replaced whole on every change (written to a temporary file, fsynced,
//! renamed over the old one, the directory fsynced), so a crash leaves the
//! old file or the new one, never a mix. An answer to a change is given only
//! after that.
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

/// The store's file, under the pipeline's data directory.
pub const FILE: &str = "connections.json";

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
    connections: Mutex<BTreeMap<String, Stored>>,
    /// Bumped after every change is durable, for the connections' runner.
    changes: tokio::sync::watch::Sender<u64>,
    /// How each connection's poll runs go (shared with its poller).
    health: Mutex<BTreeMap<String, Arc<PollHealth>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pipeline", &self.pipeline)
            .field("path", &self.path)
            .finish_non_exhaustive()
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
        Ok(Store {
            pipeline: pipeline.to_string(),
            keys,
            fields,
            connections: Mutex::new(
                file.connections
                    .into_iter()
                    .map(|c| (c.id.clone(), c))
                    .collect(),
            ),
            path,
            changes: tokio::sync::watch::Sender::new(0),
            health: Mutex::default(),
        })
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
        self.change(id, |stored| {
            if stored.state == State::Active {
                stored.state = State::NeedsReauth;
                stored.error = Some(why.to_string());
                stored.updated_at = now();
            }
            Ok(())
        })
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
        let mut next = connections.clone();
        let stored = self.live(&mut next, id)?;
        edit(stored)?;
        let view = View::from(&*stored);
        self.write(&next)?;
        *connections = next;
        drop(connections);
        self.changes.send_modify(|n| *n += 1);
        Ok(view)
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
        };
        let view = View::from(&stored);
        let mut next = connections.clone();
        next.insert(new.id, stored);
        self.write(&next)?;
        *connections = next;
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
        self.change(id, |stored| {
            stored.state = State::Removed;
            stored.credentials = None;
            stored.credential_fields.clear();
            stored.updated_at = now();
            Ok(())
        })
    }

    /// The credentials of connection `id`, opened.
    pub fn credentials(&self, id: &str) -> Result<Credentials, StoreError> {
        let sealed = {
            let mut connections = self.lock();
            let stored = self.live(&mut connections, id)?;
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
        let mut next = connections.clone();
        let mut changed = 0;
        for stored in next.values_mut() {
            let Some(sealed) = &stored.credentials else {
                continue;
            };
            if Keys::key_of(sealed) == Some(self.keys.current_id()) {
                continue;
            }
            let context = context(&self.pipeline, &stored.id);
            let plain = self.keys.open(sealed, &context)?;
            stored.credentials = Some(self.keys.seal(&plain, &context)?);
            changed += 1;
        }
        if changed > 0 {
            self.write(&next)?;
            *connections = next;
        }
        Ok(changed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stored>> {
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
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error)?;
        }
        Ok(())
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
        let bytes = fs::read(dir.path().join(FILE)).unwrap();
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
