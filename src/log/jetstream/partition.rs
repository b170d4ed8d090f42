//! One partition of a pipeline as one sink's log, while this node owns it:
//! a reader is an ordered consumer from the sink's offset; the ledger is
//! the sink's key in the progress bucket.
//!
//! The ledger is the write fence of sinks that have no transaction of their
//! own (Parquet, HTTPS): every write of it is revision-checked against the
//! revision this node read or last wrote. A node that was paused past its
//! lease finds, when it wakes, that the next owner has written the key: its
//! `begin` fails before it uploads a range the next owner did not record, and
//! its `commit` fails ([`Fenced`]), so its runner stops without moving the
//! progress. If the woken writer wrote first, the next owner is the one
//! refused: it stops, gives the lease back, and whoever takes it next reads
//! the progress anew. A
//! range it had recorded before the pause is one the next owner re-flushes
//! under the same object names with the same rows, so an upload that slips
//! through after the wake-up rewrites identical rows.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{decode, Pipeline};
use crate::event::Event;
use crate::log::contract::{Fenced, LogRead, LogStore};
use crate::log::ledger::SinkState;

/// The header of a KV message that deletes or purges its key.
const KV_OPERATION: &str = "KV-Operation";

/// One (sink, partition) of a pipeline, as the log of that sink's runner.
pub struct PartitionLog {
    pipeline: Arc<Pipeline>,
    partition: u32,
    key: String,
    /// The sink's progress, and the key's revision this node read or last
    /// wrote (0: the key does not exist yet). One lock: the runner's ledger
    /// steps run one at a time.
    state: Mutex<(SinkState, u64)>,
    /// Next offset (stream's last sequence), as last seen.
    end: Arc<AtomicU64>,
    /// Cancelled when this node gives the partition up: readers end.
    stop: CancellationToken,
    runtime: tokio::runtime::Handle,
}

impl PartitionLog {
    /// The log of `sink` on `partition`, with its recorded progress.
    pub async fn open(
        pipeline: Arc<Pipeline>,
        sink: &str,
        partition: u32,
        stop: CancellationToken,
    ) -> io::Result<Self> {
        let key = pipeline.key(sink, partition);
        // From the stream's leader, not a replica's direct get (what the KV
        // client's `entry` does): a lagging replica's older revision would
        // fence this writer at its first write.
        let progress = &pipeline.cluster.progress;
        let subject = format!("{}{key}", progress.prefix);
        let (mut state, revision): (SinkState, u64) = match progress
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            // A deleted or purged key carries its operation in a header.
            Ok(message) if message.headers.get(KV_OPERATION).is_some() => {
                (SinkState::default(), message.sequence)
            }
            Ok(message) => (
                serde_json::from_slice(&message.payload).map_err(io::Error::other)?,
                message.sequence,
            ),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                (SinkState::default(), 0)
            }
            Err(e) => return Err(io::Error::other(e)),
        };
        let mut stream = pipeline.streams[partition as usize].clone();
        let info = stream.info().await.map_err(io::Error::other)?;
        let last = info.state.last_sequence;
        pipeline.partitions[partition as usize]
            .end
            .fetch_max(last, Ordering::Relaxed);
        let log = Self {
            pipeline,
            partition,
            key,
            state: Mutex::new((state.clone(), revision)),
            end: Arc::new(AtomicU64::new(last)),
            stop,
            runtime: tokio::runtime::Handle::current(),
        };
        // Offsets below the stream's first were purged: every sink then had
        // them, or this sink is new and starts at what is there. An empty
        // stream's first sequence is one past its last, so a sink added to
        // an idle pipeline starts at the end. The move is recorded at once:
        // purging waits for every sink's recorded progress.
        let first_offset = info.state.first_sequence.saturating_sub(1);
        if state.committed < first_offset {
            warn!(pipeline = %log.pipeline.name, sink, partition, committed = state.committed, first = first_offset, "The sink's progress is behind the stream's first event (a new sink?); it starts there.");
            state.committed = first_offset;
            state.pending = None;
            log.write(&state).await?;
        }
        Ok(log)
    }

    /// Writes `state` to the progress bucket if the key is still at the
    /// revision this node read or last wrote.
    async fn write(&self, state: &SinkState) -> io::Result<()> {
        let body = Bytes::from(serde_json::to_vec(state).map_err(io::Error::other)?);
        let progress = &self.pipeline.cluster.progress;
        let seen = self.state.lock().expect("progress lock").1;
        let fenced = || io::Error::other(Fenced(self.key.clone()));
        let written = if seen == 0 {
            progress
                .create(self.key.as_str(), body)
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => fenced(),
                    _ => io::Error::other(e),
                })?
        } else {
            progress
                .update(self.key.as_str(), body, seen)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => fenced(),
                    _ => io::Error::other(e),
                })?
        };
        *self.state.lock().expect("progress lock") = (state.clone(), written);
        Ok(())
    }

    fn record(&self, state: SinkState) -> io::Result<()> {
        // Called on the blocking pool (the runner's ledger step).
        self.runtime.block_on(self.write(&state))
    }

    /// Purges what every sink of the pipeline has committed on this partition.
    fn purge(&self) {
        let pipeline = self.pipeline.clone();
        let partition = self.partition;
        self.runtime.spawn(async move {
            let mut least = u64::MAX;
            for sink in &pipeline.sinks {
                let key = pipeline.key(sink, partition);
                let committed = match pipeline.cluster.progress.get(&key).await {
                    Ok(Some(bytes)) => serde_json::from_slice::<SinkState>(&bytes)
                        .map(|s| s.committed)
                        .unwrap_or(0),
                    _ => 0,
                };
                least = least.min(committed);
            }
            if least == 0 || least == u64::MAX {
                return;
            }
            let stream = &pipeline.streams[partition as usize];
            // Offsets below `least` are sequences up to `least`.
            if let Err(e) = stream.purge().sequence(least + 1).await {
                warn!(pipeline = %pipeline.name, partition, error = %e, "Could not purge consumed events from the stream; trying again after the next commit.");
            }
        });
    }
}

