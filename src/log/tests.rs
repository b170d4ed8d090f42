//! Log behaviour: group commit, reading across segments, recovery, clean-up.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use super::*;
use crate::event::RecordKind;

/// The base offsets of the log's segment files, ascending.
fn segments(dir: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .flatten()
        .filter_map(|e| segment::parse_file_name(&e.file_name().to_string_lossy()))
        .collect();
    bases.sort();
    bases
}

fn options(dir: &Path, segment_bytes: u64) -> Options {
    Options {
        dir: dir.to_path_buf(),
        segment_bytes,
        sinks: vec!["s".into()],
        floor: 0,
    }
}

fn events(n: usize, tag: &str) -> Vec<Event> {
    (0..n)
        .map(|i| Event::new(Bytes::from(format!("{{\"tag\":\"{tag}\",\"i\":{i}}}"))))
        .collect()
}

async fn read_all(log: &Log, from: u64) -> Vec<Event> {
    let mut reader = log.reader(from);
    let mut out = Vec::new();
    while reader.position() < log.end() {
        out.extend(reader.read(7).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_ordered_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (appender, log) = open(options(dir.path(), 4096)).unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let appender = appender.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..20 {
                let batch = events(3, &format!("t{t}"));
                let range = appender.append(batch.clone()).await.unwrap();
                assert_eq!(range.end - range.start, 3);
                got.push((range, batch));
            }
            got
        }));
    }
    let mut expected = Vec::new();
    for t in tasks {
        expected.extend(t.await.unwrap());
    }
    assert_eq!(log.end(), 16 * 20 * 3);
    let all = read_all(&log, 0).await;
    for (range, batch) in expected {
        assert_eq!(&all[range.start as usize..range.end as usize], &batch[..]);
    }
    // Small segments: the log rolled several times and still reads in order.
    assert!(segments(dir.path()).len() > 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_is_stored_in_its_order_and_nothing_of_it_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (appender, log) = open(options(dir.path(), 1 << 20)).unwrap();
    // Pages handed over before any is durable: stored in their order.
    let chain = Chain::new();
    let (mut pending, mut pages) = (Vec::new(), Vec::new());
    for page in 0..5 {
        let batch = events(4, &format!("p{page}"));
        pending.push(appender.submit(batch.clone(), &chain).await.unwrap());
        pages.extend(batch);
    }
    let mut end = 0;
    for p in pending {
        let range = p.await.unwrap();
        assert_eq!(range.start, end, "stored in the order handed over");
        end = range.end;
    }
    assert_eq!(read_all(&log, 0).await, pages);
    // Once an append of the chain failed (the writer marks it broken), its
    // later appends are refused and not stored; appends of no chain are.
    chain.set_broken();
    let refused = appender
        .submit(events(2, "late"), &chain)
        .await
        .unwrap()
        .await;
    assert!(matches!(refused, Err(AppendError::Broken)), "{refused:?}");
    let other = appender.append(events(1, "other")).await.unwrap();
    assert_eq!(other, end..end + 1, "the refused append took no offsets");
    assert_eq!(log.end(), end + 1);
}

#[tokio::test]
async fn reopen_recovers_a_torn_tail_and_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let acked = {
        let (appender, _log) = open(options(dir.path(), 1 << 20)).unwrap();
        let batch = events(10, "a");
        appender.append(batch.clone()).await.unwrap();
        batch
    };
    // A crash mid-write leaves half a record behind.
    let seg = segment::path(&dir.path().join("log"), 0);
    let mut partial = Vec::new();
    segment::encode(&events(1, "torn")[0], true, &mut partial);
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&partial[..partial.len() / 2])
        .unwrap();

    let (appender, log) = open(options(dir.path(), 1 << 20)).unwrap();
    assert_eq!(log.end(), 10);
    let more = events(2, "b");
    assert_eq!(appender.append(more.clone()).await.unwrap(), 10..12);
    let all = read_all(&log, 0).await;
    assert_eq!(&all[..10], &acked[..]);
    assert_eq!(&all[10..], &more[..]);
}

#[tokio::test]
async fn consumed_segments_are_deleted_and_offsets_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (appender, log) = open(options(dir.path(), 256)).unwrap();
        for _ in 0..10 {
            appender.append(events(4, "x")).await.unwrap();
        }
        let before = log.disk_bytes();
        log.commit("s", 40).unwrap();
        // Only the active segment remains.
        assert_eq!(segments(dir.path()).len(), 1);
        assert!(log.disk_bytes() < before);
    }
    let (appender, log) = open(options(dir.path(), 256)).unwrap();
    assert_eq!(log.end(), 40);
    assert_eq!(appender.append(events(1, "y")).await.unwrap(), 40..41);
    assert_eq!(log.sink_state("s").committed, 40);
}

