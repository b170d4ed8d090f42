//! The log contract: what sources and sinks need of a pipeline's log, and
//! nothing of how it is stored. Sources append events and get their offsets
//! once the events are durable; each sink reads from an offset, in order,
//! and records its own progress (`begin` a flush, `commit` after it). The
//! file log in [`super`] is the embedded implementation; another (a
//! replicated one) implements [`LogStore`], [`LogRead`] and [`LogAppend`]
//! and hands out these handles, and no source or sink changes.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::ledger::SinkState;
use super::AppendError;
use crate::event::Event;

/// An append's offsets, and for each event whether the log dropped it as
/// already stored (see [`LogAppend::append_deduped`]).
pub type Deduped = (Range<u64>, Vec<bool>);

/// An append the log has taken, in its turn, but not yet made durable: it
/// ends with the append's offsets once they are (see [`LogAppend::submit`]).
pub type Pending = BoxFuture<'static, Result<Range<u64>, AppendError>>;

/// Appends that must be stored in their order or not at all: once one of
/// them fails, the log refuses every later one ([`AppendError::Broken`]),
/// so none is stored after a gap. A poll run's pages are one chain: a page
/// stored after a failed one would move its state past records never
/// stored.
#[derive(Clone, Debug, Default)]
pub struct Chain(Arc<AtomicBool>);

impl Chain {
    /// A chain no append of which has failed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether an append of the chain failed.
    pub fn is_broken(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Marks the chain broken: an append of it failed.
    pub fn set_broken(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The write side of a log, as a log implements it.
pub trait LogAppend: Send + Sync {
    /// Appends `events` durably, as one append; their offsets once durable.
    fn append(&self, events: Vec<Event>) -> BoxFuture<'_, Result<Range<u64>, AppendError>>;
    /// Hands `events` to the log as the next append of `chain` and returns
    /// once it has taken them, in the order of calls; the [`Pending`] ends
    /// when they are durable. A writer with several appends taken makes them
    /// durable together (one fsync), so a caller that goes on while an
    /// append is pending overlaps its work with the log's. The default: the
    /// whole append, then a finished `Pending` (no overlap).
    fn submit<'a>(
        &'a self,
        events: Vec<Event>,
        chain: &'a Chain,
    ) -> BoxFuture<'a, Result<Pending, AppendError>> {
        Box::pin(async move {
            if chain.is_broken() {
                return Err(AppendError::Broken);
            }
            let range = self
                .append(events)
                .await
                .inspect_err(|_| chain.set_broken())?;
            Ok(Box::pin(std::future::ready(Ok(range))) as Pending)
        })
    }
    /// Like [`LogAppend::append`], and says for each of `events` whether the
    /// log already held it and dropped this copy (a replicated log's own
    /// duplicate window: a provider's retry that another node stored). The
    /// default: a log without such a window, nothing dropped.
    fn append_deduped(&self, events: Vec<Event>) -> BoxFuture<'_, Result<Deduped, AppendError>> {
        let count = events.len();
        Box::pin(async move {
            self.append(events)
                .await
                .map(|range| (range, vec![false; count]))
        })
    }
    /// Bytes the log holds.
    fn disk_bytes(&self) -> u64;
    /// Whether new appends should wait: the log holds `max_bytes` or more
    /// and a consumer is behind.
    fn is_full(&self, max_bytes: u64) -> bool;
    /// Whether appends are no longer taken.
    fn is_closed(&self) -> bool;
    /// Whether this process can write the log (for `/readyz`).
    fn writable(&self) -> io::Result<()>;
}

