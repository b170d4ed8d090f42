//! Connections (issue 31, first part): a pipeline with `[connections]`
//! takes connections through the admin API and `tributary connections`
//! while running; they survive `kill -9` with their credentials sealed (no
//! token in plaintext under the project, in any answer or in the log); bad
//! requests get 4xx answers naming the field; `check` names each mistake.

use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};

use crate::support::*;

/// A connections pipeline polling a CRM with per-user bearer tokens.
const CRM: &str = r#"name = "crm"
schema = "infer"

[source]
type = "poll"
url = "https://api.example.com/v3/contacts"
every = "5m"
records = "/results"
auth = { type = "bearer" }

[connections]
max_concurrent_runs = 4

[[sink]]
type = "parquet"
"#;

const TOKENS: [&str; 3] = [
    "tok-acme-7f3a9c21d4",
    "tok-globex-0b8e66f1aa",
    "tok-initech-new-55c2e",
];

/// Every file under `dir`, as bytes.
fn every_file(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(every_file(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_managed_at_run_time_survive_kill_9_and_never_show_a_token() {
    let project = Project::new();
    project.write("pipelines/crm.toml", CRM);
    let key = project.command(&["connections", "keygen"]);
    assert!(key.status.success(), "{key:?}");
    let key = String::from_utf8(key.stdout).unwrap().trim().to_string();
    let env = [("TRIBUTARY_SECRET_KEY", key.as_str())];
    let check = project.command_with_env(&["check"], &env);
    assert!(check.status.success(), "{check:?}");

    let server = project.start_with_env(&env).await;
    let client = reqwest::Client::new();
    let base = project.url("/api/pipelines/crm/connections");
    let post = |body: Value| {
        client
            .post(base.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
    };
    // Added through the API…
    let added = post(
        json!({"id": "acme", "credentials": {"token": TOKENS[0]}, "params": {"region": "eu"}}),
    )
    .await
    .unwrap();
    assert_eq!(added.status(), 201);
    let added: Value = added.json().await.unwrap();
    assert_eq!(added["id"], "acme");
    assert_eq!(added["state"], "active");
    assert_eq!(added["credential_fields"], json!(["token"]));
    assert_eq!(added["params"], json!({"region": "eu"}));
    // …and through the CLI, the credentials from a file.
    project.write("globex.json", &json!({"token": TOKENS[1]}).to_string());
    let cli = project.command_with_env(
        &[
            "connections",
            "add",
            "crm",
            "globex",
            "--credentials-file",
            "globex.json",
            "--param",
            "region=us",
        ],
        &env,
    );
    assert!(cli.status.success(), "{cli:?}");
    std::fs::remove_file(project.path().join("globex.json")).unwrap();

    // Refusals name the problem, never a value.
    let again = post(json!({"id": "acme", "credentials": {"token": "x"}}))
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let missing = post(json!({"id": "hooli", "credentials": {}}))
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let message: Value = missing.json().await.unwrap();
    assert!(
        message["error"].as_str().unwrap().contains("token"),
        "{message}"
    );
    let unknown =
        post(json!({"id": "hooli", "credentials": {"token": "t", "pasword": "hunter2-secret"}}))
            .await
            .unwrap();
    assert_eq!(unknown.status(), 400);
    let message = unknown.text().await.unwrap();
    assert!(
        message.contains("pasword") && !message.contains("hunter2-secret"),
        "{message}"
    );
    let bad_id = post(json!({"id": "a/b", "credentials": {"token": "t"}}))
        .await
        .unwrap();
    assert_eq!(bad_id.status(), 400);
    let form = client
        .post(base.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("id=x")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);
    let no_such = client
        .get(project.url("/api/pipelines/nope/connections"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_such.status(), 404);

    // Paused, credentials replaced, one removed.
    let pause = project.command_with_env(&["connections", "pause", "crm", "globex"], &env);
    assert!(pause.status.success(), "{pause:?}");
    let patched = client
        .patch(format!("{base}/acme"))
        .header(CONTENT_TYPE, "application/json")
        .body(json!({"credentials": {"token": TOKENS[2]}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    post(json!({"id": "initech", "credentials": {"token": "tok-gone"}}))
        .await
        .unwrap();
    let removed = client
        .delete(format!("{base}/initech"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let gone = client
        .patch(format!("{base}/initech"))
        .header(CONTENT_TYPE, "application/json")
        .body(json!({"state": "active"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 410);

    // Every change was durable before its answer: kill -9, start again.
    server.kill9();
    let _server = project.start_with_env(&env).await;
    let listed: Value = client
        .get(base.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let states: Vec<(String, String)> = listed["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("acme".to_string(), "active".to_string()),
            ("globex".to_string(), "paused".to_string())
        ]
    );
    let initech: Value = client
        .get(format!("{base}/initech"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(initech["state"], "removed");
    let table = project.command_with_env(&["connections", "list", "crm"], &env);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains("acme") && table.contains("paused"),
        "{table}"
    );

    // No token in plaintext anywhere under the project (data, log, config),
    // nor in any answer.
    let files = every_file(project.path());
    assert!(
        files
            .iter()
            .any(|(p, _)| p.ends_with("data/crm/connections.json")),
        "the store is where it is documented"
    );
    for (path, bytes) in &files {
        for token in TOKENS.iter().chain(&["tok-gone", "hunter2-secret"]) {
            assert!(
                !holds(bytes, token),
                "{token} in plaintext in {}",
                path.display()
            );
        }
    }
    for answer in [listed.to_string(), initech.to_string(), table] {
        for token in TOKENS {
            assert!(!answer.contains(token), "{answer}");
        }
    }
}

#[test]
fn check_names_each_connections_mistake() {
    let project = Project::new();
    // A per-user secret from the environment in a connections pipeline.
    project.write(
        "pipelines/crm.toml",
        &CRM.replace(
            "auth = { type = \"bearer\" }",
            "auth = { type = \"bearer\", token_env = \"CRM_TOKEN\" }",
        )
        .replace("max_concurrent_runs = 4", "max_concurrent_runs = 0"),
    );
    let out = project.command(&["check"]);
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("source.auth.token_env") && text.contains("each connection gives \"token\""),
        "{text}"
    );
    assert!(text.contains("connections.max_concurrent_runs"), "{text}");

    // Without the key that seals the credentials.
    project.write("pipelines/crm.toml", CRM);
    let out = project.command(&["check"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("TRIBUTARY_SECRET_KEY") && text.contains("keygen"),
        "{text}"
    );
}
