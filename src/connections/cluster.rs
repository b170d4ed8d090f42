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

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};

use super::polling::{Runner, Shard};
use crate::log::jetstream::leases::renew;
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

/// Contends for every shard of `connections` (one pipeline's) until
/// `shutdown` (the pipeline's pollers' own): each shard counts in this
/// node's share while its loop runs.
pub fn start(cluster: Arc<Cluster>, connections: Connections, shutdown: &Shutdown) {
    for index in 0..SHARDS {
        let mut runner = connections.runner.clone();
        runner.shard = Some(Shard {
            index,
            of: SHARDS,
            cursors: connections.pipeline.clone(),
        });
        let member = cluster.shards.join();
        let contend = contend(cluster.clone(), runner, shutdown.clone());
        shutdown.tasks.spawn(async move {
            contend.await;
            drop(member);
        });
    }
}

/// Contends for one shard's lease; polls its connections while it holds it.
async fn contend(cluster: Arc<Cluster>, runner: Runner, shutdown: Shutdown) {
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
        if cluster.shards.wants(cluster.live_nodes()) {
            let node = Bytes::from(cluster.node.clone());
            if let Ok(revision) = cluster.leases().create(&key, node).await {
                let held = cluster.shards.hold();
                let gave_back = hold(&cluster, &runner, &key, revision, &shutdown).await;
                drop(held);
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
    shutdown: &Shutdown,
) -> bool {
    let share = &cluster.shards;
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
                let renewal = renew(cluster, key, revision, renewed).await;
                if let Some(e) = renewal.lost(&mut revision, &mut renewed) {
                    done.cancel();
                    task.abort();
                    if giving {
                        share.given();
                    }
                    warn!(pipeline = %pipeline, shard = index, error = %e, "Lost the lease of a shard of the connections; stopped polling them (their next node resumes from their stored cursors).");
                    return false;
                }
                let live = cluster.live_nodes();
                if !giving && share.give(live) {
                    info!(pipeline = %pipeline, shard = index, fair_share = share.fair(live), "Giving a shard of the connections to another node (this one holds more than its share).");
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
        share.given();
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
