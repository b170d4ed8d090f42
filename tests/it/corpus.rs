//! Real payloads land whole: 110 published webhook examples of five providers
//! (GitHub, Stripe, Shopify, Slack, GitLab; `tests/fixtures/corpus`, each
//! file's repository and commit in `SOURCES.tsv`), posted with
//! `schema = "infer"` in three shuffled orders, singly, as JSON arrays and as
//! NDJSON, with a `kill -9` and a clean restart mid-stream and small batches
//! (so types are fixed early and later events must widen or spill). Every
//! table is read by DuckDB (`read_parquet`, `delta_scan`), delta-rs and
//! Polars, and every event rebuilt from its row (typed columns + `_extra`)
//! must equal the JSON posted, leaf by leaf.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::*;

const PROVIDERS: [&str; 5] = ["github", "stripe", "shopify", "slack", "gitlab"];

/// `(provider, payload)` of every corpus file.
fn corpus() -> Vec<(String, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus");
    let sources = std::fs::read_to_string(root.join("SOURCES.tsv")).expect("SOURCES.tsv");
    let mut out = Vec::new();
    for line in sources.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let columns: Vec<&str> = line.split('\t').collect();
        assert_eq!(columns.len(), 6, "SOURCES.tsv line: {line}");
        let (file, provider, commit) = (columns[0], columns[1], columns[5]);
        assert!(
            commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{file}: its source commit is recorded"
        );
        let text = std::fs::read_to_string(root.join(file)).expect("corpus file");
        let payload: Value = serde_json::from_str(&text).expect("corpus JSON");
        assert!(payload.is_object(), "{file} is one JSON object");
        out.push((provider.to_string(), payload));
    }
    for provider in PROVIDERS {
        assert!(
            out.iter().filter(|(p, _)| p == provider).count() >= 10,
            "at least 10 {provider} payloads"
        );
    }
    out
}

/// A small deterministic shuffle (xorshift), so each order is reproducible.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

fn pipelines(project: &Project) {
    for provider in PROVIDERS {
        project.write(
            &format!("pipelines/{provider}.toml"),
            &format!(
                r#"name = "{provider}"
schema = "infer"

[source]
type = "webhook"
path = "/hooks/{provider}"

[batch]
max_events = 4
max_age = "200ms"

[[sink]]
type = "parquet"
partition_by = ["_received_date"]

[[sink]]
type = "delta"
uri = "lake/{provider}_delta"
"#
            ),
        );
    }
}

/// Posts `payloads` (in their order) a few at a time: singly, as a JSON
/// array, as NDJSON; returns each accepted id with its payload.
async fn post(
    project: &Project,
    payloads: &[(String, Value)],
    originals: &mut BTreeMap<String, (String, Value)>,
) {
    let client = reqwest::Client::new();
    let mut i = 0;
    let mut round = 0;
    while i < payloads.len() {
        let provider = &payloads[i].0;
        // A request carries one provider's events.
        let take = payloads[i..]
            .iter()
            .take([1, 3, 2][round % 3])
            .take_while(|(p, _)| p == provider)
            .count();
        let chunk = &payloads[i..i + take];
        let url = project.url(&format!("/hooks/{provider}"));
        let request = match round % 3 {
            0 => client.post(url).json(&chunk[0].1),
            1 => client
                .post(url)
                .json(&chunk.iter().map(|(_, v)| v).collect::<Vec<_>>()),
            _ => client
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(
                    chunk
                        .iter()
                        .map(|(_, v)| v.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
        };
        let response = request.send().await.expect("post");
        assert_eq!(response.status(), 202, "{provider} payload refused");
        let ids = accepted_ids(&response.json().await.unwrap());
        assert_eq!(ids.len(), chunk.len());
        for (id, (provider, payload)) in ids.into_iter().zip(chunk) {
            originals.insert(id, (provider.clone(), payload.clone()));
        }
        i += take;
        round += 1;
    }
}

#[tokio::test]
async fn real_payloads_land_whole_in_any_order_across_kill_9_and_restart() {
    let corpus = corpus();
    let mut summaries = Vec::new();
    for seed in [0x9e37_79b9_7f4a_7c15_u64, 0x2545_f491_4f6c_dd1d, 0x1656_67b1_9e37_79f9] {
        let mut payloads = corpus.clone();
        shuffle(&mut payloads, seed);
        let project = Project::new();
        pipelines(&project);
        let mut originals = BTreeMap::new();
        let third = payloads.len() / 3;

        let server = project.start().await;
        post(&project, &payloads[..third], &mut originals).await;
        server.kill9();
        let server = project.start().await;
        post(&project, &payloads[third..2 * third], &mut originals).await;
        assert!(server.terminate().success());
        let server = project.start().await;
        post(&project, &payloads[2 * third..], &mut originals).await;
        assert!(server.terminate().success(), "clean stop flushes everything");
        assert_eq!(originals.len(), payloads.len());

        let tables: Vec<Value> = PROVIDERS
            .iter()
            .map(|p| {
                let ids: Vec<&String> = originals
                    .iter()
                    .filter(|(_, (provider, _))| provider == p)
                    .map(|(id, _)| id)
                    .collect();
                serde_json::json!({
                    "name": p,
                    "ids": ids,
                    "parquet": project.table_dir_of(p),
                    "delta": project.table_dir_of(&format!("{p}_delta")),
                })
            })
            .collect();
        let input = serde_json::json!({
            "tables": tables,
            "originals": originals.iter().map(|(id, (_, v))| (id.clone(), v.clone())).collect::<serde_json::Map<_, _>>(),
        });
        let input_file = project.path().join("corpus-input.json");
        std::fs::write(&input_file, input.to_string()).unwrap();
        let report = read_corpus(&input_file);

        for (reader, r) in report["readers"].as_object().unwrap() {
            assert!(r["error"].is_null(), "{reader} could not read the tables: {}", r["error"]);
            assert_eq!(r["rows"], originals.len(), "{reader}: one row per accepted event: {r}");
            assert_eq!(r["missing_count"], 0, "{reader}: {r}");
            assert_eq!(r["duplicates"], serde_json::json!([]), "{reader}: {r}");
            assert_eq!(
                r["mismatches"], 0,
                "{reader}: events whose row differs from the JSON posted: {}",
                r["examples"]
            );
        }
        let dead = project.path().join("lake/_dead_letters");
        assert!(
            parquet_files(&dead).is_empty(),
            "no event was refused (seed {seed:#x}); dead letters in {}",
            dead.display()
        );
        let log = project.log();
        assert!(!log.contains("panicked"), "{log}");
        summaries.push(report["tables"].clone());
    }
    // For the closing note: columns and how much spilled to _extra per order.
    eprintln!("corpus tables per order: {}", serde_json::to_string(&summaries).unwrap());
}

fn read_corpus(input: &Path) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support/read_corpus.py");
    let python = std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([script, input.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}; scripts/test installs the readers"));
    assert!(
        out.status.success(),
        "read_corpus.py failed (scripts/test installs duckdb, deltalake, polars): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.stderr.is_empty() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).expect("read_corpus.py prints JSON")
}
