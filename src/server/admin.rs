//! The admin endpoints: `/readyz`, `/metrics` (Prometheus text),
//! `GET /api/pipelines` (each pipeline's log and sinks) and
//! `POST /api/pipelines/{name}/replay` (dead letters back into the log, with
//! progress as NDJSON lines). With `admin.token_env` set, `/metrics` and every
//! `/api/…` request need `Authorization: Bearer <token>`; without it they
//! answer only requests from loopback, so a default install never shows its
//! state, or takes a replay, from the network. Without a token the API and the
//! status page also want a loopback name in `Host` (else 421): a web page on
//! this machine cannot read them through DNS rebinding, nor a reverse proxy
//! on the host expose them; and a state-changing request (POST, …) from a web
//! page of another origin is refused (403). `/metrics` asks only for a
//! loopback peer: a scraper on this machine may name the host as it likes.
//! `/healthz` and `/readyz` answer every probe; `/readyz` names its reasons
//! (sink errors, storage locations) only to a request the API would answer. A
//! replay must be sent as `application/json`, which a cross-site form cannot
//! do without a preflight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use super::Peer;
use crate::event::now_us;
use crate::log::{Appender, Log};
use crate::replay;
use crate::sink::health::{SinkHealth, SinkState};
use crate::sink::Storage;
use crate::source::webhook;

/// What the admin API can see.
pub struct Admin {
    /// The bearer token `/metrics` and `/api/…` require, if any.
    pub token: Option<String>,
    /// Every pipeline (replaced on a reload).
    pub pipelines: super::Swap<Vec<Arc<PipelineView>>>,
    /// Renders the metrics page.
    pub metrics: PrometheusHandle,
    /// The configuration, for reading tables (`/api/pipelines/{name}/sample`).
    pub config: super::Swap<Option<Arc<crate::config::Config>>>,
}

impl Admin {
    /// The pipeline named `name`.
    pub fn pipeline(&self, name: &str) -> Option<Arc<PipelineView>> {
        self.pipelines
            .load()
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }
}

/// One pipeline as the admin API sees it.
pub struct PipelineView {
    /// Pipeline name.
    pub name: String,
    /// `webhook` or `poll`.
    pub source: &'static str,
    /// Its sinks, by name.
    pub sinks: Vec<(String, Arc<SinkHealth>)>,
    /// The storage of each Parquet and Delta sink, probed by `/readyz`.
    pub probes: Vec<(String, Storage)>,
    /// Its log.
    pub log: Log,
    /// For replays.
    pub appender: Appender,
    /// `<lake>/_dead_letters/<pipeline>/`.
    pub dead_letters: Storage,
    /// `buffer.max_bytes`.
    pub max_buffer: u64,
    /// A replay is under way (one at a time).
    pub replaying: AtomicBool,
    /// The webhook's remembered delivery ids, if it dedupes.
    pub dedupe: Option<Arc<crate::source::webhook::dedupe::Dedupe>>,
    /// What its log shows beyond the contract (a JetStream log's partitions).
    pub log_status: Option<Arc<dyn crate::log::LogStatus>>,
    /// How its poll source's runs go, if it polls (on this node).
    pub poll: Option<Arc<crate::source::poll::health::PollHealth>>,
    /// Its connections, with `[connections]`.
    pub connections: Option<Arc<crate::connections::store::Store>>,
    /// Cancelled when it stops (a reload, or the run's end): its taps end.
    pub stop: tokio_util::sync::CancellationToken,
}

/// How long `/readyz` waits for a sink's storage to answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The admin routes (all but `/healthz`).
pub fn api(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .route("/status", get(status_page))
        .route("/api/pipelines", get(pipelines))
        .route("/api/pipelines/{name}/replay", post(replay_dead_letters))
        .route("/api/pipelines/{name}/sample", get(sample))
        .route(
            "/api/pipelines/{name}/dead_letters",
            get(dead_letter_reasons),
        )
        .with_state(admin)
}

/// Whether a request declares a JSON body: what a state-changing admin
/// request must do (a cross-site form cannot without a preflight).
pub(super) fn sent_as_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
}

