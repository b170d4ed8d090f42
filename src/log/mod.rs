//! The log: one per pipeline, the source of truth between triggers and
//! sinks. [`contract`] is what sources and sinks see of it; [`Backend::open`]
//! is the one place `[log]` chooses and connects a backend: this module's
//! segment files (the embedded default), or [`jetstream`], which holds all of
//! the replicated log (streams, leases and balance, the poll leader, agreed
//! schemas).
//!
//! # On disk
//! `<data_dir>/<pipeline>/log/{base:020}.log` segments (format in [`segment`])
//! and `<data_dir>/<pipeline>/sinks/<sink>.json` progress files ([`ledger`]).
//!
//! # Invariants
//! The contract sources and sinks use is [`contract`]'s ([`Log`],
//! [`Appender`], [`Reader`]); this module is its file implementation, the
//! embedded default.
//!
//! * **Durable before acknowledged.** [`Appender::append`] returns offsets only
//!   after the records are written and `fdatasync`ed. Concurrent appends share
//!   one fsync (group commit): a single writer thread takes every request that
//!   queued while the previous fsync ran, writes them in one `write`, syncs
//!   once, then answers them all.
//! * **Readers never see what is not durable.** The log's *end* (the next offset
//!   to assign) is published only after the fsync; readers stop there.
//! * **Offsets are never reused.** A segment is named by its first offset; the
//!   active (last) segment is never deleted, so its name keeps the next offset
//!   across restarts even when every record has been consumed. A new log never
//!   starts below an offset a sink already committed.
//! * **Recovery cuts a torn append only, whatever the configuration.** Only the
//!   last segment can end in a partial write (a crash mid-write, a power cut);
//!   it is cut back to the last record that ended its append (each record says
//!   so on disk, see [`segment`]). What follows was never acknowledged: its
//!   fsync did not return.
//! * **Segments are preallocated.** A helper thread zero-fills the next segment
//!   (`next-segment.spare`), renamed into place when the active one is full, so
//!   an append overwrites zeros and `fdatasync` need not journal a new file
//!   size. An all-zero record header ends the data; on open, the last segment
//!   is cut at its last valid record, zeros included, so stale bytes of an
//!   unfinished write can never be read as records.
//! * **Segments go once every sink passed them.** A segment is deleted when the
//!   lowest committed offset over all sinks reaches the next segment's base.

pub mod contract;
pub mod jetstream;
pub mod ledger;
mod reader;
mod recover;
pub mod segment;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::error::{Classify, ErrorKind};
use crate::event::Event;
use ledger::{sync_dir, Ledger, SinkState};
use reader::FileReader;
use writer::{create_segment, prepare_spare, Writer, SPARE};

pub use contract::{
    Appender, Behind, Chain, Deduped, Fenced, Log, LogAppend, LogRead, LogStatus, LogStore,
    Pending, Reader,
};

/// The backend `[log]` chose, opened.
pub enum Backend {
    /// Segment files under `data_dir`: each pipeline opens its own ([`open`]).
    File,
    /// A JetStream cluster, connected: each pipeline's streams live on it.
    JetStream(Arc<jetstream::Cluster>),
}

impl Backend {
    /// Opens the backend `spec` names (connects to JetStream; nothing for files).
    pub async fn open(spec: &crate::config::log::LogSpec) -> Result<Self, jetstream::ClusterError> {
        use crate::config::log::LogSpec;
        Ok(match spec {
            LogSpec::File => Backend::File,
            LogSpec::JetStream(js) => Backend::JetStream(jetstream::Cluster::connect(js).await?),
        })
    }

    /// The cluster, on JetStream.
    pub fn cluster(&self) -> Option<&Arc<jetstream::Cluster>> {
        match self {
            Backend::File => None,
            Backend::JetStream(cluster) => Some(cluster),
        }
    }
}

