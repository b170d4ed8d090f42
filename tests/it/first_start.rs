//! A first start on a fresh machine: a poll pipeline without its credentials
//! says so once and shows it in `/api/pipelines`, `/readyz` and `tributary
//! status` while the webhooks go on; a sink whose credential is not set
//! stops `run` before any log is made; a bucket that does not exist yet is
//! named on one line, and once it exists the objects are named from offset 0
//! (not from the clock).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// Moto's keys, as the server's environment.
const AWS_KEYS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];

/// A variable no test machine sets.
const UNSET: &str = "TRIBUTARY_TEST_NEVER_SET_TOKEN";

/// A hang guard, not a timing assertion.
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_pipeline_without_credentials_says_so_once_and_shows_it_everywhere() {
    let project = Project::new();
    // Never contacted: the run fails at its credential, before any request.
    project.write(
        "pipelines/items.toml",
        &format!(
            r#"name = "items"
schema = "infer"

[source]
type = "poll"
every = "1h"
url = "https://127.0.0.1:9/items"
records = "/items"
auth = {{ type = "bearer", token_env = "{UNSET}" }}

[[sink]]
type = "parquet"
"#
        ),
    );
    project.shopify_pipeline("", "");
    let server = project.start().await;
    let client = reqwest::Client::new();

    // Reported from the start, and again by the first run (at once: the pipeline is new).
    let started = Instant::now();
    let poll = loop {
        let answer: Value = client
            .get(project.url("/api/pipelines"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = answer["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "items")
            .expect("the poll pipeline is listed")
            .clone();
        if items["poll"]["failures"].as_u64() >= Some(2) {
            break items["poll"].clone();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "never saw two failures: {answer}\n{}",
            project.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(poll["state"], "failing", "{poll}");
    assert!(
        poll["last_error"].as_str().unwrap().contains(UNSET),
        "{poll}"
    );
    assert!(poll["last_error_at"].is_string(), "{poll}");

    // Listed by /readyz, which stays ready: the webhook pipeline still works.
    let readyz = client.get(project.url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 200);
    let readyz: Value = readyz.json().await.unwrap();
    assert_eq!(readyz["ready"], true, "{readyz}");
    let problems: Vec<&str> = readyz["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        problems.iter().any(
            |p| p.starts_with("pipeline items: its poll source is failing") && p.contains(UNSET)
        ),
        "{readyz}"
    );
    assert_eq!(post_customers(&project, 0, 1, 1).await.len(), 1);

    // `tributary status`: a row for the source, with its error.
    let out = project.command(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.lines().any(|l| l.starts_with("items")
            && l.contains("(source)")
            && l.contains("failing")
            && l.contains(UNSET)),
        "{table}"
    );

    // One WARN line for it, and no ERROR for each failed run.
    let log = project.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("The poll source has no credentials"))
        .collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains("WARN"), "{log}");
    assert!(!log.contains("Poll run failed"), "{log}");
    assert!(server.terminate().success(), "{}", project.log());
}

#[test]
fn a_sink_whose_credential_is_not_set_stops_run_before_a_log_is_made() {
    let project = Project::new();
    project.shopify_pipeline_with(
        "",
        "",
        &format!("type = \"parquet\"\nuri = \"s3://lake/customers\"\nstorage = {{ endpoint = \"http://127.0.0.1:9\", allow_http = true, region = \"us-east-1\", access_key_id_env = \"{UNSET}\" }}"),
    );
    let out = project.command(&["run"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(UNSET), "{stderr}");
    // The next start, with the variable set, still reads the outputs before
    // it numbers anything: no log (and no offset from the clock) was made.
    assert!(
        !project.path().join("data/shopify_customers/log").exists(),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_made_after_the_first_start_holds_objects_named_from_offset_zero() {
    let moto = Moto::start().await;
    let project = Project::new();
    project.shopify_pipeline_with(
        "max_age = \"100ms\"",
        "",
        &format!(
            "type = \"parquet\"\nuri = \"s3://lake/customers\"\nstorage = {{ endpoint = \"{}\", allow_http = true, region = \"us-east-1\" }}",
            moto.endpoint
        ),
    );
    let server = project.start_with_env(&AWS_KEYS).await;
    let acked = post_customers(&project, 0, 2, 3).await;
    // The sink retries, saying on one line what is wrong.
    eventually(&project, "the sink naming the missing bucket", || {
        project
            .log()
            .contains("NoSuchBucket: The specified bucket does not exist")
    })
    .await;
    let log = project.log();
    assert!(!log.contains("<Error>") && !log.contains("<?xml"), "{log}");
    assert!(!log.contains("start at the clock"), "{log}");

    moto.bucket("lake").await;
    let started = Instant::now();
    let rows = loop {
        let rows = moto.parquet_ids("customers").await;
        if rows.len() >= acked.len() {
            break rows;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the objects never arrived; log:\n{}",
            project.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(server.terminate().success(), "{}", project.log());
    let ids: std::collections::HashSet<String> = rows.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, acked);
    for (location, _) in &rows {
        let end = tributary::sink::files::end_offset(location).expect("named by offsets");
        assert!(end < 1_000, "{location} is named from the clock");
    }
}
