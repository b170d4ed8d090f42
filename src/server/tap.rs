//! `GET /api/pipelines/{name}/tap`: a pipeline's events as NDJSON, each
//! once it is durable in the log (acknowledged), from the moment the tap
//! starts, until the client goes away or the pipeline stops.
//!
//! A line is `{"id": …, "received_at": …, "connection": …, "topic": …,
//! "body": <the event's JSON>}`. The tap is a reader of the log like a
//! sink, but records no progress: it never holds segments back and never
//! slows an append. A reader that falls so far behind that the segment it
//! reads is deleted skips to the end and says so in a line
//! `{"skipped_to": offset}`. Under the admin API's rules (token or
//! loopback). On a JetStream log any node taps every partition.
//!
//! `?sink=NAME`: each event once that sink has written it (its committed
//! offset passed it: in its table, delivered, or one of its dead letters),
//! in the same lines. `?dead_letters=true`: the dead letters the sinks
//! write from then on.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures::StreamExt;
use serde_json::json;

use super::admin::{refusal, Admin};
use super::Peer;
use crate::event::{Event, RecordKind};
use crate::log::Reader;
use crate::source::webhook;

/// Most events read at once.
const READ: usize = 256;
/// How often a tap of one sink looks at the sink's progress again.
const SINK_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// The tap route.
pub fn routes() -> Router<Arc<Admin>> {
    Router::new().route("/api/pipelines/{name}/tap", get(tap))
}

/// The tap of pipeline `name` (with `?sink=NAME`: of one sink; with
/// `?dead_letters=true`: its dead letters).
pub async fn tap(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    uri: axum::http::Uri,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&admin, &method, &headers, peer.as_deref()) {
        return refused;
    }
    let Some(p) = admin.pipeline(&name) else {
        return webhook::error(
            StatusCode::NOT_FOUND,
            format!("no pipeline is named {name}"),
        );
    };
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let dead_letters = query
        .iter()
        .any(|(k, v)| k == "dead_letters" && v != "false");
    let sink = query
        .iter()
        .find(|(k, _)| k == "sink")
        .map(|(_, v)| v.clone());
    if let Some(sink) = &sink {
        if !p.sinks.iter().any(|(name, _)| name == sink) {
            let names: Vec<&str> = p.sinks.iter().map(|(n, _)| n.as_str()).collect();
            return webhook::error(
                StatusCode::NOT_FOUND,
                format!(
                    "pipeline {name} has no sink named {sink}; its sinks: {}",
                    names.join(", ")
                ),
            );
        }
    }
    if dead_letters {
        return ndjson(Body::from_stream(
            dead_letter_lines(p.dead_letters.clone()).await,
        ));
    }
    if let Some(cluster) = &p.log_status {
        // Every partition's new messages, whichever node wrote them.
        let events = match cluster.tap(sink).await {
            Ok(events) => events,
            Err(e) => {
                return webhook::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot read pipeline {name}'s partitions from JetStream: {e}"),
                )
            }
        };
        let lines = events
            .filter_map(|event| async move {
                line(&event).map(|l| Ok::<_, std::io::Error>(Bytes::from(l)))
            })
            .take_until(p.stop.clone().cancelled_owned());
        return (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            )],
            Body::from_stream(lines),
        )
            .into_response();
    }
    let log = p.log.clone();
    let reader = log.reader(log.end());
    let state = (log, reader, sink);
    let stream = futures::stream::unfold(state, |(log, mut reader, sink)| async move {
        loop {
            if !reader.wait().await {
                return None;
            }
            match reader.read(READ).await {
                Ok(events) => {
                    if let Some(sink) = &sink {
                        // Shown once the sink passed them all.
                        let through = reader.position();
                        while log.sink_state(sink).committed < through {
                            tokio::time::sleep(SINK_WAIT).await;
                        }
                    }
                    let lines: String = events.iter().filter_map(line).collect();
                    if !lines.is_empty() {
                        let lines = Ok::<_, std::io::Error>(Bytes::from(lines));
                        return Some((lines, (log, reader, sink)));
                    }
                }
                // The segment went (every sink passed it): on from the end.
                Err(_) => {
                    let end = log.end();
                    let skipped = json!({ "skipped_to": end }).to_string() + "\n";
                    let reader: Reader = log.reader(end);
                    return Some((Ok(Bytes::from(skipped)), (log, reader, sink)));
                }
            }
        }
    });
    // A tap of a sink that never passes its events (stopped, say) ends
    // with the pipeline rather than holding its log open.
    let stream = stream.take_until(p.stop.clone().cancelled_owned());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        Body::from_stream(stream),
    )
        .into_response()
}

