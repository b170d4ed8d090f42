//! Crash safety: `kill -9` at random moments while 8 clients post, 20 cycles,
//! restarting each time. Every id that got a 202 must be in the table exactly
//! once; ids that were never acknowledged may or may not be there, but no id
//! may appear twice. Where a kill lands is chance, so the tests count over
//! the cycles that some kill cut a flush (the sink's progress file still
//! holding the range it had begun) and check what became of it.

use std::collections::HashSet;
use std::time::Duration;

use rand::Rng;

use crate::support::*;

const CYCLES: usize = 20;
const CLIENTS: u64 = 8;

/// What [`post_through_kills`] saw.
struct Kills {
    /// Ids answered 202.
    acked: HashSet<String>,
    /// Requests left without a (whole) answer: cut by a kill, or sent to
    /// the dead node before the clients stopped.
    unanswered: usize,
    /// The flushes kills interrupted: the `[first, end)` offsets the sink
    /// had recorded as begun and not committed when the node died.
    mid_flush: Vec<(u64, u64)>,
}

/// The flush `sink` had begun and not committed, from its progress file
/// (`data/<pipeline>/sinks/<sink>.json`, `"pending": [first, end]`).
fn pending_flush(project: &Project, sink: &str) -> Option<(u64, u64)> {
    let path = project
        .path()
        .join(format!("data/shopify_customers/sinks/{sink}.json"));
    let text = std::fs::read_to_string(path).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    let range = state["pending"].as_array()?;
    Some((range[0].as_u64().unwrap(), range[1].as_u64().unwrap()))
}

/// Runs [`CYCLES`] cycles of posting clients and `kill -9`, then one clean
/// run that flushes what the log holds.
async fn post_through_kills(project: &Project, sink: &str) -> Kills {
    let url = project.url("/hooks/shopify/customers");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut acked: HashSet<String> = HashSet::new();
    let mut refused = 0usize;
    let mut mid_flush = Vec::new();
    for cycle in 0..CYCLES {
        let server = project.start().await;
        let stop = tokio_util::sync::CancellationToken::new();
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
            clients.push(tokio::spawn(async move {
                let mut ok = Vec::new();
                let mut failed = 0;
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    let base = ((cycle as u64 * CLIENTS + c) * 1_000_000) + n * 10;
                    n += 1;
                    let events: Vec<_> = (0..5).map(|i| shopify_customer(base + i)).collect();
                    match client.post(&url).json(&events).send().await {
                        Ok(r) if r.status() == 202 => match r.json::<serde_json::Value>().await {
                            Ok(body) => ok.extend(accepted_ids(&body)),
                            // The answer was cut by the kill: not acknowledged.
                            Err(_) => failed += 1,
                        },
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            }));
        }
        let run_for = rand::rng().random_range(100..700);
        tokio::time::sleep(Duration::from_millis(run_for)).await;
        server.kill9();
        mid_flush.extend(pending_flush(project, sink));
        stop.cancel();
        for c in clients {
            let (ok, failed) = c.await.unwrap();
            acked.extend(ok);
            refused += failed;
        }
    }
    assert!(
        acked.len() > 1000,
        "the clients got {} acknowledgements; too few to mean anything",
        acked.len()
    );

    // Let the sink work off the backlog the kills left (its progress has not
    // moved for a while), then stop. Under load a flush may outlast
    // shutdown's grace period: its events stay in the log (that is the
    // contract), so start again until a stop finds nothing left to flush.
    for _ in 0..5 {
        let server = project.start().await;
        let started = std::time::Instant::now();
        let mut last = (
            ledger_committed(project, "shopify_customers", sink),
            started,
        );
        while last.1.elapsed() < Duration::from_secs(2) {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the sink never caught up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = ledger_committed(project, "shopify_customers", sink);
            if now != last.0 {
                last = (now, std::time::Instant::now());
            }
        }
        let unfinished = project.log().matches("did not finish flushing").count();
        assert!(server.terminate().success(), "log:\n{}", project.log());
        if project.log().matches("did not finish flushing").count() == unfinished {
            break;
        }
    }
    assert!(
        !mid_flush.is_empty(),
        "no kill of {CYCLES} landed between the start and the commit of a flush"
    );
    Kills {
        acked,
        unanswered: refused,
        mid_flush,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_and_duplicates_nothing() {
    let project = Project::new();
    // Small, frequent flushes so kills land during encoding, upload and commit too.
    project.shopify_pipeline("max_events = 200\nmax_age = \"50ms\"", "");
    let kills = post_through_kills(&project, "parquet").await;
    let acked = &kills.acked;

    let counts = id_counts(&project.table_dir());
    let twice: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} ids appear more than once, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged ids are missing ({} requests unanswered), e.g. {:?}",
        missing.len(),
        kills.unanswered,
        missing.first()
    );
    let duck = duckdb_id_counts(&project.table_dir());
    assert_eq!(duck.len(), counts.len(), "DuckDB sees the same rows");
    assert!(duck.values().all(|&n| n == 1));
    // A flush a kill cut was flushed again after the restart under the name
    // its range gives, so a half-written first try was overwritten, not kept
    // beside it.
    let names: HashSet<String> = parquet_files(&project.table_dir())
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for (first, end) in &kills.mid_flush {
        let name = format!("part-{first:020}-{:020}.parquet", end - 1);
        assert!(
            names.contains(&name),
            "the flush of [{first}, {end}) a kill cut is not in the table as {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_into_delta_loses_and_duplicates_nothing() {
    let project = Project::new();
    project.shopify_delta("max_events = 200\nmax_age = \"50ms\"", "");
    let kills = post_through_kills(&project, "delta").await;
    let acked = &kills.acked;

    let app = "tributary/shopify_customers/delta";
    let view = read_delta(&project.table_uri(), &[app], &[], &[]);
    for (engine, counts) in [("deltalake", &view.deltalake), ("duckdb", &view.duckdb)] {
        let twice = counts.values().filter(|&&n| n > 1).count();
        assert_eq!(twice, 0, "{engine}: ids more than once");
        let missing = acked.iter().filter(|id| !counts.contains_key(*id)).count();
        let log = project.log();
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("Committed batch"))
            .collect();
        assert_eq!(
            missing,
            0,
            "{engine}: acknowledged ids missing; log:\n{}",
            tail[tail.len().saturating_sub(60)..].join("\n")
        );
    }
    assert_eq!(
        view.deltalake.len(),
        view.duckdb.len(),
        "both engines see the same rows"
    );
    let committed = ledger_committed(&project, "shopify_customers", "delta");
    assert_eq!(
        view.txn[app],
        Some(committed as i64 - 1),
        "the table's txn version is the last offset the sink committed"
    );
}
