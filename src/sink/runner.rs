//! The runner of one columnar sink: log → batch → encode → files → storage →
//! committed offset. It ends when the log closes (after a last flush) and
//! retries transient storage errors with backoff until shutdown's grace period
//! runs out.
//!
//! Exactly once: before a flush uploads anything, its offset range is recorded
//! as *pending*. After a crash the runner first re-flushes exactly that range, so
//! the same object names are rewritten with the same rows; only then does it
//! read on. The committed offset moves only after every object is durable.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::batch::{Batch, BatchPolicy};
use super::table::{Router, Table, TableSink, UNROUTED};
use super::{dead_letters, MakeTask, Placement, SinkContext, SinkError, Storage};
use crate::encode::{DeadLetter, Encoded, Encoder};
use crate::error::{Classify, ErrorKind};
use crate::event::Event;
use crate::log::Log;
use crate::sink::health::SinkHealth;

mod backoff;
mod convert;
use backoff::Backoff;
use convert::{encode, Job};

/// Longest wait for a table's upkeep when the log closes (shutdown's grace
/// period is 30 s; every event is committed by then).
const UPKEEP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest chunk read from the log at once, to bound memory between flushes.
const READ_CHUNK: usize = 4096;

/// Everything a table sink runner needs.
pub struct Runner {
    /// Pipeline name, for logs and dead letters.
    pub pipeline: String,
    /// Sink name, unique in the pipeline; keys its progress.
    pub sink: String,
    /// The pipeline's log.
    pub log: Log,
    /// Converts events to rows: the pipeline's encoder, which each table
    /// adapts to its own columns when it opens.
    pub encoder: Arc<Encoder>,
    /// Tables with a declared schema of their own (`[route] schemas`).
    pub declared: BTreeMap<String, SchemaRef>,
    /// When to flush.
    pub policy: BatchPolicy,
    /// Where the rows go: Parquet files or Delta tables.
    pub tables: Box<dyn TableSink>,
    /// `[route]`: one table per event type; `None` writes one table.
    pub route: Option<crate::config::route::RouteSpec>,
    /// Where dead letters go (`<lake>/_dead_letters/<pipeline>`).
    pub dead_letters: Storage,
    /// Cancelled when shutdown's grace period is over; retries stop on it.
    pub abandon: CancellationToken,
    /// What the admin API shows of this sink.
    pub health: Arc<SinkHealth>,
    /// The partition of a JetStream log this runner writes (its dead-letter
    /// files are named by it: offsets repeat across partitions).
    pub partition: Option<u32>,
}

/// A table the runner has open, with the encoder of its rows.
struct Open {
    table: Box<dyn Table>,
    encoder: Arc<Encoder>,
}

/// The runner's state while it runs.
struct Running {
    config: Runner,
    open: HashMap<String, Open>,
    router: Option<Router>,
}

/// The maker of a table sink's runners: on the file log a runner of
/// `tables` itself; on a JetStream partition a runner of `tables` placed on
/// it ([`TableSink::placed`]) and wrapped as the log backend asks.
pub fn make(sink: &str, tables: Box<dyn TableSink>, ctx: &SinkContext<'_>) -> MakeTask {
    let spec = ctx.pipeline;
    let template = Runner {
        pipeline: spec.name.clone(),
        sink: sink.to_string(),
        log: ctx.log.clone(),
        encoder: ctx.encoder.clone(),
        declared: spec
            .route
            .as_ref()
            .map(|r| r.declared.clone())
            .unwrap_or_default(),
        policy: spec.batch,
        tables,
        route: spec.route.clone(),
        dead_letters: ctx.dead_letters.clone(),
        abandon: ctx.abandon.clone(),
        health: ctx.health.clone(),
        partition: None,
    };
    let wrap = match &ctx.placement {
        Placement::Local => None,
        Placement::Partitioned { tables } => tables.clone(),
    };
    Arc::new(move |log, partition| {
        let mut tables = template.tables.placed(partition);
        if let Some(wrap) = &wrap {
            tables = wrap(tables, &template.sink);
        }
        Runner {
            pipeline: template.pipeline.clone(),
            sink: template.sink.clone(),
            log,
            encoder: template.encoder.clone(),
            declared: template.declared.clone(),
            policy: template.policy,
            tables,
            route: template.route.clone(),
            dead_letters: template.dead_letters.clone(),
            abandon: template.abandon.clone(),
            health: template.health.clone(),
            partition,
        }
        .into()
    })
}

