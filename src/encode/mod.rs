//! Events → one Arrow record batch per flush, plus the dead letters.
//!
//! Each event's record (the JSON value at `record_path`) is decoded by
//! arrow-json against the declared schema; the metadata columns `_event_id`,
//! `_received_at`, `_received_date` and `_source` are added. The fast path
//! decodes the whole flush at once; if that fails, every record is decoded on
//! its own so one bad event becomes a dead letter with its reason and never
//! holds back the rest of its batch. A number arrow-json would store as
//! another number (a fraction in an integer column) is a dead letter too
//! ([`exact`]). Nothing here panics on input.

pub mod dead_letter;
pub mod exact;
pub mod fast;
pub mod infer;
pub mod pointer;

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, Date32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_json::ReaderBuilder;
use arrow_schema::{ArrowError, SchemaRef};
use uuid::Uuid;

use crate::event::Event;
use crate::schema;
pub use dead_letter::DeadLetter;

/// Microseconds in a day, for `_received_date`.
const US_PER_DAY: i64 = 86_400_000_000;

/// Converts events of one pipeline into rows of its table.
#[derive(Debug, Clone)]
pub struct Encoder {
    record_schema: SchemaRef,
    table_schema: SchemaRef,
    record_path: Vec<String>,
    source: String,
    /// `schema = "infer"`: grow the schema from each flush, keep what fits
    /// no column in `_extra` ([`infer`]).
    infer: bool,
    /// A declared column holds JSON text ([`infer::JSON_TEXT`]).
    json_text: bool,
    /// `[connections]`: rows carry `_connection`.
    connections: bool,
}

/// What one flush produced.
#[derive(Debug)]
pub struct Encoded {
    /// The rows that fit the schema (possibly none), table schema.
    pub batch: RecordBatch,
    /// The events that did not, each with its reason.
    pub dead: Vec<DeadLetter>,
    /// With inference: the record schema grown by this flush's new fields,
    /// for the encoder of the next flush.
    pub grown: Option<SchemaRef>,
}

impl Encoder {
    /// An encoder for records of `record_schema`, found at the JSON pointer
    /// `record_path` in each event, labelled `source` in `_source`.
    pub fn new(record_schema: SchemaRef, record_path: &str, source: &str) -> Self {
        Self {
            table_schema: Arc::new(schema::table_schema(&record_schema, false)),
            json_text: infer::has_json_text(record_schema.fields()),
            record_schema,
            record_path: pointer::tokens(record_path),
            source: source.to_string(),
            infer: false,
            connections: false,
        }
    }

    /// This encoder for a pipeline with `[connections]` (rows then carry
    /// `_connection`), or not.
    pub fn with_connections(mut self, connections: bool) -> Self {
        self.connections = connections;
        let record_schema = self.record_schema.clone();
        self.table_schema = Arc::new(schema::table_schema(&record_schema, connections));
        self
    }

    /// This encoder, inferring the schema (`schema = "infer"`: the record
    /// schema then ends with `_extra`), or not.
    pub fn inferring(mut self, infer: bool) -> Self {
        self.infer = infer;
        let record_schema = self.record_schema.clone();
        self.with_record_schema(record_schema)
    }

    /// The same encoder for records of another schema (a Delta table's
    /// columns, a grown or reloaded schema).
    pub fn with_record_schema(&self, record_schema: SchemaRef) -> Self {
        let record_schema = if self.infer {
            infer::with_extra(&record_schema)
        } else {
            record_schema
        };
        Self {
            table_schema: Arc::new(schema::table_schema(&record_schema, self.connections)),
            json_text: infer::has_json_text(record_schema.fields()),
            record_schema,
            record_path: self.record_path.clone(),
            source: self.source.clone(),
            infer: self.infer,
            connections: self.connections,
        }
    }

    /// Whether this encoder infers the schema.
    pub fn infers(&self) -> bool {
        self.infer
    }

    /// The record columns (without the metadata columns).
    pub fn record_schema(&self) -> &SchemaRef {
        &self.record_schema
    }

    /// The schema of the batches this encoder returns.
    pub fn table_schema(&self) -> &SchemaRef {
        &self.table_schema
    }

