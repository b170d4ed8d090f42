//! Why a webhook request is refused, and the answer each reason gets: the
//! status table of docs/operations.md's "HTTP answers" lives here and nowhere else.
//! Every answer is JSON `{"error": "…"}` whose message names what is wrong
//! and what to do; `405` adds `Allow`, `429` and `503` add `Retry-After`.
//! A message never holds a secret or the body.

use std::time::Duration;

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::config::check::format_size;
use crate::signature::verify::Rejected;

/// Seconds a client is asked to wait when the buffer is full or failing.
const RETRY_AFTER_SECS: u64 = 1;

/// One reason a request is not stored.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// `405`: not a POST.
    #[error("{0} is not accepted here; send events with POST")]
    Method(Method),
    /// `404`: a connections pipeline's own path, without a connection id
    /// (and without `[connections] attribute`).
    #[error("pipeline {pipeline} takes connections: POST each account's events to this path followed by /<connection id>")]
    NoConnection {
        /// The pipeline.
        pipeline: String,
    },
    /// `400`: the attribution header is missing.
    #[error("pipeline {pipeline} names a webhook's connection by its {header} header, which this request lacks")]
    NoAttribute {
        /// The pipeline.
        pipeline: String,
        /// `[connections] attribute.header`.
        header: String,
    },
    /// `400`: an event lacks the value its connection is named by.
    #[error("event {index} of the request (counting from 0) has no string or number at {pointer}, which names its connection in pipeline {pipeline} ([connections] attribute.pointer); nothing of the request was stored")]
    NoPointerValue {
        /// The pipeline.
        pipeline: String,
        /// `[connections] attribute.pointer`.
        pointer: String,
        /// Which event.
        index: usize,
    },
    /// `404`: no connection has the attribution value (the header's, or an
    /// event's at the pointer; then nothing of the request was stored).
    #[error("no connection of pipeline {pipeline} has the match value {value}; add it to the connection's \"match\" values")]
    UnknownMatch {
        /// The pipeline.
        pipeline: String,
        /// The header's value, made printable.
        value: String,
    },
    /// `404`: the path names no connection.
    #[error("pipeline {pipeline} has no connection {id}; add it through the admin API first")]
    UnknownConnection {
        /// The pipeline.
        pipeline: String,
        /// The id, made printable.
        id: String,
    },
    /// `410`: the connection was removed (a provider stops sending).
    #[error(
        "connection {id} of pipeline {pipeline} was removed; its events are no longer accepted"
    )]
    RemovedConnection {
        /// The pipeline.
        pipeline: String,
        /// The connection.
        id: String,
    },
    /// `429`: over `source.rate_limit`.
    #[error("pipeline {pipeline} accepts at most {rate} requests per second on this path (source.rate_limit); retry after {wait} s")]
    RateLimited {
        /// The pipeline.
        pipeline: String,
        /// Requests per second.
        rate: f64,
        /// Seconds until a request would be taken.
        wait: u64,
    },
    /// `413`: over `max_body`.
    #[error("the body is larger than this source's max_body of {}; send fewer events per request or raise source.max_body", format_size(*.0))]
    TooLarge(u64),
    /// `503`: the log is at `buffer.max_bytes`.
    #[error("the buffer of pipeline {pipeline} is full ({}) because its sinks are behind; retry later", format_size(*max_bytes))]
    BufferFull {
        /// The pipeline.
        pipeline: String,
        /// `buffer.max_bytes`.
        max_bytes: u64,
    },
    /// `408`: the body took longer than `server.body_timeout`.
    #[error("the body did not arrive within server.body_timeout ({}); send it faster or raise the limit", humantime::format_duration(*.0))]
    BodyTimeout(Duration),
    /// `400`: the body could not be read.
    #[error("could not read the request body: {0}")]
    Unreadable(String),
    /// `401`: `verify` is set and the signature is missing, wrong or stale.
    #[error("signature verification failed: {0}")]
    Signature(Rejected),
    /// `415`: not JSON, and declared as another type.
    #[error("the body is declared as {declared} and is not JSON; send JSON events with Content-Type: application/json, or NDJSON with application/x-ndjson ({reason})")]
    NotJson {
        /// The Content-Type.
        declared: String,
        /// Where parsing failed.
        reason: String,
    },
    /// `400`: not JSON, a JSON array or NDJSON; or a delivery id too long.
    #[error("{0}")]
    BadBody(String),
    /// `503`: the log could not make the events durable.
    #[error("the events could not be made durable in pipeline {pipeline}; nothing was stored, retry later")]
    NotDurable {
        /// The pipeline.
        pipeline: String,
    },
    /// `503`: the pipeline is restarting after a configuration reload.
    #[error("pipeline {pipeline} is restarting after a configuration reload; retry in a moment")]
    Restarting {
        /// The pipeline.
        pipeline: String,
    },
    /// `503`: a JetStream cluster did not acknowledge every event; some
    /// may be stored (a retry with the same delivery id is stored once).
    #[error("the JetStream cluster did not acknowledge every event of this request in pipeline {pipeline} (no quorum, or no server reachable); retry later")]
    NotAcknowledged {
        /// The pipeline.
        pipeline: String,
    },
}

impl Refusal {
    /// The status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::NoConnection { .. }
            | Refusal::UnknownMatch { .. }
            | Refusal::UnknownConnection { .. } => StatusCode::NOT_FOUND,
            Refusal::RemovedConnection { .. } => StatusCode::GONE,
            Refusal::NoAttribute { .. }
            | Refusal::NoPointerValue { .. }
            | Refusal::Unreadable(_)
            | Refusal::BadBody(_) => StatusCode::BAD_REQUEST,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Refusal::Signature(_) => StatusCode::UNAUTHORIZED,
            Refusal::NotJson { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::BufferFull { .. }
            | Refusal::NotDurable { .. }
            | Refusal::NotAcknowledged { .. }
            | Refusal::Restarting { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = super::error(self.status(), self.to_string());
        let headers = response.headers_mut();
        match self {
            Refusal::Method(_) => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            Refusal::RateLimited { wait, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
            }
            Refusal::BufferFull { .. }
            | Refusal::NotDurable { .. }
            | Refusal::NotAcknowledged { .. }
            | Refusal::Restarting { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_is_json_with_its_status_and_headers() {
        let cases = [
            (Refusal::Method(Method::GET), 405, Some("allow")),
            (
                Refusal::RateLimited {
                    pipeline: "p".into(),
                    rate: 2.0,
                    wait: 3,
                },
                429,
                Some("retry-after"),
            ),
            (Refusal::TooLarge(1 << 20), 413, None),
            (
                Refusal::NotDurable {
                    pipeline: "p".into(),
                },
                503,
                Some("retry-after"),
            ),
            (Refusal::Signature(Rejected::Mismatch), 401, None),
        ];
        for (refusal, status, header) in cases {
            let message = refusal.to_string();
            let response = refusal.into_response();
            assert_eq!(response.status().as_u16(), status, "{message}");
            if let Some(name) = header {
                assert!(response.headers().contains_key(name), "{message}");
            }
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/json",
                "{message}"
            );
        }
        assert_eq!(
            Refusal::RateLimited {
                pipeline: "p".into(),
                rate: 2.0,
                wait: 3
            }
            .into_response()
            .headers()[header::RETRY_AFTER],
            "3"
        );
    }
}
