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

/// Asserts that no file under the project holds any of `secrets`.
fn assert_nowhere_under(project: &Project, secrets: &[&str]) {
    for (path, bytes) in every_file(project.path()) {
        for secret in secrets {
            assert!(
                !holds(&bytes, secret),
                "{secret} in plaintext in {}",
                path.display()
            );
        }
    }
}

/// The JSON answer of `GET url`.
async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
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
    let mut secrets = TOKENS.to_vec();
    secrets.extend(["tok-gone", "hunter2-secret"]);
    assert_nowhere_under(&project, &secrets);
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

    // Placeholders outside a connections pipeline; a bad param name in one.
    project.write(
        "pipelines/crm.toml",
        &CRM.replace(
            "https://api.example.com/v3/contacts",
            "https://{params.shop}.example.com/v3/contacts",
        )
        .replace("[connections]\nmax_concurrent_runs = 4\n", ""),
    );
    let out = project.command(&["check"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("source.url") && text.contains("[connections]"),
        "{text}"
    );
    project.write(
        "pipelines/crm.toml",
        &CRM.replace(
            "https://api.example.com/v3/contacts",
            "https://{params.shop id}.example.com/v3/contacts",
        ),
    );
    let out = project.command(&["check"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("{params.shop id} is not a param name"),
        "{text}"
    );

    // An attribution pointer that is not one; a header and a pointer both.
    for (attribute, named) in [
        (
            "{ pointer = \"portalId\" }",
            "connections.attribute.pointer",
        ),
        (
            "{ pointer = \"/portalId\", header = \"X-Shop\" }",
            "names both a header and a pointer",
        ),
        // By pointer, the signature is checked before any connection is
        // known: the app's secret is needed.
        (
            "{ pointer = \"/portalId\" }\n\n[source.verify]\nscheme = \"hubspot-v3\"",
            "source.verify.secret_env",
        ),
    ] {
        project.write(
            "pipelines/crm.toml",
            &HUBSPOT.replace("{ pointer = \"/portalId\" }", attribute),
        );
        let out = project.command(&["check"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && text.contains(named), "{text}");
    }

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

/// A webhook pipeline for every shop of a Shopify app: one connection per shop.
const SHOPS: &str = r#"name = "shops"
schema = "schemas/shopify_customer.json"
record_path = "/customers"
primary_key = ["id"]

[source]
type = "webhook"
path = "/hooks/shops"

[connections]

[batch]
max_age = "200ms"

[[sink]]
type = "parquet"
partition_by = ["_connection"]

[[sink]]
type = "delta"
uri = "lake/shops_delta"
"#;

/// `_connection` → rows, in the Parquet sink (DuckDB, hive partitions) and
/// the Delta table (delta-rs), each engine in its own process.
fn rows_by_connection(project: &Project) -> Value {
    let parquet: Value = run_inline_reader(
        r#"
import json, sys, duckdb
try:
    rows = dict(duckdb.sql("SELECT _connection, count(*) FROM read_parquet(?, hive_partitioning = true) GROUP BY 1", params=[sys.argv[1] + "/**/*.parquet"]).fetchall())
except duckdb.IOException:
    rows = {}  # no file yet
print(json.dumps(rows))
"#,
        &[project.table_dir_of("shops").to_str().unwrap()],
    );
    let delta: Value = run_inline_reader(
        r#"
import json, os, sys
from deltalake import DeltaTable
rows = {}
log = os.path.join(sys.argv[1], "_delta_log")
if os.path.isdir(log) and any(f.endswith(".json") and f[:-5].isdigit() for f in os.listdir(log)):
    for c in DeltaTable(sys.argv[1]).to_pyarrow_table().column("_connection").to_pylist():
        rows[c] = rows.get(c, 0) + 1
print(json.dumps(rows))
"#,
        &[project.path().join("lake/shops_delta").to_str().unwrap()],
    );
    let duckdb_delta: Value = run_inline_reader(
        r#"
import json, os, sys, duckdb, duckdb_ext
log = os.path.join(sys.argv[1], "_delta_log")
rows = {}
if os.path.isdir(log) and any(f.endswith(".json") and f[:-5].isdigit() for f in os.listdir(log)):
    con = duckdb.connect(config={"extension_directory": list(duckdb_ext.__path__)[0] + "/extensions", "autoinstall_known_extensions": False})
    con.execute("LOAD delta")
    rows = dict(con.execute("SELECT _connection, count(*) FROM delta_scan(?) GROUP BY 1", [sys.argv[1]]).fetchall())
print(json.dumps(rows))
"#,
        &[project.path().join("lake/shops_delta").to_str().unwrap()],
    );
    json!({"parquet": parquet, "delta": delta, "duckdb_delta": duckdb_delta})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_posts_to_its_own_url_and_its_rows_carry_it() {
    let project = Project::new();
    project.write("pipelines/shops.toml", SHOPS);
    let key = tributary_key(&project);
    let env = [("TRIBUTARY_SECRET_KEY", key.as_str())];
    let _server = project.start_with_env(&env).await;
    let client = reqwest::Client::new();
    for id in ["acme", "globex", "initech"] {
        add(&project, "shops", json!({"id": id})).await;
    }
    let hook = |path: &str, first: u64, n: u64| {
        let events: Vec<Value> = (first..first + n).map(shopify_customer).collect();
        client.post(project.url(path)).json(&events).send()
    };
    assert_eq!(hook("/hooks/shops/acme", 1, 2).await.unwrap().status(), 202);
    assert_eq!(
        hook("/hooks/shops/globex", 10, 3).await.unwrap().status(),
        202
    );
    // A paused connection's events are still stored.
    let paused = client
        .patch(project.url("/api/pipelines/shops/connections/globex"))
        .header(CONTENT_TYPE, "application/json")
        .body(json!({"state": "paused"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 200);
    assert_eq!(
        hook("/hooks/shops/globex", 20, 1).await.unwrap().status(),
        202
    );
    // Unknown → 404, removed → 410 (providers stop), no connection → 404.
    let unknown = hook("/hooks/shops/hooli", 30, 1).await.unwrap();
    assert_eq!(unknown.status(), 404);
    let message: Value = unknown.json().await.unwrap();
    assert!(
        message["error"].as_str().unwrap().contains("hooli"),
        "{message}"
    );
    client
        .delete(project.url("/api/pipelines/shops/connections/initech"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        hook("/hooks/shops/initech", 40, 1).await.unwrap().status(),
        410
    );
    let bare = hook("/hooks/shops", 50, 1).await.unwrap();
    assert_eq!(bare.status(), 404);
    let message: Value = bare.json().await.unwrap();
    assert!(
        message["error"]
            .as_str()
            .unwrap()
            .contains("/<connection id>"),
        "{message}"
    );

    let want = json!({"acme": 2, "globex": 4});
    let mut seen = Value::Null;
    eventually(&project, "both sinks hold every accepted event", || {
        seen = rows_by_connection(&project);
        seen["parquet"] == want && seen["delta"] == want && seen["duckdb_delta"] == want
    })
    .await;
    // The Parquet sink is partitioned by connection: one directory each.
    let dirs: std::collections::BTreeSet<String> = parquet_files(&project.table_dir_of("shops"))
        .iter()
        .map(|f| {
            f.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string()
        })
        .collect();
    assert_eq!(
        dirs.into_iter().collect::<Vec<_>>(),
        vec!["_connection=acme", "_connection=globex"],
        "{seen}"
    );
}

/// Adds the connection `body` to `pipeline` through the admin API.
async fn add(project: &Project, pipeline: &str, body: Value) {
    let answer = reqwest::Client::new()
        .post(project.url(&format!("/api/pipelines/{pipeline}/connections")))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201, "{body}");
}

fn tributary_key(project: &Project) -> String {
    let key = project.command(&["connections", "keygen"]);
    assert!(key.status.success(), "{key:?}");
    String::from_utf8(key.stdout).unwrap().trim().to_string()
}

/// A pipeline polling every connection's own account of the fake API.
fn accounts_pipeline(project: &Project, api: &crate::support::accounts::Accounts) {
    project.write(
        "pipelines/crm.toml",
        &format!(
            r#"name = "crm"
schema = "infer"

[source]
type = "poll"
url = "{url}"
allow_http = true
every = "1s"
jitter = "300ms"
records = "/results"
cursor = {{ field = "updated_at", param = "updated_after" }}
paginate = {{ type = "cursor", next = "/paging/next/after", param = "after" }}
auth = {{ type = "bearer" }}

[connections]
max_concurrent_runs = 4

[batch]
max_age = "200ms"

[[sink]]
type = "parquet"
partition_by = ["_connection"]
"#,
            url = api.url()
        ),
    );
}

/// (connection, id) → rows, read by DuckDB.
fn rows_by_account(project: &Project) -> std::collections::HashMap<String, usize> {
    let script = r#"
import json, sys, duckdb
try:
    rows = duckdb.sql("SELECT _connection || '/' || CAST(id AS VARCHAR), count(*) FROM read_parquet(?, hive_partitioning = true) GROUP BY 1", params=[sys.argv[1] + "/**/*.parquet"]).fetchall()
except duckdb.IOException:
    rows = []
print(json.dumps(dict(rows)))
"#;
    run_inline_reader(script, &[project.table_dir_of("crm")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_polls_its_own_account_once_each_across_kill_9() {
    let api = crate::support::accounts::Accounts::start().await;
    let project = Project::new();
    accounts_pipeline(&project, &api);
    let key = tributary_key(&project);
    let env = [("TRIBUTARY_SECRET_KEY", key.as_str())];
    let accounts: Vec<String> = (0..20).map(|i| format!("acct-{i:02}")).collect();
    for a in &accounts {
        api.add(a, &format!("tok-{a}-s3cr3t"), 12);
    }
    let server = project.start_with_env(&env).await;
    let client = reqwest::Client::new();
    // Added while running; one of them with a token the API has revoked.
    for a in &accounts {
        let token = if a == "acct-13" {
            "tok-revoked-s3cr3t".to_string()
        } else {
            format!("tok-{a}-s3cr3t")
        };
        add(
            &project,
            "crm",
            json!({"id": a, "credentials": {"token": token}}),
        )
        .await;
    }
    // Killed while connections are mid-run.
    eventually(&project, "some rows", || {
        !rows_by_account(&project).is_empty()
    })
    .await;
    server.kill9();
    // As after a power cut that lost the unsynced copies of the cursors:
    // each connection's cursor must come back from the log itself.
    let side = project.path().join("data/crm/connections");
    let mut removed = 0;
    for entry in std::fs::read_dir(&side).unwrap().flatten() {
        if std::fs::remove_file(entry.path().join("source.json")).is_ok() {
            removed += 1;
        }
    }
    assert!(removed > 0, "the cursors' copies are where documented");
    for a in accounts.iter().take(5) {
        api.grow(a, 7);
    }
    let _server = project.start_with_env(&env).await;
    let expected: std::collections::HashMap<String, usize> = accounts
        .iter()
        .filter(|a| *a != "acct-13")
        .flat_map(|a| {
            let n = if accounts[..5].contains(a) { 19 } else { 12 };
            (1..=n).map(move |i| (format!("{a}/{i}"), 1))
        })
        .collect();
    let mut seen = Default::default();
    eventually(&project, "every record of every account", || {
        seen = rows_by_account(&project);
        seen.len() >= expected.len()
    })
    .await;
    assert_eq!(seen, expected, "each record once, each with its connection");

    // The revoked one waits for new credentials; the others were not held up.
    let revoked: Value = get_json(&project.url("/api/pipelines/crm/connections/acct-13")).await;
    assert_eq!(revoked["state"], "needs_reauth", "{revoked}");
    // Why, kept across the restart; never the token.
    let why = revoked["error"].as_str().unwrap_or("");
    assert!(why.contains("401") && !why.contains("s3cr3t"), "{revoked}");
    // The pipeline's view counts connections by state and lists the failing
    // one with its error; /metrics counts them (no per-connection labels).
    let pipelines: Value = get_json(&project.url("/api/pipelines")).await;
    let summary = &pipelines["pipelines"][0]["connections"];
    assert_eq!(summary["states"]["needs_reauth"], 1, "{summary}");
    assert_eq!(summary["states"]["active"], 19, "{summary}");
    assert_eq!(summary["failing"][0]["id"], "acct-13", "{summary}");
    let metrics = client
        .get(project.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tributary_connections{pipeline=\"crm\",state=\"needs_reauth\"} 1"),
        "{metrics}"
    );
    let asked = api.requests("acct-13");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(api.requests("acct-13"), asked, "no more runs for it");
    // New credentials: it runs again and catches up.
    let patched = client
        .patch(project.url("/api/pipelines/crm/connections/acct-13"))
        .header(CONTENT_TYPE, "application/json")
        .body(json!({"credentials": {"token": "tok-acct-13-s3cr3t"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["state"], "active");
    eventually(&project, "the re-authorised account's records", || {
        rows_by_account(&project).contains_key("acct-13/12")
    })
    .await;

    // Each account resumed from its own cursor: the grown ones fetched
    // only their new records after the restart (no duplicates above), and
    // no token is in plaintext under the project.
    assert_nowhere_under(&project, &["s3cr3t"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_deletes_exactly_one_accounts_rows_dead_letters_and_cursor() {
    let project = Project::new();
    project.write("pipelines/shops.toml", SHOPS);
    let key = tributary_key(&project);
    let env = [("TRIBUTARY_SECRET_KEY", key.as_str())];
    let _server = project.start_with_env(&env).await;
    let client = reqwest::Client::new();
    for id in ["acme", "globex"] {
        add(&project, "shops", json!({"id": id})).await;
    }
    for (id, first, n) in [("acme", 1, 3), ("globex", 10, 2), ("acme", 20, 2)] {
        let events: Vec<Value> = (first..first + n).map(shopify_customer).collect();
        let answer = client
            .post(project.url(&format!("/hooks/shops/{id}")))
            .json(&events)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
    }
    // A dead letter of each (an id that is no integer).
    for id in ["acme", "globex"] {
        let bad = json!({"customers": {"id": "not-a-number"}});
        let answer = client
            .post(project.url(&format!("/hooks/shops/{id}")))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
    }
    let want = json!({"acme": 5, "globex": 2});
    eventually(&project, "every event in both sinks", || {
        let seen = rows_by_connection(&project);
        seen["parquet"] == want && seen["delta"] == want
    })
    .await;

    let purged = client
        .delete(project.url("/api/pipelines/shops/connections/acme?purge=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    let purged: Value = purged.json().await.unwrap();
    assert_eq!(purged["connection"]["state"], "removed", "{purged}");
    assert_eq!(purged["purged"]["sinks"]["delta"]["rows"], 5, "{purged}");
    assert!(
        purged["purged"]["sinks"]["parquet"]["files"]
            .as_u64()
            .unwrap()
            >= 1,
        "{purged}"
    );
    // Two dead letters (one per sink) of acme's bad event.
    assert_eq!(purged["purged"]["dead_letters"], 2, "{purged}");

    // Read back by delta-rs, DuckDB (its Delta reader and Parquet): only globex is left.
    let left = json!({"globex": 2});
    let seen = rows_by_connection(&project);
    assert_eq!(seen["delta"], left, "{seen}");
    assert_eq!(seen["duckdb_delta"], left, "{seen}");
    assert_eq!(seen["parquet"], left, "{seen}");
    let dead: Value = run_inline_reader(
        r#"
import json, sys, duckdb
print(json.dumps(dict(duckdb.sql("SELECT connection, count(*) FROM read_parquet(?) GROUP BY 1", params=[sys.argv[1] + "/*.parquet"]).fetchall())))
"#,
        &[project
            .path()
            .join("lake/_dead_letters/shops")
            .to_str()
            .unwrap()],
    );
    assert_eq!(dead, json!({"globex": 2}));
    // Its webhook URL now answers 410; a second purge finds nothing left.
    let gone = client
        .post(project.url("/hooks/shops/acme"))
        .json(&json!([shopify_customer(99)]))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 410);
    let again: Value = client
        .delete(project.url("/api/pipelines/shops/connections/acme?purge=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["purged"]["sinks"]["delta"]["rows"], 0, "{again}");
    assert_eq!(again["purged"]["dead_letters"], 0, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_a_sink_cannot_do_is_refused_before_anything_changes() {
    let project = Project::new();
    project.write(
        "pipelines/shops.toml",
        &SHOPS.replace(
            "partition_by = [\"_connection\"]",
            "partition_by = [\"_received_date\"]",
        ),
    );
    let key = tributary_key(&project);
    let env = [("TRIBUTARY_SECRET_KEY", key.as_str())];
    let _server = project.start_with_env(&env).await;
    let client = reqwest::Client::new();
    add(&project, "shops", json!({"id": "acme"})).await;
    let refused = client
        .delete(project.url("/api/pipelines/shops/connections/acme?purge=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    let message: Value = refused.json().await.unwrap();
    let message = message["error"].as_str().unwrap();
    assert!(
        message.contains("parquet") && message.contains("partition_by"),
        "{message}"
    );
    let still: Value = get_json(&project.url("/api/pipelines/shops/connections/acme")).await;
    assert_eq!(still["state"], "active", "nothing changed: {still}");
}

/// `scripts/bench connections`: many connections on one node, every = "1m"
/// with a minute's jitter, one page of 10 records each from the fake API.
/// Prints the time to add them through the API (16 clients), runs started
/// in a minute (after a minute of warm-up), the start delay histogram, RSS
/// and CPU. Figures only; nothing timed is asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench connections"]
async fn bench_connections() {
    let n: usize = std::env::var("BENCH_CONNECTIONS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let window: u64 = std::env::var("BENCH_CONNECTIONS_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let api = crate::support::accounts::Accounts::start().await;
    let project = Project::new();
    accounts_pipeline(&project, &api);
    let pipeline = std::fs::read_to_string(project.path().join("pipelines/crm.toml"))
        .unwrap()
        .replace("every = \"1s\"", "every = \"1m\"")
        .replace("jitter = \"300ms\"", "jitter = \"1m\"")
        .replace("max_concurrent_runs = 4", "max_concurrent_runs = 16")
        .replace("max_age = \"200ms\"", "max_age = \"5s\"");
    project.write("pipelines/crm.toml", &pipeline);
    let ids: Vec<String> = (0..n).map(|i| format!("c{i:05}")).collect();
    for id in &ids {
        api.add(id, &format!("tok-{id}"), 10);
    }
    let key = tributary_key(&project);
    let env = [("TRIBUTARY_SECRET_KEY", key.as_str()), ("RUST_LOG", "warn")];
    let server = project.start_with_env(&env).await;
    let pid = server.pid();
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for chunk in ids.chunks(n.div_ceil(16)) {
        let (client, url, chunk) = (
            client.clone(),
            project.url("/api/pipelines/crm/connections"),
            chunk.to_vec(),
        );
        tasks.push(tokio::spawn(async move {
            for id in chunk {
                let body = json!({"id": id, "credentials": {"token": format!("tok-{id}")}});
                let answer = client
                    .post(&url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let added = started.elapsed();
    // Warm-up: the first runs spread over the jitter.
    tokio::time::sleep(std::time::Duration::from_secs(window)).await;
    let requests = |api: &crate::support::accounts::Accounts| -> u64 {
        ids.iter().map(|id| api.requests(id)).sum()
    };
    let cpu = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    };
    let runs = |text: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("tributary_poll_runs_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum()
    };
    let scrape = || async {
        client
            .get(project.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let (requests_before, runs_before, cpu_before) =
        (requests(&api), runs(&scrape().await), cpu(pid));
    tokio::time::sleep(std::time::Duration::from_secs(window)).await;
    let (requests_after, runs_after, cpu_after) = (requests(&api), runs(&scrape().await), cpu(pid));
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .to_string();
    let metrics = scrape().await;
    let delays: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("tributary_connection_run_delay_seconds_bucket"))
        .map(|l| l.to_string())
        .collect();
    println!(
        "connections bench: {n} connections added in {:.1} s ({:.0}/s); runs ended in {window} s: {} (per minute: {:.0}; API requests {}); CPU {:.1} s over {window} s ({:.1}% of a core); {rss}",
        added.as_secs_f64(),
        n as f64 / added.as_secs_f64(),
        runs_after - runs_before,
        (runs_after - runs_before) as f64 * 60.0 / window as f64,
        requests_after - requests_before,
        cpu_after - cpu_before,
        (cpu_after - cpu_before) * 100.0 / window as f64,
    );
    println!(
        "connections bench: start delay buckets (cumulative): {}",
        delays.join(" | ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tributary_poll_runs_each_connection_once_or_the_one_named() {
    let api = crate::support::accounts::Accounts::start().await;
    let project = Project::new();
    accounts_pipeline(&project, &api);
    let key = tributary_key(&project);
    let env = [("TRIBUTARY_SECRET_KEY", key.as_str())];
    let server = project.start_with_env(&env).await;
    for a in ["acct-01", "acct-02"] {
        add(
            &project,
            "crm",
            json!({"id": a, "credentials": {"token": format!("tok-{a}")}}),
        )
        .await;
    }
    // The accounts do not exist yet at the API: runs fail (404), nothing stored.
    assert!(server.terminate().success());
    for a in ["acct-01", "acct-02"] {
        api.add(a, &format!("tok-{a}"), 12);
    }
    let one = project.command_with_env(&["poll", "crm", "--connection", "acct-01"], &env);
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let said = String::from_utf8_lossy(&one.stdout).to_string();
    assert!(said.contains("12 records"), "{said}");
    let all = project.command_with_env(&["poll", "crm"], &env);
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    let said = String::from_utf8_lossy(&all.stdout).to_string();
    // acct-01 resumes from its cursor (nothing new); acct-02 fetches its 12.
    assert!(said.contains("12 records"), "{said}");
    let rows = rows_by_account(&project);
    let expected: std::collections::HashMap<String, usize> = ["acct-01", "acct-02"]
        .iter()
        .flat_map(|a| (1..=12).map(move |i| (format!("{a}/{i}"), 1)))
        .collect();
    assert_eq!(rows, expected);
    let wrong = project.command_with_env(&["poll", "crm", "--connection", "nope"], &env);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("no connection nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_tokens_are_kept_before_use_across_kill_9() {
    let api = crate::support::accounts::Accounts::start().await;
    let project = Project::new();
    accounts_pipeline(&project, &api);
    let pipeline = std::fs::read_to_string(project.path().join("pipelines/crm.toml"))
        .unwrap()
        .replace(
            "auth = { type = \"bearer\" }",
            &format!(
                "auth = {{ type = \"oauth2\", token_url = \"{}\", client_id_env = \"APP_ID\", client_secret_env = \"APP_SECRET\" }}",
                api.token_url()
            ),
        );
    project.write("pipelines/crm.toml", &pipeline);
    let accounts = ["acct-01", "acct-02", "acct-03"];
    for a in accounts {
        api.add_oauth(a, &format!("rt-{a}-first-s3cr3t"), 30);
    }
    let key = tributary_key(&project);
    let env = [
        ("TRIBUTARY_SECRET_KEY", key.as_str()),
        ("APP_ID", "app-id"),
        ("APP_SECRET", "app-secret"),
    ];
    let mut server = project.start_with_env(&env).await;
    for a in accounts {
        add(
            &project,
            "crm",
            json!({"id": a, "credentials": {"refresh_token": format!("rt-{a}-first-s3cr3t")}}),
        )
        .await;
    }
    // Access tokens live a second and every refresh rotates: each run
    // rotates. Killed three times, at whatever point the runs are.
    for round in 0..3u64 {
        let issued = api.issued();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while api.issued() < issued + 4 && std::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(137 * round)).await;
        server.kill9();
        server = project.start_with_env(&env).await;
    }
    for a in accounts {
        api.grow(a, 5);
    }
    let expected: std::collections::HashMap<String, usize> = accounts
        .iter()
        .flat_map(|a| (1..=35).map(move |i| (format!("{a}/{i}"), 1)))
        .collect();
    let mut seen = Default::default();
    eventually(&project, "every record of every OAuth account", || {
        seen = rows_by_account(&project);
        seen.len() >= expected.len()
    })
    .await;
    assert_eq!(seen, expected, "each record once");
    assert!(api.issued() >= 12, "tokens rotated: {}", api.issued());
    assert_eq!(
        api.spent_refused(),
        0,
        "a spent refresh token was never sent"
    );
    let listed: Value = get_json(&project.url("/api/pipelines/crm/connections")).await;
    for c in listed["connections"].as_array().unwrap() {
        assert_eq!(c["state"], "active", "{listed}");
    }
    drop(server);
    assert_nowhere_under(&project, &["s3cr3t"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_hears_about_its_connections_in_signed_posts() {
    let api = crate::support::accounts::Accounts::start().await;
    let project = Project::new();
    let receiver_dir = tempfile::tempdir().unwrap();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let receiver =
        crate::support::Receiver::start(receiver_dir.path(), "standard-webhooks", secret).await;
    accounts_pipeline(&project, &api);
    let pipeline = std::fs::read_to_string(project.path().join("pipelines/crm.toml"))
        .unwrap()
        .replace(
            "max_concurrent_runs = 4",
            &format!(
                "max_concurrent_runs = 4\nnotify = {{ url = \"{}\", secret_env = \"NOTIFY_SECRET\" }}",
                receiver.url
            ),
        );
    project.write("pipelines/crm.toml", &pipeline);
    api.add("good", "tok-good", 7);
    api.add("revoked", "tok-other", 7);
    // "missing" has no account at the API: its runs fail (404).
    let key = tributary_key(&project);
    let env = [
        ("TRIBUTARY_SECRET_KEY", key.as_str()),
        ("NOTIFY_SECRET", secret),
    ];
    let _server = project.start_with_env(&env).await;
    let client = reqwest::Client::new();
    for (id, token) in [
        ("good", "tok-good"),
        ("revoked", "tok-revoked"),
        ("missing", "tok-x"),
    ] {
        add(
            &project,
            "crm",
            json!({"id": id, "credentials": {"token": token}}),
        )
        .await;
    }
    let events = |receiver: &crate::support::Receiver| -> Vec<(String, String, bool)> {
        receiver
            .deliveries()
            .into_iter()
            .map(|d| {
                let body: Value = serde_json::from_str(&d.body).unwrap_or(Value::Null);
                (
                    body["type"].as_str().unwrap_or("").to_string(),
                    body["connection"].as_str().unwrap_or("").to_string(),
                    d.verified,
                )
            })
            .collect()
    };
    let want = [
        ("connection.backfill_done", "good"),
        ("connection.needs_reauth", "revoked"),
        ("connection.failing", "missing"),
    ];
    eventually(&project, "the three notifications", || {
        let got = events(&receiver);
        want.iter()
            .all(|(t, c)| got.iter().any(|(gt, gc, _)| gt == t && gc == c))
    })
    .await;
    client
        .delete(project.url("/api/pipelines/crm/connections/missing"))
        .send()
        .await
        .unwrap();
    eventually(&project, "the removal's notification", || {
        events(&receiver)
            .iter()
            .any(|(t, c, _)| t == "connection.removed" && c == "missing")
    })
    .await;
    let got = events(&receiver);
    assert!(got.iter().all(|(_, _, verified)| *verified), "{got:?}");
    let needs: Value = serde_json::from_str(
        &receiver
            .deliveries()
            .into_iter()
            .find(|d| d.body.contains("connection.needs_reauth"))
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(needs["pipeline"], "crm");
    assert!(
        needs["data"]["error"].as_str().unwrap().contains("401"),
        "{needs}"
    );
    assert!(!needs.to_string().contains("tok-revoked"), "{needs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_app_level_url_attributes_each_webhook_by_a_header() {
    let project = Project::new();
    project.write(
        "pipelines/shops.toml",
        &SHOPS.replace(
            "[connections]\n",
            "[connections]\nattribute = { header = \"X-Shopify-Shop-Domain\" }\n",
        ),
    );
    let key = tributary_key(&project);
    let env = [("TRIBUTARY_SECRET_KEY", key.as_str())];
    let _server = project.start_with_env(&env).await;
    add(
        &project,
        "shops",
        json!({"id": "acme", "match": ["acme.myshopify.com"]}),
    )
    .await;
    add(
        &project,
        "shops",
        json!({"id": "globex", "match": ["globex.myshopify.com"]}),
    )
    .await;
    let client = reqwest::Client::new();
    // A match value is one connection's only.
    let taken = client
        .post(project.url("/api/pipelines/shops/connections"))
        .header(CONTENT_TYPE, "application/json")
        .body(json!({"id": "copycat", "match": ["acme.myshopify.com"]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 400);
    let shop = |domain: Option<&'static str>, first: u64| {
        let mut request = client
            .post(project.url("/hooks/shops"))
            .json(&[shopify_customer(first)]);
        if let Some(domain) = domain {
            request = request.header("X-Shopify-Shop-Domain", domain);
        }
        request.send()
    };
    assert_eq!(
        shop(Some("acme.myshopify.com"), 1).await.unwrap().status(),
        202
    );
    assert_eq!(
        shop(Some("globex.myshopify.com"), 2)
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        shop(Some("globex.myshopify.com"), 3)
            .await
            .unwrap()
            .status(),
        202
    );
    let unknown = shop(Some("hooli.myshopify.com"), 4).await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(shop(None, 5).await.unwrap().status(), 400);
    client
        .delete(project.url("/api/pipelines/shops/connections/globex"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        shop(Some("globex.myshopify.com"), 6)
            .await
            .unwrap()
            .status(),
        410
    );
    // The path form works as well.
    assert_eq!(
        client
            .post(project.url("/hooks/shops/acme"))
            .json(&[shopify_customer(7)])
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let want = json!({"acme": 2, "globex": 2});
    let mut seen = Value::Null;
    eventually(&project, "the attributed rows", || {
        seen = rows_by_connection(&project);
        seen["parquet"] == want && seen["delta"] == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_seals_every_credential_again_so_the_old_key_can_go() {
    let api = crate::support::accounts::Accounts::start().await;
    let project = Project::new();
    accounts_pipeline(&project, &api);
    let old = tributary_key(&project);
    let new = tributary_key(&project);
    for a in ["acct-a", "acct-b"] {
        api.add(a, &format!("tok-{a}-s3cr3t"), 3);
    }
    let server = project
        .start_with_env(&[("TRIBUTARY_SECRET_KEY", old.as_str())])
        .await;
    for a in ["acct-a", "acct-b"] {
        add(
            &project,
            "crm",
            json!({"id": a, "credentials": {"token": format!("tok-{a}-s3cr3t")}}),
        )
        .await;
    }
    eventually(&project, "both accounts' records", || {
        rows_by_account(&project).len() == 6
    })
    .await;
    server.kill9();
    // Rotated: the new key seals, the old one still opens; rekey moves
    // every credential to the new key.
    let rotated = [
        ("TRIBUTARY_SECRET_KEY", new.as_str()),
        ("TRIBUTARY_SECRET_KEY_OLD", old.as_str()),
    ];
    let server = project.start_with_env(&rotated).await;
    let rekeyed = project.command_with_env(&["connections", "rekey", "crm"], &rotated);
    assert!(rekeyed.status.success(), "{rekeyed:?}");
    let answer: Value = serde_json::from_slice(&rekeyed.stdout).unwrap();
    assert_eq!(answer["resealed"], 2, "{answer}");
    let again = project.command_with_env(&["connections", "rekey", "crm"], &rotated);
    let answer: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(answer["resealed"], 0, "{answer}");
    server.kill9();
    // Only the new key now: every connection still polls with its token.
    for a in ["acct-a", "acct-b"] {
        api.grow(a, 2);
    }
    let _server = project
        .start_with_env(&[("TRIBUTARY_SECRET_KEY", new.as_str())])
        .await;
    eventually(&project, "the records added after the rekey", || {
        rows_by_account(&project).len() == 10
    })
    .await;
    let list: Value = get_json(&project.url("/api/pipelines/crm/connections")).await;
    for c in list["connections"].as_array().unwrap() {
        assert_eq!(c["state"], "active", "{c}");
        // What this process stored of it: the two records added since.
        assert_eq!(c["records_total"], 2, "{c}");
    }
    assert_nowhere_under(&project, &["s3cr3t"]);
}

/// A HubSpot app's pipeline: one app-level URL, each event naming its
/// account by `portalId`.
const HUBSPOT: &str = r#"name = "hubspot"
schema = "infer"

[source]
type = "webhook"
path = "/hooks/hubspot"

[connections]
attribute = { pointer = "/portalId" }

[batch]
max_age = "200ms"

[[sink]]
type = "parquet"
partition_by = ["_connection"]
"#;

/// HubSpot's published contact.creation sample (two events of portal
/// 62515), with its portal ids replaced by `portals`, one per event.
fn hubspot_batch(portals: &[Value]) -> Value {
    let sample = r#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321},
 {"eventId":2,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600412,"subscriptionType":"contact.propertyChange","attemptNumber":0,"objectId":123,"propertyName":"email","propertyValue":"ada@example.com","changeSource":"CRM","appId":54321}]"#;
    let events: Vec<Value> = serde_json::from_str(sample).unwrap();
    Value::Array(
        portals
            .iter()
            .enumerate()
            .map(|(i, portal)| {
                let mut event = events[i % 2].clone();
                event["eventId"] = json!(100 + i);
                match portal {
                    Value::Null => {
                        event.as_object_mut().unwrap().remove("portalId");
                    }
                    portal => event["portalId"] = portal.clone(),
                }
                event
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_app_level_url_attributes_each_event_of_a_batch_by_a_pointer() {
    let project = Project::new();
    project.write("pipelines/hubspot.toml", HUBSPOT);
    let key = tributary_key(&project);
    let env = [("TRIBUTARY_SECRET_KEY", key.as_str())];
    let _server = project.start_with_env(&env).await;
    for (id, portal) in [("acme", "62515"), ("globex", "99001"), ("gone", "77777")] {
        add(&project, "hubspot", json!({"id": id, "match": [portal]})).await;
    }
    let client = reqwest::Client::new();
    let removed = client
        .delete(project.url("/api/pipelines/hubspot/connections/gone"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let post = |body: Value| {
        let (client, url) = (client.clone(), project.url("/hooks/hubspot"));
        async move {
            let answer = client.post(url).json(&body).send().await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<Value>().await.unwrap())
        }
    };
    // The published sample: both events are portal 62515's.
    let (status, body) = post(hubspot_batch(&[json!(62515), json!(62515)])).await;
    assert_eq!((status, &body["accepted"]), (202, &json!(2)), "{body}");
    // One batch, two accounts (a number or a string names them alike).
    let (status, body) = post(hubspot_batch(&[json!("99001"), json!(62515)])).await;
    assert_eq!((status, &body["accepted"]), (202, &json!(2)), "{body}");
    // A portal no connection matches: the batch is refused whole, naming it.
    let (status, body) = post(hubspot_batch(&[json!(62515), json!(12345)])).await;
    assert_eq!(status, 404, "{body}");
    let why = body["error"].as_str().unwrap();
    assert!(why.contains("12345") && why.contains("/portalId"), "{why}");
    // An event without the value: 400, naming which.
    let (status, body) = post(hubspot_batch(&[json!(62515), Value::Null])).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("event 1"),
        "{body}"
    );
    // Only a removed account's events: 410; mixed with a live one's: those
    // of the live one are stored.
    let (status, body) = post(hubspot_batch(&[json!(77777)])).await;
    assert_eq!(status, 410, "{body}");
    let (status, body) = post(hubspot_batch(&[json!(77777), json!(99001)])).await;
    assert_eq!((status, &body["accepted"]), (202, &json!(1)), "{body}");
    // Each row carries the connection its own event named.
    let script = r#"
import json, sys, duckdb
try:
    rows = dict(duckdb.sql("SELECT _connection || '/' || CAST(eventId AS VARCHAR), count(*) FROM read_parquet(?, hive_partitioning = true) GROUP BY 1", params=[sys.argv[1] + "/**/*.parquet"]).fetchall())
except duckdb.IOException:
    rows = {}
print(json.dumps(rows))
"#;
    let table = project.table_dir_of("hubspot");
    // Sample 1: 100 and 101 acme's; batch 2: 100 globex's, 101 acme's;
    // the last: 101 globex's (100 was the removed account's).
    let expected = json!({"acme/100": 1, "acme/101": 2, "globex/100": 1, "globex/101": 1});
    let mut rows = json!({});
    for _ in 0..150 {
        rows = run_inline_reader(script, &[table.to_str().unwrap()]);
        if rows == expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(rows, expected, "{}", project.log());
    // Each connection counts the events stored for it.
    for (id, n) in [("acme", 3), ("globex", 2)] {
        let c = get_json(&project.url(&format!("/api/pipelines/hubspot/connections/{id}"))).await;
        assert_eq!(c["records_total"], n, "{c}");
    }
}

/// GitHub's `X-Hub-Signature-256` of `body` under `secret`.
fn github_signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_verifies_its_webhooks_with_its_own_secret() {
    let project = Project::new();
    // Each customer registered the repository webhook with a secret of its
    // own: the pipeline names none.
    project.write(
        "pipelines/repos.toml",
        r#"name = "repos"
schema = "infer"

[source]
type = "webhook"
path = "/hooks/github"
verify = { scheme = "github" }

[connections]

[batch]
max_age = "200ms"

[[sink]]
type = "parquet"
partition_by = ["_connection"]
"#,
    );
    let key = tributary_key(&project);
    let env = [("TRIBUTARY_SECRET_KEY", key.as_str())];
    let _server = project.start_with_env(&env).await;
    let client = reqwest::Client::new();
    // A connection without its secret yet (`register --connection` may
    // bring one): its webhooks are refused, saying why.
    add(&project, "repos", json!({"id": "nosecret"})).await;
    let secrets = [
        ("acme", "acme-hook-s3cr3t"),
        ("globex", "globex-hook-s3cr3t"),
    ];
    for (id, secret) in secrets {
        add(
            &project,
            "repos",
            json!({"id": id, "credentials": {"secret": secret}}),
        )
        .await;
    }
    // A push GitHub published in its webhook examples.
    let push = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/corpus/github/push_new_branch.json"
    ))
    .unwrap();
    let post = |id: &str, secret: &str| {
        let request = client
            .post(project.url(&format!("/hooks/github/{id}")))
            .header(CONTENT_TYPE, "application/json")
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", github_signature(secret, &push))
            .body(push.clone());
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post("nosecret", "acme-hook-s3cr3t").await, 401);
    assert_eq!(post("acme", "acme-hook-s3cr3t").await, 202);
    assert_eq!(post("globex", "globex-hook-s3cr3t").await, 202);
    assert_eq!(
        post("acme", "globex-hook-s3cr3t").await,
        401,
        "another connection's secret does not verify"
    );
    // A new secret: the old one no longer verifies.
    let patched = client
        .patch(project.url("/api/pipelines/repos/connections/acme"))
        .header(CONTENT_TYPE, "application/json")
        .body(json!({"credentials": {"secret": "acme-rotated-s3cr3t"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(post("acme", "acme-hook-s3cr3t").await, 401);
    assert_eq!(post("acme", "acme-rotated-s3cr3t").await, 202);
    let script = r#"
import json, sys, duckdb
try:
    rows = dict(duckdb.sql("SELECT _connection, count(*) FROM read_parquet(?, hive_partitioning = true) GROUP BY 1", params=[sys.argv[1] + "/**/*.parquet"]).fetchall())
except duckdb.IOException:
    rows = {}
print(json.dumps(rows))
"#;
    let table = project.table_dir_of("repos");
    let mut rows = json!({});
    for _ in 0..150 {
        rows = run_inline_reader(script, &[table.to_str().unwrap()]);
        if rows == json!({"acme": 2, "globex": 1}) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(rows, json!({"acme": 2, "globex": 1}), "{}", project.log());
    assert_nowhere_under(&project, &["s3cr3t"]);
}
