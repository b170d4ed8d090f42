//! Inbound signature verification end to end: signed posts are accepted,
//! unsigned, wrongly signed or stale ones get 401 with the reason, and the
//! table holds exactly the accepted events. Stripe, HubSpot v3, Shopify and
//! generic HMAC requests are signed by `provider_sign.py`: Stripe's and
//! HubSpot's own SDKs, and Python's hmac as Shopify documents it, so the
//! verifier is checked against the providers' layout rather than its own.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

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

/// Runs `provider_sign.py` (with `python_args` before the script) on
/// `requests`; its output as it is.
fn run_provider_sign(python_args: &[&str], requests: &[Value]) -> std::process::Output {
    let python = crate::support::python();
    let mut child = Command::new(&python)
        .args(python_args)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/support/provider_sign.py"
        ))
        .env_remove("PYTHONPATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    // The script reads all of its input before it writes: no deadlock.
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(serde_json::to_string(requests).unwrap().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The headers `provider_sign.py` signs each of `requests` with (see its
/// docstring), in order.
pub(crate) fn sign_as_providers(requests: &[Value]) -> Vec<Vec<(String, String)>> {
    let out = run_provider_sign(&[], requests);
    assert!(
        out.status.success(),
        "provider_sign.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signed: Vec<serde_json::Map<String, Value>> =
        serde_json::from_slice(&out.stdout).expect("provider_sign.py prints a JSON array");
    assert_eq!(signed.len(), requests.len());
    signed
        .into_iter()
        .map(|headers| {
            headers
                .into_iter()
                .map(|(name, value)| (name, value.as_str().expect("a header value").to_string()))
                .collect()
        })
        .collect()
}

/// Posts `body` with `headers`; the status and the answer's JSON.
async fn post_signed(
    client: &reqwest::Client,
    url: &str,
    body: String,
    headers: &[(String, String)],
) -> (u16, Value) {
    let mut request = client
        .post(url)
        .header("Content-Type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The Shopify pipeline of `project`, verifying with `verify` (the keys of
/// `source.verify` but `secret_env`, which is PROVIDER_SECRET = `secret`),
/// gets requests that `provider_sign.py` signed as `sign` says (its `body`
/// and `timestamp` added here). Four signed as they are sent are stored; one
/// whose body changed after signing is refused as not matching; one sent
/// without the signature headers is refused as missing them. With `dated`,
/// one correctly signed an hour ago is refused as stale; without, it is
/// stored too. The table holds exactly the stored ones.
async fn provider_signed_posts(
    project: &Project,
    verify: &str,
    secret: &str,
    sign: Value,
    dated: bool,
) {
    project.shopify_pipeline(
        "max_age = \"200ms\"",
        &format!("verify = {{ {verify}, secret_env = \"PROVIDER_SECRET\" }}"),
    );
    let server = project.start_with_env(&[("PROVIDER_SECRET", secret)]).await;
    let client = reqwest::Client::new();
    let url = project.url("/hooks/shopify/customers");
    let hour_ago = chrono::Utc::now().timestamp() - 3600;
    let bodies: Vec<String> = (0..6u64)
        .map(|id| shopify_customer(id).to_string())
        .collect();
    let requests: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(n, body)| {
            let mut request = sign.clone();
            request["body"] = body.as_str().into();
            if n == 5 && dated {
                request["timestamp"] = hour_ago.into();
            }
            request
        })
        .collect();
    let signed = sign_as_providers(&requests);
    let mut stored = HashSet::new();
    for n in [0usize, 1, 2, 3] {
        let (status, answer) = post_signed(&client, &url, bodies[n].clone(), &signed[n]).await;
        assert_eq!(status, 202, "{sign}: request {n}: {answer}");
        stored.extend(accepted_ids(&answer));
    }
    // The headers of request 4 with another customer's body.
    let (status, answer) =
        post_signed(&client, &url, shopify_customer(104).to_string(), &signed[4]).await;
    assert_eq!(
        status, 401,
        "{sign}: a body changed after signing: {answer}"
    );
    let why = answer["error"].as_str().unwrap();
    assert!(why.contains("does not match the body"), "{sign}: {why}");
    let (status, answer) = post_signed(&client, &url, bodies[4].clone(), &[]).await;
    assert_eq!(status, 401, "{sign}: unsigned: {answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("header is missing"),
        "{sign}: {answer}"
    );
    let (status, answer) = post_signed(&client, &url, bodies[5].clone(), &signed[5]).await;
    if dated {
        assert_eq!(status, 401, "{sign}: signed an hour ago: {answer}");
        let why = answer["error"].as_str().unwrap();
        assert!(why.contains("beyond the 300 s tolerance"), "{sign}: {why}");
    } else {
        assert_eq!(status, 202, "{sign}: request 5: {answer}");
        stored.extend(accepted_ids(&answer));
    }
    eventually(project, "the stored events in the table", || {
        id_counts(&project.table_dir()).len() >= stored.len()
    })
    .await;
    let counts = id_counts(&project.table_dir());
    assert!(
        counts.values().all(|n| *n == 1),
        "{sign}: each once: {counts:?}"
    );
    assert_eq!(
        counts.into_keys().collect::<HashSet<_>>(),
        stored,
        "{sign}: exactly the accepted events"
    );
    assert!(
        !project.log().contains(secret),
        "{sign}: the secret never reaches the log"
    );
    assert!(server.terminate().success(), "{}", project.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_signatures_made_by_stripes_own_sdk_are_verified() {
    let project = Project::new();
    // Stripe's key is the whole whsec_ text, not its base64 decoding.
    let secret = "whsec_5f8a0c2e9d41b7a3c6e2f0d18b9a4c7e";
    provider_signed_posts(
        &project,
        "scheme = \"stripe\"",
        secret,
        json!({"scheme": "stripe", "secret": secret}),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_v3_signatures_made_by_hubspots_own_sdk_are_verified() {
    let project = Project::new();
    let secret = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    // HubSpot signs the URL it called: behind a TLS-terminating proxy,
    // https and the Host header (tributary takes https when no
    // X-Forwarded-Proto says otherwise).
    let uri = format!("https://127.0.0.1:{}/hooks/shopify/customers", project.port);
    provider_signed_posts(
        &project,
        "scheme = \"hubspot-v3\"",
        secret,
        json!({"scheme": "hubspot-v3", "secret": secret, "method": "POST", "uri": uri}),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shopify_signatures_made_as_shopify_documents_them_are_verified() {
    let project = Project::new();
    let secret = "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";
    provider_signed_posts(
        &project,
        "scheme = \"shopify\"",
        secret,
        json!({"scheme": "shopify", "secret": secret}),
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_hmac_signatures_in_hex_and_base64_are_verified() {
    let secret = "a generic sender's secret";
    let project = Project::new();
    provider_signed_posts(
        &project,
        "scheme = \"hmac\", header = \"X-Signature\", prefix = \"sha256=\"",
        secret,
        json!({"scheme": "hmac", "secret": secret, "header": "X-Signature", "prefix": "sha256=", "encoding": "hex"}),
        false,
    )
    .await;
    let project = Project::new();
    provider_signed_posts(
        &project,
        "scheme = \"hmac\", header = \"X-Webhook-Signature\", encoding = \"base64\"",
        secret,
        json!({"scheme": "hmac", "secret": secret, "header": "X-Webhook-Signature", "encoding": "base64"}),
        false,
    )
    .await;
}

#[test]
fn the_signing_helper_names_scripts_test_when_an_sdk_is_missing() {
    // `-S`: no site-packages, so neither SDK can be imported.
    let out = run_provider_sign(
        &["-S"],
        &[json!({"scheme": "shopify", "secret": "s", "body": "{}"})],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(out.stdout.is_empty(), "nothing signed: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("scripts/test") && stderr.contains("stripe"),
        "{stderr}"
    );
}
