//! `mode = "merge"`: one row per primary key. A flush keeps only the newest
//! record of each key (the latest `_received_at`; of equal times the later
//! one in the log), then upserts it: a matching row is replaced whole unless
//! it arrived later (a replayed dead letter never overwrites a newer row), a
//! new key is inserted. Rows with a null key never reach this point: the
//! runner makes them dead letters ([`null_key_rows`]).

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use arrow_array::{Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use deltalake::datafusion::common::Column;
use deltalake::datafusion::prelude::{col, Expr, SessionContext};
use deltalake::delta_datafusion::DeltaColumn;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::{DeltaResult, DeltaTable, DeltaTableError};
use parquet::file::properties::WriterProperties;

const SOURCE: &str = "source";
const TARGET: &str = "target";
/// The arrival time column every row carries.
const RECEIVED_AT: &str = crate::schema::METADATA_COLUMNS[1];

/// The rows of `batch` with a null in a key column, with the reason: a
/// null never matches in a merge, so such rows would pile up unmerged.
pub fn null_key_rows(batch: &RecordBatch, keys: &[String]) -> Vec<(usize, String)> {
    (0..batch.num_rows())
        .filter_map(|row| {
            let null = keys.iter().find(|k| {
                batch
                    .column_by_name(k)
                    .is_none_or(|c| c.is_null(row))
            })?;
            Some((row, format!("the primary key {null} is missing or null; mode = \"merge\" needs every key column (merge_on) to have a value")))
        })
        .collect()
}

/// Upserts `batch` into `table` on `keys` in one commit.
pub async fn upsert(
    table: DeltaTable,
    batch: RecordBatch,
    keys: &[String],
    add_columns: bool,
    commit: CommitProperties,
    props: WriterProperties,
) -> DeltaResult<DeltaTable> {
    let batch =
        newest_per_key(&batch, keys).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
    let columns: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let source = SessionContext::new().read_batch(batch)?;
    let predicate = keys
        .iter()
        .map(|k| qualified(TARGET, k).eq(qualified(SOURCE, k)))
        .reduce(Expr::and)
        .ok_or_else(|| DeltaTableError::Generic("merge needs a primary key".into()))?;
    let (table, _metrics) = table
        .merge(source, predicate)
        .with_source_alias(SOURCE)
        .with_target_alias(TARGET)
        .with_merge_schema(add_columns)
        .with_writer_properties(props)
        .with_commit_properties(commit)
        .when_matched_update(|mut update| {
            update = update
                .predicate(qualified(SOURCE, RECEIVED_AT).gt_eq(qualified(TARGET, RECEIVED_AT)));
            for c in &columns {
                update = update.update(unqualified(c), qualified(SOURCE, c));
            }
            update
        })?
        .when_not_matched_insert(|mut insert| {
            for c in &columns {
                insert = insert.set(unqualified(c), qualified(SOURCE, c));
            }
            insert
        })?
        .await?;
    Ok(table)
}

fn qualified(relation: &str, name: &str) -> Expr {
    col(Column::new(Some(relation), name))
}

fn unqualified(name: &str) -> DeltaColumn {
    DeltaColumn::from(Column::new_unqualified(name))
}

/// The rows of `batch` that are the newest of their key (latest
/// `_received_at`, then latest in the batch), in batch order.
pub fn newest_per_key(
    batch: &RecordBatch,
    keys: &[String],
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let options = FormatOptions::default();
    let formatters = keys
        .iter()
        .map(|k| {
            let column = batch.column_by_name(k).ok_or_else(|| {
                arrow_schema::ArrowError::SchemaError(format!(
                    "primary key column {k} is not in the batch"
                ))
            })?;
            ArrayFormatter::try_new(column.as_ref(), &options)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let received = batch
        .column_by_name(RECEIVED_AT)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>());
    let at = |row: usize| received.map_or(0, |r| r.value(row));
    let mut last: HashMap<String, u32> = HashMap::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        // Each part length-prefixed, null marked apart, so no two keys collide.
        let mut key = String::new();
        for (f, k) in formatters.iter().zip(keys) {
            if batch.column_by_name(k).is_some_and(|c| c.is_null(row)) {
                key.push_str("n;");
            } else {
                let value = f.value(row).to_string();
                key.push_str(&format!("{}:{value};", value.len()));
            }
        }
        match last.entry(key) {
            Entry::Occupied(mut kept) if at(*kept.get() as usize) <= at(row) => {
                kept.insert(row as u32);
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(new) => {
                new.insert(row as u32);
            }
        }
    }
    if last.len() == batch.num_rows() {
        return Ok(batch.clone());
    }
    let mut rows: Vec<u32> = last.into_values().collect();
    rows.sort_unstable();
    arrow_select::take::take_record_batch(batch, &UInt32Array::from(rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn keeps_the_last_record_of_each_key() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![
                    Some(1),
                    Some(2),
                    Some(1),
                    None,
                    Some(1),
                    None,
                ])),
                Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e", "f"])),
            ],
        )
        .unwrap();
        let kept = newest_per_key(&batch, &["id".to_string()]).unwrap();
        let v = kept
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(v.iter().flatten().collect::<Vec<_>>(), ["b", "e", "f"]);
    }

    #[test]
    fn composite_keys_never_collide() {
        let a = StringArray::from(vec![Some("x\u{1f}y"), Some("x"), None, Some("")]);
        let b = StringArray::from(vec![Some("z"), Some("y\u{1f}z"), Some(""), None]);
        let batch =
            RecordBatch::try_from_iter([("a", Arc::new(a) as _), ("b", Arc::new(b) as _)]).unwrap();
        let kept = newest_per_key(&batch, &["a".to_string(), "b".to_string()]).unwrap();
        assert_eq!(kept.num_rows(), 4, "four distinct keys");
    }

    #[test]
    fn an_older_arrival_later_in_the_batch_does_not_win() {
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 1, 2, 2])) as _),
            (
                RECEIVED_AT,
                Arc::new(TimestampMicrosecondArray::from(vec![20, 10, 5, 5])) as _,
            ),
            (
                "v",
                Arc::new(StringArray::from(vec!["new", "replayed", "x", "y"])) as _,
            ),
        ])
        .unwrap();
        let kept = newest_per_key(&batch, &["id".to_string()]).unwrap();
        let v = kept
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(v.iter().flatten().collect::<Vec<_>>(), ["new", "y"]);
    }

    #[test]
    fn null_keys_are_named() {
        let batch = RecordBatch::try_from_iter([
            (
                "a",
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])) as _,
            ),
            (
                "b",
                Arc::new(StringArray::from(vec![Some("x"), Some("y"), None])) as _,
            ),
        ])
        .unwrap();
        let rows = null_key_rows(&batch, &["a".to_string(), "b".to_string()]);
        assert_eq!(rows.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [1, 2]);
        assert!(rows[0].1.contains("primary key a"), "{}", rows[0].1);
        assert!(rows[1].1.contains("primary key b"), "{}", rows[1].1);
    }
}
