//! The process as an operator meets it: SIGHUP (what `systemctl reload`
//! sends) reloads the configuration while webhooks are served, losing and
//! doubling nothing; JSON log lines hold plain values (a number, or no
//! field), never Rust's debug text.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A webhook pipeline `name` of Shopify customers, `max_age` as given.
pub(crate) fn hook_pipeline(name: &str, max_age: &str) -> String {
    format!(
        "name = \"{name}\"\nschema = \"schemas/shopify_customer.json\"\nrecord_path = \"/customers\"\n\
         [source]\ntype = \"webhook\"\npath = \"/hooks/{name}\"\n[batch]\nmax_age = \"{max_age}\"\n\
         [[sink]]\ntype = \"parquet\"\n"
    )
}

/// Posts one customer at a time to `/hooks/{name}` until `stop`; the ids
/// answered 202, and every other status seen.
pub(crate) async fn keep_posting(
    url: String,
    stop: Arc<AtomicBool>,
) -> (HashSet<String>, Vec<u16>) {
    let client = reqwest::Client::new();
    let (mut acked, mut refused) = (HashSet::new(), Vec::new());
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let response = client
            .post(&url)
            .json(&shopify_customer(i))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            202 => acked.extend(accepted_ids(&response.json().await.unwrap())),
            other => refused.push(other),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (acked, refused)
}

