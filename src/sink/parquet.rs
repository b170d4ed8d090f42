//! The Parquet sink's files: a flush's rows split into hive-style partitions
//! (`col=value/…`), each written as one zstd Parquet file whose name derives
//! from the flush's offset range, so a replay after a crash rewrites the same
//! objects instead of adding new ones.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use arrow_array::{RecordBatch, UInt32Array};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::ArrowError;
use arrow_schema::{Schema, SchemaRef};
use bytes::Bytes;
use futures::future::BoxFuture;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use tracing::info;

use super::table::{routed_tables, Opened, Table, TableSink, Written, UNROUTED};
use super::{SinkError, Storage, StorageError};
use crate::config::spec::ParquetSinkSpec;
use crate::encode::Encoder;

/// Hive's value for a null partition key (what Spark, Trino and DuckDB expect).
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Characters escaped in partition values: path separators, `=`, `%` and the
/// characters Hive escapes, so every value round-trips through a path.
const PARTITION_ESCAPES: &AsciiSet = &CONTROLS
    .add(b'/')
    .add(b'\\')
    .add(b'=')
    .add(b'%')
    .add(b'"')
    .add(b'#')
    .add(b'?')
    .add(b'*')
    .add(b':')
    .add(b'[')
    .add(b']')
    .add(b'{')
    .add(b'}')
    .add(b'^')
    .add(b' ');

/// Writer settings shared by every file: zstd, page statistics so engines can
/// skip row groups and pages, and no dictionary encoding. Webhook records are
/// mostly high-cardinality strings (ids, emails, names, timestamps); on the
/// Shopify benchmark a dictionary made files 25% larger and writing 18% slower
/// than plain values under zstd, which also squeezes the few repetitive columns.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("tributary {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// File name of the rows of offsets `range` (inclusive last offset, so the
/// name reads like the range it holds).
pub fn file_name(prefix: &str, range: &Range<u64>) -> String {
    format!(
        "{prefix}{:020}-{:020}.parquet",
        range.start,
        range.end.saturating_sub(1)
    )
}

/// The offset after the last one a file named by [`file_name`] holds, if
/// `path` (any directories before it) names one such file.
pub fn end_offset(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?.strip_suffix(".parquet")?;
    let (rest, last) = name.rsplit_once('-')?;
    let (_, first) = rest.rsplit_once('-')?;
    if first.len() != 20 || last.len() != 20 {
        return None;
    }
    first.parse::<u64>().ok()?;
    last.parse::<u64>().ok()?.checked_add(1)
}

/// Splits `batch` by the values of `partition_by` and serialises each part;
/// returns `(relative path, bytes)` pairs. Partition columns are left out of
/// the files (their values are in the path), as hive-style readers expect.
pub fn files(
    batch: &RecordBatch,
    partition_by: &[String],
    range: &Range<u64>,
    props: &WriterProperties,
) -> Result<Vec<(String, Bytes)>, ParquetError> {
    files_named(batch, partition_by, "part-", range, props)
}

/// [`files`], each named `<prefix><first>-<last>.parquet`.
fn files_named(
    batch: &RecordBatch,
    partition_by: &[String],
    prefix: &str,
    range: &Range<u64>,
    props: &WriterProperties,
) -> Result<Vec<(String, Bytes)>, ParquetError> {
    let name = file_name(prefix, range);
    if partition_by.is_empty() {
        return Ok(vec![(name, serialise(batch, props)?)]);
    }
    let keys = partition_keys(batch, partition_by)?;
    let mut groups: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (row, key) in keys.iter().enumerate() {
        groups.entry(key.as_str()).or_default().push(row as u32);
    }
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|i| !partition_by.contains(batch.schema().field(*i).name()))
        .collect();
    let mut out = Vec::with_capacity(groups.len());
    for (dir, rows) in groups {
        let part = if rows.len() == batch.num_rows() {
            batch.clone()
        } else {
            arrow_select::take::take_record_batch(batch, &UInt32Array::from(rows))?
        };
        let part = part.project(&keep)?;
        out.push((format!("{dir}/{name}"), serialise(&part, props)?));
    }
    Ok(out)
}

/// The `col=value/col=value` directory of every row.
fn partition_keys(batch: &RecordBatch, partition_by: &[String]) -> Result<Vec<String>, ArrowError> {
    let mut keys = vec![String::new(); batch.num_rows()];
    let options = FormatOptions::default();
    for column in partition_by {
        let array = batch.column_by_name(column).ok_or_else(|| {
            ArrowError::SchemaError(format!("partition column {column} is not in the batch"))
        })?;
        let formatter = ArrayFormatter::try_new(array.as_ref(), &options)?;
        for (row, key) in keys.iter_mut().enumerate() {
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(column);
            key.push('=');
            if array.is_null(row) {
                key.push_str(NULL_PARTITION);
            } else {
                let value = formatter.value(row).to_string();
                key.extend(utf8_percent_encode(&value, PARTITION_ESCAPES));
            }
        }
    }
    Ok(keys)
}

/// One Parquet file in memory.
pub fn serialise(batch: &RecordBatch, props: &WriterProperties) -> Result<Bytes, ParquetError> {
    // Compressed Parquet is rarely above a third of the Arrow data; start there
    // so the output buffer seldom has to grow and copy.
    let capacity = batch.get_array_memory_size() / 3;
    let mut writer = ArrowWriter::try_new(
        Vec::with_capacity(capacity),
        batch.schema(),
        Some(props.clone()),
    )?;
    writer.write(batch)?;
    Ok(Bytes::from(writer.into_inner()?))
}

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

    /// The sink writing partition `partition` of a JetStream log: its files
    /// are named `part-p<partition>-<first>-<last>.parquet`.
    pub fn in_partition(mut self, partition: u32) -> Self {
        self.prefix = format!("part-p{partition}-");
        self
    }

    /// The storage of the sink's location (what the admin API probes).
    pub fn storage(&self) -> &Storage {
        &self.storage
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
                super::runner::background_priority();
                files_named(&batch_, &partition_by, &prefix, &range_, &props)
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
    use arrow_array::{Date32Array, Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

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

    #[test]
    fn file_names_give_back_their_offsets() {
        let name = file_name("part-", &(100..103));
        assert_eq!(end_offset(&format!("a=1/{name}")), Some(103));
        assert_eq!(end_offset(&file_name("sink-name-", &(0..1))), Some(1));
        assert_eq!(end_offset("part-1-2.parquet"), None);
        assert_eq!(end_offset("_delta_log/00000000000000000001.json"), None);
    }

    #[test]
    fn splits_by_partition_and_names_by_offsets() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("_received_date", DataType::Date32, false),
            Field::new("shop", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Date32Array::from(vec![19675, 19676, 19675])),
                Arc::new(StringArray::from(vec![Some("a/b"), None, Some("a/b")])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let partition_by = vec!["_received_date".to_string(), "shop".to_string()];
        let files = files(&batch, &partition_by, &(100..103), &writer_properties()).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "_received_date=2023-11-14/shop=a%2Fb/part-00000000000000000100-00000000000000000102.parquet",
                "_received_date=2023-11-15/shop=__HIVE_DEFAULT_PARTITION__/part-00000000000000000100-00000000000000000102.parquet",
            ]
        );
        let reader = ParquetRecordBatchReaderBuilder::try_new(files[0].1.clone())
            .unwrap()
            .build()
            .unwrap();
        let rows: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(
            rows[0].num_columns(),
            1,
            "partition columns live in the path only"
        );
        assert_eq!(
            rows[0]
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values(),
            &[1, 3]
        );
    }
}