/// The refusal of a request without the admin token, when one is
/// configured; when none is, of a request a web page or another machine
/// could have made (see [`open_refusal`]).
pub(super) fn refusal(
    admin: &Admin,
    method: &Method,
    headers: &HeaderMap,
    peer: Option<&Peer>,
) -> Option<Response> {
    match &admin.token {
        Some(token) => token_refusal(token, headers),
        None => open_refusal(method, headers, peer),
    }
}

/// `/metrics`' refusal: the token's when one is configured; else that of a
/// peer on another machine only, whatever `Host` a scraper on this machine
/// names (the page holds counts, no rows, errors or locations).
fn metrics_refusal(admin: &Admin, headers: &HeaderMap, peer: Option<&Peer>) -> Option<Response> {
    match &admin.token {
        Some(token) => token_refusal(token, headers),
        None => peer_refusal(peer),
    }
}

/// Without a token, the refusal of a request from another machine, of one
/// addressed by a name that is not loopback (a page on a rebinding domain, or
/// a reverse proxy: both send their own `Host`), and of a state-changing one
/// from a web page of another origin.
fn open_refusal(method: &Method, headers: &HeaderMap, peer: Option<&Peer>) -> Option<Response> {
    if let Some(refused) = peer_refusal(peer) {
        return Some(refused);
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !host.is_some_and(loopback_host) {
        let has = match host {
            Some(host) => format!("Host: {host}"),
            None => "no Host header".to_string(),
        };
        return Some(webhook::error(
            StatusCode::MISDIRECTED_REQUEST,
            format!("without admin.token_env the admin API answers only requests addressed to a loopback name (Host: localhost, 127.0.0.1 or [::1], any port), and this one has {has}; call it as http://127.0.0.1:<port>/…, or set admin.token_env (and send Authorization: Bearer <token>), as a reverse proxy in front of it needs"),
        ));
    }
    let origin = headers.get(header::ORIGIN);
    if !method.is_safe() && origin.is_some_and(|o| !o.to_str().is_ok_and(loopback_origin)) {
        let from = origin
            .and_then(|o| o.to_str().ok())
            .unwrap_or("(unreadable)");
        return Some(webhook::error(
            StatusCode::FORBIDDEN,
            format!("without admin.token_env the admin API takes no {method} from a web page of another site (Origin: {from}); send it from this machine without an Origin header (as `tributary replay` does), or set admin.token_env (and send Authorization: Bearer <token>)"),
        ));
    }
    None
}

/// The refusal of a request from another machine.
fn peer_refusal(peer: Option<&Peer>) -> Option<Response> {
    if peer.is_some_and(|Peer(addr)| addr.ip().to_canonical().is_loopback()) {
        return None;
    }
    Some(webhook::error(
        StatusCode::FORBIDDEN,
        "without admin.token_env the admin API answers only requests from this machine; set admin.token_env (and send Authorization: Bearer <token>), or call it on 127.0.0.1",
    ))
}

/// The refusal of a request without `Authorization: Bearer <token>`.
fn token_refusal(token: &str, headers: &HeaderMap) -> Option<Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Digests compared, so the time taken says nothing about the token's bytes.
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    match given {
        Some(given) if digest(given).as_ref() == digest(token).as_ref() => None,
        _ => {
            let mut response = webhook::error(
                StatusCode::UNAUTHORIZED,
                "the admin API needs Authorization: Bearer <token>, the value of the env var named by admin.token_env",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(response)
        }
    }
}

/// Whether a `Host` value (`name[:port]`, `[v6][:port]`) names this
/// machine by a loopback name: `localhost`, 127.0.0.0/8 or `::1`.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((v6, "")) => v6,
            Some((v6, port)) if port.strip_prefix(':').is_some_and(is_port) => v6,
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    loopback_name(name)
}

/// Whether an `Origin` value (`scheme://host[:port]`; `null` from a
/// sandboxed page or a file) is a page served from this machine's loopback.
fn loopback_origin(origin: &str) -> bool {
    url::Url::parse(origin).is_ok_and(|u| match u.host() {
        Some(url::Host::Domain(name)) => loopback_name(name),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.to_canonical().is_loopback(),
        None => false,
    })
}

