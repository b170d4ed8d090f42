//! Dead letters: events that could not become rows, kept with the reason and
//! the raw bytes as Parquet rows under `<lake>/_dead_letters/<pipeline>/`,
//! outside every table's directory so table globs never see them.

use std::sync::Arc;

use arrow_array::{RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use uuid::Uuid;

use crate::event::Event;

/// One event that did not fit, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The event's id.
    pub id: Uuid,
    /// When it arrived, µs since the epoch.
    pub received_at_us: i64,
    /// Why it could not be converted, for a person to read.
    pub reason: String,
    /// The event's original bytes.
    pub raw: bytes::Bytes,
    /// The routing value it was received with (a request header's), if any.
    pub topic: Option<std::sync::Arc<str>>,
    /// The connection it came from, in a pipeline with `[connections]`.
    pub connection: Option<std::sync::Arc<str>>,
}

impl DeadLetter {
    /// A dead letter for `event`.
    pub fn new(event: &Event, reason: impl Into<String>) -> Self {
        Self {
            id: event.id,
            received_at_us: event.received_at_us,
            reason: reason.into(),
            raw: event.payload.clone(),
            topic: event.topic.clone(),
            connection: event.connection.clone(),
        }
    }
}

/// Columns of the dead-letter files.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("_event_id", DataType::Utf8, false),
        Field::new(
            "_received_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("sink", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, true),
        Field::new("connection", DataType::Utf8, true),
    ]))
}

/// The rows for `dead`, written by sink `sink` of `pipeline`.
pub fn batch(pipeline: &str, sink: &str, dead: &[DeadLetter]) -> RecordBatch {
    let n = dead.len();
    let columns: Vec<arrow_array::ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            dead.iter().map(|d| d.id.hyphenated().to_string()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(dead.iter().map(|d| d.received_at_us))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            pipeline, n,
        ))),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(sink, n))),
        Arc::new(StringArray::from_iter_values(
            dead.iter().map(|d| d.reason.as_str()),
        )),
        // Log payloads passed JSON validation at ingest, so they are UTF-8; a
        // lossy conversion only guards the invariant.
        Arc::new(StringArray::from_iter_values(
            dead.iter().map(|d| String::from_utf8_lossy(&d.raw)),
        )),
        Arc::new(StringArray::from_iter(
            dead.iter().map(|d| d.topic.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            dead.iter().map(|d| d.connection.as_deref()),
        )),
    ];
    RecordBatch::try_new(schema(), columns).expect("columns match the dead-letter schema")
}
