//! Who writes what on a JetStream log: each (pipeline, sink, partition) is a
//! unit, written by the one node that holds its lease in the
//! `tributary_leases` bucket. A lease is taken with a create (only if no one
//! holds it) and renewed every third of `log.lease` with a revision-checked
//! update; a node that cannot renew in time stops the unit's runner before
//! the lease can expire elsewhere. A dead node's leases expire with the
//! bucket's age limit and the other nodes take them.
//!
//! Balance: every node keeps a key in `tributary_nodes` alive the same way,
//! takes leases only while it holds fewer than its fair share
//! (`ceil(units / nodes)`, counted over the pipelines it runs now, see
//! [`super::share`]), and gives one up per renewal while it holds more: a
//! node that joins gets its share within a few lease periods. A unit
//! given up is flushed and committed first, and its next owner resumes from
//! the Delta table's txn (or the progress bucket), so a move writes no row
//! twice.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::event::Event;
use crate::log::jetstream::{Cluster, PartitionLog, Pipeline};
use crate::log::ledger::SinkState;
use crate::log::{Log, LogRead, LogStore};
use crate::shutdown::Shutdown;
use crate::sink::health::SinkHealth;

pub use crate::sink::MakeTask;

/// One sink of one pipeline: its units are its partitions.
pub struct SinkUnits {
    /// The pipeline's streams.
    pub pipeline: Arc<Pipeline>,
    /// Sink name.
    pub sink: String,
    /// Builds its runner for a partition.
    pub make: MakeTask,
    /// Its health (shared by its partitions on this node).
    pub health: Arc<SinkHealth>,
}

/// Starts the node's heartbeat, which counts the live nodes (the fair
/// shares divide by it) until `shutdown`.
pub fn heartbeat(cluster: Arc<Cluster>, shutdown: &Shutdown) {
    shutdown.tasks.spawn(beat(cluster, shutdown.stop.clone()));
}

/// Starts one lease loop per unit of `sinks` (one pipeline's) and the
/// pipeline's status task, until `shutdown` (the pipeline's own): each unit
/// counts in this node's share while its loop runs.
pub fn start(cluster: Arc<Cluster>, sinks: Vec<SinkUnits>, shutdown: &Shutdown) {
    let mut pipelines: Vec<Arc<Pipeline>> = Vec::new();
    for sink in sinks {
        if !pipelines.iter().any(|p| Arc::ptr_eq(p, &sink.pipeline)) {
            pipelines.push(sink.pipeline.clone());
        }
        let sink = Arc::new(sink);
        for partition in 0..sink.pipeline.count() {
            let member = cluster.partitions.join();
            let unit = unit(cluster.clone(), sink.clone(), partition, shutdown.clone());
            shutdown.tasks.spawn(async move {
                unit.await;
                drop(member);
            });
        }
    }
    for pipeline in pipelines {
        tokio::spawn(status(pipeline, shutdown.stop.clone()));
    }
}

/// Keeps this node's key alive and counts the live nodes.
async fn beat(cluster: Arc<Cluster>, stop: CancellationToken) {
    let tick = cluster.spec.lease / 3;
    loop {
        let name = Bytes::from(cluster.spec.node.clone());
        // Bounded like a lease renewal: a put that never answers is a
        // failed one, and the count below still runs.
        match tokio::time::timeout(tick, cluster.nodes().put(&cluster.node, name)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "Cannot renew this node's heartbeat in JetStream."),
            Err(_) => warn!(
                waited_ms = tick.as_millis() as u64,
                "Cannot renew this node's heartbeat in JetStream: no answer in time."
            ),
        }
        // Bounded: a listing whose last key expires as it is read waits for
        // the consumer's idle heartbeat to end, and this loop renews the
        // node's own key.
        let counted = tokio::time::timeout(tick, count_keys(cluster.nodes()))
            .await
            .unwrap_or_else(|_| Err("the listing took longer than a third of the lease".into()));
        match counted {
            Ok(live) => cluster.set_live_nodes(live),
            Err(e) => {
                warn!(error = %e, live_nodes = cluster.live_nodes(), "Cannot count the live nodes in JetStream; the fair shares keep the last count.")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.cancelled() => break,
        }
    }
    let _ = cluster.nodes().delete(&cluster.node).await;
}