/// The read side of a log, as a log implements it.
pub trait LogStore: Send + Sync {
    /// A reader starting at offset `from`.
    fn reader(&self, from: u64) -> Box<dyn LogRead>;
    /// The next offset to be assigned; everything below is durable.
    fn end(&self) -> u64;
    /// The newest poll-state record and its offset, if the log holds one.
    fn last_state(&self) -> io::Result<Option<(u64, Bytes)>>;
    /// The newest poll-state record of each connection the log holds, with
    /// its offset (a `[connections]` pipeline; none on a log that keeps no
    /// connections). Reads every segment: asked once, at start.
    fn connection_states(&self) -> io::Result<HashMap<Arc<str>, (u64, Bytes)>> {
        Ok(HashMap::new())
    }
    /// The recorded progress of `sink`.
    fn sink_state(&self, sink: &str) -> SinkState;
    /// Records that `sink` is about to write `range` (see [`super::ledger`]).
    /// `begin` and `commit` block until the progress is durable (on
    /// JetStream, until the cluster answered): call them from the blocking
    /// pool, never on an async worker.
    /// An error wrapping [`Fenced`] says another writer holds the sink's
    /// progress now: the caller stops writing (trying again cannot succeed).
    fn begin(&self, sink: &str, range: Range<u64>) -> io::Result<()>;
    /// Records that `sink` holds everything below `offset`; what every
    /// consumer passed may then go. May fail with [`Fenced`], as `begin`.
    fn commit(&self, sink: &str, offset: u64) -> io::Result<()>;
    /// Bytes the log holds.
    fn disk_bytes(&self) -> u64;
    /// See [`LogAppend::is_full`].
    fn is_full(&self, max_bytes: u64) -> bool;
}

/// What the admin API shows of a log beyond the contract, for a log that
/// has more to show (a replicated log's partitions: who owns each, and how
/// far each sink is on it).
pub trait LogStatus: Send + Sync {
    /// One row per (sink, partition), as JSON.
    fn partitions(&self) -> serde_json::Value;
    /// This node as the cluster sees it, as JSON: its id, the live nodes it
    /// counts, and its shares of partitions and shards (total, held, fair).
    fn node(&self) -> serde_json::Value;
    /// How long the status behind [`LogStore::end`] and
    /// [`LogStore::sink_state`] may lag the log (it is read periodically):
    /// a purge waits this long before it reads the log's end.
    fn refresh(&self) -> std::time::Duration;
    /// Deletes connection `id`'s cursor kept with the log (a purge);
    /// whether there was one.
    fn forget_connection<'a>(
        &'a self,
        id: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<bool, String>>;
    /// From now on, this node takes every partition of the pipeline that no
    /// node holds, past its fair share, and keeps it: the pipeline is being
    /// removed here, and what the nodes that removed it before left in its
    /// streams is written out by the last one.
    fn write_out(&self);
    /// Every event appended from now on, from every partition (a tap:
    /// records no progress, holds nothing back); with `sink`, each once
    /// that sink's progress on its partition passed it (as last read).
    fn tap(
        &self,
        sink: Option<String>,
    ) -> futures::future::BoxFuture<
        '_,
        Result<futures::stream::BoxStream<'static, crate::event::Event>, String>,
    >;
}

/// Another writer recorded the sink's progress since this one read it (a
/// replicated log's writer that was paused past its lease): this writer lost
/// the sink's part of the log and must stop writing it.
#[derive(Debug, thiserror::Error)]
#[error("another writer recorded the progress of {0} since this one read it: this node lost the partition and stops writing it")]
pub struct Fenced(pub String);

impl Fenced {
    /// Whether `e` is a [`Fenced`] refusal.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<Fenced>())
    }
}

/// One reader of a log, as a log implements it.
pub trait LogRead: Send {
    /// Waits until a durable event is past the reader; false once the log is
    /// closed and fully read. Cancel-safe.
    fn wait(&mut self) -> BoxFuture<'_, bool>;
    /// The offset of the next event this reader returns.
    fn position(&self) -> u64;
    /// Up to `max` durable events (none if there are none yet).
    fn read(&mut self, max: usize) -> BoxFuture<'_, io::Result<Vec<Event>>>;
}

/// The write side of a pipeline's log, held by its source. When every
/// `Appender` is dropped the log closes: readers see its end.
#[derive(Clone)]
pub struct Appender(Arc<dyn LogAppend>);

impl Appender {
    /// A handle on `log`.
    pub fn new(log: Arc<dyn LogAppend>) -> Self {
        Self(log)
    }

    /// Appends `events` durably; returns their offsets once they survive a
    /// crash of this process (and, for the file log, a power cut).
    pub async fn append(&self, events: Vec<Event>) -> Result<Range<u64>, AppendError> {
        self.0.append(events).await
    }

