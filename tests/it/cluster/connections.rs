//! Connections on a JetStream log (issue 31): two nodes share one
//! `[connections]` pipeline polling the fake multi-account API. Connections
//! added through either node are seen by both (they live in a KV bucket);
//! each shard of them is polled by the one node holding its lease; a node
//! killed with SIGKILL mid-run hands its connections to the other, which
//! resumes each from its cursor in JetStream: every record of every account
//! lands in the Delta table once, with its `_connection`, read back by
//! delta-rs and DuckDB, and no token is in plaintext on any disk.

use super::*;
use crate::support::accounts::Accounts;
use serde_json::json;

const ACCOUNTS: usize = 30;
/// One of them holds a token the API refuses.
const REVOKED: &str = "acct-13";

/// A node of the cluster running the `crm` connections pipeline on `api`,
/// named `conn-node-<i>` in the leases.
fn crm_node(nats: &Nats, lake: &Path, api: &Accounts, i: usize) -> Project {
    let project = node(nats, lake);
    fs::remove_file(project.path().join("pipelines/shopify_customers.toml")).unwrap();
    project.write(
        "pipelines/crm.toml",
        &format!(
            r#"name = "crm"
schema = "infer"

[source]
type = "poll"
url = "{url}"
allow_http = true
every = "1s"
jitter = "300ms"
records = "/results"
cursor = {{ field = "updated_at", param = "updated_after" }}
paginate = {{ type = "cursor", next = "/paging/next/after", param = "after" }}
auth = {{ type = "bearer" }}

[connections]
max_concurrent_runs = 4

[log]
partitions = 3

[batch]
max_age = "300ms"

[[sink]]
type = "delta"
name = "delta"
"#,
            url = api.url()
        ),
    );
    // A webhook pipeline whose connections post to `/hooks/shops/{id}`.
    project.write(
        "pipelines/shops.toml",
        r#"name = "shops"
schema = "schemas/shopify_customer.json"
record_path = "/customers"

[source]
type = "webhook"
path = "/hooks/shops"

[connections]

[[sink]]
type = "delta"
name = "delta"
"#,
    );
    let config = fs::read_to_string(project.path().join("tributary.toml")).unwrap();
    // The [log] table is the file's last: the key lands in it.
    project.write(
        "tributary.toml",
        &format!("{config}node = \"conn-node-{i}\"\n"),
    );
    project
}

/// Which node holds each shard lease of `crm`'s connections (by index).
async fn shard_holders(leases: &async_nats::jetstream::kv::Store) -> Vec<Option<usize>> {
    let mut holders = Vec::new();
    for shard in 0..16 {
        let value = leases
            .get(format!("crm._connections.{shard}"))
            .await
            .unwrap();
        holders.push(value.and_then(|v| {
            let node = String::from_utf8(v.to_vec()).unwrap();
            (0..2usize).find(|i| node.starts_with(&format!("conn-node-{i}-")))
        }));
    }
    holders
}

/// `_connection/id` → rows in the table (delta-rs), and how many rows
/// DuckDB read (a moment later: the table may have grown); empty before
/// its first commit.
fn rows_by_account(table: &Path) -> (HashMap<String, usize>, usize) {
    // Version 0 creates the inferred table with its metadata columns only;
    // the records' columns come with the first rows.
    if !table.join("_delta_log/00000000000000000001.json").is_file() {
        return (HashMap::new(), 0);
    }
    let view = read_delta(table.to_str().unwrap(), &[], &["_connection", "id"], &[]);
    let mut counts = HashMap::new();
    for row in &view.rows {
        let key = format!(
            "{}/{}",
            row["_connection"].as_str().unwrap_or("?"),
            row["id"]
        );
        *counts.entry(key).or_default() += 1;
    }
    (counts, view.duckdb.values().sum())
}

