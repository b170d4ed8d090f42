//! The Delta Lake sink: each flush is one Delta commit (an append, or a merge
//! on the primary key) that carries a `txn` action, app id
//! `tributary/<pipeline>/<sink>` and version = the last log offset in the
//! commit. The table is therefore its own progress record: on start the sink
//! resumes after the table's txn version, so a crash between the Delta commit
//! and the sink's ledger never writes a row twice. A new table is created at
//! start with a txn that records the starting point (`first offset - 1`), so
//! even a table that never saw a flush says where its stream begins.
//!
//! Commits go through delta-rs's default log store, which writes each
//! `_delta_log/N.json` with a create-only put: `If-None-Match: *` on S3, a
//! no-replace link on local disk. Two writers racing for version N get one
//! success and one conflict, and delta-rs retries the loser at N+1, so
//! concurrent appenders never lose a commit. No lock service is needed.
//!
//! Delta-rs encodes Parquet on the runtime it is polled on, so every table
//! operation runs on a small runtime of its own at background priority: the
//! webhook acknowledgements keep the CPU they need.

mod compact;
pub mod merge;
mod sync;
mod tables;
mod upkeep;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arrow_array::RecordBatch;
use arrow_schema::{Field, Schema, SchemaRef};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{StructType, Transaction};
use deltalake::logstore::{default_logstore, logstore_factories, LogStore, LogStoreFactory};
use deltalake::logstore::{ObjectStoreRef, StorageConfig};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::{DeltaOperation, OutputMode, SaveMode};
use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder, DeltaTableError};
use parquet::file::properties::WriterProperties;
use tracing::{info, warn};
use url::Url;

use super::{files, Storage, StorageError};
use crate::config::spec::DeltaSinkSpec;
use crate::config::Location;
use crate::error::{Classify, ErrorKind};
use crate::schema::METADATA_COLUMNS;
pub use tables::DeltaTables;

/// Why a table operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The table's location could not be set up.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// delta-rs reported a failure.
    #[error("Delta table {table}: {source}")]
    Table {
        /// The table's URL.
        table: String,
        /// What delta-rs said.
        #[source]
        source: Box<DeltaTableError>,
    },
    /// Another writer commits with this sink's app id.
    #[error("Delta table {table}: app id {app_id} is at offset {txn}, beyond this sink's {last}: another process writes with the same pipeline and sink name. Give each writer's sink a unique name = \"…\"")]
    SharedAppId {
        /// The table's URL.
        table: String,
        /// The txn app id.
        app_id: String,
        /// The table's txn version for it.
        txn: i64,
        /// The last offset of the commit this sink was making.
        last: u64,
    },
    /// The operation's task failed (a bug in the operation).
    #[error("Delta table operation on {0} did not finish")]
    Task(String),
}

impl Classify for DeltaError {
    fn kind(&self) -> ErrorKind {
        match self {
            DeltaError::Storage(e) => e.kind(),
            DeltaError::Task(_) => ErrorKind::Internal,
            DeltaError::SharedAppId { .. } => ErrorKind::Permanent,
            DeltaError::Table { source, .. } => match source.as_ref() {
                // The same batch would fail the same way again: stop the sink
                // loudly (its events stay in the log) instead of retrying forever.
                DeltaTableError::SchemaMismatch { .. }
                | DeltaTableError::InvalidData { .. }
                | DeltaTableError::Arrow { .. }
                | DeltaTableError::PartitionError { .. }
                | DeltaTableError::InvalidTableLocation(_)
                | DeltaTableError::MissingFeature { .. }
                | DeltaTableError::UnsupportedColumnMapping { .. }
                | DeltaTableError::VersionDowngrade { .. } => ErrorKind::Permanent,
                // Object-store, I/O and commit-conflict failures, and what
                // delta-rs reports as generic: worth another try.
                _ => ErrorKind::Transient,
            },
        }
    }
}

