//! Operating a running server: `/metrics` (parsed by the Prometheus client
//! library), `/readyz`, `/api/pipelines` and `tributary status` while a sink
//! stalls and recovers; `tributary replay` of dead letters after a fix; JSON logs.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A pipeline with a Parquet sink and an ordered HTTPS sink to `url`.
fn pipeline(project: &Project, url: &str) {
    project.shopify_pipeline_with(
        "max_age = \"100ms\"",
        "",
        &format!("type = \"parquet\"\n\n[[sink]]\ntype = \"https\"\nurl = \"{url}\"\nallow_http = true\nordered = true\nsigning = {{ secret_env = \"SIGNING_SECRET\" }}"),
    );
}

/// The metrics page as `{name{labels}: value}`, parsed by `prometheus_client`.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let python = crate::support::python();
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the page:\n{text}"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The metrics page at `url`, parsed.
async fn scrape(url: &str) -> HashMap<String, f64> {
    let page = reqwest::get(url).await.unwrap().text().await.unwrap();
    parse_metrics(&page)
}

async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn sink<'a>(pipelines: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    pipelines["pipelines"][0]["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_readiness_and_status_follow_a_stalled_sink_and_its_recovery() {
    let project = Project::new();
    let port = free_port();
    let receiver = Receiver::start_on(project.path(), "standard-webhooks", SECRET, port).await;
    pipeline(&project, &receiver.url);
    let _server = project
        .start_with(&["--log-format", "json"], &[("SIGNING_SECRET", SECRET)])
        .await;
    let client = reqwest::Client::new();
    let hook = project.url("/hooks/shopify/customers");
    for id in 0..20 {
        let response = client
            .post(&hook)
            .json(&shopify_customer(id))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    eventually(&project, "both sinks caught up", || {
        receiver.delivered_ids().len() == 20
    })
    .await;
    let metrics_url = project.url("/metrics");
    let mut caught_up = false;
    for _ in 0..100 {
        let m = scrape(&metrics_url).await;
        assert_eq!(
            m[r#"tributary_events_received_total{pipeline="shopify_customers"}"#],
            20.0
        );
        assert_eq!(
            m[r#"tributary_http_responses_total{pipeline="shopify_customers",status="202"}"#],
            20.0
        );
        let lag = |s: &str| {
            m[&format!("tributary_sink_lag_events{{pipeline=\"shopify_customers\",sink=\"{s}\"}}")]
        };
        // Counters move before progress does: once a lag reads 0, its
        // sink's counts are complete (the receiver may see a delivery
        // before the sink has its answer, so not before).
        if lag("https") == 0.0 && lag("parquet") == 0.0 {
            assert_eq!(
                m[r#"tributary_https_deliveries_total{class="2xx",pipeline="shopify_customers",sink="https"}"#],
                20.0
            );
            assert!(m.contains_key(r#"tributary_flush_seconds_bucket{le="+Inf",pipeline="shopify_customers",sink="parquet"}"#), "{m:?}");
            assert!(m[r#"tributary_log_bytes{pipeline="shopify_customers"}"#] > 0.0);
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(caught_up, "the lag gauges never reached 0");
    assert_eq!(get_json(&project.url("/readyz")).await.0, 200);

    // The receiver goes away: the HTTPS sink's lag grows and readiness says why.
    drop(receiver);
    for id in 20..25 {
        client
            .post(&hook)
            .json(&shopify_customer(id))
            .send()
            .await
            .unwrap();
    }
    let mut unready = serde_json::Value::Null;
    for _ in 0..300 {
        let (status, body) = get_json(&project.url("/readyz")).await;
        if status == 503 {
            unready = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let problems = unready["problems"].to_string();
    assert!(problems.contains("sink https is failing"), "{unready}");
    let (_, first) = get_json(&project.url("/api/pipelines")).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, second) = get_json(&project.url("/api/pipelines")).await;
    let https = sink(&second, "https");
    assert!(https["lag_events"].as_u64().unwrap() >= 5, "{second}");
    assert!(
        https["lag_seconds"].as_f64().unwrap()
            > sink(&first, "https")["lag_seconds"].as_f64().unwrap(),
        "lag in seconds grows: {first} then {second}"
    );
    assert_eq!(https["state"], "failing");
    assert!(
        https["last_error"].as_str().unwrap().contains("connect"),
        "{https}"
    );
    assert_eq!(sink(&second, "parquet")["state"], "running");
    let m = scrape(&metrics_url).await;
    assert!(m[r#"tributary_sink_lag_events{pipeline="shopify_customers",sink="https"}"#] >= 5.0);
    assert!(
        m[r#"tributary_https_retries_total{pipeline="shopify_customers",sink="https"}"#] >= 1.0
    );
    let status = project.command(&["status"]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("https") && l.contains("failing")),
        "{table}"
    );

    // It comes back on the same port: everything is delivered, ready again.
    let receiver = Receiver::start_on(project.path(), "standard-webhooks", SECRET, port).await;
    eventually(&project, "the backlog delivered", || {
        receiver.delivered_ids().len() == 25
    })
    .await;
    let mut ready = false;
    for _ in 0..300 {
        if get_json(&project.url("/readyz")).await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again after recovery");
    let status = project.command(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(sink(&json, "https")["state"], "running");
    assert_eq!(sink(&json, "https")["lag_events"], 0);

    // JSON logs: every line is an object with a level and a message; no secret.
    let log = project.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["message"] == "Listening."),
        "{log}"
    );
    assert!(!log.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_dead_letters_land_once_in_the_sink_that_refused_them() {
    let project = Project::new();
    let receiver = Receiver::start(project.path(), "standard-webhooks", SECRET).await;
    pipeline(&project, &receiver.url);
    // The receiver refuses the first delivery (400: a dead letter of the HTTPS sink).
    receiver.control(serde_json::json!({ "answers": [400] }));
    let env = [("SIGNING_SECRET", SECRET)];
    let server = project.start_with_env(&env).await;
    let client = reqwest::Client::new();
    let hook = project.url("/hooks/shopify/customers");
    let post = |body: serde_json::Value| {
        let (client, hook) = (client.clone(), hook.clone());
        async move {
            let response = client.post(&hook).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 202);
            accepted_ids(&response.json().await.unwrap()).remove(0)
        }
    };
    let good = post(shopify_customer(1)).await;
    // An id that is not an integer: a dead letter of the Parquet sink.
    let mut bad_body = shopify_customer(2);
    bad_body["customers"]["id"] = serde_json::json!("cust-2");
    let bad = post(bad_body).await;
    let dead_dir = project.path().join("lake/_dead_letters/shopify_customers");
    eventually(&project, "two dead letters and the good row", || {
        parquet_files(&dead_dir).len() == 2 && id_counts(&project.table_dir()).contains_key(&good)
    })
    .await;
    assert!(!id_counts(&project.table_dir()).contains_key(&bad));

    // The fix: the schema takes string ids; the receiver accepts everything.
    let schema =
        std::fs::read_to_string(project.path().join("schemas/shopify_customer.json")).unwrap();
    let mut schema: serde_json::Value = serde_json::from_str(&schema).unwrap();
    schema["properties"]["id"]["type"] = serde_json::json!("string");
    project.write("schemas/shopify_customer.json", &schema.to_string());
    receiver.control(serde_json::json!({}));
    assert!(server.terminate().success());
    let _server = project.start_with_env(&env).await;

    let missing = project.command(&["replay", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no pipeline is named nope"));
    let out = project.command(&["replay", "shopify_customers", "--dead-letters"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("replayed 2 dead letter(s)"), "{stdout}");
    assert!(
        parquet_files(&dead_dir).is_empty(),
        "replayed dead letters are removed"
    );

    eventually(&project, "the replayed events in both sinks", || {
        id_counts(&project.table_dir()).contains_key(&bad)
            && receiver.delivered_ids().contains(&good)
    })
    .await;
    // Each event once per sink: the table holds both once, the receiver got
    // each accepted once (the refused first try of `good` answered 400).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = id_counts(&project.table_dir());
    assert_eq!(counts.get(&good), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&bad), Some(&1), "{counts:?}");
    let accepted: Vec<String> = receiver
        .deliveries()
        .into_iter()
        .filter(|d| d.status == 200)
        .filter_map(|d| d.id)
        .collect();
    let unique: HashSet<&String> = accepted.iter().collect();
    assert_eq!(
        accepted.len(),
        unique.len(),
        "no delivery twice: {accepted:?}"
    );
    assert!(unique.contains(&good) && unique.contains(&bad));
    assert!(receiver.deliveries().iter().all(|d| d.verified));
    // Nothing left to replay.
    let again = project.command(&["replay", "shopify_customers", "--since", "1h"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("replayed 0 dead letter(s)"));
}
