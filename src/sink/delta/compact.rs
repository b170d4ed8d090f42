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

/// Size tier of a file: files within a factor of 16 of each other share one.
fn tier(size: u64) -> u32 {
    (63 - size.max(1).leading_zeros()) / 4
}

/// Size-tiered compaction: in each partition, once `min_files` files below
/// half of `target` share a size tier, they are rewritten into files of up to
/// `target` bytes, all in one commit on the version `table` holds. A
/// compacted file lands in a higher tier, so each byte is rewritten a few
/// times (log16 of target / flush size), never once per compaction.
/// `Ok(None)`: nothing is due. A commit that lost a race fails (the caller
/// reloads and tries again).
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

#[cfg(test)]
mod tests {
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
