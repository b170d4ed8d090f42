//! The Delta sink, read back by two engines we did not write (Python
//! `deltalake` and DuckDB's `delta` extension): exactly once on local disk
//! and on a real S3 server with two concurrent writers, schema evolution,
//! merge mode and compaction.

use std::collections::HashSet;

use arrow_array::cast::AsArray;

use crate::support::*;

const APP: &str = "tributary/shopify_customers/delta";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_events_land_in_a_local_delta_table_exactly_once() {
    let project = Project::new();
    project.shopify_delta("max_age = \"100ms\"", "");
    let server = project.start().await;
    let acked = post_customers(&project, 0, 10, 10).await;
    assert!(server.terminate().success(), "log:\n{}", project.log());

    let view = read_delta(&project.table_uri(), &[APP], &["_received_date"], &[]);
    view.assert_exactly(&acked);
    let committed = ledger_committed(&project, "shopify_customers", "delta");
    assert_eq!(committed, 100);
    assert_eq!(
        view.txn[APP],
        Some(99),
        "txn version = last offset in the table"
    );
    assert!(
        project.table_dir().read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("_received_date=")),
        "partitioned by _received_date"
    );
    assert!(view.rows.iter().all(|r| r["_received_date"].is_string()));
    assert_eq!(view.received_at_type, "timestamp[us, tz=UTC]");
    assert!(view.stats, "every file has min/max statistics");

    // A restart with nothing new commits nothing and duplicates nothing.
    let server = project.start().await;
    assert!(server.terminate().success());
    let again = read_delta(&project.table_uri(), &[APP], &[], &[]);
    again.assert_exactly(&acked);
    assert_eq!(again.version, view.version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_data_directory_does_not_make_the_table_skip_new_events() {
    let project = Project::new();
    // A Parquet sink beside it must carry on too (its progress was lost with the log).
    project.shopify_delta(
        "max_age = \"20ms\"",
        "[[sink]]\ntype = \"parquet\"\nuri = \"lake/parquet\"\n",
    );
    let server = project.start().await;
    let mut acked = post_customers(&project, 0, 3, 10).await;
    assert!(server.terminate().success(), "log:\n{}", project.log());

    // The log and the sink's progress are gone; the table's txn says 0..=29 were used.
    std::fs::remove_dir_all(project.path().join("data")).unwrap();
    let server = project.start().await;
    acked.extend(post_customers(&project, 100, 2, 10).await);
    assert!(server.terminate().success(), "log:\n{}", project.log());

    let view = read_delta(&project.table_uri(), &[APP], &[], &[]);
    view.assert_exactly(&acked);
    assert_eq!(
        view.txn[APP],
        Some(49),
        "new offsets continue after the table's txn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_append_to_one_s3_table_and_lose_no_commit() {
    let moto = Moto::start().await;
    moto.bucket("lake").await;
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let sink = |name: &str| {
        format!(
            "name = \"{name}\"\nuri = \"s3://lake/shared/customers\"\nstorage = {{ endpoint = \"{}\", allow_http = true, region = \"us-east-1\" }}\n",
            moto.endpoint
        )
    };
    let (a, b) = (Project::new(), Project::new());
    // Each writer also compacts (after 4 small files) while the other appends.
    a.shopify_delta(
        "max_events = 20\nmax_age = \"20ms\"",
        &format!("{}compact_min_files = 4\n", sink("writer_a")),
    );
    b.shopify_delta(
        "max_events = 20\nmax_age = \"20ms\"",
        &format!("{}compact_min_files = 4\n", sink("writer_b")),
    );
    let (server_a, server_b) = (a.start_with_env(&env).await, b.start_with_env(&env).await);
    let (acked_a, acked_b) = tokio::join!(
        post_customers(&a, 0, 30, 10),
        post_customers(&b, 1_000_000, 30, 10)
    );
    assert!(server_a.terminate().success(), "log:\n{}", a.log());
    assert!(server_b.terminate().success(), "log:\n{}", b.log());

    let (app_a, app_b) = (
        "tributary/shopify_customers/writer_a",
        "tributary/shopify_customers/writer_b",
    );
    let mut read_env = env.to_vec();
    read_env.push(("AWS_ENDPOINT_URL", moto.endpoint.as_str()));
    let view = read_delta(
        "s3://lake/shared/customers",
        &[app_a, app_b],
        &[],
        &read_env,
    );
    let all: HashSet<String> = acked_a.union(&acked_b).cloned().collect();
    view.assert_exactly(&all);
    // `tributary sql` reads the S3 table with the sink's own storage settings.
    let out = a.command_with_env(
        &[
            "sql",
            "SELECT count(*) AS n, count(DISTINCT _event_id) AS ids FROM shopify_customers",
            "--format",
            "json",
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        counted,
        serde_json::json!([{"n": all.len(), "ids": all.len()}])
    );
    assert_eq!(view.txn[app_a], Some(299));
    assert_eq!(view.txn[app_b], Some(299));
    let compactions = [&a, &b]
        .iter()
        .map(|p| p.log().matches("Compacted small files").count())
        .sum::<usize>();
    assert!(
        compactions > 0,
        "compaction ran during concurrent appends; log:\n{}",
        a.log()
    );
    eprintln!(
        "two writers on S3: {} rows, table version {}, {} files, {compactions} compactions",
        all.len(),
        view.version,
        view.files
    );
}

const PERSON_V1: &str = r#"{"type": "object", "required": ["id"],
  "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}}"#;
/// Gains `tier`; `name` turns integer, which the table (string) keeps.
const PERSON_V2: &str = r#"{"type": "object", "required": ["id"],
  "properties": {"id": {"type": "integer"}, "name": {"type": "integer"}, "tier": {"type": "string"}}}"#;

fn people_pipeline(project: &Project, sink: &str) {
    people_pipeline_with(project, "schemas/person.json", sink);
}

fn people_pipeline_with(project: &Project, schema: &str, sink: &str) {
    project.write(
        "pipelines/people.toml",
        &format!(
            "name = \"people\"\nschema = \"{schema}\"\nprimary_key = [\"id\"]\n\
             [source]\ntype = \"webhook\"\npath = \"/people\"\n[batch]\nmax_age = \"20ms\"\n\
             [[sink]]\ntype = \"delta\"\n{sink}\n"
        ),
    );
}

async fn post_json(project: &Project, body: serde_json::Value) -> Vec<String> {
    let response = reqwest::Client::new()
        .post(project.url("/people"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    accepted_ids(&response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_schema_field_becomes_a_column_and_a_type_conflict_a_dead_letter() {
    let project = Project::new();
    project.write("schemas/person.json", PERSON_V1);
    people_pipeline(&project, "");
    let server = project.start().await;
    let old: Vec<_> = (1..=5)
        .map(|i| serde_json::json!({"id": i, "name": format!("p{i}")}))
        .collect();
    let mut acked: HashSet<String> = post_json(&project, old.into()).await.into_iter().collect();
    assert!(server.terminate().success(), "log:\n{}", project.log());

    project.write("schemas/person.json", PERSON_V2);
    let server = project.start().await;
    let new: Vec<_> = (6..=10)
        .map(|i| serde_json::json!({"id": i, "tier": "gold"}))
        .collect();
    acked.extend(post_json(&project, new.into()).await);
    eventually(&project, "the new rows' commit", || {
        ledger_committed(&project, "people", "delta") == 10
    })
    .await;
    // Alone in its flush: a flush of dead letters only.
    let conflict = post_json(&project, serde_json::json!({"id": 11, "name": 42})).await;
    assert!(server.terminate().success(), "log:\n{}", project.log());

    let table = project.path().join("lake/people");
    let app = "tributary/people/delta";
    let view = read_delta(
        table.to_str().unwrap(),
        &[app],
        &["id", "name", "tier"],
        &[],
    );
    view.assert_exactly(&acked);
    assert_eq!(
        view.txn[app],
        Some(ledger_committed(&project, "people", "delta") as i64 - 1),
        "a flush of dead letters only still moves the txn"
    );
    for row in &view.rows {
        let id = row["id"].as_i64().unwrap();
        if id <= 5 {
            assert_eq!(
                row["tier"],
                serde_json::Value::Null,
                "old rows have no tier: {row:?}"
            );
            assert_eq!(row["name"], format!("p{id}"));
        } else {
            assert_eq!(row["tier"], "gold", "new rows are filled: {row:?}");
        }
    }
    let dead_dir = project.path().join("lake/_dead_letters/people");
    let ids = event_ids(&dead_dir);
    assert_eq!(ids, conflict, "the conflicting event is a dead letter");
    let reason = read_parquet(&dead_dir)[0]
        .column_by_name("reason")
        .unwrap()
        .as_string::<i32>()
        .value(0)
        .to_string();
    assert!(
        reason.contains("name"),
        "the reason names the column: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inferred_schema_gains_a_column_when_a_new_field_appears() {
    let project = Project::new();
    people_pipeline_with(&project, "infer", "");
    let server = project.start().await;
    let mut acked: HashSet<String> = HashSet::new();
    acked.extend(post_json(&project, serde_json::json!({"id": 1, "name": "a"})).await);
    eventually(&project, "the first commit", || {
        ledger_committed(&project, "people", "delta") == 1
    })
    .await;
    acked.extend(
        post_json(
            &project,
            serde_json::json!({"id": 2, "name": "b", "tier": "gold"}),
        )
        .await,
    );
    eventually(&project, "the second commit", || {
        ledger_committed(&project, "people", "delta") == 2
    })
    .await;
    acked.extend(post_json(&project, serde_json::json!({"id": "three"})).await);
    assert!(server.terminate().success(), "log:\n{}", project.log());

    let table = project.path().join("lake/people");
    let view = read_delta(
        table.to_str().unwrap(),
        &[],
        &["id", "name", "tier", "_extra"],
        &[],
    );
    view.assert_exactly(&acked);
    let mut rows: Vec<_> = view
        .rows
        .iter()
        .map(|r| {
            (
                r["id"].as_i64(),
                r["name"].clone(),
                r["tier"].clone(),
                r["_extra"].clone(),
            )
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    let null = serde_json::Value::Null;
    assert_eq!(
        rows,
        [
            (
                None,
                null.clone(),
                null.clone(),
                r#"{"/id":"three"}"#.into()
            ),
            (Some(1), "a".into(), null.clone(), null.clone()),
            (Some(2), "b".into(), "gold".into(), null.clone()),
        ],
        "a value of another type than the column's is kept in _extra, not refused"
    );
    assert!(
        parquet_files(&project.path().join("lake/_dead_letters/people")).is_empty(),
        "no dead letters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_mode_keeps_the_latest_record_per_key() {
    let project = Project::new();
    project.write(
        "schemas/person.json",
        r#"{"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"},
            "updated_at": {"type": "string", "format": "date-time"}}}"#,
    );
    people_pipeline(&project, "mode = \"merge\"");
    let server = project.start().await;
    let at = |day: u32| format!("2024-01-0{day}T00:00:00Z");
    post_json(&project, serde_json::json!({"id": 7, "updated_at": at(1)})).await;
    eventually(&project, "the first flush", || {
        ledger_committed(&project, "people", "delta") == 1
    })
    .await;
    // Two versions of 7 in one request: one flush, the newest wins within it.
    let ids = post_json(
        &project,
        serde_json::json!([{"id": 7, "updated_at": at(2)}, {"id": 7, "updated_at": at(3)}, {"id": 8, "updated_at": at(1)}]),
    )
    .await;
    assert!(server.terminate().success(), "log:\n{}", project.log());

    let table = project.path().join("lake/people");
    let view = read_delta(table.to_str().unwrap(), &[], &["id", "updated_at"], &[]);
    view.assert_exactly(&[ids[1].clone(), ids[2].clone()].into_iter().collect());
    let mut rows: Vec<(i64, String)> = view
        .rows
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["updated_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(rows.len(), 2, "one row per key: {rows:?}");
    assert!(
        rows[0].0 == 7 && rows[0].1.starts_with("2024-01-03"),
        "{rows:?}"
    );
    assert!(
        rows[1].0 == 8 && rows[1].1.starts_with("2024-01-01"),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_reduces_files_and_keeps_every_row() {
    let project = Project::new();
    project.shopify_delta(
        "max_age = \"20ms\"",
        "partition_by = []\ncompact_min_files = 4\nvacuum_retention = \"1h\"",
    );
    let server = project.start().await;
    let mut acked = HashSet::new();
    for r in 0..12u64 {
        acked.extend(post_customers(&project, r * 10, 1, 10).await);
        let want = acked.len() as u64;
        eventually(&project, "the flush", || {
            ledger_committed(&project, "shopify_customers", "delta") == want
        })
        .await;
    }
    assert!(server.terminate().success(), "log:\n{}", project.log());

    let view = read_delta(&project.table_uri(), &[APP], &[], &[]);
    view.assert_exactly(&acked);
    assert!(
        project.log().contains("Compacted small files"),
        "log:\n{}",
        project.log()
    );
    assert!(view.files < 12, "12 flushes left {} files", view.files);
    assert!(
        project.log().contains("Vacuumed"),
        "log:\n{}",
        project.log()
    );
    let log_dir = project.table_dir().join("_delta_log");
    let checkpoints = std::fs::read_dir(&log_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".checkpoint.parquet")
        })
        .count();
    assert!(
        checkpoints >= 1,
        "a checkpoint every 10 commits of the sink"
    );
    assert!(log_dir.join("_last_checkpoint").exists());
    // Vacuum ran, and kept the compacted-away files: they are younger than the retention.
    let on_disk = parquet_files(&project.table_dir())
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("_delta_log"))
        .count();
    assert!(on_disk > view.files, "{on_disk} files on disk");
    assert!(
        project.log().contains("files_deleted=0"),
        "log:\n{}",
        project.log()
    );
    eprintln!(
        "12 flushes → {} active files, {on_disk} on disk, version {}",
        view.files, view.version
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_flushes_of_a_backlog_keep_every_value_while_the_schema_grows() {
    // A backlog of 40 events, each group of 5 with a field the ones before
    // lack: every flush grows the schema while the next one is already
    // being encoded, which must then be encoded again.
    let project = Project::new();
    let pipeline = |batch: &str| {
        project.write(
            "pipelines/people.toml",
            &format!(
                "name = \"people\"\nschema = \"infer\"\n\
                 [source]\ntype = \"webhook\"\npath = \"/people\"\n[batch]\n{batch}\n\
                 [[sink]]\ntype = \"delta\"\n"
            ),
        )
    };
    pipeline("max_events = 1000\nmax_age = \"1h\"");
    let server = project.start().await;
    let events: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            let mut event = serde_json::json!({"id": i});
            event[format!("f{}", i / 5)] = serde_json::json!(format!("v{i}"));
            event
        })
        .collect();
    let acked: HashSet<String> = post_json(&project, serde_json::Value::Array(events))
        .await
        .into_iter()
        .collect();
    assert_eq!(acked.len(), 40);
    server.kill9();
    assert_eq!(ledger_committed(&project, "people", "delta"), 0);

    pipeline("max_events = 5\nmax_age = \"20ms\"");
    let server = project.start().await;
    eventually(&project, "all 40 events committed", || {
        ledger_committed(&project, "people", "delta") == 40
    })
    .await;
    assert!(server.terminate().success(), "log:\n{}", project.log());
    assert!(
        project.log().contains("encoding it again"),
        "a flush was encoded ahead and again after the schema grew; log:\n{}",
        project.log()
    );

    let columns: Vec<String> = std::iter::once("id".to_string())
        .chain((0..8).map(|k| format!("f{k}")))
        .collect();
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let view = read_delta(
        project.path().join("lake/people").to_str().unwrap(),
        &[],
        &columns,
        &[],
    );
    view.assert_exactly(&acked);
    for row in &view.rows {
        let i = row["id"].as_i64().expect("an id");
        for k in 0..8 {
            let value = &row[&format!("f{k}")];
            if k == i / 5 {
                assert_eq!(value, &serde_json::json!(format!("v{i}")), "row {i}");
            } else {
                assert!(value.is_null(), "row {i}, f{k}: {value}");
            }
        }
    }
}
