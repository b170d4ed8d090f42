//! Inbound signature verification end to end: signed posts are accepted,
//! unsigned, wrongly signed or stale ones get 401 with the reason, and the
//! table holds exactly the accepted events.

use std::collections::HashSet;

use crate::support::*;

const SECRET: &str = "It's a Secret to Everybody";

fn github_signature(body: &[u8], secret: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_posts_are_stored_and_the_rest_answered_401_with_the_reason() {
    let project = Project::new();
    project.shopify_pipeline(
        "max_age = \"200ms\"",
        "verify = { scheme = \"github\", secret_env = [\"GITHUB_SECRET\", \"OLD_SECRET\"] }",
    );
    let _server = project
        .start_with_env(&[
            ("GITHUB_SECRET", SECRET),
            ("OLD_SECRET", "rotated out soon"),
        ])
        .await;
    let client = reqwest::Client::new();
    let url = project.url("/hooks/shopify/customers");
    let mut accepted = HashSet::new();
    for id in 0..20u64 {
        let body = serde_json::to_vec(&shopify_customer(id)).unwrap();
        // Every third is signed with the old secret (rotation), every fifth tampered with.
        let secret = if id % 3 == 0 {
            "rotated out soon"
        } else {
            SECRET
        };
        let mut signature = github_signature(&body, secret);
        if id % 5 == 4 {
            signature = github_signature(b"something else", SECRET);
        }
        let response = client
            .post(&url)
            .header("X-Hub-Signature-256", signature)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        if id % 5 == 4 {
            assert_eq!(response.status(), 401);
            let answer: serde_json::Value = response.json().await.unwrap();
            assert!(
                answer["error"].as_str().unwrap().contains("does not match"),
                "{answer}"
            );
        } else {
            assert_eq!(response.status(), 202);
            accepted.extend(accepted_ids(&response.json().await.unwrap()));
        }
    }
    let unsigned = client
        .post(&url)
        .json(&shopify_customer(99))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let answer: serde_json::Value = unsigned.json().await.unwrap();
    assert_eq!(
        answer["error"],
        "signature verification failed: the x-hub-signature-256 header is missing"
    );
    eventually(&project, "the accepted events in the table", || {
        id_counts(&project.table_dir()).len() == accepted.len()
    })
    .await;
    let stored: HashSet<String> = id_counts(&project.table_dir()).into_keys().collect();
    assert_eq!(stored, accepted, "exactly the accepted events");
    assert!(
        !project.log().contains(SECRET),
        "the secret never reaches the log"
    );
}

#[test]
fn verify_config_errors_and_a_missing_secret() {
    let project = Project::new();
    project.shopify_pipeline("", "verify = { scheme = \"gitlab\", header = \"X\" }");
    let out = project.command(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "source.verify.scheme: unknown scheme \"gitlab\"",
        "source.verify.header: is used only by scheme = \"hmac\"",
        "source.verify.secret_env: missing",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    project.shopify_pipeline(
        "",
        "verify = { scheme = \"shopify\", secret_env = \"SHOPIFY_SECRET\" }",
    );
    let out = project.command(&["run"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("env var SHOPIFY_SECRET is not set"),
        "{stderr}"
    );
}

/// Posts one GitHub delivery; returns the answer's JSON.
async fn deliver(
    client: &reqwest::Client,
    url: &str,
    delivery: &str,
    id: u64,
) -> serde_json::Value {
    let body = serde_json::to_vec(&shopify_customer(id)).unwrap();
    let response = client
        .post(url)
        .header("X-Hub-Signature-256", github_signature(&body, SECRET))
        .header("X-GitHub-Delivery", delivery)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_delivery_is_stored_once_also_across_kill_9_and_restarts() {
    let project = Project::new();
    // GitHub deliveries carry X-GitHub-Delivery: dedupe is on by default.
    project.shopify_pipeline(
        "max_age = \"200ms\"",
        "verify = { scheme = \"github\", secret_env = \"GITHUB_SECRET\" }",
    );
    let env = [("GITHUB_SECRET", SECRET)];
    let client = reqwest::Client::new();
    let url = project.url("/hooks/shopify/customers");
    let mut stored = HashSet::new();
    let server = project.start_with_env(&env).await;
    for n in 0..10u64 {
        let delivery = format!("delivery-{n}");
        let first = deliver(&client, &url, &delivery, n).await;
        assert!(first.get("duplicate").is_none(), "{first}");
        stored.extend(accepted_ids(&first));
        let again = deliver(&client, &url, &delivery, n).await;
        assert_eq!(again["duplicate"], true, "{again}");
        assert_eq!(again["accepted"], 0, "{again}");
    }
    // Eight copies of one delivery at once: exactly one is stored.
    let copies: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { deliver(&client, &url, "delivery-burst", 100).await })
        })
        .collect();
    let mut firsts = 0;
    for copy in copies {
        let answer = copy.await.unwrap();
        if answer.get("duplicate").is_none() {
            firsts += 1;
            stored.extend(accepted_ids(&answer));
        }
    }
    assert_eq!(firsts, 1, "one of the concurrent copies is stored");
    // A new delivery, then kill -9 at once: its id is only in the log.
    stored.extend(accepted_ids(
        &deliver(&client, &url, "delivery-last", 200).await,
    ));
    server.kill9();

    let server = project.start_with_env(&env).await;
    for delivery in [
        "delivery-0",
        "delivery-9",
        "delivery-burst",
        "delivery-last",
    ] {
        let answer = deliver(&client, &url, delivery, 300).await;
        assert_eq!(
            answer["duplicate"], true,
            "{delivery} after kill -9: {answer}"
        );
    }
    assert!(server.terminate().success());

    // After a clean stop the ids come from the journal (the sink is done, so
    // the log may have let their records go).
    let server = project.start_with_env(&env).await;
    for n in 0..10u64 {
        let answer = deliver(&client, &url, &format!("delivery-{n}"), n).await;
        assert_eq!(
            answer["duplicate"], true,
            "delivery-{n} after restart: {answer}"
        );
    }
    stored.extend(accepted_ids(
        &deliver(&client, &url, "delivery-new", 400).await,
    ));
    eventually(&project, "every stored delivery in the table", || {
        id_counts(&project.table_dir()).len() == stored.len()
    })
    .await;
    let counts = id_counts(&project.table_dir());
    assert!(
        counts.values().all(|c| *c == 1),
        "each event once: {counts:?}"
    );
    assert_eq!(counts.into_keys().collect::<HashSet<_>>(), stored);
    assert_eq!(stored.len(), 13);
    drop(server);
    let journal =
        std::fs::read_to_string(project.path().join("data/shopify_customers/dedupe.journal"))
            .unwrap();
    assert!(journal.contains("\"delivery-burst\""), "{journal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_events_dedupe_by_a_pointer_and_dedupe_config_errors_name_the_fix() {
    let project = Project::new();
    project.shopify_pipeline(
        "max_age = \"200ms\"",
        "dedupe = { pointer = \"/customers/id\", window = \"1h\" }",
    );
    let server = project.start().await;
    let client = reqwest::Client::new();
    let url = project.url("/hooks/shopify/customers");
    let ndjson = |ids: &[u64]| -> String {
        ids.iter()
            .map(|id| shopify_customer(*id).to_string() + "\n")
            .collect()
    };
    let post = |body: String| {
        client
            .post(&url)
            .header("Content-Type", "application/x-ndjson")
            .body(body)
            .send()
    };
    // Three events, one a repeat inside the request.
    let answer: serde_json::Value = post(ndjson(&[1, 2, 1]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(answer["duplicates"], 1, "{answer}");
    let again: serde_json::Value = post(ndjson(&[2, 3])).await.unwrap().json().await.unwrap();
    assert_eq!(again["accepted"], 1, "{again}");
    assert_eq!(again["duplicates"], 1, "{again}");
    eventually(&project, "three events in the table", || {
        id_counts(&project.table_dir()).len() == 3
    })
    .await;
    drop(server);

    project.shopify_pipeline("", "dedupe = true");
    let out = project.command(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("source.dedupe: does not say where the delivery id is"),
        "{stderr}"
    );
    project.shopify_pipeline(
        "",
        "dedupe = { header = \"X-Id\", pointer = \"/id\", window = \"0s\" }",
    );
    let stderr = String::from_utf8_lossy(&project.command(&["check"]).stderr).into_owned();
    assert!(
        stderr.contains("source.dedupe: has both header and pointer"),
        "{stderr}"
    );
    assert!(
        stderr.contains("source.dedupe.window: must be above zero"),
        "{stderr}"
    );
}
