//! The status page in a real browser: headless Chromium loads `/status` of a
//! running server with one healthy and one failing sink; the DOM shows the
//! failing sink's state and error, and the numbers `/api/pipelines` gives.
//! A screenshot is saved beside the test's project (and its path printed).

use std::process::Command;

use serde_json::Value;

use crate::support::*;

/// Chromium's binary: Debian's `chromium` (scripts/test installs it).
fn chromium() -> String {
    std::env::var("TRIBUTARY_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

fn browser(args: &[&str]) -> std::process::Output {
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=6000",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; scripts/test installs Debian's chromium",
                chromium()
            )
        })
}

/// The HTML of `<section data-pipeline="{pipeline}">`.
fn section<'a>(dom: &'a str, pipeline: &str) -> &'a str {
    let start = dom
        .find(&format!("data-pipeline=\"{pipeline}\""))
        .unwrap_or_else(|| panic!("no section for {pipeline} in:\n{dom}"));
    let end = dom[start..]
        .find("</section>")
        .map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

/// The text of the cell of class `class` in the section's row of `sink`.
fn cell(section: &str, sink: &str, class: &str) -> String {
    let row_start = section
        .find(&format!("data-sink=\"{sink}\""))
        .unwrap_or_else(|| panic!("no row for {sink} in:\n{section}"));
    let row = &section[row_start
        ..section[row_start..]
            .find("</tr>")
            .map_or(section.len(), |e| row_start + e)];
    let at = row
        .find(&format!("class=\"{class}"))
        .unwrap_or_else(|| panic!("no {class} cell in:\n{row}"));
    let open = at + row[at..].find('>').unwrap() + 1;
    let close = open + row[open..].find("</td>").unwrap();
    row[open..close].to_string()
}

#[tokio::test]
async fn the_status_page_shows_each_sink_in_a_real_browser() {
    let project = Project::new();
    project.shopify_pipeline("max_age = \"100ms\"", "");
    // The second pipeline's sink cannot write: its directory is a file.
    project.write("blocked", "not a directory");
    project.write(
        "pipelines/stuck.toml",
        r#"name = "stuck"
schema = "schemas/shopify_customer.json"
record_path = "/customers"
[source]
type = "webhook"
path = "/hooks/stuck"
[batch]
max_age = "50ms"
[[sink]]
type = "parquet"
uri = "blocked/table"
"#,
    );
    let server = project.start().await;
    post_customers(&project, 0, 3, 5).await;
    let bad = reqwest::Client::new()
        .post(project.url("/hooks/shopify/customers"))
        .json(&serde_json::json!({"customers": {"id": "not a number"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 202);
    let stuck = reqwest::Client::new()
        .post(project.url("/hooks/stuck"))
        .json(&shopify_customer(1))
        .send()
        .await
        .unwrap();
    assert_eq!(stuck.status(), 202);
    let api = || async {
        reqwest::get(project.url("/api/pipelines"))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let sink_of = |body: &Value, pipeline: &str| -> Value {
        body["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pipeline)
            .unwrap()["sinks"][0]
            .clone()
    };
    let started = std::time::Instant::now();
    loop {
        let body = api().await;
        let (ok, failing) = (sink_of(&body, "shopify_customers"), sink_of(&body, "stuck"));
        if ok["committed_offset"] == 16 && ok["lag_events"] == 0 && failing["state"] == "failing" {
            break;
        }
        assert!(started.elapsed().as_secs() < 30, "never settled: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The page is at `/` of the listener that serves the admin API, too.
    let root = reqwest::get(project.url("/")).await.unwrap();
    assert_eq!(root.status(), 200);
    let page = root.text().await.unwrap();
    let status = reqwest::get(project.url("/status")).await.unwrap();
    assert_eq!(page, status.text().await.unwrap());
    let url = project.url("/status");
    let out = browser(&["--dump-dom", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let body = api().await;

    let healthy = section(&dom, "shopify_customers");
    let expected = sink_of(&body, "shopify_customers");
    assert_eq!(
        cell(healthy, "parquet", "state"),
        expected["state"].as_str().unwrap()
    );
    assert_ne!(expected["state"], "failing");
    assert_eq!(
        cell(healthy, "parquet", "num committed"),
        expected["committed_offset"].to_string()
    );
    assert_eq!(cell(healthy, "parquet", "num lag-events"), "0");
    assert_eq!(
        cell(healthy, "parquet", "last-commit"),
        expected["last_commit"].as_str().unwrap()
    );

    let failing = section(&dom, "stuck");
    let expected = sink_of(&body, "stuck");
    assert_eq!(cell(failing, "parquet", "state"), "failing");
    assert_eq!(
        cell(failing, "parquet", "num lag-events"),
        expected["lag_events"].to_string()
    );
    let error = cell(failing, "parquet", "error");
    assert!(
        error.contains("Upload failed") && error.contains("Not a directory"),
        "{error}"
    );

    let shot = project.path().join("status-page.png");
    let out = browser(&[
        "--window-size=1280,720",
        &format!("--screenshot={}", shot.display()),
        &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    if let Ok(keep) = std::env::var("TRIBUTARY_SCREENSHOT") {
        std::fs::copy(&shot, &keep).unwrap();
        eprintln!("screenshot: {keep}");
    }
    // What the page's table panel fetches: the tables, their newest rows,
    // and the dead letters by reason.
    let get = |path: &str| {
        let url = project.url(path);
        async move { reqwest::get(url).await.unwrap() }
    };
    let tables: Value = get("/api/pipelines/shopify_customers/sample")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        tables["tables"],
        serde_json::json!([
            "shopify_customers_parquet",
            "shopify_customers",
            "shopify_customers_dead_letters"
        ])
    );
    let rows: Value = get("/api/pipelines/shopify_customers/sample?table=shopify_customers")
        .await
        .json()
        .await
        .unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 15);
    let times: Vec<&str> = rows
        .iter()
        .map(|r| r["_received_at"].as_str().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let missing = get("/api/pipelines/shopify_customers/sample?table=nope").await;
    assert_eq!(missing.status(), 404);
    let reasons: Value = get("/api/pipelines/shopify_customers/dead_letters")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reasons.as_array().unwrap().len(), 1, "{reasons}");
    assert_eq!(reasons[0]["count"], 1);
    assert!(
        reasons[0]["reason"].as_str().unwrap().contains("id"),
        "{reasons}"
    );
    server.kill9();
}
