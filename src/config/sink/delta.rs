//! `[[sink]] type = "delta"`: raw form, spec, defaults, checks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::{common, Table};
use crate::config::check::{parse_duration, size, Errors, Location, RawSize};

/// Default `checkpoint_interval`.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 10;
/// Default `target_file_size`.
pub const DEFAULT_TARGET_FILE_SIZE: u64 = 128 << 20;
/// Default `compact_min_files`.
pub const DEFAULT_COMPACT_MIN_FILES: u64 = 16;
/// Default `vacuum_retention`: Delta's own default, so time travel and
/// long-running readers keep working for a week.
pub const DEFAULT_VACUUM_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Shortest `vacuum_retention`: longer than any write in flight takes.
const MIN_VACUUM_RETENTION: Duration = Duration::from_secs(3600);

/// `[[sink]]` with `type = "delta"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDeltaSink {
    /// Sink name, unique in the pipeline; defaults to the type.
    pub name: Option<String>,
    /// The table: a local path, `file://…` or `s3://bucket/prefix`.
    pub uri: Option<String>,
    /// Partition columns of a new table.
    pub partition_by: Option<Vec<String>>,
    /// Object-store settings (`endpoint`, `region`, `allow_http`, `*_env` credentials).
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub storage: Option<BTreeMap<String, toml::Value>>,
    /// `"append"` (default) or `"merge"` (upsert on `primary_key`).
    pub mode: Option<String>,
    /// `"add_columns"` (default) or `"off"`.
    pub schema_evolution: Option<String>,
    /// Write a checkpoint every this many commits (default 10).
    pub checkpoint_interval: Option<u64>,
    /// Size compaction aims for, e.g. `"128MiB"`.
    pub target_file_size: Option<RawSize>,
    /// Compact once this many files are below half the target size (default 16; 0 = never).
    pub compact_min_files: Option<u64>,
    /// How long vacuum keeps files a commit removed, e.g. `"7d"`.
    pub vacuum_retention: Option<String>,
}

/// `type = "delta"`.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaSinkSpec {
    /// Unique within the pipeline; names its progress and its `txn` app id.
    pub name: String,
    /// The table's location.
    #[serde(
        rename = "uri",
        serialize_with = "crate::config::check::shown::location"
    )]
    pub location: Location,
    /// Partition columns of a new table (an existing table keeps its own).
    pub partition_by: Vec<String>,
    /// Object-store settings, keys as object_store names them.
    #[serde(
        rename = "storage_keys",
        serialize_with = "crate::config::check::shown::keys"
    )]
    pub storage: BTreeMap<String, String>,
    /// Append every row, or upsert on these key columns (`mode = "merge"`).
    #[serde(rename = "mode", serialize_with = "mode")]
    pub merge_on: Option<Vec<String>>,
    /// Whether new schema fields become new (nullable) table columns.
    #[serde(rename = "schema_evolution", serialize_with = "evolution")]
    pub add_columns: bool,
    /// A checkpoint every this many commits.
    pub checkpoint_interval: u64,
    /// Size compaction aims for, in bytes.
    #[serde(serialize_with = "crate::config::check::shown::size")]
    pub target_file_size: u64,
    /// Compact once this many files are below half the target (0 = never).
    pub compact_min_files: u64,
    /// How long vacuum keeps the files a commit removed.
    #[serde(serialize_with = "crate::config::check::shown::duration")]
    pub vacuum_retention: Duration,
}

fn mode<S: Serializer>(merge_on: &Option<Vec<String>>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if merge_on.is_some() {
        "merge"
    } else {
        "append"
    })
}

fn evolution<S: Serializer>(add_columns: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *add_columns { "add_columns" } else { "off" })
}

