//! The typed, fully defaulted configuration that the rest of tributary reads.
//! Every value here has passed validation; nothing is optional that a runtime
//! path would have to unwrap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use arrow_schema::SchemaRef;
use serde::{Serialize, Serializer};

/// Everything `tributary run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Global settings.
    pub global: GlobalSpec,
    /// Every pipeline, in file-name order.
    pub pipelines: Vec<PipelineSpec>,
}

/// `tributary.toml`, defaulted; its `Serialize` form is what
/// `check --explain` prints.
#[derive(Debug, Clone, Serialize)]
pub struct GlobalSpec {
    /// The file it came from (`tributary.toml` also when there is none), for messages.
    #[serde(skip)]
    pub file: PathBuf,
    /// Address of the HTTP server.
    #[serde(serialize_with = "super::check::shown::display")]
    pub listen: SocketAddr,
    /// Durable buffer and sink progress live here.
    pub data_dir: PathBuf,
    /// Default location of tables and of the dead letters.
    #[serde(serialize_with = "super::check::shown::location")]
    pub lake: Location,
    /// Connection limits, TLS and the admin endpoints.
    #[serde(flatten)]
    pub server: ServerSpec,
    /// Where the pipelines' logs live.
    pub log: super::log::LogSpec,
}

pub use super::server::ServerSpec;

/// One pipeline, defaulted; its `Serialize` form is what `check --explain`
/// prints.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineSpec {
    /// Unique name.
    pub name: String,
    /// The file it came from, for messages.
    #[serde(skip)]
    pub file: PathBuf,
    /// Arrow schema of the record columns (without the `_` metadata columns);
    /// empty with `schema = "infer"`.
    #[serde(rename = "schema_columns", serialize_with = "columns")]
    pub schema: SchemaRef,
    /// `schema = "infer"`: columns are added as new record fields appear.
    pub infer_schema: bool,
    /// JSON pointer to the record in each event (`""` = the whole event).
    pub record_path: String,
    /// Columns that identify a record.
    pub primary_key: Vec<String>,
    /// The trigger.
    #[serde(serialize_with = "source")]
    pub source: SourceSpec,
    /// Flush policy of the columnar sinks.
    pub batch: BatchPolicy,
    /// Disk the log may use before the source answers 503.
    #[serde(rename = "buffer", serialize_with = "buffer")]
    pub buffer_max_bytes: u64,
    /// Streams the events are spread over on a JetStream log (`[log] partitions`).
    #[serde(rename = "log", serialize_with = "log_partitions")]
    pub partitions: u32,
    /// Where the events go.
    #[serde(rename = "sink", serialize_with = "sinks")]
    pub sinks: Vec<SinkSpec>,
    /// One table per event type, if routed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<super::route::RouteSpec>,
    /// `[connections]`: one connection per end-user account, if on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<super::connections::ConnectionsSpec>,
}

fn columns<S: Serializer>(schema: &SchemaRef, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(schema.fields().iter().map(|f| f.name()))
}

fn source<S: Serializer>(source: &SourceSpec, s: S) -> Result<S::Ok, S::Error> {
    source.kind().explain().serialize(s)
}

fn sinks<S: Serializer>(sinks: &[SinkSpec], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(sinks.iter().map(|sink| sink.kind().explain()))
}

fn buffer<S: Serializer>(max_bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
    let mut t = toml::Table::new();
    t.insert(
        "max_bytes".into(),
        super::check::format_size(*max_bytes).into(),
    );
    t.serialize(s)
}

/// Used on a JetStream log only.
fn log_partitions<S: Serializer>(partitions: &u32, s: S) -> Result<S::Ok, S::Error> {
    let mut t = toml::Table::new();
    t.insert("partitions".into(), i64::from(*partitions).into());
    t.serialize(s)
}

pub use super::source::{SourceKind, SourceSpec};

pub use super::source::dedupe::{DedupeBy, DedupeSpec};
pub use super::source::poll::{
    AuthSpec, CursorSpec, Ends, KeyPlace, PageLimit, Paginate, PollSpec, Schedule, Secret,
    SignatureMethod,
};
pub use super::source::verify::{VerifyScheme, VerifySpec};
pub use super::source::webhook::WebhookSpec;

pub use super::check::Location;
pub use super::sink::delta::DeltaSinkSpec;
pub use super::sink::https::{HttpsSinkSpec, KeySource, SigningSpec};
pub use super::sink::parquet::ParquetSinkSpec;
pub use super::sink::{SinkKind, SinkSpec};

/// Flush limits (`[batch]`); any one reached closes the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatchPolicy {
    /// Most events in one flush.
    pub max_events: usize,
    /// Most raw payload bytes in one flush.
    #[serde(serialize_with = "super::check::shown::size")]
    pub max_bytes: u64,
    /// Longest wait of the first event in a batch.
    #[serde(serialize_with = "super::check::shown::duration")]
    pub max_age: Duration,
}
