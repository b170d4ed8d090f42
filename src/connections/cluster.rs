//! Connections on a JetStream log: which node polls which connection.
//!
//! A pipeline's connections are split into [`SHARDS`] shards by a hash of
//! their id, and each shard is polled by the one node holding its lease,
//! `<pipeline>._connections.<shard>` in `tributary_leases`, taken (a create:
//! only if no one holds it) and renewed (a revision-checked update every
//! third of `log.lease`) like a partition's (see
//! [`crate::log::jetstream::leases`]). So each connection is polled by
//! exactly one node at a time:
//!
//! * a node that cannot renew a shard's lease for two thirds of a lease, or
//!   finds it taken, stops the shard's pollers before the lease can lapse
//!   and be taken elsewhere;
//! * a dead node's shards lapse with their leases and the other nodes take
//!   them, so its connections move within about one lease;
//! * a node takes shards while it holds fewer than its share (all the
//!   connections pipelines' shards over the live nodes, rounded up) and
//!   gives one back per renewal while it holds more, after its pollers
//!   stopped, so a node that joins gets its share.
//!
//! The node that starts polling a connection reads its cursor from the
//! progress bucket; each page's records are published with ids made from
//! the cursor they lead to, and the cursor is stored after them,
//! revision-checked (see [`crate::log::jetstream::Pipeline`]). A connection
//! that moves after its records were published but before its cursor was
//! stored is fetched again by its next node, whose publishes the streams'
//! duplicate window drops.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use tracing::{info, warn};

use super::polling::{Runner, Shard};
use crate::log::jetstream::{key_safe, Cluster, Pipeline};
use crate::shutdown::Shutdown;

/// How many shards a pipeline's connections are split into: the most nodes
/// its polling can spread over.
pub const SHARDS: u32 = 16;

/// One connections pipeline on a JetStream log: its runner (without a
/// shard) and its streams.
pub struct Connections {
    /// The runner each shard's is made from.
    pub runner: Runner,
    /// The pipeline's streams (they keep the connections' cursors).
    pub pipeline: Arc<Pipeline>,
}

/// How many shards this node holds, against its share.
struct Share {
    total: usize,
    held: AtomicUsize,
    /// A shard is being given back (one at a time).
    giving: AtomicBool,
}

impl Share {
    fn fair(&self, cluster: &Cluster) -> usize {
        self.total.div_ceil(cluster.live_nodes())
    }
}

/// Contends for every shard of every connections pipeline in `pipelines`.
pub fn start(cluster: Arc<Cluster>, pipelines: Vec<Connections>, shutdown: &Shutdown) {
    let share = Arc::new(Share {
        total: pipelines.len() * SHARDS as usize,
        held: AtomicUsize::new(0),
        giving: AtomicBool::new(false),
    });
    for connections in pipelines {
        for index in 0..SHARDS {
            let mut runner = connections.runner.clone();
            runner.shard = Some(Shard {
                index,
                of: SHARDS,
                cursors: connections.pipeline.clone(),
            });
            shutdown.tasks.spawn(contend(
                cluster.clone(),
                runner,
                share.clone(),
                shutdown.clone(),
            ));
        }
    }
}

/// Contends for one shard's lease; polls its connections while it holds it.
async fn contend(cluster: Arc<Cluster>, runner: Runner, share: Arc<Share>, shutdown: Shutdown) {
    let index = runner.shard.as_ref().map_or(0, |s| s.index);
    let key = format!("{}._connections.{index}", key_safe(&runner.pipeline.name));
    let tick = cluster.spec.lease / 3;
    // Spread the first tries so that nodes starting together share out.
    let jitter = Duration::from_millis(u64::from(rand::random::<u16>() % 500));
    tokio::time::sleep(jitter).await;
    loop {
        if shutdown.stop.is_cancelled() {
            return;
        }
        if share.held.load(Ordering::Relaxed) < share.fair(&cluster) {
            let node = Bytes::from(cluster.node.clone());
            if let Ok(revision) = cluster.leases().create(&key, node).await {
                share.held.fetch_add(1, Ordering::Relaxed);
                let gave_back = hold(&cluster, &runner, &key, revision, &share, &shutdown).await;
                share.held.fetch_sub(1, Ordering::Relaxed);
                if gave_back {
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

/// Runs the shard's pollers while its lease is renewed; true if this node
/// gave the shard back to balance the cluster.
async fn hold(
    cluster: &Arc<Cluster>,
    runner: &Runner,
    key: &str,
    mut revision: u64,
    share: &Share,
    shutdown: &Shutdown,
) -> bool {
    let pipeline = runner.pipeline.name.clone();
    let index = runner.shard.as_ref().map_or(0, |s| s.index);
    let lease = cluster.spec.lease;
    // Cancelled on shutdown, on a lost lease, or to give the shard back:
    // every poller of the shard stops where its last durable page left it.
    let done = shutdown.stop.child_token();
    let mut shard = runner.clone();
    shard.stop = done.clone();
    info!(pipeline = %pipeline, shard = index, node = %cluster.node, "This node now polls a shard of the pipeline's connections.");
    let mut task = tokio::spawn(shard.run());
    let mut renewed = Instant::now();
    let mut giving = false;
    let gave_back = loop {
        tokio::select! {
            _ = &mut task => break giving,
            _ = tokio::time::sleep(lease / 3) => {
                let node = Bytes::from(cluster.node.clone());
                match cluster.leases().update(key, node, revision).await {
                    Ok(next) => {
                        revision = next;
                        renewed = Instant::now();
                    }
                    Err(e) => {
                        let lost = e.kind() == kv::UpdateErrorKind::WrongLastRevision;
                        if lost || renewed.elapsed() >= lease * 2 / 3 {
                            done.cancel();
                            task.abort();
                            if giving {
                                share.giving.store(false, Ordering::Release);
                            }
                            warn!(pipeline = %pipeline, shard = index, error = %e, "Lost the lease of a shard of the connections; stopped polling them (their next node resumes from their stored cursors).");
                            return false;
                        }
                    }
                }
                if !giving
                    && share.held.load(Ordering::Relaxed) > share.fair(cluster)
                    && !share.giving.swap(true, Ordering::AcqRel)
                {
                    info!(pipeline = %pipeline, shard = index, fair_share = share.fair(cluster), "Giving a shard of the connections to another node (this one holds more than its share).");
                    giving = true;
                    done.cancel();
                }
            }
        }
    };
    done.cancel();
    if let Err(e) = cluster
        .leases()
        .delete_expect_revision(key, Some(revision))
        .await
    {
        info!(key, error = %e, "The lease was not given back (it expired or moved); it lapses by itself.");
    }
    if giving {
        share.giving.store(false, Ordering::Release);
    }
    gave_back
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_spread_over_every_shard() {
        let mut counts = [0usize; SHARDS as usize];
        for i in 0..1600 {
            counts[Shard::of_id(&format!("customer-{i}"), SHARDS) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (50..=150).contains(c)), "{counts:?}");
    }
}
