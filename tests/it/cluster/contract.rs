//! The log contract (`src/log/contract.rs`), one set of checks run against
//! both backends: the file log and a JetStream partition's log. A sink or
//! source that works on one works on the other only if these hold on both.
//!
//! 1. An append of n records answers a range of n.
//! 2. A reader from a sink's committed offset returns every appended
//!    record once, in append order, with its id, kind, payload, topic and
//!    connection intact; its position advances by what it returned.
//! 3. A reader from an offset returns nothing below it.
//! 4. `begin` and `commit` are the sink's recorded progress, and a new
//!    handle on the log (a restart, another node) reads the same progress.
//!    They block (JetStream's wait for the cluster): callers make them from
//!    the blocking pool, as the sink runner does.
//! 5. The end is past every record a reader returned.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tributary::event::Event;
use tributary::log::{Appender, Log};

use super::Nats;

const SINK: &str = "contract";

fn events(from: usize, n: usize) -> Vec<Event> {
    (from..from + n)
        .map(|i| {
            let mut e = Event::new(Bytes::from(format!("{{\"n\":{i}}}")));
            if i % 2 == 0 {
                e.topic = Some(Arc::from(format!("topic-{i}").as_str()));
            }
            if i % 3 == 0 {
                e.connection = Some(Arc::from(format!("acct-{i}").as_str()));
            }
            e
        })
        .collect()
}

/// Reads until `want` records arrived (or 30 s passed).
async fn read_all(log: &Log, from: u64, want: usize) -> Vec<Event> {
    let mut reader = log.reader(from);
    assert_eq!(
        reader.position(),
        from,
        "a reader starts where it was asked"
    );
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < want && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_secs(1), reader.wait()).await;
        let before = reader.position();
        let batch = reader.read(want - got.len()).await.unwrap();
        assert!(
            reader.position() >= before + batch.len() as u64,
            "the position advances by what was read"
        );
        got.extend(batch);
    }
    got
}

fn same(a: &[Event], b: &[Event]) {
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(b) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.kind, b.kind);
        assert_eq!(a.payload, b.payload);
        assert_eq!(a.topic, b.topic);
        assert_eq!(a.connection, b.connection);
    }
}

/// Invariants 1–3 and 5 on `appender` and `log`; then records progress
/// (4) and returns the offset committed.
async fn holds(appender: &Appender, log: &Log) -> u64 {
    let start = log.sink_state(SINK).committed;
    let first = events(0, 6);
    let range = appender.append(first.clone()).await.unwrap();
    assert_eq!(
        range.end - range.start,
        6,
        "1. a range of the append's length"
    );
    let second = events(6, 4);
    let range = appender.append(second.clone()).await.unwrap();
    assert_eq!(range.end - range.start, 4);

    let got = read_all(log, start, 10).await;
    let all: Vec<Event> = first.iter().chain(&second).cloned().collect();
    same(&got, &all);
    // Nothing more than was appended.
    let mut reader = log.reader(start + 10);
    assert!(
        reader.read(10).await.unwrap().is_empty(),
        "2. each record once"
    );
    assert!(log.end() >= start + 10, "5. the end is past what was read");

    // 3. From an offset, nothing below it.
    let tail = read_all(log, start + 6, 4).await;
    same(&tail, &second);

    // 4. Progress: blocking calls, made from the blocking pool as the
    // runner makes them (JetStream's block on the cluster's answer).
    let handle = log.clone();
    tokio::task::spawn_blocking(move || {
        handle.begin(SINK, start..start + 6).unwrap();
        let state = handle.sink_state(SINK);
        assert_eq!(state.pending, Some((start, start + 6)));
        handle.commit(SINK, start + 6).unwrap();
        let state = handle.sink_state(SINK);
        assert_eq!(state.committed, start + 6);
        assert_eq!(state.pending, None, "a commit ends the pending flush");
    })
    .await
    .unwrap();
    start + 6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_log_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let options = || tributary::log::Options {
        dir: dir.path().to_path_buf(),
        segment_bytes: 1 << 20,
        sinks: vec![SINK.to_string()],
        floor: 0,
    };
    let (appender, log) = tributary::log::open(options()).unwrap();
    let committed = holds(&appender, &log).await;
    drop((appender, log));
    // 4. A new handle (a restart) reads the same progress, and the reader
    // from it the records not yet committed.
    let (_appender, log) = tributary::log::open(options()).unwrap();
    assert_eq!(log.sink_state(SINK).committed, committed);
    let rest = read_all(&log, committed, 4).await;
    assert_eq!(rest.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jetstream_log_keeps_the_contract() {
    use tributary::log::jetstream::{Cluster, JetStreamAppender, PartitionLog};
    use tributary::log::LogStore;
    let nats = Nats::start().await;
    let project = tempfile::tempdir().unwrap();
    let root = project.path();
    std::fs::create_dir_all(root.join("pipelines")).unwrap();
    let servers: Vec<String> = nats.urls.iter().map(|u| format!("\"{u}\"")).collect();
    std::fs::write(
        root.join("tributary.toml"),
        format!(
            "data_dir = \"data\"\n[log]\ntype = \"jetstream\"\nservers = [{}]\nreplicas = 1\n",
            servers.join(", ")
        ),
    )
    .unwrap();
    // One partition: the whole log is one partition's, in one order.
    std::fs::write(
        root.join("pipelines/contract.toml"),
        "name = \"contract\"\nschema = \"infer\"\n[source]\ntype = \"webhook\"\npath = \"/c\"\n\
         [log]\npartitions = 1\n[[sink]]\ntype = \"parquet\"\nname = \"contract\"\nuri = \"lake\"\n",
    )
    .unwrap();
    let config = tributary::config::load(&tributary::config::Paths {
        config: Some(root.join("tributary.toml")),
        pipelines: None,
        files: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("{e:?}"));
    let tributary::config::log::LogSpec::JetStream(js) = &config.global.log else {
        panic!("a JetStream log")
    };
    let cluster = Cluster::connect(js).await.unwrap();
    let pipeline = cluster.pipeline(&config.pipelines[0], None).await.unwrap();
    let appender = Appender::new(Arc::new(JetStreamAppender(pipeline.clone())));
    let open = || async {
        let stop = tokio_util::sync::CancellationToken::new();
        let partition = PartitionLog::open(pipeline.clone(), SINK, 0, stop)
            .await
            .unwrap();
        Log::new(Arc::new(partition) as Arc<dyn LogStore>)
    };
    let log = open().await;
    let committed = holds(&appender, &log).await;
    drop(log);
    // 4. Another handle (the partition's next owner) reads the same progress.
    let log = open().await;
    assert_eq!(log.sink_state(SINK).committed, committed);
    let rest = read_all(&log, committed, 4).await;
    assert_eq!(rest.len(), 4);
    drop(nats);
}
