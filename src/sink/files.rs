//! Offset-named Parquet files, the piece every table sink and the dead
//! letters share: one zstd file per flush whose name derives from the
//! flush's offset range (so a re-flush after a crash rewrites the same
//! objects), split into hive-style partitions (`col=value/…`) where asked.
//! The Parquet sink writes its tables with it, the Delta sink its data files'
//! settings, and the dead letters their files; no sink stands on another.

use std::collections::BTreeMap;
use std::ops::Range;

use arrow_array::{RecordBatch, UInt32Array};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::ArrowError;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

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

/// Splits `batch` by the values of `partition_by` and serialises each part,
/// named `<prefix><first>-<last>.parquet` after the offsets `range`; returns
/// `(relative path, bytes)` pairs. Partition columns are left out of the
/// files (their values are in the path), as hive-style readers expect.
pub fn files(
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
    let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (key, run) in partition_keys(batch, partition_by)? {
        groups
            .entry(key)
            .or_default()
            .extend(run.start as u32..run.end as u32);
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

/// The `col=value/col=value` directory of each run of rows that share it.
fn partition_keys(
    batch: &RecordBatch,
    partition_by: &[String],
) -> Result<Vec<(String, Range<usize>)>, ArrowError> {
    let arrays = partition_by
        .iter()
        .map(|column| {
            batch.column_by_name(column).cloned().ok_or_else(|| {
                ArrowError::SchemaError(format!("partition column {column} is not in the batch"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = FormatOptions::default();
    let formatters = arrays
        .iter()
        .map(|a| ArrayFormatter::try_new(a.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let keys = super::partition::runs(batch, &arrays)?
        .into_iter()
        .map(|run| {
            let row = run.start;
            let mut key = String::new();
            for ((column, array), formatter) in partition_by.iter().zip(&arrays).zip(&formatters) {
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
            (key, run)
        })
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::{Date32Array, Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn file_names_give_back_their_offsets() {
        let name = file_name("part-", &(100..103));
        assert_eq!(end_offset(&format!("a=1/{name}")), Some(103));
        assert_eq!(end_offset(&file_name("sink-name-", &(0..1))), Some(1));
        assert_eq!(end_offset("part-1-2.parquet"), None);
        assert_eq!(end_offset("_delta_log/00000000000000000001.json"), None);
    }

    #[test]
    fn a_flush_without_rows_makes_no_partitioned_file() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("_received_date", DataType::Date32, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::new_empty(schema);
        let partition_by = vec!["_received_date".to_string()];
        let made = files(&batch, &partition_by, "p-", &(0..1), &writer_properties()).unwrap();
        assert!(made.is_empty());
        assert!(crate::sink::partition::unfit_rows(&batch, &partition_by)
            .unwrap()
            .is_empty());
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
        let files = files(
            &batch,
            &partition_by,
            "part-",
            &(100..103),
            &writer_properties(),
        )
        .unwrap();
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