/// Opens the tap at `url` (a 200), runs `post`, and returns the first `n`
/// lines the tap sends, as JSON (a hang guard of 60 s per chunk).
async fn tap_lines(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    post: impl std::future::Future<Output = ()>,
) -> Vec<serde_json::Value> {
    let tap = client.get(url).send().await.unwrap();
    assert_eq!(tap.status(), 200);
    let mut tap = tap.bytes_stream();
    post.await;
    let mut seen = String::new();
    while seen.lines().count() < n {
        let chunk =
            tokio::time::timeout(Duration::from_secs(60), futures::StreamExt::next(&mut tap))
                .await
                .unwrap_or_else(|_| panic!("the tap at {url} sent no more than: {seen}"))
                .unwrap()
                .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Every file under `dir`, recursively, whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if let Ok(bytes) = fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_seen_by_every_node_polled_by_one_and_moved_when_it_dies() {
    let nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let api = Accounts::start().await;
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("acct-{i:02}")).collect();
    for a in &accounts {
        api.add(a, &format!("tok-{a}-s3cr3t"), 10);
    }
    let nodes: Vec<Project> = (0..2)
        .map(|i| crm_node(&nats, lake.path(), &api, i))
        .collect();
    let key = nodes[0].command(&["connections", "keygen"]);
    assert!(key.status.success(), "{key:?}");
    let key = String::from_utf8(key.stdout).unwrap().trim().to_string();
    let env = [("TRIBUTARY_SECRET_KEY", key.as_str())];
    let mut servers = Vec::new();
    for n in &nodes {
        servers.push(Some(n.start_with_env(&env).await));
    }
    let client = reqwest::Client::new();
    // Added through both nodes, while running.
    for (i, a) in accounts.iter().enumerate() {
        let token = if a == REVOKED {
            "tok-revoked-s3cr3t".to_string()
        } else {
            format!("tok-{a}-s3cr3t")
        };
        let body = json!({"id": a, "credentials": {"token": token}});
        let answer = client
            .post(nodes[i % 2].url("/api/pipelines/crm/connections"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201, "{}", answer.text().await.unwrap());
    }
    // The same id through the other node: taken.
    let again = client
        .post(nodes[1].url("/api/pipelines/crm/connections"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(json!({"id": "acct-00", "credentials": {"token": "x"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        409,
        "an id added on the other node is taken"
    );
    // Every node sees every connection.
    for n in &nodes {
        let started = Instant::now();
        loop {
            let list: serde_json::Value = client
                .get(n.url("/api/pipelines/crm/connections"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if list["connections"].as_array().map_or(0, Vec::len) == ACCOUNTS {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "a node never saw every connection: {list}\n{}",
                n.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A webhook connection added on one node is taken on the other; an
    // unknown one is 404, and once removed on one node, 410 on the other.
    let posted = |node: usize, id: &'static str| {
        let (client, url) = (
            client.clone(),
            nodes[node].url(&format!("/hooks/shops/{id}")),
        );
        async move {
            let answer = client
                .post(url)
                .json(&shopify_customer(1))
                .send()
                .await
                .unwrap();
            answer.status().as_u16()
        }
    };
    let added = client
        .post(nodes[0].url("/api/pipelines/shops/connections"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(json!({"id": "acme.example"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let started = Instant::now();
    while posted(1, "acme.example").await != 202 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            nodes[1].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(posted(1, "nobody").await, 404);
    // A tap on one node sees the events posted to the other, as acknowledged.
    let post_three = || async {
        for _ in 0..3 {
            assert_eq!(posted(0, "acme.example").await, 202);
        }
    };
    let url = nodes[1].url("/api/pipelines/shops/tap");
    for line in tap_lines(&client, &url, 3, post_three()).await {
        assert_eq!(line["connection"], "acme.example", "{line}");
        assert_eq!(line["body"]["customers"]["id"], 1, "{line}");
    }
    // A tap of one sink: an unknown one is a 404 naming the sinks; `delta`
    // shows each event once its partition's progress passed it, so the
    // table holds it when it is shown.
    let unknown = client
        .get(nodes[1].url("/api/pipelines/shops/tap?sink=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let said = unknown.text().await.unwrap();
    assert!(said.contains("delta"), "{said}");
    let url = nodes[1].url("/api/pipelines/shops/tap?sink=delta");
    let shown: Vec<String> = tap_lines(&client, &url, 3, post_three())
        .await
        .iter()
        .map(|line| line["id"].as_str().unwrap().to_string())
        .collect();
    let written = read_delta(lake.path().join("shops").to_str().unwrap(), &[], &[], &[]);
    for id in &shown {
        assert!(
            written.deltalake.contains_key(id),
            "shown by the sink's tap but not in its table: {id}"
        );
    }
    let removed = client
        .delete(nodes[1].url("/api/pipelines/shops/connections/acme.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let started = Instant::now();
    while posted(0, "acme.example").await != 410 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            nodes[0].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The shards spread over both nodes, each held by one.
    let nats_client = async_nats::connect(nats.urls.clone()).await.unwrap();
    let leases = async_nats::jetstream::new(nats_client)
        .get_key_value("tributary_leases")
        .await
        .unwrap();
    let started = Instant::now();
    let holders = loop {
        let holders = shard_holders(&leases).await;
        let of = |i| holders.iter().filter(|h| **h == Some(i)).count();
        if of(0) + of(1) == 16 && of(0) > 0 && of(1) > 0 {
            break holders;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the connections' shards never spread over both nodes: {holders:?}\n{}",
            nodes[0].log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Killed while its connections run.
    let table = lake.path().join("crm");
    let started = Instant::now();
    while rows_by_account(&table).0.len() < 30 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no rows came:\n{}",
            nodes[0].log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let victim = if holders.iter().filter(|h| **h == Some(0)).count() >= 8 {
        0
    } else {
        1
    };
    let survivor = 1 - victim;
    servers[victim].take().unwrap().kill9();
    for a in &accounts {
        api.grow(a, 6);
    }
    // Its shards move to the survivor.
    let started = Instant::now();
    loop {
        let holders = shard_holders(&leases).await;
        if holders.iter().all(|h| *h == Some(survivor)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the dead node's shards never moved: {holders:?}\n{}",
            nodes[survivor].log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let expected: HashMap<String, usize> = accounts
        .iter()
        .filter(|a| *a != REVOKED)
        .flat_map(|a| (1..=16).map(move |i| (format!("{a}/{i}"), 1)))
        .collect();
    let started = Instant::now();
    let (seen, duckdb) = loop {
        let (seen, duckdb) = rows_by_account(&table);
        if seen.len() >= expected.len() {
            break (seen, duckdb);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} of {} records arrived:\n{}",
            seen.len(),
            expected.len(),
            nodes[survivor].log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let wrong: Vec<_> = seen
        .iter()
        .filter(|(k, n)| expected.get(*k) != Some(n))
        .collect();
    assert!(
        wrong.is_empty() && seen.len() == expected.len(),
        "each record once, each with its connection; off: {wrong:?}"
    );
    assert_eq!(duckdb, expected.len(), "DuckDB reads the same rows");
    // The revoked one waits for new credentials, as every node sees.
    let revoked: serde_json::Value = client
        .get(nodes[survivor].url(&format!("/api/pipelines/crm/connections/{REVOKED}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revoked["state"], "needs_reauth", "{revoked}");
    // A purge through the survivor: that account's rows, cursor and
    // connection are gone, every other account's rows stay.
    let purge = client
        .delete(nodes[survivor].url("/api/pipelines/crm/connections/acct-00?purge=true"))
        .send()
        .await
        .unwrap();
    let status = purge.status();
    let report: serde_json::Value = purge.json().await.unwrap();
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["purged"]["sinks"]["delta"]["rows"], 16, "{report}");
    assert_eq!(report["purged"]["cursor"], true, "{report}");
    let (after, duckdb) = rows_by_account(&table);
    let left: HashMap<String, usize> = expected
        .iter()
        .filter(|(k, _)| !k.starts_with("acct-00/"))
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    assert_eq!(after, left, "exactly one account's rows are gone");
    assert_eq!(duckdb, left.len(), "DuckDB reads the same");
    let gone: serde_json::Value = client
        .get(nodes[survivor].url("/api/pipelines/crm/connections/acct-00"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(gone["state"], "removed", "{gone}");
    // No token in plaintext on the nodes' disks nor the servers'.
    for dir in [nodes[0].path(), nodes[1].path(), nats._dir.path()] {
        let holding = files_holding(dir, b"s3cr3t");
        assert!(holding.is_empty(), "a token in plaintext in {holding:?}");
    }
    // A pipeline restarted by a reload leaves no watch of its connections
    // behind: twice changed, `shops` ends with the one consumer of its
    // bucket the running pipeline watches with (JetStream deletes a
    // consumer nobody listens to 30 s after its last listener went).
    let server = servers[survivor].as_ref().unwrap();
    let shops = nodes[survivor].path().join("pipelines/shops.toml");
    let first = fs::read_to_string(&shops).unwrap();
    for max_age in ["400ms", "500ms"] {
        let before = nodes[survivor]
            .log()
            .matches("Configuration reloaded.")
            .count();
        fs::write(
            &shops,
            format!("{first}\n[batch]\nmax_age = \"{max_age}\"\n"),
        )
        .unwrap();
        server.signal("HUP");
        let started = Instant::now();
        while nodes[survivor]
            .log()
            .matches("Configuration reloaded.")
            .count()
            == before
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the reload never ended:\n{}",
                nodes[survivor].log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let started = Instant::now();
    loop {
        let watching = bucket_consumers(&nats, "KV_tributary_connections_shops").await;
        if watching == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the bucket of a reloaded pipeline still has {watching} consumers:\n{}",
            nodes[survivor].log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The consumers of `stream`, the most any server of `nats` counts.
async fn bucket_consumers(nats: &Nats, stream: &str) -> u64 {
    let mut most = 0;
    for monitor in &nats.monitors {
        let url = format!("http://127.0.0.1:{monitor}/jsz?accounts=true&streams=true");
        let Ok(answer) = reqwest::get(&url).await else {
            continue;
        };
        let body: serde_json::Value = answer.json().await.unwrap_or_default();
        for account in body["account_details"].as_array().into_iter().flatten() {
            for detail in account["stream_detail"].as_array().into_iter().flatten() {
                if detail["name"] == stream {
                    most = most.max(detail["state"]["consumer_count"].as_u64().unwrap_or(0));
                }
            }
        }
    }
    most
}
