//! Log behaviour: group commit, reading across segments, recovery, clean-up.

use std::io::Write;

use bytes::Bytes;

use super::*;

fn options(dir: &Path, segment_bytes: u64) -> Options {
    Options {
        dir: dir.to_path_buf(),
        segment_bytes,
        sinks: vec!["s".into()],
        floor: 0,
        whole_appends: false,
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
    assert!(log.shared.segments.lock().unwrap().len() > 3);
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
    segment::encode(&events(1, "torn")[0], &mut partial);
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
        assert_eq!(log.shared.segments.lock().unwrap().len(), 1);
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
        // Wait for the helper to finish the spare, then fill the first segment.
        while !log_dir.join(SPARE).exists() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        while log.shared.segments.lock().unwrap().len() < 2 {
            let batch = events(10, "a");
            appender.append(batch.clone()).await.unwrap();
            appended.extend(batch);
        }
        let active = *log.shared.segments.lock().unwrap().last().unwrap();
        let len = std::fs::metadata(segment::path(&log_dir, active))
            .unwrap()
            .len();
        assert_eq!(len, 4096, "the new segment is the zero-filled spare");
        assert!(
            log.disk_bytes() < 2 * 4096 + 1024,
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

#[tokio::test]
async fn a_poll_append_cut_short_is_dropped_whole_and_the_last_state_found() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        whole_appends: true,
        ..options(dir.path(), 1 << 20)
    };
    let state = |text: &str| Event::state(Bytes::from(text.to_string()));
    {
        let (appender, log) = open(options.clone()).unwrap();
        assert_eq!(log.last_state(), None);
        let mut page = events(3, "p1");
        page.push(state("\"s1\""));
        assert_eq!(appender.append(page).await.unwrap(), 0..4);
        // A power cut kept part of the next page's write but not its state record.
        appender.append(events(2, "p2")).await.unwrap();
    }
    let (appender, log) = open(options.clone()).unwrap();
    assert_eq!(
        log.end(),
        4,
        "the records without their state record are cut"
    );
    assert_eq!(log.last_state(), Some((3, Bytes::from_static(b"\"s1\""))));
    let mut page = events(1, "p2");
    page.push(state("\"s2\""));
    assert_eq!(appender.append(page).await.unwrap(), 4..6);
    // A torn first append of a fresh segment (records, no state record) goes whole too.
    appender.append(events(2, "p3")).await.unwrap();
    drop((appender, log));
    let (appender, log) = open(options.clone()).unwrap();
    assert_eq!(log.end(), 6);
    drop((appender, log));
    let fresh = tempfile::tempdir().unwrap();
    let fresh_options = Options {
        dir: fresh.path().to_path_buf(),
        ..options.clone()
    };
    {
        let (appender, _log) = open(fresh_options.clone()).unwrap();
        appender.append(events(3, "torn")).await.unwrap();
    }
    let (appender, log) = open(fresh_options).unwrap();
    assert_eq!((log.end(), log.last_state()), (0, None));
    drop((appender, log));
    let (appender, _log) = open(Options {
        whole_appends: false,
        ..options.clone()
    })
    .unwrap();
    appender.append(events(2, "p4")).await.unwrap();
    drop((appender, _log));
    // Without whole appends (a webhook's log) nothing is cut.
    let (_appender, log) = open(Options {
        whole_appends: false,
        ..options
    })
    .unwrap();
    assert_eq!(log.end(), 8);
    assert!(log.last_state().is_none(), "only poll logs look for state");
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
