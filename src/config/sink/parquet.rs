//! `[[sink]] type = "parquet"`: raw form, spec, checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{common, Table};
use crate::config::check::{Errors, Location};

/// `[[sink]]` with `type = "parquet"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawParquetSink {
    /// Sink name, unique in the pipeline; defaults to the type.
    pub name: Option<String>,
    /// Where the files go: a local path, `file://…` or `s3://bucket/prefix`.
    pub uri: Option<String>,
    /// Columns whose values name the hive-style directories.
    pub partition_by: Option<Vec<String>>,
    /// Object-store settings (`endpoint`, `region`, `allow_http`, `*_env` credentials).
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub storage: Option<BTreeMap<String, toml::Value>>,
}

/// `type = "parquet"`.
#[derive(Debug, Clone, Serialize)]
pub struct ParquetSinkSpec {
    /// Unique within the pipeline; names its progress file.
    pub name: String,
    /// Where the files go.
    #[serde(
        rename = "uri",
        serialize_with = "crate::config::check::shown::location"
    )]
    pub location: Location,
    /// Hive-style partition columns, outermost first.
    pub partition_by: Vec<String>,
    /// Object-store settings, keys as object_store names them.
    #[serde(
        rename = "storage_keys",
        serialize_with = "crate::config::check::shown::keys"
    )]
    pub storage: BTreeMap<String, String>,
}

/// `type = "parquet"`.
pub(in crate::config) fn validate(
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

impl super::SinkKind for ParquetSinkSpec {
    fn type_tag(&self) -> &'static str {
        "parquet"
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
        crate::config::check::shown::explained("parquet", self)
    }
}
