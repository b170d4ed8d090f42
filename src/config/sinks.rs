//! Validation of the `[[sink]]` tables (pure, like the rest of `validate`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use arrow_schema::{DataType, Schema};

use super::raw::{RawDeltaSink, RawParquetSink, RawSize};
use super::spec::{DeltaSinkSpec, GlobalSpec, Location, ParquetSinkSpec};
use super::units::parse_duration;
use super::validate::{size, valid_name, Errors};
use crate::schema::METADATA_COLUMNS;

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

/// What a sink's checks need to know about its pipeline.
pub struct Table<'a> {
    pub global: &'a GlobalSpec,
    pub pipeline: &'a str,
    pub schema: Option<&'a Schema>,
    /// `schema = "infer"`: no record column is known before events arrive.
    pub infer: bool,
    pub primary_key: &'a [String],
    pub root: &'a Path,
}

/// The keys parquet and delta sinks share.
struct Common {
    name: String,
    location: Option<Location>,
    partition_by: Vec<String>,
    storage: BTreeMap<String, String>,
}

#[allow(clippy::too_many_arguments)]
fn common(
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
        None => Some(t.global.lake.join(t.pipeline)),
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

/// `type = "parquet"`.
pub fn parquet(
    t: &Table<'_>,
    key: &str,
    raw: &RawParquetSink,
    e: &mut Errors<'_>,
) -> Option<ParquetSinkSpec> {
    let start = e.list.len();
    let c = common(
        t,
        key,
        "parquet",
        raw.name.as_ref(),
        raw.uri.as_deref(),
        raw.partition_by.as_ref(),
        raw.storage.as_ref(),
        e,
    );
    if e.list.len() > start {
        return None;
    }
    Some(ParquetSinkSpec {
        name: c.name,
        location: c.location?,
        partition_by: c.partition_by,
        storage: c.storage,
    })
}

/// `type = "delta"`.
pub fn delta(
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
            Some(t.primary_key.to_vec())
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
                problem,
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

fn partitionable(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::Int64 | DataType::Boolean | DataType::Date32
    )
}