impl LogStore for PartitionLog {
    fn reader(&self, from: u64) -> Box<dyn LogRead> {
        Box::new(PartitionReader {
            pipeline: self.pipeline.clone(),
            partition: self.partition,
            position: from,
            messages: None,
            peeked: None,
            end: self.end.clone(),
            stop: self.stop.clone(),
        })
    }

    fn end(&self) -> u64 {
        self.end.load(Ordering::Relaxed)
    }

    fn last_state(&self) -> io::Result<Option<(u64, Bytes)>> {
        Ok(None)
    }

    fn sink_state(&self, _sink: &str) -> SinkState {
        self.state.lock().expect("progress lock").0.clone()
    }

    fn begin(&self, _sink: &str, range: Range<u64>) -> io::Result<()> {
        let committed = self.sink_state("").committed;
        self.record(SinkState {
            committed,
            pending: Some((range.start, range.end)),
        })
    }

    fn commit(&self, _sink: &str, offset: u64) -> io::Result<()> {
        self.record(SinkState {
            committed: offset,
            pending: None,
        })?;
        self.purge();
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        self.pipeline.partitions[self.partition as usize]
            .bytes
            .load(Ordering::Relaxed)
    }

    fn is_full(&self, _max_bytes: u64) -> bool {
        false
    }
}

type Messages = pull::Ordered;

/// How long a reader waits for the next message before it checks whether
/// the stream holds more than it got.
const STALL_CHECK: Duration = Duration::from_secs(5);