/// One open Delta table, as one sink writes it.
pub struct DeltaSink {
    spec: DeltaSinkSpec,
    app_id: String,
    url: Url,
    table: DeltaTable,
    /// The local directory, whose file system is synced after each commit.
    local: Option<PathBuf>,
    props: WriterProperties,
    runtime: tokio::runtime::Handle,
    upkeep: upkeep::State,
    /// An upkeep running beside the commits (append mode).
    upkeeping: Option<upkeep::Beside>,
    /// The newest version whose files are known to be fsynced.
    synced: Option<u64>,
    /// The table's partition columns (an existing table's, not the spec's).
    partition_by: Vec<String>,
}

/// What opening a table tells the runner.
pub struct Opened {
    /// The first log offset the table does not hold yet, from its txn.
    pub resume: Option<u64>,
    /// The record columns to encode: the table's columns with their types,
    /// plus (with `schema_evolution = "add_columns"`) new schema fields.
    pub record_schema: SchemaRef,
}

impl DeltaSink {
    /// Opens the table, creating it (with a txn at `start - 1`) if it does not
    /// exist yet; `schema` is the pipeline's table schema (records + metadata).
    pub async fn open(
        pipeline: &str,
        spec: DeltaSinkSpec,
        schema: &SchemaRef,
        start: u64,
    ) -> Result<(Self, Opened), DeltaError> {
        let runtime = table_runtime();
        let app_id = app_id(pipeline, &spec);
        let (builder, url, local) = builder(&spec)?;
        let table_err = table_error(&url);
        let mut table = builder.build().map_err(&table_err)?;
        let t = url.clone();
        let (schema_, partition_by, app) =
            (schema.clone(), spec.partition_by.clone(), app_id.clone());
        table = run_on(&runtime, &t, async move {
            match table.load().await {
                Ok(()) => Ok(table),
                Err(DeltaTableError::NotATable(_)) => {
                    create(table, &schema_, partition_by, &app, start).await
                }
                Err(e) => Err(e),
            }
        })
        .await?;
        let state = table.snapshot().map_err(&table_err)?;
        let table_schema = state.snapshot().arrow_schema();
        let table_partitions = state.metadata().partition_columns().to_vec();
        if table_partitions != spec.partition_by {
            warn!(table = %url, table_partition_by = %table_partitions.join(","), sink_partition_by = %spec.partition_by.join(","), "The table exists with other partition columns; they are kept (partition_by applies to new tables).");
        }
        let version = txn(&table, &app_id).await.map_err(&table_err)?;
        let resume = version.map(after);
        let record_schema = record_schema(&table_schema, schema, spec.add_columns, &url);
        info!(table = %url, version = table.version(), txn = version, "Opened Delta table.");
        let upkeep = upkeep::State::default();
        // What an earlier run wrote last may not be on disk yet if it was killed.
        let synced = table.version().and_then(|v| v.checked_sub(10));
        Ok((
            DeltaSink {
                spec,
                app_id,
                url: url.clone(),
                table,
                local,
                props: files::writer_properties(),
                runtime,
                upkeep,
                upkeeping: None,
                synced,
                partition_by: table_partitions,
            },
            Opened {
                resume,
                record_schema,
            },
        ))
    }

    /// The table's partition columns.
    pub fn partition_by(&self) -> &[String] {
        &self.partition_by
    }

    /// The primary key columns in merge mode.
    pub fn merge_on(&self) -> Option<&[String]> {
        self.spec.merge_on.as_deref()
    }

