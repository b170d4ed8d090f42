//! Values arrive exactly as sent. Random doubles (any bit pattern: subnormals,
//! ±0, the extremes) and integers (the i64 bounds, 2^53 ± 1) posted to an
//! inferred pipeline come back bit for bit from its Parquet files (read by
//! DuckDB) and its Delta table (read by delta-rs), in typed columns and in
//! `_extra`; Shopify's published `audit_events/admin_api_activity` payload
//! keeps its `response_time_ms`; a declared integer column turns `2.7` into
//! a dead letter, never into 2.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

fn pipeline(project: &Project, name: &str) {
    project.write(
        &format!("pipelines/{name}.toml"),
        &format!(
            r#"name = "{name}"
schema = "infer"

[source]
type = "webhook"
path = "/hooks/{name}"

[batch]
max_events = 200
max_age = "200ms"

[[sink]]
type = "parquet"

[[sink]]
type = "delta"
uri = "lake/{name}_delta"
"#
        ),
    );
}

/// Both tables of pipeline `name`, read by DuckDB and delta-rs.
fn read(project: &Project, name: &str) -> (Vec<Value>, Vec<Value>) {
    let mut read: Value = run_reader(
        "read_numbers.py",
        &[
            project.table_dir_of(name),
            project.path().join(format!("lake/{name}_delta")),
        ],
        &[],
    );
    let mut rows = |key: &str| {
        read[key]
            .as_array_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    };
    (rows("parquet"), rows("delta"))
}

/// A double written by the reader as `{"f": repr}`.
fn double(value: &Value) -> f64 {
    value["f"]
        .as_str()
        .unwrap_or_else(|| panic!("not a double: {value}"))
        .parse()
        .unwrap()
}

/// An integer written by the reader as `{"i": text}`.
fn integer(value: &Value) -> i64 {
    value["i"]
        .as_str()
        .unwrap_or_else(|| panic!("not an integer: {value}"))
        .parse()
        .unwrap()
}

/// A small deterministic generator (xorshift64*).
struct Bits(u64);

