//! Reloading a running server's configuration: on SIGHUP
//! (what `systemctl reload` sends) and, with `run --watch`, when a file of
//! the configuration changes. The files are read and checked whole first;
//! with any error the running configuration stays, and each error is logged
//! with its file, key and fix. Otherwise, pipeline by pipeline:
//!
//! * one whose file is gone stops: its webhook path answers 404 from then
//!   on, requests in flight are answered, its source stops, its sinks flush
//!   everything its log holds, and the log closes;
//! * one whose spec changed (any key, or its schema) stops the same way, its
//!   path answering 503 + `Retry-After` meanwhile, and starts again from the
//!   same log with the new spec: as across a restart, nothing acknowledged
//!   is lost or written twice;
//! * a new one starts;
//! * the others are not touched: their webhooks are served throughout.
//!
//! A change to `tributary.toml` itself (listen, TLS, admin, `data_dir`,
//! `lake`, `[log]`) needs a restart; such a reload is refused, saying so.
//!
//! On a JetStream log the same holds for this node: a stopped pipeline lets
//! go of the partitions and shards it held (flushed and committed first, as
//! when a node gives one up), and a removed one first waits until its sinks
//! wrote what its streams hold. Each node reloads its own files: reload
//! every node (as for a rolling restart); until then the others run what
//! they were started with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{offset_floor, spawn_runners, RunError};
use crate::config::{GlobalSpec, Paths, PipelineSpec, SourceSpec};
use crate::log::jetstream::Cluster;
use crate::server::admin::{Admin, PipelineView};
use crate::server::{Routes, Slot};
use crate::shutdown::{Shutdown, GRACE};
use crate::source::webhook::Route;

/// How often `--watch` looks at the files.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How long a restarting pipeline waits for its old log to be let go (an
/// admin request or a webhook in flight may still hold it).
const REOPEN_FOR: Duration = Duration::from_secs(10);

/// What a run reloads from.
pub struct Reload {
    /// The files, as `run` was given them.
    pub paths: Paths,
    /// With `run --watch`: the files as they were before the configuration
    /// was read, so a change made while the run starts is not missed.
    seen: Option<Vec<FileState>>,
}

impl Reload {
    /// Reloads from `paths`; with `watch`, also when a file changes. Call it
    /// before reading the configuration.
    pub fn new(paths: Paths, watch: bool) -> Self {
        let seen = watch.then(|| files(&paths));
        Self { paths, seen }
    }
}

/// A file of the configuration: its path, modification time and length.
type FileState = (PathBuf, Option<SystemTime>, u64);

/// One running pipeline: what stops it.
pub(super) struct Running {
    /// Its spec as text, to tell a changed one.
    fingerprint: String,
    /// Its sinks' names.
    sinks: Vec<String>,
    /// Its own stop and tasks (children of the run's).
    shutdown: Shutdown,
    /// Stops its source alone (a child of `shutdown.stop`; on the file log,
    /// that stop itself).
    sources: CancellationToken,
    /// Its webhook path, if it has one.
    path: Option<String>,
    /// What the admin API sees of it.
    pub(super) view: Arc<PipelineView>,
}

