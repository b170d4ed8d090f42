//! Dead letters fed back into their pipeline (`tributary replay`), after the
//! user fixed the schema or the receiver and restarted.
//!
//! A dead letter belongs to one sink: the others stored the event fine. So a
//! replayed event goes into the log wrapped in a state record addressed to the
//! sinks that dead-lettered it ([`crate::event::wrap`]; the sinks unwrap it
//! with [`crate::event::unwrap_for`]). The wrapper is self-contained, so a
//! restart between two records cannot misroute one, and a replay append ends
//! with a state record, as poll and dedupe logs require.
//!
//! A dead-letter file is deleted (or rewritten without the replayed rows) only
//! after the log acknowledged the append holding its rows; a crash in between
//! replays those rows again next time. Each replay record has an id of its
//! own, derived from the dead-letter file, the sink and the event's id
//! ([`record_id`]): every record of one replay is told apart (JetStream keys
//! its `Nats-Msg-Id` on it, so six dead letters are six messages), a replay
//! of the same file after a crash is the same message again (stored once
//! within the stream's duplicate window), and a dead letter written anew by a
//! later flush, in another file, is replayed again. The replayed row keeps the
//! event's original `_event_id`.

use std::collections::HashSet;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, BooleanArray, RecordBatch};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::event::{record_id, wrap, Event};
use crate::log::Appender;
use crate::sink::{files, Storage};

/// Which dead letters to replay.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Filter {
    /// Only those that arrived at or after this time (µs since the epoch).
    pub since_us: Option<i64>,
    /// Only those whose reason contains this text.
    pub reason: Option<String>,
}

/// How far a replay got.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// Dead-letter files found.
    pub files: usize,
    /// Files done so far (replayed, or nothing in them matched).
    pub files_done: usize,
    /// Dead letters re-appended durably.
    pub replayed: usize,
    /// Dead letters left in place (filtered out, an unknown sink, unreadable).
    pub kept: usize,
    /// Problems, one line each.
    pub problems: Vec<String>,
}

/// Why a replay stopped (files already replayed stay replayed).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The dead-letter store cannot be listed.
    #[error("cannot list the dead letters in {store}")]
    List {
        /// The store.
        store: String,
        /// What storage said.
        source: crate::sink::StorageError,
    },
    /// A file cannot be read.
    #[error("cannot read dead-letter file {name}")]
    Get {
        /// The file.
        name: String,
        /// What storage said.
        source: crate::sink::StorageError,
    },
    /// The log refused the replayed events.
    #[error("cannot append the replayed events to the log")]
    Append(#[source] crate::log::AppendError),
    /// A fully replayed file cannot be deleted.
    #[error("replayed {name} but cannot delete it")]
    Delete {
        /// The file.
        name: String,
        /// What storage said.
        source: crate::sink::StorageError,
    },
    /// The rest of a partly replayed file cannot be encoded.
    #[error("cannot rewrite {name}")]
    Encode {
        /// The file.
        name: String,
        /// What parquet said.
        source: parquet::errors::ParquetError,
    },
    /// The rest of a partly replayed file cannot be written.
    #[error("replayed part of {name} but cannot rewrite it")]
    Rewrite {
        /// The file.
        name: String,
        /// What storage said.
        source: crate::sink::StorageError,
    },
}

