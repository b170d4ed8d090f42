//! The sinks' configuration, one file per kind ([`parquet`], [`delta`],
//! [`https`]): each holds its raw TOML form, its typed spec (which
//! `check --explain` prints through `Serialize`), its defaults and its
//! checks. This file holds the kinds' registry in the config: the tagged
//! [`RawSink`], the [`SinkSpec`] enum, the one `validate` and `kind` match
//! over them, the [`SinkKind`] trait every spec answers, and what the table
//! sinks share (name, uri, partition_by, storage).

use std::collections::BTreeMap;
use std::path::Path;

use arrow_schema::{DataType, Schema};

use super::check::{valid_name, Errors, Location};
use crate::schema::METADATA_COLUMNS;

pub mod delta;
pub mod https;
pub mod parquet;

use delta::{DeltaSinkSpec, RawDeltaSink};
use https::{HttpsSinkSpec, RawHttpsSink};
use parquet::{ParquetSinkSpec, RawParquetSink};

/// One `[[sink]]`, tagged by `type`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RawSink {
    /// Parquet files in hive-style partitions.
    Parquet(RawParquetSink),
    /// Delta Lake table.
    Delta(RawDeltaSink),
    /// Signed HTTPS POST per event.
    Https(RawHttpsSink),
}

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
    /// What the sink's kind answers about it: the one `match` over sink
    /// kinds in the config.
    pub fn kind(&self) -> &dyn SinkKind {
        match self {
            SinkSpec::Parquet(p) => p,
            SinkSpec::Delta(d) => d,
            SinkSpec::Https(h) => h,
        }
    }

    /// The sink's name, unique within its pipeline.
    pub fn name(&self) -> &str {
        self.kind().name()
    }

    /// The object-store settings of a table sink (empty for HTTPS).
    pub fn storage_options(&self) -> &BTreeMap<String, String> {
        self.kind().storage_options()
    }

    /// Where the sink writes in storage (none for an HTTPS sink).
    pub fn location(&self) -> Option<&Location> {
        self.kind().location()
    }
}

/// Checks one `[[sink]]` (`key` is `sink[i]`); a table sink needs what
/// `table` tells of its pipeline (none when the pipeline's name is wrong).
pub(super) fn validate(
    raw: &RawSink,
    table: Option<Table<'_>>,
    key: &str,
    root: &Path,
    e: &mut Errors<'_>,
) -> Option<SinkSpec> {
    match raw {
        RawSink::Parquet(p) => table
            .and_then(|t| parquet::validate(&t, key, p, e))
            .map(SinkSpec::Parquet),
        RawSink::Delta(d) => table
            .and_then(|t| delta::validate(&t, key, d, e))
            .map(SinkSpec::Delta),
        RawSink::Https(h) => https::validate(key, h, root, e).map(SinkSpec::Https),
    }
}

/// What every sink kind answers from its config alone. Each kind's spec
/// implements it in its own file; [`super::SinkSpec::kind`] is the one
/// `match` over kinds in `config/` (parsing aside), and
/// [`crate::sink::plan`] the one that builds. Questions a kind may not need
/// have defaults.
pub trait SinkKind: Send + Sync {
    /// The value of its `type` key.
    fn type_tag(&self) -> &'static str;
    /// The sink's name, unique within its pipeline.
    fn name(&self) -> &str;
    /// Where it writes in storage (none for a sink that writes no tables).
    fn location(&self) -> Option<&Location> {
        None
    }
    /// Its object-store settings.
    fn storage_options(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        &NONE
    }
    /// The env vars its secrets come from, each with the key that names it
    /// (relative to the sink's table); by default the `storage` table's `*_env` keys.
    fn secret_envs(&self) -> Vec<(String, &str)> {
        self.storage_options()
            .iter()
            .filter(|(key, _)| key.ends_with("_env"))
            .map(|(key, var)| (format!("storage.{key}"), var.as_str()))
            .collect()
    }
    /// Its keys as `check --explain` prints them.
    fn explain(&self) -> toml::Value;
}