/// Append requests waiting for the writer thread. Bounded so that a stalled
/// disk pushes back on the HTTP handlers (they await a slot) instead of
/// queueing without limit; 1024 requests cover any burst a group commit takes.
const APPEND_QUEUE: usize = 1024;
/// Most requests one group commit takes, so a flood of tiny requests still
/// gets answered in bounded batches.
const MAX_GROUP: usize = 1024;

/// Why an append was not made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// The writer has stopped (shutdown, or an earlier unrecoverable error).
    #[error("the buffer is closed")]
    Closed,
    /// Writing or syncing the log failed; nothing of this append is acknowledged.
    #[error("failed to write the log")]
    Write(#[source] Arc<io::Error>),
    /// A record is larger than a log record may be.
    #[error("a record of {0} bytes is larger than the log takes ({max} bytes)", max = crate::event::MAX_PAYLOAD_BYTES)]
    TooLarge(usize),
    /// The JetStream cluster did not acknowledge (no quorum, unreachable, full).
    #[error("JetStream did not store the events: {0}")]
    Cluster(String),
    /// An earlier append of the same [`Chain`] failed, so this one is not
    /// stored either (it would follow a gap).
    #[error("an earlier append of this run failed; nothing after it is stored")]
    Broken,
}

impl Classify for AppendError {
    fn kind(&self) -> ErrorKind {
        match self {
            AppendError::Closed => ErrorKind::Internal,
            AppendError::Write(_) => ErrorKind::Transient,
            AppendError::TooLarge(_) => ErrorKind::Permanent,
            AppendError::Cluster(_) => ErrorKind::Transient,
            AppendError::Broken => ErrorKind::Transient,
        }
    }
}

/// Options of one pipeline's log.
#[derive(Debug, Clone)]
pub struct Options {
    /// The pipeline's directory (`<data_dir>/<pipeline>`).
    pub dir: PathBuf,
    /// A segment is closed once it holds this many bytes.
    pub segment_bytes: u64,
    /// Names of the sinks whose progress decides what can be deleted.
    pub sinks: Vec<String>,
    /// Offsets below this are never assigned: a Delta table's txn says they
    /// were used, even if this log (or the whole data directory) was lost.
    pub floor: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Next offset to assign; everything below is durable.
    end: u64,
    /// No more appends will come.
    closed: bool,
}

struct Shared {
    log_dir: PathBuf,
    /// Base offsets of the segments, ascending; the last is the active one.
    /// A std mutex: held only for list edits and look-ups, never across I/O.
    segments: Mutex<Vec<u64>>,
    /// Bytes of all segment files; drives the buffer-full answer.
    disk_bytes: AtomicU64,
    ledger: Ledger,
    /// The last segment's newest poll-state record when the log was opened,
    /// with its offset; older segments are searched on demand.
    last_state: Option<(u64, bytes::Bytes)>,
    /// The segments before the last one when the log was opened.
    older_at_open: Vec<u64>,
    /// The next offset to assign (published with the progress, for
    /// [`LogAppend::is_full`]).
    end: AtomicU64,
    /// Writes that failed and were cut from the log: a reader whose read-ahead
    /// went past the log's end drops it when this changes (the bytes it
    /// buffered may be those of the failed write, never acknowledged).
    cut_writes: AtomicU64,
    /// Held while the log is open: one process per data directory.
    _lock: File,
}

impl Shared {
    fn is_full(&self, max_bytes: u64) -> bool {
        self.disk_bytes.load(Ordering::Relaxed) >= max_bytes
            && self
                .ledger
                .min_committed()
                .is_some_and(|min| min < self.end.load(Ordering::Acquire))
    }
}

/// The write side of the file log. When it is dropped (with the last
/// [`Appender`] holding it), the writer thread finishes and readers see the
/// log as closed.
struct FileAppender {
    shared: Arc<Shared>,
    /// To the writer thread; bounded (see [`APPEND_QUEUE`]); closed when the last
    /// `Appender` drops.
    tx: mpsc::Sender<Append>,
}

/// The read side of the file log.
#[derive(Clone)]
struct FileLog {
    shared: Arc<Shared>,
    /// Published by the writer after each fsync.
    progress: watch::Receiver<Progress>,
}

