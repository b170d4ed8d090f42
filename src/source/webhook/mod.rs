//! The webhook source: `POST <source.path>` → events → durable append → 202.
//!
//! Answers (every error body is JSON `{"error": "…"}` a person can act on):
//! `202 {"accepted": n, "ids": [...]}` once the events are fsynced; `400` for a
//! body that is not JSON, JSON array or NDJSON (`415` if it is also declared
//! as another content type); `405` for other methods; `413`
//! over `max_body`; `408` when the body takes longer than
//! `server.body_timeout`; `429` + `Retry-After` beyond `rate_limit`; `401` when `verify` is set and the provider's signature is
//! missing, wrong or stale (checked on the raw body before any parsing);
//! `503` + `Retry-After` when the pipeline's buffer is at its byte limit or
//! cannot be written; `200` to a provider's registration handshake (Slack's
//! `url_verification`, Zoom's `endpoint.url_validation`) once its signature
//! verified, which is not stored ([`handshake`]).

pub mod body;
pub mod dedupe;
pub mod handshake;
pub mod refusal;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::{debug, warn};
use uuid::Uuid;

use std::sync::Arc;

use crate::event::{now_us, Event, RecordKind};
use crate::log::Appender;
use crate::signature::verify;
use body::Format;
use dedupe::Dedupe;
use handshake::Handshake;
pub use refusal::Refusal;

/// Bodies up to this size are verified on the async worker (a MAC over
/// 64 KiB takes tens of microseconds); larger ones on the blocking pool.
const INLINE_VERIFY_BYTES: usize = 64 << 10;

/// One webhook path and the log it feeds.
pub struct Route {
    /// The pipeline's name, for logs.
    pub pipeline: String,
    /// Largest accepted body in bytes.
    pub max_body: u64,
    /// Disk the pipeline's log may use before answering 503.
    pub max_buffer: u64,
    /// The pipeline's log.
    pub appender: Appender,
    /// Checks the provider's signature on the raw body, if configured.
    pub verifier: Option<Arc<verify::Verifier>>,
    /// Requests beyond `source.rate_limit` get 429.
    pub limiter: Option<RateLimiter>,
    /// Remembered delivery ids, if `source.dedupe` is on.
    pub dedupe: Option<Arc<Dedupe>>,
    /// Longest a client may take to send the body (`server.body_timeout`).
    pub body_timeout: std::time::Duration,
    /// Counters of this path, registered once (they are on every request's path).
    pub metrics: RouteMetrics,
    /// `[route] header`: the (lower-case) request header whose value is kept
    /// with every event of the request, for routing to a table.
    pub topic_header: Option<String>,
    /// `[connections]`: events are POSTed to `<path>/<connection>`, for a
    /// connection of this store.
    pub connections: Option<Arc<crate::connections::store::Store>>,
    /// `[connections] attribute`: on `<path>` itself, this header's value is
    /// one of a connection's `match` values.
    pub attribute_header: Option<String>,
    /// `[connections] attribute`: on `<path>` itself, the value at this
    /// pointer (its tokens) in each event is one of a connection's `match`
    /// values.
    pub attribute_pointer: Option<Vec<String>>,
}

/// The Prometheus counters of one webhook path.
pub struct RouteMetrics {
    /// `tributary_http_responses_total{status="202"}`.
    pub accepted: metrics::Counter,
    /// `tributary_events_received_total`.
    pub events: metrics::Counter,
    /// `tributary_bytes_received_total`: bodies of accepted requests.
    pub bytes: metrics::Counter,
}

impl RouteMetrics {
    /// The counters of `pipeline`'s path (the metrics recorder must be installed).
    pub fn new(pipeline: &str) -> Self {
        let label = [("pipeline", pipeline.to_string())];
        Self {
            accepted: metrics::counter!("tributary_http_responses_total", "pipeline" => pipeline.to_string(), "status" => "202"),
            events: metrics::counter!("tributary_events_received_total", &label),
            bytes: metrics::counter!("tributary_bytes_received_total", &label),
        }
    }
}

