//! `[route]`: one table per event type. Its raw form, defaults, checks and
//! typed spec live here side by side.
//!
//! ```toml
//! [route]
//! header = "X-GitHub-Event"   # webhook sources: the value of a request header, or
//! pointer = "/type"           # the string at a JSON pointer in the event
//! max_tables = 100            # new values beyond this go to default_table
//! default_table = "other"     # no value, an empty one, or beyond max_tables
//! schemas = { push = "schemas/github_push.json" }  # a table's own schema
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow_schema::SchemaRef;
use serde::{Deserialize, Serialize};

use super::check::{Errors, SchemaDocs};

/// Default `route.max_tables`.
pub const DEFAULT_MAX_TABLES: usize = 100;
/// Default `route.default_table`.
pub const DEFAULT_TABLE: &str = "other";
/// Longest table name made from a value.
pub const MAX_TABLE_NAME: usize = 64;

/// `[route]` as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// A request header whose value names the table (webhook sources).
    pub header: Option<String>,
    /// A JSON pointer to a string in the event that names the table.
    pub pointer: Option<String>,
    /// Most tables made from values.
    pub max_tables: Option<usize>,
    /// The table for events without a usable value.
    pub default_table: Option<String>,
    /// Table name → schema file, for tables with a declared schema.
    #[serde(default)]
    pub schemas: BTreeMap<String, String>,
}

/// `[route]`, checked and defaulted.
#[derive(Debug, Clone, Serialize)]
pub struct RouteSpec {
    /// Where the value comes from.
    #[serde(flatten)]
    pub by: RouteBy,
    /// Most tables made from values.
    pub max_tables: usize,
    /// The table for events without a usable value, or beyond `max_tables`.
    pub default_table: String,
    /// Table name → schema file, as written.
    pub schemas: BTreeMap<String, String>,
    /// Table name → its declared record schema.
    #[serde(skip)]
    pub declared: BTreeMap<String, SchemaRef>,
}

/// Where a route's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteBy {
    /// A request header (lower-cased), kept with the event in the log.
    Header(String),
    /// A JSON pointer into the event.
    Pointer(String),
}

/// The table name for a route value: lower-case ASCII letters and digits,
/// every other run of characters one `_`, trimmed, at most
/// [`MAX_TABLE_NAME`] bytes; `None` if nothing is left.
pub fn table_name(value: &str) -> Option<String> {
    let mut name = String::with_capacity(value.len().min(MAX_TABLE_NAME));
    for c in value.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.is_empty() && !name.ends_with('_') {
            name.push('_');
        }
        if name.len() >= MAX_TABLE_NAME {
            break;
        }
    }
    let name = name.trim_end_matches('_');
    (!name.is_empty()).then(|| name.to_string())
}

/// The schema files `raw` names (read before validation).
pub fn schema_files(raw: &RawRoute) -> impl Iterator<Item = &str> {
    raw.schemas.values().map(String::as_str)
}

/// Checks `[route]`; `webhook` says whether the source can give headers.
pub(super) fn route(
    raw: &RawRoute,
    webhook: bool,
    schemas: &SchemaDocs,
    root: &Path,
    e: &mut Errors<'_>,
) -> Option<RouteSpec> {
    let by = match (&raw.header, &raw.pointer) {
        (Some(_), Some(_)) | (None, None) => {
            e.push(
                "route",
                "needs exactly one of header and pointer",
                "route by a request header, header = \"X-GitHub-Event\", or by a value in the event, pointer = \"/type\"",
            );
            None
        }
        (Some(h), None) if !webhook => {
            e.push(
                "route.header",
                format!("a poll source has no request header {h}"),
                "route a poll source by a value in each record, pointer = \"/type\"",
            );
            None
        }
        (Some(h), None)
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            e.push(
                "route.header",
                format!("\"{h}\" is not a header name"),
                "name a header such as \"X-GitHub-Event\", \"X-Shopify-Topic\" or \"X-Gitlab-Event\"",
            );
            None
        }
        (Some(h), None) => Some(RouteBy::Header(h.to_ascii_lowercase())),
        (None, Some(p)) if !p.starts_with('/') => {
            e.push(
                "route.pointer",
                format!("\"{p}\" is not a JSON pointer"),
                "start it with '/', e.g. \"/type\" (Stripe) or \"/event/type\" (Slack)",
            );
            None
        }
        (None, Some(p)) => Some(RouteBy::Pointer(p.clone())),
    };
    let max_tables = raw.max_tables.unwrap_or(DEFAULT_MAX_TABLES);
    if max_tables == 0 {
        e.push(
            "route.max_tables",
            "is 0",
            format!("allow at least 1 table (the default is {DEFAULT_MAX_TABLES})"),
        );
    }
    let default_table = raw.default_table.as_deref().unwrap_or(DEFAULT_TABLE);
    if table_name(default_table).as_deref() != Some(default_table) {
        e.push(
            "route.default_table",
            format!("\"{default_table}\" is not a table name"),
            "use lower-case letters, digits and '_', e.g. \"other\"",
        );
    }
    let mut declared = BTreeMap::new();
    for (table, file) in &raw.schemas {
        let key = format!("route.schemas.{table}");
        if table_name(table).as_deref() != Some(table.as_str()) {
            e.push(
                &key,
                format!("\"{table}\" is not a table name a route value can make"),
                format!(
                    "name the table as routing names it: lower-case letters, digits and '_' ({})",
                    table_name(table).map_or("e.g. \"push\"".into(), |t| format!("\"{t}\""))
                ),
            );
            continue;
        }
        if let Some(schema) = super::check::schema_file(file, &key, schemas, root, e) {
            declared.insert(table.clone(), schema);
        }
    }
    Some(RouteSpec {
        by: by?,
        max_tables,
        default_table: default_table.to_string(),
        schemas: raw.schemas.clone(),
        declared,
    })
}

/// The record schema of `table`: its own declared one, or the pipeline's.
pub fn schema_of(route: Option<&RouteSpec>, table: &str, pipeline: &SchemaRef) -> SchemaRef {
    route
        .and_then(|r| r.declared.get(table))
        .map_or_else(|| pipeline.clone(), Arc::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_table_names() {
        for (value, name) in [
            ("push", Some("push")),
            ("orders/create", Some("orders_create")),
            ("Push Hook", Some("push_hook")),
            (
                "customer.subscription.created",
                Some("customer_subscription_created"),
            ),
            ("  ../../etc/passwd ", Some("etc_passwd")),
            ("Ünïcode-Ström", Some("n_code_str_m")),
            ("///", None),
            ("", None),
        ] {
            assert_eq!(table_name(value).as_deref(), name, "{value:?}");
        }
        assert_eq!(table_name(&"a".repeat(500)).unwrap().len(), MAX_TABLE_NAME);
    }
}
