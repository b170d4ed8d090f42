//! Sinks: where a pipeline's events end up. A runner per sink reads the
//! pipeline's log from the sink's own committed offset, gathers a batch
//! ([`batch`]), encodes it, writes it to its tables ([`table`]: Parquet
//! files, [`delta`] tables) and only then commits the offset. A Delta table
//! is its own progress record. The HTTPS sink ([`https`]) posts each event.
//!
//! [`plan`] is the one place that maps a sink kind to its code: a table sink
//! answers with its [`table::TableSink`], which [`build`] turns into a runner
//! the same way for every kind, on the file log or on a JetStream partition
//! ([`Placement`]); the HTTPS sink builds its own. Every question about a
//! sink that needs only its config (name, location, secrets, type tag) is a
//! method of [`crate::config::SinkKind`]. Adding a table sink is a spec in
//! `config/sink/`, a [`table::TableSink`] here, and one arm in [`plan`].

pub mod batch;
pub mod dead_letters;
pub mod delta;
pub mod files;
pub mod health;
pub mod https;
pub mod parquet;
pub mod partition;
pub mod runner;
pub mod storage;
pub mod table;
pub mod task;

use std::io;
use std::sync::Arc;

use crate::config::spec::HttpsSinkSpec;
use crate::config::{PipelineSpec, SinkSpec};
use crate::encode::Encoder;
use crate::log::Log;
use crate::sink::health::SinkHealth;
use crate::sink::task::SinkTask;

use crate::error::{Classify, ErrorKind};
pub use storage::{Storage, StorageError};