/// How many keys `bucket` holds (a failure part way is an error, not a
/// smaller count).
async fn count_keys(bucket: &kv::Store) -> Result<usize, String> {
    let mut keys = bucket.keys().await.map_err(|e| e.to_string())?;
    let mut count = 0;
    while let Some(key) = keys.next().await {
        key.map_err(|e| e.to_string())?;
        count += 1;
    }
    Ok(count)
}

/// Contends for one unit's lease, runs its runner while it holds it.
async fn unit(cluster: Arc<Cluster>, sink: Arc<SinkUnits>, partition: u32, shutdown: Shutdown) {
    let key = sink.pipeline.key(&sink.sink, partition);
    let tick = cluster.spec.lease / 3;
    // Spread the first tries so that nodes starting together share out.
    let jitter = Duration::from_millis(u64::from(rand::random::<u16>() % 500));
    tokio::time::sleep(jitter).await;
    loop {
        if shutdown.stop.is_cancelled() {
            return;
        }
        let writing_out = sink.pipeline.writing_out.load(Ordering::Relaxed);
        if writing_out || cluster.partitions.wants(cluster.live_nodes()) {
            let node = Bytes::from(cluster.node.clone());
            if let Ok(revision) = cluster.leases().create(&key, node).await {
                // One taken past the share to write a removed pipeline out
                // does not count in it: the node's other partitions stay.
                let held = (!writing_out).then(|| cluster.partitions.hold());
                let gave_up = own(&cluster, &sink, partition, &key, revision, &shutdown).await;
                drop(held);
                if gave_up {
                    // Let another node take it before trying again.
                    tokio::select! {
                        _ = tokio::time::sleep(cluster.spec.lease) => {}
                        _ = shutdown.stop.cancelled() => return,
                    }
                }
            }
        }
        let wait = tick + Duration::from_millis(u64::from(rand::random::<u16>() % 1000));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.stop.cancelled() => return,
        }
    }
}

/// Runs the unit's runner while the lease is renewed. Returns true if this
/// node gave the unit up to balance the cluster.
async fn own(
    cluster: &Arc<Cluster>,
    sink: &SinkUnits,
    partition: u32,
    key: &str,
    mut revision: u64,
    shutdown: &Shutdown,
) -> bool {
    let (pipeline, name) = (&sink.pipeline.name, &sink.sink);
    let lease = cluster.spec.lease;
    let mut renewed = Instant::now();
    // Cancelled on shutdown, or to give the unit up: the runner flushes and ends.
    let done = shutdown.stop.child_token();
    let log = match PartitionLog::open(sink.pipeline.clone(), name, partition, done.clone()).await {
        Ok(log) => log,
        Err(e) => {
            warn!(pipeline = %pipeline, sink = %name, partition, error = %e, "Cannot read the partition's progress; giving its lease back.");
            release(cluster, key, revision).await;
            return true;
        }
    };
    info!(pipeline = %pipeline, sink = %name, partition, node = %cluster.node, "This node now writes the partition.");
    let task = (sink.make)(Log::new(Arc::new(log)), Some(partition));
    let mut runner = tokio::spawn(task.run());
    let mut giving_up = false;
    // This unit is the one the share gives back.
    let mut releasing = false;
    let share = &cluster.partitions;
    let settle = |releasing: bool| {
        if releasing {
            share.given();
        }
    };
    loop {
        tokio::select! {
            ended = &mut runner => {
                match ended {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let message = crate::error::chain(&e);
                        sink.health.stopped(&message);
                        warn!(pipeline = %pipeline, sink = %name, partition, error = %message, "The partition's sink stopped; giving its lease back.");
                        giving_up = true;
                    }
                    Err(e) => warn!(pipeline = %pipeline, sink = %name, partition, error = %e, "The partition's runner failed."),
                }
                release(cluster, key, revision).await;
                settle(releasing);
                return giving_up;
            }
            _ = tokio::time::sleep(lease / 3) => {
                match renew(cluster, key, revision, renewed).await {
                    Renewal::Renewed(next) => {
                        revision = next;
                        renewed = Instant::now();
                    }
                    Renewal::Retry => {}
                    Renewal::Taken => {
                        runner.abort();
                        settle(releasing);
                        warn!(pipeline = %pipeline, sink = %name, partition, "Another node holds the partition's lease now; stopped writing it.");
                        return false;
                    }
                    Renewal::Late(e) => {
                        runner.abort();
                        settle(releasing);
                        warn!(pipeline = %pipeline, sink = %name, partition, error = %e, "Cannot renew the partition's lease in time; stopped writing it (its owner after the lease resumes from the table).");
                        return false;
                    }
                }
                let live = cluster.live_nodes();
                let writing_out = sink.pipeline.writing_out.load(Ordering::Relaxed);
                if !giving_up && !writing_out && share.give(live) {
                    info!(pipeline = %pipeline, sink = %name, partition, fair_share = share.fair(live), "Giving the partition to another node (this one holds more than its share).");
                    giving_up = true;
                    releasing = true;
                    done.cancel();
                }
            }
        }
    }
}

