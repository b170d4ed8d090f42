//! Compaction of small files, committed on the version it read or on one
//! whose commits since only appended.
//!
//! delta-rs's own `optimize` rebases its commit over concurrent commits, and
//! its conflict check ignores removes without `dataChange`: two writers that
//! compact the same files at once both commit, and every row of those files
//! is then in the table twice (seen here with two writers on one S3 table).
//! So this compaction never lets delta-rs rebase it. If commits landed after
//! the version it read, it reloads the table and commits its actions again
//! on the new version only if every file it removes is still there, without
//! a deletion vector, and the schema is unchanged: the commits between only
//! appended. If any of its files is gone or was changed (another
//! compaction, a merge, a delete), the caller starts over from the new
//! version. Concurrent appends are never lost (the compaction removes only
//! the files it read); a commit on an exact version is create-only, so the
//! check and the commit cannot be overtaken.
//!
//! The other way round, a merge that read files a compaction removed does
//! not commit over it: delta-rs ignores the removes there too, but the
//! compacted file holds rows its predicate matches, so the merge fails with
//! a conflict (`ConcurrentAppend`) and its flush is retried on the new
//! version (tested below).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow_array::{new_null_array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::SchemaRef;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, LogicalFileView};
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaResult, DeltaTable, DeltaTableError};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;

/// What a compaction did.
pub struct Compacted {
    pub table: DeltaTable,
    pub removed: usize,
    pub added: usize,
}

type PartitionKey = Vec<(String, Option<String>)>;

/// How often a compaction commits again on top of commits that only
/// appended, before it gives up until the next upkeep.
const REBASES: usize = 20;

/// Size tier of a file: files within a factor of 16 of each other share one.
fn tier(size: u64) -> u32 {
    (63 - size.max(1).leading_zeros()) / 4
}

/// Size-tiered compaction: in each partition, once `min_files` files below
/// half of `target` share a size tier, they are rewritten into files of up to
/// `target` bytes, in one commit. A compacted file lands in a higher tier, so
/// each byte is rewritten a few times (log16 of target / flush size), never
/// once per compaction. It commits on the version `table` holds, or on a
/// later one whose commits only appended, up to [`REBASES`] times; otherwise
/// it fails (the caller reloads and tries again). `Ok(None)`: nothing is due.
pub async fn small_files(
    table: DeltaTable,
    target: u64,
    min_files: u64,
    props: WriterProperties,
) -> DeltaResult<Option<Compacted>> {
    let state = table.snapshot()?;
    let mut groups: BTreeMap<(PartitionKey, u32), Vec<LogicalFileView>> = BTreeMap::new();
    for file in state.log_data().iter() {
        let size = file.size() as u64;
        if size < target / 2 && file.deletion_vector_descriptor().is_none() {
            let mut key: PartitionKey = file.partition_values_map().into_iter().collect();
            key.sort();
            groups.entry((key, tier(size))).or_default().push(file);
        }
    }
    groups.retain(|_, files| files.len() as u64 >= min_files.max(2));
    if groups.is_empty() {
        return Ok(None);
    }
    let schema = state.snapshot().arrow_schema();
    let store = table.log_store().object_store(None);
    let mut writer = RecordBatchWriter::for_table(&table)?
        .with_writer_properties(props)
        .with_target_file_size(target);
    let mut removes = Vec::new();
    for ((key, _), files) in &groups {
        for file in files {
            let bytes = store.get(&file.object_store_path()).await?.bytes().await?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
            for batch in reader {
                writer
                    .write(to_table_schema(&batch?, &schema, key)?)
                    .await?;
            }
            removes.push(Action::Remove(file.remove_action(false)));
        }
    }
    let mut adds = writer.flush().await?;
    for add in &mut adds {
        add.data_change = false;
    }
    let (removed, added) = (removes.len(), adds.len());
    let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
    actions.extend(removes);
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: target as i64,
    };
    let removed_paths: HashSet<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Remove(r) => Some(r.path.clone()),
            _ => None,
        })
        .collect();
    let (read_version, read_schema) = (state.version(), state.snapshot().arrow_schema());
    let mut table = table;
    // The version a commit was tried on and why it failed.
    let mut lost: Option<(u64, DeltaTableError)> = None;
    for _ in 0..REBASES {
        table.update_incremental(None).await?;
        let now = table.snapshot()?;
        if let Some((tried_on, e)) = lost.take() {
            // Not a lost race unless a commit took the version.
            if now.version() == tried_on {
                return Err(e);
            }
        }
        // Commits that landed since the version it read: if every file this
        // compaction removes is still in the table as it read it (no deletion
        // vector since) and the schema is the one it read, they only
        // appended, and its actions go on top of them.
        if now.version() != read_version {
            let live = now
                .log_data()
                .iter()
                .filter(|f| {
                    removed_paths.contains(f.path().as_ref())
                        && f.deletion_vector_descriptor().is_none()
                })
                .count();
            if live != removed_paths.len() || now.snapshot().arrow_schema() != read_schema {
                return Err(DeltaTableError::Generic(
                    "compaction: another commit removed a file it rewrote, or changed the schema"
                        .into(),
                ));
            }
        }
        let committed = CommitBuilder::default()
            .with_actions(actions.clone())
            .with_max_retries(0)
            .build(Some(now), table.log_store(), operation.clone())
            .await;
        match committed {
            Ok(_) => {
                table.update_incremental(None).await?;
                return Ok(Some(Compacted {
                    table,
                    removed,
                    added,
                }));
            }
            Err(e) => lost = Some((now.version(), e)),
        }
    }
    Err(DeltaTableError::Generic(
        "compaction: other commits kept taking the next version".into(),
    ))
}