struct Append {
    events: Vec<Event>,
    reply: oneshot::Sender<Result<Range<u64>, AppendError>>,
    /// The chain the append belongs to, if any: the writer refuses it if an
    /// earlier one of the chain failed, and breaks the chain if it fails.
    chain: Option<Chain>,
}

/// Opens (recovering if needed) the file log in `options.dir` and starts its
/// writer thread.
pub fn open(options: Options) -> io::Result<(Appender, Log)> {
    let log_dir = options.dir.join("log");
    ledger::create_dirs_durably(&log_dir)?;
    let lock = recover::lock(&options.dir)?;
    let mut bases: Vec<u64> = fs::read_dir(&log_dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| segment::parse_file_name(&e.file_name().to_string_lossy()))
        .collect();
    bases.sort_unstable();
    let ledger = Ledger::open(
        &options.dir.join("sinks"),
        &options.sinks,
        bases.first().copied().unwrap_or(options.floor),
    )?;

    // A crash (or a full disk) between creating a segment and syncing its
    // header leaves a file shorter than the header: nothing was ever
    // appended to it, so it goes, and is made again below.
    if let Some(&last) = bases.last() {
        let path = segment::path(&log_dir, last);
        if fs::metadata(&path)?.len() < segment::HEADER_LEN {
            warn!(segment = %path.display(), "Removing a log segment whose header was never written.");
            fs::remove_file(&path)?;
            bases.pop();
        }
    }
    let tail = recover::tail(&log_dir, &bases)?;
    let (mut end, last_state) = (tail.end, tail.poll_state);
    let older_at_open = bases[..bases.len().saturating_sub(1)].to_vec();
    // Never assign an offset a sink has already passed (e.g. a log directory
    // deleted by hand): start a fresh segment at the highest committed offset.
    let floor = ledger.max_committed().max(options.floor);
    if bases.is_empty() || end < floor {
        if end < floor && !bases.is_empty() {
            warn!(log = %log_dir.display(), end, committed = floor, "The log ends below a sink's committed offset; continuing at the committed offset.");
        }
        end = end.max(floor);
        create_segment(&log_dir, end)?;
        bases.push(end);
    } else if tail.format != segment::Format::V4 {
        // Appends go on in the current format, in a segment of their own.
        if tail.last_records == 0 {
            let empty = bases.pop().expect("a last segment");
            fs::remove_file(segment::path(&log_dir, empty))?;
        }
        info!(log = %log_dir.display(), end, "Continuing a log of an older format in a new segment.");
        create_segment(&log_dir, end)?;
        bases.push(end);
    }
    // A sink whose progress lies below the oldest record left (the log was
    // lost or cut) can only go on from there: those events are gone.
    let oldest = bases[0];
    for sink in &options.sinks {
        let committed = ledger.get(sink).committed;
        if committed < oldest {
            warn!(log = %log_dir.display(), sink = %sink, committed, oldest, "The sink's progress lies below the oldest record in the log; continuing from the oldest record.");
            ledger.commit(sink, oldest)?;
        }
    }
    let disk_bytes = bases
        .iter()
        .map(|b| {
            fs::metadata(segment::path(&log_dir, *b))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let active_base = *bases.last().expect("a segment exists");
    let file = OpenOptions::new()
        .write(true)
        .open(segment::path(&log_dir, active_base))?;
    // A spare left by a crash may be incomplete; make a fresh one.
    match fs::remove_file(log_dir.join(SPARE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let size = file.metadata()?.len();
    info!(log = %log_dir.display(), segments = bases.len(), end, "Opened log.");

    let shared = Arc::new(Shared {
        log_dir,
        segments: Mutex::new(bases),
        disk_bytes: AtomicU64::new(disk_bytes),
        ledger,
        last_state,
        older_at_open,
        cut_writes: AtomicU64::new(0),
        end: AtomicU64::new(end),
        _lock: lock,
    });
    let (progress_tx, progress) = watch::channel(Progress { end, closed: false });
    let (tx, rx) = mpsc::channel(APPEND_QUEUE);
    let spare = Some(prepare_spare(&shared.log_dir, options.segment_bytes)?);
    let writer = Writer {
        spare,
        shared: shared.clone(),
        progress: progress_tx,
        file,
        size,
        next: end,
        segment_bytes: options.segment_bytes,
    };
    std::thread::Builder::new()
        .name("tributary-log".into())
        .spawn(move || writer.run(rx))?;
    Ok((
        Appender::new(Arc::new(FileAppender {
            shared: shared.clone(),
            tx,
        })),
        Log::new(Arc::new(FileLog { shared, progress })),
    ))
}

impl LogAppend for FileAppender {
    fn append(&self, events: Vec<Event>) -> BoxFuture<'_, Result<Range<u64>, AppendError>> {
        Box::pin(FileAppender::append(self, events))
    }

    fn submit<'a>(
        &'a self,
        events: Vec<Event>,
        chain: &'a Chain,
    ) -> BoxFuture<'a, Result<Pending, AppendError>> {
        Box::pin(FileAppender::submit(self, events, Some(chain.clone())))
    }

    fn disk_bytes(&self) -> u64 {
        FileAppender::disk_bytes(self)
    }

    fn is_full(&self, max_bytes: u64) -> bool {
        FileAppender::is_full(self, max_bytes)
    }

    fn is_closed(&self) -> bool {
        FileAppender::is_closed(self)
    }

    fn writable(&self) -> io::Result<()> {
        FileAppender::writable(self)
    }
}

impl LogStore for FileLog {
    fn reader(&self, from: u64) -> Box<dyn LogRead> {
        Box::new(FileLog::reader(self, from))
    }

    fn end(&self) -> u64 {
        FileLog::end(self)
    }

    fn last_state(&self) -> io::Result<Option<(u64, bytes::Bytes)>> {
        FileLog::last_state(self)
    }

    fn connection_states(
        &self,
    ) -> io::Result<std::collections::HashMap<Arc<str>, (u64, bytes::Bytes)>> {
        let segments = self
            .shared
            .segments
            .lock()
            .expect("segment list lock")
            .clone();
        let mut states = std::collections::HashMap::new();
        for base in segments {
            let scan = match segment::scan(&segment::path(&self.shared.log_dir, base)) {
                Ok(scan) => scan,
                // Deleted meanwhile: every consumer had passed it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // Only appends that ended (what recovery keeps).
            for (connection, (index, payload)) in scan.connection_states {
                if index < scan.whole.0 {
                    states.insert(connection, (base + index, payload));
                }
            }
        }
        Ok(states)
    }

    fn sink_state(&self, sink: &str) -> SinkState {
        FileLog::sink_state(self, sink)
    }

    fn begin(&self, sink: &str, range: Range<u64>) -> io::Result<()> {
        FileLog::begin(self, sink, range)
    }

    fn commit(&self, sink: &str, offset: u64) -> io::Result<()> {
        FileLog::commit(self, sink, offset)
    }

    fn disk_bytes(&self) -> u64 {
        FileLog::disk_bytes(self)
    }

    fn is_full(&self, max_bytes: u64) -> bool {
        FileLog::is_full(self, max_bytes)
    }
}

impl FileAppender {
    /// Appends `events` durably; returns their offsets once they survive a power cut.
    async fn append(&self, events: Vec<Event>) -> Result<Range<u64>, AppendError> {
        self.submit(events, None).await?.await
    }

    /// Hands `events` to the writer, behind every append handed before (of
    /// `chain`, if any); the returned future ends once the writer made them
    /// durable.
    async fn submit(
        &self,
        events: Vec<Event>,
        chain: Option<Chain>,
    ) -> Result<Pending, AppendError> {
        if let Some(big) = events
            .iter()
            .map(|e| e.payload.len())
            .find(|&n| n > crate::event::MAX_PAYLOAD_BYTES)
        {
            return Err(AppendError::TooLarge(big));
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Append {
                events,
                reply,
                chain,
            })
            .await
            .map_err(|_| AppendError::Closed)?;
        Ok(Box::pin(async move {
            answer.await.map_err(|_| AppendError::Closed)?
        }))
    }

    /// Bytes the log occupies on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.disk_bytes.load(Ordering::Relaxed)
    }

    /// Whether the log holds `max_bytes` or more and a consumer is behind:
    /// then new appends should wait. A log whose every record is consumed is
    /// never full (its active segment stays until the next roll, however big).
    pub fn is_full(&self, max_bytes: u64) -> bool {
        self.shared.is_full(max_bytes)
    }

    /// Whether the writer has stopped taking appends.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Whether the log's directory is writable by this process.
    pub fn writable(&self) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.shared.log_dir.as_os_str().as_bytes())
            .map_err(io::Error::other)?;
        // SAFETY: `path` is a valid NUL-terminated string for the call's duration.
        if unsafe { libc::access(path.as_ptr(), libc::W_OK) } == 0 {
            Ok(())
        } else {
            let e = io::Error::last_os_error();
            Err(io::Error::new(
                e.kind(),
                format!(
                    "its directory {} is not writable: {e}",
                    self.shared.log_dir.display()
                ),
            ))
        }
    }
}

