//! Wires pipelines: one durable log each, fed by its source, read by one runner
//! per sink; and `run`, which starts them all with the HTTP server and stops
//! them in order on a signal.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::config::{Config, GlobalSpec, PipelineSpec, SourceSpec};
use crate::encode::Encoder;
use crate::log;
use crate::log::jetstream::Cluster;
use crate::server::{
    self,
    admin::{Admin, PipelineView},
    Slot,
};
use crate::shutdown::{Shutdown, GRACE};
use crate::sink::health::SinkHealth;
use crate::sink::table::TableSink;
use crate::sink::{parquet, MakeTask, Placement, SinkContext, SinkError, Storage, StorageError};
use crate::source::poll::state::RunState;
use crate::source::poll::PollError;
pub use reload::Reload;
use reload::{hangups, ignore_hangups, start_one, Reloader};

mod clustered;
pub mod reload;

/// Segment size bounds: small enough that a small `buffer.max_bytes` still
/// spans several segments (so consumed ones can be freed), large enough that
/// rolling is rare.
const MIN_SEGMENT: u64 = 64 << 10;
const MAX_SEGMENT: u64 = 64 << 20;

/// Why `run` could not start or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The pipeline's log could not be opened.
    #[error("failed to open the buffer of pipeline {pipeline} in {dir}")]
    Buffer {
        /// Pipeline name.
        pipeline: String,
        /// Its data directory.
        dir: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A sink's storage could not be set up.
    #[error("failed to set up sink {sink} of pipeline {pipeline}")]
    Storage {
        /// Pipeline name.
        pipeline: String,
        /// Sink name.
        sink: String,
        /// What went wrong.
        #[source]
        source: Box<StorageError>,
    },
    /// The poll source could not start (its state could not be kept).
    #[error("failed to start the poll source of pipeline {pipeline}")]
    Poll {
        /// Pipeline name.
        pipeline: String,
        /// What went wrong.
        #[source]
        source: PollError,
    },
    /// A source cannot start (its verification secret is not set, its
    /// state or remembered ids cannot be read).
    #[error("source of pipeline {pipeline}")]
    Source {
        /// Pipeline name.
        pipeline: String,
        /// What went wrong.
        #[source]
        source: crate::source::SourceError,
    },
    /// A sink cannot be built as configured (its storage cannot be set up,
    /// an HTTPS sink's secret is not set).
    #[error("sink {sink} of pipeline {pipeline}")]
    Sink {
        /// Pipeline name.
        pipeline: String,
        /// Sink name.
        sink: String,
        /// What is wrong and the fix.
        #[source]
        source: SinkError,
    },
    /// `tributary poll` named no pipeline there is.
    #[error("no pipeline is named {name}; the pipelines are: {}", names.join(", "))]
    NoPipeline {
        /// The name given.
        name: String,
        /// The names there are.
        names: Vec<String>,
    },
    /// `tributary poll` named a pipeline that does not poll.
    #[error(
        "pipeline {0} is fed by a webhook, not polled; `tributary poll` runs poll sources only"
    )]
    NotPolled(String),
    /// `tributary poll` of a connections pipeline.
    #[error("pipeline {0} takes no connections (it has no [connections] table): run `tributary poll {0}` without --connection")]
    PollConnections(String),
    /// `tributary poll` with the log on JetStream.
    #[error(
        "the log is on JetStream (log.type = \"jetstream\"): pipeline {0} is polled by the node that holds its poll lease, on schedule; `tributary poll` runs a poll on the file log only"
    )]
    PollOnCluster(String),
    /// A pipeline's connections cannot be opened.
    #[error("the connections of pipeline {pipeline}")]
    Connections {
        /// Pipeline name.
        pipeline: String,
        /// What went wrong.
        #[source]
        source: crate::connections::store::StoreError,
    },
    /// The TLS files cannot serve.
    #[error("the HTTP server cannot start: {0}")]
    Tls(#[source] crate::server::TlsError),
    /// `admin.token_env` names an unset variable.
    #[error("the HTTP server cannot start: admin.token_env names the env var {0}, which is not set; set it to the admin API's bearer token")]
    AdminToken(String),
    /// The JetStream cluster could not be used.
    #[error("the JetStream log{}", of_pipeline(.pipeline))]
    Cluster {
        /// Pipeline name (empty for the connection).
        pipeline: String,
        /// What went wrong.
        #[source]
        source: crate::log::jetstream::ClusterError,
    },
    /// The HTTP server could not bind or failed.
    #[error("HTTP server on {listen} failed")]
    Server {
        /// The address.
        listen: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A pipeline ready to start.
pub struct Built {
    /// Its source, and the tasks that run beside it.
    pub source: crate::source::Built,
    /// One runner per sink (file log).
    pub runners: Vec<SinkTask>,
    /// On a JetStream log: each sink's partitions, run where their lease is held.
    pub units: Vec<crate::log::jetstream::leases::SinkUnits>,
    /// On a JetStream log: the poll source, run where its lease is held.
    pub poll_leader: Option<crate::log::jetstream::poll_leader::PollLeader>,
    /// On a JetStream log: a connections pipeline's pollers, each shard of
    /// them run where its lease is held.
    pub connections: Option<crate::connections::cluster::Connections>,
    /// What the admin API sees of it.
    pub view: PipelineView,
}

pub use crate::sink::task::SinkTask;

/// Opens the pipeline's log and builds its sinks; starts nothing. The log
/// assigns no offset below `floor` (see [`offset_floor`]). A webhook's
/// remembered delivery ids are loaded here, before any request is served.
pub async fn build(
    spec: &PipelineSpec,
    global: &GlobalSpec,
    shutdown: &Shutdown,
    floor: u64,
    cluster: Option<&Arc<Cluster>>,
) -> Result<Built, RunError> {
    let dir = global.data_dir.join(&spec.name);
    if let Some(cluster) = cluster {
        return clustered::build(spec, global, shutdown, cluster).await;
    }
    let options = log::Options {
        dir: dir.clone(),
        segment_bytes: (spec.buffer_max_bytes / 8).clamp(MIN_SEGMENT, MAX_SEGMENT),
        sinks: spec
            .sinks
            .iter()
            .map(|s| s.name().to_string())
            .chain(crate::source::consumers(&spec.source))
            .collect(),
        floor,
    };
    let (appender, log) = log::open(options).map_err(|source| RunError::Buffer {
        pipeline: spec.name.clone(),
        dir: dir.display().to_string(),
        source,
    })?;
    let (encoder, dead_letters) = encoder_and_dead_letters(spec, global)?;
    let sinks = build_sinks(
        spec,
        (&log, &encoder, &dead_letters, shutdown),
        Placement::Local,
    )?;
    let runners = sinks
        .made
        .iter()
        .map(|made| (made.make)(log.clone(), None))
        .collect();
    let source = crate::source::build(
        spec,
        global,
        &dir,
        appender.clone(),
        &log,
        shutdown.stop.clone(),
    )
    .await
    .map_err(|source| RunError::Source {
        pipeline: spec.name.clone(),
        source,
    })?;
    let store = connections(spec, &dir)?;
    let mut source = source;
    if let crate::source::Source::Webhook { route, .. } = &mut source.source {
        route.connections = store.clone();
    }
    let view = PipelineView {
        name: spec.name.clone(),
        source: spec.source.kind().type_tag(),
        sinks: sinks.health(),
        probes: sinks.probes,
        log: log.clone(),
        appender,
        dead_letters,
        max_buffer: spec.buffer_max_bytes,
        replaying: Default::default(),
        dedupe: source.dedupe.clone(),
        log_status: None,
        poll: match &source.source {
            // A connections pipeline's runs are each connection's (its API entry).
            crate::source::Source::Poll(_) if spec.connections.is_some() => None,
            crate::source::Source::Poll(poller) => Some(poller.health()),
            crate::source::Source::Webhook { .. } => None,
        },
        connections: store,
        stop: shutdown.stop.clone(),
    };
    Ok(Built {
        source,
        runners,
        units: Vec::new(),
        poll_leader: None,
        connections: None,
        view,
    })
}

/// The connections of `spec`, if it takes them: opened from its data
/// directory, sealed with `TRIBUTARY_SECRET_KEY`.
fn connections(
    spec: &PipelineSpec,
    dir: &std::path::Path,
) -> Result<Option<Arc<crate::connections::store::Store>>, RunError> {
    let Some((keys, notifier)) = sealing(spec)? else {
        return Ok(None);
    };
    let store = crate::connections::store::Store::open(
        dir,
        &spec.name,
        keys,
        crate::connections::Fields::of(spec),
    )
    .map_err(|source| RunError::Connections {
        pipeline: spec.name.clone(),
        source,
    })?
    .notifying(notifier);
    Ok(Some(Arc::new(store)))
}

/// What a connections pipeline's store needs besides its backend: the
/// keys from `TRIBUTARY_SECRET_KEY` and the app's notifier, if any; `None`
/// for a pipeline without `[connections]`.
#[allow(clippy::type_complexity)]
fn sealing(
    spec: &PipelineSpec,
) -> Result<
    Option<(
        Arc<crate::connections::seal::Keys>,
        Option<Arc<crate::connections::notify::Notifier>>,
    )>,
    RunError,
> {
    if spec.connections.is_none() {
        return Ok(None);
    }
    let error = |source| RunError::Connections {
        pipeline: spec.name.clone(),
        source,
    };
    let keys = crate::connections::seal::Keys::from_env()
        .map_err(|e| error(crate::connections::store::StoreError::Seal(e)))?;
    let notifier = match spec.connections.as_ref().and_then(|c| c.notify.as_ref()) {
        None => None,
        Some(n) => Some(Arc::new(
            crate::connections::notify::Notifier::new(&spec.name, &n.url, &n.secret_env)
                .map_err(|e| error(crate::connections::store::StoreError::Invalid(e)))?,
        )),
    };
    Ok(Some((Arc::new(keys), notifier)))
}

/// A pipeline's sinks, built.
struct Sinks {
    /// Each sink's name, maker of its runner(s), and health.
    made: Vec<Made>,
    /// The storage of each sink that writes to storage, for the admin API.
    probes: Vec<(String, Storage)>,
}

struct Made {
    sink: String,
    make: MakeTask,
    health: Arc<SinkHealth>,
}

impl Sinks {
    fn health(&self) -> Vec<(String, Arc<SinkHealth>)> {
        self.made
            .iter()
            .map(|m| (m.sink.clone(), m.health.clone()))
            .collect()
    }
}

/// Builds every sink of `spec` for `placement`, on the pipeline's log,
/// encoder and dead letters; starts nothing.
fn build_sinks(
    spec: &PipelineSpec,
    (log, encoder, dead_letters, shutdown): (&log::Log, &Arc<Encoder>, &Storage, &Shutdown),
    placement: Placement,
) -> Result<Sinks, RunError> {
    let mut sinks = Sinks {
        made: Vec::new(),
        probes: Vec::new(),
    };
    for sink in &spec.sinks {
        let health = Arc::new(SinkHealth::default());
        let context = SinkContext {
            pipeline: spec,
            log,
            encoder,
            dead_letters,
            abandon: &shutdown.abandon,
            health: health.clone(),
            placement: placement.clone(),
        };
        let built = crate::sink::build(sink, &context).map_err(|source| RunError::Sink {
            pipeline: spec.name.clone(),
            sink: sink.name().to_string(),
            source,
        })?;
        if let Some(probe) = built.probe {
            sinks.probes.push((sink.name().to_string(), probe));
        }
        sinks.made.push(Made {
            sink: sink.name().to_string(),
            make: built.make,
            health,
        });
    }
    Ok(sinks)
}

/// " of pipeline NAME", or nothing for the connection every pipeline shares.
fn of_pipeline(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!(" of pipeline {name}")
    }
}

/// The pipeline's encoder, and the one store of its dead letters (every
/// sink and the replay share it).
fn encoder_and_dead_letters(
    spec: &PipelineSpec,
    global: &GlobalSpec,
) -> Result<(Arc<Encoder>, Storage), RunError> {
    let encoder = Arc::new(
        Encoder::new(spec.schema.clone(), &spec.record_path, &spec.source.label())
            .inferring(spec.infer_schema)
            .with_connections(spec.connections.is_some()),
    );
    let dead_letters_at = global.lake.join("_dead_letters").join(&spec.name);
    let dead_letters = Storage::new(&dead_letters_at, &Default::default()).map_err(|source| {
        RunError::Storage {
            pipeline: spec.name.clone(),
            sink: "dead letters".into(),
            source: Box::new(source),
        }
    })?;
    Ok((encoder, dead_letters))
}

/// The first offset a new log may assign: after the highest one the
/// pipeline's outputs already hold. Needed only when the pipeline's log is
/// new or was lost: offsets live in the data directory, and reusing one would
/// make a Delta sink's txn check skip new events and a Parquet sink (or the
/// dead letters) overwrite files named by the same offsets. With an intact
/// log it reads nothing.
///
/// An output whose storage cannot be set up (a credential's variable not
/// set) is an error: the pipeline cannot start, and no log is made for it,
/// so a later start with the setting fixed still reads the outputs first.
/// A bucket that does not exist holds nothing: it counts as empty.
///
/// The outputs are read at once, each for at most [`FLOOR_WAIT`], so an
/// unreachable store never holds webhooks back. An output that exists but
/// cannot be read in time makes the clock the floor: the log starts at the
/// current Unix time in microseconds, which no earlier log of this pipeline
/// can have reached (it would have needed more than one offset per
/// microsecond since its own start), so its offsets, and the object names
/// made from them, are new.
pub async fn offset_floor(spec: &PipelineSpec, global: &GlobalSpec) -> Result<u64, RunError> {
    let log_dir = global.data_dir.join(&spec.name).join("log");
    let intact = std::fs::read_dir(&log_dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".log"))
    });
    if intact {
        return Ok(0);
    }
    let storage_error = |sink: &str, source: StorageError| RunError::Storage {
        pipeline: spec.name.clone(),
        sink: sink.to_string(),
        source: Box::new(source),
    };
    for sink in &spec.sinks {
        if let Some(location) = sink.location() {
            Storage::new(location, sink.storage_options())
                .map_err(|e| storage_error(sink.name(), e))?;
        }
    }
    let dead_letters = global.lake.join("_dead_letters").join(&spec.name);
    type Output<'a> = (&'a str, Box<dyn TableSink>);
    let mut outputs: Vec<Output> = Vec::new();
    // Dead-letter files are named by offsets like a Parquet sink's.
    let dead = crate::config::spec::ParquetSinkSpec {
        name: "_dead_letters".into(),
        location: dead_letters,
        partition_by: Vec::new(),
        storage: Default::default(),
    };
    let dead =
        parquet::ParquetSink::new(&dead, false).map_err(|e| storage_error("dead letters", e))?;
    outputs.push(("_dead_letters", Box::new(dead) as Box<dyn TableSink>));
    for sink in &spec.sinks {
        // Deliveries carry event ids, not offsets: nothing to read.
        if let Some(tables) = crate::sink::table_sink(sink, spec) {
            outputs.push((
                sink.name(),
                tables.map_err(|e| storage_error(sink.name(), e))?,
            ));
        }
    }
    let reads = outputs.iter().map(|(name, tables)| async move {
        let read = tokio::time::timeout(FLOOR_WAIT, tables.end_offset())
            .await
            .unwrap_or(Err(SinkError::NoAnswer(FLOOR_WAIT)))
            .map_err(|e| crate::error::chain(&e));
        (*name, read)
    });
    let mut floor = 0;
    for (name, read) in futures::future::join_all(reads).await {
        match read {
            Ok(end) => floor = floor.max(end),
            Err(e) if crate::sink::storage::no_such_bucket(&e) => {
                let e = crate::sink::storage::one_line(&e);
                info!(pipeline = %spec.name, sink = %name, error = %e, "The log is new and the sink's bucket does not exist: it holds no earlier offsets.");
            }
            Err(e) => {
                let e = crate::sink::storage::one_line(&e);
                let clock = crate::event::now_us().max(0) as u64;
                warn!(pipeline = %spec.name, sink = %name, error = %e, floor = clock, "The log is new and what this sink already wrote cannot be read; its offsets start at the clock (µs since the epoch), so they cannot repeat an earlier log's.");
                floor = floor.max(clock);
            }
        }
    }
    if floor > 0 {
        info!(pipeline = %spec.name, floor, "The log is new; offsets continue after those the outputs already hold.");
    }
    Ok(floor)
}