/// What one renewal of a held lease found.
pub(crate) enum Renewal {
    /// Renewed: the lease's new revision.
    Renewed(u64),
    /// Not renewed, with time left to try again at the next tick.
    Retry,
    /// Another node holds the lease now.
    Taken,
    /// Not renewed within two thirds of the lease since the last renewal
    /// (an error, or no answer at all): the holder stops now, before the
    /// lease can expire and be taken elsewhere.
    Late(String),
}

impl Renewal {
    /// Moves a holder's `revision` and `renewed` on if the lease was
    /// renewed; why it is lost, if it is (the holder stops then).
    pub(crate) fn lost(self, revision: &mut u64, renewed: &mut Instant) -> Option<String> {
        match self {
            Renewal::Renewed(next) => {
                *revision = next;
                *renewed = Instant::now();
                None
            }
            Renewal::Retry => None,
            Renewal::Taken => Some("another node holds it now".to_string()),
            Renewal::Late(why) => Some(why),
        }
    }
}

/// Renews lease `key`, held at `revision` and last renewed at `renewed`.
/// The call is bounded: it waits at most until five sixths of the lease
/// have passed since the last renewal (and at least a sixth of the lease),
/// so a holder whose JetStream calls hang (a connection that died
/// unnoticed, a client out of publish permits) stops writing before the
/// lease can expire and be taken elsewhere, instead of waiting on a renewal
/// that never answers; a slow answer within that time still renews. A
/// renewal refused before two thirds of the lease is tried again at the
/// next tick. One helper for every lease loop: partitions, connection
/// shards, the poll leader.
pub(crate) async fn renew(
    cluster: &Cluster,
    key: &str,
    revision: u64,
    renewed: Instant,
) -> Renewal {
    let lease = cluster.spec.lease;
    let limit = lease * 2 / 3;
    let wait = (lease * 5 / 6)
        .saturating_sub(renewed.elapsed())
        .max(lease / 6);
    let node = Bytes::from(cluster.node.clone());
    match tokio::time::timeout(wait, cluster.leases().update(key, node, revision)).await {
        Ok(Ok(next)) => Renewal::Renewed(next),
        Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Renewal::Taken,
        Ok(Err(_)) if renewed.elapsed() < limit => Renewal::Retry,
        Ok(Err(e)) => Renewal::Late(e.to_string()),
        Err(_) => Renewal::Late(format!(
            "JetStream did not answer the renewal within {} ms",
            wait.as_millis()
        )),
    }
}

/// Gives a lease back, if it is still the one this node took (a lease that
/// expired meanwhile may be another node's now).
async fn release(cluster: &Cluster, key: &str, revision: u64) {
    if let Err(e) = cluster
        .leases()
        .delete_expect_revision(key, Some(revision))
        .await
    {
        info!(key, error = %e, "The lease was not given back (it expired or moved); it lapses by itself.");
    }
}