impl FileLog {
    /// A reader starting at `from`.
    fn reader(&self, from: u64) -> FileReader {
        FileReader {
            log: self.clone(),
            next: from,
            segment: None,
            cut_writes: self.shared.cut_writes.load(Ordering::Acquire),
        }
    }

    /// The next offset to be assigned; everything below is durable.
    pub fn end(&self) -> u64 {
        self.progress.borrow().end
    }

    /// The newest poll-state record the log held when it was opened, and its
    /// offset. Older segments are scanned (blocking) only when the last one
    /// holds none.
    pub fn last_state(&self) -> io::Result<Option<(u64, bytes::Bytes)>> {
        match &self.shared.last_state {
            Some(state) => Ok(Some(state.clone())),
            None => {
                let segments = self
                    .shared
                    .segments
                    .lock()
                    .expect("segment list lock")
                    .clone();
                let older: Vec<u64> = self
                    .shared
                    .older_at_open
                    .iter()
                    .copied()
                    .filter(|b| segments.contains(b))
                    .collect();
                recover::poll_state(&self.shared.log_dir, &older)
            }
        }
    }

    /// The persisted progress of `sink`.
    pub fn sink_state(&self, sink: &str) -> SinkState {
        self.shared.ledger.get(sink)
    }

    /// Records that `sink` is about to flush `range` (see [`ledger`]).
    pub fn begin(&self, sink: &str, range: Range<u64>) -> io::Result<()> {
        self.shared.ledger.begin(sink, range)
    }