pub(crate) async fn pipeline_names(project: &Project) -> Vec<String> {
    let body: Value = reqwest::get(project.url("/api/pipelines"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut names: Vec<String> = body["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_pipelines_while_webhooks_are_served_and_loses_or_doubles_nothing() {
    let project = Project::new();
    for name in ["keep", "change", "drop"] {
        project.write(
            &format!("pipelines/{name}.toml"),
            &hook_pipeline(name, "100ms"),
        );
    }
    let server = project.start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let posters: Vec<_> = ["keep", "change", "drop"]
        .into_iter()
        .map(|name| {
            let url = project.url(&format!("/hooks/{name}"));
            tokio::spawn(keep_posting(url, stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A broken file: the reload is refused, the running configuration kept.
    project.write("pipelines/broken.toml", "name = \"broken\"\n[source]\n");
    server.signal("HUP");
    eventually(&project, "the refused reload", || {
        project.log().contains("the running one is kept")
    })
    .await;
    assert_eq!(pipeline_names(&project).await, ["change", "drop", "keep"]);
    std::fs::remove_file(project.path().join("pipelines/broken.toml")).unwrap();

    // One pipeline changes, one goes, one comes.
    project.write("pipelines/change.toml", &hook_pipeline("change", "250ms"));
    std::fs::remove_file(project.path().join("pipelines/drop.toml")).unwrap();
    project.write("pipelines/add.toml", &hook_pipeline("add", "100ms"));
    server.signal("HUP");
    eventually(&project, "the reload", || {
        project.log().contains("Configuration reloaded.")
    })
    .await;
    assert_eq!(pipeline_names(&project).await, ["add", "change", "keep"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let added = post_customers_to(&project, "/hooks/add", 3).await;
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for poster in posters {
        results.push(poster.await.unwrap());
    }
    let [(keep, keep_refused), (change, change_refused), (drop, drop_refused)] =
        <[_; 3]>::try_from(results).unwrap();
    // The untouched pipeline was served throughout; the changed one answered
    // 503 while it restarted, and 202 again after; the removed one 404.
    assert!(keep_refused.is_empty(), "{keep_refused:?}");
    assert!(
        change_refused.iter().all(|s| *s == 503),
        "{change_refused:?}"
    );
    assert!(drop_refused.iter().all(|s| *s == 404), "{drop_refused:?}");
    assert!(
        !drop_refused.is_empty(),
        "the removed pipeline's path never answered 404"
    );

    assert!(server.terminate().success(), "{}", project.log());
    // Every acknowledged event once in its table, nothing else.
    for (name, acked) in [
        ("keep", keep),
        ("change", change),
        ("drop", drop),
        ("add", added),
    ] {
        let dir = project.path().join("lake").join(name);
        let counts = duckdb_id_counts(&dir);
        assert!(!acked.is_empty(), "{name}: nothing was acknowledged");
        let stored: HashSet<String> = counts.keys().cloned().collect();
        assert_eq!(stored, acked, "{name}: stored and acknowledged differ");
        assert!(
            counts.values().all(|n| *n == 1),
            "{name}: a row twice: {counts:?}"
        );
    }
}

/// Posts `n` customers to `path`, one per request; the ids answered 202.
pub(crate) async fn post_customers_to(project: &Project, path: &str, n: u64) -> HashSet<String> {
    let client = reqwest::Client::new();
    let mut acked = HashSet::new();
    for i in 0..n {
        let response = client
            .post(project.url(path))
            .json(&shopify_customer(i))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        acked.extend(accepted_ids(&response.json().await.unwrap()));
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_fields_hold_plain_values() {
    let project = Project::new();
    project.shopify_delta("max_age = \"100ms\"", "");
    let server = project.start_with(&["--log-format", "json"], &[]).await;
    post_customers(&project, 1, 1, 1).await;
    eventually(&project, "a committed batch", || {
        project.log().contains("Committed batch.")
    })
    .await;
    assert!(server.terminate().success(), "{}", project.log());
    let log = project.log();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let line = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in:\n{log}"))
    };
    let opened = line("Opened Delta table.");
    assert!(opened["version"].is_u64(), "{opened}");
    assert!(
        opened.get("txn").is_none_or(Value::is_i64),
        "no txn on a new table, else a number: {opened}"
    );
    let committed = line("Committed batch.");
    assert!(committed["rows"].is_u64(), "{committed}");
    assert!(
        committed.get("partition").is_none(),
        "no partition outside a cluster: {committed}"
    );
    for l in &lines {
        for (key, value) in l.as_object().unwrap() {
            let text = value.as_str().unwrap_or_default();
            assert!(
                !text.starts_with("Some(") && text != "None",
                "{key} holds Rust's debug text: {l}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_watch_reloads_when_a_pipeline_file_appears() {
    let project = Project::new();
    project.write("pipelines/first.toml", &hook_pipeline("first", "100ms"));
    let log = std::fs::File::create(project.path().join("run.log")).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["run", "--watch"])
        .current_dir(project.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let server = Server::adopt(child);
    eventually(&project, "the server", || {
        project.log().contains("Listening.")
    })
    .await;
    project.write("pipelines/second.toml", &hook_pipeline("second", "100ms"));
    eventually(&project, "the reload", || {
        project.log().contains("Configuration reloaded.")
    })
    .await;
    assert_eq!(pipeline_names(&project).await, ["first", "second"]);
    let acked = post_customers_to(&project, "/hooks/second", 2).await;
    assert!(server.terminate().success(), "{}", project.log());
    let stored: HashSet<String> = event_ids(&project.path().join("lake/second"))
        .into_iter()
        .collect();
    assert_eq!(stored, acked);
}

/// `tributary status --watch` refreshes a table of rates while events
/// flow: events in per second of the pipeline, out per second of its sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_shows_events_in_and_out_per_second_while_they_flow() {
    let project = Project::new();
    project.write("pipelines/flow.toml", &hook_pipeline("flow", "100ms"));
    let _server = project.start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let poster = tokio::spawn(keep_posting(project.url("/hooks/flow"), stop.clone()));
    let watch = {
        let project_dir = project.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
                .args(["status", "--watch", "--interval", "0.5", "--count", "6"])
                .current_dir(project_dir)
                .output()
                .unwrap()
        })
    };
    let out = watch.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let (acked, _) = poster.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!acked.is_empty());
    let text = String::from_utf8(out.stdout).unwrap();
    let frames: Vec<&str> = text
        .split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .collect();
    assert_eq!(frames.len(), 6, "{text}");
    // Not on a terminal: no screen-clearing codes, one frame after another.
    assert!(!text.contains('\x1b'), "{text}");
    let column = |frame: &str, first: &str, index: usize| -> Option<f64> {
        frame
            .lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .and_then(|l| l.split_whitespace().nth(index))
            .and_then(|v| v.parse().ok())
    };
    // "flow (in) <state?> IN/S": the state is empty for a webhook, so the
    // rate is the third word; the sink's line starts with its name.
    let ins: Vec<f64> = frames.iter().filter_map(|f| column(f, "flow", 2)).collect();
    let outs: Vec<f64> = frames
        .iter()
        .filter_map(|f| column(f, "parquet", 2))
        .collect();
    assert!(ins.iter().any(|r| *r > 0.0), "events in per second: {text}");
    assert!(
        outs.iter().any(|r| *r > 0.0),
        "events out per second: {text}"
    );
    assert!(
        frames[0].contains("IN/S") && frames[0].contains("OUT/S"),
        "{text}"
    );
}
