//! A flush's conversion, on the blocking pool: each table's events to an
//! Arrow batch, with the rows no write could store set aside as dead letters.

use std::sync::Arc;

use crate::encode::{Encoded, Encoder};
use crate::event::Event;
use crate::sink::{partition, SinkError};

/// The conversion of one table's share of a flush.
pub(super) struct Job {
    pub name: String,
    pub encoder: Arc<Encoder>,
    pub events: Vec<Event>,
    pub partition_by: Vec<String>,
    pub merge_on: Option<Vec<String>>,
}

/// Encodes each job's events, setting aside rows that cannot be written.
pub(super) fn encode(jobs: Vec<Job>) -> Result<Vec<(String, Encoded)>, SinkError> {
    crate::sink::background_priority();
    jobs.into_iter()
        .map(|job| {
            let mut encoded = job.encoder.encode(&job.events);
            set_aside_unfit_rows(
                &mut encoded,
                &job.events,
                &job.partition_by,
                job.merge_on.as_deref(),
            )?;
            Ok((job.name, encoded))
        })
        .collect()
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
        for (row, why) in crate::sink::delta::merge::null_key_rows(&encoded.batch, keys) {
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
