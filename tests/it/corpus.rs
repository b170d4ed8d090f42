//! Real payloads land whole: 110 published webhook examples of five providers
//! (GitHub, Stripe, Shopify, Slack, GitLab; `tests/fixtures/corpus`, each
//! file's repository and commit in `SOURCES.tsv`), posted with
//! `schema = "infer"` in three shuffled orders, singly, as JSON arrays and as
//! NDJSON, with a `kill -9` and a clean restart mid-stream and small batches
//! (so types are fixed early and later events must widen or spill). Every
//! table is read by DuckDB (`read_parquet`, `delta_scan`), delta-rs and
//! Polars, and every event rebuilt from its row (typed columns + `_extra`)
//! must equal the JSON posted, leaf by leaf.
//!
//! Each payload goes to two pipelines of its provider: one table for every
//! event type, and one table per event type (`[route]` by the provider's
//! header, or by `/type` for Stripe and `/event/type` for Slack).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::support::*;
use tributary::config::route::table_name;

const PROVIDERS: [&str; 5] = ["github", "stripe", "shopify", "slack", "gitlab"];

/// One published payload: its provider, the event type its provider's
/// header names (or its body's type), and the body.
#[derive(Clone)]
struct Payload {
    provider: String,
    event: String,
    body: Value,
}

/// How each provider's routed pipeline picks a table: `(header, pointer)`.
fn route_of(provider: &str) -> (Option<&'static str>, Option<&'static str>) {
    match provider {
        "github" => (Some("X-GitHub-Event"), None),
        "shopify" => (Some("X-Shopify-Topic"), None),
        "gitlab" => (Some("X-Gitlab-Event"), None),
        "stripe" => (None, Some("/type")),
        _ => (None, Some("/event/type")),
    }
}

