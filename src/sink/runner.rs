//! The runner of one columnar sink: log → batch → encode → files → storage →
//! committed offset. It ends when the log closes (after a last flush) and
//! retries transient storage errors with backoff until shutdown's grace period
//! runs out.
//!
//! Exactly once: before a flush uploads anything, its offset range is recorded
//! as *pending*. After a crash the runner first re-flushes exactly that range, so
//! the same object names are rewritten with the same rows; only then does it
//! read on. The committed offset moves only after every object is durable.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use ::parquet::file::properties::WriterProperties;
use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::batch::{Batch, BatchPolicy};
use super::delta::{DeltaError, DeltaSink, Opened};
use super::{parquet, partition, SinkError, Storage};
use crate::buffer::Log;
use crate::config::spec::DeltaSinkSpec;
use crate::encode::{dead_letter, Encoder};
use crate::error::{Classify, ErrorKind};
use crate::event::Event;
use crate::replay;
use crate::sink::health::SinkHealth;

/// Largest chunk read from the log at once, to bound memory between flushes.
const READ_CHUNK: usize = 4096;
/// Where a Parquet sink with `schema = "infer"` keeps the record schema its
/// files use (Arrow's JSON form), relative to its location. Written before
/// the first file that uses it and read at start, so every file of the table
/// gives a column the same type. Table globs (`**/*.parquet`) do not see it.
pub const SCHEMA_FILE: &str = "_tributary/schema.json";
/// First step and ceiling of the (fully jittered) wait between retries of a
/// failed upload or commit.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Everything a columnar sink runner needs.
pub struct Runner {
    /// Pipeline name, for logs and dead letters.
    pub pipeline: String,
    /// Sink name, unique in the pipeline; keys its progress.
    pub sink: String,
    /// The pipeline's log.
    pub log: Log,
    /// Converts events to rows.
    pub encoder: Arc<Encoder>,
    /// When to flush.
    pub policy: BatchPolicy,
    /// Where the rows go.
    pub target: Target,
    /// Where dead letters go (`<lake>/_dead_letters/<pipeline>`).
    pub dead_letters: Storage,
    /// Cancelled when shutdown's grace period is over; retries stop on it.
    pub abandon: CancellationToken,
    /// What the admin API shows of this sink.
    pub health: Arc<SinkHealth>,
}

/// Where a runner's rows go.
pub enum Target {
    /// Hive-partitioned Parquet files, named by offset range.
    Parquet {
        /// Where the files go.
        storage: Storage,
        /// Hive partition columns.
        partition_by: Vec<String>,
    },
    /// A Delta table; opened when the runner starts.
    Delta(DeltaSinkSpec),
    /// The open Delta table.
    DeltaOpen(Box<DeltaSink>),
}

/// What the conversion of one flush produced for its target.
enum Payload {
    Files(Vec<(String, Bytes)>),
    Rows(RecordBatch),
}