/// How long start-up reads an output's highest offset when the log is new.
const FLOOR_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn spawn_runners(pipeline: &str, runners: Vec<SinkTask>, shutdown: &Shutdown) {
    for runner in runners {
        let (pipeline, sink) = (pipeline.to_string(), runner.sink().to_string());
        let health = match &runner {
            SinkTask::Columnar(r) => r.health.clone(),
            SinkTask::Https(r) => r.health.clone(),
        };
        shutdown.tasks.spawn(async move {
            if let Err(e) = runner.run().await {
                let message = crate::error::chain(&e);
                health.stopped(&message);
                error!(pipeline = %pipeline, sink = %sink, error = %message, "Sink stopped; its events stay in the log until the next start.");
            }
        });
    }
}

/// `tributary poll PIPELINE`: one run of the pipeline's poll source now, in
/// the foreground, then its sinks flush what it fetched. `progress` sees the
/// run after each durable page. No HTTP server starts; the pipeline's data
/// directory is locked, so `tributary run` must not be running it.
/// In a pipeline with `[connections]`, each active connection (or the one
/// named) runs once, one after another; the result adds their pages and
/// records, and the first failure is returned after the others ran.
pub async fn poll_once(
    config: Config,
    (pipeline, connection): (&str, Option<&str>),
    shutdown: Shutdown,
    progress: &mut (dyn FnMut(&RunState) + Send),
) -> Result<RunState, RunError> {
    let Some(spec) = config.pipelines.iter().find(|p| p.name == pipeline) else {
        return Err(RunError::NoPipeline {
            name: pipeline.to_string(),
            names: config.pipelines.iter().map(|p| p.name.clone()).collect(),
        });
    };
    if !matches!(spec.source, SourceSpec::Poll(_)) {
        return Err(RunError::NotPolled(pipeline.to_string()));
    }
    if connection.is_some() && spec.connections.is_none() {
        return Err(RunError::PollConnections(pipeline.to_string()));
    }
    if matches!(config.global.log, crate::config::log::LogSpec::JetStream(_)) {
        return Err(RunError::PollOnCluster(pipeline.to_string()));
    }
    let floor = offset_floor(spec, &config.global).await?;
    let built = build(spec, &config.global, &shutdown, floor, None).await?;
    if let Some(store) = built.view.connections.clone() {
        let SourceSpec::Poll(poll) = &spec.source else {
            return Err(RunError::NotPolled(pipeline.to_string()));
        };
        let parts = (built.view.appender.clone(), built.view.log.clone());
        // Every appender must go for the log to close and the sinks to end:
        // the view's, and the pipeline's own poller's (connections poll instead).
        drop(built.view);
        drop(built.source);
        spawn_runners(&spec.name, built.runners, &shutdown);
        let (stop, signal) = (shutdown.stop.clone(), Shutdown::signal());
        tokio::spawn(async move {
            signal.await;
            stop.cancel();
        });
        let dir = config.global.data_dir.join(&spec.name);
        let result = crate::connections::polling::once(
            spec,
            poll,
            (&store, parts, &dir),
            connection,
            shutdown.stop.clone(),
            progress,
        )
        .await;
        if !shutdown.drain(GRACE).await {
            warn!(grace_secs = GRACE.as_secs(), "Some sinks did not finish flushing in time; their events stay in the log for the next start.");
        }
        return result.map_err(|source| RunError::Poll {
            pipeline: pipeline.to_string(),
            source,
        });
    }
    // The view holds an appender; the log must close once the poller is done.
    drop(built.view);
    spawn_runners(&spec.name, built.runners, &shutdown);
    let crate::source::Source::Poll(mut poller) = built.source.source else {
        return Err(RunError::NotPolled(pipeline.to_string()));
    };
    let (stop, signal) = (shutdown.stop.clone(), Shutdown::signal());
    tokio::spawn(async move {
        signal.await;
        stop.cancel();
    });
    let result = poller.poll(progress).await;
    if result.is_ok() && poller.state().run.is_some() {
        warn!(pipeline = %pipeline, "The run stopped at source.max_pages; run `tributary poll` again to go on from the next page.");
    }
    drop(poller);
    if !shutdown.drain(GRACE).await {
        warn!(grace_secs = GRACE.as_secs(), "Some sinks did not finish flushing in time; their events stay in the log for the next start.");
    }
    result.map_err(|source| RunError::Poll {
        pipeline: pipeline.to_string(),
        source,
    })
}

