//! The shipped NetSuite and Magento examples against fakes of their APIs
//! (`support/erp_fake.py`) that check every OAuth 1.0a signature with
//! oauthlib, each run through a backfill with kill -9 mid-run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use arrow_array::Array;

use super::*;

/// The credentials the fakes accept (NetSuite-like lengths: 64 hex digits).
const CONSUMER_KEY: &str = "ef2b6e1c0b5d4d3aa1f0c9e8d7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8";
const CONSUMER_SECRET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const TOKEN_SECRET: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";
const REALM: &str = "1234567_SB1";

/// A running `erp_fake.py`.
struct ErpFake {
    child: Child,
    base: String,
    log: PathBuf,
}

impl ErpFake {
    async fn start(dir: &Path, kind: &str, records: u32, fail_every: u32) -> Self {
        let port = free_port();
        let log = dir.join(format!("{kind}-requests.jsonl"));
        let python = crate::support::python();
        let child = Command::new(python)
            .args([
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support/erp_fake.py"),
                &port.to_string(),
                kind,
                &records.to_string(),
                log.to_str().unwrap(),
                &fail_every.to_string(),
            ])
            .env("FAKE_CONSUMER_KEY", CONSUMER_KEY)
            .env("FAKE_CONSUMER_SECRET", CONSUMER_SECRET)
            .env("FAKE_TOKEN", TOKEN)
            .env("FAKE_TOKEN_SECRET", TOKEN_SECRET)
            .envs((kind == "netsuite").then_some(("FAKE_REALM", REALM)))
            .stdout(Stdio::null())
            .spawn()
            .expect("erp_fake.py (scripts/test installs oauthlib)");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "erp_fake.py did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Every request answered so far.
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for ErpFake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped pipeline `name`, with `edits` applied line by line (a line
/// starting with the key is replaced), written into `project` with its schema.
fn shipped(project: &Project, name: &str, schema: &str, edits: &[(&str, String)]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join(format!("pipelines/{name}.toml"))).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        match edits.iter().find(|(start, _)| line.starts_with(start)) {
            Some((_, replacement)) => out.push(replacement.clone()),
            None => out.push(line.to_string()),
        }
    }
    for (start, _) in edits {
        assert!(
            text.lines().any(|l| l.starts_with(start)),
            "{name} has no line {start}"
        );
    }
    project.write(&format!("pipelines/{name}.toml"), &out.join("\n"));
    project.write(
        &format!("schemas/{schema}.json"),
        &std::fs::read_to_string(root.join(format!("schemas/{schema}.json"))).unwrap(),
    );
}

/// The `id` column of every Parquet file under `dir`, as text, with counts.
fn text_id_counts(dir: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for batch in read_parquet(dir) {
        let column = batch.column_by_name("id").expect("id column");
        for row in 0..column.len() {
            let id = match column.as_string_opt::<i32>() {
                Some(strings) => strings.value(row).to_string(),
                None => column.as_primitive::<Int64Type>().value(row).to_string(),
            };
            *counts.entry(id).or_default() += 1;
        }
    }
    counts
}

/// Starts `tributary run` and kills it with -9 at random moments, `kills`
/// times, then lets a last run finish the backfill.
async fn backfill_with_kills(project: &Project, pipeline: &str, env: &[(&str, &str)], kills: u32) {
    let mut rng = rand::rng();
    for _ in 0..kills {
        let server = project.start_with_env(env).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
        server.kill9();
    }
    let server = project.start_with_env(env).await;
    let state = project.path().join(format!("data/{pipeline}/source.json"));
    eventually(project, "the poll run to finish", || {
        std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|s| s["state"].get("run").is_none() && s["state"]["cursor"].is_string())
    })
    .await;
    assert!(server.terminate().success());
    let resumed = project.log().matches("Resuming the poll run").count();
    println!("{pipeline}: {resumed} runs resumed after kill -9");
    assert!(
        resumed >= 1,
        "at least one kill landed mid-run; log:\n{}",
        project.log()
    );
}

