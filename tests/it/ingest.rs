//! Webhook → log → Parquet on local disk: concurrent clients, every
//! acknowledged event exactly once, read back by the parquet crate and DuckDB.

use std::collections::HashSet;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_land_exactly_once_in_parquet() {
    let project = Project::new();
    project.shopify_pipeline("max_events = 500\nmax_age = \"200ms\"", "");
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
    // Every consumed segment but the active one is gone.
    let segments = std::fs::read_dir(project.path().join("data/shopify_customers/log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert_eq!(segments, 1);
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