/// A token bucket: `rate` requests per second, bursts of up to one second's worth.
pub struct RateLimiter {
    rate: f64,
    /// Tokens left and when they were counted; a std mutex, held for arithmetic only.
    bucket: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl RateLimiter {
    /// A full bucket of `rate` requests per second.
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            bucket: std::sync::Mutex::new((rate.max(1.0), std::time::Instant::now())),
        }
    }

    /// Takes a token, or says how many seconds until one is there.
    pub fn take(&self) -> Result<(), u64> {
        let mut bucket = self.bucket.lock().expect("rate limiter lock");
        let now = std::time::Instant::now();
        let refill = now.duration_since(bucket.1).as_secs_f64() * self.rate;
        bucket.0 = (bucket.0 + refill).min(self.rate.max(1.0));
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - bucket.0) / self.rate).ceil() as u64).max(1))
        }
    }
}

/// A JSON error answer.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The connection a request is for: none on a pipeline without
/// `[connections]`; on one with, the connection its path names (or its
/// attribution header matches), which must exist (404) and not be removed
/// (410, which tells a provider to stop). A paused connection's events are
/// stored: resuming loses nothing.
fn admit_connection(
    route: &Route,
    connection: Option<&str>,
    headers: &axum::http::HeaderMap,
) -> Result<Option<Arc<str>>, Refusal> {
    use crate::connections::{printable, State};
    let Some(store) = &route.connections else {
        return Ok(None);
    };
    let pipeline = || route.pipeline.clone();
    let (id, state) = match (connection, route.attribute_header.as_deref()) {
        (Some(id), _) => (id.to_string(), store.state_of(id)),
        // Each event names its own, once the body is read.
        (None, None) if route.attribute_pointer.is_some() => return Ok(None),
        (None, None) => {
            return Err(Refusal::NoConnection {
                pipeline: pipeline(),
            })
        }
        (None, Some(header)) => {
            let value = headers
                .get(header)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .ok_or_else(|| Refusal::NoAttribute {
                    pipeline: pipeline(),
                    header: header.to_string(),
                })?;
            let (id, state) = store.by_match(value).ok_or_else(|| Refusal::UnknownMatch {
                pipeline: pipeline(),
                value: printable(value),
            })?;
            (id, Some(state))
        }
    };
    match state {
        Some(State::Removed) => Err(Refusal::RemovedConnection {
            pipeline: pipeline(),
            id,
        }),
        Some(_) => Ok(Some(Arc::from(id.as_str()))),
        None => Err(Refusal::UnknownConnection {
            pipeline: pipeline(),
            id: printable(&id),
        }),
    }
}