    /// The first log offset the existing table at `spec` does not hold
    /// (its txn version + 1), without creating anything. The pipeline's log
    /// never assigns offsets below it, even if the data directory was lost.
    pub async fn resume_offset(
        pipeline: &str,
        spec: &DeltaSinkSpec,
    ) -> Result<Option<u64>, DeltaError> {
        let app_id = app_id(pipeline, spec);
        let (builder, url, _) = builder(spec)?;
        let mut table = builder.build().map_err(table_error(&url))?;
        run_on(&table_runtime(), &url, async move {
            match table.load().await {
                Ok(()) => {}
                Err(DeltaTableError::NotATable(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
            Ok(txn(&table, &app_id).await?.map(after))
        })
        .await
    }

    /// The table's URL, for messages.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Commits `batch` (offsets up to and including `last`) as one Delta
    /// commit with its txn. If an earlier try of the same commit succeeded
    /// without us hearing of it, the table's txn says so and nothing is
    /// written again.
    pub async fn commit(&mut self, batch: RecordBatch, last: u64) -> Result<(), DeltaError> {
        let app_id = self.app_id.clone();
        let (table, props) = (self.table.clone(), self.props.clone());
        let (merge_on, add_columns) = (self.spec.merge_on.clone(), self.spec.add_columns);
        // `other`: the txn of another writer with this app id, ahead of us.
        let (table, other) = run_on(&self.runtime, &self.url, async move {
            let mut table = table;
            table.update_incremental(None).await?;
            let done = txn(&table, &app_id).await?;
            match done {
                Some(v) if v == last as i64 => return Ok((table, None)),
                Some(v) if v > last as i64 => return Ok((table, Some(v))),
                _ => {}
            }
            let batch = align(&batch, &table.snapshot()?.snapshot().arrow_schema());
            let commit = CommitProperties::default()
                .with_application_transaction(Transaction::new(&app_id, last as i64))
                .with_create_checkpoint(false)
                .with_max_retries(COMMIT_RETRIES);
            if batch.num_rows() == 0 {
                // Every event of the flush was a dead letter (or a poll
                // source's state record): the txn still moves, so the table
                // keeps saying exactly where the sink is.
                let operation = DeltaOperation::StreamingUpdate {
                    output_mode: OutputMode::Append,
                    query_id: app_id.clone(),
                    epoch_id: last as i64,
                };
                CommitBuilder::from(commit)
                    .build(Some(table.snapshot()?), table.log_store(), operation)
                    .await?;
                table.update_incremental(None).await?;
                return Ok((table, None));
            }
            let table = match merge_on {
                Some(keys) => {
                    merge::upsert(table, batch, &keys, add_columns, commit, props).await?
                }
                None => {
                    let mut write = table
                        .write(vec![batch])
                        .with_save_mode(SaveMode::Append)
                        .with_writer_properties(props)
                        .with_commit_properties(commit);
                    if add_columns {
                        write = write.with_schema_mode(SchemaMode::Merge);
                    }
                    write.await?
                }
            };
            Ok((table, None))
        })
        .await?;
        self.table = table;
        if let Some(txn) = other {
            return Err(DeltaError::SharedAppId {
                table: self.url.to_string(),
                app_id: self.app_id.clone(),
                txn,
                last,
            });
        }
        self.sync_local().await
    }

    /// Checkpoint, compaction and vacuum when they are due. Failures are
    /// logged and retried at the next commit: upkeep never holds back data.
    ///
    /// In append mode upkeep runs beside the next flushes (a compaction of
    /// 16 files took ~0.75 s, during which the sink used to stop): its
    /// compaction commits on top of the sink's appends (see [`compact`]).
    /// One upkeep of this sink runs at a time (the sinks of other partitions
    /// or processes may run theirs); what falls due meanwhile runs after the
    /// next commit. In merge mode upkeep still runs between this sink's
    /// commits: its next merge would otherwise conflict with the compaction
    /// (see [`compact`]) and be redone.
    pub async fn upkeep(&mut self) {
        self.upkeep.committed();
        if self.upkeeping.as_ref().is_some_and(|u| !u.is_finished()) {
            return;
        }
        self.settle().await;
        self.upkeeping = Some(upkeep::Beside::start(
            &self.runtime,
            self.table.clone(),
            self.spec.clone(),
            self.props.clone(),
            self.upkeep.clone(),
            self.url.clone(),
            self.local.clone(),
        ));
        if self.spec.merge_on.is_some() {
            self.settle().await;
        }
    }

    /// Waits for an upkeep running beside the commits, and takes in what it did.
    pub async fn settle(&mut self) {
        if let Some(beside) = self.upkeeping.take() {
            beside.settle(&mut self.upkeep).await;
        }
    }

    /// Makes what delta-rs wrote on local disk durable: its local store
    /// renames files into place without fsync, and the sink's ledger (which
    /// lets the log drop the events) is written right after a commit.
    async fn sync_local(&mut self) -> Result<(), DeltaError> {
        let (Some(dir), Some(to)) = (self.local.clone(), self.table.version()) else {
            return Ok(());
        };
        let from = self.synced.map_or(0, |v| v + 1);
        let synced = tokio::task::spawn_blocking(move || sync::versions(&dir, from, to))
            .await
            .map_err(|_| DeltaError::Task(self.url.to_string()))?;
        synced.map_err(|source| StorageError::Local {
            path: self.local.clone().unwrap_or_default(),
            source,
        })?;
        self.synced = Some(to);
        Ok(())
    }
}

/// The txn app id of a pipeline's sink.
fn app_id(pipeline: &str, spec: &DeltaSinkSpec) -> String {
    format!("tributary/{pipeline}/{}", spec.name)
}

/// Maps delta-rs's errors on the table at `url`.
fn table_error(url: &Url) -> impl Fn(DeltaTableError) -> DeltaError + '_ {
    move |source| DeltaError::Table {
        table: url.to_string(),
        source: Box::new(source),
    }
}

/// The table's txn version for `app_id` (the last offset that app committed).
async fn txn(table: &DeltaTable, app_id: &str) -> DeltaResult<Option<i64>> {
    table
        .snapshot()?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
}

/// The first log offset after txn version `version`.
fn after(version: i64) -> u64 {
    (version + 1).max(0) as u64
}

/// How often delta-rs itself retries a commit whose version another writer
/// took first (each retry re-checks for conflicts; appends never conflict).
const COMMIT_RETRIES: usize = 100;

/// The builder for the sink's table, its URL, and its local directory if any.
fn builder(spec: &DeltaSinkSpec) -> Result<(DeltaTableBuilder, Url, Option<PathBuf>), DeltaError> {
    register_s3();
    let invalid = |location: String| DeltaError::Table {
        table: location.clone(),
        source: Box::new(DeltaTableError::InvalidTableLocation(location)),
    };
    match &spec.location {
        Location::Local(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| StorageError::Local {
                path: dir.clone(),
                source,
            })?;
            let dir = dir.canonicalize().map_err(|source| StorageError::Local {
                path: dir.clone(),
                source,
            })?;
            let url =
                Url::from_directory_path(&dir).map_err(|()| invalid(dir.display().to_string()))?;
            let builder = DeltaTableBuilder::from_url(url.clone()).map_err(table_error(&url))?;
            Ok((builder, url, Some(dir)))
        }
        location @ Location::S3 { .. } => {
            let Storage::Object { store, .. } = Storage::new(location, &spec.storage)? else {
                unreachable!("an s3 location builds an object store");
            };
            let url =
                Url::parse(&location.to_string()).map_err(|_| invalid(location.to_string()))?;
            let builder = DeltaTableBuilder::from_url(url.clone())
                .map_err(table_error(&url))?
                .with_storage_backend(store, url.clone());
            Ok((builder, url, None))
        }
    }
}

/// Creates the table with the pipeline's schema and partitions and a txn at
/// `start - 1`. Losing a creation race to another writer is fine: the table
/// is then loaded as that writer made it.
async fn create(
    table: DeltaTable,
    schema: &SchemaRef,
    partition_by: Vec<String>,
    app_id: &str,
    start: u64,
) -> DeltaResult<DeltaTable> {
    let columns: StructType = schema.as_ref().try_into_kernel()?;
    let commit = CommitProperties::default()
        .with_application_transaction(Transaction::new(app_id, start as i64 - 1));
    let created = table
        .create()
        .with_columns(columns.fields().cloned())
        .with_partition_columns(partition_by)
        .with_save_mode(SaveMode::Ignore)
        .with_commit_properties(commit)
        .await;
    match created {
        Ok(table) => Ok(table),
        Err(DeltaTableError::VersionAlreadyExists(_) | DeltaTableError::Transaction { .. }) => {
            let mut table = table;
            table.load().await?;
            Ok(table)
        }
        Err(e) => Err(e),
    }
}

/// The columns to encode: every table column with the table's type (values
/// that do not fit it become dead letters), then the pipeline's new fields
/// if columns may be added. Table columns the schema no longer has keep
/// their nullability (the table decides what a row must hold).
fn record_schema(table: &Schema, pipeline: &Schema, add_columns: bool, url: &Url) -> SchemaRef {
    let is_record = |f: &&Arc<Field>| !METADATA_COLUMNS.contains(&f.name().as_str());
    let mut fields: Vec<Field> = Vec::new();
    for field in table.fields().iter().filter(is_record) {
        // Kept as the table has it, type and nullability: a required column
        // the schema dropped makes records without it dead letters.
        if let Ok(ours) = pipeline.field_with_name(field.name()) {
            if !ours.data_type().equals_datatype(field.data_type()) {
                warn!(table = %url, column = %field.name(), table_type = %field.data_type(), schema_type = %ours.data_type(), "The schema's type differs from the table's; the table's type is kept and values that do not fit it become dead letters.");
            } else if crate::encode::infer::has_json_text(&[Arc::new(ours.clone())].into()) {
                // The table keeps no field metadata: take the schema's field,
                // which says the column holds JSON text.
                fields.push(ours.clone().with_nullable(field.is_nullable()));
                continue;
            }
        }
        fields.push(field.as_ref().clone());
    }
    for field in pipeline.fields().iter().filter(is_record) {
        if table.field_with_name(field.name()).is_ok() {
            continue;
        }
        if add_columns {
            info!(table = %url, column = %field.name(), "New schema field; the table gains a nullable column at the next commit.");
            fields.push(field.as_ref().clone().with_nullable(true));
        } else {
            warn!(table = %url, column = %field.name(), "New schema field is not written: schema_evolution = \"off\".");
        }
    }
    Arc::new(Schema::new(fields))
}

/// `batch` with its columns in the table's order (new columns last), so the
/// write lines up with the table whatever order evolution left it in.
fn align(batch: &RecordBatch, table: &Schema) -> RecordBatch {
    let schema = batch.schema();
    let mut order: Vec<usize> = table
        .fields()
        .iter()
        .filter_map(|f| schema.index_of(f.name()).ok())
        .collect();
    for (i, f) in schema.fields().iter().enumerate() {
        if table.field_with_name(f.name()).is_err() {
            order.push(i);
        }
    }
    batch.project(&order).unwrap_or_else(|_| batch.clone())
}

/// Runs a table operation on the table runtime and maps its error.
async fn run_on<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    url: &Url,
    op: impl std::future::Future<Output = DeltaResult<T>> + Send + 'static,
) -> Result<T, DeltaError> {
    runtime
        .spawn(op)
        .await
        .map_err(|_| DeltaError::Task(url.to_string()))?
        .map_err(table_error(url))
}

/// The runtime every table operation runs on: two workers at nice +10.
fn table_runtime() -> tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("delta")
                .on_thread_start(super::background_priority)
                .enable_all()
                .build()
                .expect("the Delta runtime starts")
        })
        .handle()
        .clone()
}

/// delta-rs's S3 log store needs a lock service unless told otherwise; the
/// default log store's create-only put (`If-None-Match: *`, which object_store
/// sends and S3 and compatible servers enforce) is what makes S3 commits safe.
fn register_s3() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        for scheme in ["s3://", "s3a://"] {
            logstore_factories().insert(
                Url::parse(scheme).expect("a scheme URL parses"),
                Arc::new(ConditionalPutLogStore),
            );
        }
    });
}

struct ConditionalPutLogStore;

impl LogStoreFactory for ConditionalPutLogStore {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

#[cfg(test)]
mod tests;
