//! Table sinks: the one plug-in point for a sink that writes rows in batches.
//! Parquet files ([`super::parquet::ParquetSink`]) and Delta tables
//! ([`super::delta::DeltaTables`]) implement [`TableSink`]; one runner
//! ([`super::runner::Runner`]) drives either. A new kind of table (Iceberg,
//! say) implements these two traits and adds one arm to [`super::plan`].
//!
//! A sink writes one table, or with `[route]` one table per event type
//! ([`Router`]): each routed table lives under the sink's location in a
//! directory named after its route value, with its own schema and, for
//! Delta, its own `txn` app id (`tributary/<pipeline>/<sink>/<table>`).

use std::collections::BTreeSet;
use std::ops::Range;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use deltalake::datafusion::prelude::SessionContext;
use futures::future::BoxFuture;

use super::SinkError;
use crate::config::route::{table_name, RouteBy, RouteSpec};
use crate::encode::{pointer, Encoder};
use crate::event::Event;

/// The name of the one table of a sink without `[route]`: its location itself.
pub const UNROUTED: &str = "";

/// A kind of table sink: opens its tables.
pub trait TableSink: Send + Sync {
    /// Opens the table `name` ([`UNROUTED`] or a routed table's name),
    /// creating it if it does not exist; `encoder` is what the pipeline would
    /// encode its rows with, `start` the first offset the runner may write.
    fn open<'a>(
        &'a self,
        name: &'a str,
        encoder: &'a Encoder,
        start: u64,
    ) -> BoxFuture<'a, Result<Opened, SinkError>>;

    /// The routed tables that exist already (found in storage at start), so
    /// that `route.max_tables` counts them after a restart.
    fn existing(&self) -> BoxFuture<'_, Result<Vec<String>, SinkError>>;

    /// The offset after the highest one any of this sink's tables holds (0
    /// if none): where a new log must start if the old one was lost.
    fn end_offset(&self) -> BoxFuture<'_, Result<u64, SinkError>>;

    /// This sink as written by the reader of `partition` of a JetStream log
    /// (its own file names, its own Delta txn id: offsets repeat across
    /// partitions), or by the file log's one reader (`None`: itself).
    fn placed(&self, partition: Option<u32>) -> Box<dyn TableSink>;

    /// Table `name` ([`UNROUTED`] or a routed table's) as a table SQL can
    /// read through `ctx`, or `None` while nothing is written to it.
    fn sql_table<'a>(
        &'a self,
        ctx: &'a SessionContext,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SqlTable>, ReadError>>;

    /// Whether this sink can delete one connection's rows; if not, why
    /// and the fix (asked before a purge deletes anything anywhere).
    fn can_purge(&self) -> Result<(), String> {
        Err("this kind of sink cannot delete one connection's rows".into())
    }

    /// Deletes every row of `connection` from every table of the sink;
    /// returns how many rows (or, where rows are not counted, files) went.
    fn purge<'a>(&'a self, connection: &'a str) -> BoxFuture<'a, Result<Purged, SinkError>> {
        let _ = connection;
        Box::pin(async { Err(SinkError::Internal("purge of a sink that cannot".into())) })
    }
}

/// What a purge deleted from one sink.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Purged {
    /// Rows deleted (Delta: counted before the delete commit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Files deleted (Parquet: the connection's partition directories).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
}

/// A table as DataFusion reads it.
pub type SqlTable = std::sync::Arc<dyn deltalake::datafusion::catalog::TableProvider>;

