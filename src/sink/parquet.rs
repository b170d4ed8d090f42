//! The Parquet sink: a flush's rows split into hive-style partitions
//! (`col=value/…`), each written as one zstd Parquet file whose name derives
//! from the flush's offset range ([`super::files`]), so a replay after a
//! crash rewrites the same objects instead of adding new ones.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use bytes::Bytes;
use futures::future::BoxFuture;
use parquet::file::properties::WriterProperties;
use tracing::info;

use super::files::{end_offset, files, writer_properties};
use super::table::{
    routed_tables, Opened, Purged, ReadError, SqlTable, Table, TableSink, Written, UNROUTED,
};
use super::{SinkError, Storage, StorageError};
use crate::config::spec::ParquetSinkSpec;
use crate::config::Location;
use crate::encode::Encoder;
use arrow_schema::DataType;
use deltalake::datafusion::datasource::file_format::parquet::ParquetFormat;
use deltalake::datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use deltalake::datafusion::prelude::SessionContext;
use url::Url;

/// Where a Parquet sink with `schema = "infer"` keeps the record schema its
/// files use (Arrow's JSON form), relative to the table's location. Written
/// before the first file that uses it and read at start, so every file of
/// the table gives a column the same type. Table globs (`**/*.parquet`) do
/// not see it.
pub const SCHEMA_FILE: &str = "_tributary/schema.json";

/// The Parquet sink: hive-partitioned files named by offset range, under its
/// location (or, routed, under `<location>/<table>/`).
#[derive(Clone)]
pub struct ParquetSink {
    spec: ParquetSinkSpec,
    routed: bool,
    storage: Storage,
    /// Starts each file name: `part-`, or `part-p<N>-` on a JetStream
    /// partition (offsets repeat across partitions).
    prefix: String,
}

impl ParquetSink {
    /// The sink of `spec`; `routed` writes one table per route value.
    pub fn new(spec: &ParquetSinkSpec, routed: bool) -> Result<Self, StorageError> {
        Ok(Self {
            storage: Storage::new(&spec.location, &spec.storage)?,
            spec: spec.clone(),
            routed,
            prefix: "part-".into(),
        })
    }

    async fn open_table(&self, name: &str, encoder: &Encoder) -> Result<Opened, SinkError> {
        let storage = if name == UNROUTED {
            self.storage.clone()
        } else {
            Storage::new(&self.spec.location.join(name), &self.spec.storage)?
        };
        let mut encoder = encoder.clone();
        if encoder.infers() {
            if let Some(bytes) = storage.read(SCHEMA_FILE).await? {
                let schema: Schema =
                    serde_json::from_slice(&bytes).map_err(|source| SinkError::SchemaFile {
                        at: format!("{storage}/{SCHEMA_FILE}"),
                        source,
                    })?;
                info!(table = %storage, columns = schema.fields().len(), "Loaded the schema earlier runs inferred.");
                encoder = encoder.with_record_schema(Arc::new(schema));
            }
        }
        Ok(Opened {
            table: Box::new(ParquetTable {
                storage,
                partition_by: self.spec.partition_by.clone(),
                props: writer_properties(),
                prefix: self.prefix.clone(),
            }),
            encoder,
            resume: None,
        })
    }
}

impl TableSink for ParquetSink {
    fn open<'a>(
        &'a self,
        name: &'a str,
        encoder: &'a Encoder,
        _start: u64,
    ) -> BoxFuture<'a, Result<Opened, SinkError>> {
        Box::pin(self.open_table(name, encoder))
    }

    fn existing(&self) -> BoxFuture<'_, Result<Vec<String>, SinkError>> {
        Box::pin(async move {
            if !self.routed {
                return Ok(Vec::new());
            }
            let names = self.storage.list().await?;
            let names: Vec<String> = names.iter().map(|n| self.storage.relative(n)).collect();
            Ok(routed_tables(&names, |rest| {
                rest.ends_with(".parquet") || rest == SCHEMA_FILE
            }))
        })
    }

    fn end_offset(&self) -> BoxFuture<'_, Result<u64, SinkError>> {
        Box::pin(async move {
            let names = self.storage.list().await?;
            Ok(names
                .iter()
                .filter_map(|n| end_offset(n))
                .max()
                .unwrap_or(0))
        })
    }

    /// On partition N of a JetStream log, files are named
    /// `part-pN-<first>-<last>.parquet`.
    fn placed(&self, partition: Option<u32>) -> Box<dyn TableSink> {
        let mut placed = self.clone();
        if let Some(partition) = partition {
            placed.prefix = format!("part-p{partition}-");
        }
        Box::new(placed)
    }

    fn can_purge(&self) -> Result<(), String> {
        if self
            .spec
            .partition_by
            .iter()
            .any(|c| c == crate::schema::CONNECTION_COLUMN)
        {
            Ok(())
        } else {
            Err(format!(
                "Parquet sink {} is not partitioned by _connection, so one connection's rows share files with others'; add \"_connection\" to its partition_by (new files only), or purge those rows with your own tool",
                self.spec.name
            ))
        }
    }

    /// Deletes every file under a `_connection=<id>` directory, at any depth
    /// of the partitions, in every table of the sink.
    fn purge<'a>(&'a self, connection: &'a str) -> BoxFuture<'a, Result<Purged, SinkError>> {
        Box::pin(async move {
            let segment = format!("{}={connection}", crate::schema::CONNECTION_COLUMN);
            let mut files = 0;
            for name in self.storage.list().await? {
                let relative = self.storage.relative(&name);
                if relative.split('/').any(|part| part == segment) {
                    self.storage.delete(&name).await?;
                    files += 1;
                }
            }
            Ok(Purged {
                rows: None,
                files: Some(files),
            })
        })
    }

    fn sql_table<'a>(
        &'a self,
        ctx: &'a SessionContext,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SqlTable>, ReadError>> {
        Box::pin(async move {
            let location = if name == UNROUTED {
                self.spec.location.clone()
            } else {
                self.spec.location.join(name)
            };
            listing(ctx, &location, &self.spec.storage, &self.spec.partition_by).await
        })
    }
}