/// Object-store keys a `storage` table may set; credentials only through `*_env`.
const STORAGE_KEYS: [&str; 7] = [
    "endpoint",
    "region",
    "allow_http",
    "virtual_hosted_style_request",
    "access_key_id_env",
    "secret_access_key_env",
    "session_token_env",
];
/// What a sink's checks need to know about its pipeline.
pub struct Table<'a> {
    /// The default location of tables (`tributary.toml`'s `lake`).
    pub lake: &'a Location,
    pub pipeline: &'a str,
    pub schema: Option<&'a Schema>,
    /// `schema = "infer"`: no record column is known before events arrive.
    pub infer: bool,
    /// `[connections]`: rows carry `_connection`.
    pub connections: bool,
    pub primary_key: &'a [String],
    pub root: &'a Path,
}

/// The keys parquet and delta sinks share.
pub(super) struct Common {
    pub(super) name: String,
    pub(super) location: Option<Location>,
    pub(super) partition_by: Vec<String>,
    pub(super) storage: BTreeMap<String, String>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn common(
    t: &Table<'_>,
    key: &str,
    ty: &str,
    name: Option<&String>,
    uri: Option<&str>,
    partition_by: Option<&Vec<String>>,
    storage: Option<&BTreeMap<String, toml::Value>>,
    e: &mut Errors<'_>,
) -> Common {
    let name = name.cloned().unwrap_or_else(|| ty.to_string());
    if !valid_name(&name) {
        e.push(
            format!("{key}.name"),
            format!("\"{name}\" is not a valid name"),
            "use lower-case letters, digits, '_' or '-'",
        );
    }
    let location = match uri {
        None => Some(t.lake.join(t.pipeline)),
        Some(uri) => match Location::parse(uri, t.root) {
            Ok(l) => Some(l),
            Err((problem, fix)) => {
                e.push(format!("{key}.uri"), problem, fix);
                None
            }
        },
    };
    let partition_by = partition_by
        .cloned()
        .unwrap_or_else(|| vec!["_received_date".to_string()]);
    for (i, column) in partition_by.iter().enumerate() {
        let at = format!("{key}.partition_by[{i}]");
        if column == "_received_date" || column == "_source" {
            continue;
        }
        if column == crate::schema::CONNECTION_COLUMN {
            if !t.connections {
                e.push(
                    at,
                    "\"_connection\" is a column of connections pipelines only",
                    "add a [connections] table, or partition by _received_date",
                );
            }
            continue;
        }
        if METADATA_COLUMNS.contains(&column.as_str()) {
            e.push(
                at,
                format!("\"{column}\" has one value per event"),
                "partition by _received_date instead",
            );
            continue;
        }
        if t.infer {
            e.push(
                at,
                format!("with schema = \"infer\", column \"{column}\" may be missing from a batch"),
                "partition by _received_date or _source, or name a JSON Schema file",
            );
            continue;
        }
        match t.schema.map(|s| s.field_with_name(column)) {
            Some(Ok(f)) if partitionable(f.data_type()) => {}
            Some(Ok(f)) => e.push(
                at,
                format!("column \"{column}\" is a {}", f.data_type()),
                "partition by a string, integer, boolean or date column",
            ),
            Some(Err(_)) => e.push(
                at,
                format!("column \"{column}\" is not a top-level property of the schema"),
                "name a property of the schema or _received_date",
            ),
            None => {}
        }
    }
    let mut options = BTreeMap::new();
    for (k, v) in storage.into_iter().flatten() {
        let at = format!("{key}.storage.{k}");
        if !STORAGE_KEYS.contains(&k.as_str()) {
            let fix = if k.contains("secret") || k.contains("key") || k.contains("token") {
                format!("never write credentials in TOML: set the AWS_* environment variables, or {k}_env = \"NAME_OF_ENV_VAR\"")
            } else {
                format!("use one of {}", STORAGE_KEYS.join(", "))
            };
            e.push(at, format!("unknown storage key \"{k}\""), fix);
            continue;
        }
        let value = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                e.push(at, "must be a string or a boolean", "");
                continue;
            }
        };
        options.insert(k.clone(), value);
    }
    if !options.is_empty() && matches!(location, Some(Location::Local(_))) {
        e.push(
            format!("{key}.storage"),
            "storage settings apply to s3:// locations only",
            "remove the storage table or use an s3:// uri",
        );
    }
    Common {
        name,
        location,
        partition_by,
        storage: options,
    }
}

fn partitionable(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::Int64 | DataType::Boolean | DataType::Date32
    )
}
