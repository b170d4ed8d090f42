//! `tributary sql` answers from the tables the pipelines wrote, with the same
//! rows DuckDB and delta-rs read: Parquet, a merge-mode Delta table, dead
//! letters and routed tables; a bad query gets DataFusion's message and exit
//! code 1; queries also come one per `;` on standard input (not one in a
//! string); statements that write are refused; the dead-letter table answers,
//! empty, before the first dead letter.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::*;

fn sql(project: &Project, args: &[&str]) -> std::process::Output {
    let mut all = vec!["sql"];
    all.extend_from_slice(args);
    project.command(&all)
}

/// The JSON rows `query` gives.
fn rows(project: &Project, query: &str) -> Vec<serde_json::Map<String, Value>> {
    let out = sql(project, &[query, "--format", "json"]);
    assert!(
        out.status.success(),
        "{query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn ids(rows: &[serde_json::Map<String, Value>]) -> HashSet<String> {
    rows.iter()
        .map(|r| r["_event_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn sql_reads_every_table_as_duckdb_and_delta_rs_do() {
    let project = Project::new();
    project.write(
        "pipelines/shopify_customers.toml",
        r#"name = "shopify_customers"
schema = "schemas/shopify_customer.json"
record_path = "/customers"
primary_key = ["id"]
[source]
type = "webhook"
path = "/hooks/shopify/customers"
[batch]
max_age = "200ms"
[[sink]]
type = "parquet"
partition_by = ["_received_date"]
[[sink]]
type = "delta"
name = "latest"
uri = "lake/shopify_customers_latest"
mode = "merge"
"#,
    );
    project.write(
        "pipelines/gh.toml",
        r#"name = "gh"
schema = "infer"
[source]
type = "webhook"
path = "/hooks/gh"
[route]
header = "X-GitHub-Event"
[batch]
max_age = "200ms"
[[sink]]
type = "delta"
"#,
    );
    let server = project.start().await;
    let mut acked = post_customers(&project, 1, 6, 5).await;
    // The same customers again: the merge table keeps one row each.
    acked.extend(post_customers(&project, 1, 2, 5).await);
    let client = reqwest::Client::new();
    let bad = client
        .post(project.url("/hooks/shopify/customers"))
        .json(&serde_json::json!({"customers": {"id": "not a number"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 202);
    for (event, n) in [("push", 3), ("issues", 2)] {
        for i in 0..n {
            let response = client
                .post(project.url("/hooks/gh"))
                .header("X-GitHub-Event", event)
                .json(&serde_json::json!({"n": i, "event": event}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
        }
    }
    assert!(server.terminate().success(), "{}", project.log());

    // Parquet: the same rows as DuckDB reads.
    let parquet = rows(&project, "SELECT _event_id, id FROM shopify_customers");
    let duck: HashSet<String> = duckdb_id_counts(&project.table_dir()).into_keys().collect();
    assert_eq!(ids(&parquet), duck);
    assert_eq!(ids(&parquet), acked, "every acknowledged event once");
    let by_sink = rows(
        &project,
        "SELECT count(*) AS n FROM shopify_customers_parquet",
    );
    assert_eq!(by_sink[0]["n"], parquet.len());

    // Delta (merge): the same rows as delta-rs and DuckDB's delta_scan read.
    let latest = rows(
        &project,
        "SELECT _event_id, id FROM shopify_customers_latest ORDER BY id",
    );
    let table = project.path().join("lake/shopify_customers_latest");
    let view = read_delta(table.to_str().unwrap(), &[], &[], &[]);
    view.assert_exactly(&ids(&latest));
    assert_eq!(latest.len(), 30, "one row per customer");

    // Dead letters and routed tables.
    // The bad event is a dead letter of each of the two sinks.
    let dead = rows(
        &project,
        "SELECT sink, reason FROM shopify_customers_dead_letters ORDER BY sink",
    );
    let sinks: Vec<&str> = dead.iter().map(|r| r["sink"].as_str().unwrap()).collect();
    assert_eq!(sinks, ["latest", "parquet"]);
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("id"),
        "{dead:?}"
    );
    let push = rows(&project, "SELECT n FROM gh_push ORDER BY n");
    assert_eq!(
        push.iter()
            .map(|r| r["n"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let issues = rows(&project, "SELECT count(*) AS n FROM gh_delta_issues");
    assert_eq!(issues[0]["n"], 2);

    // The aligned table, CSV, and a Parquet file DuckDB reads back.
    let table_out = sql(
        &project,
        &["SELECT id FROM shopify_customers_latest WHERE id <= 2 ORDER BY id"],
    );
    let text = String::from_utf8_lossy(&table_out.stdout);
    assert!(text.contains("| id |") && text.contains("| 2  |"), "{text}");
    let csv = sql(
        &project,
        &[
            "SELECT id FROM shopify_customers_latest WHERE id <= 2 ORDER BY id",
            "--format",
            "csv",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&csv.stdout), "id\n1\n2\n");
    let file = project.path().join("out.parquet");
    let written = sql(
        &project,
        &[
            "SELECT id FROM shopify_customers_latest",
            "--format",
            "parquet",
            "--output",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&file).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 30);

    // A bad query: DataFusion's message, exit code 1.
    let bad = sql(&project, &["SELECT * FROM no_such_table"]);
    assert_eq!(bad.status.code(), Some(1));
    let message = String::from_utf8_lossy(&bad.stderr);
    assert!(
        message.contains("no_such_table") && message.contains("not found"),
        "{message}"
    );

    // Queries from standard input, one per ';'; a failing one does not stop the next.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["sql", "--format", "ndjson"])
        .current_dir(project.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT count(*) AS a FROM gh_push;\nSELECT nope;\nSELECT count(*) AS b\n  FROM gh_issues;\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"a\":3}\n{\"b\":2}\n"
    );
    assert_eq!(out.status.code(), Some(1), "a query failed");
}

#[test]
fn sql_only_reads_and_every_documented_table_answers_before_the_first_event() {
    let project = Project::new();
    project.shopify_pipeline("max_age = \"200ms\"", "");

    // Nothing has run: the dead-letter table is there, empty, with its columns.
    assert!(rows(
        &project,
        "SELECT reason, raw FROM shopify_customers_dead_letters"
    )
    .is_empty());
    let counted = rows(
        &project,
        "SELECT count(*) AS n, count(sink) AS sinks FROM shopify_customers_dead_letters",
    );
    assert_eq!(counted[0]["n"], 0);
    let tables = sql(&project, &["SHOW TABLES", "--format", "csv"]);
    assert!(
        String::from_utf8_lossy(&tables.stdout).contains("shopify_customers_dead_letters"),
        "{}",
        String::from_utf8_lossy(&tables.stderr)
    );

    // Statements that write or change the session are refused before they run.
    let file = project.path().join("copied.parquet");
    for statement in [
        format!("COPY (SELECT 1 AS a) TO '{}'", file.display()),
        "INSERT INTO shopify_customers_dead_letters SELECT * FROM shopify_customers_dead_letters"
            .to_string(),
        "CREATE TABLE made AS SELECT 1 AS a".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
    ] {
        let out = sql(&project, &[statement.as_str()]);
        let message = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{statement}: {message}");
        assert!(
            message.contains("tributary sql only reads") && message.contains("--output"),
            "{statement}: {message}"
        );
    }
    assert!(!file.exists(), "COPY wrote no file");

    // Standard input is split where SQL ends a statement, not at a `;` in a string.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["sql", "--format", "ndjson"])
        .current_dir(project.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"select ';' as a; select 'x;\ny' as b; -- a comment; not a query\nselect 2 as c\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"a\":\";\"}\n{\"b\":\"x;\\ny\"}\n{\"c\":2}\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
}
