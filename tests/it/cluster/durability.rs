//! What the JetStream log must not lose or repeat beyond a node kill:
//! replayed dead letters, a sink added to an idle pipeline, a provider's
//! retry after every server restarted, and a Parquet sink written by a node
//! that was paused past its leases.

use super::*;

/// A Parquet sink and small batches, on `partitions` partitions.
fn parquet_tail(partitions: u32, extra: &str) -> String {
    format!(
        "[log]\npartitions = {partitions}\n{extra}\n\n[batch]\nmax_events = 200\nmax_age = \"300ms\"\n\n[[sink]]\ntype = \"parquet\"\nname = \"files\"\n"
    )
}

/// Posts `body` until a node answers 202 (a node reconnecting to its
/// servers answers 503 meanwhile); returns the answer.
async fn post_until_accepted(
    url: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> serde_json::Value {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        let mut request = client.post(url).json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Ok(response) = request.send().await {
            if response.status() == 202 {
                return response.json().await.unwrap();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{url} never accepted the request"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Messages the pipeline's streams hold, as the first server's monitor
/// reports them.
async fn stream_messages(nats: &Nats) -> u64 {
    let url = format!(
        "http://127.0.0.1:{}/jsz?accounts=true&streams=true",
        nats.monitors[0]
    );
    let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let mut total = 0;
    for account in body["account_details"].as_array().into_iter().flatten() {
        for stream in account["stream_detail"].as_array().into_iter().flatten() {
            if stream["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("TRIBUTARY_shopify_customers_"))
            {
                total += stream["state"]["messages"].as_u64().unwrap_or(0);
            }
        }
    }
    total
}

/// Waits until every message of the pipeline's streams is purged.
async fn wait_until_purged(nats: &Nats) {
    let started = Instant::now();
    while stream_messages(nats).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the stream was never purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Six dead letters, replayed after the schema was fixed, are six rows:
/// each replay record is its own message (they all had the nil id, so the
/// duplicate window kept one and replay deleted the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_replayed_dead_letters_are_six_rows() {
    let nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let project = node_of(&nats, lake.path(), &parquet_tail(2, ""));
    let server = project.start().await;
    let mut posted = Vec::new();
    for n in 0..6u64 {
        // An id that is not an integer: a dead letter of the Parquet sink.
        let mut body = shopify_customer(n);
        body["customers"]["id"] = serde_json::json!(format!("cust-{n}"));
        let answer = post_until_accepted(&hook(&project), &[], &body).await;
        posted.extend(accepted_ids(&answer));
    }
    let dead_dir = lake.path().join("_dead_letters/shopify_customers");
    eventually(&project, "six dead letters", || {
        duckdb_row_count(&dead_dir) == 6
    })
    .await;
    // The fix: the schema takes string ids.
    let file = project.path().join("schemas/shopify_customer.json");
    let mut schema: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    schema["properties"]["id"]["type"] = serde_json::json!("string");
    project.write("schemas/shopify_customer.json", &schema.to_string());
    assert!(server.terminate().success());
    let _server = project.start().await;
    let out = project.command(&["replay", "shopify_customers"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("replayed 6 dead letter(s)"), "{stdout}");
    let table = table_dir(lake.path());
    eventually(&project, "the six replayed events as rows", || {
        let counts = id_counts(&table);
        posted.iter().all(|id| counts.contains_key(id))
    })
    .await;
    let counts = duckdb_id_counts(&table);
    for id in &posted {
        assert_eq!(counts.get(id), Some(&1), "{id} once: {counts:?}");
    }
    assert_eq!(counts.len(), 6, "{counts:?}");
    assert_eq!(duckdb_row_count(&dead_dir), 0, "no dead letter left");
}

/// Rows in the Parquet files under `dir` (0 without any), read by DuckDB.
fn duckdb_row_count(dir: &Path) -> usize {
    if parquet_files(dir).is_empty() {
        return 0;
    }
    duckdb_id_counts(dir).values().sum()
}

/// A sink added while the stream is empty (every event purged) starts at
/// the stream's end, reads what comes next and lets the stream be purged:
/// with a 1 MiB log, three times that much goes through both sinks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_added_to_an_idle_pipeline_reads_and_lets_the_stream_purge() {
    let nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let buffer = "\n[buffer]\nmax_bytes = \"1MiB\"";
    let project = node_of(&nats, lake.path(), &parquet_tail(1, buffer));
    let server = project.start().await;
    let mut first = HashSet::new();
    for r in 0..6u64 {
        let body: Vec<_> = (r * 5..r * 5 + 5).map(shopify_customer).collect();
        let answer = post_until_accepted(&hook(&project), &[], &serde_json::json!(body)).await;
        first.extend(accepted_ids(&answer));
    }
    let table = table_dir(lake.path());
    eventually(&project, "the first 30 events in the table", || {
        let counts = id_counts(&table);
        first.iter().all(|id| counts.contains_key(id))
    })
    .await;
    wait_until_purged(&nats).await;
    assert!(server.terminate().success());
    // A second sink, on an idle pipeline.
    let file = project.path().join("pipelines/shopify_customers.toml");
    let mut text = fs::read_to_string(&file).unwrap();
    let second = lake.path().join("second");
    text.push_str(&format!(
        "\n[[sink]]\ntype = \"parquet\"\nname = \"second\"\nuri = \"{}\"\n",
        second.display()
    ));
    fs::write(&file, text).unwrap();
    let _server = project.start().await;
    // Before anything more is posted, the new sink's progress is the
    // stream's end (recorded, so purging can go on), not 0.
    let started = Instant::now();
    loop {
        let rows = partitions(&project).await;
        let second: Vec<_> = rows.iter().filter(|r| r["sink"] == "second").collect();
        if second.len() == 1 && second[0]["committed"] == 30 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the new sink never started at the stream's end: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // ~300 bytes a message: 3 MiB through a 1 MiB stream.
    let mut later = HashSet::new();
    for r in 0..520u64 {
        let first = 1000 + r * 20;
        let body: Vec<_> = (first..first + 20).map(shopify_customer).collect();
        let answer = post_until_accepted(&hook(&project), &[], &serde_json::json!(body)).await;
        later.extend(accepted_ids(&answer));
    }
    assert_eq!(later.len(), 10_400);
    eventually(&project, "every later event in the new sink", || {
        let counts = id_counts(&second);
        later.iter().all(|id| counts.contains_key(id))
    })
    .await;
    for dir in [&table, &second] {
        let counts = duckdb_id_counts(dir);
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "{}: {twice:?}", dir.display());
        assert!(later.iter().all(|id| counts.contains_key(id)));
    }
    assert!(
        !id_counts(&second).keys().any(|id| first.contains(id)),
        "the new sink starts where the stream was, not before"
    );
}

/// A provider's retry after its delivery was stored, its message purged and
/// every nats-server restarted (which forgets the duplicate window of purged
/// messages) and the node too (which forgets what it took) is still answered
/// as a duplicate and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_every_server_restarted_is_still_a_duplicate() {
    let mut nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let dedupe = "";
    let project = node_of(&nats, lake.path(), &parquet_tail(2, dedupe));
    let file = project.path().join("pipelines/shopify_customers.toml");
    let text = fs::read_to_string(&file).unwrap().replace(
        "path = \"/hooks/shopify/customers\"",
        "path = \"/hooks/shopify/customers\"\ndedupe = { header = \"X-Request-Id\" }",
    );
    fs::write(&file, text).unwrap();
    let server = project.start().await;
    let body = serde_json::json!((0..5).map(shopify_customer).collect::<Vec<_>>());
    let headers = [("X-Request-Id", "delivery-1")];
    let first = post_until_accepted(&hook(&project), &headers, &body).await;
    assert_eq!(first["accepted"], 5, "{first}");
    let acked: HashSet<String> = accepted_ids(&first).into_iter().collect();
    let table = table_dir(lake.path());
    eventually(&project, "the delivery in the table", || {
        let counts = id_counts(&table);
        acked.iter().all(|id| counts.contains_key(id))
    })
    .await;
    wait_until_purged(&nats).await;
    server.kill9();
    for i in 0..3 {
        nats.kill9(i);
    }
    for i in 0..3 {
        nats.restart(i);
    }
    let _server = project.start().await;
    let again = post_until_accepted(&hook(&project), &headers, &body).await;
    assert_eq!(again["accepted"], 0, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    // A new delivery still goes through, and the table holds 10 rows.
    let fresh = serde_json::json!((5..10).map(shopify_customer).collect::<Vec<_>>());
    let second =
        post_until_accepted(&hook(&project), &[("X-Request-Id", "delivery-2")], &fresh).await;
    assert_eq!(second["accepted"], 5, "{second}");
    let acked: HashSet<String> = acked.into_iter().chain(accepted_ids(&second)).collect();
    eventually(&project, "the second delivery in the table", || {
        let counts = id_counts(&table);
        acked.iter().all(|id| counts.contains_key(id))
    })
    .await;
    let counts = duckdb_id_counts(&table);
    assert_eq!(counts.len(), 10, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

/// The fence of a sink without a transaction: a node writing Parquet is
/// paused (SIGSTOP) past its leases while clients post to both nodes; when it
/// wakes, its progress writes are refused and every acknowledged event is in
/// the files exactly once (read by DuckDB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_writing_parquet_paused_past_its_leases_is_fenced_when_it_wakes() {
    let nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let nodes: Vec<Project> = (0..2)
        .map(|_| node_of(&nats, lake.path(), &parquet_tail(6, "")))
        .collect();
    let (servers, acked) = pause_a_writer_past_its_leases(&nodes).await;
    let table = table_dir(lake.path());
    let started = Instant::now();
    loop {
        let counts = id_counts(&table);
        if acked.iter().all(|id| counts.contains_key(id)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the files never held every acknowledged event"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let the woken node do whatever it still would (upload, commit).
    super::wait_until_the_woken_node_noticed(&nodes[0], &servers[0]).await;
    let counts = duckdb_id_counts(&table);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "{} events twice, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    assert!(acked.iter().all(|id| counts.contains_key(id)));
    assert!(
        counts.len() - acked.len() <= 4 * 5,
        "{} events in the files were never acknowledged",
        counts.len() - acked.len()
    );
    drop(servers);
}