/// Why a table cannot be opened for queries.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The Delta table cannot be read.
    #[error("{}", crate::error::chain(.0))]
    Delta(#[source] super::delta::DeltaError),
    /// The Parquet files' storage cannot be used.
    #[error("{}", crate::error::chain(.0))]
    Storage(#[source] super::StorageError),
    /// DataFusion cannot register the files or the table.
    #[error("{0}")]
    DataFusion(#[from] deltalake::datafusion::error::DataFusionError),
    /// delta-rs cannot give a table provider.
    #[error("{0}")]
    DeltaTable(#[from] deltalake::DeltaTableError),
    /// A local directory that cannot be resolved.
    #[error("{}: {source}", path.display())]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A path that is no URL.
    #[error("{} is not a directory path", .0.display())]
    NotDirPath(std::path::PathBuf),
    /// An S3 location whose storage is local (Storage::new never gives one).
    #[error("an s3 location without an object store")]
    NoStore,
    /// A bucket or prefix that makes no URL.
    #[error("{0}")]
    Url(#[from] url::ParseError),
}

/// An open table and how to encode its rows.
pub struct Opened {
    /// The table.
    pub table: Box<dyn Table>,
    /// The encoder for its rows: the table's own columns (a Delta table's, a
    /// Parquet sink's inferred schema), on the pipeline's settings.
    pub encoder: Encoder,
    /// The first offset the table does not hold, if it records one (Delta's txn).
    pub resume: Option<u64>,
}

/// What one write stored.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    /// Objects written (Parquet files; 0 for a Delta commit, which counts its own).
    pub files: usize,
    /// Their bytes.
    pub bytes: usize,
}

/// One open table.
pub trait Table: Send + Sync {
    /// Where it is, for messages.
    fn describe(&self) -> String;
    /// Columns whose values name directories (rows whose values cannot are dead letters).
    fn partition_by(&self) -> &[String];
    /// Primary key columns in merge mode (rows with a null key are dead letters).
    fn merge_on(&self) -> Option<&[String]>;
    /// Makes the record schema an inferring encoder grew durable before the
    /// first write that uses it (Parquet keeps it in a file; a Delta commit
    /// carries its schema), and returns the schema to encode with: `schema`
    /// itself, or, where several writers share the table (a JetStream log),
    /// the one they agreed on, which holds every column of `schema` but may
    /// type some differently (the rows are then encoded again).
    fn keep_schema<'a>(
        &'a mut self,
        schema: &'a SchemaRef,
    ) -> BoxFuture<'a, Result<SchemaRef, SinkError>>;
    /// Writes the rows of log offsets `range` (possibly none). Writing the
    /// same range again changes nothing: the runner retries and re-flushes
    /// with this.
    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        range: &'a Range<u64>,
    ) -> BoxFuture<'a, Result<Written, SinkError>>;
    /// What a failed write is called in logs and in the sink's health.
    fn write_failed(&self) -> &'static str {
        "Upload failed"
    }
    /// Maintenance after a write with rows (checkpoints, compaction); never
    /// fails the flush, and may go on beside the next writes.
    fn upkeep(&mut self) -> BoxFuture<'_, ()>;
    /// Waits for maintenance still running (the runner is done).
    fn settle(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Picks each event's table from `[route]`: the value of a request header
/// (kept with the event) or of a JSON pointer, made a table name
/// ([`table_name`]). New names make new tables up to `max_tables`; events
/// without a usable value, and new values beyond the cap, go to the
/// default table.
#[derive(Debug)]
pub struct Router {
    by: RouteBy,
    pointer: Vec<String>,
    max_tables: usize,
    default_table: String,
    known: BTreeSet<String>,
}

impl Router {
    /// A router for `spec` that already knows the tables `existing`.
    pub fn new(spec: &RouteSpec, existing: impl IntoIterator<Item = String>) -> Self {
        let pointer = match &spec.by {
            RouteBy::Pointer(p) => pointer::tokens(p),
            RouteBy::Header(_) => Vec::new(),
        };
        Self {
            by: spec.by.clone(),
            pointer,
            max_tables: spec.max_tables,
            default_table: spec.default_table.clone(),
            known: existing
                .into_iter()
                .filter(|t| *t != spec.default_table)
                .collect(),
        }
    }

    /// The table `event` goes to.
    pub fn table_of(&mut self, event: &Event) -> String {
        let name = match &self.by {
            RouteBy::Header(_) => event.topic.as_deref().and_then(table_name),
            RouteBy::Pointer(_) => self.value(&event.payload).as_deref().and_then(table_name),
        };
        match name {
            Some(name) if self.known.contains(&name) => name,
            Some(name) if self.known.len() < self.max_tables && name != self.default_table => {
                self.known.insert(name.clone());
                name
            }
            _ => self.default_table.clone(),
        }
    }

    /// The text of the scalar at the route's pointer in `payload`.
    fn value(&self, payload: &[u8]) -> Option<String> {
        let bytes = pointer::value(payload, &self.pointer).ok()?.ok()?;
        match serde_json::from_slice::<serde_json::Value>(bytes).ok()? {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// The directory names under `names` (object paths relative to a sink's
/// location) that are routed tables: their first path component, if it is
/// a table name and `is_table` says the rest marks a table.
pub fn routed_tables(names: &[String], is_table: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = BTreeSet::new();
    for name in names {
        if let Some((first, rest)) = name.split_once('/') {
            if table_name(first).as_deref() == Some(first) && is_table(rest) {
                found.insert(first.to_string());
            }
        }
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn spec(by: RouteBy, max_tables: usize) -> RouteSpec {
        RouteSpec {
            by,
            max_tables,
            default_table: "other".into(),
            schemas: Default::default(),
            declared: Default::default(),
        }
    }

    #[test]
    fn routes_by_header_and_by_pointer_with_a_cap() {
        let mut by_header = Router::new(
            &spec(RouteBy::Header("x-github-event".into()), 2),
            ["push".to_string()],
        );
        let event = |topic: Option<&str>| Event::new(Bytes::from_static(b"{}")).with_topic(topic);
        assert_eq!(by_header.table_of(&event(Some("push"))), "push");
        assert_eq!(
            by_header.table_of(&event(Some("Pull Request"))),
            "pull_request"
        );
        assert_eq!(
            by_header.table_of(&event(Some("issues"))),
            "other",
            "beyond max_tables"
        );
        assert_eq!(
            by_header.table_of(&event(Some("pull_request"))),
            "pull_request"
        );
        assert_eq!(by_header.table_of(&event(None)), "other");
        assert_eq!(by_header.table_of(&event(Some("../"))), "other");

        let mut by_pointer = Router::new(&spec(RouteBy::Pointer("/event/type".into()), 10), []);
        let body = |json: &'static str| Event::new(Bytes::from_static(json.as_bytes()));
        assert_eq!(
            by_pointer.table_of(&body(r#"{"event": {"type": "app_mention"}}"#)),
            "app_mention"
        );
        assert_eq!(by_pointer.table_of(&body(r#"{"event": {"type": 7}}"#)), "7");
        assert_eq!(by_pointer.table_of(&body(r#"{"event": {}}"#)), "other");
        assert_eq!(
            by_pointer.table_of(&body(r#"{"event": {"type": {"a": 1}}}"#)),
            "other"
        );
        assert_eq!(by_pointer.table_of(&body(r#"["no object"]"#)), "other");
    }

    #[test]
    fn finds_routed_tables_in_listings() {
        let names: Vec<String> = [
            "push/_delta_log/00000000000000000000.json",
            "push/part-1.parquet",
            "issues/_received_date=2024-01-01/part-00000000000000000000-00000000000000000003.parquet",
            "_tributary/schema.json",
            "part-00000000000000000000-00000000000000000003.parquet",
            "Bad Name/_delta_log/0.json",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            routed_tables(&names, |rest| rest.starts_with("_delta_log/")),
            ["push"]
        );
        assert_eq!(
            routed_tables(&names, |rest| rest.ends_with(".parquet")),
            ["issues", "push"]
        );
    }
}