/// An NDJSON answer of `body`.
fn ndjson(body: Body) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        body,
    )
        .into_response()
}

/// How often a dead-letter tap looks for new files.
const DEAD_LETTERS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The lines of every dead-letter file the sinks write from now on (the
/// files there now are not shown): `{id, received_at, sink, reason,
/// connection, topic, raw}`, `raw` as JSON when it is.
async fn dead_letter_lines(
    storage: crate::sink::Storage,
) -> futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> {
    let known: std::collections::HashSet<String> = storage
        .list()
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
    futures::stream::unfold((storage, known), |(storage, mut known)| async move {
        loop {
            tokio::time::sleep(DEAD_LETTERS_EVERY).await;
            let Ok(names) = storage.list().await else {
                continue;
            };
            let mut lines = String::new();
            for name in names.into_iter().filter(|n| n.ends_with(".parquet")) {
                if known.contains(&name) {
                    continue;
                }
                let Ok(bytes) = storage.get(&name).await else {
                    // Not readable yet: looked at again next time.
                    continue;
                };
                known.insert(name);
                if let Ok(batch) = crate::replay::read(bytes) {
                    lines.push_str(&dead_letter_rows(&batch));
                }
            }
            if !lines.is_empty() {
                return Some((Ok(Bytes::from(lines)), (storage, known)));
            }
        }
    })
    .boxed()
}

/// A dead-letter file's rows as NDJSON lines.
fn dead_letter_rows(batch: &arrow_array::RecordBatch) -> String {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    let text = |name: &str, row: usize| {
        batch
            .column_by_name(name)
            .map(|c| c.as_string::<i32>())
            .filter(|c| !c.is_null(row))
            .map(|c| c.value(row).to_string())
    };
    let at = batch
        .column_by_name("_received_at")
        .and_then(|c| c.as_primitive_opt::<arrow_array::types::TimestampMicrosecondType>());
    let mut out = String::new();
    for row in 0..batch.num_rows() {
        let raw = text("raw", row).unwrap_or_default();
        let raw = serde_json::from_str::<serde_json::Value>(&raw).unwrap_or(json!(raw));
        let received_at = at
            .and_then(|at| chrono::DateTime::from_timestamp_micros(at.value(row)))
            .map(|t| t.to_rfc3339());
        out.push_str(
            &json!({
                "id": text("_event_id", row),
                "received_at": received_at,
                "sink": text("sink", row),
                "reason": text("reason", row),
                "connection": text("connection", row),
                "topic": text("topic", row),
                "raw": raw,
            })
            .to_string(),
        );
        out.push('\n');
    }
    out
}

/// An event's NDJSON line; none for records that are not events.
fn line(event: &Event) -> Option<String> {
    // A replayed dead letter is in the log in its envelope: not shown again.
    if event.kind != RecordKind::Event {
        return None;
    }
    let body = serde_json::from_slice::<&serde_json::value::RawValue>(&event.payload).ok();
    let received_at =
        chrono::DateTime::from_timestamp_micros(event.received_at_us).map(|t| t.to_rfc3339());
    let mut line = json!({
        "id": event.id.hyphenated().to_string(),
        "received_at": received_at,
        "connection": event.connection.as_deref(),
        "topic": event.topic.as_deref(),
        "body": body,
    })
    .to_string();
    line.push('\n');
    Some(line)
}
