//! The log on a NATS JetStream cluster (`[log] type = "jetstream"`): every
//! node takes webhooks and publishes their events to the pipeline's
//! partitions, and each (pipeline, sink, partition) is written by one node
//! at a time, the one holding its lease ([`leases`]).
//!
//! * A pipeline of `P` partitions has `P` streams, `TRIBUTARY_<pipeline>_<p>`
//!   on subject `tributary.<pipeline>.<p>`, each replicated `replicas` times.
//!   One stream per partition makes its sequence numbers the partition's
//!   offsets, contiguous: offset = sequence − 1.
//! * One message per event. A request's events are published together and
//!   the `202` waits for every publish ack (JetStream acks after the quorum
//!   stored it). `Nats-Msg-Id` is the delivery id when dedupe has one (a
//!   provider's retry on any node is stored once within the stream's
//!   duplicate window), otherwise the event id (a replayed dead letter: its
//!   record's own id).
//! * The duplicate window forgets a delivery id once its message is purged
//!   and a server restarts (it rebuilds the window from the messages it
//!   holds). So a webhook with dedupe also keeps each delivery id it
//!   published in the KV bucket `tributary_dedupe_<pipeline>`, whose entries
//!   live for the dedupe window: a publish first asks it, and an id found
//!   there is a duplicate. The id is put there after the publish's ack, so a
//!   crash between the two can at worst store a retry twice, never lose one.
//! * A poll source's cursor is in the KV bucket `tributary_progress` under
//!   `<pipeline>._poll`, a connection's under `<pipeline>._poll.<id>`: it is
//!   stored after the page's records were acknowledged, revision-checked,
//!   and the page's message ids are made from it (see
//!   [`poll_leader`] and [`crate::connections::cluster`]).
//! * A `[connections]` pipeline's connections are in the KV bucket
//!   `tributary_connections_<pipeline>` ([`crate::connections::bucket`]).
//! * A sink's progress per partition (the ledger of the file log: committed
//!   offset and pending range) lives in the KV bucket `tributary_progress`;
//!   ownership in `tributary_leases` ([`leases`]). Messages every sink has
//!   committed are purged from the stream.

pub mod leases;
pub mod poll_leader;
pub mod schemas;
pub mod share;

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tracing::{info, warn};
use uuid::Uuid;

use super::contract::LogAppend;
use super::AppendError;
use crate::config::log::JetStreamSpec;
use crate::config::PipelineSpec;
use crate::event::{Event, RecordKind};

mod message;
mod partition;

use message::{decode, encode};
pub use partition::PartitionLog;

/// KV bucket of partition leases: `<pipeline>.<sink>.<partition>` → node id.
const LEASES: &str = "tributary_leases";
/// KV bucket of sink progress: `<pipeline>.<sink>.<partition>` → [`Progress`].
const PROGRESS: &str = "tributary_progress";
/// KV bucket of live nodes: `<node id>` → its name, renewed like a lease.
const NODES: &str = "tributary_nodes";
/// Longest a publish waits for JetStream's ack before the request gets 503.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// Shortest stream duplicate window (the dedupe window when longer).
const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why the cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No server answered.
    #[error("cannot connect to the JetStream servers {servers}: {source}")]
    Connect {
        /// The URLs tried.
        servers: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// A credentials env var is not set.
    #[error("log.{key} names the env var {var}, which is not set; set it to the NATS {what}")]
    Credential {
        /// The key.
        key: &'static str,
        /// The variable.
        var: String,
        /// What it holds.
        what: &'static str,
    },
    /// The server is older than the client library can talk to.
    #[error("nats-server {version} at {servers} is too old: tributary needs 2.10 or newer (tested with 2.15); upgrade the servers")]
    TooOld {
        /// The version the server announced.
        version: String,
        /// The URLs.
        servers: String,
    },
    /// A stream or bucket could not be made or read.
    #[error("JetStream {what}: {message}")]
    Setup {
        /// Which stream or bucket.
        what: String,
        /// The server's or client's answer.
        message: String,
    },
}