/// Runs every pipeline until SIGTERM/SIGINT (or `shutdown.stop`), then stops
/// accepting, lets the sinks flush what the logs hold, and returns. With
/// `reload`, SIGHUP (and with `watch`, a changed file) reloads the
/// configuration ([`reload`]).
pub async fn run(
    config: Config,
    reload: Option<Reload>,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    // Before anything starts: SIGHUP's default action ends the process.
    let hangups = hangups();
    let metrics = crate::telemetry::install();
    let settings = &config.global.server;
    let tls = match &settings.tls {
        None => None,
        Some((cert, key)) => Some(server::tls_acceptor(cert, key).map_err(RunError::Tls)?),
    };
    let token = match &settings.admin_token_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(token) if !token.is_empty() => Some(token),
            _ => return Err(RunError::AdminToken(var.clone())),
        },
    };
    let bind = |listen| async move {
        server::bind(listen)
            .await
            .map_err(|source| RunError::Server { listen, source })
    };
    let listener = bind(config.global.listen).await?;
    let admin_listener = match settings.admin_listen {
        Some(address) => Some(bind(address).await?),
        None => None,
    };
    let listen = listener.local_addr().unwrap_or(config.global.listen);

    let backend = log::Backend::open(&config.global.log)
        .await
        .map_err(|source| RunError::Cluster {
            pipeline: String::new(),
            source,
        })?;
    let cluster = backend.cluster();
    if let Some(cluster) = cluster {
        crate::log::jetstream::leases::heartbeat(cluster.clone(), &shutdown);
    }
    let mut routes = HashMap::new();
    let mut views = Vec::new();
    let mut running = BTreeMap::new();
    // Each pipeline runs on its own: a reload can stop, start or restart it
    // without touching the others.
    for spec in &config.pipelines {
        let (one, route) = match start_one(spec, &config.global, &shutdown, cluster).await {
            Ok(started) => started,
            Err(e) => {
                // What started before stops (its leases, runners, heartbeat).
                shutdown.stop.cancel();
                return Err(e);
            }
        };
        if let Some((path, route)) = route {
            routes.insert(path, Slot::Live(route));
        }
        views.push(one.view.clone());
        running.insert(spec.name.clone(), one);
    }
    let admin = Arc::new(Admin {
        token,
        pipelines: server::Swap::new(views),
        metrics,
        config: server::Swap::new(Some(Arc::new(config.clone()))),
    });
    let routes: server::Routes = Arc::new(server::Swap::new(routes));
    let reloader = match reload {
        Some(reload) => Some(tokio::spawn(
            Reloader {
                reload,
                global: config.global.clone(),
                cluster: cluster.cloned(),
                root: shutdown.clone(),
                routes: routes.clone(),
                admin: admin.clone(),
                running,
            }
            .run(hangups),
        )),
        None => {
            tokio::spawn(ignore_hangups(hangups, "this run does not reload"));
            None
        }
    };
    let limits = server::Limits {
        header_timeout: settings.header_timeout,
        max_connections: settings.max_connections,
    };
    let admin_task = admin_listener.map(|listener| {
        let address = listener.local_addr().ok();
        info!(
            admin = address.map(tracing::field::display),
            status_page = address.map(|a| tracing::field::display(format!("http://{a}/"))),
            "Admin endpoints on their own listener."
        );
        let app = server::admin_router(admin.clone());
        tokio::spawn(server::serve(
            listener,
            app,
            limits,
            None,
            shutdown.stop.clone(),
        ))
    });
    let app = server::router(routes, admin_task.is_none().then(|| admin.clone()));
    drop(admin);
    let status_page = admin_task.is_none().then(|| {
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{listen}/status")
    });
    info!(listen = %listen, tls = tls.is_some(), pipelines = config.pipelines.len(), status_page = status_page.map(tracing::field::display), "Listening.");

    let (stop, signal) = (shutdown.stop.clone(), Shutdown::signal());
    tokio::spawn(async move {
        signal.await;
        info!("Shutting down: no new requests; flushing sinks.");
        stop.cancel();
    });
    // The routes (and with them every Appender) drop when the server returns,
    // which closes the logs; the runners then flush and end.
    let served = server::serve(listener, app, limits, tls, shutdown.stop.clone()).await;
    // The reloader holds the routes and the pipelines too: it ends on the
    // stop, and with it the last handles on the logs.
    if let Some(reloader) = reloader {
        let _ = reloader.await;
    }
    if let Some(task) = admin_task {
        if let Ok(Err(e)) = task.await {
            warn!(error = %e, "The admin listener failed.");
        }
    }
    if !shutdown.drain(GRACE).await {
        warn!(grace_secs = GRACE.as_secs(), "Some sinks did not finish flushing in time; their events stay in the log for the next start.");
    }
    served.map_err(|source| RunError::Server { listen, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pipeline `text` in a fresh project (`pipelines/p.toml`).
    fn project(text: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pipelines")).unwrap();
        std::fs::write(dir.path().join("tributary.toml"), "").unwrap();
        std::fs::write(dir.path().join("pipelines/p.toml"), text).unwrap();
        let config = crate::config::load(&crate::config::Paths {
            config: Some(dir.path().join("tributary.toml")),
            pipelines: None,
            files: Vec::new(),
        })
        .unwrap_or_else(|e| panic!("{e:#?}"));
        (dir, config)
    }

    const WEBHOOK: &str =
        "name = \"p\"\nschema = \"infer\"\n[source]\ntype = \"webhook\"\npath = \"/hooks/p\"\n";

    #[tokio::test]
    async fn a_brand_new_lake_starts_the_log_at_zero_not_at_the_clock() {
        let (_dir, config) = project(&format!(
            "{WEBHOOK}[[sink]]\ntype = \"parquet\"\n[[sink]]\ntype = \"delta\"\nuri = \"lake/p_delta\"\n"
        ));
        let floor = offset_floor(&config.pipelines[0], &config.global).await;
        assert_eq!(floor.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_output_that_cannot_be_set_up_is_an_error_and_makes_no_log() {
        let (_dir, config) = project(&format!(
            "{WEBHOOK}[[sink]]\ntype = \"parquet\"\nuri = \"s3://lake/p\"\nstorage = {{ region = \"us-east-1\", access_key_id_env = \"TRIBUTARY_TEST_NEVER_SET_KEY_ID\" }}\n"
        ));
        let floor = offset_floor(&config.pipelines[0], &config.global).await;
        let e = floor.expect_err("the credential is not set");
        assert!(
            crate::error::chain(&e).contains("TRIBUTARY_TEST_NEVER_SET_KEY_ID"),
            "{e:?}"
        );
        assert!(!config.global.data_dir.join("p").exists(), "no log is made");
    }
}
