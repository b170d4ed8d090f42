//! The admin API without `admin.token_env`, as a web page on the same machine
//! would reach it: a request naming another host (a page on a DNS-rebinding
//! domain, or a reverse proxy) gets 421, a state-changing request from
//! another site's page gets 403, each with a message saying what to do;
//! loopback names, tools without an `Origin`, webhooks, `/healthz`, `/readyz`
//! (its verdict) and `/metrics` answer as before.

use reqwest::header::{CONTENT_TYPE, HOST, ORIGIN};
use serde_json::Value;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_admin_api_answers_loopback_names_and_this_machines_pages_only() {
    let project = Project::new();
    project.shopify_pipeline("max_age = \"200ms\"", "");
    let _server = project.start().await;
    let client = reqwest::Client::new();
    let get = |path: &str, host: &str| {
        client
            .get(project.url(path))
            .header(HOST, host.to_string())
            .send()
    };
    let port = project.port;

    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "[::1]".to_string(),
    ] {
        let answer = get("/api/pipelines", &host).await.unwrap();
        assert_eq!(answer.status(), 200, "{host}");
    }
    // A rebinding page's own name, or a proxy's.
    for path in [
        "/api/pipelines",
        "/status",
        "/api/pipelines/shopify_customers/sample",
        "/api/pipelines/shopify_customers/dead_letters",
    ] {
        let answer = get(path, "attacker.example:8080").await.unwrap();
        assert_eq!(answer.status(), 421, "{path}");
        let body: Value = answer.json().await.unwrap();
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains("Host: attacker.example:8080")
                && message.contains("http://127.0.0.1:<port>")
                && message.contains("admin.token_env"),
            "{message}"
        );
    }
    // /readyz answers any probe, with its reasons only to a loopback name.
    let probe: Value = get("/readyz", "10.0.0.5:8080")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(probe["problems"].is_u64(), "a count only: {probe}");
    let local: Value = get("/readyz", &format!("localhost:{port}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(local["problems"].is_array(), "the reasons: {local}");
    // A scraper and a probe on this machine may use any name; webhooks too.
    assert_eq!(
        get("/metrics", "scrape-target.internal")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("/healthz", "attacker.example").await.unwrap().status(),
        200
    );
    let hook = client
        .post(project.url("/hooks/shopify/customers"))
        .header(HOST, "hooks.example.com")
        .json(&shopify_customer(1))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 202);

    // A replay from another site's page is refused; from this machine's own
    // page or a tool without an Origin it runs.
    let replay = |origin: Option<String>| {
        let mut request = client
            .post(project.url("/api/pipelines/shopify_customers/replay"))
            .header(CONTENT_TYPE, "application/json")
            .body("{}");
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        request.send()
    };
    for origin in ["https://attacker.example", "null"] {
        let answer = replay(Some(origin.to_string())).await.unwrap();
        assert_eq!(answer.status(), 403, "{origin}");
        let body: Value = answer.json().await.unwrap();
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("Origin: {origin}")) && message.contains("admin.token_env"),
            "{message}"
        );
    }
    for origin in [Some(format!("http://127.0.0.1:{port}")), None] {
        let answer = replay(origin.clone()).await.unwrap();
        assert_eq!(answer.status(), 200, "{origin:?}");
        let lines = answer.text().await.unwrap();
        assert!(
            lines
                .lines()
                .last()
                .is_some_and(|l| l.contains("\"done\":true")),
            "{lines}"
        );
    }
}