#[tokio::test]
async fn a_lost_log_directory_never_restarts_below_a_committed_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (appender, log) = open(options(dir.path(), 1 << 20)).unwrap();
        appender.append(events(5, "x")).await.unwrap();
        log.commit("s", 5).unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("log")).unwrap();
    let (appender, _log) = open(options(dir.path(), 1 << 20)).unwrap();
    assert_eq!(appender.append(events(1, "y")).await.unwrap(), 5..6);
}

#[tokio::test]
async fn reader_sees_close_after_the_last_appender_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (appender, log) = open(options(dir.path(), 1 << 20)).unwrap();
    appender.append(events(2, "x")).await.unwrap();
    let mut reader = log.reader(0);
    assert!(reader.wait().await);
    assert_eq!(reader.read(10).await.unwrap().len(), 2);
    drop(appender);
    assert!(!reader.wait().await);
}

#[tokio::test]
async fn rolled_segments_are_preallocated_and_reopen_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let mut appended = Vec::new();
    {
        let (appender, log) = open(options(dir.path(), 4096)).unwrap();
        // A roll takes the spare once its helper thread has finished, which
        // can be a little after the spare has its full length (its last
        // syncs): roll until a roll took it. 50 rolls is a hang guard.
        let mut preallocated = false;
        for _ in 0..50 {
            while std::fs::metadata(log_dir.join(SPARE)).map_or(0, |m| m.len()) < 4096 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let before = segments(dir.path()).len();
            while segments(dir.path()).len() == before {
                let batch = events(10, "a");
                appender.append(batch.clone()).await.unwrap();
                appended.extend(batch);
            }
            let active = *segments(dir.path()).last().unwrap();
            let len = std::fs::metadata(segment::path(&log_dir, active))
                .unwrap()
                .len();
            if len == 4096 {
                preallocated = true;
                break;
            }
        }
        assert!(preallocated, "a new segment is the zero-filled spare");
        let data: u64 = segments(dir.path())
            .iter()
            .map(|&base| {
                std::fs::metadata(segment::path(&log_dir, base))
                    .unwrap()
                    .len()
            })
            .sum();
        assert!(
            log.disk_bytes() < data,
            "disk_bytes counts data, not preallocation"
        );
    }
    let (appender, log) = open(options(dir.path(), 4096)).unwrap();
    assert_eq!(log.end(), appended.len() as u64);
    let more = events(3, "b");
    appender.append(more.clone()).await.unwrap();
    appended.extend(more);
    assert_eq!(read_all(&log, 0).await, appended);
}

/// Writes `events` at the end of the log's last segment as a power cut
/// would leave an append: its records durable, the last one never written.
fn tear_append(dir: &Path, events: &[Event]) {
    let log_dir = dir.join("log");
    let mut bases: Vec<u64> = fs::read_dir(&log_dir)
        .unwrap()
        .filter_map(|e| segment::parse_file_name(&e.unwrap().file_name().to_string_lossy()))
        .collect();
    bases.sort_unstable();
    let path = segment::path(&log_dir, *bases.last().unwrap());
    let valid = segment::scan(&path).unwrap().valid_len;
    let mut bytes = Vec::new();
    for e in events {
        segment::encode(e, false, &mut bytes);
    }
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&bytes, valid).unwrap();
}

#[tokio::test]
async fn a_torn_append_is_dropped_whole_and_the_last_poll_state_found() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path(), 1 << 20);
    let state = |text: &str| Event::record(RecordKind::PollState, Bytes::from(text.to_string()));
    {
        let (appender, log) = open(options.clone()).unwrap();
        assert_eq!(log.last_state().unwrap(), None);
        let mut page = events(3, "p1");
        page.push(state("\"s1\""));
        assert_eq!(appender.append(page).await.unwrap(), 0..4);
    }
    // A power cut kept part of the next page's write but not its state record.
    tear_append(dir.path(), &events(2, "p2"));
    let (appender, log) = open(options.clone()).unwrap();
    assert_eq!(log.end(), 4, "the records of the torn append are cut");
    assert_eq!(
        log.last_state().unwrap(),
        Some((3, Bytes::from_static(b"\"s1\"")))
    );
    let mut page = events(1, "p2");
    page.push(state("\"s2\""));
    assert_eq!(appender.append(page).await.unwrap(), 4..6);
    drop((appender, log));
    // A torn first append of a fresh log goes whole too.
    let fresh = tempfile::tempdir().unwrap();
    drop(open(options_in(fresh.path())).unwrap());
    tear_append(fresh.path(), &events(3, "torn"));
    let (appender, log) = open(options_in(fresh.path())).unwrap();
    assert_eq!((log.end(), log.last_state().unwrap()), (0, None));
    drop((appender, log));
    // Appends of plain events (a webhook's) are whole appends too: nothing
    // acknowledged is cut, whichever source wrote the log or reads it now.
    let (appender, log) = open(options.clone()).unwrap();
    appender.append(events(2, "p4")).await.unwrap();
    drop((appender, log));
    let (_appender, log) = open(options).unwrap();
    assert_eq!(log.end(), 8);
    assert_eq!(
        log.last_state().unwrap(),
        Some((5, Bytes::from_static(b"\"s2\""))),
        "the poll state is found in an older append"
    );
}