/// A connection to the cluster, shared by every pipeline of the process.
pub struct Cluster {
    js: jetstream::Context,
    client: async_nats::Client,
    leases: kv::Store,
    progress: kv::Store,
    nodes: kv::Store,
    /// This process's id in leases: the node name and a random suffix.
    pub node: String,
    /// How many nodes keep a heartbeat (this one included), as last counted.
    live: std::sync::atomic::AtomicUsize,
    /// This node's share of the sinks' partitions.
    pub(crate) partitions: Arc<share::Share>,
    /// This node's share of the connections' shards.
    pub(crate) shards: Arc<share::Share>,
    /// The settings.
    pub spec: JetStreamSpec,
}

impl Cluster {
    /// Connects and makes (or finds) the buckets.
    pub async fn connect(spec: &JetStreamSpec) -> Result<Arc<Self>, ClusterError> {
        let env = |key: &'static str, var: &Option<String>, what: &'static str| match var {
            None => Ok(None),
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(v)),
                _ => Err(ClusterError::Credential {
                    key,
                    var: var.clone(),
                    what,
                }),
            },
        };
        let user = env("user_env", &spec.user_env, "user name")?;
        let password = env("password_env", &spec.password_env, "password")?;
        let token = env("token_env", &spec.token_env, "token")?;
        let suffix = &Uuid::new_v4().simple().to_string()[..8];
        let node = format!("{}-{suffix}", key_safe(&spec.node));
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("tributary {node}"))
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect();
        if let (Some(user), Some(password)) = (user, password) {
            options = options.user_and_password(user, password);
        }
        if let Some(token) = token {
            options = options.token(token);
        }
        let client = options
            .connect(spec.servers.clone())
            .await
            .map_err(|source| ClusterError::Connect {
                servers: spec.servers.join(", "),
                source,
            })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(ACK_WAIT);
        let bucket = |name: &str, max_age: Duration| kv::Config {
            bucket: name.to_string(),
            history: 1,
            max_age,
            num_replicas: spec.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        // async-nats cannot read a 2.9 server's JetStream answers (its
        // buckets would fail with "data did not match any variant"): say so.
        let waited = std::time::Instant::now();
        while client.server_info().version.is_empty() && waited.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let version = client.server_info().version;
        if too_old(&version) {
            return Err(ClusterError::TooOld {
                version,
                servers: spec.servers.join(", "),
            });
        }
        let leases = ensure_bucket(&js, bucket(LEASES, spec.lease)).await?;
        let progress = ensure_bucket(&js, bucket(PROGRESS, Duration::ZERO)).await?;
        let nodes = ensure_bucket(&js, bucket(NODES, spec.lease)).await?;
        info!(node = %node, servers = %spec.servers.join(", "), replicas = spec.replicas, "Connected to JetStream.");
        Ok(Arc::new(Self {
            js,
            client,
            leases,
            progress,
            nodes,
            node,
            live: std::sync::atomic::AtomicUsize::new(1),
            partitions: Default::default(),
            shards: Default::default(),
            spec: spec.clone(),
        }))
    }

    /// Makes (or finds) the streams of `spec`'s partitions.
    pub async fn pipeline(
        self: &Arc<Self>,
        spec: &PipelineSpec,
        dedupe_window: Option<Duration>,
    ) -> Result<Arc<Pipeline>, ClusterError> {
        let mut streams = Vec::new();
        let per_stream = (spec.buffer_max_bytes / u64::from(spec.partitions)).max(1 << 20);
        for p in 0..spec.partitions {
            let config = stream::Config {
                name: stream_name(&spec.name, p),
                subjects: vec![subject(&spec.name, p)],
                max_bytes: per_stream as i64,
                discard: stream::DiscardPolicy::New,
                num_replicas: self.spec.replicas,
                duplicate_window: dedupe_window.unwrap_or_default().max(MIN_DUPLICATE_WINDOW),
                storage: stream::StorageType::File,
                allow_direct: true,
                ..Default::default()
            };
            let what = format!("stream {}", config.name);
            let made = retrying(&what, || async {
                self.js
                    .get_or_create_stream(config.clone())
                    .await
                    .map_err(|e| e.to_string())
            })
            .await?;
            streams.push(made);
        }
        let partitions = (0..spec.partitions)
            .map(|_| PartitionStatus::default())
            .collect();
        let delivered = match dedupe_window {
            None => None,
            Some(window) => Some(
                ensure_bucket(
                    &self.js,
                    kv::Config {
                        bucket: format!("tributary_dedupe_{}", key_safe(&spec.name)),
                        history: 1,
                        max_age: window,
                        num_replicas: self.spec.replicas,
                        storage: stream::StorageType::File,
                        ..Default::default()
                    },
                )
                .await?,
            ),
        };
        Ok(Arc::new(Pipeline {
            delivered,
            name: spec.name.clone(),
            sinks: spec.sinks.iter().map(|s| s.name().to_string()).collect(),
            cluster: self.clone(),
            streams,
            partitions,
            statuses: Default::default(),
            poll_state: Default::default(),
            connection_states: Default::default(),
            writing_out: Default::default(),
        }))
    }

    /// The KV bucket of `pipeline`'s connections (made if missing).
    pub async fn connections_bucket(&self, pipeline: &str) -> Result<kv::Store, ClusterError> {
        ensure_bucket(
            &self.js,
            kv::Config {
                bucket: format!("tributary_connections_{}", key_safe(pipeline)),
                history: 1,
                num_replicas: self.spec.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            },
        )
        .await
    }

    /// How many nodes keep a heartbeat, this one included, as last counted.
    pub fn live_nodes(&self) -> usize {
        self.live.load(Ordering::Relaxed).max(1)
    }

    /// Records how many nodes keep a heartbeat (the heartbeat counts them).
    pub(crate) fn set_live_nodes(&self, live: usize) {
        self.live.store(live.max(1), Ordering::Relaxed);
    }

    /// The leases bucket.
    pub fn leases(&self) -> &kv::Store {
        &self.leases
    }

    /// The progress bucket.
    pub fn progress(&self) -> &kv::Store {
        &self.progress
    }

    /// The live nodes bucket.
    pub fn nodes(&self) -> &kv::Store {
        &self.nodes
    }

    /// Whether the client is connected to a server.
    pub fn connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }
}

