//! The shipped provider pipelines (`examples/providers/`: GitHub, Shopify,
//! Stripe, Slack) run as shipped: the corpus's published payloads of each
//! provider, signed as the provider signs, land in one Delta table per event
//! type; a redelivery is stored once; a forged signature gets 401. Every
//! table is read by delta-rs and DuckDB.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::Value;

use crate::support::*;
use tributary::config::route::table_name;

const SECRETS: [(&str, &str); 4] = [
    ("GITHUB_WEBHOOK_SECRET", "gh-secret"),
    ("SHOPIFY_WEBHOOK_SECRET", "shop-secret"),
    ("STRIPE_WEBHOOK_SECRET", "whsec_c3RyaXBlLXNlY3JldA"),
    ("SLACK_SIGNING_SECRET", "slack-secret"),
];

fn hmac(key: &str, message: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    ring::hmac::sign(&key, message).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The headers `provider` sends with `body` of type `event`, signed with
/// the test's secret, and a delivery id.
fn signed(provider: &str, event: &str, body: &[u8], delivery: &str) -> Vec<(String, String)> {
    let secret = |var: &str| SECRETS.iter().find(|(v, _)| *v == var).unwrap().1;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let h = |k: &str, v: String| (k.to_string(), v);
    match provider {
        "github" => vec![
            h("X-GitHub-Event", event.into()),
            h("X-GitHub-Delivery", delivery.into()),
            h(
                "X-Hub-Signature-256",
                format!(
                    "sha256={}",
                    hex(&hmac(secret("GITHUB_WEBHOOK_SECRET"), body))
                ),
            ),
        ],
        "shopify" => vec![
            h("X-Shopify-Topic", event.into()),
            h("X-Shopify-Webhook-Id", delivery.into()),
            h(
                "X-Shopify-Hmac-Sha256",
                base64::engine::general_purpose::STANDARD
                    .encode(hmac(secret("SHOPIFY_WEBHOOK_SECRET"), body)),
            ),
        ],
        "stripe" => {
            let mut signed = format!("{now}.").into_bytes();
            signed.extend_from_slice(body);
            let v1 = hex(&hmac(secret("STRIPE_WEBHOOK_SECRET"), &signed));
            vec![h("Stripe-Signature", format!("t={now},v1={v1}"))]
        }
        _ => {
            let mut signed = format!("v0:{now}:").into_bytes();
            signed.extend_from_slice(body);
            vec![
                h("X-Slack-Request-Timestamp", now.to_string()),
                h(
                    "X-Slack-Signature",
                    format!("v0={}", hex(&hmac(secret("SLACK_SIGNING_SECRET"), &signed))),
                ),
            ]
        }
    }
}

/// The table the shipped pipeline routes a payload to.
fn table_of(provider: &str, event: &str, body: &Value) -> String {
    let value = match provider {
        "github" | "shopify" => Some(event.to_string()),
        "stripe" => body
            .pointer("/type")
            .and_then(Value::as_str)
            .map(String::from),
        _ => body
            .pointer("/event/type")
            .and_then(Value::as_str)
            .map(String::from),
    };
    value
        .as_deref()
        .and_then(table_name)
        .unwrap_or_else(|| "other".into())
}

#[tokio::test]
async fn the_shipped_provider_pipelines_route_verify_and_dedupe_real_payloads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let project = Project::new();
    for provider in ["github", "shopify", "stripe", "slack"] {
        let text =
            std::fs::read_to_string(root.join(format!("examples/providers/{provider}.toml")))
                .unwrap();
        project.write(&format!("pipelines/{provider}.toml"), &text);
    }
    let server = project.start_with_env(&SECRETS).await;
    let client = reqwest::Client::new();
    let sources = std::fs::read_to_string(root.join("tests/fixtures/corpus/SOURCES.tsv")).unwrap();
    // (provider, table) → the ids the table must hold.
    let mut expected: BTreeMap<(String, String), HashSet<String>> = BTreeMap::new();
    let mut duplicates = 0;
    for (n, line) in sources.lines().skip(1).enumerate() {
        let columns: Vec<&str> = line.split('\t').collect();
        let (file, provider, event) = (columns[0], columns[1], columns[2]);
        if provider == "gitlab" {
            continue;
        }
        let body = std::fs::read(root.join("tests/fixtures/corpus").join(file)).unwrap();
        let json: Value = serde_json::from_slice(&body).unwrap();
        let delivery = format!("delivery-{n}");
        // Every third payload is delivered twice, as a provider retries.
        for attempt in 0..1 + usize::from(n % 3 == 0) {
            let mut request = client
                .post(project.url(&format!("/hooks/{provider}")))
                .header("content-type", "application/json")
                .body(body.clone());
            for (k, v) in signed(provider, event, &body, &delivery) {
                request = request.header(k, v);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                202,
                "{file}: {}",
                response.text().await.unwrap()
            );
            let answer: Value = response.json().await.unwrap();
            let ids = accepted_ids(&answer);
            if attempt == 1 && matches!(provider, "github" | "shopify") {
                assert_eq!(
                    answer["duplicate"], true,
                    "{file}: a redelivery is recognised: {answer}"
                );
            }
            if ids.is_empty() {
                duplicates += 1;
            }
            expected
                .entry((provider.to_string(), table_of(provider, event, &json)))
                .or_default()
                .extend(ids);
        }
    }
    assert!(duplicates > 0);
    // A forged signature is refused and stores nothing.
    let forged = client
        .post(project.url("/hooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", format!("sha256={}", "0".repeat(64)))
        .body("{\"forged\": true}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    assert!(server.terminate().success(), "{}", project.log());

    let mut tables_per_provider: BTreeMap<String, usize> = BTreeMap::new();
    for ((provider, table), ids) in &expected {
        if ids.is_empty() {
            continue;
        }
        *tables_per_provider.entry(provider.clone()).or_default() += 1;
        let dir = project.table_dir_of(provider).join(table);
        let app_id = format!("tributary/{provider}/delta/{table}");
        let view = read_delta(dir.to_str().unwrap(), &[&app_id], &[], &[]);
        view.assert_exactly(ids);
        assert!(
            view.txn[&app_id].is_some(),
            "{provider}/{table} has its own txn"
        );
    }
    for (provider, count) in &tables_per_provider {
        let found = std::fs::read_dir(project.table_dir_of(provider))
            .unwrap()
            .count();
        assert_eq!(
            found, *count,
            "{provider}: one table per event type, no other"
        );
    }
    assert!(
        tables_per_provider["github"] >= 30,
        "{tables_per_provider:?}"
    );
}