impl Runner {
    /// Runs until the log closes; flushes what it holds on the way out.
    pub async fn run(self) -> Result<(), SinkError> {
        let state = self.log.sink_state(&self.sink);
        let mut next = state.committed;
        let mut running = Running {
            open: HashMap::new(),
            router: None,
            config: self,
        };
        match &running.config.route {
            None => {
                // The one table is opened now: it may say where to resume.
                let resume = running.open_table(UNROUTED, next).await?;
                if let Some(resume) = resume {
                    if resume > next {
                        let me = &running.config;
                        info!(pipeline = %me.pipeline, sink = %me.sink, committed = next, table = resume, "The table already holds events the sink had not recorded; resuming after them.");
                        running
                            .ledger(move |log, sink| log.commit(sink, resume))
                            .await?;
                        next = resume;
                    } else if resume < next {
                        let me = &running.config;
                        warn!(pipeline = %me.pipeline, sink = %me.sink, committed = next, table = resume, "The table's txn is behind the sink's progress (was the table replaced?); events in between are not written again.");
                    }
                }
            }
            Some(route) => {
                let route = route.clone();
                let mut backoff = Backoff::new(&running.config, "Cannot list the sink's tables");
                let existing = loop {
                    match running.config.tables.existing().await {
                        Ok(found) => break found,
                        Err(e) => backoff.pause(e).await?,
                    }
                };
                running.router = Some(Router::new(&route, existing));
            }
        }
        running.go(state.pending, next).await
    }
}

