//! Webhook → log → Parquet on local disk: concurrent clients, every
//! acknowledged event exactly once, read back by the parquet crate and DuckDB.

use std::collections::HashSet;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_land_exactly_once_in_parquet() {
    let project = Project::new();
    // A 1 MiB log has 128 KiB segments: the ~850 KB posted rolls it often.
    project.shopify_pipeline(
        "max_events = 500\nmax_age = \"200ms\"\n\n[buffer]\nmax_bytes = \"1MiB\"",
        "",
    );
    let server = project.start().await;

    // 8 clients × 40 requests; each request is a JSON array, an NDJSON body or one object.
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for c in 0..8u64 {
        let client = client.clone();
        let url = project.url("/hooks/shopify/customers");
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for r in 0..40u64 {
                let base = (c * 1000 + r) * 100;
                let request = match r % 3 {
                    0 => client.post(&url).json(
                        &(0..10)
                            .map(|i| shopify_customer(base + i))
                            .collect::<Vec<_>>(),
                    ),
                    1 => {
                        let body: String = (0..10)
                            .map(|i| shopify_customer(base + i).to_string() + "\n")
                            .collect();
                        client
                            .post(&url)
                            .header("content-type", "application/x-ndjson")
                            .body(body)
                    }
                    _ => client.post(&url).json(&shopify_customer(base)),
                };
                let response = request.send().await.expect("post");
                assert_eq!(response.status(), 202);
                let body: serde_json::Value = response.json().await.unwrap();
                let ids = accepted_ids(&body);
                assert_eq!(body["accepted"].as_u64().unwrap() as usize, ids.len());
                acked.extend(ids);
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let expected: HashSet<String> = acked.iter().cloned().collect();
    assert_eq!(expected.len(), acked.len(), "ids are unique");
    assert_eq!(acked.len(), 8 * (14 * 10 + 13 * 10 + 13));

    // SIGTERM flushes what is buffered and exits 0.
    assert!(
        server.terminate().success(),
        "exit status; log:\n{}",
        project.log()
    );

    let counts = id_counts(&project.table_dir());
    assert_eq!(counts.len(), expected.len(), "row count (parquet crate)");
    assert!(
        counts.values().all(|&n| n == 1),
        "no id twice (parquet crate)"
    );
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), expected);

    let duck = duckdb_id_counts(&project.table_dir());
    assert_eq!(duck.len(), expected.len(), "row count (DuckDB)");
    assert!(duck.values().all(|&n| n == 1), "no id twice (DuckDB)");
    assert_eq!(duck.keys().cloned().collect::<HashSet<_>>(), expected);

    // The record columns hold the payloads' values.
    let mut customer_ids = HashSet::new();
    for batch in read_parquet(&project.table_dir()) {
        customer_ids.extend(
            batch
                .column_by_name("id")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .copied(),
        );
    }
    assert!(customer_ids.contains(&((7 * 1000 + 39) * 100)));
    // Files sit in hive partitions of the arrival date.
    let files = parquet_files(&project.table_dir());
    assert!(files.iter().all(|f| f
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("_received_date=")));
    // The log rolled, and every consumed segment but the active one is gone.
    let segments: Vec<u64> = std::fs::read_dir(project.path().join("data/shopify_customers/log"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log").map(|n| n.parse().unwrap())
        })
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    assert!(
        segments[0] > 0,
        "the log never rolled past its first segment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pipeline_flushes_at_max_age_without_more_input() {
    let project = Project::new();
    project.shopify_pipeline("max_events = 100000\nmax_age = \"300ms\"", "");
    let server = project.start().await;
    let response = reqwest::Client::new()
        .post(project.url("/hooks/shopify/customers"))
        .json(&shopify_customer(1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = accepted_ids(&response.json().await.unwrap()).pop().unwrap();
    // No further input: the batch must still be written once it is max_age old.
    eventually(&project, "the idle batch's flush", || {
        id_counts(&project.table_dir()).get(&id) == Some(&1)
    })
    .await;
    server.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_data_directory_never_overwrites_parquet_files() {
    let project = Project::new();
    project.shopify_pipeline("max_age = \"20ms\"", "");
    let mut acked = HashSet::new();
    for round in 0..2u64 {
        let server = project.start().await;
        acked.extend(post_customers(&project, round * 1000, 3, 10).await);
        assert!(server.terminate().success(), "log:\n{}", project.log());
        // The log and the sink's progress are gone; the files named by offsets stay.
        std::fs::remove_dir_all(project.path().join("data")).unwrap();
    }
    let counts = id_counts(&project.table_dir());
    assert!(counts.values().all(|&n| n == 1));
    assert_eq!(
        counts.keys().cloned().collect::<HashSet<_>>(),
        acked,
        "the second run's files did not replace the first run's"
    );
}

/// "202 only after fdatasync": `kill -9` keeps the page cache, so a missing
/// sync would pass every crash test. Here strace makes every fdatasync and
/// fsync of the running server fail (EIO): no request may be acknowledged
/// then, while the same request was before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_acknowledged_while_its_sync_fails() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let project = Project::new();
    project.shopify_pipeline("max_events = 500\nmax_age = \"200ms\"", "");
    let server = project.start().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = project.url("/hooks/shopify/customers");
    let before = client
        .post(&url)
        .json(&shopify_customer(1))
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), 202, "acknowledged while syncs work");

    let pid = server.pid();
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=fdatasync,fsync",
        ])
        .args([
            "-e",
            "inject=fdatasync,fsync:error=EIO",
            "-p",
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("strace (scripts/test installs it)");
    // Attached once every thread of the server names strace as its tracer.
    let traced = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .all(|task| {
                let status = std::fs::read_to_string(task.unwrap().path().join("status"))
                    .unwrap_or_default();
                status.contains(&format!("TracerPid:\t{}", strace.id()))
            })
    };
    let started = Instant::now();
    while !traced() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "strace never attached to every thread"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answers = Vec::new();
    for n in 0..10 {
        let status = client
            .post(&url)
            .json(&shopify_customer(100 + n))
            .send()
            .await
            .map(|r| r.status().as_u16());
        answers.push(status.map_err(|e| e.to_string()));
    }
    let _ = strace.kill();
    let _ = strace.wait();
    assert!(
        answers.iter().all(|a| *a != Ok(202)),
        "a request was acknowledged while its fdatasync failed: {answers:?}"
    );
    assert!(
        answers.iter().any(|a| *a == Ok(503)),
        "the failed appends are answered 503: {answers:?}"
    );
    drop(server);
}