/// What `/api/pipelines` shows of one unit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnitStatus {
    /// Sink name.
    pub sink: String,
    /// Partition.
    pub partition: u32,
    /// The node holding its lease, if any.
    pub owner: Option<String>,
    /// Offsets below this are in the sink.
    pub committed: u64,
    /// The partition's end offset.
    pub end: u64,
    /// `end - committed`.
    pub lag_events: u64,
}

/// How often the status task reads each partition's end and progress.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Every unit's status, as the status task last read it.
pub type Statuses = Arc<Mutex<Vec<UnitStatus>>>;

/// Reads each partition's end and size, and each unit's owner and progress,
/// every two seconds, for the admin API (any node answers for all).
async fn status(pipeline: Arc<Pipeline>, stop: CancellationToken) {
    loop {
        let mut rows = Vec::new();
        for partition in 0..pipeline.count() {
            let (end, bytes) = match pipeline.stream_state(partition).await {
                Ok(state) => state,
                Err(_) => continue,
            };
            let at = &pipeline.partitions[partition as usize];
            at.end.store(end, Ordering::Relaxed);
            at.bytes.store(bytes, Ordering::Relaxed);
            for sink in &pipeline.sinks {
                let key = pipeline.key(sink, partition);
                let owner = match pipeline.cluster.leases().get(&key).await {
                    Ok(Some(node)) => Some(String::from_utf8_lossy(&node).into_owned()),
                    _ => None,
                };
                let committed = match pipeline.cluster.progress().get(&key).await {
                    Ok(Some(bytes)) => serde_json::from_slice::<SinkState>(&bytes)
                        .map(|s| s.committed)
                        .unwrap_or(0),
                    _ => 0,
                };
                rows.push(UnitStatus {
                    sink: sink.clone(),
                    partition,
                    owner,
                    committed,
                    end,
                    lag_events: end.saturating_sub(committed),
                });
            }
        }
        *pipeline.statuses.lock().expect("status lock") = rows;
        tokio::select! {
            _ = tokio::time::sleep(STATUS_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// A pipeline's partitions seen as one log, for the admin API: its end is
/// the sum of theirs, a sink's committed offset the sum of its partitions'.
/// It cannot be read or written.
pub struct ClusterView(pub Arc<Pipeline>);

impl LogStore for ClusterView {
    fn reader(&self, from: u64) -> Box<dyn LogRead> {
        Box::new(NoReader(from))
    }

    fn end(&self) -> u64 {
        self.0
            .partitions
            .iter()
            .map(|p| p.end.load(Ordering::Relaxed))
            .sum()
    }

    fn last_state(&self) -> std::io::Result<Option<(u64, Bytes)>> {
        Ok(self.0.poll_state())
    }

    fn sink_state(&self, sink: &str) -> SinkState {
        let rows = self.0.statuses.lock().expect("status lock");
        SinkState {
            committed: rows
                .iter()
                .filter(|r| r.sink == sink)
                .map(|r| r.committed)
                .sum(),
            pending: None,
        }
    }

    fn begin(&self, _sink: &str, _range: std::ops::Range<u64>) -> std::io::Result<()> {
        Err(std::io::Error::other(
            "the cluster view of a log is not written",
        ))
    }

    fn commit(&self, _sink: &str, _offset: u64) -> std::io::Result<()> {
        Err(std::io::Error::other(
            "the cluster view of a log is not written",
        ))
    }

    fn disk_bytes(&self) -> u64 {
        self.0.bytes()
    }

    fn is_full(&self, _max_bytes: u64) -> bool {
        false
    }
}

/// The reader of [`ClusterView`]: nothing to read.
struct NoReader(u64);

impl LogRead for NoReader {
    fn wait(&mut self) -> BoxFuture<'_, bool> {
        async { false }.boxed()
    }

    fn position(&self) -> u64 {
        self.0
    }

    fn read(&mut self, _max: usize) -> BoxFuture<'_, std::io::Result<Vec<Event>>> {
        async { Ok(Vec::new()) }.boxed()
    }
}