    /// Encodes `events`; every event ends either as a row or as a dead letter,
    /// except source-state records, which are skipped.
    pub fn encode(&self, events: &[Event]) -> Encoded {
        let mut dead = Vec::new();
        let mut good: Vec<&Event> = Vec::with_capacity(events.len());
        let mut records: Vec<&[u8]> = Vec::with_capacity(events.len());
        for event in events.iter().filter(|e| !e.is_state()) {
            match pointer::record(&event.payload, &self.record_path) {
                Ok(record) => {
                    good.push(event);
                    records.push(record);
                }
                Err(reason) => dead.push(DeadLetter::new(event, reason.to_string())),
            }
        }
        if self.infer || self.json_text {
            return self.encode_values(good, &records, dead);
        }
        let columns = match self.decode(&records) {
            Ok(batch) => batch,
            Err(_) => {
                // Find the culprits one by one; the others still become rows.
                let mut rows = Vec::with_capacity(records.len());
                let mut kept = Vec::with_capacity(records.len());
                for (event, record) in good.iter().zip(&records) {
                    match self.decode(std::slice::from_ref(record)) {
                        Ok(row) => {
                            rows.push(row);
                            kept.push(*event);
                        }
                        Err(e) => dead.push(DeadLetter::new(event, describe(&e))),
                    }
                }
                good = kept;
                arrow_select::concat::concat_batches(&self.record_schema, &rows)
                    .expect("rows decoded with one schema concatenate")
            }
        };
        Encoded {
            batch: self.with_metadata(&good, columns),
            dead,
            grown: None,
        }
    }

    /// The path of inferred schemas and of declared JSON-text columns: each
    /// record is parsed, the schema grows from the whole flush (inferring),
    /// and every record is fitted to it before decoding.
    fn encode_values(
        &self,
        events: Vec<&Event>,
        records: &[&[u8]],
        mut dead: Vec<DeadLetter>,
    ) -> Encoded {
        // A settled schema: the whole flush as it is, in one pass per record
        // (what the check below and the decoder would do in two).
        if self.infer && !self.json_text {
            if let Some(columns) = fast::decode_fitting(&self.record_schema, records) {
                return Encoded {
                    batch: self.with_metadata(&events, columns),
                    dead,
                    grown: None,
                };
            }
        }
        // A record that fits the schema as it is is decoded from its bytes;
        // only the others are parsed into a tree, grow the schema and are
        // fitted (for a settled schema: none).
        let mut good: Vec<&Event> = Vec::with_capacity(events.len());
        let mut rows: Vec<Row> = Vec::with_capacity(events.len());
        let as_is = infer::AsIs::new(&self.record_schema);
        for (event, record) in events.into_iter().zip(records) {
            if !self.json_text && as_is.fits(record) {
                good.push(event);
                rows.push(Row::AsIs(record));
                continue;
            }
            match serde_json::from_slice(record) {
                Ok(serde_json::Value::Object(map)) => {
                    good.push(event);
                    rows.push(Row::Fitted(map, None));
                }
                Ok(_) => dead.push(DeadLetter::new(event, "the record is not a JSON object")),
                Err(e) => dead.push(DeadLetter::new(
                    event,
                    format!("the record is not JSON: {e}"),
                )),
            }
        }
        // Only records that did not fit can hold new fields, so observing
        // them alone decides the same types as observing all.
        let grown = if self.infer {
            let mut shape = infer::Shape::default();
            for row in &rows {
                if let Row::Fitted(map, _) = row {
                    shape.observe_object(map, 0);
                }
            }
            infer::grow_by(&self.record_schema, &shape)
        } else {
            None
        };
        if grown.is_some() {
            // A record that fit the old schema as it is may not fit the grown
            // one (`"b": {}` skipped, then `"b"` inferred as text): fit it too.
            let mut kept = Vec::with_capacity(good.len());
            let mut fitted = Vec::with_capacity(rows.len());
            for (event, row) in good.into_iter().zip(rows) {
                match row {
                    Row::AsIs(bytes) => match serde_json::from_slice(bytes) {
                        Ok(serde_json::Value::Object(map)) => {
                            kept.push(event);
                            fitted.push(Row::Fitted(map, None));
                        }
                        _ => dead.push(DeadLetter::new(event, "the record is not a JSON object")),
                    },
                    row => {
                        kept.push(event);
                        fitted.push(row);
                    }
                }
            }
            good = kept;
            rows = fitted;
        }
        let grown_encoder = grown.clone().map(|s| self.with_record_schema(s));
        let this = grown_encoder.as_ref().unwrap_or(self);
        let misfit = if self.infer {
            infer::Misfit::ToExtra
        } else {
            infer::Misfit::Leave
        };
        for row in &mut rows {
            if let Row::Fitted(map, extra_text) = row {
                let mut extra = serde_json::Map::new();
                infer::fit(map, &this.record_schema, misfit, &mut extra);
                *extra_text =
                    (!extra.is_empty()).then(|| serde_json::Value::Object(extra).to_string());
            }
        }
        let columns = match this.decode_rows(&rows) {
            Ok(batch) => batch,
            Err(_) => {
                let mut batches = Vec::with_capacity(rows.len());
                let mut kept = Vec::with_capacity(rows.len());
                let mut kept_rows = Vec::with_capacity(rows.len());
                for (event, row) in good.iter().zip(rows) {
                    match this.decode_rows(std::slice::from_ref(&row)) {
                        Ok(batch) => {
                            batches.push(batch);
                            kept.push(*event);
                            kept_rows.push(row);
                        }
                        Err(e) => dead.push(DeadLetter::new(event, describe(&e))),
                    }
                }
                good = kept;
                rows = kept_rows;
                arrow_select::concat::concat_batches(&this.record_schema, &batches)
                    .expect("rows decoded with one schema concatenate")
            }
        };
        let columns = match this.record_schema.index_of(infer::EXTRA_COLUMN) {
            Ok(i) if this.infer => {
                let extras: StringArray = rows
                    .iter()
                    .map(|row| match row {
                        Row::Fitted(_, extra) => extra.as_deref(),
                        Row::AsIs(_) => None,
                    })
                    .collect();
                let mut arrays = columns.columns().to_vec();
                arrays[i] = Arc::new(extras);
                RecordBatch::try_new(this.record_schema.clone(), arrays)
                    .expect("the _extra column is text")
            }
            _ => columns,
        };
        Encoded {
            batch: this.with_metadata(&good, columns),
            dead,
            grown,
        }
    }

