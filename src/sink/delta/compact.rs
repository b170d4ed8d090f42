//! Compaction of small files, committed only on the table version it read.
//!
//! delta-rs's own `optimize` rebases its commit over concurrent commits, and
//! its conflict check ignores removes without `dataChange`: two writers that
//! compact the same files at once both commit, and every row of those files
//! is then in the table twice (seen here with two writers on one S3 table).
//! So this compaction commits with no rebase at all: if any commit landed
//! after the version it read, the commit fails and the caller starts over
//! from the new version. Concurrent appends are never lost (the compaction
//! removes only the files it read) and no row is ever doubled.

use std::collections::BTreeMap;
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

/// Rewrites, per partition, the files below half of `target` bytes into files
/// of about `target` bytes, in one commit on the version `table` holds.
/// `Ok(None)`: nothing to do. A commit that lost a race fails (the caller
/// reloads and tries again).
pub async fn small_files(
    table: DeltaTable,
    target: u64,
    props: WriterProperties,
) -> DeltaResult<Option<Compacted>> {
    let state = table.snapshot()?;
    let mut groups: BTreeMap<PartitionKey, Vec<LogicalFileView>> = BTreeMap::new();
    for file in state.log_data().iter() {
        if (file.size() as u64) < target / 2 && file.deletion_vector_descriptor().is_none() {
            let mut key: PartitionKey = file.partition_values_map().into_iter().collect();
            key.sort();
            groups.entry(key).or_default().push(file);
        }
    }
    groups.retain(|_, files| files.len() >= 2);
    if groups.is_empty() {
        return Ok(None);
    }
    let schema = state.snapshot().arrow_schema();
    let store = table.log_store().object_store(None);
    let mut writer = RecordBatchWriter::for_table(&table)?
        .with_writer_properties(props)
        .with_target_file_size(target);
    let mut removes = Vec::new();
    for (key, files) in &groups {
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
    CommitBuilder::default()
        .with_actions(actions)
        .with_max_retries(0)
        .build(Some(state), table.log_store(), operation)
        .await?;
    let mut table = table;
    table.update_incremental(None).await?;
    Ok(Some(Compacted {
        table,
        removed,
        added,
    }))
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