/// Every corpus file.
fn corpus() -> Vec<Payload> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus");
    let sources = std::fs::read_to_string(root.join("SOURCES.tsv")).expect("SOURCES.tsv");
    let mut out = Vec::new();
    for line in sources.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let columns: Vec<&str> = line.split('\t').collect();
        assert_eq!(columns.len(), 6, "SOURCES.tsv line: {line}");
        let (file, provider, event, commit) = (columns[0], columns[1], columns[2], columns[5]);
        assert!(
            commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{file}: its source commit is recorded"
        );
        let text = std::fs::read_to_string(root.join(file)).expect("corpus file");
        let payload: Value = serde_json::from_str(&text).expect("corpus JSON");
        assert!(payload.is_object(), "{file} is one JSON object");
        out.push(Payload {
            provider: provider.to_string(),
            event: event.to_string(),
            body: payload,
        });
    }
    for provider in PROVIDERS {
        assert!(
            out.iter().filter(|p| p.provider == provider).count() >= 10,
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
        let route = match route_of(provider) {
            (Some(header), _) => format!("header = \"{header}\""),
            (_, Some(pointer)) => format!("pointer = \"{pointer}\""),
            _ => unreachable!("every provider routes"),
        };
        project.write(
            &format!("pipelines/{provider}_routed.toml"),
            &format!(
                r#"name = "{provider}_routed"
schema = "infer"

[source]
type = "webhook"
path = "/hooks/{provider}/routed"

[route]
{route}

[batch]
max_events = 4
max_age = "200ms"

[[sink]]
type = "parquet"

[[sink]]
type = "delta"
uri = "lake/{provider}_routed_delta"
"#
            ),
        );
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

/// What the test knows of each accepted event: the pipeline it went to,
/// the table it must be in (`""` for the one table) and the JSON posted.
struct Accepted {
    pipeline: String,
    table: String,
    body: Value,
}

/// Posts `payloads` (in their order) a few at a time — singly, as a JSON
/// array, as NDJSON — to each provider's two pipelines; records each
/// accepted id.
async fn post(project: &Project, payloads: &[Payload], accepted: &mut BTreeMap<String, Accepted>) {
    let client = reqwest::Client::new();
    let mut i = 0;
    let mut round = 0;
    while i < payloads.len() {
        let (provider, event) = (&payloads[i].provider, &payloads[i].event);
        // A request carries events of one provider and one type (it has one header).
        let take = payloads[i..]
            .iter()
            .take([1, 3, 2][round % 3])
            .take_while(|p| &p.provider == provider && &p.event == event)
            .count();
        let chunk = &payloads[i..i + take];
        for routed in [false, true] {
            let pipeline = if routed {
                format!("{provider}_routed")
            } else {
                provider.clone()
            };
            let path = if routed {
                format!("/hooks/{provider}/routed")
            } else {
                format!("/hooks/{provider}")
            };
            let mut request = match round % 3 {
                0 => client.post(project.url(&path)).json(&chunk[0].body),
                1 => client
                    .post(project.url(&path))
                    .json(&chunk.iter().map(|p| &p.body).collect::<Vec<_>>()),
                _ => client
                    .post(project.url(&path))
                    .header("content-type", "application/x-ndjson")
                    .body(
                        chunk
                            .iter()
                            .map(|p| p.body.to_string())
                            .collect::<Vec<_>>()
                            .join("\n"),
                    ),
            };
            let (header, pointer) = route_of(provider);
            if let Some(header) = header {
                request = request.header(header, event.as_str());
            }
            let response = request.send().await.expect("post");
            assert_eq!(response.status(), 202, "{provider} payload refused");
            let ids = accepted_ids(&response.json().await.unwrap());
            assert_eq!(ids.len(), chunk.len());
            for (id, payload) in ids.into_iter().zip(chunk) {
                let table = match (routed, pointer) {
                    (false, _) => String::new(),
                    (true, None) => table_name(event).unwrap_or_else(|| "other".into()),
                    (true, Some(pointer)) => payload
                        .body
                        .pointer(pointer)
                        .and_then(Value::as_str)
                        .and_then(table_name)
                        .unwrap_or_else(|| "other".into()),
                };
                accepted.insert(
                    id,
                    Accepted {
                        pipeline: pipeline.clone(),
                        table,
                        body: payload.body.clone(),
                    },
                );
            }
        }
        i += take;
        round += 1;
    }
}

#[tokio::test]
async fn real_payloads_land_whole_in_any_order_across_kill_9_and_restart() {
    let corpus = corpus();
    let mut summaries = Vec::new();
    for seed in [
        0x9e37_79b9_7f4a_7c15_u64,
        0x2545_f491_4f6c_dd1d,
        0x1656_67b1_9e37_79f9,
    ] {
        let mut payloads = corpus.clone();
        shuffle(&mut payloads, seed);
        let project = Project::new();
        pipelines(&project);
        let mut accepted = BTreeMap::new();
        let third = payloads.len() / 3;

        let server = project.start().await;
        post(&project, &payloads[..third], &mut accepted).await;
        server.kill9();
        let server = project.start().await;
        post(&project, &payloads[third..2 * third], &mut accepted).await;
        assert!(server.terminate().success());
        let server = project.start().await;
        post(&project, &payloads[2 * third..], &mut accepted).await;
        assert!(
            server.terminate().success(),
            "clean stop flushes everything"
        );
        assert_eq!(accepted.len(), 2 * payloads.len());

        // Every table the test expects: each pipeline's one table, and each
        // routed table, with the ids it must hold.
        let mut tables: BTreeMap<(String, String), Vec<&String>> = BTreeMap::new();
        for (id, a) in &accepted {
            tables
                .entry((a.pipeline.clone(), a.table.clone()))
                .or_default()
                .push(id);
        }
        let tables: Vec<Value> = tables
            .iter()
            .map(|((pipeline, table), ids)| {
                let (parquet, delta) = if table.is_empty() {
                    (
                        project.table_dir_of(pipeline),
                        project.table_dir_of(&format!("{pipeline}_delta")),
                    )
                } else {
                    (
                        project.table_dir_of(pipeline).join(table),
                        project
                            .table_dir_of(&format!("{pipeline}_delta"))
                            .join(table),
                    )
                };
                serde_json::json!({
                    "name": format!("{pipeline}/{table}"),
                    "ids": ids,
                    "parquet": parquet,
                    "delta": delta,
                })
            })
            .collect();
        for provider in PROVIDERS {
            // Exactly the expected routed tables exist, no more.
            let mut found: Vec<String> =
                std::fs::read_dir(project.table_dir_of(&format!("{provider}_routed_delta")))
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
            found.sort();
            let mut expected: Vec<String> = accepted
                .values()
                .filter(|a| a.pipeline == format!("{provider}_routed"))
                .map(|a| a.table.clone())
                .collect();
            expected.sort();
            expected.dedup();
            assert_eq!(
                found, expected,
                "{provider}: one Delta table per event type"
            );
        }
        let input = serde_json::json!({
            "tables": tables,
            "originals": accepted.iter().map(|(id, a)| (id.clone(), a.body.clone())).collect::<serde_json::Map<_, _>>(),
        });
        let input_file = project.path().join("corpus-input.json");
        std::fs::write(&input_file, input.to_string()).unwrap();
        let report = read_corpus(&input_file);

        for (reader, r) in report["readers"].as_object().unwrap() {
            assert!(
                r["error"].is_null(),
                "{reader} could not read the tables: {}",
                r["error"]
            );
            assert_eq!(
                r["rows"],
                accepted.len(),
                "{reader}: one row per accepted event: {r}"
            );
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
        // For the closing note: how much fit no typed column, one table per
        // provider against one table per event type.
        let mut sums = [(0, 0, 0, 0); 2];
        for (name, t) in report["tables"].as_object().unwrap() {
            let routed = usize::from(name.contains("_routed/"));
            sums[routed].0 += 1;
            sums[routed].1 += t["extra_values"].as_u64().unwrap();
            sums[routed].2 += t["extra_leaves"].as_u64().unwrap();
            sums[routed].3 += t["rows_with_extra"].as_u64().unwrap();
        }
        let line = |(tables, values, leaves, rows): (u64, u64, u64, u64)| {
            format!("{tables} tables, {values} entries in _extra in {rows} rows, {leaves} of them with a value (the rest [], {{}} or null)")
        };
        summaries.push(format!(
            "seed {seed:#x}: one table per provider: {}; per event type: {}",
            line(sums[0]),
            line(sums[1])
        ));
    }
    eprintln!("corpus: {}", summaries.join("\n        "));
}

fn read_corpus(input: &Path) -> Value {
    run_reader("read_corpus.py", &[input], &[])
}
