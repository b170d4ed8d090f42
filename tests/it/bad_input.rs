//! Bad requests get their status and a JSON message a person can act on; a
//! value of the wrong type ends in the dead letters with its reason; the server
//! stays up throughout.

use arrow_array::cast::AsArray;

use crate::support::*;

async fn send(request: reqwest::RequestBuilder) -> (u16, String) {
    answer(request.send().await.expect("request")).await
}

async fn answer(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("error bodies are JSON");
    (
        status,
        body["error"]
            .as_str()
            .expect("an error message")
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_request_gets_its_status_and_message() {
    let project = Project::new();
    project.shopify_pipeline("max_age = \"100ms\"", "max_body = \"1KiB\"");
    let server = project.start().await;
    let client = reqwest::Client::new();
    let hook = project.url("/hooks/shopify/customers");

    let (status, message) = send(client.post(&hook).body("{\"customers\": ")).await;
    assert_eq!(status, 400);
    assert!(
        message.contains("not valid JSON") && message.contains("line 1"),
        "{message}"
    );

    let (status, message) = send(client.post(&hook).body("   ")).await;
    assert_eq!(
        (status, message.contains("empty")),
        (400, true),
        "{message}"
    );

    let ndjson = "{\"customers\": {\"id\": 1}}\nnot json\n";
    let (status, message) = send(
        client
            .post(&hook)
            .header("content-type", "application/x-ndjson")
            .body(ndjson),
    )
    .await;
    assert_eq!(
        (status, message.contains("line 2")),
        (400, true),
        "{message}"
    );

    let (status, _) = send(client.post(&hook).body(vec![b'"', 0xff, 0xfe, b'"'])).await;
    assert_eq!(status, 400, "invalid UTF-8");

    let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
    let (status, message) = send(client.post(&hook).body(deep)).await;
    assert_eq!(status, 400);
    assert!(
        message.contains("nests deeper than 128 levels"),
        "{message}"
    );

    let (status, message) = send(client.post(project.url("/hooks/nope")).body("{}")).await;
    assert_eq!(status, 404);
    assert!(
        message.contains("/hooks/nope") && message.contains("source.path"),
        "{message}"
    );

    let response = client.get(&hook).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(answer(response).await.0, 405);

    let big = format!(
        "{{\"customers\": {{\"id\": 1, \"note\": \"{}\"}}}}",
        "x".repeat(2000)
    );
    let (status, message) = send(client.post(&hook).body(big)).await;
    assert_eq!(status, 413);
    assert!(
        message.contains("1KiB") && message.contains("max_body"),
        "{message}"
    );

    // A wrong type is accepted (it is valid JSON) and ends in the dead letters;
    // the good event beside it in the same request still lands.
    let response = client
        .post(&hook)
        .json(&serde_json::json!([{"customers": {"id": "seven"}}, {"customers": {"id": 8}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let ids = accepted_ids(&response.json().await.unwrap());

    let dead_dir = project.path().join("lake/_dead_letters/shopify_customers");
    eventually(&project, "the dead letter and the good row", || {
        !read_parquet(&dead_dir).is_empty() && id_counts(&project.table_dir()).contains_key(&ids[1])
    })
    .await;
    let dead = read_parquet(&dead_dir);
    assert_eq!(dead.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let row = |name: &str| {
        dead[0]
            .column_by_name(name)
            .unwrap()
            .as_string::<i32>()
            .value(0)
            .to_string()
    };
    assert_eq!(row("_event_id"), ids[0]);
    assert!(
        row("reason").contains("'id'") && row("reason").contains("seven"),
        "{}",
        row("reason")
    );
    assert_eq!(row("raw"), r#"{"customers":{"id":"seven"}}"#);
    assert_eq!(row("pipeline"), "shopify_customers");
    assert!(!id_counts(&project.table_dir()).contains_key(&ids[0]));

    // Still up and accepting.
    assert_eq!(project.health().await, 200);
    assert_eq!(
        client
            .post(&hook)
            .json(&shopify_customer(9))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_answers_503_with_retry_after() {
    let project = Project::new();
    // The sink cannot write (its directory is a file), so the log only grows.
    project.write("blocked", "not a directory");
    project.write(
        "pipelines/stuck.toml",
        r#"name = "stuck"
schema = "schemas/shopify_customer.json"
record_path = "/customers"
[source]
type = "webhook"
path = "/hooks/stuck"
[buffer]
max_bytes = "64KiB"
[batch]
max_age = "50ms"
[[sink]]
type = "parquet"
uri = "blocked/table"
"#,
    );
    let server = project.start().await;
    let client = reqwest::Client::new();
    let batch: Vec<_> = (0..20).map(shopify_customer).collect();
    let mut accepted = 0;
    let response = loop {
        let response = client
            .post(project.url("/hooks/stuck"))
            .json(&batch)
            .send()
            .await
            .unwrap();
        if response.status() != 202 {
            break response;
        }
        accepted += 1;
        assert!(accepted < 1000, "the buffer never filled up");
    };
    assert!(accepted > 0);
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, message) = answer(response).await;
    assert_eq!(status, 503);
    assert!(
        message.contains("buffer") && message.contains("64KiB") && message.contains("retry"),
        "{message}"
    );
    eventually(&project, "the sink reporting its failure", || {
        project.log().contains("Upload failed; retrying")
    })
    .await;
    assert_eq!(project.health().await, 200);
    // Alive, but not ready, and /readyz says why.
    let ready = reqwest::get(project.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let problems = ready.text().await.unwrap();
    assert!(
        problems.contains("pipeline stuck: its buffer is full"),
        "{problems}"
    );
    assert!(
        problems.contains("sink parquet is failing: Upload failed"),
        "{problems}"
    );
    server.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_max_body_gets_413_while_reading() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let project = Project::new();
    project.shopify_pipeline("", "max_body = \"1KiB\"");
    let server = project.start().await;
    // No Content-Length: the limit must hold while the body streams in.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", project.port))
        .await
        .unwrap();
    let chunk = "x".repeat(600);
    let request = format!(
        "POST /hooks/shopify/customers HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("max_body"), "{answer}");
    server.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_rate_limit_get_429_with_retry_after() {
    let project = Project::new();
    project.shopify_pipeline("max_age = \"100ms\"", "rate_limit = 5");
    let _server = project.start().await;
    let client = reqwest::Client::new();
    let hook = project.url("/hooks/shopify/customers");
    let (mut accepted, mut limited) = (0, 0);
    // All at once: 40 requests reach the limiter together, whatever each
    // one's fsync costs (sent one after another, 35 of them would have to
    // take more than 7 s for none to be limited).
    let responses = futures::future::join_all(
        (0..40).map(|id| client.post(&hook).json(&shopify_customer(id)).send()),
    )
    .await;
    for response in responses {
        let response = response.unwrap();
        match response.status().as_u16() {
            202 => accepted += 1,
            429 => {
                limited += 1;
                assert_eq!(response.headers()["retry-after"], "1");
                let (_, message) = answer(response).await;
                assert!(
                    message.contains("at most 5 requests per second"),
                    "{message}"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    // A burst of 5 passes; 40 requests at once cannot all fit.
    assert!(
        accepted >= 5 && limited >= 1,
        "{accepted} accepted, {limited} limited"
    );
}