    /// Records that `sink` has everything below `offset` durable in storage,
    /// then deletes the segments every sink has passed.
    pub fn commit(&self, sink: &str, offset: u64) -> io::Result<()> {
        self.shared.ledger.commit(sink, offset)?;
        self.delete_consumed()
    }

    /// Bytes the log occupies on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.disk_bytes.load(Ordering::Relaxed)
    }

    /// See [`LogAppend::is_full`].
    pub fn is_full(&self, max_bytes: u64) -> bool {
        self.shared.is_full(max_bytes)
    }

    fn delete_consumed(&self) -> io::Result<()> {
        let Some(min) = self.shared.ledger.min_committed() else {
            return Ok(());
        };
        let doomed: Vec<u64> = {
            let mut segments = self.shared.segments.lock().expect("segment list lock");
            // Segment i may go when segment i+1 starts at or below `min`; the last never goes.
            let keep_from = segments.windows(2).take_while(|w| w[1] <= min).count();
            segments.drain(..keep_from).collect()
        };
        for base in &doomed {
            let path = segment::path(&self.shared.log_dir, *base);
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path)?;
            self.shared.disk_bytes.fetch_sub(len, Ordering::Relaxed);
        }
        if !doomed.is_empty() {
            sync_dir(&self.shared.log_dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
