//! JSON → Parquet (zstd) throughput of tributary's own encode path: NDJSON
//! events → arrow-json with the declared schema + metadata columns → hive
//! partitions → Parquet bytes, in batches of `max_events` (the default 10000),
//! on 1 or more threads. `scripts/bench` compares it with DuckDB's COPY.
//!
//! Usage: `encode_bench EVENTS.ndjson SCHEMA.json|infer THREADS OUT_DIR`

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tributary::encode::Encoder;
use tributary::event::Event;
use tributary::sink::files;

const BATCH: usize = 10_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, events_file, schema_file, threads, out_dir] = &args[..] else {
        eprintln!("usage: encode_bench EVENTS.ndjson SCHEMA.json|infer THREADS OUT_DIR");
        std::process::exit(2);
    };
    let threads: usize = threads.parse().expect("THREADS is a number");
    let data = Bytes::from(std::fs::read(events_file).expect("read events"));
    let events: Vec<Event> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| Event::new(data.slice_ref(l)))
        .collect();
    let encoder = if schema_file == "infer" {
        // Steady state of `schema = "infer"`: the schema the first flush
        // grew; every flush still observes, fits and decodes each record.
        let cold =
            Encoder::new(Arc::new(arrow_schema::Schema::empty()), "", "bench").inferring(true);
        let grown = cold
            .encode(&events[..BATCH.min(events.len())])
            .grown
            .expect("a schema");
        Arc::new(cold.with_record_schema(grown))
    } else {
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(schema_file).expect("read schema"))
                .expect("schema JSON");
        let schema = Arc::new(tributary::schema::from_json_schema(&doc).expect("valid schema"));
        Arc::new(Encoder::new(schema, "", "bench"))
    };
    // The inference check alone, on one thread: what `schema = "infer"`
    // adds to each record that fits the schema as it is.
    let check_secs = (schema_file == "infer").then(|| {
        let schema = encoder.record_schema().clone();
        let as_is = tributary::encode::infer::AsIs::new(&schema);
        let started = Instant::now();
        let fitting = events.iter().filter(|e| as_is.fits(&e.payload)).count();
        assert_eq!(fitting, events.len(), "every record fits the grown schema");
        started.elapsed().as_secs_f64()
    });
    let chunks: Vec<Vec<Event>> = events.chunks(BATCH).map(|c| c.to_vec()).collect();
    let props = files::writer_properties();
    let partition_by = vec!["_received_date".to_string()];
    std::fs::create_dir_all(out_dir).expect("out dir");

    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (rows, bytes) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let (mut rows, mut bytes) = (0usize, 0usize);
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(chunk) = chunks.get(i) else { break };
                        let encoded = encoder.encode(chunk);
                        assert!(
                            encoded.dead.is_empty(),
                            "dead letters: {:?}",
                            encoded.dead.first().map(|d| &d.reason)
                        );
                        let first = (i * BATCH) as u64;
                        let range = first..first + chunk.len() as u64;
                        for (name, body) in
                            files::files(&encoded.batch, &partition_by, "", &range, &props)
                                .expect("parquet")
                        {
                            let path = std::path::Path::new(out_dir).join(name);
                            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                            std::fs::write(path, &body).unwrap();
                            bytes += body.len();
                        }
                        rows += encoded.batch.num_rows();
                    }
                    (rows, bytes)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    let secs = started.elapsed().as_secs_f64();
    let check = check_secs
        .map(|c| format!(", \"check_rows_per_sec\": {:.0}", events.len() as f64 / c))
        .unwrap_or_default();
    println!("{{\"rows\": {rows}, \"seconds\": {secs:.3}, \"rows_per_sec\": {:.0}, \"parquet_bytes\": {bytes}{check}}}", rows as f64 / secs);
}