async fn ensure_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, ClusterError> {
    let what = format!("bucket {}", config.bucket);
    retrying(&what, || async {
        match js.get_key_value(&config.bucket).await {
            Ok(store) => Ok(store),
            Err(_) => match js.create_key_value(config.clone()).await {
                Ok(store) => Ok(store),
                // Another node made it first.
                Err(e) => js
                    .get_key_value(&config.bucket)
                    .await
                    .map_err(|_| e.to_string()),
            },
        }
    })
    .await
}

/// Whether a server's announced version is below 2.10 (empty: not known).
fn too_old(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) < (2, 10),
        _ => false,
    }
}

/// How long start-up waits for the cluster to make a stream or bucket (a
/// cluster that starts with the nodes elects its leaders meanwhile).
const SETUP_WAIT: Duration = Duration::from_secs(120);

/// Runs `attempt` until it succeeds, once a second, for up to [`SETUP_WAIT`].
async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = std::time::Instant::now();
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(message) if started.elapsed() >= SETUP_WAIT => {
                return Err(ClusterError::Setup {
                    what: what.to_string(),
                    message,
                })
            }
            Err(message) => {
                warn!(what, error = %message, "JetStream is not ready; trying again in 1 s.");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One pipeline's streams, shared by its appender and its partition logs.
pub struct Pipeline {
    /// Pipeline name.
    pub name: String,
    /// Its sinks' names (whose progress decides what is purged).
    pub sinks: Vec<String>,
    /// The connection.
    pub cluster: Arc<Cluster>,
    streams: Vec<stream::Stream>,
    /// What the status task last saw of each partition.
    pub partitions: Vec<PartitionStatus>,
    /// Each unit's owner and progress, as the status task last read them.
    pub statuses: crate::log::jetstream::leases::Statuses,
    /// A poll source's state as its leader loaded or last stored it, with
    /// its revision in the progress bucket.
    poll_state: std::sync::Mutex<Option<(u64, Bytes)>>,
    /// Each connection's cursor as its poller's node loaded or last stored
    /// it, with its revision in the progress bucket.
    connection_states: std::sync::Mutex<std::collections::HashMap<Arc<str>, (u64, Bytes)>>,
    /// With dedupe: the delivery ids published within the dedupe window.
    delivered: Option<kv::Store>,
    /// Being removed from this node: take every free partition (see
    /// [`crate::log::LogStatus::write_out`]).
    pub(crate) writing_out: std::sync::atomic::AtomicBool,
}

/// The last seen end and size of one partition's stream.
#[derive(Debug, Default)]
pub struct PartitionStatus {
    /// Next offset (the stream's last sequence).
    pub end: AtomicU64,
    /// Bytes the stream holds.
    pub bytes: AtomicU64,
}

/// How often a tap of one sink looks at the sink's progress again.
const TAP_WAIT: Duration = Duration::from_millis(100);

impl crate::log::LogStatus for Pipeline {
    fn partitions(&self) -> serde_json::Value {
        let rows = self.statuses.lock().expect("status lock").clone();
        serde_json::json!(rows)
    }

    fn node(&self) -> serde_json::Value {
        let cluster = &self.cluster;
        let live = cluster.live_nodes();
        serde_json::json!({
            "id": cluster.node,
            "live_nodes": live,
            "partitions": cluster.partitions.status(live),
            "shards": cluster.shards.status(live),
        })
    }

    fn write_out(&self) {
        self.writing_out.store(true, Ordering::Relaxed);
    }

    fn refresh(&self) -> Duration {
        // The status task reads every two seconds; one more read's time.
        leases::STATUS_EVERY * 2
    }

    fn tap(
        &self,
        sink: Option<String>,
    ) -> BoxFuture<'_, Result<futures::stream::BoxStream<'static, Event>, String>> {
        async move {
            let mut partitions = Vec::new();
            for (partition, stream) in self.streams.iter().enumerate() {
                // An ordered consumer of its own from the stream's end: it
                // acknowledges nothing, so it holds no message back.
                let consumer = stream
                    .create_consumer(jetstream::consumer::pull::OrderedConfig {
                        deliver_policy: jetstream::consumer::DeliverPolicy::New,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let messages = consumer.messages().await.map_err(|e| e.to_string())?;
                let (statuses, sink) = (self.statuses.clone(), sink.clone());
                partitions.push(messages.filter_map(move |m| {
                    let (statuses, sink) = (statuses.clone(), sink.clone());
                    async move {
                        let m = m.ok()?;
                        if let Some(sink) = sink {
                            let sequence = m.info().ok()?.stream_sequence;
                            // Offsets below `committed` are in the sink.
                            let passed = || {
                                statuses.lock().expect("status lock").iter().any(|r| {
                                    r.sink == sink
                                        && r.partition as usize == partition
                                        && r.committed >= sequence
                                })
                            };
                            while !passed() {
                                tokio::time::sleep(TAP_WAIT).await;
                            }
                        }
                        decode(m.message.payload.clone()).ok()
                    }
                }));
            }
            // It ends with the client (or the pipeline's stop, see the route).
            let all = futures::stream::select_all(partitions.into_iter().map(Box::pin));
            Ok(all.boxed())
        }
        .boxed()
    }

    fn forget_connection<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        async move {
            let key = self.connection_key(id);
            let held = self
                .cluster
                .progress
                .get(&key)
                .await
                .map_err(|e| e.to_string())?
                .is_some();
            if held {
                self.cluster
                    .progress
                    .purge(&key)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            self.connection_states
                .lock()
                .expect("state lock")
                .remove(id);
            Ok(held)
        }
        .boxed()
    }
}

impl Pipeline {
    /// Bytes its streams held when the status task last looked.
    pub fn bytes(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| p.bytes.load(Ordering::Relaxed))
            .sum()
    }

    /// Partitions.
    pub fn count(&self) -> u32 {
        self.streams.len() as u32
    }

    /// The last sequence (the end offset) and bytes of `partition`'s stream.
    pub async fn stream_state(&self, partition: u32) -> Result<(u64, u64), ClusterError> {
        let mut stream = self.streams[partition as usize].clone();
        let info = stream.info().await.map_err(|e| ClusterError::Setup {
            what: format!("stream {}", stream_name(&self.name, partition)),
            message: e.to_string(),
        })?;
        Ok((info.state.last_sequence, info.state.bytes))
    }

    /// The key of the poll source's lease and of its state.
    pub fn poll_key(&self) -> String {
        format!("{}._poll", key_safe(&self.name))
    }

    /// Reads the poll state from the progress bucket (a new leader does,
    /// before it starts the poller).
    pub async fn load_poll_state(&self) -> Result<(), ClusterError> {
        let entry = self
            .cluster
            .progress
            .entry(self.poll_key())
            .await
            .map_err(|e| ClusterError::Setup {
                what: format!("the poll state of {}", self.name),
                message: e.to_string(),
            })?;
        *self.poll_state.lock().expect("poll state lock") = entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| (e.revision, e.value));
        Ok(())
    }

    /// The poll state as loaded or last stored, with its revision.
    pub fn poll_state(&self) -> Option<(u64, Bytes)> {
        self.poll_state.lock().expect("poll state lock").clone()
    }

    /// Stores the poll state `payload` if the stored one is still the one
    /// this node last saw; returns its revision.
    async fn store_poll_state(&self, payload: Bytes) -> Result<u64, AppendError> {
        let key = self.poll_key();
        let seen = self.poll_state().map(|(revision, _)| revision);
        let stored = match seen {
            Some(revision) => self
                .cluster
                .progress
                .update(&key, payload.clone(), revision)
                .await
                .map_err(unavailable)?,
            None => self
                .cluster
                .progress
                .create(&key, payload.clone())
                .await
                .map_err(unavailable)?,
        };
        *self.poll_state.lock().expect("poll state lock") = Some((stored, payload));
        Ok(stored)
    }

    /// The key of connection `id`'s cursor in the progress bucket.
    fn connection_key(&self, id: &str) -> String {
        format!("{}.{}", self.poll_key(), id_key(id))
    }

    /// Reads connection `id`'s cursor from the progress bucket, with its
    /// revision (the node that starts polling it does, first).
    pub async fn load_connection_state(
        &self,
        id: &Arc<str>,
    ) -> Result<Option<(u64, Bytes)>, ClusterError> {
        let entry = self
            .cluster
            .progress
            .entry(self.connection_key(id))
            .await
            .map_err(|e| ClusterError::Setup {
                what: format!("the cursor of connection {id} of {}", self.name),
                message: e.to_string(),
            })?;
        let state = entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| (e.revision, e.value));
        let mut states = self.connection_states.lock().expect("state lock");
        match &state {
            Some(state) => states.insert(id.clone(), state.clone()),
            None => states.remove(id),
        };
        Ok(state)
    }

    /// Stores connection `id`'s cursor `payload` if the stored one is still
    /// the one this node last saw; returns its revision.
    async fn store_connection_state(
        &self,
        id: &Arc<str>,
        payload: Bytes,
    ) -> Result<u64, AppendError> {
        let key = self.connection_key(id);
        let seen = self
            .connection_states
            .lock()
            .expect("state lock")
            .get(id)
            .map(|(revision, _)| *revision);
        let progress = &self.cluster.progress;
        let stored = match seen {
            Some(revision) => progress
                .update(&key, payload.clone(), revision)
                .await
                .map_err(unavailable)?,
            None => progress
                .create(&key, payload.clone())
                .await
                .map_err(unavailable)?,
        };
        self.connection_states
            .lock()
            .expect("state lock")
            .insert(id.clone(), (stored, payload));
        Ok(stored)
    }

    /// The key of `sink`'s lease and progress on `partition`.
    pub fn key(&self, sink: &str, partition: u32) -> String {
        format!("{}.{}.{partition}", key_safe(&self.name), key_safe(sink))
    }
}