    /// Hands `events` to the log as the next append of `chain`, in the order
    /// of calls; the returned [`Pending`] ends once they are durable (see
    /// [`LogAppend::submit`]).
    pub async fn submit(&self, events: Vec<Event>, chain: &Chain) -> Result<Pending, AppendError> {
        self.0.submit(events, chain).await
    }

    /// Appends `events` and says which the log dropped as already stored
    /// (see [`LogAppend::append_deduped`]).
    pub async fn append_deduped(&self, events: Vec<Event>) -> Result<Deduped, AppendError> {
        self.0.append_deduped(events).await
    }

    /// Bytes the log holds.
    pub fn disk_bytes(&self) -> u64 {
        self.0.disk_bytes()
    }

    /// Whether new appends should wait (see [`LogAppend::is_full`]).
    pub fn is_full(&self, max_bytes: u64) -> bool {
        self.0.is_full(max_bytes)
    }

    /// Whether appends are no longer taken.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Whether this process can write the log.
    pub fn writable(&self) -> io::Result<()> {
        self.0.writable()
    }
}

/// The read side of a pipeline's log, held by its sinks.
#[derive(Clone)]
pub struct Log(Arc<dyn LogStore>);

impl Log {
    /// A handle on `log`.
    pub fn new(log: Arc<dyn LogStore>) -> Self {
        Self(log)
    }

    /// A reader starting at `from`.
    pub fn reader(&self, from: u64) -> Reader {
        Reader(self.0.reader(from))
    }

    /// The next offset to be assigned; everything below is durable.
    pub fn end(&self) -> u64 {
        self.0.end()
    }

    /// The newest poll-state record and its offset, if any.
    pub fn last_state(&self) -> io::Result<Option<(u64, Bytes)>> {
        self.0.last_state()
    }

    /// The newest poll-state record of each connection, with its offset.
    pub fn connection_states(&self) -> io::Result<HashMap<Arc<str>, (u64, Bytes)>> {
        self.0.connection_states()
    }

    /// The recorded progress of `sink`.
    pub fn sink_state(&self, sink: &str) -> SinkState {
        self.0.sink_state(sink)
    }

    /// Records that `sink` is about to write `range`.
    pub fn begin(&self, sink: &str, range: Range<u64>) -> io::Result<()> {
        self.0.begin(sink, range)
    }

    /// Records that `sink` holds everything below `offset`.
    pub fn commit(&self, sink: &str, offset: u64) -> io::Result<()> {
        self.0.commit(sink, offset)
    }

    /// Bytes the log holds.
    pub fn disk_bytes(&self) -> u64 {
        self.0.disk_bytes()
    }

    /// See [`LogAppend::is_full`].
    pub fn is_full(&self, max_bytes: u64) -> bool {
        self.0.is_full(max_bytes)
    }

    /// Waits up to `within` until each of `sinks` has committed everything
    /// the log holds now (its end when called); else says which is behind.
    pub async fn written(&self, sinks: &[&str], within: Duration) -> Result<(), Behind> {
        let end = self.end();
        let started = tokio::time::Instant::now();
        loop {
            let behind = sinks.iter().find_map(|sink| {
                let committed = self.sink_state(sink).committed;
                (committed < end).then(|| Behind {
                    sink: sink.to_string(),
                    committed,
                    end,
                })
            });
            match behind {
                None => return Ok(()),
                Some(behind) if started.elapsed() > within => return Err(behind),
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// A sink that has not written everything the log held (see [`Log::written`]).
#[derive(Debug)]
pub struct Behind {
    /// The sink.
    pub sink: String,
    /// Its committed offset.
    pub committed: u64,
    /// The log's end it had to reach.
    pub end: u64,
}

/// Reads a log in order from an offset.
pub struct Reader(Box<dyn LogRead>);

impl Reader {
    /// Waits until a durable event is past the reader; false once the log is
    /// closed and fully read. Cancel-safe.
    pub async fn wait(&mut self) -> bool {
        self.0.wait().await
    }

    /// The offset of the next event this reader returns.
    pub fn position(&self) -> u64 {
        self.0.position()
    }

    /// Up to `max` durable events (none if there are none yet).
    pub async fn read(&mut self, max: usize) -> io::Result<Vec<Event>> {
        self.0.read(max).await
    }
}