impl Bits {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_number_comes_back_bit_for_bit_from_parquet_and_delta() {
    let project = Project::new();
    pipeline(&project, "numbers");
    pipeline(&project, "audit");
    let _server = project.start().await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let request = client.post(project.url(path)).json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 202);
        }
    };
    // `s` is text first, so the doubles sent in it later go to `_extra`.
    let first: Vec<Value> = (0..10)
        .map(|k| serde_json::json!({"k": k, "d": 1.5, "n": 1, "s": "text"}))
        .collect();
    post("/hooks/numbers", Value::Array(first)).await;
    // Each sink infers its own schema from its first flush: wait for both.
    let started = Instant::now();
    loop {
        let (parquet, delta) = read(&project, "numbers");
        if parquet.len() == 10 && delta.len() == 10 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first flush never reached both sinks"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let mut doubles: Vec<f64> = vec![
        116.470_000_008_121_13,
        123_456_789.123_456_79,
        0.1,
        -0.0,
        0.0,
        5e-324,
        -5e-324,
        2.225_073_858_507_201e-308,
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        1e23,
        9_007_199_254_740_993.0,
    ];
    let mut bits = Bits(0x6e75_6d62_6572_73);
    while doubles.len() < 1000 {
        let v = f64::from_bits(bits.next());
        if v.is_finite() {
            doubles.push(v);
        }
    }
    let mut integers: Vec<i64> = vec![
        i64::MIN,
        i64::MAX,
        0,
        -1,
        (1 << 53) - 1,
        1 << 53,
        (1 << 53) + 1,
        -(1 << 53) - 1,
    ];
    while integers.len() < doubles.len() {
        integers.push(bits.next() as i64);
    }
    let events: Vec<Value> = doubles
        .iter()
        .zip(&integers)
        .enumerate()
        .map(|(i, (d, n))| serde_json::json!({"k": 10 + i, "d": d, "n": n, "s": d}))
        .collect();
    for chunk in events.chunks(100) {
        post("/hooks/numbers", Value::Array(chunk.to_vec())).await;
    }
    let audit: Value = serde_json::from_str(include_str!(
        "../fixtures/numbers/shopify_audit_events_admin_api_activity.json"
    ))
    .unwrap();
    post("/hooks/audit", audit).await;

    let started = Instant::now();
    let (parquet, delta) = loop {
        let (parquet, delta) = read(&project, "numbers");
        if parquet.len() == 10 + doubles.len() && delta.len() == 10 + doubles.len() {
            break (parquet, delta);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the tables never held every event: {} Parquet rows, {} Delta rows",
            parquet.len(),
            delta.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for (engine, rows) in [("DuckDB/Parquet", parquet), ("delta-rs/Delta", delta)] {
        let by_k: HashMap<i64, &Value> = rows.iter().map(|r| (integer(&r["k"]), r)).collect();
        for (i, (&d, &n)) in doubles.iter().zip(&integers).enumerate() {
            let row = by_k[&(10 + i as i64)];
            let stored = double(&row["d"]);
            assert_eq!(
                stored.to_bits(),
                d.to_bits(),
                "{engine}: {d:?} was stored as {stored:?}"
            );
            assert_eq!(integer(&row["n"]), n, "{engine}: integer {n}");
            let extra = row["_extra"]
                .as_str()
                .unwrap_or_else(|| panic!("{engine}: {d:?} is not in _extra: {row}"));
            let extra: Value = serde_json::from_str(extra).unwrap();
            let kept = extra["/s"].as_f64().unwrap();
            assert_eq!(
                kept.to_bits(),
                d.to_bits(),
                "{engine}: {d:?} was kept in _extra as {}",
                row["_extra"]
            );
        }
    }

    let started = Instant::now();
    let (parquet, delta) = loop {
        let (parquet, delta) = read(&project, "audit");
        if parquet.len() == 1 && delta.len() == 1 {
            break (parquet, delta);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the audit payload never landed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for (engine, rows) in [("DuckDB/Parquet", parquet), ("delta-rs/Delta", delta)] {
        let metadata = &rows[0]["events"][0]["event"]["context"]["context_metadata"];
        let stored = double(&metadata["response_time_ms"]);
        assert_eq!(
            stored.to_bits(),
            116.470_000_008_121_13_f64.to_bits(),
            "{engine}: response_time_ms came back as {stored:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fraction_for_a_declared_integer_is_a_dead_letter_with_its_reason() {
    let project = Project::new();
    project.shopify_pipeline("max_events = 100\nmax_age = \"200ms\"", "");
    let _server = project.start().await;
    let client = reqwest::Client::new();
    let mut good = shopify_customer(1);
    good["customers"]["orders_count"] = serde_json::json!(3);
    let mut cut = shopify_customer(2);
    cut["customers"]["orders_count"] = serde_json::json!(2.7);
    let mut negative = shopify_customer(3);
    negative["customers"]["orders_count"] = serde_json::json!(-0.5);
    let response = client
        .post(project.url("/hooks/shopify/customers"))
        .json(&vec![good, cut, negative])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let ids = accepted_ids(&response.json().await.unwrap());
    let dead_dir = project.path().join("lake/_dead_letters/shopify_customers");
    eventually(&project, "the good row and two dead letters", || {
        id_counts(&project.table_dir()).contains_key(&ids[0]) && id_counts(&dead_dir).len() == 2
    })
    .await;
    let rows = id_counts(&project.table_dir());
    assert_eq!(rows.len(), 1, "only the integer is a row: {rows:?}");
    let reasons: Vec<String> = read_parquet(&dead_dir)
        .iter()
        .flat_map(|batch| {
            use arrow_array::cast::AsArray;
            let reasons = batch.column_by_name("reason").unwrap().as_string::<i32>();
            reasons
                .iter()
                .map(|r| r.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("2.7 is not an integer")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("-0.5")), "{reasons:?}");
}