/// Handles one request to a webhook path: admit → read → verify → parse →
/// store, each step's refusal answered as [`Refusal`] says.
pub async fn receive(
    route: &Route,
    request: Request<Body>,
    connection: Option<&str>,
) -> Result<Response, Refusal> {
    let connection = admit(route, &request, connection)?;
    let format = Format::from_content_type(
        request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    // The head stays for a signature check, which also covers headers and URL.
    let (head, body) = request.into_parts();
    let bytes = read(route, body).await?;
    if let Some((verifier, with)) = verify(route, connection.as_deref(), &head, &bytes).await? {
        // A provider checking the URL before it subscribes: answered, not stored.
        if let Some(handshake) = Handshake::of(verifier.scheme(), &bytes) {
            debug!(pipeline = %route.pipeline, "Answered the provider's registration handshake.");
            return Ok((StatusCode::OK, Json(handshake.answer(&verifier, with))).into_response());
        }
    }
    let payloads = parse(&head.headers, &bytes, format)?;
    let payloads = attribute(route, payloads, connection)?;
    let received_at_us = now_us();
    let topic: Option<Arc<str>> = route
        .topic_header
        .as_deref()
        .and_then(|name| head.headers.get(name))
        .and_then(|v| v.to_str().ok())
        .map(|v| crate::event::topic_of(v.trim()));
    let make = |(payload, connection)| Event {
        id: Uuid::now_v7(),
        received_at_us,
        kind: RecordKind::Event,
        payload,
        topic: topic.clone(),
        connection,
    };
    let Some(dedupe) = &route.dedupe else {
        let events: Vec<Event> = payloads.into_iter().map(make).collect();
        let accepted = accepted_body(events.iter().map(|e| &e.id), None);
        let count = events.len() as u64;
        let owners: Vec<Arc<str>> = events.iter().filter_map(|e| e.connection.clone()).collect();
        if !events.is_empty() {
            route
                .appender
                .append(events)
                .await
                .map_err(|e| append_failed(route, e))?;
        }
        if let Some(store) = &route.connections {
            store.count(&owners);
        }
        route.metrics.events.increment(count);
        route.metrics.bytes.increment(bytes.len() as u64);
        return Ok(accepted_response(accepted));
    };
    let request = (&head.headers, bytes.len(), received_at_us);
    store_deduped(route, dedupe, request, payloads, make).await
}

/// Stores a request's events with `source.dedupe` on: events whose delivery
/// id was stored before are answered, not stored again; the ids travel in
/// the same durable append as the events.
async fn store_deduped(
    route: &Route,
    dedupe: &Arc<Dedupe>,
    (headers, body_len, received_at_us): (&axum::http::HeaderMap, usize, i64),
    payloads: Vec<Owned>,
    make: impl Fn(Owned) -> Event,
) -> Result<Response, Refusal> {
    let bodies: Vec<bytes::Bytes> = payloads.iter().map(|(p, _)| p.clone()).collect();
    let ids = dedupe
        .ids(headers, &bodies)
        .map_err(|too_long| Refusal::BadBody(too_long.to_string()))?;
    let claim = dedupe.claim(&ids, payloads.len(), received_at_us).await;
    let repeats = claim.fresh.iter().filter(|f| !**f).count();
    let mut events: Vec<Event> = payloads
        .into_iter()
        .zip(&claim.fresh)
        .filter(|(_, fresh)| **fresh)
        .map(|(p, _)| make(p))
        .collect();
    // Every event a repeat (or the request's id was): nothing new to store.
    let duplicate = repeats > 0 && events.is_empty();
    let accepted = accepted_body(events.iter().map(|e| &e.id), Some((repeats, duplicate)));
    if duplicate {
        debug!(pipeline = %route.pipeline, "A repeated delivery id; answering 202 without storing.");
        dedupe.settle(claim, true, received_at_us);
        return Ok(accepted_response(accepted));
    }
    // The ids travel in the same durable append as the events. The append and
    // its settling run on their own task: a client that hangs up cannot leave
    // an id claimed but never settled.
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    // Only a connections pipeline counts records per connection.
    let owners: Vec<Option<Arc<str>>> = match route.connections {
        Some(_) => events.iter().map(|e| e.connection.clone()).collect(),
        None => Vec::new(),
    };
    events.push(claim.record());
    let (appender, dedupe) = (route.appender.clone(), dedupe.clone());
    let stored = tokio::spawn(async move {
        let result = appender.append_deduped(events).await;
        dedupe.settle(claim, result.is_ok(), received_at_us);
        result
    })
    .await
    .unwrap_or(Err(crate::log::AppendError::Closed));
    let (range, dropped) = stored.map_err(|e| append_failed(route, e))?;
    if let Some(store) = &route.connections {
        let kept = owners
            .iter()
            .zip(dropped.iter().chain(std::iter::repeat(&false)));
        store.count(kept.filter(|(_, d)| !**d).filter_map(|(o, _)| o.as_ref()));
    }
    // The range includes the ids' state record.
    route.metrics.events.increment(range.end - range.start - 1);
    route.metrics.bytes.increment(body_len as u64);
    if !dropped.iter().any(|d| *d) {
        return Ok(accepted_response(accepted));
    }
    // A replicated log held some already (a retry another node stored): they
    // were not stored again, and are answered so.
    let kept: Vec<&Uuid> = ids
        .iter()
        .zip(&dropped)
        .filter(|(_, d)| !**d)
        .map(|(id, _)| id)
        .collect();
    let again = ids.len() - kept.len();
    debug!(pipeline = %route.pipeline, duplicates = again, "The log's duplicate window dropped events another node stored.");
    let duplicate = kept.is_empty();
    Ok(accepted_response(accepted_body(
        kept.into_iter(),
        Some((repeats + again, duplicate)),
    )))
}

/// An event's bytes and the connection it is for.
type Owned = (bytes::Bytes, Option<Arc<str>>);

/// Each event with its connection: the request's, or, with `[connections]
/// attribute.pointer` on the source's own path, the one its value at the
/// pointer matches. A request is stored whole or refused whole: an event
/// without a value there is `400`, a value no connection matches `404`
/// (naming them). Events of removed connections are not stored; a request
/// of nothing else is `410`.
fn attribute(
    route: &Route,
    payloads: Vec<bytes::Bytes>,
    connection: Option<Arc<str>>,
) -> Result<Vec<Owned>, Refusal> {
    let (Some(store), Some(pointer), None) = (
        &route.connections,
        route.attribute_pointer.as_deref(),
        &connection,
    ) else {
        return Ok(payloads
            .into_iter()
            .map(|p| (p, connection.clone()))
            .collect());
    };
    use crate::connections::{printable, State};
    let pointer_text = || format!("/{}", pointer.join("/"));
    let mut found: std::collections::HashMap<String, Option<(Arc<str>, State)>> =
        Default::default();
    let mut unknown = Vec::new();
    let mut events = Vec::with_capacity(payloads.len());
    let mut removed = Vec::new();
    for (index, payload) in payloads.into_iter().enumerate() {
        let value = match crate::encode::pointer::value(&payload, pointer) {
            Ok(Ok(raw)) => match serde_json::from_slice::<serde_json::Value>(raw) {
                Ok(serde_json::Value::String(s)) => Some(s),
                Ok(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            },
            _ => None,
        };
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Err(Refusal::NoPointerValue {
                pipeline: route.pipeline.clone(),
                pointer: pointer_text(),
                index,
            });
        };
        let matched = found
            .entry(value.clone())
            .or_insert_with(|| {
                store
                    .by_match(&value)
                    .map(|(id, state)| (Arc::from(id.as_str()), state))
            })
            .clone();
        match matched {
            None => {
                if !unknown.contains(&value) {
                    unknown.push(value);
                }
            }
            Some((id, State::Removed)) => {
                if !removed.contains(&id) {
                    removed.push(id);
                }
            }
            Some((id, _)) => events.push((payload, Some(id))),
        }
    }
    if !unknown.is_empty() {
        let shown: Vec<String> = unknown.iter().take(5).map(|v| printable(v)).collect();
        return Err(Refusal::UnknownMatch {
            pipeline: route.pipeline.clone(),
            value: format!(
                "{} (at {} in {} of the request's events)",
                shown.join(", "),
                pointer_text(),
                if unknown.len() > 5 {
                    "some"
                } else {
                    "one or more"
                }
            ),
        });
    }
    if events.is_empty() && !removed.is_empty() {
        return Err(Refusal::RemovedConnection {
            pipeline: route.pipeline.clone(),
            id: removed
                .iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if !removed.is_empty() {
        tracing::info!(pipeline = %route.pipeline, removed = ?removed, "Events of removed connections were not stored (the others of the request were).");
    }
    Ok(events)
}

/// What is refused before the body is read: another method, a connection
/// that is not there, a rate beyond the limit, a declared length over
/// `max_body`, a full buffer.
fn admit(
    route: &Route,
    request: &Request<Body>,
    connection: Option<&str>,
) -> Result<Option<Arc<str>>, Refusal> {
    if request.method() != Method::POST {
        return Err(Refusal::Method(request.method().clone()));
    }
    let connection = admit_connection(route, connection, request.headers())?;
    if let Some(limiter) = &route.limiter {
        limiter.take().map_err(|wait| Refusal::RateLimited {
            pipeline: route.pipeline.clone(),
            rate: limiter.rate,
            wait,
        })?;
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > route.max_body) {
        return Err(Refusal::TooLarge(route.max_body));
    }
    if route.appender.is_full(route.max_buffer) {
        warn!(pipeline = %route.pipeline, "Buffer full; answering 503.");
        return Err(Refusal::BufferFull {
            pipeline: route.pipeline.clone(),
            max_bytes: route.max_buffer,
        });
    }
    Ok(connection)
}

/// The whole body, within `max_body` and `server.body_timeout`.
async fn read(route: &Route, body: Body) -> Result<bytes::Bytes, Refusal> {
    let read = axum::body::to_bytes(body, route.max_body as usize);
    match tokio::time::timeout(route.body_timeout, read).await {
        Err(_) => Err(Refusal::BodyTimeout(route.body_timeout)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_length_limit(&e) => Err(Refusal::TooLarge(route.max_body)),
        Ok(Err(e)) => Err(Refusal::Unreadable(e.to_string())),
    }
}

/// The provider's signature on the raw body, if `verify` is set: the
/// verifier and which of its secrets signed. A connection with its own
/// `secret` is verified with it, instead of the pipeline's.
async fn verify(
    route: &Route,
    connection: Option<&str>,
    head: &axum::http::request::Parts,
    bytes: &bytes::Bytes,
) -> Result<Option<(Arc<verify::Verifier>, verify::SignedWith)>, Refusal> {
    let Some(shared) = &route.verifier else {
        return Ok(None);
    };
    let own = match (&route.connections, connection) {
        (Some(store), Some(id)) => store
            .credentials(id)
            .ok()
            .and_then(|mut c| c.remove("secret")),
        _ => None,
    };
    let verifier = match own {
        None if !shared.has_secrets() => {
            return Err(Refusal::Signature(verify::Rejected::Unusable(
                "the connection has no secret yet: register it (tributary register --connection) or PATCH its credentials with \"secret\"".into(),
            )))
        }
        None => shared.clone(),
        Some(secret) => match shared.with_secret("the connection's secret", secret) {
            Ok(own) => Arc::new(own),
            Err(e) => {
                return Err(Refusal::Signature(verify::Rejected::Unusable(format!(
                    "{e}; PATCH the connection with a valid one"
                ))))
            }
        },
    };
    let text = |name| {
        head.headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let path = head.uri.path_and_query().map_or("", |p| p.as_str());
    let url = format!(
        "{}://{}{path}",
        text(header::HeaderName::from_static("x-forwarded-proto")).unwrap_or("https"),
        text(header::HOST).unwrap_or("")
    );
    let now = chrono::Utc::now().timestamp();
    // A MAC over a large body takes milliseconds: off the async workers.
    // Only then are the headers copied (the blocking task owns them).
    let verdict = if bytes.len() <= INLINE_VERIFY_BYTES {
        check_signature(&verifier, &head.headers, &url, bytes, now)
    } else {
        let (verifier, headers, body) = (verifier.clone(), head.headers.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || check_signature(&verifier, &headers, &url, &body, now))
            .await
            .unwrap_or(Err(verify::Rejected::Unfinished))
    };
    match verdict {
        Ok(with) => Ok(Some((verifier, with))),
        Err(reason) => {
            debug!(pipeline = %route.pipeline, reason = %reason, "Signature check failed; answering 401.");
            Err(Refusal::Signature(reason))
        }
    }
}

/// The body's events. A body that parses is taken whatever its declared
/// type (curl -d sends form encoding); one that does not, under a type that
/// is not JSON, gets that named.
fn parse(
    headers: &axum::http::HeaderMap,
    bytes: &bytes::Bytes,
    format: Format,
) -> Result<Vec<bytes::Bytes>, Refusal> {
    body::split(bytes, format).map_err(|e| {
        let declared = headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        match declared.filter(|t| !t.to_ascii_lowercase().contains("json")) {
            Some(declared) => Refusal::NotJson {
                declared,
                reason: e.to_string(),
            },
            None => Refusal::BadBody(e.to_string()),
        }
    })
}

/// The verdict of `verifier` on a POST of `body` to `url` with `headers`.
fn check_signature(
    verifier: &verify::Verifier,
    headers: &axum::http::HeaderMap,
    url: &str,
    body: &[u8],
    now: i64,
) -> Result<verify::SignedWith, verify::Rejected> {
    verifier.verify(&verify::Signed {
        headers,
        method: "POST",
        url,
        body,
        now,
    })
}

fn append_failed(route: &Route, e: crate::log::AppendError) -> Refusal {
    warn!(pipeline = %route.pipeline, error = %crate::error::chain(&e), "Append failed; answering 503.");
    let pipeline = route.pipeline.clone();
    match e {
        crate::log::AppendError::Cluster(_) => Refusal::NotAcknowledged { pipeline },
        _ => Refusal::NotDurable { pipeline },
    }
}

fn accepted_response(body: String) -> Response {
    (
        StatusCode::ACCEPTED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// `{"accepted": n, "ids": [...]}`, written directly: it is on every request's
/// path and the ids need no escaping. With dedupe, `"duplicates": k` counts
/// events not stored again and `"duplicate": true` marks a repeated delivery.
fn accepted_body<'a>(
    ids: impl ExactSizeIterator<Item = &'a Uuid>,
    repeats: Option<(usize, bool)>,
) -> String {
    let mut body = String::with_capacity(32 + ids.len() * (uuid::fmt::Hyphenated::LENGTH + 3));
    body.push_str("{\"accepted\":");
    body.push_str(&ids.len().to_string());
    body.push_str(",\"ids\":[");
    let mut text = Uuid::encode_buffer();
    for (i, id) in ids.enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push('"');
        body.push_str(id.hyphenated().encode_lower(&mut text));
        body.push('"');
    }
    body.push(']');
    if let Some((count, duplicate)) = repeats {
        if duplicate {
            body.push_str(",\"duplicate\":true");
        }
        if count > 0 {
            body.push_str(",\"duplicates\":");
            body.push_str(&count.to_string());
        }
    }
    body.push('}');
    body
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limiter_allows_a_burst_then_says_when_to_retry() {
        let limiter = RateLimiter::new(3.0);
        for _ in 0..3 {
            limiter.take().unwrap();
        }
        assert_eq!(limiter.take(), Err(1));
        // A slow rate asks for a longer wait.
        let slow = RateLimiter::new(0.1);
        slow.take().unwrap();
        assert_eq!(slow.take(), Err(10));
    }

    #[test]
    fn the_accepted_body_is_json_with_every_id() {
        let events: Vec<Event> = (0..3)
            .map(|i| Event::new(bytes::Bytes::from(format!("{{\"i\":{i}}}"))))
            .collect();
        let body: serde_json::Value =
            serde_json::from_str(&accepted_body(events.iter().map(|e| &e.id), None)).unwrap();
        assert_eq!(body["accepted"], 3);
        let ids: Vec<String> = events
            .iter()
            .map(|e| e.id.hyphenated().to_string())
            .collect();
        assert_eq!(body["ids"], serde_json::json!(ids));
        assert_eq!(accepted_body([].iter(), None), r#"{"accepted":0,"ids":[]}"#);
    }
}
