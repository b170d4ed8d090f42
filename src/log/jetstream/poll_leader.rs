//! A poll source on a JetStream log: one leader per pipeline, the node
//! holding the lease `<pipeline>._poll` in `tributary_leases`. The leader
//! loads the poll state from the progress bucket and runs the poller; each
//! page's records are published with message ids derived from the state
//! that page leads to, and only after JetStream acknowledged them all is
//! that state stored (a revision-checked update, so a deposed leader cannot
//! overwrite its successor's). A leader killed between the two leaves the
//! old state: its successor fetches the page again and publishes the same
//! message ids, which the streams' duplicate window drops. A page is stored
//! once as long as the API answers the same for it within that window.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::{info, warn};

use crate::config::PipelineSpec;
use crate::log::jetstream::leases::renew;
use crate::log::jetstream::{Cluster, Pipeline};
use crate::log::{Appender, Log};
use crate::shutdown::Shutdown;

/// What the poll leader of one pipeline needs.
pub struct PollLeader {
    /// The pipeline.
    pub spec: PipelineSpec,
    /// Its streams.
    pub pipeline: Arc<Pipeline>,
    /// Publishes to them.
    pub appender: Appender,
    /// The cluster view (its `last_state` is the loaded poll state).
    pub log: Log,
    /// Where the poller keeps its side copy of the state on this node.
    pub dir: PathBuf,
}

/// Contends for the pipeline's poll lease; runs the poller while it holds it.
pub async fn lead(cluster: Arc<Cluster>, leader: PollLeader, shutdown: Shutdown) {
    let crate::config::SourceSpec::Poll(poll) = &leader.spec.source else {
        return;
    };
    let name = leader.spec.name.clone();
    let key = leader.pipeline.poll_key();
    let tick = cluster.spec.lease / 3;
    loop {
        if shutdown.stop.is_cancelled() {
            return;
        }
        let node = Bytes::from(cluster.node.clone());
        if let Ok(mut revision) = cluster.leases().create(&key, node).await {
            let done = shutdown.stop.child_token();
            let started = match leader.pipeline.load_poll_state().await {
                Ok(()) => crate::source::poll::Poller::new(
                    &leader.spec,
                    poll,
                    leader.appender.clone(),
                    &leader.log,
                    &leader.dir,
                    done.clone(),
                )
                .map_err(|e| crate::error::chain(&e)),
                Err(e) => Err(e.to_string()),
            };
            match started {
                Err(e) => {
                    warn!(pipeline = %name, error = %e, "Cannot start the poll source; giving its lease back.");
                }
                Ok(poller) => {
                    info!(pipeline = %name, node = %cluster.node, "This node now runs the poll source.");
                    let mut task = tokio::spawn(poller.run_forever());
                    let mut renewed = Instant::now();
                    loop {
                        tokio::select! {
                            _ = &mut task => break,
                            _ = tokio::time::sleep(tick) => {
                                let renewal = renew(&cluster, &key, revision, renewed).await;
                                if let Some(e) = renewal.lost(&mut revision, &mut renewed) {
                                    task.abort();
                                    warn!(pipeline = %name, error = %e, "Lost the poll source's lease; stopped polling (the next leader resumes from the stored state).");
                                    break;
                                }
                            }
                        }
                    }
                    done.cancel();
                }
            }
            let _ = cluster
                .leases()
                .delete_expect_revision(&key, Some(revision))
                .await;
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.stop.cancelled() => return,
        }
    }
}