/// Not a dead-letter file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotDeadLetters {
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// Replays the dead letters of one pipeline stored in `storage` (its
/// `<lake>/_dead_letters/<pipeline>/`) into its log; `sinks` are the
/// pipeline's current sinks. Calls `progress` after each file.
pub async fn run(
    storage: &Storage,
    sinks: &[String],
    appender: &Appender,
    filter: &Filter,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Progress, ReplayError> {
    let mut names: Vec<String> = storage
        .list()
        .await
        .map_err(|source| ReplayError::List {
            store: storage.to_string(),
            source,
        })?
        .into_iter()
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    names.sort();
    let mut done = Progress {
        files: names.len(),
        ..Default::default()
    };
    progress(&done);
    let known: HashSet<&str> = sinks.iter().map(String::as_str).collect();
    for name in &names {
        let bytes = storage.get(name).await.map_err(|source| ReplayError::Get {
            name: name.clone(),
            source,
        })?;
        let batch = match read(bytes) {
            Ok(batch) => batch,
            Err(e) => {
                done.problems.push(format!(
                    "{name}: not a dead-letter file ({e}); left in place"
                ));
                done.files_done += 1;
                progress(&done);
                continue;
            }
        };
        let (events, replay_mask, problems) = select(name, &batch, filter, &known);
        done.problems
            .extend(problems.into_iter().map(|p| format!("{name}: {p}")));
        let replayed = events.len();
        if replayed > 0 {
            appender.append(events).await.map_err(ReplayError::Append)?;
            let keep_mask: BooleanArray = replay_mask.iter().map(|r| Some(!r)).collect();
            let keep = arrow_select::filter::filter_record_batch(&batch, &keep_mask)
                .expect("the mask fits the batch");
            if keep.num_rows() == 0 {
                storage
                    .delete(name)
                    .await
                    .map_err(|source| ReplayError::Delete {
                        name: name.clone(),
                        source,
                    })?;
            } else {
                let body =
                    files::serialise(&keep, &files::writer_properties()).map_err(|source| {
                        ReplayError::Encode {
                            name: name.clone(),
                            source,
                        }
                    })?;
                storage
                    .replace(name, body)
                    .await
                    .map_err(|source| ReplayError::Rewrite {
                        name: name.clone(),
                        source,
                    })?;
            }
        }
        done.replayed += replayed;
        done.kept += batch.num_rows() - replayed;
        done.files_done += 1;
        progress(&done);
    }
    Ok(done)
}

/// The rows of a dead-letter file.
pub(crate) fn read(bytes: Bytes) -> Result<RecordBatch, NotDeadLetters> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).and_then(|b| b.build())?;
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>()?;
    let schema = crate::encode::dead_letter::schema();
    Ok(arrow_select::concat::concat_batches(&schema, &batches)?)
}

/// The replay records for the rows of `batch` that match, a mask of those
/// rows, and why others were kept.
fn select(
    file: &str,
    batch: &RecordBatch,
    filter: &Filter,
    known: &HashSet<&str>,
) -> (Vec<Event>, Vec<bool>, Vec<String>) {
    let column = |name: &str| batch.column_by_name(name).map(|c| c.as_string::<i32>());
    let (Some(ids), Some(sinks), Some(reasons), Some(raws)) = (
        column("_event_id"),
        column("sink"),
        column("reason"),
        column("raw"),
    ) else {
        return (
            Vec::new(),
            vec![false; batch.num_rows()],
            vec!["columns missing; left in place".into()],
        );
    };
    let Some(times) = batch
        .column_by_name("_received_at")
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
    else {
        return (
            Vec::new(),
            vec![false; batch.num_rows()],
            vec!["_received_at missing; left in place".into()],
        );
    };
    // Written since routing: the header value the event came with.
    let topics = column("topic");
    // Written since connections: the connection the event came from.
    let connections = column("connection");
    let mut events = Vec::new();
    let mut mask = Vec::with_capacity(batch.num_rows());
    let mut problems = Vec::new();
    for row in 0..batch.num_rows() {
        let (at, sink, reason) = (times.value(row), sinks.value(row), reasons.value(row));
        let wanted = filter.since_us.is_none_or(|since| at >= since)
            && filter.reason.as_deref().is_none_or(|r| reason.contains(r));
        if !wanted {
            mask.push(false);
            continue;
        }
        if !known.contains(sink) {
            problems.push(format!(
                "row {row}: sink {sink} is not in the pipeline any more; left in place"
            ));
            mask.push(false);
            continue;
        }
        let parsed = Uuid::parse_str(ids.value(row))
            .map_err(|e| e.to_string())
            .and_then(|id| {
                serde_json::from_str::<&RawValue>(raws.value(row))
                    .map(|raw| (id, raw))
                    .map_err(|e| e.to_string())
            });
        match parsed {
            Ok((id, raw)) => {
                let topic = topics.filter(|t| t.is_valid(row)).map(|t| t.value(row));
                let connection = connections
                    .filter(|c| c.is_valid(row))
                    .map(|c| c.value(row));
                let record = record_id(file, sink, id);
                events.push(wrap(record, id, at, raw, (topic, connection), &[sink]));
                mask.push(true);
            }
            Err(e) => {
                problems.push(format!("row {row}: unreadable ({e}); left in place"));
                mask.push(false);
            }
        }
    }
    (events, mask, problems)
}
