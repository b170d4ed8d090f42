//! `tributary tap`: a pipeline's events as they are acknowledged, from a
//! real server, to a real `tributary tap` process.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::support::*;

/// `tributary tap shopify_customers <args>` in `project`: the process and
/// its lines, each parsed as JSON as it comes.
fn start_tap(project: &Project, args: &[&str]) -> (Child, Receiver<serde_json::Value>) {
    let mut tap = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["tap", "shopify_customers"])
        .args(args)
        .current_dir(project.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, seen) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = tap.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(serde_json::from_str(&line).expect("each line is JSON"));
        }
    });
    (tap, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_prints_each_event_acknowledged_after_it_started() {
    let project = Project::new();
    project.shopify_pipeline("max_age = \"100ms\"", "");
    let _server = project.start().await;
    // Before the tap: not shown.
    let before = post_customers(&project, 0, 1, 3).await;

    let (mut tap, seen) = start_tap(&project, &[]);
    // The tap shows what is acknowledged once it runs: post until it shows one.
    let started = Instant::now();
    let mut first = 100;
    let shown = loop {
        post_customers(&project, first, 1, 1).await;
        first += 1;
        if let Ok(line) = seen.recv_timeout(Duration::from_millis(200)) {
            break line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the tap showed nothing"
        );
    };
    assert!(shown["body"]["customers"]["id"].is_u64(), "{shown}");
    // Then every event, each once, with its id, time and body.
    let posted = post_customers(&project, 1000, 4, 5).await;
    let mut got = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < posted.len() && Instant::now() < deadline {
        let Ok(line) = seen.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let id = line["id"].as_str().unwrap().to_string();
        assert!(
            !before.contains(&id),
            "an event from before the tap: {line}"
        );
        if posted.contains(&id) {
            assert!(line["received_at"].as_str().is_some(), "{line}");
            assert!(line["body"]["customers"]["email"].is_string(), "{line}");
            assert!(got.insert(id), "shown twice: {line}");
        }
    }
    assert_eq!(got, posted);
    tap.kill().unwrap();
    tap.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_dead_letters_prints_each_new_dead_letter_with_its_reason() {
    let project = Project::new();
    project.shopify_pipeline("max_age = \"100ms\"", "");
    let _server = project.start().await;
    let client = reqwest::Client::new();
    let bad = |n: u64| serde_json::json!({"customers": {"id": format!("not-a-number-{n}")}});
    // One from before the tap: not shown.
    let answer = client
        .post(project.url("/hooks/shopify/customers"))
        .json(&bad(0))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let dead = project.path().join("lake/_dead_letters/shopify_customers");
    eventually(&project, "the first dead letter's file", || {
        std::fs::read_dir(&dead).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        })
    })
    .await;

    let (mut tap, seen) = start_tap(&project, &["--dead-letters"]);
    // Give the tap its look at the files there now, then dead letters and
    // good events.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for n in 1..=3 {
        for body in [bad(n), shopify_customer(n)] {
            let answer = client
                .post(project.url("/hooks/shopify/customers"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 202);
        }
    }
    let mut shown = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while shown.len() < 3 && Instant::now() < deadline {
        if let Ok(line) = seen.recv_timeout(Duration::from_millis(500)) {
            shown.push(line);
        }
    }
    let raws: HashSet<String> = shown
        .iter()
        .map(|l| {
            l["raw"]["customers"]["id"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let expected: HashSet<String> = (1..=3).map(|n| format!("not-a-number-{n}")).collect();
    assert_eq!(
        raws, expected,
        "each new dead letter once, none from before: {shown:?}"
    );
    for line in &shown {
        assert!(
            line["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{line}"
        );
        assert!(line["sink"].is_string() && line["id"].is_string(), "{line}");
    }
    tap.kill().unwrap();
    tap.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_of_a_sink_prints_each_event_once_it_is_in_the_files() {
    let project = Project::new();
    // Batches wait up to 2 s: an event shown when acknowledged would be
    // seen before its file.
    project.shopify_pipeline_with(
        "max_age = \"2s\"",
        "",
        "type = \"parquet\"\nname = \"files\"",
    );
    let _server = project.start().await;
    let unknown = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["tap", "shopify_customers", "--sink", "nope"])
        .current_dir(project.path())
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        said.contains("no sink named nope") && said.contains("files"),
        "{said}"
    );

    let (mut tap, seen) = start_tap(&project, &["--sink", "files"]);
    // The tap starts at the log's end when its request arrives: give it that.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let posted = post_customers(&project, 1, 4, 5).await;
    let table = project.path().join("lake/shopify_customers");
    let mut got = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < posted.len() && Instant::now() < deadline {
        let Ok(line) = seen.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let id = line["id"].as_str().unwrap().to_string();
        // Shown only once the sink wrote it: its file is there already.
        assert!(
            id_counts(&table).contains_key(&id),
            "shown before it was in the files: {line}"
        );
        assert!(got.insert(id), "shown twice: {line}");
    }
    assert_eq!(got, posted);
    tap.kill().unwrap();
    tap.wait().unwrap();
}
