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