fn options_in(dir: &Path) -> Options {
    options(dir, 1 << 20)
}

#[tokio::test]
async fn a_log_of_format_1_is_read_and_continued_in_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    fs::create_dir_all(&log_dir).unwrap();
    // Two records as version 1 wrote them: an event and a poll state.
    let mut bytes = b"TRBLOG\0\x01".to_vec();
    for (id, payload) in [
        ([7u8; 16], &b"{\"a\":1}"[..]),
        ([0; 16], &b"{\"cursor\":3}"[..]),
    ] {
        let mut body = id.to_vec();
        body.extend_from_slice(&9i64.to_le_bytes());
        body.extend_from_slice(payload);
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
    }
    fs::write(segment::path(&log_dir, 0), &bytes).unwrap();
    let (appender, log) = open(options_in(dir.path())).unwrap();
    assert_eq!(log.end(), 2);
    assert_eq!(
        log.last_state().unwrap(),
        Some((1, Bytes::from_static(b"{\"cursor\":3}")))
    );
    appender.append(events(2, "new")).await.unwrap();
    let all = read_all(&log, 0).await;
    assert_eq!(all.len(), 4);
    assert_eq!(
        all.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [
            RecordKind::Event,
            RecordKind::PollState,
            RecordKind::Event,
            RecordKind::Event
        ]
    );
    assert!(
        segment::path(&log_dir, 2).exists(),
        "new appends go into a segment of the current format"
    );
    drop((appender, log));
    let (_appender, log) = open(options_in(dir.path())).unwrap();
    assert_eq!(read_all(&log, 0).await.len(), 4);
}

#[tokio::test]
async fn a_second_process_cannot_open_a_log_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let lock = recover::lock(dir.path()).unwrap();
    let err = recover::lock(dir.path()).err().unwrap();
    assert!(
        err.to_string()
            .contains("locked by another tributary process"),
        "{err}"
    );
    drop(lock);
    recover::lock(dir.path()).unwrap();
}

#[tokio::test]
async fn a_log_is_full_only_while_a_consumer_is_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (appender, log) = open(options(dir.path(), 1 << 20)).unwrap();
    assert!(!appender.is_full(1), "an empty log is not full");
    let range = appender.append(events(10, "x")).await.unwrap();
    assert!(appender.is_full(1) && log.is_full(1));
    assert!(!appender.is_full(1 << 30), "below max_bytes");
    log.commit("s", range.end).unwrap();
    assert!(
        !appender.is_full(1),
        "everything consumed: the active segment's bytes do not count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connections_newest_state_is_found_across_segments_and_a_torn_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: the states of one connection land in several.
    let options = options(dir.path(), 64 << 10);
    let state = |connection: &str, text: &str| {
        Event::record(RecordKind::PollState, Bytes::from(text.to_string()))
            .with_connection(Some(&Arc::from(connection)))
    };
    {
        let (appender, _log) = open(options.clone()).unwrap();
        for round in 0..40 {
            for connection in ["acme", "globex"] {
                let mut page: Vec<Event> = events(30, connection)
                    .into_iter()
                    .map(|e| e.with_connection(Some(&Arc::from(connection))))
                    .collect();
                page.push(state(connection, &format!("\"{connection}-{round}\"")));
                appender.append(page).await.unwrap();
            }
        }
        // The pipeline's own (untagged) state stays apart.
        appender
            .append(vec![state_plain("\"plain\"")])
            .await
            .unwrap();
    }
    assert!(segments(dir.path()).len() > 2, "spread over segments");
    // A torn append of acme's next page: its state must not count.
    let mut torn = events(1, "acme");
    torn.push(state("acme", "\"acme-torn\""));
    tear_append(dir.path(), &torn);
    let (_appender, log) = open(options).unwrap();
    let states = log.connection_states().unwrap();
    let text = |c: &str| {
        states
            .get(c)
            .map(|(_, p)| String::from_utf8_lossy(p).to_string())
    };
    assert_eq!(text("acme").as_deref(), Some("\"acme-39\""));
    assert_eq!(text("globex").as_deref(), Some("\"globex-39\""));
    assert_eq!(states.len(), 2);
    assert_eq!(
        log.last_state().unwrap().map(|(_, p)| p),
        Some(Bytes::from_static(b"\"plain\""))
    );
    // The offsets are those of the records.
    let (offset, _) = states["globex"].clone();
    let record = read_all(&log, offset).await.remove(0);
    assert_eq!(record.connection.as_deref(), Some("globex"));
    assert_eq!(record.kind, RecordKind::PollState);
}

fn state_plain(text: &str) -> Event {
    Event::record(RecordKind::PollState, Bytes::from(text.to_string()))
}
