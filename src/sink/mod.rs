//! Sinks: where a pipeline's events end up. A runner per sink reads the
//! pipeline's log from the sink's own committed offset, gathers a batch
//! ([`batch`]), encodes it, writes it to its tables ([`table`]: Parquet
//! files, [`delta`] tables) and only then commits the offset. A Delta table
//! is its own progress record. The HTTPS sink ([`https`]) posts each event.
//! [`table_sink`] is the one place that maps a sink kind to its code.

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

use crate::config::{PipelineSpec, SinkSpec};

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
            SinkError::Setup { .. } | SinkError::SchemaFile { .. } => ErrorKind::Config,
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

/// The table sink a sink spec describes; `None` for the HTTPS sink, which
/// posts events instead of writing tables. Adding a kind of table sink means
/// one arm here and an implementation of [`table::TableSink`].
pub fn table_sink(
    spec: &SinkSpec,
    pipeline: &PipelineSpec,
) -> Option<Result<Box<dyn table::TableSink>, StorageError>> {
    let routed = pipeline.route.is_some();
    match spec {
        SinkSpec::Parquet(p) => Some(
            parquet::ParquetSink::new(p, routed).map(|s| Box::new(s) as Box<dyn table::TableSink>),
        ),
        SinkSpec::Delta(d) => Some(Ok(Box::new(delta::DeltaTables::new(
            &pipeline.name,
            d,
            routed,
        )))),
        SinkSpec::Https(_) => None,
    }
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
