use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;
use reqwest::header::RETRY_AFTER;

fn answer(status: u16, retry_after: Option<&str>) -> Attempt {
    let mut headers = HeaderMap::new();
    if let Some(v) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
    }
    Attempt::Answered(Response {
        status: StatusCode::from_u16(status).unwrap(),
        headers,
        body: Bytes::from_static(b"{\"message\":\"nope\"}"),
    })
}

#[test]
fn verdicts() {
    assert_eq!(verdict(&answer(200, None), 0, 5, true), Verdict::Ok);
    assert_eq!(
        verdict(&answer(429, Some("7")), 0, 5, false),
        Verdict::RetryAfter(Duration::from_secs(7))
    );
    assert_eq!(
        verdict(&answer(503, Some("2")), 4, 5, false),
        Verdict::RetryAfter(Duration::from_secs(2))
    );
    assert!(
        matches!(verdict(&answer(503, Some("2")), 5, 5, false), Verdict::Fail(m) if m.contains("gave up after 5 retries"))
    );
    assert!(
        matches!(verdict(&answer(429, Some("86400")), 0, 5, false), Verdict::Fail(m) if m.contains("Retry-After"))
    );
    assert_eq!(
        verdict(&answer(401, None), 0, 5, true),
        Verdict::Reauthenticate
    );
    assert!(
        matches!(verdict(&answer(401, None), 0, 5, false), Verdict::Reject(m) if m.contains("401") && m.contains("nope"))
    );
    assert!(matches!(
        verdict(&answer(404, None), 0, 5, true),
        Verdict::Reject(_)
    ));
    // Full jitter: anywhere from zero up to the exponential step.
    for tries in 0..6 {
        match verdict(&answer(500, None), tries, 10, false) {
            Verdict::RetryAfter(d) => assert!(d <= BACKOFF_BASE * (1 << tries)),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        matches!(verdict(&Attempt::Failed("timed out".into()), 0, 0, false), Verdict::Fail(m) if m.contains("timed out"))
    );
}

/// When each try was sent, and whether it asked for a renewed token.
type Sent = Mutex<Vec<(tokio::time::Instant, bool)>>;

/// A scripted sequence of tries for the retry loop.
fn script(tries: Vec<Attempt>) -> (Mutex<VecDeque<Attempt>>, Sent) {
    (Mutex::new(tries.into()), Mutex::new(Vec::new()))
}

#[tokio::test(start_paused = true)]
async fn the_loop_waits_exactly_as_retry_after_says() {
    let (tries, sent) = script(vec![
        answer(429, Some("30")),
        answer(503, Some("12")),
        answer(200, None),
    ]);
    let started = tokio::time::Instant::now();
    let stop = CancellationToken::new();
    let response = with_retries(5, false, &stop, |renew| {
        sent.lock()
            .unwrap()
            .push((tokio::time::Instant::now(), renew));
        let next = tries.lock().unwrap().pop_front().unwrap();
        async move { Ok(next) }
    })
    .await
    .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let at: Vec<Duration> = sent
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| *t - started)
        .collect();
    // Paused time: the waits are exact.
    assert_eq!(
        at,
        vec![
            Duration::ZERO,
            Duration::from_secs(30),
            Duration::from_secs(42)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_401_with_oauth_renews_the_token_once() {
    let (tries, sent) = script(vec![answer(401, None), answer(401, None)]);
    let stop = CancellationToken::new();
    let result = with_retries(5, true, &stop, |renew| {
        sent.lock()
            .unwrap()
            .push((tokio::time::Instant::now(), renew));
        let next = tries.lock().unwrap().pop_front().unwrap();
        async move { Ok(next) }
    })
    .await;
    // First try with the cached token, a second with a renewed one, then the 401 stands.
    let renewals: Vec<bool> = sent.lock().unwrap().iter().map(|(_, r)| *r).collect();
    assert_eq!(renewals, vec![false, true]);
    assert!(matches!(result, Err(PollError::Rejected(m)) if m.starts_with("401")));
}

#[tokio::test(start_paused = true)]
async fn retries_give_up_after_max_retries_and_shutdown_cuts_the_wait() {
    let (tries, _) = script((0..4).map(|_| answer(500, None)).collect());
    let stop = CancellationToken::new();
    let result = with_retries(3, false, &stop, |_| {
        let next = tries.lock().unwrap().pop_front().unwrap();
        async move { Ok(next) }
    })
    .await;
    assert!(matches!(result, Err(PollError::Request(m)) if m.contains("gave up after 3 retries")));
    assert!(tries.lock().unwrap().is_empty(), "1 try + 3 retries");

    let stop = CancellationToken::new();
    stop.cancel();
    let result = with_retries(3, false, &stop, |_| async { Ok(answer(429, Some("600"))) }).await;
    assert!(matches!(result, Err(PollError::Stopped)));
}

#[test]
fn a_connections_access_token_is_used_until_shortly_before_it_expires() {
    let now = chrono::DateTime::parse_from_rfc3339("2026-12-07T12:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert_eq!(seconds_left("2026-12-07T13:00:00Z", now), Some(3600));
    assert_eq!(seconds_left("2026-12-07T14:00:00+01:00", now), Some(3600));
    assert_eq!(
        seconds_left(&(now.timestamp() + 90).to_string(), now),
        Some(90)
    );
    assert_eq!(seconds_left("2026-12-07T11:00:00Z", now), None, "past");
    assert_eq!(seconds_left("tomorrow", now), None);
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let credentials = [
        ("access_token".to_string(), "at-1".to_string()),
        ("expires_at".to_string(), later),
        ("refresh_token".to_string(), "rt-1".to_string()),
    ];
    let client = Client::on(reqwest::Client::new()).with_credentials(credentials.into());
    let seeded = client.token.lock().unwrap();
    let token = seeded.as_ref().expect("a live access token is kept");
    assert_eq!(token.value, "at-1");
    assert!(token.renew_at > Instant::now() + Duration::from_secs(3000));
    drop(seeded);
    // One about to expire is not: the first run refreshes.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc3339();
    let credentials = [
        ("access_token".to_string(), "at-2".to_string()),
        ("expires_at".to_string(), soon),
    ];
    let client = Client::on(reqwest::Client::new()).with_credentials(credentials.into());
    assert!(client.token.lock().unwrap().is_none());
}