    /// Decodes rows in order, each from its bytes or its fitted tree.
    fn decode_rows(&self, rows: &[Row<'_>]) -> Result<RecordBatch, ArrowError> {
        if exact::has_numbers(self.record_schema.fields()) {
            for row in rows {
                // A record read as it is was checked exactly by `AsIs`.
                if let Row::Fitted(map, _) = row {
                    if let Some(why) = exact::misfit(self.record_schema.fields(), map) {
                        return Err(ArrowError::JsonError(why));
                    }
                }
            }
        }
        let mut decoder = ReaderBuilder::new(self.record_schema.clone())
            .with_batch_size(rows.len().max(1))
            .build_decoder()?;
        for row in rows {
            match row {
                Row::AsIs(bytes) => {
                    let read = decoder.decode(bytes)?;
                    if read != bytes.len() || decoder.has_partial_record() {
                        return Err(ArrowError::JsonError(
                            "the record is not one complete JSON object".into(),
                        ));
                    }
                }
                Row::Fitted(map, _) => decoder.serialize(std::slice::from_ref(map))?,
            }
        }
        Ok(decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.record_schema.clone())))
    }

    /// Decodes records that are all expected to fit.
    fn decode(&self, records: &[&[u8]]) -> Result<RecordBatch, ArrowError> {
        if let Some(batch) = fast::decode(&self.record_schema, records) {
            return Ok(batch);
        }
        if exact::has_numbers(self.record_schema.fields()) {
            for record in records {
                if let Some(why) = exact::misfit_in(self.record_schema.fields(), record) {
                    return Err(ArrowError::JsonError(why));
                }
            }
        }
        let mut decoder = ReaderBuilder::new(self.record_schema.clone())
            .with_batch_size(records.len().max(1))
            .build_decoder()?;
        for record in records {
            let read = decoder.decode(record)?;
            if read != record.len() || decoder.has_partial_record() {
                return Err(ArrowError::JsonError(
                    "the record is not one complete JSON object".into(),
                ));
            }
        }
        Ok(decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.record_schema.clone())))
    }

    fn with_metadata(&self, events: &[&Event], columns: RecordBatch) -> RecordBatch {
        let mut ids = StringBuilder::with_capacity(
            events.len(),
            events.len() * uuid::fmt::Hyphenated::LENGTH,
        );
        let mut text = Uuid::encode_buffer();
        for e in events {
            ids.append_value(e.id.hyphenated().encode_lower(&mut text));
        }
        let ids = ids.finish();
        let at =
            TimestampMicrosecondArray::from_iter_values(events.iter().map(|e| e.received_at_us))
                .with_timezone("UTC");
        let date = Date32Array::from_iter_values(
            events
                .iter()
                .map(|e| e.received_at_us.div_euclid(US_PER_DAY) as i32),
        );
        let source =
            StringArray::from_iter_values(std::iter::repeat_n(self.source.as_str(), events.len()));
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(ids),
            Arc::new(at),
            Arc::new(date),
            Arc::new(source),
        ];
        if self.connections {
            // Every event of a connections pipeline is received for one.
            arrays.push(Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| e.connection.as_deref().unwrap_or("")),
            )));
        }
        arrays.extend(columns.columns().iter().cloned());
        RecordBatch::try_new(self.table_schema.clone(), arrays)
            .expect("metadata and decoded columns match the table schema")
    }
}

/// One record of an inferred (or JSON-text) flush on its way to the decoder.
enum Row<'a> {
    /// Fits the schema as it is: decoded from its bytes.
    AsIs(&'a [u8]),
    /// Parsed and fitted; its `_extra` text, if anything did not fit.
    Fitted(serde_json::Map<String, serde_json::Value>, Option<String>),
}

/// A dead-letter reason from an arrow-json error, without the crate's prefix.
fn describe(e: &ArrowError) -> String {
    let text = e.to_string();
    let text = text.strip_prefix("Json error: ").unwrap_or(&text);
    format!("does not fit the schema: {text}")
}

#[cfg(test)]
mod tests;
