//! A bad-input corpus against a running server while a good client keeps
//! posting: every bad request gets its clear answer, slow and idle clients are
//! cut off by the server's timeouts and connection cap, and every good request
//! is answered 202 and lands in the table. Then TLS and the admin listener.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Writes `head` (and no more) and returns how long until the server closed
/// the connection, reading whatever it answered. Trickles a byte every 300 ms.
async fn hold_open(
    mut stream: TcpStream,
    head: &'static [u8],
    trickle: &'static [u8],
) -> (Duration, String) {
    stream.write_all(head).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    loop {
        let _ = stream.write_all(trickle).await;
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        // A hang guard, not a timing assertion.
        assert!(started.elapsed() < Duration::from_secs(60), "never cut off");
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_answer_while_a_good_client_gets_202s() {
    let project = Project::new();
    project.write(
        "tributary.toml",
        &format!(
            "listen = \"127.0.0.1:{}\"\n[server]\nheader_timeout = \"2s\"\nbody_timeout = \"2s\"\nmax_connections = 48\n",
            project.port
        ),
    );
    project.shopify_pipeline("max_age = \"200ms\"", "max_body = \"1MiB\"");
    let _server = project.start().await;
    let hook = project.url("/hooks/shopify/customers");

    // The good client: one keep-alive connection, a post every 20 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let good = {
        let (stop, hook) = (stop.clone(), hook.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut ids = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let response = client
                    .post(&hook)
                    .json(&shopify_customer(n))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202, "good request {n}");
                ids.extend(accepted_ids(&response.json().await.unwrap()));
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ids
        })
    };

    let client = reqwest::Client::new();
    let post = |body: Vec<u8>, content_type: &str| {
        client
            .post(&hook)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let expect = |status: u16, contains: &'static str| {
        move |(got, message): (u16, String)| {
            assert_eq!(got, status, "{message}");
            assert!(
                message.contains(contains),
                "{contains:?} not in {message:?}"
            );
        }
    };
    let answer = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.expect("a JSON answer");
        (
            status,
            body["error"].as_str().unwrap_or_default().to_string(),
        )
    };
    let json = "application/json";
    let cases: Vec<(&str, Vec<u8>, &str, u16, &'static str)> = vec![
        (
            "malformed",
            b"{\"customers\": {\"id\": 1,".to_vec(),
            json,
            400,
            "not valid JSON",
        ),
        (
            "trailing garbage",
            b"{} {}".to_vec(),
            json,
            400,
            "not valid JSON",
        ),
        (
            "invalid UTF-8",
            vec![b'{', b'"', 0xc3, 0x28, b'"', b':', b'1', b'}'],
            json,
            400,
            "not valid JSON",
        ),
        (
            "10k-deep nesting",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            json,
            400,
            "nests deeper than 128",
        ),
        (
            "10k-deep objects",
            format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)).into_bytes(),
            json,
            400,
            "nests deeper than 128",
        ),
        (
            "XML",
            b"<customer><id>1</id></customer>".to_vec(),
            "application/xml",
            415,
            "application/xml",
        ),
        (
            "a form",
            b"payload=%7B%7D".to_vec(),
            "application/x-www-form-urlencoded",
            415,
            "not JSON",
        ),
        ("NUL bytes", vec![0u8; 64], "text/plain", 415, "text/plain"),
        ("empty", Vec::new(), json, 400, "empty"),
    ];
    for (name, body, content_type, status, contains) in cases {
        println!("case: {name}");
        expect(status, contains)(answer(post(body, content_type).await.unwrap()).await);
    }
    // A body declared larger than max_body is refused before it is read.
    let mut raw = TcpStream::connect(("127.0.0.1", project.port))
        .await
        .unwrap();
    raw.write_all(b"POST /hooks/shopify/customers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n[0,0,0,")
        .await
        .unwrap();
    let mut refused = String::new();
    let _ = raw.read_to_string(&mut refused).await;
    assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
    assert!(refused.contains("max_body"), "{refused}");
    // A huge array inside max_body is accepted whole: 20 000 events in one append.
    let many: Vec<serde_json::Value> = (0..20_000)
        .map(|i| serde_json::json!({"customers": {"id": 100_000 + i}}))
        .collect();
    let response = client.post(&hook).json(&many).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let big_ids = accepted_ids(&response.json().await.unwrap());
    assert_eq!(big_ids.len(), 20_000);

    // Slow-loris: headers a byte at a time are cut off by header_timeout;
    // a body trickle gets 408 from body_timeout.
    // Both connect before the flood below: connected from a spawned task,
    // one could come after the flood had filled max_connections and be
    // closed at once (seen once in CI).
    let port = project.port;
    let connect = || TcpStream::connect(("127.0.0.1", port));
    let slow_headers = tokio::spawn(hold_open(
        connect().await.unwrap(),
        b"POST /hooks/shopify/customers HTTP/1.1\r\nHost: x\r\n",
        b"X",
    ));
    let slow_body = tokio::spawn(hold_open(
        connect().await.unwrap(),
        b"POST /hooks/shopify/customers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n[",
        b" ",
    ));
    // A connection flood beyond max_connections: the extra ones are closed at
    // once, the rest when header_timeout passes without a request.
    let mut flood = Vec::new();
    for _ in 0..60 {
        flood.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let flood_started = Instant::now();
    let closed_at = futures::future::join_all(flood.into_iter().map(|mut stream| async move {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("a flood connection is closed by the server")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        flood_started.elapsed()
    }))
    .await;
    let (held, _) = slow_headers.await.unwrap();
    let (body_held, body_answer) = slow_body.await.unwrap();
    assert!(
        held >= Duration::from_secs(1),
        "cut by the timeout, not at once: {held:?}"
    );
    assert!(body_held >= Duration::from_secs(1), "{body_held:?}");
    assert!(body_answer.starts_with("HTTP/1.1 408"), "{body_answer}");
    assert!(body_answer.contains("server.body_timeout"), "{body_answer}");
    let at_once = closed_at
        .iter()
        .filter(|t| **t < Duration::from_secs(1))
        .count();
    assert!(
        at_once >= 10,
        "connections beyond the cap closed at once: {closed_at:?}"
    );
    assert!(
        project.log().contains("server.max_connections"),
        "the cap is logged"
    );

    // New clients are served again once the flood is gone.
    let response = reqwest::Client::new()
        .post(&hook)
        .json(&shopify_customer(7))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let mut stored: Vec<String> = accepted_ids(&response.json().await.unwrap());
    stop.store(true, Ordering::Relaxed);
    let good_ids = good.await.unwrap();
    assert!(
        good_ids.len() > 50,
        "the good client kept going: {}",
        good_ids.len()
    );
    stored.extend(good_ids);
    stored.extend(big_ids);
    eventually(&project, "every accepted event in the table", || {
        id_counts(&project.table_dir()).len() >= stored.len()
    })
    .await;
    let counts = id_counts(&project.table_dir());
    assert_eq!(counts.len(), stored.len());
    assert!(stored.iter().all(|id| counts.get(id) == Some(&1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_listen_and_an_admin_listener_with_a_bearer_token() {
    let project = Project::new();
    std::fs::create_dir_all(project.path().join("certs")).unwrap();
    certificates(&project.path().join("certs"));
    let admin_port = free_port();
    project.write(
        "tributary.toml",
        &format!(
            "listen = \"127.0.0.1:{}\"\n[tls]\ncert = \"certs/server.pem\"\nkey = \"certs/server.key\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_env = \"ADMIN_TOKEN\"\n",
            project.port
        ),
    );
    project.shopify_pipeline("max_age = \"200ms\"", "");
    // Without the token's env var the server refuses to start, naming it.
    let out = project.command(&["run"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ADMIN_TOKEN") && stderr.contains("not set"),
        "{stderr}"
    );

    // Project::start waits on plain /healthz at `listen`; here that is TLS, so
    // wait on the admin listener instead.
    let server = Server::adopt(
        std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .arg("run")
            .current_dir(project.path())
            .env("ADMIN_TOKEN", "s3cret-token")
            .stderr(std::fs::File::create(project.path().join("run.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let admin = format!("http://127.0.0.1:{admin_port}");
    let plain = reqwest::Client::new();
    let started = Instant::now();
    while plain.get(format!("{admin}/healthz")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no start: {}",
            project.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca = reqwest::Certificate::from_pem(
        &std::fs::read(project.path().join("certs/ca.pem")).unwrap(),
    )
    .unwrap();
    let tls = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{}", project.port);
    let response = tls
        .post(format!("{base}/hooks/shopify/customers"))
        .json(&shopify_customer(1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let ids = accepted_ids(&response.json().await.unwrap());
    // Plain HTTP to the TLS port gets no answer.
    assert!(plain
        .post(project.url("/hooks/shopify/customers"))
        .json(&shopify_customer(2))
        .send()
        .await
        .is_err());
    // The admin API is on its own listener only, behind the token.
    let on_main = tls
        .get(format!("{base}/api/pipelines"))
        .send()
        .await
        .unwrap();
    assert_eq!(on_main.status(), 404);
    assert_eq!(
        tls.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let refused = plain
        .get(format!("{admin}/api/pipelines"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("admin.token_env"));
    let wrong = plain
        .get(format!("{admin}/api/pipelines"))
        .bearer_auth("s3cret-tokeN")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    eventually(&project, "the event in the table", || {
        id_counts(&project.table_dir()).len() == 1
    })
    .await;
    let listed: serde_json::Value = plain
        .get(format!("{admin}/api/pipelines"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pipeline = &listed["pipelines"][0];
    assert_eq!(pipeline["name"], "shopify_customers");
    assert_eq!(pipeline["source"], "webhook");
    assert_eq!(pipeline["log"]["end_offset"], 1);
    assert_eq!(pipeline["sinks"][0]["committed_offset"], 1, "{listed}");
    assert_eq!(pipeline["sinks"][0]["lag_events"], 0);
    assert_eq!(
        id_counts(&project.table_dir())
            .into_keys()
            .collect::<Vec<_>>(),
        ids
    );
    assert!(
        !project.log().contains("s3cret-token"),
        "the token never reaches the log"
    );
    server.kill9();

    // A key that does not match the certificate is refused at start, naming both files.
    std::fs::create_dir_all(project.path().join("other")).unwrap();
    certificates(&project.path().join("other"));
    std::fs::copy(
        project.path().join("other/server.key"),
        project.path().join("certs/server.key"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("run")
        .current_dir(project.path())
        .env("ADMIN_TOKEN", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tls.cert") && stderr.contains("tls.key"),
        "{stderr}"
    );
}