/// The append side: publishes each event to its partition.
pub struct JetStreamAppender(pub Arc<Pipeline>);

impl LogAppend for JetStreamAppender {
    fn append(&self, events: Vec<Event>) -> BoxFuture<'_, Result<Range<u64>, AppendError>> {
        async move { self.publish(events).await.map(|(range, _)| range) }.boxed()
    }

    fn append_deduped(
        &self,
        events: Vec<Event>,
    ) -> BoxFuture<'_, Result<crate::log::Deduped, AppendError>> {
        self.publish(events).boxed()
    }

    fn disk_bytes(&self) -> u64 {
        self.0.bytes()
    }

    fn is_full(&self, _max_bytes: u64) -> bool {
        // A full stream refuses the publish itself (discard = new): 503.
        false
    }

    fn is_closed(&self) -> bool {
        // Appends go on until the server stops: a stopping pipeline's
        // webhook answers the requests in flight.
        false
    }

    fn writable(&self) -> io::Result<()> {
        if self.0.cluster.connected() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "no JetStream server of {} is reachable",
                self.0.cluster.spec.servers.join(", ")
            )))
        }
    }
}

impl JetStreamAppender {
    /// Publishes `events` (one message each) and waits for every ack; says
    /// which the duplicate window dropped.
    async fn publish(&self, events: Vec<Event>) -> Result<crate::log::Deduped, AppendError> {
        let pipeline = &self.0;
        let count = events.len() as u64;
        let ids = delivery_ids(&events);
        // A poll page: stored after its records, their ids made from it
        // (and from its connection's id: two accounts' cursors may match).
        let poll_state = events
            .last()
            .filter(|e| e.kind == RecordKind::PollState)
            .map(|e| e.payload.clone());
        let connection = events
            .last()
            .filter(|e| e.kind == RecordKind::PollState)
            .and_then(|e| e.connection.clone());
        let mut rows = events
            .into_iter()
            .filter(|e| !matches!(e.kind, RecordKind::DedupeIds | RecordKind::PollState))
            .collect::<Vec<_>>();
        let keys: Vec<String> = match (&ids, &poll_state) {
            (_, Some(state)) => {
                let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
                if let Some(id) = &connection {
                    digest.update(id.as_bytes());
                    digest.update(b"\0");
                }
                digest.update(state);
                let digest = digest.finish();
                let page: String = digest.as_ref()[..12]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                (0..rows.len())
                    .map(|i| format!("poll-{page}-{i}"))
                    .collect()
            }
            (Some(ids), None) if ids.len() == rows.len() => ids.clone(),
            (Some(ids), None) if ids.len() == 1 => {
                (0..rows.len()).map(|i| format!("{}#{i}", ids[0])).collect()
            }
            // An event's own id; a replayed dead letter's record id (made
            // from its file, sink and event: see `crate::event::record_id`).
            _ => rows
                .iter()
                .map(|e| match e.kind {
                    RecordKind::Replay => format!("replay-{}", e.id),
                    _ => e.id.to_string(),
                })
                .collect(),
        };
        // Delivery ids published before, even if their messages were
        // purged and the servers restarted since.
        let delivered = match (&ids, &poll_state, &pipeline.delivered) {
            (Some(_), None, Some(store)) => Some(store),
            _ => None,
        };
        let known = match delivered {
            Some(store) => futures::future::try_join_all(keys.iter().map(|key| async move {
                store
                    .get(delivered_key(key))
                    .await
                    .map(|found| found.is_some())
            }))
            .await
            .map_err(unavailable)?,
            None => vec![false; keys.len()],
        };
        let mut acks = Vec::with_capacity(rows.len());
        for ((event, key), known) in rows.drain(..).zip(&keys).zip(&known) {
            if *known {
                acks.push(None);
                continue;
            }
            let partition = crc32c::crc32c(key.as_bytes()) % pipeline.count();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, key.as_str());
            let published = pipeline
                .cluster
                .js
                .publish_with_headers(subject(&pipeline.name, partition), headers, encode(&event))
                .await
                .map_err(unavailable)?;
            acks.push(Some(published));
        }
        // Which publishes the stream's duplicate window dropped: stored
        // before (another node took the provider's earlier try).
        let mut duplicates = Vec::with_capacity(count as usize);
        for ack in acks {
            duplicates.push(match ack {
                None => true,
                Some(ack) => ack.await.map_err(unavailable)?.duplicate,
            });
        }
        if let Some(store) = delivered {
            let remembered = keys
                .iter()
                .zip(&known)
                .filter(|(_, known)| !**known)
                .map(|(key, _)| store.put(delivered_key(key), Bytes::from_static(b"1")));
            if let Err(e) = futures::future::try_join_all(remembered).await {
                warn!(pipeline = %pipeline.name, error = %e, "Stored a delivery but could not remember its id in JetStream; a retry after its message is purged and a server restarts would be stored again.");
            }
        }
        duplicates.resize(count as usize, false);
        if let Some(state) = poll_state {
            // The offsets end at the state's revision: the poller's side
            // copy of the state is then ordered with the stored one.
            let revision = match &connection {
                Some(id) => pipeline.store_connection_state(id, state).await?,
                None => pipeline.store_poll_state(state).await?,
            };
            return Ok((
                (revision + 1).saturating_sub(count)..revision + 1,
                duplicates,
            ));
        }
        Ok((0..count, duplicates))
    }
}