/// The Parquet files under `location` as one hive-partitioned table whose
/// partition columns read as text, if there are any files.
pub async fn listing(
    ctx: &SessionContext,
    location: &Location,
    options: &std::collections::BTreeMap<String, String>,
    partition_by: &[String],
) -> Result<Option<SqlTable>, ReadError> {
    let storage = Storage::new(location, options).map_err(ReadError::Storage)?;
    let names = storage.list().await.unwrap_or_default();
    if !names.iter().any(|n| n.ends_with(".parquet")) {
        return Ok(None);
    }
    let url = match (location, &storage) {
        (Location::Local(dir), _) => {
            let dir = dir.canonicalize().map_err(|source| ReadError::Dir {
                path: dir.clone(),
                source,
            })?;
            Url::from_directory_path(&dir).map_err(|()| ReadError::NotDirPath(dir.clone()))?
        }
        (Location::S3 { bucket, prefix }, Storage::Object { store, .. }) => {
            let root = Url::parse(&format!("s3://{bucket}/"))?;
            ctx.register_object_store(&root, store.clone());
            Url::parse(&format!("s3://{bucket}/{}/", prefix.trim_matches('/')))?
        }
        (Location::S3 { .. }, Storage::Local(_)) => return Err(ReadError::NoStore),
    };
    let listing = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(
            partition_by
                .iter()
                .map(|c| (c.clone(), DataType::Utf8))
                .collect(),
        );
    let path = ListingTableUrl::parse(url.as_str())?;
    let schema = listing.infer_schema(&ctx.state(), &path).await?;
    let config = ListingTableConfig::new(path)
        .with_listing_options(listing)
        .with_schema(schema);
    Ok(Some(Arc::new(ListingTable::try_new(config)?)))
}

/// One table of a Parquet sink.
struct ParquetTable {
    storage: Storage,
    partition_by: Vec<String>,
    props: WriterProperties,
    prefix: String,
}

impl Table for ParquetTable {
    fn describe(&self) -> String {
        self.storage.to_string()
    }

    fn partition_by(&self) -> &[String] {
        &self.partition_by
    }

    fn merge_on(&self) -> Option<&[String]> {
        None
    }

    fn keep_schema<'a>(
        &'a mut self,
        schema: &'a SchemaRef,
    ) -> BoxFuture<'a, Result<SchemaRef, SinkError>> {
        Box::pin(async move {
            let json =
                serde_json::to_vec_pretty(schema.as_ref()).map_err(SinkError::WriteSchema)?;
            self.storage.put(SCHEMA_FILE, Bytes::from(json)).await?;
            Ok(schema.clone())
        })
    }

    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        range: &'a Range<u64>,
    ) -> BoxFuture<'a, Result<Written, SinkError>> {
        Box::pin(async move {
            if batch.num_rows() == 0 {
                return Ok(Written::default());
            }
            let (batch_, partition_by, range_, props, prefix) = (
                batch.clone(),
                self.partition_by.clone(),
                range.clone(),
                self.props.clone(),
                self.prefix.clone(),
            );
            let made = tokio::task::spawn_blocking(move || {
                super::background_priority();
                files(&batch_, &partition_by, &prefix, &range_, &props)
            })
            .await
            .map_err(|source| SinkError::Task {
                what: "Parquet",
                source,
            })??;
            let mut written = Written::default();
            for (name, body) in made {
                written.files += 1;
                written.bytes += body.len();
                self.storage.put(&name, body).await?;
            }
            Ok(written)
        })
    }

    fn upkeep(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field, Schema};

    #[tokio::test]
    async fn an_inferred_schema_is_kept_and_reloaded_per_table() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ParquetSinkSpec {
            name: "parquet".into(),
            location: crate::config::Location::Local(dir.path().join("t")),
            partition_by: vec![],
            storage: Default::default(),
        };
        let sink = ParquetSink::new(&spec, true).unwrap();
        let fresh = Encoder::new(Arc::new(Schema::empty()), "", "test").inferring(true);
        let opened = sink.open("push", &fresh, 0).await.unwrap();
        assert_eq!(
            opened.encoder.record_schema().fields().len(),
            1,
            "only _extra"
        );
        let grown = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("_extra", DataType::Utf8, true),
        ]));
        let mut table = opened.table;
        table.keep_schema(&grown).await.unwrap();
        assert!(dir.path().join("t/push").join(SCHEMA_FILE).is_file());
        // After a restart the table encodes with what it kept, not from nothing.
        let again = sink.open("push", &fresh, 0).await.unwrap();
        assert_eq!(again.encoder.record_schema(), &grown);
        assert_eq!(sink.existing().await.unwrap(), ["push"]);
        // A declared schema ignores a kept one.
        let declared = Encoder::new(
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)])),
            "",
            "test",
        );
        let opened = sink.open("push", &declared, 0).await.unwrap();
        assert_eq!(opened.encoder.record_schema().field(0).name(), "n");
    }
}