/// `localhost` (a trailing `.` allowed) or a loopback IP address.
fn loopback_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// A port as a `Host` header may write it: digits, or none.
fn is_port(port: &str) -> bool {
    port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// How far behind a sink is: events, and seconds since the oldest it has not
/// committed arrived (0 when it is caught up).
async fn lag(log: &Log, committed: u64) -> (u64, f64) {
    let end = log.end();
    if committed >= end {
        return (0, 0.0);
    }
    let age = match log.reader(committed).read(1).await {
        Ok(events) => events
            .first()
            .map_or(0.0, |e| (now_us() - e.received_at_us).max(0) as f64 / 1e6),
        Err(_) => 0.0,
    };
    (end - committed, age)
}

fn rfc3339(us: Option<i64>) -> serde_json::Value {
    us.and_then(chrono::DateTime::from_timestamp_micros)
        .map_or(serde_json::Value::Null, |t| json!(t.to_rfc3339()))
}

/// One pipeline's state; also sets its scrape-time gauges.
async fn describe(p: &PipelineView) -> serde_json::Value {
    let end = p.log.end();
    if let Some(dedupe) = &p.dedupe {
        metrics::gauge!("tributary_dedupe_ids", "pipeline" => p.name.clone())
            .set(dedupe.len() as f64);
        metrics::counter!("tributary_dedupe_evicted_total")
            .absolute(crate::source::webhook::dedupe::evicted());
    }
    let mut sinks = Vec::new();
    let mut oldest = 0f64;
    for (name, health) in &p.sinks {
        let committed = p.log.sink_state(name).committed;
        let (events, seconds) = lag(&p.log, committed).await;
        oldest = oldest.max(seconds);
        let labels = [("pipeline", p.name.clone()), ("sink", name.clone())];
        metrics::gauge!("tributary_sink_lag_events", &labels).set(events as f64);
        metrics::gauge!("tributary_sink_lag_seconds", &labels).set(seconds);
        metrics::gauge!("tributary_sink_committed_offset", &labels).set(committed as f64);
        let s = health.snapshot();
        sinks.push(json!({
            "name": name,
            "state": s.state,
            "committed_offset": committed,
            "lag_events": events,
            "lag_seconds": seconds,
            "last_commit": rfc3339(s.last_commit_us),
            "last_error": s.last_error,
            "last_error_at": rfc3339(s.last_error_us),
            "dead_letters": s.dead_letters,
        }));
    }
    let label = [("pipeline", p.name.clone())];
    metrics::gauge!("tributary_log_bytes", &label).set(p.log.disk_bytes() as f64);
    metrics::gauge!("tributary_log_end_offset", &label).set(end as f64);
    metrics::gauge!("tributary_log_oldest_unconsumed_age_seconds", &label).set(oldest);
    let partitions = p.log_status.as_ref().map(|status| status.partitions());
    let poll = p.poll.as_ref().map(|h| {
        let s = h.snapshot();
        json!({
            "state": s.state,
            "last_success": rfc3339(s.last_success_us),
            "last_error": s.last_error,
            "last_error_at": rfc3339(s.last_error_us),
            "failures": s.failures,
        })
    });
    let connections = p.connections.as_ref().map(|store| {
        let summary = store.summary();
        for (state, n) in &summary.states {
            metrics::gauge!("tributary_connections", "pipeline" => p.name.clone(), "state" => *state)
                .set(*n as f64);
        }
        json!(summary)
    });
    json!({
        "name": p.name,
        "source": p.source,
        "poll": poll,
        "connections": connections,
        "partitions": partitions,
        "log": {
            "end_offset": end,
            "disk_bytes": p.log.disk_bytes(),
            "max_bytes": p.max_buffer,
            "oldest_unconsumed_age_seconds": oldest,
        },
        "sinks": sinks,
    })
}

/// The status page: one static page from the binary that polls
/// `/api/pipelines`. It holds no data itself; without `admin.token_env` it
/// is served on this machine only, to a loopback `Host` (like the API), with
/// a token it is served to anyone and asks for the token, which its requests
/// to the API carry.
pub async fn status_page(
    State(admin): State<Arc<Admin>>,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    if admin.token.is_none() {
        if let Some(refused) = refusal(&admin, &method, &headers, peer.as_deref()) {
            return refused;
        }
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
                ),
            ),
        ],
        include_str!("status.html"),
    )
        .into_response()
}

