//! The poll source against a fake REST API: every pagination style and auth
//! type, incremental runs with lookback, retries, and kill -9 mid-run.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use rand::Rng;

use crate::support::fake_api::{Auth, Failure, FakeApi, Shape, Style, BASE_TS};
use crate::support::*;

// The shipped poll examples against a fake of their API.
mod examples;
// The backfill benchmark (ignored; scripts/bench runs it).
mod bench;
// NetSuite and Magento (OAuth 1.0a) against fakes that verify with oauthlib.
mod erp;

pub(crate) const ITEM_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "id": {"type": "integer"},
    "name": {"type": "string"},
    "email": {"type": "string"},
    "updated_at": {"type": "string", "format": "date-time"}
  },
  "required": ["id", "updated_at"]
}"#;

pub(crate) const CURSOR: &str =
    r#"cursor = { field = "updated_at", param = "updated_after", start = "2023-01-01T00:00:00Z" }"#;

/// Writes the `items` poll pipeline: `source` TOML in `[source]`, `sinks` as `[[sink]]` tables.
fn items_pipeline(project: &Project, api: &FakeApi, source: &str, sinks: &str) {
    project.write("schemas/item.json", ITEM_SCHEMA);
    project.write(
        "pipelines/items.toml",
        &format!(
            r#"name = "items"
schema = "schemas/item.json"
primary_key = ["id"]

[source]
type = "poll"
every = "1h"
url = "{url}"
allow_http = true
records = "/results"
{source}

[batch]
max_age = "200ms"

{sinks}
"#,
            url = api.url()
        ),
    );
}

const PARQUET: &str = "[[sink]]\ntype = \"parquet\"";

/// Runs `tributary poll items` with `env`.
fn poll(project: &Project, env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["poll", "items"])
        .current_dir(project.path())
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .output()
        .expect("run tributary poll")
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "tributary poll failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How often each `id` occurs in the Parquet files under `dir`.
fn id_counts_of(dir: &std::path::Path) -> HashMap<i64, usize> {
    let mut counts = HashMap::new();
    for batch in read_parquet(dir) {
        let ids = batch
            .column_by_name("id")
            .expect("id column")
            .as_primitive::<Int64Type>();
        for id in ids.iter().flatten() {
            *counts.entry(id).or_default() += 1;
        }
    }
    counts
}