/// A file's rows with the table's columns: partition values from the file's
/// path, columns the file predates as nulls, types cast to the table's.
fn to_table_schema(
    batch: &RecordBatch,
    schema: &SchemaRef,
    partition: &PartitionKey,
) -> DeltaResult<RecordBatch> {
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = if let Some((_, value)) = partition.iter().find(|(k, _)| k == field.name()) {
            let text: ArrayRef = Arc::new(StringArray::from(vec![value.clone(); rows]));
            arrow_cast::cast(&text, field.data_type())?
        } else if let Some(column) = batch.column_by_name(field.name()) {
            if column.data_type() == field.data_type() {
                column.clone()
            } else {
                arrow_cast::cast(column, field.data_type())?
            }
        } else {
            new_null_array(field.data_type(), rows)
        };
        columns.push(column);
    }
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| DeltaTableError::Generic(format!("compaction: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;
    use arrow_schema::{DataType, Field, Schema};
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    use deltalake::kernel::StructType;
    use deltalake::protocol::SaveMode;
    use deltalake::DeltaTableBuilder;

    async fn append(table: DeltaTable, ids: std::ops::Range<i64>) -> DeltaTable {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(ids))])
            .unwrap();
        table
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .await
            .unwrap()
    }

    /// A new, empty local table with `schema`'s columns in `dir`.
    async fn create(dir: &std::path::Path, schema: &Schema) -> DeltaTable {
        let url = url::Url::from_directory_path(dir).unwrap();
        let columns: StructType = schema.try_into_kernel().unwrap();
        DeltaTableBuilder::from_url(url)
            .unwrap()
            .build()
            .unwrap()
            .create()
            .with_columns(columns.fields().cloned())
            .await
            .unwrap()
    }

    /// Every id in the table's active files, read from the files themselves.
    async fn ids(table: &DeltaTable) -> Vec<i64> {
        let store = table.log_store().object_store(None);
        let mut ids = Vec::new();
        for file in table.snapshot().unwrap().log_data().iter() {
            let bytes = store
                .get(&file.object_store_path())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap()
                .build()
                .unwrap()
            {
                let batch = batch.unwrap();
                let column = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                ids.extend(column.values().iter().copied());
            }
        }
        ids.sort_unstable();
        ids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compaction_commits_over_appends_but_never_removes_a_file_twice() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        let mut table = create(dir.path(), &schema).await;
        for i in 0..4 {
            table = append(table, i * 10..i * 10 + 10).await;
        }
        // Two compactions read version 4; an append lands after they read.
        let (first, second) = (table.clone(), table.clone());
        table = append(table, 40..50).await;
        let props = WriterProperties::default();

        let done = small_files(first, 1 << 30, 4, props.clone())
            .await
            .unwrap()
            .expect("four small files are due");
        assert_eq!((done.removed, done.added), (4, 1));
        assert_eq!(
            done.table.version(),
            Some(6),
            "committed on top of the append"
        );
        assert_eq!(ids(&done.table).await, (0..50).collect::<Vec<_>>());
        assert_eq!(done.table.snapshot().unwrap().log_data().iter().count(), 2);

        // The second one's files are gone: it must fail, not double the rows.
        assert!(small_files(second, 1 << 30, 4, props).await.is_err());
        table.update_incremental(None).await.unwrap();
        assert_eq!(table.version(), Some(6));
        assert_eq!(ids(&table).await, (0..50).collect::<Vec<_>>());
    }

    /// `(id, _received_at)` rows `ids`, all received at `at` µs.
    fn keyed(ids: std::ops::Range<i64>, at: i64) -> RecordBatch {
        use arrow_array::TimestampMicrosecondArray;
        let n = ids.end - ids.start;
        RecordBatch::try_new(
            Arc::new(keyed_schema()),
            vec![
                Arc::new(Int64Array::from_iter_values(ids)),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![at; n as usize]).with_timezone("UTC"),
                ),
            ],
        )
        .unwrap()
    }

    fn keyed_schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "_received_at",
                DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_merge_that_read_files_a_compaction_removed_is_redone_not_doubled() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = create(dir.path(), &keyed_schema()).await;
        for i in 0..4 {
            table = table
                .write(vec![keyed(i * 10..i * 10 + 10, 1)])
                .with_save_mode(SaveMode::Append)
                .await
                .unwrap();
        }
        // A merge reads version 4 (another partition's sink, or another
        // process); a compaction commits version 5 before the merge commits.
        let stale = table.clone();
        let keys = vec!["id".to_string()];
        let props = WriterProperties::default();
        let done = small_files(table, 1 << 30, 4, props.clone())
            .await
            .unwrap()
            .expect("four small files are due");
        assert_eq!(done.table.version(), Some(5));
        let merge = |table: DeltaTable| {
            super::super::merge::upsert(
                table,
                keyed(5..6, 2),
                &keys,
                false,
                Default::default(),
                props.clone(),
            )
        };
        // The merge rewrites a file the compaction removed: it must fail with
        // a conflict (its flush is then redone), not keep the compacted copy
        // of id 5 beside the new one.
        assert!(merge(stale).await.is_err(), "the stale merge committed");
        let mut table = done.table;
        table.update_incremental(None).await.unwrap();
        assert_eq!(table.version(), Some(5));
        assert_eq!(ids(&table).await, (0..40).collect::<Vec<_>>());
        // Redone on the new version, it replaces id 5 once.
        let table = merge(table).await.unwrap();
        assert_eq!(ids(&table).await, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn tiers_group_sizes_within_a_factor_of_sixteen() {
        use super::tier;
        assert_eq!(tier(1), 0);
        assert_eq!(tier(15), 0);
        assert_eq!(tier(16), 1);
        assert_eq!(tier(255), 1);
        assert_eq!(tier(256), 2);
        assert_eq!(tier(5 << 20), 5);
    }
}