/// Starts `spec` with a stop and tasks of its own that the run's `root`
/// also waits for: on the file log its log, sinks and source; on a
/// JetStream log (`cluster`) its streams, the contention for its sinks'
/// partitions and its poller's lease (or its connections' shards), and its
/// webhook. Returns it and its webhook route, if any.
pub(super) async fn start_one(
    spec: &PipelineSpec,
    global: &GlobalSpec,
    root: &Shutdown,
    cluster: Option<&Arc<Cluster>>,
) -> Result<(Running, Option<(String, Arc<Route>)>), RunError> {
    let shutdown = root.child();
    let floor = match cluster {
        Some(_) => 0,
        None => offset_floor(spec, global).await?,
    };
    let built = super::build(spec, global, &shutdown, floor, cluster).await?;
    let connections = match (&built.view.connections, &spec.source, cluster) {
        (Some(store), SourceSpec::Poll(poll), None) => Some(crate::connections::polling::Runner {
            pipeline: spec.clone(),
            spec: (**poll).clone(),
            store: store.clone(),
            appender: built.view.appender.clone(),
            log: built.view.log.clone(),
            dir: global.data_dir.join(&spec.name),
            stop: shutdown.stop.clone(),
            shard: None,
        }),
        _ => None,
    };
    let mut sources = shutdown.stop.clone();
    if let Some(cluster) = cluster {
        crate::log::jetstream::leases::start(cluster.clone(), built.units, &shutdown);
        // The pollers (the poll leader, or each shard of the connections)
        // can stop before the sinks: a removed pipeline writes out what its
        // streams hold once nothing more comes.
        let polling = shutdown.child();
        if let Some(connections) = built.connections {
            crate::connections::cluster::start(cluster.clone(), connections, &polling);
        }
        if let Some(leader) = built.poll_leader {
            polling
                .tasks
                .spawn(crate::log::jetstream::poll_leader::lead(
                    cluster.clone(),
                    leader,
                    polling.clone(),
                ));
        }
        sources = polling.stop.clone();
        let tasks = polling.tasks.clone();
        shutdown.tasks.spawn(async move {
            tasks.close();
            tasks.wait().await;
        });
    }
    let view = Arc::new(built.view);
    let route = match built.source.source {
        crate::source::Source::Webhook { path, route } => Some((path, Arc::new(*route))),
        // On JetStream the poll leader (or each shard) runs its own poller.
        crate::source::Source::Poll(_) if cluster.is_some() => None,
        // One poller per connection instead of the pipeline's own.
        crate::source::Source::Poll(_) if connections.is_some() => {
            if let Some(runner) = connections {
                shutdown.tasks.spawn(runner.run());
            }
            None
        }
        // It ends on the stop, dropping its appender, which closes the log.
        crate::source::Source::Poll(poller) => {
            shutdown.tasks.spawn(poller.run_forever());
            None
        }
    };
    for task in built.source.tasks {
        shutdown.tasks.spawn(task);
    }
    spawn_runners(&spec.name, built.runners, &shutdown);
    // The run's drain waits for this pipeline's tasks too.
    let tasks = shutdown.tasks.clone();
    root.tasks.spawn(async move {
        tasks.close();
        tasks.wait().await;
    });
    let running = Running {
        fingerprint: fingerprint(spec),
        sinks: spec.sinks.iter().map(|s| s.name().to_string()).collect(),
        shutdown,
        sources,
        path: route.as_ref().map(|(path, _)| path.clone()),
        view,
    };
    Ok((running, route))
}

/// A pipeline's spec as text: every key (as `explain` prints it) and its
/// schema's column types.
fn fingerprint(spec: &PipelineSpec) -> String {
    format!(
        "{}\n{:?}",
        crate::config::explain::as_toml(spec),
        spec.schema
    )
}

/// The reloads of one run.
pub(super) struct Reloader {
    pub(super) reload: Reload,
    pub(super) global: GlobalSpec,
    /// On a JetStream log, its connection.
    pub(super) cluster: Option<Arc<Cluster>>,
    pub(super) root: Shutdown,
    pub(super) routes: Routes,
    pub(super) admin: Arc<Admin>,
    pub(super) running: BTreeMap<String, Running>,
}