async fn pipelines(
    State(admin): State<Arc<Admin>>,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&admin, &method, &headers, peer.as_deref()) {
        return refused;
    }
    let pipelines = admin.pipelines.load();
    let mut list = Vec::new();
    for p in pipelines.iter() {
        list.push(describe(p).await);
    }
    // On a JetStream log: this node's id, the live nodes and its shares.
    match pipelines
        .iter()
        .find_map(|p| p.log_status.as_ref().map(|s| s.node()))
    {
        Some(node) => Json(json!({ "pipelines": list, "node": node })).into_response(),
        None => Json(json!({ "pipelines": list })).into_response(),
    }
}

async fn metrics_page(
    State(admin): State<Arc<Admin>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = metrics_refusal(&admin, &headers, peer.as_deref()) {
        return refused;
    }
    for p in admin.pipelines.load().iter() {
        describe(p).await;
    }
    // Histograms are kept in buckets drained here (no background upkeep task).
    admin.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        admin.metrics.render(),
    )
        .into_response()
}

/// Ready when every log can take appends, every sink's storage answers (a
/// HEAD on S3) and no sink is failing or stopped; otherwise 503 with each
/// reason. A failing poll source is listed among the problems but does not
/// make the node unready.
async fn readyz(
    State(admin): State<Arc<Admin>>,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let mut problems = Vec::new();
    for p in admin.pipelines.load().iter() {
        if p.appender.is_closed() {
            problems.push(format!("pipeline {}: its log is closed to appends", p.name));
        } else if let Err(e) = p.appender.writable() {
            problems.push(format!(
                "pipeline {}: its log cannot take appends: {e}",
                p.name
            ));
        }
        if p.log.is_full(p.max_buffer) {
            problems.push(format!(
                "pipeline {}: its buffer is full (buffer.max_bytes); webhooks get 503 until the sinks catch up",
                p.name
            ));
        }
        for (sink, storage) in &p.probes {
            match tokio::time::timeout(PROBE_TIMEOUT, storage.reachable()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(format!(
                    "pipeline {} sink {sink}: its storage is unreachable: {e}",
                    p.name
                )),
                Err(_) => problems.push(format!(
                    "pipeline {} sink {sink}: its storage {storage} did not answer within {} s",
                    p.name,
                    PROBE_TIMEOUT.as_secs()
                )),
            }
        }
        for (sink, health) in &p.sinks {
            let s = health.snapshot();
            if matches!(s.state, SinkState::Failing | SinkState::Stopped) {
                problems.push(format!(
                    "pipeline {} sink {sink} is {}: {}",
                    p.name,
                    if s.state == SinkState::Stopped {
                        "stopped"
                    } else {
                        "failing"
                    },
                    s.last_error.as_deref().unwrap_or("no detail")
                ));
            }
        }
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let ready = problems.is_empty();
    // A failing poll source is listed, but leaves the node ready: webhooks still work.
    for p in admin.pipelines.load().iter() {
        let Some(s) = p.poll.as_ref().map(|h| h.snapshot()) else {
            continue;
        };
        if s.failures > 0 {
            problems.push(format!(
                "pipeline {}: its poll source is failing ({} failure(s) since the last success): {}",
                p.name,
                s.failures,
                s.last_error.as_deref().unwrap_or("no detail")
            ));
        }
    }
    if refusal(&admin, &method, &headers, peer.as_deref()).is_some() {
        // The reasons name storage locations and errors: for the operator only.
        let count = problems.len();
        return (status, Json(json!({ "ready": ready, "problems": count }))).into_response();
    }
    (
        status,
        Json(json!({ "ready": ready, "problems": problems })),
    )
        .into_response()
}

/// The newest rows (at most 20, by `_received_at`) of one of the pipeline's
/// tables (`tributary sql` names it); without `table`, the names of its
/// tables.
async fn sample(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    uri: axum::http::Uri,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let session = pipeline_session(&admin, &name, &method, &headers, peer.as_deref());
    let (ctx, tables) = match session.await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let table = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "table")
        .map(|(_, v)| v.into_owned());
    let Some(table) = table else {
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        return Json(json!({ "tables": names })).into_response();
    };
    if !tables.iter().any(|t| t.name == table) {
        return webhook::error(
            StatusCode::NOT_FOUND,
            format!("pipeline {name} has no table {table}; GET this path without ?table= for its tables"),
        );
    }
    let sql = format!("SELECT * FROM \"{table}\" ORDER BY _received_at DESC LIMIT 20");
    rows(&ctx, &sql).await
}

