use super::*;
use crate::log::{self, Options};

fn spec(by: DedupeBy) -> DedupeSpec {
    DedupeSpec {
        by,
        window: Duration::from_secs(3600),
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    map
}

#[tokio::test]
async fn a_header_id_is_claimed_once_and_released_when_its_append_fails() {
    let d = Dedupe::new(&spec(DedupeBy::Headers(vec![
        "webhook-id".into(),
        "svix-id".into(),
    ])));
    let body = [Bytes::from_static(b"{}")];
    let ids = d.ids(&headers(&[("svix-id", "msg_1")]), &body).unwrap();
    assert_eq!(ids, Ids::Request(Some("msg_1".into())));
    let first = d.claim(&ids, 1, 10).await;
    assert_eq!(first.fresh, vec![true]);
    d.settle(first, false, 10);
    // Released: the retry is fresh again.
    let retry = d.claim(&ids, 1, 11).await;
    assert_eq!(retry.fresh, vec![true]);
    d.settle(retry, true, 11);
    assert_eq!(d.claim(&ids, 1, 12).await.fresh, vec![false]);
    // No header: always stored.
    let none = d.ids(&headers(&[]), &body).unwrap();
    assert_eq!(none, Ids::Request(None));
    assert_eq!(d.claim(&none, 1, 13).await.fresh, vec![true]);
}

#[tokio::test]
async fn a_repeat_waits_for_the_append_under_way_and_ids_expire_after_the_window() {
    let d = Arc::new(Dedupe::new(&spec(DedupeBy::Headers(vec!["x-id".into()]))));
    let ids = Ids::Request(Some("a".into()));
    let first = d.claim(&ids, 2, 0).await;
    let waiter = {
        let d = d.clone();
        tokio::spawn(async move { d.claim(&Ids::Request(Some("a".into())), 2, 1).await.fresh })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiter.is_finished(),
        "a repeat must wait while the first append is under way"
    );
    d.settle(first, true, 0);
    assert_eq!(waiter.await.unwrap(), vec![false, false]);
    // One hour later (the window) it is forgotten.
    let later = 3600 * 1_000_000 + 1;
    assert_eq!(d.claim(&ids, 1, later).await.fresh, vec![true]);
}

#[tokio::test]
async fn pointer_ids_are_per_event_and_a_repeat_inside_one_request_counts() {
    let d = Dedupe::new(&spec(DedupeBy::Pointer("/id".into())));
    let events: Vec<Bytes> = [
        r#"{"id":"evt_1"}"#,
        r#"{"id":"evt_2"}"#,
        r#"{"id":"evt_1"}"#,
        r#"{"x":1}"#,
        r#"{"id":7}"#,
    ]
    .iter()
    .map(|s| Bytes::from(*s))
    .collect();
    let ids = d.ids(&HeaderMap::new(), &events).unwrap();
    assert_eq!(
        ids,
        Ids::Events(vec![
            Some("evt_1".into()),
            Some("evt_2".into()),
            Some("evt_1".into()),
            None,
            Some("7".into())
        ])
    );
    let claim = d.claim(&ids, events.len(), 0).await;
    assert_eq!(claim.fresh, vec![true, true, false, true, true]);
    let record = claim.record();
    assert!(record.is_state());
    assert_eq!(ids_of(&record), vec!["evt_1", "evt_2", "7"]);
    d.settle(claim, true, 0);
    let long = vec![Bytes::from(format!(
        "{{\"id\":\"{}\"}}",
        "x".repeat(MAX_ID + 1)
    ))];
    assert!(d
        .ids(&HeaderMap::new(), &long)
        .unwrap_err()
        .to_string()
        .contains("longer than 256"));
}

#[test]
fn the_journal_is_read_up_to_its_last_mark() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL);
    let mut text = Vec::new();
    journal_line(&mut text, 5, "a");
    journal_line(&mut text, 6, "b \"quoted\"\nnewline");
    text.extend_from_slice(b"@12\n");
    journal_line(&mut text, 7, "c");
    text.extend_from_slice(b"99 \"torn"); // no mark after c, a torn line
    std::fs::write(&path, &text).unwrap();
    let (entries, mark) = read_journal(&path).unwrap();
    assert_eq!(mark, Some(12));
    assert_eq!(
        entries,
        vec![
            (5, "a".to_string()),
            (6, "b \"quoted\"\nnewline".to_string())
        ]
    );
    assert_eq!(
        read_journal(&dir.path().join("none")).unwrap(),
        (Vec::new(), None)
    );
}

/// Ids survive a restart: first from the log, then from the journal once the
/// index task has run and the log's segments are gone.
#[tokio::test]
async fn ids_survive_a_restart_from_the_log_and_then_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options {
        dir: dir.path().to_path_buf(),
        segment_bytes: 1 << 20,
        sinks: vec!["table".into(), CONSUMER.into()],
        floor: 0,
    };
    let spec = spec(DedupeBy::Headers(vec!["x-id".into()]));
    let now = crate::event::now_us();
    {
        let (appender, log) = log::open(options()).unwrap();
        let d = Dedupe::new(&spec);
        assert_eq!(d.load(dir.path(), &log, now).await.unwrap().from, 0);
        for id in ["one", "two"] {
            let claim = d.claim(&Ids::Request(Some(id.into())), 1, now).await;
            let events = vec![Event::new(Bytes::from_static(b"{}")), claim.record()];
            appender.append(events).await.unwrap();
            d.settle(claim, true, now);
        }
    }
    // Restart 1: the journal is empty, the ids come from the log.
    let (appender, log) = log::open(options()).unwrap();
    let d = Dedupe::new(&spec);
    let index = d.load(dir.path(), &log, now).await.unwrap();
    assert_eq!(index.from, 0);
    assert_eq!(
        d.claim(&Ids::Request(Some("one".into())), 1, now)
            .await
            .fresh,
        vec![false]
    );
    assert_eq!(
        d.claim(&Ids::Request(Some("three".into())), 1, now)
            .await
            .fresh,
        vec![true]
    );
    // The index journals them; the table sink is done too, so the log may drop them.
    let task = tokio::spawn(index.run());
    log.commit("table", 4).unwrap();
    drop(appender);
    task.await.unwrap().unwrap();
    assert_eq!(log.sink_state(CONSUMER).committed, 4);
    drop(log);
    // Restart 2: the journal holds them.
    let (_appender, log) = log::open(options()).unwrap();
    let d = Dedupe::new(&spec);
    assert_eq!(d.load(dir.path(), &log, now).await.unwrap().from, 4);
    assert_eq!(
        d.claim(&Ids::Request(Some("two".into())), 1, now)
            .await
            .fresh,
        vec![false]
    );
    // Outside the window they are forgotten.
    let d = Dedupe::new(&spec);
    d.load(dir.path(), &log, now + 3601 * 1_000_000)
        .await
        .unwrap();
    assert_eq!(
        d.claim(&Ids::Request(Some("two".into())), 1, now)
            .await
            .fresh,
        vec![true]
    );
}
