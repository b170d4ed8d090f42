//! Hardening: a configuration change never cuts acknowledged events, a flood
//! of signature candidates costs nothing, one unwritable value never stalls
//! a sink, poll credentials never follow a redirect nor reach a log line, and
//! the admin API keeps its state to itself.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;

use crate::support::*;

const SECRET: &str = "It's a Secret to Everybody";

fn github_signature(body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Posts 8 requests of 3 customers (ids from `first`), signed and with a
/// delivery id when `signed`; returns the acknowledged event ids.
async fn post_batch(project: &Project, first: u64, signed: bool) -> HashSet<String> {
    let client = reqwest::Client::new();
    let mut acked = HashSet::new();
    for r in 0..8u64 {
        let events: Vec<_> = (0..3)
            .map(|i| shopify_customer(first + r * 3 + i))
            .collect();
        let body = serde_json::to_vec(&events).unwrap();
        let mut request = client
            .post(project.url("/hooks/shopify/customers"))
            .header("Content-Type", "application/json");
        if signed {
            request = request
                .header("X-Hub-Signature-256", github_signature(&body))
                .header("X-GitHub-Delivery", format!("delivery-{first}-{r}"));
        }
        let response = request.body(body).send().await.unwrap();
        assert_eq!(response.status(), 202, "{}", project.log());
        acked.extend(accepted_ids(&response.json().await.unwrap()));
    }
    acked
}

/// The Shopify pipeline with a poll source instead (it fails its runs: no
/// API listens); its sink still works off the webhook events in the log.
fn poll_pipeline(project: &Project) {
    project.write(
        "pipelines/shopify_customers.toml",
        &format!(
            r#"name = "shopify_customers"
schema = "schemas/shopify_customer.json"
record_path = "/customers"
primary_key = ["id"]

[source]
type = "poll"
every = "1h"
url = "http://127.0.0.1:{}/customers"
allow_http = true
max_retries = 0
records = "/customers"

[batch]
max_age = "1h"

[[sink]]
type = "parquet"
"#,
            free_port()
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_configuration_change_cuts_acknowledged_events_across_kill_9() {
    let project = Project::new();
    let verify = "verify = { scheme = \"github\", secret_env = \"GITHUB_SECRET\" }";
    let env = [("GITHUB_SECRET", SECRET)];
    // Each stage: the source's extra TOML (None: a poll source), and whether
    // posts are signed. Nothing flushes (max_age = 1h) until the end, so the
    // log holds everything when each new configuration opens it.
    let stages: [(Option<String>, bool); 7] = [
        (Some(String::new()), false),
        // verify turns dedupe on (GitHub delivery ids): the bug cut here.
        (Some(verify.to_string()), true),
        (Some(format!("{verify}\ndedupe = false")), true),
        (Some(String::new()), false),
        (None, false),
        (Some(verify.to_string()), true),
        (
            Some("dedupe = { header = \"X-GitHub-Delivery\" }".to_string()),
            true,
        ),
    ];
    let mut acked = HashSet::new();
    for (n, (extra, signed)) in stages.iter().enumerate() {
        match extra {
            Some(extra) => project.shopify_pipeline("max_age = \"1h\"", extra),
            None => poll_pipeline(&project),
        }
        let server = project.start_with_env(&env).await;
        if extra.is_some() {
            let got = post_batch(&project, n as u64 * 1000, *signed).await;
            assert_eq!(got.len(), 24);
            acked.extend(got);
        }
        server.kill9();
        // A restart with the same configuration cuts nothing either.
        let server = project.start_with_env(&env).await;
        server.kill9();
    }
    assert_eq!(acked.len(), 6 * 24);
    project.shopify_pipeline("max_age = \"200ms\"", "");
    let _server = project.start().await;
    eventually(&project, "every acknowledged event in the table", || {
        id_counts(&project.table_dir()).len() >= acked.len()
    })
    .await;
    let counts = id_counts(&project.table_dir());
    let stored: HashSet<String> = counts.keys().cloned().collect();
    assert_eq!(stored, acked, "exactly the acknowledged events");
    assert!(counts.values().all(|&n| n == 1), "each exactly once");
    assert!(
        !project.log().contains("Cutting the records"),
        "no acknowledged append was cut: {}",
        project.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_signature_candidates_is_refused_and_the_largest_body_is_stored_whole() {
    let project = Project::new();
    project.shopify_pipeline(
        "max_age = \"200ms\"",
        "verify = { scheme = \"stripe\", secret_env = \"STRIPE_SECRET\", tolerance = \"5m\" }",
    );
    let secret = "whsec_test_secret";
    let _server = project.start_with_env(&[("STRIPE_SECRET", secret)]).await;
    let client = reqwest::Client::new();
    let url = project.url("/hooks/shopify/customers");
    // The largest body max_body (10 MiB) allows: one customer with a long note.
    let note = "n".repeat((10 << 20) - 400);
    let mut customer = shopify_customer(1);
    customer["customers"]["note"] = serde_json::Value::String(note.clone());
    let body = serde_json::to_vec(&customer).unwrap();
    assert!(body.len() <= 10 << 20);
    // Signed by Stripe's own SDK: its header is `t=<timestamp>,v1=<hex>`.
    let signed = crate::verify::sign_as_providers(&[serde_json::json!({
        "scheme": "stripe",
        "secret": secret,
        "body": String::from_utf8(body.clone()).unwrap(),
    })]);
    let stripe_header = &signed[0][0].1;
    let (t, good) = stripe_header
        .split_once(',')
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("Stripe's SDK wrote {stripe_header:?}"));
    let wrong = "ab".repeat(32);
    // 3,000 candidates (a 200 KB header), the right one among them: refused
    // for their number, whatever they hold.
    let mut flood = vec![format!("v1={wrong}"); 2999];
    flood.push(format!("v1={good}"));
    let response = client
        .post(&url)
        .header("Stripe-Signature", format!("t={t},{}", flood.join(",")))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("more than 8 signatures"),
        "{answer}"
    );
    // Eight wrong candidates: the body is checked against each, and refused.
    let header = format!("t={t},{}", vec![format!("v1={wrong}"); 8].join(","));
    let response = client
        .post(&url)
        .header("Stripe-Signature", header)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("does not match the body"),
        "{answer}"
    );
    // Eight candidates, the right one last: accepted.
    let mut candidates = vec![format!("v1={wrong}"); 7];
    candidates.push(format!("v1={good}"));
    let header = format!("t={t},{}", candidates.join(","));
    let response = client
        .post(&url)
        .header("Stripe-Signature", header)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", project.log());
    let id = accepted_ids(&response.json().await.unwrap());
    assert_eq!(id.len(), 1);
    eventually(&project, "the 10 MiB event in the table", || {
        id_counts(&project.table_dir()).contains_key(&id[0])
    })
    .await;
    // The one row, its 10 MiB note byte for byte.
    let mut notes = Vec::new();
    for batch in read_parquet(&project.table_dir()) {
        let ids = batch
            .column_by_name("_event_id")
            .expect("_event_id column")
            .as_string::<i32>();
        let column = batch.column_by_name("note").expect("note column");
        let column = column.as_string::<i32>();
        for row in 0..batch.num_rows() {
            notes.push((ids.value(row).to_string(), column.value(row).to_string()));
        }
    }
    assert_eq!(notes.len(), 1, "one row");
    assert_eq!(notes[0].0, id[0]);
    assert!(notes[0].1 == note, "the note is stored whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unwritable_value_is_a_dead_letter_and_the_sinks_go_on() {
    let project = Project::new();
    // Merged on email, which the schema does not require (id it does).
    project.write(
        "pipelines/shopify_customers.toml",
        r#"name = "shopify_customers"
schema = "schemas/shopify_customer.json"
record_path = "/customers"
primary_key = ["email"]

[source]
type = "webhook"
path = "/hooks/shopify/customers"

[batch]
max_age = "200ms"

[[sink]]
type = "parquet"
partition_by = ["state"]

[[sink]]
type = "delta"
partition_by = ["state"]
uri = "lake/shopify_customers_delta"

[[sink]]
type = "delta"
name = "latest"
mode = "merge"
uri = "lake/shopify_customers_latest"
"#,
    );
    let _server = project.start().await;
    let client = reqwest::Client::new();
    let post = |events: Vec<serde_json::Value>| {
        let (client, url) = (client.clone(), project.url("/hooks/shopify/customers"));
        async move {
            let response = client.post(url).json(&events).send().await.unwrap();
            assert_eq!(response.status(), 202);
            accepted_ids(&response.json().await.unwrap())
        }
    };
    let with = |id: u64, state: Option<&str>| {
        let mut c = shopify_customer(id);
        c["customers"]["state"] = state.map_or(serde_json::Value::Null, |s| s.into());
        c
    };
    let long = "x".repeat(300);
    let slashes = "/".repeat(120);
    let ids = post(vec![
        with(1, Some("enabled")),
        with(2, Some(&long)),
        with(3, Some(&slashes)),
        with(4, Some("disabled")),
    ])
    .await;
    // A null merge key: a dead letter of the merge sink only.
    let mut keyless = with(5, Some("enabled"));
    keyless["customers"]["email"] = serde_json::Value::Null;
    let later = post(vec![keyless, with(6, Some("enabled"))]).await;
    let good: HashSet<String> = [&ids[0], &ids[3], &later[1]].into_iter().cloned().collect();
    let unfit: HashSet<String> = [&ids[1], &ids[2]].into_iter().cloned().collect();
    let parquet_expected: HashSet<String> = good.iter().chain([&later[0]]).cloned().collect();
    eventually(
        &project,
        "the good events in the partitioned Parquet table",
        || id_counts(&project.table_dir()).len() == parquet_expected.len(),
    )
    .await;
    let stored: HashSet<String> = id_counts(&project.table_dir()).into_keys().collect();
    assert_eq!(stored, parquet_expected);
    let delta_dir = project.path().join("lake/shopify_customers_delta");
    let latest_dir = project.path().join("lake/shopify_customers_latest");
    let dead_dir = project.path().join("lake/_dead_letters/shopify_customers");
    eventually(&project, "every dead letter written", || {
        read_parquet(&dead_dir)
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>()
            == 5
    })
    .await;
    // The Delta sinks commit on their own (their dead letters are written
    // before their commits): wait until no sink lags.
    let started = Instant::now();
    loop {
        let pipelines: serde_json::Value = reqwest::get(project.url("/api/pipelines"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sinks = pipelines["pipelines"][0]["sinks"]
            .as_array()
            .unwrap()
            .clone();
        if sinks.iter().all(|s| s["lag_events"] == 0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "sinks lag: {sinks:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delta = read_delta(delta_dir.to_str().unwrap(), &[], &[], &[]);
    delta.assert_exactly(&parquet_expected);
    let latest = read_delta(latest_dir.to_str().unwrap(), &[], &[], &[]);
    let merge_expected: HashSet<String> = good.iter().chain(&unfit).cloned().collect();
    latest.assert_exactly(&merge_expected);
    // Each dead letter names its sink and its reason.
    let mut dead: HashMap<(String, String), String> = HashMap::new();
    for batch in read_parquet(&dead_dir) {
        let column = |name| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        let (id, sink, reason) = (column("_event_id"), column("sink"), column("reason"));
        for row in 0..batch.num_rows() {
            dead.insert(
                (id.value(row).to_string(), sink.value(row).to_string()),
                reason.value(row).to_string(),
            );
        }
    }
    for id in &unfit {
        for sink in ["parquet", "delta"] {
            let reason = &dead[&(id.clone(), sink.to_string())];
            assert!(reason.contains("does not fit a directory name"), "{reason}");
        }
    }
    let reason = &dead[&(later[0].clone(), "latest".to_string())];
    assert!(
        reason.contains("primary key email is missing or null"),
        "{reason}"
    );
    assert_eq!(dead.len(), 5, "{dead:?}");
    // And the sinks go on: a later event lands everywhere.
    let last = post(vec![with(7, Some("enabled"))]).await;
    eventually(&project, "a later event in the Parquet table", || {
        id_counts(&project.table_dir()).contains_key(&last[0])
    })
    .await;
    eventually(&project, "a later event in both Delta tables", || {
        let a = read_delta(delta_dir.to_str().unwrap(), &[], &[], &[]);
        let b = read_delta(latest_dir.to_str().unwrap(), &[], &[], &[]);
        a.deltalake.contains_key(&last[0]) && b.deltalake.contains_key(&last[0])
    })
    .await;
}

/// What the credential-catching server saw.
type Seen = Arc<Mutex<Vec<String>>>;

/// Starts a server on loopback answering every request with `answer`
/// (status and headers), recording each request line and its headers.
async fn server(answer: (u16, Vec<(String, String)>), hang: bool) -> (u16, Seen) {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (recorded, answer) = (recorded.clone(), answer.clone());
        async move {
            recorded.lock().unwrap().push(format!(
                "{} {} {:?}",
                request.method(),
                request.uri(),
                request.headers()
            ));
            if hang {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let mut response = axum::response::Response::builder().status(answer.0);
            for (name, value) in answer.1 {
                response = response.header(name, value);
            }
            response.body(axum::body::Body::from("{}")).unwrap()
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, seen)
}

fn items_pipeline(project: &Project, url: &str, auth: &str) {
    project.write(
        "pipelines/items.toml",
        &format!(
            r#"name = "items"
schema = "infer"

[source]
type = "poll"
every = "1h"
url = "{url}"
allow_http = true
timeout = "1s"
max_retries = 1
records = "/results"
auth = {auth}

[[sink]]
type = "parquet"
"#
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_credentials_never_follow_a_redirect_nor_reach_a_log_line() {
    let project = Project::new();
    let (elsewhere, stolen) = server((200, vec![]), false).await;
    let env = [
        ("API_KEY", "key-s3cr3t-1"),
        ("API_TOKEN", "token-s3cr3t-2"),
        ("API_PASSWORD", "password-s3cr3t-3"),
        ("CLIENT_ID", "client-id"),
        ("CLIENT_SECRET", "client-s3cr3t-4"),
    ];
    let (redirect, _) = server(
        (
            307,
            vec![(
                "Location".into(),
                format!("http://127.0.0.1:{elsewhere}/steal?where=elsewhere"),
            )],
        ),
        false,
    )
    .await;
    let (hanging, _) = server((200, vec![]), true).await;
    let (failing, _) = server((500, vec![]), false).await;
    let closed = free_port();
    let auths = |token_url: &str| {
        [
            r#"{ type = "api_key", header = "X-API-Key", key_env = "API_KEY" }"#.to_string(),
            r#"{ type = "api_key", query = "api_key", key_env = "API_KEY" }"#.to_string(),
            r#"{ type = "bearer", token_env = "API_TOKEN" }"#.to_string(),
            r#"{ type = "basic", username = "user", password_env = "API_PASSWORD" }"#.to_string(),
            format!(
                r#"{{ type = "oauth2", token_url = "{token_url}", client_id_env = "CLIENT_ID", client_secret_env = "CLIENT_SECRET" }}"#
            ),
        ]
    };
    let mut outputs = String::new();
    for target in [redirect, hanging, failing, closed] {
        let url = format!("http://127.0.0.1:{target}/items");
        // The token URL redirects, hangs, fails or refuses as the API does.
        for auth in auths(&format!("http://127.0.0.1:{target}/oauth/token")) {
            items_pipeline(&project, &url, &auth);
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
                .args(["poll", "items"])
                .current_dir(project.path())
                .env("RUST_LOG", "debug")
                .envs(env)
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "the run cannot succeed against port {target}"
            );
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if target == redirect {
                assert!(
                    text.contains("redirects are not followed"),
                    "{auth}: {text}"
                );
            }
            outputs.push_str(&text);
        }
    }
    assert!(
        stolen.lock().unwrap().is_empty(),
        "a redirect carried a request elsewhere: {:?}",
        stolen.lock().unwrap()
    );
    for (name, value) in env.iter().filter(|(n, _)| *n != "CLIENT_ID") {
        assert!(
            !outputs.contains(value),
            "the secret of {name} reached the output"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_keeps_its_reasons_to_the_token_and_replay_needs_json() {
    let project = Project::new();
    project.shopify_pipeline("max_age = \"200ms\"", "");
    project.write(
        "tributary.toml",
        &format!(
            "listen = \"127.0.0.1:{}\"\n[admin]\ntoken_env = \"ADMIN_TOKEN\"\n",
            project.port
        ),
    );
    // A sink that cannot write (its directory is a file) makes /readyz unready.
    project.write("lake/shopify_customers", "not a directory");
    let _server = project
        .start_with_env(&[("ADMIN_TOKEN", "admin-token")])
        .await;
    post_customers(&project, 1, 1, 1).await;
    let client = reqwest::Client::new();
    let readyz = |token: Option<&'static str>| {
        let mut request = client.get(project.url("/readyz"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let mut answer = readyz(Some("admin-token")).await;
    let started = Instant::now();
    while answer.0 == 200 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer = readyz(Some("admin-token")).await;
    }
    assert_eq!(answer.0, 503);
    assert!(answer.1["problems"][0].as_str().is_some(), "{}", answer.1);
    let (status, anonymous) = readyz(None).await;
    assert_eq!(status, 503);
    assert!(anonymous["problems"].as_u64().unwrap() >= 1, "{anonymous}");
    assert!(!anonymous.to_string().contains("lake"), "{anonymous}");
    // A replay as a cross-site form would send it.
    let form = client
        .post(project.url("/api/pipelines/shopify_customers/replay"))
        .bearer_auth("admin-token")
        .header("Content-Type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);
}