impl Running {
    async fn go(mut self, pending: Option<(u64, u64)>, mut next: u64) -> Result<(), SinkError> {
        let me = &self.config;
        if let Some((first, end)) = pending {
            if first == next && end <= me.log.end() {
                info!(pipeline = %me.pipeline, sink = %me.sink, first, end, "Re-flushing the range a crash interrupted.");
                let mut reader = me.log.reader(first);
                let mut events = Vec::with_capacity((end - first) as usize);
                while reader.position() < end {
                    let want = (end - reader.position()) as usize;
                    let chunk = reader
                        .read(want.min(READ_CHUNK))
                        .await
                        .map_err(SinkError::Log)?;
                    // A log closed meanwhile (a JetStream partition given to
                    // another node) reads nothing more: stop, and leave the
                    // range pending for the next writer, rather than spin.
                    if chunk.is_empty() && !reader.wait().await {
                        info!(pipeline = %me.pipeline, sink = %me.sink, first, end, "The log closed during the re-flush; its next writer re-flushes the range.");
                        return Ok(());
                    }
                    events.extend(
                        chunk
                            .into_iter()
                            .map(|e| crate::event::unwrap_for(&me.sink, e)),
                    );
                }
                self.flush(first..end, events).await?;
                next = end;
            }
        }
        let me = &self.config;
        let mut reader = me.log.reader(next);
        let mut batch = Batch::new(me.policy, next);
        // A flush whose rows are being encoded while the one before it is
        // written and committed: only while a full batch more is already in
        // the log, so a quiet pipeline still commits each flush at once.
        let mut ahead: Option<Prepared> = None;
        loop {
            let deadline = batch.deadline();
            tokio::select! {
                more = reader.wait() => {
                    if !more {
                        if !batch.is_empty() {
                            let (range, events) = batch.take();
                            self.pipelined(&mut ahead, range, events, false).await?;
                        }
                        if let Some(last) = ahead.take() {
                            self.finish(last).await?;
                        }
                        // Upkeep still running (a compaction) ends before
                        // the runner, for up to UPKEEP_WAIT: it is safe to cut
                        // at any point, and every event is committed already,
                        // so a long one (a vacuum listing a large bucket) must
                        // not hold shutdown to its grace period.
                        let waited = tokio::time::timeout(UPKEEP_WAIT, async {
                            for open in self.open.values_mut() {
                                open.table.settle().await;
                            }
                        });
                        tokio::select! {
                            ended = waited => if ended.is_err() {
                                info!(pipeline = %self.config.pipeline, sink = %self.config.sink, "Table upkeep still running at shutdown; it is cut and runs again after the next start's commits.");
                            },
                            _ = self.config.abandon.cancelled() => {}
                        }
                        debug!(pipeline = %self.config.pipeline, sink = %self.config.sink, "Log closed; sink runner done.");
                        return Ok(());
                    }
                    let events = reader.read(batch.room().clamp(1, READ_CHUNK)).await.map_err(SinkError::Log)?;
                    for event in events {
                        // A replayed dead letter becomes its event again for this sink.
                        batch.push(crate::event::unwrap_for(&self.config.sink, event));
                        if batch.is_full() {
                            let (range, events) = batch.take();
                            // Events after this batch, read or not yet.
                            let backlog = self.config.log.end().saturating_sub(range.end)
                                >= self.config.policy.max_events as u64;
                            self.pipelined(&mut ahead, range, events, backlog).await?;
                        }
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    let (range, events) = batch.take();
                    self.pipelined(&mut ahead, range, events, false).await?;
                }
            }
        }
    }

    /// Starts encoding `range`, finishes the flush before it (if one is
    /// ahead), then finishes this one too unless `keep` (a full batch more
    /// is waiting in the log), in which case it stays ahead.
    async fn pipelined(
        &mut self,
        ahead: &mut Option<Prepared>,
        range: Range<u64>,
        events: Vec<Event>,
        keep: bool,
    ) -> Result<(), SinkError> {
        let prepared = self.prepare(range, events).await?;
        if let Some(before) = ahead.take() {
            self.finish(before).await?;
        }
        if keep {
            *ahead = Some(prepared);
            Ok(())
        } else {
            self.finish(prepared).await
        }
    }

    /// Opens table `name` (retrying transient failures) and keeps it open;
    /// returns where the table says the sink should resume.
    async fn open_table(&mut self, name: &str, start: u64) -> Result<Option<u64>, SinkError> {
        let me = &self.config;
        let base = match me.declared.get(name) {
            // A routed table with a schema file of its own.
            Some(schema) => Encoder::clone(&me.encoder)
                .inferring(false)
                .with_record_schema(schema.clone()),
            None => Encoder::clone(&me.encoder),
        };
        let mut backoff = Backoff::new(me, "Cannot open the table");
        let opened = loop {
            match me.tables.open(name, &base, start).await {
                Ok(opened) => break opened,
                Err(e) => backoff.pause(e).await?,
            }
        };
        let me = &self.config;
        if let Some(resume) = opened.resume {
            if resume > me.log.end() {
                return Err(SinkError::AheadOfLog {
                    table: opened.table.describe(),
                    resume,
                    log_end: me.log.end(),
                });
            }
        }
        if name != UNROUTED {
            info!(pipeline = %me.pipeline, sink = %me.sink, table = %opened.table.describe(), "Opened a routed table.");
        }
        self.open.insert(
            name.to_string(),
            Open {
                table: opened.table,
                encoder: Arc::new(opened.encoder),
            },
        );
        Ok(opened.resume)
    }

    /// Writes one batch and commits its offsets.
    async fn flush(&mut self, range: Range<u64>, events: Vec<Event>) -> Result<(), SinkError> {
        let prepared = self.prepare(range, events).await?;
        self.finish(prepared).await
    }

    /// Groups a batch by table, opens new tables and starts encoding on the
    /// blocking pool; changes nothing the sink has written or recorded.
    async fn prepare(
        &mut self,
        range: Range<u64>,
        events: Vec<Event>,
    ) -> Result<Prepared, SinkError> {
        let started = std::time::Instant::now();
        // Each event's table; the one table of an unrouted sink always gets
        // its write, so a Delta table's txn moves even when no row does.
        let mut groups: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        match &mut self.router {
            None => {
                groups.insert(UNROUTED.to_string(), events);
            }
            Some(router) => {
                for event in events.into_iter().filter(|e| !e.is_state()) {
                    groups
                        .entry(router.table_of(&event))
                        .or_default()
                        .push(event);
                }
            }
        }
        for name in groups.keys() {
            if !self.open.contains_key(name) {
                self.open_table(name, range.start).await?;
            }
        }
        let jobs = self.jobs(&groups);
        let encoders = jobs.iter().map(|j| j.encoder.clone()).collect();
        Ok(Prepared {
            range,
            started,
            groups,
            encoders,
            encoding: tokio::task::spawn_blocking(move || encode(jobs)),
        })
    }

    /// The encoding jobs of `groups`, with each table's current encoder.
    fn jobs(&self, groups: &BTreeMap<String, Vec<Event>>) -> Vec<Job> {
        groups
            .iter()
            .map(|(name, events)| {
                let open = &self.open[name];
                Job {
                    encoder: open.encoder.clone(),
                    partition_by: open.table.partition_by().to_vec(),
                    merge_on: open.table.merge_on().map(<[String]>::to_vec),
                    name: name.clone(),
                    events: events.clone(),
                }
            })
            .collect()
    }

    /// Records the flush as pending, writes its rows and dead letters, and
    /// commits its offsets.
    async fn finish(&mut self, prepared: Prepared) -> Result<(), SinkError> {
        let Prepared {
            range,
            started,
            groups,
            encoders,
            encoding,
        } = prepared;
        let pending = range.clone();
        self.ledger(move |log, sink| log.begin(sink, pending.clone()))
            .await?;
        let mut encoded = encoding.await.map_err(|source| SinkError::Task {
            what: "conversion",
            source,
        })??;
        // A flush before this one grew a table's schema after this one was
        // encoded: encode it again with the grown schema.
        let stale = groups
            .keys()
            .zip(&encoders)
            .any(|(name, used)| !Arc::ptr_eq(used, &self.open[name].encoder));
        if stale {
            let me = &self.config;
            info!(pipeline = %me.pipeline, sink = %me.sink, first = range.start, end = range.end, "A flush before this one grew the schema while this one was encoded; encoding it again.");
            let jobs = self.jobs(&groups);
            encoded = tokio::task::spawn_blocking(move || encode(jobs))
                .await
                .map_err(|source| SinkError::Task {
                    what: "conversion",
                    source,
                })??;
        }
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut writes: Vec<(String, RecordBatch)> = Vec::with_capacity(encoded.len());
        for (name, mut encoded) in encoded {
            // Each round records a grown schema; a table shared with other
            // writers may answer with a schema that types a column otherwise,
            // and the rows are encoded again with it (which grows nothing
            // more, as it holds every column: at most a few rounds).
            while let Some(grown) = encoded.grown.take() {
                let me = &self.config;
                info!(pipeline = %me.pipeline, sink = %me.sink, table = %name, columns = grown.fields().len(), "New record fields; the schema gains columns.");
                let mut backoff = Backoff::new(me, "Cannot record the table's schema");
                let open = self.open.get_mut(&name).expect("an open table");
                let agreed = loop {
                    match open.table.keep_schema(&grown).await {
                        Ok(agreed) => break agreed,
                        Err(e) => backoff.pause(e).await?,
                    }
                };
                open.encoder = Arc::new(open.encoder.with_record_schema(agreed.clone()));
                if agreed != grown {
                    info!(pipeline = %me.pipeline, sink = %me.sink, table = %name, "Another writer of the table recorded its schema first; encoding this flush again with the table's.");
                    let mut jobs = self.jobs(&groups);
                    jobs.retain(|job| job.name == name);
                    let again = tokio::task::spawn_blocking(move || encode(jobs))
                        .await
                        .map_err(|source| SinkError::Task {
                            what: "conversion",
                            source,
                        })??;
                    encoded = again.into_iter().next().expect("one job, one result").1;
                }
            }
            dead.append(&mut encoded.dead);
            writes.push((name, encoded.batch));
        }
        drop(groups);
        let me = &self.config;
        let dead_count = dead.len();
        if !dead.is_empty() {
            let (pipeline, sink, partition) = (me.pipeline.clone(), me.sink.clone(), me.partition);
            let offsets = range.clone();
            let (name, body) = tokio::task::spawn_blocking(move || {
                dead_letters::file(&pipeline, &sink, partition, &offsets, &dead)
            })
            .await
            .map_err(|source| SinkError::Task {
                what: "dead-letter",
                source,
            })??;
            warn!(pipeline = %me.pipeline, sink = %me.sink, dead_letters = dead_count, location = %format!("{}/{name}", me.dead_letters), "Events did not fit the schema; kept as dead letters.");
            let mut backoff = Backoff::new(me, "Upload failed");
            loop {
                match me.dead_letters.put(&name, body.clone()).await {
                    Ok(()) => break,
                    Err(e) => backoff.pause(e).await?,
                }
            }
            me.health.dead_letters(dead_count as u64);
            metrics::counter!("tributary_dead_letters_total", "pipeline" => me.pipeline.clone(), "sink" => me.sink.clone(), "reason" => "schema").increment(dead_count as u64);
        }

        let writing = std::time::Instant::now();
        let (mut rows, mut files, mut bytes) = (0, 0, 0);
        let mut written_tables = Vec::new();
        for (name, batch) in writes {
            let open = self.open.get_mut(&name).expect("an open table");
            let mut backoff = Backoff::new(&self.config, open.table.write_failed());
            let written = loop {
                match open.table.write(&batch, &range).await {
                    Ok(written) => break written,
                    Err(e) => backoff.pause(e).await?,
                }
            };
            rows += batch.num_rows();
            files += written.files;
            bytes += written.bytes;
            if batch.num_rows() > 0 {
                written_tables.push(name);
            }
        }
        let write_millis = writing.elapsed().as_millis() as u64;

        // Metrics first: once the progress moves, a reader of /metrics that
        // sees the lag at 0 must also see this flush counted.
        let me = &self.config;
        let labels = [("pipeline", me.pipeline.clone()), ("sink", me.sink.clone())];
        metrics::histogram!("tributary_flush_events", &labels).record((rows + dead_count) as f64);
        metrics::histogram!("tributary_flush_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("tributary_commit_seconds", &labels)
            .record(writing.elapsed().as_secs_f64());
        metrics::counter!("tributary_sink_rows_total", &labels).increment(rows as u64);
        let end = range.end;
        self.ledger(move |log, sink| log.commit(sink, end)).await?;
        let me = &self.config;
        me.health.committed();
        info!(
            pipeline = %me.pipeline, sink = %me.sink, partition = me.partition, first = range.start, end = range.end,
            rows, dead_letters = dead_count, files, bytes, write_millis, millis = started.elapsed().as_millis() as u64,
            "Committed batch."
        );
        for name in written_tables {
            if let Some(open) = self.open.get_mut(&name) {
                open.table.upkeep().await;
            }
        }
        Ok(())
    }

    /// Runs a ledger update (it fsyncs) off the async threads, retrying a
    /// failed write (a full data disk) until it passes or shutdown gives up.
    async fn ledger(
        &self,
        update: impl Fn(&Log, &str) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Result<(), SinkError> {
        let update = Arc::new(update);
        let mut backoff = Backoff::new(&self.config, "Cannot record the sink's progress");
        loop {
            let (log, sink, update) = (
                self.config.log.clone(),
                self.config.sink.clone(),
                update.clone(),
            );
            let done = tokio::task::spawn_blocking(move || update(&log, &sink))
                .await
                .map_err(|e| SinkError::Ledger(std::io::Error::other(e)))?;
            match done {
                Ok(()) => return Ok(()),
                // Another writer holds the progress now: trying again cannot
                // succeed, and stopping gives the partition back.
                Err(e) if crate::log::Fenced::is(&e) => return Err(SinkError::Ledger(e)),
                Err(e) => backoff.pause(LedgerWrite(e)).await?,
            }
        }
    }
}

/// A flush between [`Running::prepare`] and [`Running::finish`]: its rows
/// are being encoded.
struct Prepared {
    range: Range<u64>,
    started: std::time::Instant,
    /// The events of each table, kept to encode again if a schema grows.
    groups: BTreeMap<String, Vec<Event>>,
    /// The encoder each table's rows are being encoded with, in `groups` order.
    encoders: Vec<Arc<Encoder>>,
    encoding: tokio::task::JoinHandle<Result<Vec<(String, Encoded)>, SinkError>>,
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

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