/// Every request was signed as the fake demands, 429s were retried with a
/// fresh signature, and nothing was refused.
fn assert_signed(requests: &[serde_json::Value], method: &str, realm: Option<&str>) {
    assert!(!requests.is_empty());
    for r in requests {
        assert_eq!(r["valid"], true, "oauthlib refused a signature: {r}");
        assert_eq!(r["signature_method"], method, "{r}");
        assert_eq!(r["realm"].as_str(), realm, "{r}");
    }
    let statuses: Vec<i64> = requests
        .iter()
        .map(|r| r["status"].as_i64().unwrap())
        .collect();
    assert!(!statuses.contains(&401), "{statuses:?}");
    let throttled: Vec<usize> = (0..requests.len())
        .filter(|&i| statuses[i] == 429)
        .collect();
    assert!(!throttled.is_empty(), "the fake throttled some requests");
    // The try after a 429 asked for the same page, signed anew (the fake
    // refuses a nonce it has seen).
    let retried = throttled
        .iter()
        .filter(|&&i| i + 1 < requests.len() && requests[i + 1]["path"] == requests[i]["path"])
        .count();
    assert!(retried >= 1, "a 429 was retried with the same request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_netsuite_example_backfills_through_suiteql_with_oauth1_across_kill_9() {
    let project = Project::new();
    let fake = ErpFake::start(project.path(), "netsuite", 1500, 7).await;
    shipped(
        &project,
        "netsuite_customers",
        "netsuite_customer",
        &[
            (
                "url = ",
                format!(
                    "url = \"{}/services/rest/query/v1/suiteql\"\nallow_http = true",
                    fake.base
                ),
            ),
            (
                "auth = ",
                format!(
                    r#"auth = {{ type = "oauth1", realm = "{REALM}", signature_method = "HMAC-SHA256", consumer_key_env = "NETSUITE_CONSUMER_KEY", consumer_secret_env = "NETSUITE_CONSUMER_SECRET", token_env = "NETSUITE_TOKEN_ID", token_secret_env = "NETSUITE_TOKEN_SECRET" }}"#
                ),
            ),
            // Smaller pages, so the kills land mid-run.
            (
                "paginate = ",
                r#"paginate = { type = "offset", limit = 50, has_more = "/hasMore" }"#.into(),
            ),
            ("max_age = ", "max_age = \"200ms\"".into()),
            // No scheduled run during the test: only the backfill.
            ("schedule = ", "every = \"24h\"".into()),
        ],
    );
    let env = [
        ("NETSUITE_CONSUMER_KEY", CONSUMER_KEY),
        ("NETSUITE_CONSUMER_SECRET", CONSUMER_SECRET),
        ("NETSUITE_TOKEN_ID", TOKEN),
        ("NETSUITE_TOKEN_SECRET", TOKEN_SECRET),
    ];
    backfill_with_kills(&project, "netsuite_customers", &env, 3).await;

    let requests = fake.requests();
    assert_signed(&requests, "HMAC-SHA256", Some(REALM));
    for r in &requests {
        assert_eq!(r["method"], "POST");
        assert!(
            r["body"]
                .as_str()
                .unwrap()
                .contains("TO_TIMESTAMP('2023-12-31T23:50:00Z'"),
            "start minus the 10 min lookback: {r}"
        );
    }
    // The last page said hasMore = false: no request went past it.
    assert!(requests
        .iter()
        .all(|r| !r["path"].as_str().unwrap().contains("offset=1500")));

    // The append sink holds every row exactly once; the merge table too.
    let expected: HashMap<String, usize> = (1..=1500).map(|i| (i.to_string(), 1)).collect();
    assert_eq!(
        text_id_counts(&project.table_dir_of("netsuite_customers")),
        expected
    );
    let view = read_delta(
        project
            .path()
            .join("lake/netsuite_customers_latest")
            .to_str()
            .unwrap(),
        &["tributary/netsuite_customers/latest"],
        &["id", "lastmodified"],
        &[],
    );
    let ids: HashSet<String> = view
        .rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(view.rows.len(), 1500);
    assert_eq!(ids, expected.keys().cloned().collect());
    assert_eq!(view.duckdb.len(), 1500);
    assert!(
        !project
            .path()
            .join("lake/_dead_letters/netsuite_customers")
            .exists(),
        "every row fit the shipped schema"
    );
    println!(
        "netsuite: {} requests, {} throttled",
        requests.len(),
        requests.iter().filter(|r| r["status"] == 429).count(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_magento_example_backfills_by_total_count_with_oauth1_across_kill_9() {
    let project = Project::new();
    // 1200 records in pages of 50: the last page is full, so only
    // total_count ends the run (a page past it would repeat the last one).
    let fake = ErpFake::start(project.path(), "magento", 1200, 9).await;
    let edits = |method: &str| {
        vec![
            (
                "url = ",
                format!("url = \"{}/rest/V1/products\"\nallow_http = true", fake.base),
            ),
            (
                "auth = ",
                format!(
                    r#"auth = {{ type = "oauth1", signature_method = "{method}", consumer_key_env = "MAGENTO_CONSUMER_KEY", consumer_secret_env = "MAGENTO_CONSUMER_SECRET", token_env = "MAGENTO_ACCESS_TOKEN", token_secret_env = "MAGENTO_ACCESS_TOKEN_SECRET" }}"#
                ),
            ),
            (
                "paginate = ",
                r#"paginate = { type = "page", param = "searchCriteria[currentPage]", limit = 50, limit_param = "searchCriteria[pageSize]", total = "/total_count" }"#.into(),
            ),
            ("max_age = ", "max_age = \"200ms\"".into()),
            ("schedule = ", "every = \"24h\"".into()),
        ]
    };
    shipped(
        &project,
        "magento_products",
        "magento_product",
        &edits("HMAC-SHA256"),
    );
    let env = [
        ("MAGENTO_CONSUMER_KEY", CONSUMER_KEY),
        ("MAGENTO_CONSUMER_SECRET", CONSUMER_SECRET),
        ("MAGENTO_ACCESS_TOKEN", TOKEN),
        ("MAGENTO_ACCESS_TOKEN_SECRET", TOKEN_SECRET),
    ];
    backfill_with_kills(&project, "magento_products", &env, 3).await;

    let requests = fake.requests();
    assert_signed(&requests, "HMAC-SHA256", None);
    let pages: Vec<&str> = requests
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert!(
        pages.iter().all(|p| p.starts_with("/rest/V1/products?")
            && p.contains("condition_type%5D=gteq")
            && p.contains("%5Bvalue%5D=2023-12-31+23%3A58%3A00")),
        "{:?}",
        pages.first()
    );
    assert!(
        !pages.iter().any(|p| p.contains("currentPage%5D=25")),
        "total_count ended the run at page 24"
    );
    assert_eq!(
        text_id_counts(&project.table_dir_of("magento_products")),
        (1..=1200)
            .map(|i| (i.to_string(), 1))
            .collect::<HashMap<_, _>>()
    );
    let view = read_delta(
        project
            .path()
            .join("lake/magento_products_latest")
            .to_str()
            .unwrap(),
        &["tributary/magento_products/latest"],
        &["id", "updated_at"],
        &[],
    );
    let ids: HashSet<i64> = view
        .rows
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!((view.rows.len(), view.duckdb.len()), (1200, 1200));
    assert_eq!(ids, (1..=1200).collect());
    assert!(
        !project
            .path()
            .join("lake/_dead_letters/magento_products")
            .exists(),
        "every product fit the shipped schema"
    );

    // The next run, signed with HMAC-SHA1, starts 2 minutes before the
    // newest updated_at in Magento's own form, and asks for one page.
    shipped(
        &project,
        "magento_products",
        "magento_product",
        &edits("HMAC-SHA1"),
    );
    let before = requests.len();
    let out = project.command_with_env(&["poll", "magento_products"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rerun = &fake.requests()[before..];
    assert_signed_sha1(rerun);
    let first = rerun[0]["path"].as_str().unwrap();
    // Record 1200 was updated at 00:20:00; minus 2 minutes.
    assert!(
        first.contains("%5Bvalue%5D=2024-01-01+00%3A18%3A00"),
        "{first}"
    );
}

/// Like [`assert_signed`] for a short run that may see no 429.
fn assert_signed_sha1(requests: &[serde_json::Value]) {
    assert!(!requests.is_empty());
    for r in requests {
        assert_eq!(r["valid"], true, "oauthlib refused a signature: {r}");
        assert_eq!(r["signature_method"], "HMAC-SHA1", "{r}");
    }
}

/// A wrong secret is refused by the provider and the run fails naming the
/// provider's answer; no record is stored and the cursor does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_oauth1_secret_fails_the_run_with_the_providers_answer() {
    let project = Project::new();
    let fake = ErpFake::start(project.path(), "netsuite", 10, 0).await;
    shipped(
        &project,
        "netsuite_customers",
        "netsuite_customer",
        &[
            (
                "url = ",
                format!(
                    "url = \"{}/services/rest/query/v1/suiteql\"\nallow_http = true",
                    fake.base
                ),
            ),
            (
                "auth = ",
                format!(
                    r#"auth = {{ type = "oauth1", realm = "{REALM}", consumer_key_env = "CK", consumer_secret_env = "CS", token_env = "TK", token_secret_env = "TS" }}"#
                ),
            ),
        ],
    );
    let out = project.command_with_env(
        &["poll", "netsuite_customers"],
        &[
            ("CK", CONSUMER_KEY),
            ("CS", "not-the-secret"),
            ("TK", TOKEN),
            ("TS", TOKEN_SECRET),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("INVALID_LOGIN"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-secret"),
        "no secret in the error: {stderr}"
    );
    assert_eq!(fake.requests().len(), 1, "a 401 is not retried");
}

/// SuiteQL paged by the `rel = "next"` entry of the body's `links` array
/// instead of offsets: the next link carries its own query, is re-signed,
/// and the body goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netsuite_pages_can_follow_the_next_link_of_the_body() {
    let project = Project::new();
    let fake = ErpFake::start(project.path(), "netsuite", 320, 0).await;
    shipped(
        &project,
        "netsuite_customers",
        "netsuite_customer",
        &[
            (
                "url = ",
                format!(
                    "url = \"{}/services/rest/query/v1/suiteql\"\nallow_http = true\nquery = {{ limit = \"50\" }}",
                    fake.base
                ),
            ),
            (
                "auth = ",
                format!(
                    r#"auth = {{ type = "oauth1", realm = "{REALM}", consumer_key_env = "CK", consumer_secret_env = "CS", token_env = "TK", token_secret_env = "TS" }}"#
                ),
            ),
            ("paginate = ", r#"paginate = { type = "link", links = "/links" }"#.into()),
        ],
    );
    let out = project.command_with_env(
        &["poll", "netsuite_customers"],
        &[
            ("CK", CONSUMER_KEY),
            ("CS", CONSUMER_SECRET),
            ("TK", TOKEN),
            ("TS", TOKEN_SECRET),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = fake.requests();
    let paths: Vec<&str> = requests
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths.len(), 7, "{paths:?}");
    assert!(
        paths[1].ends_with("?limit=50&offset=50") && paths[6].ends_with("offset=300"),
        "{paths:?}"
    );
    assert!(requests
        .iter()
        .all(|r| r["valid"] == true && r["body"].as_str().unwrap().contains("SELECT")));
    assert_eq!(
        text_id_counts(&project.table_dir_of("netsuite_customers")),
        (1..=320)
            .map(|i| (i.to_string(), 1))
            .collect::<HashMap<_, _>>()
    );
}
