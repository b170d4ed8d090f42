//! The process as an operator meets it: SIGHUP (what `systemctl reload`
//! sends) is logged and ignored until reload exists, and JSON log lines hold
//! plain values (a number, or no field), never Rust's debug text.

use std::collections::HashSet;

use serde_json::Value;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_logged_and_the_server_goes_on() {
    let project = Project::new();
    project.shopify_pipeline("max_age = \"100ms\"", "");
    let server = project.start().await;
    server.signal("HUP");
    eventually(&project, "the SIGHUP log line", || {
        project.log().contains("SIGHUP received")
    })
    .await;
    assert!(
        project.log().contains("Restart it to apply changes"),
        "{}",
        project.log()
    );
    // Still serving: an event posted after the signal is stored.
    let acked = post_customers(&project, 1, 1, 1).await;
    assert_eq!(project.health().await, 200);
    assert!(server.terminate().success(), "{}", project.log());
    let stored: HashSet<String> = event_ids(&project.table_dir()).into_iter().collect();
    assert_eq!(stored, acked);
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
