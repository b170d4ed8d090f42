//! Issue 4's benchmark: a full backfill against the fake API's own page rate.

use super::*;

/// The benchmark of issue 4 (run by `scripts/bench`, ignored in the test
/// suite): a full backfill of `BENCH_RECORDS` (default 1 M) records from the
/// fake API into Parquet, against the API's own page rate when a plain client
/// pages through it alone. Prints both rates and their ratio; asserts only
/// that every record landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench runs it in release mode"]
async fn bench_poll_backfill_vs_api_page_rate() {
    let count: u64 = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let page: usize = std::env::var("BENCH_PAGE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let api = FakeApi::start(count, Style::Cursor).await;
    api.set_page_size(page);

    // The API alone: one client paging through every record, bodies read and parsed.
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let (mut after, mut fetched) = (None::<String>, 0u64);
    loop {
        let mut request = client.get(api.url());
        if let Some(a) = &after {
            request = request.query(&[("after", a)]);
        }
        let body: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
        fetched += body["results"].as_array().unwrap().len() as u64;
        match body["paging"]["next"]["after"].as_str() {
            Some(a) => after = Some(a.to_string()),
            None => break,
        }
    }
    let alone = started.elapsed().as_secs_f64();
    assert_eq!(fetched, count);
    api.clear_log();

    for (label, sink) in [
        ("parquet", PARQUET),
        ("delta", "[[sink]]\ntype = \"delta\""),
    ] {
        let project = Project::new();
        items_pipeline(&project, &api, &format!("{CURSOR}\nmax_pages = 100000\npaginate = {{ type = \"cursor\", next = \"/paging/next/after\", param = \"after\" }}"), sink);
        project.write(
            "pipelines/items.toml",
            &std::fs::read_to_string(project.path().join("pipelines/items.toml"))
                .unwrap()
                .replace(
                    "max_age = \"200ms\"",
                    "max_age = \"5s\"\nmax_events = 100000",
                ),
        );
        let cpu_before = children_cpu_seconds();
        let started = std::time::Instant::now();
        let out = poll(&project, &[]);
        let took = started.elapsed().as_secs_f64();
        let cpu = children_cpu_seconds() - cpu_before;
        assert_ok(&out);
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{count} records")));
        println!(
            "poll backfill ({label}): {count} records, pages of {page}: API alone {:.0} records/s ({alone:.2} s); tributary poll {:.0} records/s ({took:.2} s, start-up and final flush included; {cpu:.2} s of CPU, {:.2} us a record); ratio {:.2}",
            count as f64 / alone,
            count as f64 / took,
            cpu * 1e6 / count as f64,
            alone / took
        );
    }
}

/// User and system CPU seconds of this process's waited-for children.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
