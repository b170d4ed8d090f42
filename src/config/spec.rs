//! The typed, fully defaulted configuration that the rest of tributary reads.
//! Every value here has passed validation; nothing is optional that a runtime
//! path would have to unwrap.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_schema::SchemaRef;

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
    /// The file it came from (`tributary.toml` also when there is none), for messages.
    pub file: PathBuf,
    /// Address of the HTTP server.
    pub listen: SocketAddr,
    /// Durable buffer and sink progress live here.
    pub data_dir: PathBuf,
    /// Default location of tables and of the dead letters.
    pub lake: Location,
    /// Connection limits, TLS and the admin endpoints.
    pub server: ServerSpec,
    /// Where the pipelines' logs live.
    pub log: super::log::LogSpec,
}

pub use super::server::ServerSpec;

/// One pipeline, defaulted.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Unique name.
    pub name: String,
    /// The file it came from, for messages.
    pub file: PathBuf,
    /// Arrow schema of the record columns (without the `_` metadata columns);
    /// empty with `schema = "infer"`.
    pub schema: SchemaRef,
    /// `schema = "infer"`: columns are added as new record fields appear.
    pub infer_schema: bool,
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
    /// Streams the events are spread over on a JetStream log (`[log] partitions`).
    pub partitions: u32,
    /// Where the events go.
    pub sinks: Vec<SinkSpec>,
    /// One table per event type, if routed.
    pub route: Option<super::route::RouteSpec>,
    /// `[connections]`: one connection per end-user account, if on.
    pub connections: Option<super::connections::ConnectionsSpec>,
}

pub use super::source::{SourceKind, SourceSpec};

pub use super::source::dedupe::{DedupeBy, DedupeSpec};
pub use super::source::poll::{
    AuthSpec, CursorSpec, Ends, KeyPlace, PageLimit, Paginate, PollSpec, Schedule, Secret,
    SignatureMethod,
};
pub use super::source::verify::{VerifyScheme, VerifySpec};
pub use super::source::webhook::WebhookSpec;

pub use super::sink::delta::DeltaSinkSpec;
pub use super::sink::https::{HttpsSinkSpec, KeySource, SigningSpec};
pub use super::sink::parquet::ParquetSinkSpec;
pub use super::sink::{SinkKind, SinkSpec};

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

    /// Parses a storage location: `s3://bucket/prefix`, `file:///abs/dir` or a path
    /// (relative to `root`). Errors carry (problem, fix).
    pub fn parse(text: &str, root: &Path) -> Result<Location, (String, String)> {
        if let Some((scheme, rest)) = text.split_once("://") {
            return match scheme {
                "s3" | "s3a" => {
                    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                    if bucket.is_empty() {
                        return Err((
                            format!("\"{text}\" names no bucket"),
                            "write s3://bucket/prefix".into(),
                        ));
                    }
                    Ok(Location::S3 {
                        bucket: bucket.to_string(),
                        prefix: prefix.trim_matches('/').to_string(),
                    })
                }
                "file" => {
                    if !rest.starts_with('/') {
                        return Err((
                            format!("\"{text}\" is not an absolute file URL"),
                            "write file:///absolute/path or a plain path".into(),
                        ));
                    }
                    Ok(Location::Local(PathBuf::from(rest)))
                }
                other => Err((
                    format!("unknown scheme \"{other}\""),
                    "expected s3://, file:// or a path".into(),
                )),
            };
        }
        if text.is_empty() {
            return Err((
                "is empty".into(),
                "write a path, file:// or s3:// location".into(),
            ));
        }
        Ok(Location::Local(root.join(text)))
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

/// Flush limits (`[batch]`); any one reached closes the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most events in one flush.
    pub max_events: usize,
    /// Most raw payload bytes in one flush.
    pub max_bytes: u64,
    /// Longest wait of the first event in a batch.
    pub max_age: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let root = Path::new("/srv/t");
        assert_eq!(
            Location::parse("lake", root).unwrap(),
            Location::Local("/srv/t/lake".into())
        );
        assert_eq!(
            Location::parse("file:///x/y", root).unwrap(),
            Location::Local("/x/y".into())
        );
        assert_eq!(
            Location::parse("s3://b/p/q/", root).unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        let (problem, fix) = Location::parse("s4://b", root).unwrap_err();
        assert_eq!(problem, "unknown scheme \"s4\"");
        assert!(fix.contains("s3://"));
    }
}
