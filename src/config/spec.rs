//! The typed, fully defaulted configuration that the rest of tributary reads.
//! Every value here has passed validation; nothing is optional that a runtime
//! path would have to unwrap.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use arrow_schema::SchemaRef;

use crate::sink::batch::BatchPolicy;

/// Everything `tributary run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Global settings.
    pub global: GlobalSpec,
    /// Every pipeline, in file-name order.
    pub pipelines: Vec<PipelineSpec>,
}

/// `tributary.toml`, defaulted.
#[derive(Debug, Clone)]
pub struct GlobalSpec {
    /// Address of the HTTP server.
    pub listen: SocketAddr,
    /// Durable buffer and sink progress live here.
    pub data_dir: PathBuf,
    /// Default location of tables and of the dead letters.
    pub lake: Location,
}

/// One pipeline, defaulted.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Unique name.
    pub name: String,
    /// The file it came from, for messages.
    pub file: PathBuf,
    /// Arrow schema of the record columns (without the `_` metadata columns).
    pub schema: SchemaRef,
    /// JSON pointer to the record in each event (`""` = the whole event).
    pub record_path: String,
    /// Columns that identify a record.
    pub primary_key: Vec<String>,
    /// The trigger.
    pub source: SourceSpec,
    /// Flush policy of the columnar sinks.
    pub batch: BatchPolicy,
    /// Disk the log may use before the source answers 503.
    pub buffer_max_bytes: u64,
    /// Where the events go.
    pub sinks: Vec<SinkSpec>,
}

/// A trigger.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// Events POSTed to a path.
    Webhook(WebhookSpec),
}

impl SourceSpec {
    /// The value of the `_source` column.
    pub fn label(&self) -> String {
        match self {
            SourceSpec::Webhook(w) => format!("webhook:{}", w.path),
        }
    }
}

/// `type = "webhook"`.
#[derive(Debug, Clone)]
pub struct WebhookSpec {
    /// URL path, starting with `/`.
    pub path: String,
    /// Largest accepted body in bytes.
    pub max_body: u64,
}

/// A sink.
#[derive(Debug, Clone)]
pub enum SinkSpec {
    /// Parquet files.
    Parquet(ParquetSinkSpec),
}

impl SinkSpec {
    /// The sink's name, unique within its pipeline.
    pub fn name(&self) -> &str {
        match self {
            SinkSpec::Parquet(p) => &p.name,
        }
    }
}

/// `type = "parquet"`.
#[derive(Debug, Clone)]
pub struct ParquetSinkSpec {
    /// Unique within the pipeline; names its progress file.
    pub name: String,
    /// Where the files go.
    pub location: Location,
    /// Hive-style partition columns, outermost first.
    pub partition_by: Vec<String>,
    /// Object-store settings, keys as object_store names them.
    pub storage: BTreeMap<String, String>,
}

/// A place in storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on local disk.
    Local(PathBuf),
    /// A prefix in an S3-compatible bucket.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/` (may be empty).
        prefix: String,
    },
}

impl Location {
    /// This location with `name` appended as a sub-directory.
    pub fn join(&self, name: &str) -> Location {
        match self {
            Location::Local(p) => Location::Local(p.join(name)),
            Location::S3 { bucket, prefix } => Location::S3 {
                bucket: bucket.clone(),
                prefix: if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                },
            },
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}