fn unavailable(e: impl std::fmt::Display) -> AppendError {
    AppendError::Cluster(e.to_string())
}

/// The delivery ids a dedupe record at the end of an append holds.
fn delivery_ids(events: &[Event]) -> Option<Vec<String>> {
    let last = events.last().filter(|e| e.kind == RecordKind::DedupeIds)?;
    #[derive(serde::Deserialize)]
    struct Record {
        dedupe: Vec<String>,
    }
    serde_json::from_slice::<Record>(&last.payload)
        .ok()
        .map(|r| r.dedupe)
        .filter(|ids| !ids.is_empty())
}

/// The key of delivery key `key` in the dedupe bucket (a KV key holds only
/// some characters; a delivery id may hold any).
fn delivered_key(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The stream of `pipeline`'s partition `p`.
fn stream_name(pipeline: &str, p: u32) -> String {
    format!("TRIBUTARY_{pipeline}_{p}")
}

/// The subject of `pipeline`'s partition `p`.
fn subject(pipeline: &str, p: u32) -> String {
    format!("tributary.{pipeline}.{p}")
}

/// A connection id as KV key tokens: ids are `[A-Za-z0-9._-]`, and a key's
/// `.` separates tokens, which may not be empty, so `.` is written `=2E`.
pub(crate) fn id_key(id: &str) -> String {
    id.replace('.', "=2E")
}

/// `name` with what a KV key or subject token cannot hold replaced.
pub(crate) fn key_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_2_10_are_told_apart() {
        assert!(too_old("2.9.10"));
        assert!(too_old("v2.9.25"));
        assert!(!too_old("2.10.0"));
        assert!(!too_old("2.15.1"));
        assert!(!too_old("3.0.0"));
        assert!(!too_old(""), "an unknown version is not refused");
    }

    #[test]
    fn keys_and_names_hold_only_what_nats_takes() {
        assert_eq!(key_safe("shop.orders"), "shop_orders");
        assert_eq!(stream_name("shop-orders", 3), "TRIBUTARY_shop-orders_3");
        assert_eq!(subject("shop", 0), "tributary.shop.0");
    }
}