impl Reloader {
    /// Reloads on each SIGHUP (and changed file, with `--watch`) until the
    /// run stops; then lets go of every pipeline it holds.
    pub(super) async fn run(mut self, mut hangups: Option<Signal>) {
        let mut seen = self.reload.seen.take();
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            tokio::select! {
                () = self.root.stop.cancelled() => return,
                Some(()) = hangup(&mut hangups) => {
                    info!("SIGHUP received: reloading the configuration.");
                    if !self.reload_or_stop().await {
                        return;
                    }
                }
                _ = tick.tick(), if seen.is_some() => {
                    let now = files(&self.reload.paths);
                    if seen.as_ref() != Some(&now) {
                        seen = Some(now);
                        info!("A configuration file changed: reloading.");
                        if !self.reload_or_stop().await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Reloads, unless the run stops meanwhile (its stop reaches every
    /// pipeline, the ones this reload was stopping or starting too): false
    /// then.
    async fn reload_or_stop(&mut self) -> bool {
        let stop = self.root.stop.clone();
        tokio::select! {
            () = self.reload() => true,
            () = stop.cancelled() => false,
        }
    }

    async fn reload(&mut self) {
        let paths = self.reload.paths.clone();
        let config = match tokio::task::spawn_blocking(move || crate::config::load(&paths)).await {
            Ok(Ok(config)) => config,
            Ok(Err(errors)) => {
                for e in &errors {
                    warn!(error = %e, "Configuration error.");
                }
                error!(
                    errors = errors.len(),
                    "The changed configuration has errors: the running one is kept."
                );
                return;
            }
            Err(_) => return,
        };
        let global = |g: &GlobalSpec| crate::config::explain::as_toml(g);
        if global(&config.global) != global(&self.global) {
            warn!("tributary.toml changed (listen, TLS, admin, data_dir, lake or [log]): restart tributary to apply it. Nothing was reloaded.");
            return;
        }
        let new: BTreeMap<&str, &PipelineSpec> = config
            .pipelines
            .iter()
            .map(|p| (p.name.as_str(), p))
            .collect();
        let removed: Vec<String> = self
            .running
            .keys()
            .filter(|name| !new.contains_key(name.as_str()))
            .cloned()
            .collect();
        let changed: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| {
                new.get(name.as_str())
                    .is_some_and(|spec| fingerprint(spec) != r.fingerprint)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let added: Vec<String> = new
            .keys()
            .filter(|name| !self.running.contains_key(**name))
            .map(|name| name.to_string())
            .collect();
        let going: Vec<&String> = removed.iter().chain(&changed).collect();

        // Their paths: 404 for a removed pipeline, 503 for a restarting one.
        let mut routes = (*self.routes.load()).clone();
        for name in &going {
            if let Some(path) = &self.running[*name].path {
                match changed.contains(name) {
                    true => routes.insert(path.clone(), Slot::Restarting((*name).clone())),
                    false => routes.remove(path),
                };
            }
        }
        self.routes.store(routes.clone());
        let mut views: Vec<Arc<PipelineView>> = self
            .admin
            .pipelines
            .load()
            .iter()
            .filter(|v| !going.contains(&&v.name))
            .cloned()
            .collect();
        self.admin.pipelines.store(views.clone());
        // Stop them, all at once: sources stop, requests in flight are
        // answered, the logs close, the sinks flush what the logs hold.
        let stopping: Vec<(String, Running)> = going
            .iter()
            .filter_map(|name| Some(((*name).clone(), self.running.remove(*name)?)))
            .collect();
        let cluster = self.cluster.is_some();
        futures::future::join_all(stopping.into_iter().map(|(name, one)| {
            let removed = removed.contains(&name);
            async move {
                // A JetStream log keeps what its streams hold across a stop,
                // for the pipeline's next start: a removed one stops its
                // source and writes out what its streams hold first.
                if cluster && removed {
                    one.sources.cancel();
                    written_out(&name, &one.view, &one.sinks).await;
                }
                one.shutdown.stop.cancel();
                drop(one.view);
                if !one.shutdown.drain(GRACE).await {
                    warn!(pipeline = %name, grace_secs = GRACE.as_secs(), "Its sinks did not finish flushing in time; what is left stays in its log.");
                }
            }
        }))
        .await;
        // Start the changed and the new ones.
        for name in changed.iter().chain(&added) {
            match self.start(new[name.as_str()]).await {
                Ok((one, route)) => {
                    if let Some((path, route)) = route {
                        routes.insert(path, Slot::Live(route));
                    }
                    views.push(one.view.clone());
                    self.running.insert(name.clone(), one);
                }
                Err(e) => {
                    error!(pipeline = %name, error = %crate::error::chain(&e), "The pipeline could not start; fix it and reload again.");
                }
            }
        }
        routes.retain(|_, slot| !matches!(slot, Slot::Restarting(_)));
        self.routes.store(routes);
        let order: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
        views.sort_by_key(|v| order.iter().position(|n| *n == v.name));
        self.admin.pipelines.store(views);
        self.admin.config.store(Some(Arc::new(config.clone())));
        info!(
            added = ?added,
            changed = ?changed,
            removed = ?removed,
            "Configuration reloaded."
        );
    }

    /// Starts `spec`; while its old log is still held (a request in flight
    /// answered after the stop), tries again for up to [`REOPEN_FOR`].
    async fn start(
        &self,
        spec: &PipelineSpec,
    ) -> Result<(Running, Option<(String, Arc<Route>)>), RunError> {
        let started = std::time::Instant::now();
        loop {
            match start_one(spec, &self.global, &self.root, self.cluster.as_ref()).await {
                Err(RunError::Buffer { .. }) if started.elapsed() < REOPEN_FOR => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }
}

/// Waits (one status refresh, then up to [`GRACE`]) until the sinks of
/// `view`, a removed pipeline on a JetStream log whose webhook answers 404
/// and whose pollers stopped already, wrote what its streams hold. The partitions other nodes hold are written by them; those
/// no node holds (nodes that removed it before let them go) are taken here.
async fn written_out(name: &str, view: &PipelineView, sinks: &[String]) {
    if let Some(status) = &view.log_status {
        status.write_out();
        // The end and progress are read periodically: one read after the
        // last request was answered.
        tokio::time::sleep(status.refresh()).await;
    }
    let sinks: Vec<&str> = sinks.iter().map(String::as_str).collect();
    if let Err(behind) = view.log.written(&sinks, GRACE).await {
        warn!(pipeline = %name, sink = %behind.sink, committed = behind.committed, end = behind.end, "A removed pipeline's sink did not write what its streams hold in time: the rest stays in them, written when a node runs the pipeline again.");
    }
}

/// SIGHUP, caught before anything starts (its default action ends the
/// process).
pub(super) fn hangups() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(signals) => Some(signals),
        Err(e) => {
            warn!(error = %e, "Cannot catch SIGHUP; one would end the process.");
            None
        }
    }
}

/// Logs each SIGHUP of a run that does not reload.
pub(super) async fn ignore_hangups(hangups: Option<Signal>, why: &'static str) {
    let Some(mut hangups) = hangups else {
        return;
    };
    while hangups.recv().await.is_some() {
        warn!("SIGHUP received, but {why}: tributary goes on with the configuration it has. Restart it to apply changes.");
    }
}

async fn hangup(hangups: &mut Option<Signal>) -> Option<()> {
    match hangups {
        Some(signals) => signals.recv().await,
        None => std::future::pending().await,
    }
}

/// Each file of the configuration with its modification time and length:
/// `tributary.toml`, the pipeline files and the schemas beside them.
fn files(paths: &Paths) -> Vec<FileState> {
    let config = paths
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::config::GLOBAL_FILE));
    let root = config.parent().map(Path::to_path_buf).unwrap_or_default();
    let pipelines = paths
        .pipelines
        .clone()
        .unwrap_or_else(|| root.join("pipelines"));
    let mut files = vec![config];
    for dir in [pipelines, root.join("schemas")] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            files.extend(entries.flatten().map(|e| e.path()));
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (path, modified, len)
        })
        .collect()
}
