//! Delta read-back by independent engines (Python `deltalake` and DuckDB's
//! `delta` extension, via `read_delta.py`) and a Delta pipeline helper.

use std::collections::{HashMap, HashSet};

use super::{run_reader, Project};

/// What the two engines saw in a table.
#[derive(Debug, serde::Deserialize)]
pub struct DeltaView {
    /// `_event_id` → rows, read by delta-rs's Python binding.
    pub deltalake: HashMap<String, usize>,
    /// `_event_id` → rows, read by DuckDB's Delta reader.
    pub duckdb: HashMap<String, usize>,
    /// The table's version.
    pub version: i64,
    /// Active data files.
    pub files: usize,
    /// The txn version of each app id asked for.
    pub txn: HashMap<String, Option<i64>>,
    /// `_received_at`'s Arrow type as pyarrow names it.
    pub received_at_type: String,
    /// Whether every file has row count and min/max statistics.
    pub stats: bool,
    /// The asked-for columns of every row.
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl DeltaView {
    /// Both engines saw exactly `ids`, each once.
    pub fn assert_exactly(&self, ids: &HashSet<String>) {
        for (engine, counts) in [("deltalake", &self.deltalake), ("duckdb", &self.duckdb)] {
            let twice: Vec<_> = counts.iter().filter(|(_, &n)| n != 1).collect();
            assert!(
                twice.is_empty(),
                "{engine}: {} ids not exactly once, e.g. {:?}",
                twice.len(),
                twice.first()
            );
            let seen: HashSet<String> = counts.keys().cloned().collect();
            assert_eq!(seen.len(), ids.len(), "{engine}: row count");
            assert!(&seen == ids, "{engine}: the id sets differ");
        }
    }
}

/// Reads the table at `uri` (a path or `s3://…`) with both engines; `env`
/// carries S3 settings (`AWS_ENDPOINT_URL`, keys) for `s3://` tables.
pub fn read_delta(
    uri: &str,
    app_ids: &[&str],
    columns: &[&str],
    env: &[(&str, &str)],
) -> DeltaView {
    run_reader(
        "read_delta.py",
        &[uri, &app_ids.join(","), &columns.join(",")],
        env,
    )
}

/// The sink's committed offset, from its progress file (0 before its first commit).
pub fn ledger_committed(project: &Project, pipeline: &str, sink: &str) -> u64 {
    let path = project
        .path()
        .join(format!("data/{pipeline}/sinks/{sink}.json"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        return 0;
    };
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["committed"].as_u64().expect("committed offset")
}

impl Project {
    /// The Shopify-customers webhook pipeline with one Delta sink; `sink`
    /// is extra TOML inside the `[[sink]]` table.
    pub fn shopify_delta(&self, batch: &str, sink: &str) {
        self.shopify_pipeline_with(batch, "", &format!("type = \"delta\"\n{sink}"));
    }

    /// The local table of the Shopify pipeline, as a path string.
    pub fn table_uri(&self) -> String {
        self.table_dir().to_str().unwrap().to_string()
    }
}
