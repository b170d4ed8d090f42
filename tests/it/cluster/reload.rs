//! Reload on a JetStream log (issue 33): two nodes serve three webhook
//! pipelines while clients post to both; a broken file is refused and the
//! running configuration kept; then each node in turn (a rolling reload)
//! gets a changed pipeline, a removed one and a new one. Every acknowledged
//! event is in its table once, read by DuckDB: the untouched pipeline was
//! served throughout, the changed one answered 503 only while it
//! restarted, and the removed one was written out by the node that removed
//! it last, though the first had let its partitions go.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Nats;
use crate::ops::{hook_pipeline, keep_posting, pipeline_names, post_customers_to};
use crate::support::*;

/// A node of `nats` whose pipelines' Parquet files go to `lake`; no pipelines yet.
fn node(nats: &Nats, lake: &Path) -> Project {
    let project = Project::new();
    let servers: Vec<String> = nats.urls.iter().map(|u| format!("\"{u}\"")).collect();
    project.write(
        "tributary.toml",
        &format!(
            "listen = \"127.0.0.1:{}\"\nlake = \"{}\"\n\n[log]\ntype = \"jetstream\"\nservers = [{}]\nreplicas = 3\nlease = \"3s\"\n",
            project.port,
            lake.display(),
            servers.join(", ")
        ),
    );
    project
}

/// [`hook_pipeline`] on two partitions.
fn pipeline(name: &str, max_age: &str) -> String {
    format!("{}[log]\npartitions = 2\n", hook_pipeline(name, max_age))
}

/// Waits (a hang guard of 120 s, not a timing assertion) until `done`.
async fn until(what: &str, nodes: &[Project], mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never saw {what}; logs:\n{}",
            nodes
                .iter()
                .map(Project::log)
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_each_node_while_both_serve_and_loses_or_doubles_nothing() {
    let nats = Nats::start().await;
    let lake = tempfile::tempdir().unwrap();
    let nodes: Vec<Project> = (0..2).map(|_| node(&nats, lake.path())).collect();
    for node in &nodes {
        for name in ["keep", "change", "drop"] {
            node.write(&format!("pipelines/{name}.toml"), &pipeline(name, "100ms"));
        }
    }
    let servers = [nodes[0].start().await, nodes[1].start().await];
    let stop = Arc::new(AtomicBool::new(false));
    let mut posters = Vec::new();
    for node in &nodes {
        for name in ["keep", "change", "drop"] {
            let url = node.url(&format!("/hooks/{name}"));
            posters.push((name, tokio::spawn(keep_posting(url, stop.clone()))));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A broken file: the reload is refused, the running configuration kept.
    nodes[0].write("pipelines/broken.toml", "name = \"broken\"\n[source]\n");
    servers[0].signal("HUP");
    until("the refused reload", &nodes, || {
        nodes[0].log().contains("the running one is kept")
    })
    .await;
    assert_eq!(pipeline_names(&nodes[0]).await, ["change", "drop", "keep"]);
    std::fs::remove_file(nodes[0].path().join("pipelines/broken.toml")).unwrap();

    // Each node in turn: one pipeline changes, one goes, one comes.
    for (node, server) in nodes.iter().zip(&servers) {
        node.write("pipelines/change.toml", &pipeline("change", "250ms"));
        std::fs::remove_file(node.path().join("pipelines/drop.toml")).unwrap();
        node.write("pipelines/add.toml", &pipeline("add", "100ms"));
        server.signal("HUP");
        until("the reload", &nodes, || {
            node.log().contains("Configuration reloaded.")
        })
        .await;
        assert_eq!(pipeline_names(node).await, ["add", "change", "keep"]);
        // The node's share counts the partitions of what it runs now: 3
        // pipelines of 2, over 2 live nodes.
        let body: serde_json::Value = reqwest::get(node.url("/api/pipelines"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let share = &body["node"]["partitions"];
        assert_eq!(share["total"], 6, "{}", body["node"]);
        assert_eq!(body["node"]["live_nodes"], 2, "{}", body["node"]);
        assert_eq!(share["fair"], 3, "{}", body["node"]);
    }
    let mut added = post_customers_to(&nodes[0], "/hooks/add", 3).await;
    added.extend(post_customers_to(&nodes[1], "/hooks/add", 3).await);
    stop.store(true, Ordering::Relaxed);

    let mut acked: Vec<(&str, HashSet<String>)> = vec![("add", added)];
    for (name, poster) in posters {
        let (ids, refused) = poster.await.unwrap();
        // The untouched pipeline was served throughout; the changed one
        // answered 503 while it restarted, and 202 again after; the removed
        // one 404.
        match name {
            "keep" => assert!(refused.is_empty(), "keep: {refused:?}"),
            "change" => assert!(refused.iter().all(|s| *s == 503), "change: {refused:?}"),
            _ => {
                assert!(refused.iter().all(|s| *s == 404), "drop: {refused:?}");
                assert!(
                    !refused.is_empty(),
                    "the removed pipeline never answered 404"
                );
            }
        }
        assert!(!ids.is_empty(), "{name}: nothing was acknowledged");
        match acked.iter_mut().find(|(n, _)| *n == name) {
            Some((_, all)) => all.extend(ids),
            None => acked.push((name, ids)),
        }
    }
    // Every acknowledged event in its table: the sinks write what the
    // streams hold as it comes (no stop flushes it), so wait for it. No node
    // runs `drop` any more: what it held was written out at its removal.
    for (name, ids) in &acked {
        let dir = lake.path().join(name);
        until(
            &format!("every acknowledged event of {name}"),
            &nodes,
            || {
                let counts = id_counts(&dir);
                ids.iter().all(|id| counts.contains_key(id))
            },
        )
        .await;
        let counts = duckdb_id_counts(&dir);
        let stored: HashSet<String> = counts.keys().cloned().collect();
        assert_eq!(&stored, ids, "{name}: stored and acknowledged differ");
        assert!(
            counts.values().all(|n| *n == 1),
            "{name}: a row twice: {counts:?}"
        );
    }
    drop(servers);
}