/// `type = "delta"`.
pub(in crate::config) fn validate(
    t: &Table<'_>,
    key: &str,
    raw: &RawDeltaSink,
    e: &mut Errors<'_>,
) -> Option<DeltaSinkSpec> {
    let start = e.list.len();
    // A latest-state table is rewritten by key, not by day: unpartitioned by default.
    let unpartitioned = Vec::new();
    let partition_by = match (&raw.partition_by, raw.mode.as_deref()) {
        (None, Some("merge")) => Some(&unpartitioned),
        (p, _) => p.as_ref(),
    };
    let c = common(
        t,
        key,
        "delta",
        raw.name.as_ref(),
        raw.uri.as_deref(),
        partition_by,
        raw.storage.as_ref(),
        e,
    );
    let merge_on = match raw.mode.as_deref() {
        None | Some("append") => None,
        Some("merge") => {
            if t.primary_key.is_empty() {
                e.push(
                    format!("{key}.mode"),
                    "mode = \"merge\" upserts on the pipeline's primary_key, which is not set",
                    "add primary_key = [\"id\"] (the columns that identify a record) at the top of the pipeline file",
                );
            }
            // Each connection's records are its own: ids repeat across accounts.
            let account = t
                .connections
                .then(|| crate::schema::CONNECTION_COLUMN.to_string());
            Some(account.into_iter().chain(t.primary_key.to_vec()).collect())
        }
        Some(other) => {
            e.push(
                format!("{key}.mode"),
                format!("unknown mode \"{other}\""),
                "use \"append\" (every event is a row) or \"merge\" (one row per primary_key)",
            );
            None
        }
    };
    let add_columns = match raw.schema_evolution.as_deref() {
        None | Some("add_columns") => true,
        Some("off") => false,
        Some(other) => {
            e.push(
                format!("{key}.schema_evolution"),
                format!("unknown value \"{other}\""),
                "use \"add_columns\" (new schema fields become new columns) or \"off\"",
            );
            true
        }
    };
    let checkpoint_interval = raw
        .checkpoint_interval
        .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL);
    if checkpoint_interval == 0 {
        e.push(
            format!("{key}.checkpoint_interval"),
            "must be at least 1",
            format!("the default is {DEFAULT_CHECKPOINT_INTERVAL} commits"),
        );
    }
    let target_file_size = match &raw.target_file_size {
        None => DEFAULT_TARGET_FILE_SIZE,
        Some(s) => target_size(s, &format!("{key}.target_file_size"), e),
    };
    let vacuum_retention = match raw.vacuum_retention.as_deref() {
        None => DEFAULT_VACUUM_RETENTION,
        Some(text) => parse_duration(text).unwrap_or_else(|problem| {
            e.push(
                format!("{key}.vacuum_retention"),
                problem.to_string(),
                "the default is \"7d\"",
            );
            DEFAULT_VACUUM_RETENTION
        }),
    };
    if vacuum_retention < MIN_VACUUM_RETENTION {
        e.push(
            format!("{key}.vacuum_retention"),
            "is below 1h: vacuum could delete files another writer has written but not yet committed",
            "set at least \"1h\" (the default is \"7d\")",
        );
    }
    if e.list.len() > start {
        return None;
    }
    Some(DeltaSinkSpec {
        name: c.name,
        location: c.location?,
        partition_by: c.partition_by,
        storage: c.storage,
        merge_on,
        add_columns,
        checkpoint_interval,
        target_file_size,
        compact_min_files: raw.compact_min_files.unwrap_or(DEFAULT_COMPACT_MIN_FILES),
        vacuum_retention,
    })
}

fn target_size(raw: &RawSize, key: &str, e: &mut Errors<'_>) -> u64 {
    match size(raw, key, e) {
        Some(n) if n >= 1 << 20 => n,
        Some(_) => {
            e.push(key, "is below 1MiB", "the default is \"128MiB\"");
            DEFAULT_TARGET_FILE_SIZE
        }
        None => DEFAULT_TARGET_FILE_SIZE,
    }
}

impl super::SinkKind for DeltaSinkSpec {
    fn type_tag(&self) -> &'static str {
        "delta"
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn location(&self) -> Option<&super::Location> {
        Some(&self.location)
    }
    fn storage_options(&self) -> &BTreeMap<String, String> {
        &self.storage
    }
    fn explain(&self) -> toml::Value {
        crate::config::check::shown::explained("delta", self)
    }
}
