//! The serde mirror of the TOML files: exactly what a user may write, nothing
//! defaulted or checked yet. Required keys are `Option` so that validation can
//! name a missing key together with its fix instead of a bare serde message.

use serde::Deserialize;

/// `tributary.toml`: global settings, every key optional.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    /// Address of the HTTP server (webhooks and `/healthz`), e.g. `"127.0.0.1:8080"`.
    pub listen: Option<String>,
    /// Directory of the durable buffer and of each sink's progress.
    pub data_dir: Option<String>,
    /// Where sinks without a `uri` write (`<lake>/<pipeline>`): a path, `file://` or `s3://`.
    pub lake: Option<String>,
    /// Connection limits of the HTTP server.
    pub server: Option<RawServer>,
    /// HTTPS on `listen`.
    pub tls: Option<RawTls>,
    /// Where the admin endpoints listen and who may call them.
    pub admin: Option<RawAdmin>,
    /// Where the pipelines' logs live: local files or a JetStream cluster.
    pub log: Option<super::log::RawLog>,
}

/// One `pipelines/*.toml` file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    /// Pipeline name: lower-case letters, digits, `_` and `-`; names its data and tables.
    pub name: Option<String>,
    /// Path of the JSON Schema file describing one record.
    pub schema: Option<String>,
    /// JSON pointer to the record inside each event; `""` (default) is the whole event.
    pub record_path: Option<String>,
    /// Columns that identify a record (for dedupe and merge).
    pub primary_key: Option<Vec<String>>,
    /// The trigger.
    pub source: Option<RawSource>,
    /// When each columnar sink flushes.
    pub batch: Option<RawBatch>,
    /// Limits of the durable buffer.
    pub buffer: Option<RawBuffer>,
    /// Its partitions on a JetStream log.
    pub log: Option<super::log::RawPipelineLog>,
    /// One table per event type.
    pub route: Option<super::route::RawRoute>,
    /// One connection per end-user account, added at run time.
    pub connections: Option<super::connections::RawConnections>,
    /// Where the events go; at least one.
    #[serde(default)]
    pub sink: Vec<RawSink>,
}

pub use super::source::dedupe::{RawDedupe, RawDedupeTable};
pub use super::source::poll::{
    RawApiKey, RawAuth, RawBasic, RawBearer, RawCursor, RawOauth2, RawPaginate, RawPoll,
};
pub use super::source::verify::RawVerify;
pub use super::source::webhook::RawWebhook;
pub use super::source::RawSource;

/// `[batch]`: a flush happens when any limit is reached.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    /// Most events in one flush.
    pub max_events: Option<u64>,
    /// Most raw event bytes in one flush, e.g. `"64MiB"`.
    pub max_bytes: Option<RawSize>,
    /// Longest time the first event of a batch waits, e.g. `"30s"`.
    pub max_age: Option<String>,
}

/// `[buffer]`: the durable log of this pipeline.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {
    /// Disk the log may use before webhooks are answered 503, e.g. `"1GiB"`.
    pub max_bytes: Option<RawSize>,
}

pub use super::sink::https::{RawHttpsSink, RawSigning};
pub use super::sink::RawSink;

pub use super::check::{OneOrMany, RawSize};
pub use super::server::{RawAdmin, RawServer, RawTls};
pub use super::sink::delta::RawDeltaSink;
pub use super::sink::parquet::RawParquetSink;

pub use super::parse::parse_toml;