fn once_each(n: i64) -> HashMap<i64, usize> {
    (1..=n).map(|id| (id, 1)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_lands_every_record_exactly_once_with_each_pagination_and_auth() {
    let oauth = |api: &FakeApi| {
        format!(
            r#"auth = {{ type = "oauth2", token_url = "{}", client_id_env = "CLIENT_ID", client_secret_env = "CLIENT_SECRET" }}"#,
            api.token_url()
        )
    };
    // Each style, the API's auth, and the pipeline's auth TOML (some need the API's URL).
    type AuthToml = Box<dyn Fn(&FakeApi) -> String>;
    let cases: Vec<(Style, &str, Auth, AuthToml)> = vec![
        (
            Style::Cursor,
            r#"paginate = { type = "cursor", next = "/paging/next/after", param = "after" }"#,
            Auth::Bearer("s3cret".into()),
            Box::new(|_| r#"auth = { type = "bearer", token_env = "API_TOKEN" }"#.into()),
        ),
        (
            Style::Link,
            r#"paginate = { type = "link" }"#,
            Auth::Basic("user".into(), "pw:1".into()),
            Box::new(|_| {
                r#"auth = { type = "basic", username = "user", password_env = "API_PASSWORD" }"#
                    .into()
            }),
        ),
        (
            Style::Offset,
            r#"paginate = { type = "offset", limit = 100 }"#,
            Auth::HeaderKey("x-api-key".into(), "k1".into()),
            Box::new(|_| {
                r#"auth = { type = "api_key", header = "X-API-Key", key_env = "API_KEY" }"#.into()
            }),
        ),
        (
            Style::Page,
            r#"paginate = { type = "page", limit = 100 }"#,
            Auth::QueryKey("api_key".into(), "k1".into()),
            Box::new(|_| {
                r#"auth = { type = "api_key", query = "api_key", key_env = "API_KEY" }"#.into()
            }),
        ),
        (
            Style::None,
            "",
            Auth::OAuth2 {
                client_id: "cid".into(),
                secret: "csecret".into(),
            },
            Box::new(oauth),
        ),
    ];
    let env = [
        ("API_TOKEN", "s3cret"),
        ("API_PASSWORD", "pw:1"),
        ("API_KEY", "k1"),
        ("CLIENT_ID", "cid"),
        ("CLIENT_SECRET", "csecret"),
    ];
    for (style, paginate, auth, auth_toml) in cases {
        let project = Project::new();
        let api = FakeApi::start(2500, style).await;
        api.set_auth(auth);
        items_pipeline(
            &project,
            &api,
            &format!("{CURSOR}\n{paginate}\n{}", auth_toml(&api)),
            PARQUET,
        );
        let out = poll(&project, &env);
        assert_ok(&out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("2500 records"), "{style:?}: {stdout}");
        assert_eq!(
            id_counts_of(&project.table_dir_of("items")),
            once_each(2500),
            "{style:?}"
        );
        let pages = api.log().len();
        let expected = match style {
            Style::None => 1,
            // 2500 is a whole number of pages: a full last page means asking
            // once more, for the empty page after it.
            Style::Page | Style::Offset => 26,
            _ => 25,
        };
        assert_eq!(pages, expected, "{style:?}: requests");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_other_4xx_fail_the_run_loudly_and_leave_the_cursor() {
    let project = Project::new();
    let api = FakeApi::start(300, Style::Cursor).await;
    api.set_auth(Auth::Bearer("right".into()));
    items_pipeline(&project, &api, &format!("{CURSOR}\npaginate = {{ type = \"cursor\", next = \"/paging/next/after\", param = \"after\" }}\nauth = {{ type = \"bearer\", token_env = \"API_TOKEN\" }}"), PARQUET);

    let out = poll(&project, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("env var API_TOKEN is not set"), "{stderr}");

    let out = poll(&project, &[("API_TOKEN", "wrong")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("bad credentials") && stderr.contains(&api.url()),
        "{stderr}"
    );
    assert_eq!(api.log().len(), 1, "a 401 without OAuth is not retried");

    // With the right token the run goes through; the failed runs left no cursor behind.
    let out = poll(&project, &[("API_TOKEN", "right")]);
    assert_ok(&out);
    assert_eq!(id_counts_of(&project.table_dir_of("items")), once_each(300));
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(project.path().join("data/items/source.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["state"]["cursor"], "2024-01-01T00:05:00Z",
        "the newest updated_at seen"
    );
    assert!(state["state"].get("run").is_none(), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_keeps_its_pages_and_the_next_run_resumes_after_them() {
    let project = Project::new();
    let api = FakeApi::start(500, Style::Cursor).await;
    items_pipeline(&project, &api, &format!("{CURSOR}\nmax_retries = 0\npaginate = {{ type = \"cursor\", next = \"/paging/next/after\", param = \"after\" }}"), PARQUET);
    // Pages 1 and 2 answer, page 3 fails for good (no retries): the run fails.
    api.set_delay(Duration::from_millis(50));
    let injector = {
        let api = api.clone();
        tokio::spawn(async move {
            // A hang guard, not a timing assertion: the run asks for page 2 at once.
            let started = std::time::Instant::now();
            while api.log().len() < 2 && started.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            api.fail_next([Failure::Status(500, None)]);
        })
    };
    let out = poll(&project, &[]);
    injector.await.unwrap();
    assert!(!out.status.success(), "the failing page fails the run");
    let stored = id_counts_of(&project.table_dir_of("items"));
    assert!(
        !stored.is_empty() && stored.len() < 500,
        "some pages were stored: {}; stderr:\n{}",
        stored.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stored.values().all(|&n| n == 1));

    api.clear_log();
    let out = poll(&project, &[]);
    assert_ok(&out);
    assert_eq!(id_counts_of(&project.table_dir_of("items")), once_each(500));
    let first = &api.log()[0].path_and_query;
    assert!(
        first.contains("after="),
        "the run resumed at its page, not at the start: {first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pages_pauses_a_run_and_a_refused_resume_page_ends_it_without_duplicates() {
    let project = Project::new();
    let api = FakeApi::start(1000, Style::Cursor).await;
    items_pipeline(&project, &api, &format!("{CURSOR}\nmax_pages = 3\npaginate = {{ type = \"cursor\", next = \"/paging/next/after\", param = \"after\" }}"), PARQUET);
    let out = poll(&project, &[]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_pages"));
    assert_eq!(id_counts_of(&project.table_dir_of("items")), once_each(300));
    // The next poll goes on from page 4.
    assert_ok(&poll(&project, &[]));
    assert_eq!(id_counts_of(&project.table_dir_of("items")), once_each(600));
    assert!(
        api.log()[3].path_and_query.contains("after=300"),
        "{:?}",
        api.log()[3]
    );

    // The page the paused run reached is refused (say its token expired): the
    // run ends with the pages it stored, and the cursor moves to their newest.
    api.fail_next([Failure::Status(400, None)]);
    let out = poll(&project, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ending that run with the pages already stored"),
        "{stderr}"
    );
    assert_eq!(
        id_counts_of(&project.table_dir_of("items")),
        once_each(600),
        "nothing appended twice"
    );
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(project.path().join("data/items/source.json")).unwrap(),
    )
    .unwrap();
    let newest = chrono::DateTime::from_timestamp(BASE_TS + 600, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    assert_eq!(state["state"]["cursor"], newest.as_str());
    assert!(state["state"].get("run").is_none(), "{state}");
    api.clear_log();
    assert_ok(&poll(&project, &[]));
    let first = &api.log()[0].path_and_query;
    assert!(
        first.contains(&format!("updated_after={}", newest.replace(':', "%3A"))),
        "{first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_runs_fetch_changes_and_nothing_older_than_the_lookback() {
    let project = Project::new();
    let api = FakeApi::start(1000, Style::Cursor).await;
    items_pipeline(
        &project,
        &api,
        r#"cursor = { field = "updated_at", param = "updated_after", start = "2023-01-01T00:00:00Z", lookback = "30s" }
paginate = { type = "cursor", next = "/paging/next/after", param = "after" }"#,
        PARQUET,
    );
    assert_ok(&poll(&project, &[]));
    assert_eq!(
        id_counts_of(&project.table_dir_of("items")),
        once_each(1000)
    );

    api.clear_log();
    let touched = [5u64, 17, 900];
    api.touch(&touched, 100);
    assert_ok(&poll(&project, &[]));
    // The lower bound is the newest updated_at of the last run (record 1000)
    // minus the 30 s lookback.
    let lower = chrono::DateTime::from_timestamp(BASE_TS + 1000 - 30, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let first = &api.log()[0].path_and_query;
    assert!(
        first.contains(&format!("updated_after={}", lower.replace(':', "%3A"))),
        "{first}"
    );
    let counts = id_counts_of(&project.table_dir_of("items"));
    let refetched: HashSet<i64> = counts
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(&id, _)| id)
        .collect();
    let within_lookback: HashSet<i64> = (970..=1000).chain([5, 17, 900]).collect();
    assert_eq!(
        refetched, within_lookback,
        "the touched records and those inside the lookback, nothing else"
    );
    assert!(counts.values().all(|&n| n <= 2));

    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(project.path().join("data/items/source.json")).unwrap(),
    )
    .unwrap();
    let newest = chrono::DateTime::from_timestamp(api.updated_at(5), 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    assert_eq!(state["state"]["cursor"], newest.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_5xx_and_a_401_that_renews_the_oauth_token() {
    let project = Project::new();
    let api = FakeApi::start(500, Style::Cursor).await;
    api.set_auth(Auth::OAuth2 {
        client_id: "cid".into(),
        secret: "csecret".into(),
    });
    api.fail_next([
        Failure::Status(429, Some(1)),
        Failure::Status(500, None),
        Failure::Status(503, Some(1)),
    ]);
    items_pipeline(
        &project,
        &api,
        &format!(
            "{CURSOR}\npaginate = {{ type = \"cursor\", next = \"/paging/next/after\", param = \"after\" }}\nauth = {{ type = \"oauth2\", token_url = \"{}\", client_id_env = \"CLIENT_ID\", client_secret_env = \"CLIENT_SECRET\" }}",
            api.token_url()
        ),
        PARQUET,
    );
    let env = [("CLIENT_ID", "cid"), ("CLIENT_SECRET", "csecret")];
    // Revoke the first token while the run is on its third page.
    let revoker = {
        let api = api.clone();
        tokio::spawn(async move {
            while api.log().iter().filter(|l| l.status == 200).count() < 2 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            api.revoke_tokens();
        })
    };
    api.set_delay(Duration::from_millis(20));
    let out = poll(&project, &env);
    assert_ok(&out);
    revoker.await.unwrap();
    assert_eq!(id_counts_of(&project.table_dir_of("items")), once_each(500));
    let log = api.log();
    let statuses: Vec<u16> = log.iter().map(|l| l.status).collect();
    assert_eq!(&statuses[..4], &[429, 500, 503, 200], "{statuses:?}");
    // Retry-After: 1 was honoured (a lower bound on the gap, not a timing of tributary's speed).
    assert!(log[1].at - log[0].at >= Duration::from_secs(1));
    assert!(log[3].at - log[2].at >= Duration::from_secs(1));
    assert_eq!(
        statuses.iter().filter(|&&s| s == 401).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        api.tokens_issued(),
        2,
        "one token, renewed once after the 401"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_slower_than_the_timeout_is_retried() {
    let project = Project::new();
    let api = FakeApi::start(100, Style::None).await;
    api.fail_next([Failure::Slow(Duration::from_secs(5))]);
    items_pipeline(
        &project,
        &api,
        &format!("{CURSOR}\ntimeout = \"1s\""),
        PARQUET,
    );
    let out = poll(&project, &[]);
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("timed out") && stderr.contains("retrying"),
        "{stderr}"
    );
    assert_eq!(id_counts_of(&project.table_dir_of("items")), once_each(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_loses_no_page_and_duplicates_nothing() {
    let project = Project::new();
    let api = FakeApi::start(3000, Style::Cursor).await;
    api.set_page_size(50);
    api.set_delay(Duration::from_millis(25));
    items_pipeline(
        &project,
        &api,
        &format!("{CURSOR}\npaginate = {{ type = \"cursor\", next = \"/paging/next/after\", param = \"after\" }}"),
        "[[sink]]\ntype = \"delta\"\nmode = \"merge\"\n\n[[sink]]\ntype = \"parquet\"\nuri = \"lake/items_parquet\"",
    );
    let mut rng = rand::rng();
    for _ in 0..5 {
        let server = project.start().await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        server.kill9();
    }
    let server = project.start().await;
    let state = project.path().join("data/items/source.json");
    eventually(&project, "the poll run to finish", || {
        std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|s| s["state"].get("run").is_none() && s["state"]["cursor"].is_string())
    })
    .await;
    assert!(server.terminate().success());

    // Append mode: each page exactly once, so no page was skipped or fetched twice.
    assert_eq!(
        id_counts_of(&project.path().join("lake/items_parquet")),
        once_each(3000)
    );
    // Merge mode, read by two engines we did not write.
    let view = read_delta(
        project.table_dir_of("items").to_str().unwrap(),
        &["tributary/items/delta"],
        &["id"],
        &[],
    );
    let ids: Vec<i64> = view
        .rows
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 3000);
    assert_eq!(unique, (1..=3000).collect());
    assert_eq!(view.duckdb.len(), 3000);
    let resumed = project.log().matches("Resuming the poll run").count();
    let cut = project
        .log()
        .matches("Cutting the records of a poll append")
        .count();
    println!(
        "kill -9 mid-run: {resumed} resumed runs, {cut} torn appends cut, {} requests",
        api.log().len()
    );
    assert!(
        resumed >= 1,
        "at least one kill landed mid-run; log:\n{}",
        project.log()
    );
}

#[test]
fn poll_config_errors_name_key_and_fix() {
    let project = Project::new();
    project.write("schemas/item.json", ITEM_SCHEMA);
    project.write(
        "pipelines/items.toml",
        r#"name = "items"
schema = "schemas/item.json"

[source]
type = "poll"
schedule = "every five minutes"
url = "http://api.example.com/items"
headers = { Authorization = "Bearer abc" }
auth = { type = "bearer" }
cursor = { field = "updated_at" }
paginate = { type = "offset", next = "/x" }

[[sink]]
type = "parquet"
"#,
    );
    let out = project.command(&["check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "source.schedule: \"every five minutes\" is not a cron expression",
        "source.url: \"http://api.example.com/items\" is not https; use https://, or set allow_http = true",
        "source.headers.Authorization: credentials do not belong in the file",
        "source.auth.token_env: missing",
        "source.cursor.param: the lower bound is never sent",
        "source.paginate.next: is not used by type = \"offset\"",
        "source.paginate.limit: missing",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

#[test]
fn oauth1_and_the_new_stop_conditions_are_checked_by_name() {
    let project = Project::new();
    project.write("schemas/item.json", ITEM_SCHEMA);
    let write = |auth: &str, paginate: &str| {
        project.write(
            "pipelines/items.toml",
            &format!(
                r#"name = "items"
schema = "schemas/item.json"

[source]
type = "poll"
every = "1h"
url = "https://api.example.com/items"
records = "/items"
{auth}
{paginate}

[[sink]]
type = "parquet"
"#
            ),
        );
        let out = project.command(&["check"]);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = write(
        r#"auth = { type = "oauth1", consumer_key_env = "CK", token_env = "TK", token_secret_env = "TS", signature_method = "RSA-SHA1", realm = "" }"#,
        r#"paginate = { type = "page", total = "total_count", links = "/links" }"#,
    );
    for expected in [
        "source.auth.consumer_secret_env: missing",
        "source.auth.signature_method: unknown signature method \"RSA-SHA1\"",
        "use \"HMAC-SHA256\" (NetSuite) or \"HMAC-SHA1\" (Magento)",
        "source.auth.realm: is empty",
        "source.paginate.total: is not a JSON pointer",
        "source.paginate.total: needs the page size",
        "source.paginate.links: is not used by type = \"page\"",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    let stderr = write(
        r#"auth = { type = "oauth1", consumer_key_env = "CK", consumer_secret_env = "CS", token_env = "TK", token_secret_env = "TS" }"#,
        r#"paginate = { type = "link", has_more = "/hasMore" }"#,
    );
    assert!(
        stderr.contains("source.paginate.has_more: is not used by type = \"link\""),
        "{stderr}"
    );
    // A valid one passes, and --explain shows the method but no secret.
    write(
        r#"auth = { type = "oauth1", realm = "123_SB1", consumer_key_env = "CK", consumer_secret_env = "CS", token_env = "TK", token_secret_env = "TS" }"#,
        r#"paginate = { type = "offset", limit = 10, has_more = "/hasMore", total = "/totalResults" }"#,
    );
    let out = project.command(&["check", "--explain"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "type = \"oauth1\"",
        "signature_method = \"HMAC-SHA256\"",
        "realm = \"123_SB1\"",
        "has_more = \"/hasMore\"",
        "total = \"/totalResults\"",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