/// The pipeline's dead letters counted by sink and reason.
async fn dead_letter_reasons(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let session = pipeline_session(&admin, &name, &method, &headers, peer.as_deref());
    let (ctx, tables) = match session.await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let table = format!("{name}_dead_letters");
    if !tables.iter().any(|t| t.name == table) {
        return Json(json!([])).into_response();
    }
    let sql = format!(
        "SELECT sink, reason, count(*) AS count FROM \"{table}\" GROUP BY sink, reason ORDER BY count DESC LIMIT 100"
    );
    rows(&ctx, &sql).await
}

/// A SQL session over the tables of pipeline `name` only, for a request
/// the admin API answers (see [`refusal`]).
async fn pipeline_session(
    admin: &Admin,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
    peer: Option<&Peer>,
) -> Result<
    (
        deltalake::datafusion::prelude::SessionContext,
        Vec<crate::sql::Registered>,
    ),
    Response,
> {
    if let Some(refused) = refusal(admin, method, headers, peer) {
        return Err(refused);
    }
    let Some(config) = admin.config.load().as_ref().clone() else {
        return Err(webhook::error(
            StatusCode::NOT_FOUND,
            "no tables to read here",
        ));
    };
    let Some(pipeline) = config.pipelines.iter().find(|p| p.name == name) else {
        return Err(webhook::error(
            StatusCode::NOT_FOUND,
            format!("no pipeline is named {name}"),
        ));
    };
    let only = crate::config::Config {
        global: config.global.clone(),
        pipelines: vec![pipeline.clone()],
    };
    crate::sql::session(&only).await.map_err(|e| {
        webhook::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the tables: {e}"),
        )
    })
}

/// The result of `sql` as a JSON array of row objects.
async fn rows(ctx: &deltalake::datafusion::prelude::SessionContext, sql: &str) -> Response {
    let batches = match crate::sql::query(ctx, sql).await {
        Ok(batches) => batches,
        Err(e) => {
            return webhook::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the table: {e}"),
            )
        }
    };
    let mut out = Vec::new();
    if let Err(e) = crate::sql::write(&batches, crate::sql::Format::Json, &mut out) {
        return webhook::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    if out.is_empty() {
        out = b"[]".to_vec();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        out,
    )
        .into_response()
}

/// Re-feeds a pipeline's dead letters; answers NDJSON progress lines, the
/// last one `{"done": true, …}` or `{"error": …}`.
async fn replay_dead_letters(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = refusal(&admin, &method, &headers, peer.as_deref()) {
        return refused;
    }
    if !sent_as_json(&headers) {
        return webhook::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a replay request must be sent with Content-Type: application/json (`tributary replay` does)",
        );
    }
    let filter: replay::Filter = if body.is_empty() {
        Default::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(f) => f,
            Err(e) => {
                return webhook::error(
                    StatusCode::BAD_REQUEST,
                    format!("the replay request is not {{\"since_us\": …, \"reason\": …}}: {e}"),
                )
            }
        }
    };
    let Some(p) = admin.pipeline(&name) else {
        return webhook::error(
            StatusCode::NOT_FOUND,
            format!("no pipeline is named {name}"),
        );
    };
    if p.replaying.swap(true, Ordering::SeqCst) {
        return webhook::error(
            StatusCode::CONFLICT,
            format!("a replay of pipeline {name} is already under way"),
        );
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let sinks: Vec<String> = p.sinks.iter().map(|(s, _)| s.clone()).collect();
        let line = |value: serde_json::Value| value.to_string() + "\n";
        let mut progress = |done: &replay::Progress| {
            let _ = tx.send(line(json!({ "progress": done })));
        };
        let result =
            replay::run(&p.dead_letters, &sinks, &p.appender, &filter, &mut progress).await;
        p.replaying.store(false, Ordering::SeqCst);
        let last = match result {
            Ok(done) => {
                tracing::info!(pipeline = %p.name, replayed = done.replayed, kept = done.kept, "Replayed dead letters.");
                json!({ "done": true, "result": done })
            }
            Err(e) => {
                let e = crate::error::chain(&e);
                tracing::warn!(pipeline = %p.name, error = %e, "Replay failed.");
                json!({ "error": e })
            }
        };
        let _ = tx.send(line(last));
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::io::Error>(Bytes::from(line)), rx))
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
