//! Faults the sinks and the log must survive: a flaky S3 (5xx, dropped
//! connections, slow answers, a 60 s outage) under Parquet and Delta sinks,
//! and a full disk under the log and under a local lake. Nothing
//! acknowledged is lost or duplicated, and intake resumes by itself.

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::support::fault_proxy::{FaultProxy, Faults};
use crate::support::*;

const AWS_KEYS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];

/// Clients posting 3 customers per request until `stop`; each returns the
/// acknowledged ids and the statuses it got other than 202.
fn posting_clients(
    project: &Project,
    clients: u64,
    pause: Duration,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<(HashSet<String>, Vec<u16>)>> {
    (0..clients)
        .map(|c| {
            let (url, stop) = (project.url("/hooks/shopify/customers"), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let (mut acked, mut other) = (HashSet::new(), Vec::new());
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    let first = (c * 10_000_000) + n * 3;
                    n += 1;
                    let events: Vec<_> = (0..3).map(|i| shopify_customer(first + i)).collect();
                    let response = client.post(&url).json(&events).send().await.unwrap();
                    match response.status().as_u16() {
                        202 => acked.extend(accepted_ids(&response.json().await.unwrap())),
                        status => {
                            if status == 503 {
                                assert!(response.headers().contains_key("retry-after"));
                            }
                            other.push(status);
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
                (acked, other)
            })
        })
        .collect()
}

async fn join(
    clients: Vec<tokio::task::JoinHandle<(HashSet<String>, Vec<u16>)>>,
) -> (HashSet<String>, Vec<u16>) {
    let (mut acked, mut other) = (HashSet::new(), Vec::new());
    for c in clients {
        let (a, o) = c.await.unwrap();
        acked.extend(a);
        other.extend(o);
    }
    (acked, other)
}

async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The sinks' lag in events, from `/api/pipelines`.
async fn lags(project: &Project) -> Vec<(String, u64)> {
    let (_, body) = get_json(&project.url("/api/pipelines")).await;
    body["pipelines"][0]["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["lag_events"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Waits (up to `limit`, a hang guard) until every sink's lag is 0.
async fn caught_up(project: &Project, limit: Duration) {
    let started = Instant::now();
    loop {
        let lags = lags(project).await;
        if lags.iter().all(|(_, lag)| *lag == 0) {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "the sinks did not catch up: {lags:?}; log:\n{}",
            project.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_s3_with_an_outage_loses_and_duplicates_nothing() {
    let moto = Moto::start().await;
    moto.bucket("lake").await;
    let proxy = FaultProxy::start(
        &moto.endpoint,
        Faults {
            unavailable: 0.2,
            reset: 0.05,
            slow: 0.05,
            delay: Duration::from_secs(2),
        },
    )
    .await;
    let project = Project::new();
    let storage = format!(
        "storage = {{ endpoint = \"{}\", allow_http = true, region = \"us-east-1\" }}",
        proxy.endpoint
    );
    project.shopify_pipeline_with(
        "max_age = \"200ms\"",
        "",
        &format!(
            "type = \"parquet\"\nuri = \"s3://lake/parquet\"\n{storage}\n\n[[sink]]\ntype = \"delta\"\nuri = \"s3://lake/delta\"\n{storage}\n"
        ),
    );
    let _server = project.start_with_env(&AWS_KEYS).await;

    // Faults only, while two clients post.
    let stop = CancellationToken::new();
    let clients = posting_clients(&project, 2, Duration::from_millis(30), &stop);
    tokio::time::sleep(Duration::from_secs(8)).await;

    // A 60 s outage: every request to S3 dropped. Intake goes on; the lag
    // shows in /metrics and /readyz.
    proxy.set_down(true);
    let outage = Instant::now();
    let mut saw_lag = false;
    let mut saw_unready = false;
    while outage.elapsed() < Duration::from_secs(60) {
        let page = reqwest::get(project.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let lag_line = |sink: &str| {
            page.lines()
                .find(|l| {
                    l.starts_with("tributary_sink_lag_events{")
                        && l.contains(&format!("sink=\"{sink}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        saw_lag |= lag_line("parquet") > 0.0 && lag_line("delta") > 0.0;
        let (status, ready) = get_json(&project.url("/readyz")).await;
        if status == 503 {
            let problems = ready["problems"].to_string();
            saw_unready |= problems.contains("sink parquet") && problems.contains("sink delta");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        saw_lag,
        "the lag never showed in /metrics during the outage"
    );
    assert!(
        saw_unready,
        "/readyz never named both sinks during the outage"
    );
    proxy.set_down(false);
    // Faults go on while the sinks catch up and the clients post a bit more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let (acked, other) = join(clients).await;
    assert!(
        other.is_empty(),
        "clients got other answers than 202: {other:?}"
    );
    caught_up(&project, Duration::from_secs(240)).await;

    let parquet: Vec<String> = moto
        .parquet_ids("parquet")
        .await
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    let unique: HashSet<String> = parquet.iter().cloned().collect();
    assert_eq!(unique.len(), parquet.len(), "no duplicate in Parquet");
    assert_eq!(
        unique, acked,
        "Parquet holds exactly the acknowledged events"
    );
    let env = [
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let delta = read_delta("s3://lake/delta", &[], &[], &env);
    delta.assert_exactly(&acked);
    let c = proxy.counts();
    println!(
        "flaky S3: {} events acknowledged; proxy forwarded {}, answered 503 {} times, dropped {} (reset) + {} (outage), delayed {}",
        acked.len(),
        c.forwarded.load(Ordering::Relaxed),
        c.unavailable.load(Ordering::Relaxed),
        c.reset.load(Ordering::Relaxed),
        c.down.load(Ordering::Relaxed),
        c.slow.load(Ordering::Relaxed),
    );
    assert!(c.unavailable.load(Ordering::Relaxed) > 0 && c.reset.load(Ordering::Relaxed) > 0);
}

/// A tmpfs of `size` mounted at `dir` (the tests run as root, as CI does);
/// unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the disk-full tests mount a small tmpfs and need root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_path_buf())
    }

    /// Fills the disk but for `leave` bytes with a ballast file.
    fn fill(&self, leave: u64) {
        let stat = nix_statvfs(&self.0);
        let free = stat.saturating_sub(leave);
        let ballast = std::fs::File::create(self.0.join("ballast")).unwrap();
        // Written, not just sized: tmpfs allocates on write.
        use std::io::Write;
        let mut w = std::io::BufWriter::new(ballast);
        let chunk = vec![1u8; 64 << 10];
        let mut left = free;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if w.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = w.flush();
    }

    fn free_ballast(&self) {
        std::fs::remove_file(self.0.join("ballast")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Free bytes of the file system at `dir` (`df`, so no libc binding is needed here).
fn nix_statvfs(dir: &std::path::Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_disk_answers_503_loses_nothing_and_recovers() {
    let project = Project::new();
    let disk = SmallDisk::mount(&project.path().join("data"), "16m");
    // 1 MiB segments (buffer.max_bytes / 8): each roll needs room on the disk.
    project.shopify_pipeline("max_age = \"100ms\"\n\n[buffer]\nmax_bytes = \"8MiB\"", "");
    let server = project.start().await;
    let mut acked = post_customers(&project, 0, 5, 3).await;
    // Fill the disk: appends (and the sink's progress writes) now fail.
    disk.fill(16 << 10);
    let stop = CancellationToken::new();
    let clients = posting_clients(&project, 2, Duration::from_millis(5), &stop);
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.cancel();
    let (got, other) = join(clients).await;
    acked.extend(got);
    assert!(
        other.contains(&503),
        "a full disk never answered 503: {other:?}; log:\n{}",
        project.log()
    );
    assert!(
        other.iter().all(|s| *s == 503),
        "only 503 besides 202: {other:?}"
    );
    // While the disk stays full the node is unready, and says which pipeline
    // cannot go on (its sink cannot record its progress there).
    let unready = ready_within(&project, 503).await;
    assert_eq!(unready["ready"], false, "{unready}");
    let problems = unready["problems"]
        .as_array()
        .expect("the problems, to loopback");
    assert!(
        problems.iter().any(|p| p
            .as_str()
            .unwrap()
            .starts_with("pipeline shopify_customers")),
        "{unready}"
    );
    // A crash while the disk is full, then space comes back.
    server.kill9();
    disk.free_ballast();
    let _server = project.start().await;
    acked.extend(post_customers(&project, 1_000_000, 5, 3).await);
    exactly_once_in_the_table(&project, &acked).await;
    let ready = ready_within(&project, 200).await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(!project.log().contains("panicked"), "{}", project.log());
}

/// Polls `/readyz` until it answers `status` (30 s, a hang guard); its body.
async fn ready_within(project: &Project, status: u16) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (got, body) = get_json(&project.url("/readyz")).await;
        if got == status {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/readyz never answered {status}; last {got} {body}; log:\n{}",
            project.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lake_disk_holds_events_in_the_log_until_space_returns() {
    let project = Project::new();
    let disk = SmallDisk::mount(&project.path().join("lake"), "8m");
    project.shopify_pipeline("max_age = \"100ms\"", "");
    let _server = project.start().await;
    let mut acked = post_customers(&project, 0, 5, 3).await;
    eventually(&project, "the first events in the table", || {
        id_counts(&project.table_dir()).len() == acked.len()
    })
    .await;
    disk.fill(4 << 10);
    // Webhooks are still taken: the log is on another disk.
    acked.extend(post_customers(&project, 1_000_000, 20, 20).await);
    let started = Instant::now();
    let mut unready = String::new();
    while started.elapsed() < Duration::from_secs(30) {
        let r = reqwest::get(project.url("/readyz")).await.unwrap();
        if r.status() == 503 {
            unready = r.text().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        unready.contains("sink parquet is failing"),
        "/readyz did not show the failing sink: {unready}; log:\n{}",
        project.log()
    );
    disk.free_ballast();
    exactly_once_in_the_table(&project, &acked).await;
    let leftovers: Vec<_> = walk(&project.table_dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Waits for every acknowledged event in the Parquet table, then checks
/// that it holds exactly those, each once.
async fn exactly_once_in_the_table(project: &Project, acked: &HashSet<String>) {
    eventually(project, "every acknowledged event in the table", || {
        id_counts(&project.table_dir()).len() >= acked.len()
    })
    .await;
    let counts = id_counts(&project.table_dir());
    assert_eq!(&counts.keys().cloned().collect::<HashSet<_>>(), acked);
    assert!(counts.values().all(|&n| n == 1), "each exactly once");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_data_dir_with_s3_unreachable_serves_while_s3_is_down_and_overwrites_nothing() {
    let moto = Moto::start().await;
    moto.bucket("lake").await;
    let proxy = FaultProxy::start(
        &moto.endpoint,
        Faults {
            unavailable: 0.0,
            reset: 0.0,
            slow: 0.0,
            delay: Duration::ZERO,
        },
    )
    .await;
    let project = Project::new();
    project.shopify_pipeline_with(
        "max_age = \"100ms\"",
        "",
        &format!(
            "type = \"parquet\"\nuri = \"s3://lake/parquet\"\nstorage = {{ endpoint = \"{}\", allow_http = true, region = \"us-east-1\" }}\n",
            proxy.endpoint
        ),
    );
    let server = project.start_with_env(&AWS_KEYS).await;
    let first = post_customers(&project, 0, 4, 5).await;
    assert!(server.terminate().success(), "log:\n{}", project.log());
    // The data directory is lost and S3 does not answer: the new log cannot
    // read which offsets the old one used.
    std::fs::remove_dir_all(project.path().join("data")).unwrap();
    proxy.set_down(true);
    let dropped = proxy.counts().down.load(Ordering::SeqCst);
    let restarted_at_us = chrono::Utc::now().timestamp_micros() as u64;
    // Start-up reads the outputs for a bounded time, never until S3 is back:
    // the node answers and acknowledges while S3 still drops every request.
    let _server = project.start_with_env(&AWS_KEYS).await;
    let second = post_customers(&project, 1_000_000, 4, 5).await;
    assert!(
        proxy.counts().down.load(Ordering::SeqCst) > dropped,
        "the restarted node asked S3 and got no answer before it served"
    );
    proxy.set_down(false);
    caught_up(&project, Duration::from_secs(120)).await;
    let objects = moto.parquet_ids("parquet").await;
    let ids: Vec<&String> = objects.iter().map(|(_, id)| id).collect();
    let unique: HashSet<String> = ids.iter().map(|id| id.to_string()).collect();
    assert_eq!(unique.len(), ids.len(), "no event twice");
    let acked: HashSet<String> = first.union(&second).cloned().collect();
    assert_eq!(
        unique, acked,
        "the first log's objects were not overwritten"
    );
    // Object names are offset ranges: the new log's start at the clock
    // (µs at its start), beyond any offset the lost log could have used.
    for (key, id) in &objects {
        let offset = first_offset(key);
        if second.contains(id) {
            assert!(
                offset >= restarted_at_us,
                "{key}: an event of the new log below the clock at its start ({restarted_at_us})"
            );
        } else {
            assert!(offset < restarted_at_us, "{key}: an event of the lost log");
        }
    }
}

/// The first offset in a Parquet object's name (`…/part-<first>-<last>.parquet`).
fn first_offset(key: &str) -> u64 {
    let name = key.rsplit('/').next().unwrap();
    let range = name
        .strip_prefix("part-")
        .and_then(|n| n.strip_suffix(".parquet"))
        .unwrap_or_else(|| panic!("not a Parquet sink's object name: {key}"));
    let (first, _last) = range.split_once('-').unwrap();
    first.parse().unwrap()
}
