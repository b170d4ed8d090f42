//! One inferred schema per table for all its writers on a JetStream log.
//!
//! With `schema = "infer"` each partition's writer infers columns from its
//! own events, and two writers could type a new column differently. They
//! agree through a key in the `tributary_progress` bucket,
//! `schema.<pipeline>.<sink>.<table>`, holding the table's record schema
//! (Arrow's JSON form): a writer that grows its schema folds it into the
//! key's with a revision-checked update ([`crate::encode::infer::merge`]: the
//! first to record a column fixes its type), and encodes with the result. A
//! writer opening the table starts from the key's schema.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::future::BoxFuture;
use tracing::info;

use crate::encode::{infer, Encoder};
use crate::sink::table::{Opened, ReadError, SqlTable, Table, TableSink, Written, UNROUTED};
use crate::sink::SinkError;
use deltalake::datafusion::prelude::SessionContext;

/// A table sink whose tables agree on their inferred schemas (see the module notes).
pub struct AgreedSchemas {
    /// The sink itself.
    pub inner: Box<dyn TableSink>,
    /// The progress bucket.
    pub kv: kv::Store,
    /// `schema.<pipeline>.<sink>`.
    pub prefix: String,
}

impl AgreedSchemas {
    /// `inner`'s tables, agreeing through `kv` under `pipeline` and `sink`.
    pub fn new(inner: Box<dyn TableSink>, kv: kv::Store, pipeline: &str, sink: &str) -> Self {
        let prefix = format!(
            "schema.{}.{}",
            crate::log::jetstream::key_safe(pipeline),
            crate::log::jetstream::key_safe(sink)
        );
        Self { inner, kv, prefix }
    }
}

fn shared(key: &str, message: impl std::fmt::Display) -> SinkError {
    SinkError::SharedSchema {
        key: key.to_string(),
        message: message.to_string(),
    }
}

/// The schema under `key` and its revision (0: none yet).
async fn load(kv: &kv::Store, key: &str) -> Result<(Option<SchemaRef>, u64), SinkError> {
    match kv.entry(key).await.map_err(|e| shared(key, e))? {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let schema: Schema =
                serde_json::from_slice(&entry.value).map_err(|e| shared(key, e))?;
            Ok((Some(Arc::new(schema)), entry.revision))
        }
        Some(entry) => Ok((None, entry.revision)),
        None => Ok((None, 0)),
    }
}

impl TableSink for AgreedSchemas {
    fn open<'a>(
        &'a self,
        name: &'a str,
        encoder: &'a Encoder,
        start: u64,
    ) -> BoxFuture<'a, Result<Opened, SinkError>> {
        Box::pin(async move {
            let mut opened = self.inner.open(name, encoder, start).await?;
            if !encoder.infers() {
                return Ok(opened);
            }
            let table = if name == UNROUTED { "_" } else { name };
            let key = format!("{}.{}", self.prefix, crate::log::jetstream::key_safe(table));
            if let (Some(agreed), _) = load(&self.kv, &key).await? {
                let own = opened.encoder.record_schema();
                let schema = infer::merge(&agreed, own).unwrap_or(agreed);
                info!(key = %key, columns = schema.fields().len(), "Starting from the table's shared schema.");
                opened.encoder = opened.encoder.with_record_schema(schema);
            }
            opened.table = Box::new(AgreedTable {
                inner: opened.table,
                kv: self.kv.clone(),
                key,
            });
            Ok(opened)
        })
    }

    fn existing(&self) -> BoxFuture<'_, Result<Vec<String>, SinkError>> {
        self.inner.existing()
    }

    fn end_offset(&self) -> BoxFuture<'_, Result<u64, SinkError>> {
        self.inner.end_offset()
    }

    fn placed(&self, partition: Option<u32>) -> Box<dyn TableSink> {
        Box::new(AgreedSchemas {
            inner: self.inner.placed(partition),
            kv: self.kv.clone(),
            prefix: self.prefix.clone(),
        })
    }

    fn sql_table<'a>(
        &'a self,
        ctx: &'a SessionContext,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SqlTable>, ReadError>> {
        self.inner.sql_table(ctx, name)
    }

    fn can_purge(&self) -> Result<(), String> {
        self.inner.can_purge()
    }

    fn purge<'a>(
        &'a self,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<crate::sink::table::Purged, SinkError>> {
        self.inner.purge(connection)
    }
}

/// A table that records its grown schema in the shared key first.
struct AgreedTable {
    inner: Box<dyn Table>,
    kv: kv::Store,
    key: String,
}

impl Table for AgreedTable {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn partition_by(&self) -> &[String] {
        self.inner.partition_by()
    }

    fn merge_on(&self) -> Option<&[String]> {
        self.inner.merge_on()
    }

    fn keep_schema<'a>(
        &'a mut self,
        schema: &'a SchemaRef,
    ) -> BoxFuture<'a, Result<SchemaRef, SinkError>> {
        Box::pin(async move {
            let agreed = loop {
                let (current, revision) = load(&self.kv, &self.key).await?;
                let merged = match &current {
                    None => schema.clone(),
                    Some(current) => match infer::merge(current, schema) {
                        None => break current.clone(),
                        Some(merged) => merged,
                    },
                };
                let json = Bytes::from(
                    serde_json::to_vec(merged.as_ref()).map_err(SinkError::WriteSchema)?,
                );
                let stored = if revision == 0 {
                    self.kv
                        .create(&self.key, json)
                        .await
                        .map(|_| ())
                        .map_err(|e| {
                            (
                                e.kind() == kv::CreateErrorKind::AlreadyExists,
                                e.to_string(),
                            )
                        })
                } else {
                    self.kv
                        .update(&self.key, json, revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| {
                            (
                                e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                                e.to_string(),
                            )
                        })
                };
                match stored {
                    Ok(()) => break merged,
                    // Another writer recorded first: fold into its schema.
                    Err((true, _)) => continue,
                    Err((false, message)) => return Err(shared(&self.key, message)),
                }
            };
            self.inner.keep_schema(&agreed).await
        })
    }

    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        range: &'a Range<u64>,
    ) -> BoxFuture<'a, Result<Written, SinkError>> {
        self.inner.write(batch, range)
    }

    fn write_failed(&self) -> &'static str {
        self.inner.write_failed()
    }

    fn upkeep(&mut self) -> BoxFuture<'_, ()> {
        self.inner.upkeep()
    }
}