impl Runner {
    /// Runs until the log closes; flushes what it holds on the way out.
    pub async fn run(mut self) -> Result<(), SinkError> {
        let props = parquet::writer_properties();
        let state = self.log.sink_state(&self.sink);
        let mut next = state.committed;
        if let Target::Parquet { storage, .. } = &self.target {
            if self.encoder.infers() {
                let storage = storage.clone();
                if let Some(schema) = self.load_schema(&storage).await? {
                    self.encoder = Arc::new(self.encoder.with_record_schema(schema));
                }
            }
        }
        if let Target::Delta(spec) = &self.target {
            let (table, opened) = self.open_with_retry(spec.clone(), next).await?;
            let infer = self.encoder.infers() && spec.add_columns;
            self.encoder = Arc::new(
                Encoder::clone(&self.encoder)
                    .inferring(infer)
                    .with_record_schema(opened.record_schema),
            );
            if let Some(resume) = opened.resume {
                if resume > self.log.end() {
                    return Err(DeltaError::AheadOfLog {
                        table: table.url().to_string(),
                        resume,
                        log_end: self.log.end(),
                    }
                    .into());
                }
                if resume > next {
                    info!(pipeline = %self.pipeline, sink = %self.sink, committed = next, table = resume, "The table already holds events the sink had not recorded; resuming after them.");
                    self.ledger(move |log, sink| log.commit(sink, resume))
                        .await?;
                    next = resume;
                } else if resume < next {
                    warn!(pipeline = %self.pipeline, sink = %self.sink, committed = next, table = resume, "The table's txn is behind the sink's progress (was the table replaced?); events in between are not written again.");
                }
            }
            self.target = Target::DeltaOpen(Box::new(table));
        }
        if let Some((first, end)) = state.pending {
            if first == next && end <= self.log.end() {
                info!(pipeline = %self.pipeline, sink = %self.sink, first, end, "Re-flushing the range a crash interrupted.");
                let mut reader = self.log.reader(first);
                let mut events = Vec::with_capacity((end - first) as usize);
                while reader.position() < end {
                    let want = (end - reader.position()) as usize;
                    events.extend(
                        reader
                            .read(want.min(READ_CHUNK))
                            .await
                            .map_err(SinkError::Log)?
                            .into_iter()
                            .map(|e| replay::unwrap_for(&self.sink, e)),
                    );
                }
                self.flush(first..end, events, &props).await?;
                next = end;
            }
        }
        let mut reader = self.log.reader(next);
        let mut batch = Batch::new(self.policy, next);
        loop {
            let deadline = batch.deadline();
            tokio::select! {
                more = reader.wait() => {
                    if !more {
                        if !batch.is_empty() {
                            let (range, events) = batch.take();
                            self.flush(range, events, &props).await?;
                        }
                        debug!(pipeline = %self.pipeline, sink = %self.sink, "Log closed; sink runner done.");
                        return Ok(());
                    }
                    let events = reader.read(batch.room().clamp(1, READ_CHUNK)).await.map_err(SinkError::Log)?;
                    for event in events {
                        // A replayed dead letter becomes its event again for this sink.
                        batch.push(replay::unwrap_for(&self.sink, event));
                        if batch.is_full() {
                            let (range, events) = batch.take();
                            self.flush(range, events, &props).await?;
                        }
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    let (range, events) = batch.take();
                    self.flush(range, events, &props).await?;
                }
            }
        }
    }

    /// Writes one batch and commits its offsets.
    async fn flush(
        &mut self,
        range: Range<u64>,
        events: Vec<Event>,
        props: &WriterProperties,
    ) -> Result<(), SinkError> {
        let started = std::time::Instant::now();
        let pending = range.clone();
        self.ledger(move |log, sink| log.begin(sink, pending.clone()))
            .await?;

        let encoder = self.encoder.clone();
        let (partition_by, columns, keys) = match &self.target {
            Target::Parquet { partition_by, .. } => {
                (Some(partition_by.clone()), partition_by.clone(), None)
            }
            Target::DeltaOpen(table) => (
                None,
                table.partition_by().to_vec(),
                table.merge_on().map(<[String]>::to_vec),
            ),
            Target::Delta(_) => (None, Vec::new(), None),
        };
        let (props, file_range) = (props.clone(), range.clone());
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let (payload, dead_file, rows, dead, grown) = tokio::task::spawn_blocking(move || {
            background_priority();
            let mut encoded = encoder.encode(&events);
            set_aside_unfit_rows(&mut encoded, &events, &columns, keys.as_deref())?;
            let rows = encoded.batch.num_rows();
            let payload = match partition_by {
                Some(_) if rows == 0 => Payload::Files(Vec::new()),
                Some(partition_by) => Payload::Files(parquet::files(
                    &encoded.batch,
                    &partition_by,
                    &file_range,
                    &props,
                )?),
                None => Payload::Rows(encoded.batch),
            };
            let dead_file = if encoded.dead.is_empty() {
                None
            } else {
                let batch = dead_letter::batch(&pipeline, &sink, &encoded.dead);
                Some((
                    parquet::file_name(&format!("{sink}-"), &file_range),
                    parquet::serialise(&batch, &props)?,
                ))
            };
            let dead = encoded.dead.len();
            Ok::<_, SinkError>((payload, dead_file, rows, dead, encoded.grown))
        })
        .await
        .map_err(|e| {
            SinkError::Parquet(::parquet::errors::ParquetError::External(Box::new(e)))
        })??;

        if let Some(grown) = grown {
            info!(pipeline = %self.pipeline, sink = %self.sink, columns = grown.fields().len(), "New record fields; the schema gains columns.");
            if let Target::Parquet { storage, .. } = &self.target {
                // Durable before the first file that uses it (a Delta commit
                // carries its own schema).
                let json = serde_json::to_vec_pretty(grown.as_ref())
                    .map_err(|e| SinkError::Internal(format!("cannot write the schema: {e}")))?;
                self.put_with_retry(storage, SCHEMA_FILE, Bytes::from(json))
                    .await?;
            }
            self.encoder = Arc::new(self.encoder.with_record_schema(grown));
        }
        if let Some((name, body)) = dead_file {
            warn!(pipeline = %self.pipeline, sink = %self.sink, dead_letters = dead, location = %format!("{}/{name}", self.dead_letters), "Events did not fit the schema; kept as dead letters.");
            self.put_with_retry(&self.dead_letters, &name, body).await?;
            self.health.dead_letters(dead as u64);
            metrics::counter!("tributary_dead_letters_total", "pipeline" => self.pipeline.clone(), "sink" => self.sink.clone(), "reason" => "schema").increment(dead as u64);
        }
        let (mut file_count, mut bytes) = (0, 0);
        let writing = std::time::Instant::now();
        match payload {
            Payload::Files(files) => {
                let Target::Parquet { storage, .. } = &self.target else {
                    unreachable!("files are made for Parquet targets only");
                };
                (file_count, bytes) = (files.len(), files.iter().map(|(_, b)| b.len()).sum());
                for (name, body) in files {
                    self.put_with_retry(storage, &name, body).await?;
                }
            }
            Payload::Rows(batch) => self.commit_with_retry(batch, range.end - 1).await?,
        }
        let write_millis = writing.elapsed().as_millis() as u64;

        // Metrics first: once the progress moves, a reader of /metrics that
        // sees the lag at 0 must also see this flush counted.
        let labels = [
            ("pipeline", self.pipeline.clone()),
            ("sink", self.sink.clone()),
        ];
        metrics::histogram!("tributary_flush_events", &labels).record((rows + dead) as f64);
        metrics::histogram!("tributary_flush_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("tributary_commit_seconds", &labels)
            .record(writing.elapsed().as_secs_f64());
        metrics::counter!("tributary_sink_rows_total", &labels).increment(rows as u64);
        let end = range.end;
        self.ledger(move |log, sink| log.commit(sink, end)).await?;
        self.health.committed();
        info!(
            pipeline = %self.pipeline, sink = %self.sink, first = range.start, end = range.end,
            rows, dead_letters = dead, files = file_count, bytes, write_millis, millis = started.elapsed().as_millis() as u64,
            "Committed batch."
        );
        if rows > 0 {
            if let Target::DeltaOpen(table) = &mut self.target {
                table.upkeep().await;
            }
        }
        Ok(())
    }

    /// The schema an earlier run of this Parquet sink inferred and wrote, if
    /// any, retrying transient failures until shutdown gives up.
    async fn load_schema(&self, storage: &Storage) -> Result<Option<SchemaRef>, SinkError> {
        let mut backoff = Backoff::new(self, "Cannot read the sink's schema");
        let bytes = loop {
            match storage.read(SCHEMA_FILE).await {
                Ok(bytes) => break bytes,
                Err(e) => backoff.pause(e).await?,
            }
        };
        let Some(bytes) = bytes else { return Ok(None) };
        let schema: Schema = serde_json::from_slice(&bytes).map_err(|e| {
            SinkError::Setup(format!(
                "{storage}/{SCHEMA_FILE} is not a schema tributary wrote ({e}); it holds the column types of every file of this table, so restore it from a backup rather than delete it"
            ))
        })?;
        info!(pipeline = %self.pipeline, sink = %self.sink, columns = schema.fields().len(), "Loaded the schema earlier runs inferred.");
        Ok(Some(Arc::new(schema)))
    }

    /// Opens (or creates) the Delta table, retrying transient failures (an
    /// unreachable S3 endpoint at start) until shutdown gives up.
    async fn open_with_retry(
        &self,
        spec: DeltaSinkSpec,
        start: u64,
    ) -> Result<(DeltaSink, Opened), SinkError> {
        let mut backoff = Backoff::new(self, "Cannot open the Delta table");
        loop {
            let schema = self.encoder.table_schema();
            match DeltaSink::open(&self.pipeline, spec.clone(), schema, start).await {
                Ok(opened) => return Ok(opened),
                Err(e) => backoff.pause(e).await?,
            }
        }
    }

    /// Commits rows to the Delta table, retrying transient failures like
    /// [`Self::put_with_retry`]; every try first asks the table's txn whether
    /// an earlier one already landed.
    async fn commit_with_retry(&mut self, batch: RecordBatch, last: u64) -> Result<(), SinkError> {
        let mut backoff = Backoff::new(self, "Delta commit failed");
        let Target::DeltaOpen(table) = &mut self.target else {
            unreachable!("rows are made for Delta targets only");
        };
        loop {
            match table.commit(batch.clone(), last).await {
                Ok(()) => return Ok(()),
                Err(e) => backoff.pause(e).await?,
            }
        }
    }

    /// Runs a ledger update (it fsyncs) off the async threads, retrying a
    /// failed write (a full data disk) until it passes or shutdown gives up.
    async fn ledger(
        &self,
        update: impl Fn(&Log, &str) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Result<(), SinkError> {
        let update = Arc::new(update);
        let mut backoff = Backoff::new(self, "Cannot record the sink's progress");
        loop {
            let (log, sink, update) = (self.log.clone(), self.sink.clone(), update.clone());
            let done = tokio::task::spawn_blocking(move || update(&log, &sink))
                .await
                .map_err(|e| SinkError::Ledger(std::io::Error::other(e)))?;
            match done {
                Ok(()) => return Ok(()),
                Err(e) => backoff.pause(LedgerWrite(e)).await?,
            }
        }
    }

    /// Uploads one object, retrying transient failures with exponential
    /// backoff until it succeeds or shutdown gives up on it.
    async fn put_with_retry(
        &self,
        storage: &Storage,
        name: &str,
        body: Bytes,
    ) -> Result<(), SinkError> {
        let mut backoff = Backoff::new(self, "Upload failed");
        loop {
            // The upload itself is never cancelled half-way; only the wait between tries is.
            match storage.put(name, body.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => backoff.pause(e).await?,
            }
        }
    }
}

/// A failed write of the sink's progress file: worth retrying (a full disk
/// gets space back; the progress it records is only ever re-done).
#[derive(Debug, thiserror::Error)]
#[error("failed to write the sink's progress")]
struct LedgerWrite(#[source] std::io::Error);

impl Classify for LedgerWrite {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Transient
    }
}

impl From<LedgerWrite> for SinkError {
    fn from(e: LedgerWrite) -> Self {
        SinkError::Ledger(e.0)
    }
}

/// Exponential backoff with full jitter ([`crate::http_retry::full_jitter`]) between the tries of a failing operation,
/// until shutdown's grace period gives up on it.
struct Backoff {
    /// Failed tries so far: the exponent of the next wait.
    tries: u32,
    what: &'static str,
    pipeline: String,
    sink: String,
    abandon: CancellationToken,
    health: Arc<SinkHealth>,
}

impl Backoff {
    fn new(runner: &Runner, what: &'static str) -> Self {
        Self {
            tries: 0,
            what,
            pipeline: runner.pipeline.clone(),
            sink: runner.sink.clone(),
            abandon: runner.abandon.clone(),
            health: runner.health.clone(),
        }
    }

    /// After a failed try: a transient error is logged and waited out; any
    /// other error (or shutdown giving up) ends the retrying.
    async fn pause<E>(&mut self, error: E) -> Result<(), SinkError>
    where
        E: Classify + Into<SinkError> + std::error::Error + Send + Sync + 'static,
    {
        if error.kind() != ErrorKind::Transient {
            return Err(error.into());
        }
        let error = format!("{:#}", anyhow::Error::from(error));
        let wait = crate::http_retry::full_jitter(self.tries, RETRY_MIN, RETRY_MAX);
        warn!(pipeline = %self.pipeline, sink = %self.sink, error = %error, retry_in_ms = wait.as_millis() as u64, "{}; retrying.", self.what);
        self.health.failed(&format!("{}: {error}", self.what));
        metrics::counter!("tributary_sink_retries_total", "pipeline" => self.pipeline.clone(), "sink" => self.sink.clone()).increment(1);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.abandon.cancelled() => return Err(SinkError::Abandoned),
        }
        self.tries += 1;
        Ok(())
    }
}

/// Moves the rows that no write could store from the batch to the dead
/// letters, with the reason: partition values that cannot name a directory
/// (see [`partition`]), and null primary keys in merge mode. One such row
/// must never fail its whole flush, again and again.
fn set_aside_unfit_rows(
    encoded: &mut crate::encode::Encoded,
    events: &[Event],
    partition_by: &[String],
    merge_on: Option<&[String]>,
) -> Result<(), SinkError> {
    let arrow = |e| SinkError::Parquet(::parquet::errors::ParquetError::from(e));
    let mut unfit = partition::unfit_rows(&encoded.batch, partition_by).map_err(arrow)?;
    if let Some(keys) = merge_on {
        for (row, why) in super::delta::merge::null_key_rows(&encoded.batch, keys) {
            if !unfit.iter().any(|(r, _)| *r == row) {
                unfit.push((row, why));
            }
        }
    }
    if unfit.is_empty() {
        return Ok(());
    }
    let mut keep = vec![true; encoded.batch.num_rows()];
    let ids = encoded
        .batch
        .column_by_name(crate::schema::METADATA_COLUMNS[0])
        .and_then(|c| c.as_any().downcast_ref::<arrow_array::StringArray>())
        .ok_or_else(|| SinkError::Internal("a batch without its _event_id column".into()))?;
    for (row, reason) in unfit {
        let id = uuid::Uuid::parse_str(ids.value(row)).ok();
        let Some(event) = events.iter().find(|e| Some(e.id) == id) else {
            return Err(SinkError::Internal(format!("row {row} has no event")));
        };
        keep[row] = false;
        encoded
            .dead
            .push(crate::encode::DeadLetter::new(event, reason));
    }
    let mask = arrow_array::BooleanArray::from(keep);
    encoded.batch =
        arrow_select::filter::filter_record_batch(&encoded.batch, &mask).map_err(arrow)?;
    Ok(())
}

/// Lowers the calling blocking-pool thread's scheduling priority (nice +10)
/// before CPU-heavy conversion. Acknowledging webhooks is the latency users
/// see, so it wins the CPU; conversion takes what is left, and the durable
/// buffer absorbs the difference (a full buffer answers 503). Linux applies
/// `setpriority(PRIO_PROCESS, 0, …)` to the calling thread only.
pub(super) fn background_priority() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            // SAFETY: setpriority takes no pointers; it only changes this thread's nice value.
            #[cfg(target_os = "linux")]
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            }
        }
    });
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
