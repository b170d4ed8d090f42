//! The HTTPS sink against a receiver that verifies every signature with
//! libraries we did not write (receiver.py: standardwebhooks, cryptography,
//! hmac): every event arrives signed, faults are retried or dead-lettered, a
//! 410 stops the sink, kill -9 redelivers with the same id.

use std::collections::HashSet;
use std::time::Duration;

use arrow_array::cast::AsArray;
use rand::Rng;

use crate::support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The Shopify webhook pipeline with a Parquet sink and an HTTPS sink to `url`.
fn pipeline(project: &Project, url: &str, signing: &str, extra: &str) {
    project.shopify_pipeline_with(
        "max_age = \"200ms\"",
        "",
        &format!(
            "type = \"parquet\"\n\n[[sink]]\ntype = \"https\"\nurl = \"{url}\"\nallow_http = true\nsigning = {signing}\n{extra}"
        ),
    );
}

/// Waits until the receiver answered 200 to every id in `ids`.
async fn all_delivered(project: &Project, receiver: &Receiver, ids: &HashSet<String>) {
    eventually(project, "every event delivered", || {
        ids.is_subset(&receiver.delivered_ids())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_as_the_standard_webhooks_library_verifies() {
    let project = Project::new();
    let receiver = Receiver::start(project.path(), "standard-webhooks", SECRET).await;
    // Two secrets (a rotation): a signature each; the receiver knows the first.
    pipeline(
        &project,
        &receiver.url,
        "{ secret_env = [\"SIGNING_SECRET\", \"NEXT_SECRET\"] }",
        "",
    );
    let next = "whsec_dGhlIG5leHQgc2VjcmV0IGZvciByb3RhdGlvbg==";
    let _server = project
        .start_with_env(&[("SIGNING_SECRET", SECRET), ("NEXT_SECRET", next)])
        .await;
    let acked = post_customers(&project, 1, 20, 10).await;
    all_delivered(&project, &receiver, &acked).await;
    let deliveries = receiver.deliveries();
    assert!(
        deliveries.iter().all(|d| d.verified),
        "every signature verifies"
    );
    assert_eq!(
        deliveries.len(),
        200,
        "one POST per event, none repeated without cause"
    );
    // The body is the event's original bytes.
    let body: serde_json::Value = serde_json::from_str(&deliveries[0].body).unwrap();
    assert!(body["customers"]["email"]
        .as_str()
        .unwrap()
        .ends_with("@example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_hmac_signatures_verify() {
    let project = Project::new();
    let python = crate::support::python();
    let (private, public) = (
        project.path().join("private.pem"),
        project.path().join("public.pem"),
    );
    let status = std::process::Command::new(&python)
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support/receiver.py"),
            "--gen-rsa",
            private.to_str().unwrap(),
            public.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let receiver = Receiver::start(project.path(), "rsa-sha256", public.to_str().unwrap()).await;
    pipeline(
        &project,
        &receiver.url,
        "{ scheme = \"rsa-sha256\", key_file = \"private.pem\" }",
        "",
    );
    let server = project.start().await;
    let acked = post_customers(&project, 1, 5, 4).await;
    all_delivered(&project, &receiver, &acked).await;
    assert!(
        receiver.deliveries().iter().all(|d| d.verified),
        "cryptography verifies every RSA signature"
    );
    assert!(server.terminate().success());

    let project = Project::new();
    let receiver =
        Receiver::start(project.path(), "hmac-sha256", "It's a Secret to Everybody").await;
    pipeline(&project, &receiver.url, "{ scheme = \"hmac-sha256\", secret_env = \"HMAC_SECRET\", header = \"X-Signature\", prefix = \"sha256=\" }", "");
    let _server = project
        .start_with_env(&[("HMAC_SECRET", "It's a Secret to Everybody")])
        .await;
    let acked = post_customers(&project, 1, 5, 4).await;
    all_delivered(&project, &receiver, &acked).await;
    assert!(receiver.deliveries().iter().all(|d| d.verified));
}

/// Standard Webhooks' asymmetric signatures: a `whsk_` key (an Ed25519 seed
/// `cryptography` made) signs `v1a` next to a `whsec_` secret's `v1`; the
/// receiver checks the `v1a` one with `cryptography` and the `whpk_` public
/// key alone, the `v1` one with the reference library. A receiver holding
/// another public key verifies none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_signatures_verify_with_the_public_key_alone() {
    let (private, public) = ed25519_pair();
    let project = Project::new();
    let receiver = Receiver::start(
        project.path(),
        "standard-webhooks",
        &format!("{public} {SECRET}"),
    )
    .await;
    pipeline(
        &project,
        &receiver.url,
        "{ secret_env = [\"SIGNING_KEY\", \"SIGNING_SECRET\"] }",
        "",
    );
    let server = project
        .start_with_env(&[
            ("SIGNING_KEY", private.as_str()),
            ("SIGNING_SECRET", SECRET),
        ])
        .await;
    let acked = post_customers(&project, 1, 5, 4).await;
    all_delivered(&project, &receiver, &acked).await;
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 20);
    assert!(
        deliveries.iter().all(|d| d.verified),
        "cryptography verifies every v1a signature with the public key, the reference library every v1"
    );
    assert!(server.terminate().success());
    assert!(
        !project.log().contains(&private["whsk_".len()..]),
        "the private key never reaches the log"
    );

    let (_, stranger) = ed25519_pair();
    let project = Project::new();
    let receiver = Receiver::start(project.path(), "standard-webhooks", &stranger).await;
    pipeline(
        &project,
        &receiver.url,
        "{ secret_env = \"SIGNING_KEY\" }",
        "",
    );
    let _server = project
        .start_with_env(&[("SIGNING_KEY", private.as_str())])
        .await;
    let acked = post_customers(&project, 1, 2, 1).await;
    all_delivered(&project, &receiver, &acked).await;
    assert!(
        receiver.deliveries().iter().all(|d| !d.verified),
        "another public key verifies nothing"
    );
}

/// A new Ed25519 key pair made by `cryptography` (receiver.py
/// --gen-ed25519), as Standard Webhooks writes it: `whsk_` + the base64
/// seed, `whpk_` + the base64 public key.
fn ed25519_pair() -> (String, String) {
    let python = crate::support::python();
    let out = std::process::Command::new(&python)
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support/receiver.py"),
            "--gen-ed25519",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "receiver.py --gen-ed25519 (scripts/test installs cryptography): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines().map(str::to_string);
    let (private, public) = (lines.next().unwrap(), lines.next().unwrap());
    assert!(
        private.starts_with("whsk_") && public.starts_with("whpk_"),
        "{text}"
    );
    (private, public)
}

/// Over TLS: a receiver whose certificate a private CA signed is trusted
/// through `ca_file` and gets every event signed; a sink without that CA
/// refuses the receiver's certificate, delivers nothing and logs why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_trusts_ca_file_and_an_unknown_issuer_is_refused_with_the_reason() {
    let project = Project::new();
    let certs = project.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certificates(&certs);
    let receiver = Receiver::start_tls(project.path(), "standard-webhooks", SECRET, &certs).await;
    assert!(receiver.url.starts_with("https://"));
    pipeline(
        &project,
        &receiver.url,
        "{ secret_env = \"SIGNING_SECRET\" }",
        "ca_file = \"certs/ca.pem\"",
    );
    let server = project.start_with_env(&[("SIGNING_SECRET", SECRET)]).await;
    let acked = post_customers(&project, 1, 10, 2).await;
    all_delivered(&project, &receiver, &acked).await;
    assert!(receiver.deliveries().iter().all(|d| d.verified));
    drop(server);

    // The same receiver without ca_file: its CA is not among the system's.
    let stranger = Project::new();
    pipeline(
        &stranger,
        &receiver.url,
        "{ secret_env = \"SIGNING_SECRET\" }",
        "",
    );
    let _server = stranger.start_with_env(&[("SIGNING_SECRET", SECRET)]).await;
    let before = receiver.deliveries().len();
    post_customers(&stranger, 1, 2, 1).await;
    eventually(&stranger, "a delivery failing on the certificate", || {
        let log = stranger.log();
        log.contains("Delivery failed; retrying.") && log.contains("UnknownIssuer")
    })
    .await;
    assert_eq!(
        receiver.deliveries().len(),
        before,
        "nothing reached the receiver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_retried_a_400_is_a_dead_letter_and_a_410_stops_the_sink() {
    let project = Project::new();
    let receiver = Receiver::start(project.path(), "standard-webhooks", SECRET).await;
    receiver.control(
        serde_json::json!({"answers": [500, 429, 400, 503, 500], "retry_after": 1, "reset": 2}),
    );
    pipeline(
        &project,
        &receiver.url,
        "{ secret_env = \"SIGNING_SECRET\" }",
        "concurrency = 4\ntimeout = \"2s\"",
    );
    let _server = project.start_with_env(&[("SIGNING_SECRET", SECRET)]).await;
    let acked = post_customers(&project, 1, 12, 1).await;

    // Exactly one event got the 400: it is a dead letter, every other one arrives.
    let rejected = || -> Option<String> {
        receiver
            .deliveries()
            .into_iter()
            .find(|d| d.status == 400)
            .and_then(|d| d.id)
    };
    eventually(&project, "the 400", || rejected().is_some()).await;
    let dead = rejected().unwrap();
    let expected: HashSet<String> = acked.iter().filter(|id| **id != dead).cloned().collect();
    all_delivered(&project, &receiver, &expected).await;
    assert!(!receiver.delivered_ids().contains(&dead));
    let dead_dir = project.path().join("lake/_dead_letters/shopify_customers");
    eventually(&project, "the dead letter file", || {
        !parquet_files(&dead_dir).is_empty()
    })
    .await;
    let batches = read_parquet(&dead_dir);
    let ids = batches[0]
        .column_by_name("_event_id")
        .unwrap()
        .as_string::<i32>();
    let reasons = batches[0]
        .column_by_name("reason")
        .unwrap()
        .as_string::<i32>();
    assert_eq!(ids.value(0), dead);
    assert!(
        reasons.value(0).starts_with("400 Bad Request"),
        "{}",
        reasons.value(0)
    );
    assert!(receiver.deliveries().iter().all(|d| d.verified));

    // 410 Gone: the sink stops loudly; the table sink carries on.
    receiver.control(serde_json::json!({"answers": [410]}));
    post_customers(&project, 100, 1, 1).await;
    eventually(&project, "the sink stopping on the 410", || {
        project.log().contains("410 Gone; this sink stops")
    })
    .await;
    let more = post_customers(&project, 200, 3, 1).await;
    eventually(&project, "the Parquet sink going on", || {
        let rows: HashSet<String> = event_ids(&project.table_dir()).into_iter().collect();
        more.is_subset(&rows)
    })
    .await;
    let after: HashSet<String> = receiver
        .deliveries()
        .into_iter()
        .filter_map(|d| d.id)
        .collect();
    assert!(more.is_disjoint(&after), "nothing is sent after the 410");
    assert_eq!(
        parquet_files(&dead_dir).len(),
        1,
        "the 410 is not a dead letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_delivery_redelivers_every_event_with_its_id() {
    let project = Project::new();
    let receiver = Receiver::start(project.path(), "standard-webhooks", SECRET).await;
    receiver.control(serde_json::json!({"slow_ms": 20}));
    pipeline(
        &project,
        &receiver.url,
        "{ secret_env = \"SIGNING_SECRET\" }",
        "concurrency = 8",
    );
    let env = [("SIGNING_SECRET", SECRET)];
    let mut acked = HashSet::new();
    let mut rng = rand::rng();
    for cycle in 0..10u64 {
        let server = project.start_with_env(&env).await;
        acked.extend(post_customers(&project, cycle * 1000, 10, 5).await);
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        server.kill9();
    }

    // Then a kill that surely lands mid-delivery: the receiver holds each
    // request 5 s before it answers, and the node is killed as soon as one
    // has arrived, so no delivery in flight can have been answered.
    receiver.control(serde_json::json!({"slow_ms": 5000}));
    let server = project.start_with_env(&env).await;
    let before = arrived(project.path());
    acked.extend(post_customers(&project, 20_000, 4, 2).await);
    eventually(&project, "a delivery held by the receiver", || {
        arrived(project.path()).len() > before.len()
    })
    .await;
    server.kill9();
    let in_flight: HashSet<String> = arrived(project.path())[before.len()..]
        .iter()
        .cloned()
        .collect();
    receiver.control(serde_json::json!({}));
    let server = project.start_with_env(&env).await;
    all_delivered(&project, &receiver, &acked).await;
    // The held requests are answered (to a node that is gone) and logged too.
    eventually(&project, "every held delivery and its redelivery", || {
        let ids: Vec<String> = receiver
            .deliveries()
            .into_iter()
            .filter_map(|d| d.id)
            .collect();
        in_flight
            .iter()
            .all(|held| ids.iter().filter(|id| *id == held).count() >= 2)
    })
    .await;
    assert!(server.terminate().success());

    let deliveries = receiver.deliveries();
    assert!(deliveries.iter().all(|d| d.verified));
    // Every delivery carries the id of an event the log made durable (the
    // table holds them all), so a redelivery repeats its event's id.
    let durable: HashSet<String> = event_ids(&project.table_dir()).into_iter().collect();
    assert!(deliveries
        .iter()
        .all(|d| d.id.as_ref().is_some_and(|id| durable.contains(id))));
    // A delivery the kill cut is sent again with the same id and the same body.
    for held in &in_flight {
        let bodies: Vec<&str> = deliveries
            .iter()
            .filter(|d| d.id.as_ref() == Some(held))
            .map(|d| d.body.as_str())
            .collect();
        assert!(bodies.len() >= 2, "{held} was delivered again: {bodies:?}");
        assert!(
            bodies.iter().all(|b| *b == bodies[0]),
            "{held}: the same body each time: {bodies:?}"
        );
    }
}

/// The webhook-ids of the requests that reached the receiver in `dir`, in
/// arrival order, answered or not (receiver.py's OUT + ".arrived").
fn arrived(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("deliveries.jsonl.arrived"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_delivers_one_at_a_time_in_log_order() {
    let project = Project::new();
    let receiver = Receiver::start(project.path(), "standard-webhooks", SECRET).await;
    receiver.control(serde_json::json!({"answers": [200, 200, 500, 503], "retry_after": 0}));
    pipeline(
        &project,
        &receiver.url,
        "{ secret_env = \"SIGNING_SECRET\" }",
        "ordered = true",
    );
    let _server = project.start_with_env(&[("SIGNING_SECRET", SECRET)]).await;
    let client = reqwest::Client::new();
    let mut order = Vec::new();
    for i in 0..30 {
        let response = client
            .post(project.url("/hooks/shopify/customers"))
            .json(&shopify_customer(i))
            .send()
            .await
            .unwrap();
        order.extend(accepted_ids(&response.json().await.unwrap()));
    }
    let acked: HashSet<String> = order.iter().cloned().collect();
    all_delivered(&project, &receiver, &acked).await;
    let delivered: Vec<String> = receiver
        .deliveries()
        .into_iter()
        .filter(|d| d.status == 200)
        .filter_map(|d| d.id)
        .collect();
    assert_eq!(
        delivered, order,
        "each event once, in the order the log holds them"
    );
    let third: Vec<u16> = receiver
        .deliveries()
        .iter()
        .filter(|d| d.id.as_deref() == Some(order[2].as_str()))
        .map(|d| d.status)
        .collect();
    assert_eq!(
        third,
        vec![500, 503, 200],
        "the failing event held back the ones after it"
    );
}

#[test]
fn a_missing_signing_secret_stops_start_up_with_its_name() {
    let project = Project::new();
    pipeline(
        &project,
        "http://127.0.0.1:9/hook",
        "{ secret_env = \"SIGNING_SECRET\" }",
        "",
    );
    let out = project.command(&["run"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "sink https of pipeline shopify_customers: env var SIGNING_SECRET is not set"
        ),
        "{stderr}"
    );
}

#[test]
fn https_config_errors_name_key_and_fix() {
    let project = Project::new();
    project.shopify_pipeline_with(
        "",
        "",
        "type = \"https\"\nurl = \"http://example.com/hook\"\n\n[[sink]]\ntype = \"https\"\nname = \"second\"\nurl = \"https://example.com/hook\"\nsigning = { scheme = \"hmac-sha256\", secret_env = [\"A\", \"B\"], header = \"webhook-id\" }\n\n[[sink]]\ntype = \"https\"\nname = \"third\"\nurl = \"https://example.com/hook\"\nsigning = { scheme = \"rsa-sha256\" }",
    );
    let out = project.command(&["check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "sink[0].url: \"http://example.com/hook\" is not https; use https://, or set allow_http = true",
        "sink[0].signing: missing",
        "sink[1].signing.header: \"webhook-id\" is a header tributary sets itself",
        "sink[1].signing.secret_env: hmac-sha256 signs with one secret",
        "sink[2].signing.key_env: set exactly one of key_env and key_file",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}
