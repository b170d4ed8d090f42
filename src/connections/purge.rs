//! `DELETE /api/pipelines/{p}/connections/{id}?purge=true`: offboarding and
//! data-deletion requests in one call. In order:
//!
//! 1. Every sink must be able to delete one connection's rows (a Delta
//!    table can; a Parquet sink only when partitioned by `_connection`),
//!    checked before anything changes: otherwise the purge is refused with
//!    the fix.
//! 2. The connection is removed (its tombstone stays, so its webhook URL
//!    answers 410 and no poller runs it), if it was not already.
//! 3. Every sink must have written everything the log held at that moment
//!    (so no row of it is still on its way); a purge waits up to
//!    [`SETTLE`] for that, then answers 503 to be retried.
//! 4. Each sink deletes the rows (Delta: one delete commit per table,
//!    counted first; Parquet: the `_connection=<id>` directories), then its
//!    dead letters are cut from the dead-letter files, and its cursor copy
//!    removed.
//!
//! A purge may be repeated: each step finds nothing left the second time.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::{Array, BooleanArray, RecordBatch};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use crate::config::PipelineSpec;
use crate::log::Log;
use crate::sink::table::Purged;
use crate::sink::{files, Plan, SinkError, Storage};

/// How long a purge waits for the sinks to write what the log holds.
pub const SETTLE: Duration = Duration::from_secs(60);

/// What a purge deleted.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Per sink: rows (Delta) or files (Parquet) deleted.
    pub sinks: BTreeMap<String, Purged>,
    /// Dead letters deleted.
    pub dead_letters: u64,
    /// Whether the connection's cursor copy was deleted.
    pub cursor: bool,
}

/// Why a purge did not finish.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// A sink cannot delete one connection's rows; the fix.
    #[error("{0}")]
    Refused(String),
    /// The sinks did not catch up with the log in time.
    #[error("the sinks have not yet written every event of the connection (sink {sink} is at offset {committed} of {end}); the connection is removed, retry the purge shortly")]
    Behind {
        /// The sink behind.
        sink: String,
        /// Its committed offset.
        committed: u64,
        /// The log's end when the purge began.
        end: u64,
    },
    /// A sink's deletion failed.
    #[error("sink {sink}")]
    Sink {
        /// The sink.
        sink: String,
        /// What failed.
        #[source]
        source: SinkError,
    },
    /// The dead letters could not be read or rewritten.
    #[error("the dead letters: {0}")]
    DeadLetters(String),
    /// The cursor kept in the cluster could not be deleted.
    #[error("the connection's cursor in JetStream: {0}")]
    Cursor(String),
}

/// Why `pipeline` cannot purge one connection's rows, if it cannot.
pub fn refusal(pipeline: &PipelineSpec) -> Option<String> {
    for sink in &pipeline.sinks {
        match crate::sink::plan(sink, pipeline) {
            Ok(Plan::Tables(tables)) => {
                if let Err(why) = tables.can_purge() {
                    return Some(why);
                }
            }
            // Deliveries are the receiver's to delete.
            Ok(Plan::Https(_)) => {}
            Err(e) => return Some(crate::error::chain(&e)),
        }
    }
    None
}

/// Deletes connection `id`'s rows, dead letters and cursor (the connection
/// is removed already); `dir` is the pipeline's data directory. On a
/// JetStream log (`cluster`: its status), the log's end and the sinks'
/// progress are read once the status was refreshed after the removal, and
/// the cursor is deleted from the cluster.
pub async fn purge(
    pipeline: &PipelineSpec,
    (log, dead_letters, cluster): (&Log, &Storage, Option<&dyn crate::log::LogStatus>),
    dir: &Path,
    id: &str,
) -> Result<Report, PurgeError> {
    if let Some(cluster) = cluster {
        tokio::time::sleep(cluster.refresh()).await;
    }
    settle(pipeline, log).await?;
    let mut report = Report::default();
    for sink in &pipeline.sinks {
        let failed = |source| PurgeError::Sink {
            sink: sink.name().to_string(),
            source,
        };
        let plan = crate::sink::plan(sink, pipeline).map_err(|e| failed(SinkError::from(e)))?;
        if let Plan::Tables(tables) = plan {
            let purged = tables.purge(id).await.map_err(failed)?;
            report.sinks.insert(sink.name().to_string(), purged);
        }
    }
    report.dead_letters = purge_dead_letters(dead_letters, id).await?;
    let cursor = dir.join("connections").join(id);
    report.cursor = tokio::fs::remove_dir_all(&cursor).await.is_ok();
    if let Some(cluster) = cluster {
        report.cursor |= cluster
            .forget_connection(id)
            .await
            .map_err(PurgeError::Cursor)?;
    }
    Ok(report)
}

/// Waits until every sink has written what the log holds now.
async fn settle(pipeline: &PipelineSpec, log: &Log) -> Result<(), PurgeError> {
    let sinks: Vec<&str> = pipeline.sinks.iter().map(|s| s.name()).collect();
    log.written(&sinks, SETTLE)
        .await
        .map_err(|behind| PurgeError::Behind {
            sink: behind.sink,
            committed: behind.committed,
            end: behind.end,
        })
}

/// Cuts connection `id`'s rows from every dead-letter file; returns how many.
async fn purge_dead_letters(storage: &Storage, id: &str) -> Result<u64, PurgeError> {
    let failed = |e: &dyn std::fmt::Display| PurgeError::DeadLetters(e.to_string());
    let mut removed = 0;
    let names = storage.list().await.map_err(|e| failed(&e))?;
    for name in names.iter().filter(|n| n.ends_with(".parquet")) {
        let bytes = storage.get(name).await.map_err(|e| failed(&e))?;
        let Some(batch) = read(bytes) else { continue };
        // Files written before connections have no such column.
        let Some(connections) = batch.column_by_name("connection") else {
            continue;
        };
        let connections = connections.as_string::<i32>();
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|row| Some(connections.is_null(row) || connections.value(row) != id))
            .collect();
        let kept = keep.true_count();
        if kept == batch.num_rows() {
            continue;
        }
        removed += (batch.num_rows() - kept) as u64;
        if kept == 0 {
            storage.delete(name).await.map_err(|e| failed(&e))?;
        } else {
            let keep = arrow_select::filter::filter_record_batch(&batch, &keep)
                .expect("the mask fits the batch");
            let body =
                files::serialise(&keep, &files::writer_properties()).map_err(|e| failed(&e))?;
            storage.replace(name, body).await.map_err(|e| failed(&e))?;
        }
    }
    Ok(removed)
}

/// A dead-letter file's rows, if it is one.
fn read(bytes: Bytes) -> Option<RecordBatch> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .ok()?;
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().ok()?;
    let schema = batches.first()?.schema();
    arrow_select::concat::concat_batches(&schema, &batches).ok()
}
