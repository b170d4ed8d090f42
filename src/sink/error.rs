//! Why a sink runner stopped or a flush failed, one type for every kind,
//! and how a runner reacts to each ([`Classify`]): retry, dead-letter,
//! or stop.

use std::io;

use super::{delta, https, StorageError};
use crate::error::{Classify, ErrorKind};

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