/// Reads one partition in order from an offset, through an ordered consumer.
struct PartitionReader {
    pipeline: Arc<Pipeline>,
    partition: u32,
    position: u64,
    messages: Option<Messages>,
    peeked: Option<Event>,
    end: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl PartitionReader {
    /// The consumer, made from the reader's position if there is none.
    async fn messages(&mut self) -> io::Result<&mut Messages> {
        if self.messages.is_none() {
            let stream = &self.pipeline.streams[self.partition as usize];
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: self.position + 1,
                    },
                    ..Default::default()
                })
                .await
                .map_err(io::Error::other)?;
            self.messages = Some(consumer.messages().await.map_err(io::Error::other)?);
        }
        Ok(self.messages.as_mut().expect("made above"))
    }

    /// Takes one message into `peeked`, checking it is the next offset.
    fn take(&mut self, message: async_nats::jetstream::Message) -> io::Result<()> {
        let info = message.info().map_err(io::Error::other)?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        if sequence != self.position + 1 + u64::from(self.peeked.is_some()) {
            return Err(io::Error::other(format!(
                "partition {} of pipeline {}: expected sequence {}, the stream gave {sequence} (were unconsumed events purged?)",
                self.partition,
                self.pipeline.name,
                self.position + 1
            )));
        }
        self.end.fetch_max(sequence + pending, Ordering::Relaxed);
        self.pipeline.partitions[self.partition as usize]
            .end
            .fetch_max(sequence + pending, Ordering::Relaxed);
        self.peeked = Some(decode(message.message.payload.clone())?);
        Ok(())
    }
}

impl LogRead for PartitionReader {
    fn wait(&mut self) -> BoxFuture<'_, bool> {
        async move {
            loop {
                if self.peeked.is_some() {
                    return true;
                }
                if self.stop.is_cancelled() {
                    return false;
                }
                let stop = self.stop.clone();
                let next = async {
                    let messages = self.messages().await?;
                    match tokio::time::timeout(STALL_CHECK, messages.next()).await {
                        Ok(Some(Ok(m))) => Ok(Some(m)),
                        Ok(Some(Err(e))) => Err(io::Error::other(e)),
                        Ok(None) => Err(io::Error::other("the consumer ended")),
                        Err(_) => Ok(None),
                    }
                };
                let got = tokio::select! {
                    got = next => got,
                    _ = stop.cancelled() => return false,
                };
                let failed = match got {
                    Ok(Some(message)) => self.take(message).err(),
                    // Nothing came for a while: fine if the stream holds
                    // nothing past the reader. If it does, the consumer is
                    // stuck (its server died unnoticed, say): make it again.
                    Ok(None) => {
                        let end = self.pipeline.partitions[self.partition as usize]
                            .end
                            .load(Ordering::Relaxed);
                        (end > self.position).then(|| {
                            io::Error::other(format!(
                                "no event came for {} s while the stream holds offsets up to {end} and the reader is at {}",
                                STALL_CHECK.as_secs(),
                                self.position
                            ))
                        })
                    }
                    Err(e) => Some(e),
                };
                if let Some(e) = failed {
                    warn!(pipeline = %self.pipeline.name, partition = self.partition, error = %e, "Reading the partition failed; reading again from the sink's position in 1 s.");
                    self.messages = None;
                    self.peeked = None;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.stop.cancelled() => return false,
                    }
                }
            }
        }
        .boxed()
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn read(&mut self, max: usize) -> BoxFuture<'_, io::Result<Vec<Event>>> {
        async move {
            let mut out = Vec::new();
            // What lies below the stream's end is durable: wait for the
            // consumer to deliver it (a re-flush reads without waiting).
            if self.peeked.is_none()
                && self.position < self.end.load(Ordering::Relaxed)
                && !LogRead::wait(self).await
            {
                return Ok(out);
            }
            while out.len() < max {
                if let Some(event) = self.peeked.take() {
                    self.position += 1;
                    out.push(event);
                    continue;
                }
                let Some(messages) = self.messages.as_mut() else {
                    break;
                };
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => {
                        if let Err(e) = self.take(message) {
                            self.messages = None;
                            info!(error = %e, "Re-reading the partition.");
                            break;
                        }
                    }
                    Some(Some(Err(_))) | Some(None) => {
                        self.messages = None;
                        break;
                    }
                    None => break,
                }
            }
            Ok(out)
        }
        .boxed()
    }
}
