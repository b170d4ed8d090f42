//! The typed, fully defaulted configuration that the rest of tributary reads.
//! Every value here has passed validation; nothing is optional that a runtime
//! path would have to unwrap.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Connection limits, TLS and the admin endpoints.
    pub server: ServerSpec,
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
    /// Where the events go.
    pub sinks: Vec<SinkSpec>,
    /// One table per event type, if routed.
    pub route: Option<super::route::RouteSpec>,
}

/// A trigger.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// Events POSTed to a path.
    Webhook(WebhookSpec),
    /// Scheduled REST pulls.
    Poll(Box<PollSpec>),
}

impl SourceSpec {
    /// The value of the `_source` column.
    pub fn label(&self) -> String {
        match self {
            SourceSpec::Webhook(w) => format!("webhook:{}", w.path),
            SourceSpec::Poll(p) => {
                let mut url = p.url.clone();
                url.set_query(None);
                format!("poll:{url}")
            }
        }
    }
}

/// `type = "poll"`.
#[derive(Debug, Clone)]
pub struct PollSpec {
    /// When runs start.
    pub schedule: Schedule,
    /// Up to this much random delay before each scheduled run.
    pub jitter: Duration,
    /// The endpoint.
    pub url: url::Url,
    /// POST with `body` instead of GET.
    pub post: bool,
    /// JSON body template of a POST.
    pub body: Option<serde_json::Value>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Query parameters (templates).
    pub query: Vec<(String, String)>,
    /// Longest wait for one response.
    pub timeout: Duration,
    /// Largest accepted response body in bytes.
    pub max_response: u64,
    /// Retries of a failing request before the run fails.
    pub max_retries: u32,
    /// Most pages in one run.
    pub max_pages: u64,
    /// How requests authenticate.
    pub auth: AuthSpec,
    /// JSON pointer to the records array.
    pub records: String,
    /// The incremental cursor, if any.
    pub cursor: Option<CursorSpec>,
    /// How to reach the next page.
    pub paginate: Paginate,
}

impl PollSpec {
    /// The env vars this source reads its secrets from.
    pub fn secret_envs(&self) -> Vec<&str> {
        match &self.auth {
            AuthSpec::None => vec![],
            AuthSpec::Bearer { token_env } => vec![token_env.as_str()],
            AuthSpec::Basic {
                username,
                password_env,
            } => match username {
                Secret::Env(name) => vec![name.as_str(), password_env.as_str()],
                Secret::Plain(_) => vec![password_env.as_str()],
            },
            AuthSpec::ApiKey { key_env, .. } => vec![key_env.as_str()],
            AuthSpec::Oauth2 {
                client_id_env,
                client_secret_env,
                refresh_token_env,
                ..
            } => {
                let mut envs = vec![client_id_env.as_str(), client_secret_env.as_str()];
                envs.extend(refresh_token_env.as_deref());
                envs
            }
        }
    }
}

/// When poll runs start.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression with seconds.
    Cron(Box<cron::Schedule>),
    /// A fixed interval.
    Every(Duration),
}

/// How poll requests authenticate; secrets are env var names, read at each run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSpec {
    /// No authentication.
    None,
    /// `Authorization: Bearer $token_env`.
    Bearer {
        /// Env var of the token.
        token_env: String,
    },
    /// HTTP basic.
    Basic {
        /// The user name, or `$env` of it.
        username: Secret,
        /// Env var of the password.
        password_env: String,
    },
    /// A key in a header or query parameter.
    ApiKey {
        /// Env var of the key.
        key_env: String,
        /// Where it goes.
        place: KeyPlace,
    },
    /// OAuth 2 token endpoint.
    Oauth2 {
        /// The token endpoint.
        token_url: url::Url,
        /// Env var of the client id.
        client_id_env: String,
        /// Env var of the client secret.
        client_secret_env: String,
        /// Env var of a refresh token: refresh-token grant; none: client credentials.
        refresh_token_env: Option<String>,
        /// Scopes.
        scopes: Vec<String>,
    },
}

/// A value written in TOML or read from an env var.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// Written in the file.
    Plain(String),
    /// The name of the env var that holds it.
    Env(String),
}

/// Where an API key goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPlace {
    /// A request header.
    Header(String),
    /// A query parameter.
    Query(String),
}

/// The incremental cursor.
#[derive(Debug, Clone)]
pub struct CursorSpec {
    /// JSON pointer to the cursor field in a record.
    pub field: String,
    /// Query parameter carrying the lower bound (unless `{cursor}` is used).
    pub param: Option<String>,
    /// Lower bound of the first run.
    pub start: Option<serde_json::Value>,
    /// How far back from the lower bound each run starts.
    pub lookback: Duration,
}

/// How a run reaches the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paginate {
    /// One request per run.
    None,
    /// A next-page token in the body, sent back as a query parameter.
    Cursor {
        /// JSON pointer to the token.
        next: String,
        /// Query parameter (unless `{page_token}` is used).
        param: Option<String>,
    },
    /// `Link: <…>; rel="next"` (RFC 8288).
    Link,
    /// `limit` + `offset`, stopping on a short page.
    Offset {
        /// Page size.
        limit: u64,
        /// Query parameter of the page size.
        limit_param: String,
        /// Query parameter of the offset.
        offset_param: String,
    },
    /// Page numbers, stopping on an empty (or short) page.
    Page {
        /// Query parameter of the page number.
        param: String,
        /// First page number.
        start: u64,
        /// Page size and its parameter, if sent.
        limit: Option<(u64, String)>,
    },
}

pub use super::source::dedupe::{DedupeBy, DedupeSpec};
pub use super::source::verify::{VerifyScheme, VerifySpec};
pub use super::source::webhook::WebhookSpec;

/// A sink.
#[derive(Debug, Clone)]
pub enum SinkSpec {
    /// Parquet files.
    Parquet(ParquetSinkSpec),
    /// A Delta Lake table.
    Delta(DeltaSinkSpec),
    /// A signed POST per event.
    Https(HttpsSinkSpec),
}

impl SinkSpec {
    /// The sink's name, unique within its pipeline.
    pub fn name(&self) -> &str {
        match self {
            SinkSpec::Parquet(p) => &p.name,
            SinkSpec::Delta(d) => &d.name,
            SinkSpec::Https(h) => &h.name,
        }
    }

    /// The object-store settings of a table sink (empty for HTTPS).
    pub fn storage_options(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        match self {
            SinkSpec::Parquet(p) => &p.storage,
            SinkSpec::Delta(d) => &d.storage,
            SinkSpec::Https(_) => &NONE,
        }
    }

    /// Where the sink writes in storage (none for an HTTPS sink).
    pub fn location(&self) -> Option<&Location> {
        match self {
            SinkSpec::Parquet(p) => Some(&p.location),
            SinkSpec::Delta(d) => Some(&d.location),
            SinkSpec::Https(_) => None,
        }
    }
}

pub use super::sink::delta::DeltaSinkSpec;
pub use super::sink::https::{HttpsSinkSpec, KeySource, SigningSpec};
pub use super::sink::parquet::ParquetSinkSpec;

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
