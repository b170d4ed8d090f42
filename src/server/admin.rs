//! The admin API: `GET /api/pipelines`, each pipeline's log and sink progress.
//! With `admin.token_env` set, every `/api/…` request needs
//! `Authorization: Bearer <token>`; `/healthz` never does (probes).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::buffer::Log;
use crate::source::webhook;

/// What the admin API can see.
pub struct Admin {
    /// The bearer token `/api/…` requires, if any.
    pub token: Option<String>,
    /// Every pipeline.
    pub pipelines: Vec<PipelineView>,
}

/// One pipeline as the admin API sees it.
pub struct PipelineView {
    /// Pipeline name.
    pub name: String,
    /// `webhook` or `poll`.
    pub source: &'static str,
    /// Its sinks' names.
    pub sinks: Vec<String>,
    /// Its log.
    pub log: Log,
}

/// The admin routes.
pub fn api(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/api/pipelines", get(pipelines))
        .with_state(admin)
}

/// The refusal of a request without the admin token (when one is configured).
fn refusal(admin: &Admin, headers: &HeaderMap) -> Option<Response> {
    let token = admin.token.as_ref()?;
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
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            Some(response)
        }
    }
}

async fn pipelines(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&admin, &headers) {
        return refused;
    }
    let list: Vec<serde_json::Value> = admin
        .pipelines
        .iter()
        .map(|p| {
            let end = p.log.end();
            let sinks: Vec<serde_json::Value> = p
                .sinks
                .iter()
                .map(|s| {
                    let committed = p.log.sink_state(s).committed;
                    json!({
                        "name": s,
                        "committed_offset": committed,
                        "lag_events": end.saturating_sub(committed),
                    })
                })
                .collect();
            json!({
                "name": p.name,
                "source": p.source,
                "log": { "end_offset": end, "disk_bytes": p.log.disk_bytes() },
                "sinks": sinks,
            })
        })
        .collect();
    Json(json!({ "pipelines": list })).into_response()
}