/// Why a sink runner stopped or a flush failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing to the sink's storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Serialising Parquet failed.
    #[error("failed to write Parquet")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    /// Reading the pipeline's log failed.
    #[error("failed to read the log")]
    Log(#[source] io::Error),
    /// Recording the sink's progress failed.
    #[error("failed to record the sink's progress")]
    Ledger(#[source] io::Error),
    /// Writing to the Delta table failed.
    #[error(transparent)]
    Delta(#[from] delta::DeltaError),
    /// The table holds offsets this pipeline's log never assigned.
    #[error("table {table} already holds log offsets up to {resume}, but this pipeline's log ends at {log_end}; the log was replaced while the table was unreachable. Stop tributary, move data/<pipeline> aside, and start again with the table reachable")]
    AheadOfLog {
        /// The table.
        table: String,
        /// The first offset after what the table holds.
        resume: u64,
        /// The log's next offset.
        log_end: u64,
    },
    /// An HTTPS sink cannot sign as configured (e.g. its secret is not set).
    #[error(transparent)]
    Signing(#[from] crate::signature::sign::SigningError),
    /// An HTTPS sink cannot work as configured (its client cannot be built).
    #[error("HTTPS sink {sink}: {problem}")]
    Setup {
        /// The sink.
        sink: String,
        /// What is wrong.
        #[source]
        problem: https::SetupError,
    },
    /// The receiver asked not to be called again (an HTTPS sink's 410 Gone).
    #[error("HTTPS sink {sink}: the receiver answered 410 Gone ({reason})")]
    Disabled {
        /// The sink.
        sink: String,
        /// The receiver's answer, as it gave it.
        reason: String,
    },
    /// A task of the sink failed unexpectedly (a bug).
    #[error("{0}")]
    Internal(String),
    /// A task of the sink panicked or was cancelled.
    #[error("the {what} task failed")]
    Task {
        /// Which task.
        what: &'static str,
        /// What tokio said.
        source: tokio::task::JoinError,
    },
    /// A thread or runtime of the sink could not start.
    #[error("cannot start the {what}")]
    Start {
        /// What could not start.
        what: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// A Parquet table's schema file is not one tributary wrote.
    #[error("{at} is not a schema tributary wrote ({source}); it holds the column types of every file of this table, so restore it from a backup rather than delete it")]
    SchemaFile {
        /// Where the file is.
        at: String,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The shared schema of a table on a JetStream log could not be read or recorded.
    #[error("the table's shared schema in JetStream ({key}): {message}")]
    SharedSchema {
        /// Its key in the progress bucket.
        key: String,
        /// What JetStream said.
        message: String,
    },
    /// The inferred schema could not be serialised.
    #[error("cannot write the schema")]
    WriteSchema(#[source] serde_json::Error),
    /// The sink did not answer in time.
    #[error("no answer within {} s", .0.as_secs())]
    NoAnswer(std::time::Duration),
    /// Shutdown's grace period ended while a flush was still retrying.
    #[error("gave up retrying at shutdown; the events stay in the log for the next start")]
    Abandoned,
}

impl Classify for SinkError {
    fn kind(&self) -> ErrorKind {
        match self {
            SinkError::Storage(e) => e.kind(),
            SinkError::Delta(e) => e.kind(),
            SinkError::Parquet(_)
            | SinkError::Log(_)
            | SinkError::Ledger(_)
            | SinkError::Abandoned => ErrorKind::Internal,
            SinkError::Setup { .. } | SinkError::SchemaFile { .. } | SinkError::Signing(_) => {
                ErrorKind::Config
            }
            SinkError::SharedSchema { .. } => ErrorKind::Transient,
            SinkError::Task { .. }
            | SinkError::Start { .. }
            | SinkError::WriteSchema(_)
            | SinkError::NoAnswer(_) => ErrorKind::Internal,
            SinkError::Disabled { .. } | SinkError::AheadOfLog { .. } => ErrorKind::Permanent,
            SinkError::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// What a sink kind is made of: tables a [`runner::Runner`] writes, or the
/// HTTPS sink's deliveries.
pub enum Plan<'a> {
    /// A table sink.
    Tables(Box<dyn table::TableSink>),
    /// The HTTPS sink.
    Https(&'a HttpsSinkSpec),
}

/// The one `match` over sink kinds.
pub fn plan<'a>(spec: &'a SinkSpec, pipeline: &PipelineSpec) -> Result<Plan<'a>, StorageError> {
    let routed = pipeline.route.is_some();
    Ok(match spec {
        SinkSpec::Parquet(p) => Plan::Tables(Box::new(parquet::ParquetSink::new(p, routed)?)),
        SinkSpec::Delta(d) => {
            Plan::Tables(Box::new(delta::DeltaTables::new(&pipeline.name, d, routed)))
        }
        SinkSpec::Https(h) => Plan::Https(h),
    })
}

/// The table sink a sink spec describes; `None` for a sink that writes no
/// tables (HTTPS).
pub fn table_sink(
    spec: &SinkSpec,
    pipeline: &PipelineSpec,
) -> Option<Result<Box<dyn table::TableSink>, StorageError>> {
    match plan(spec, pipeline) {
        Ok(Plan::Tables(tables)) => Some(Ok(tables)),
        Ok(Plan::Https(_)) => None,
        Err(e) => Some(Err(e)),
    }
}

/// Where a sink's runners read: the file log (one runner), or the
/// partitions of a JetStream log (one runner per partition, where its lease
/// is held).
#[derive(Clone)]
pub enum Placement {
    /// The file log.
    Local,
    /// A JetStream log. `tables` wraps each partition's table sink where the
    /// backend needs to (with an inferred schema, a table's writers agree on
    /// it through the log).
    Partitioned {
        /// Wraps a partition's table sink (given the sink's name).
        tables: Option<WrapTables>,
    },
}

/// Wraps a table sink for its place on a log backend: `(tables, sink name)`.
pub type WrapTables =
    Arc<dyn Fn(Box<dyn table::TableSink>, &str) -> Box<dyn table::TableSink> + Send + Sync>;

/// What building a sink needs of its pipeline.
pub struct SinkContext<'a> {
    /// The pipeline.
    pub pipeline: &'a PipelineSpec,
    /// Its log (on JetStream: the pipeline's view; each runner gets its partition's).
    pub log: &'a Log,
    /// Its encoder.
    pub encoder: &'a Arc<Encoder>,
    /// Its dead letters' storage.
    pub dead_letters: &'a Storage,
    /// Cancelled when shutdown's grace period ends.
    pub abandon: &'a tokio_util::sync::CancellationToken,
    /// The sink's health, shared by its runners.
    pub health: Arc<SinkHealth>,
    /// Where its runners read.
    pub placement: Placement,
}

/// Makes a sink's runner on the log it is given: the file log (`None`) or
/// a JetStream partition.
pub type MakeTask = Arc<dyn Fn(Log, Option<u32>) -> SinkTask + Send + Sync>;

/// A sink ready to run.
pub struct BuiltSink {
    /// Makes its runner(s).
    pub make: MakeTask,
    /// The storage the admin API probes, for sinks that write to storage.
    pub probe: Option<Storage>,
}

/// Builds `spec`'s sink; starts nothing.
pub fn build(spec: &SinkSpec, ctx: &SinkContext<'_>) -> Result<BuiltSink, SinkError> {
    let probe = match spec.kind().location() {
        Some(location) => Some(Storage::new(location, spec.kind().storage_options())?),
        None => None,
    };
    let make = match plan(spec, ctx.pipeline)? {
        Plan::Https(h) => task::https(h, ctx)?,
        Plan::Tables(tables) => runner::make(spec.kind().name(), tables, ctx),
    };
    Ok(BuiltSink { make, probe })
}

/// Lowers the calling blocking-pool thread's scheduling priority (nice +10)
/// before CPU-heavy conversion. Acknowledging webhooks is the latency users
/// see, so it wins the CPU; conversion takes what is left, and the durable
/// buffer absorbs the difference (a full buffer answers 503). Linux applies
/// `setpriority(PRIO_PROCESS, 0, …)` to the calling thread only.
pub(crate) fn background_priority() {
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
