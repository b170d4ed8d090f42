//! The HTTP server: every pipeline's webhook path plus the admin endpoints
//! (`/healthz`, `/api/…`). Unknown paths get a JSON 404. Stops accepting on
//! shutdown and lets requests in flight finish, so every 202 it sent is backed
//! by a durable append.
//!
//! The admin endpoints are served on `listen` unless `admin.listen` gives them
//! an address of their own; `/healthz` answers on both. With
//! `admin.token_env`, the admin API requires `Authorization: Bearer <token>`.

pub mod admin;
pub mod connections;
mod listen;
pub mod tap;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub use listen::{bind, serve, tls_acceptor, Limits, Peer, TlsError};

use crate::source::webhook::{self, Route};

/// A value replaced whole (the webhook routes, the admin API's pipelines,
/// on a reload): readers take the current one and never wait for a writer
/// longer than a pointer copy.
pub struct Swap<T>(std::sync::RwLock<Arc<T>>);

impl<T> Swap<T> {
    /// Holds `value`.
    pub fn new(value: T) -> Self {
        Self(std::sync::RwLock::new(Arc::new(value)))
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        self.0.read().expect("swap lock").clone()
    }

    /// Replaces the value; readers that took the old one keep it.
    pub fn store(&self, value: T) {
        *self.0.write().expect("swap lock") = Arc::new(value);
    }
}

/// What answers a webhook path.
#[derive(Clone)]
pub enum Slot {
    /// The pipeline's route.
    Live(Arc<Route>),
    /// The pipeline is restarting after a reload: `503` + `Retry-After`.
    Restarting(String),
}

/// Webhook routes by exact path, replaced whole on a reload.
pub type Routes = Arc<Swap<HashMap<String, Slot>>>;

/// The webhook paths, `/healthz`, and the admin API unless it has its own
/// listener (`admin` is then `None`).
pub fn router(routes: Routes, admin: Option<Arc<admin::Admin>>) -> Router {
    // The status page at `/` too, unless a webhook listens there.
    let page_at_root = !routes.load().contains_key("/");
    let webhooks = Router::new()
        .route("/healthz", get(healthz))
        .fallback(dispatch)
        // Each route enforces its own `max_body`; axum's default 2 MB cap must not interfere.
        .layer(DefaultBodyLimit::disable())
        .with_state(routes);
    match admin {
        Some(admin) if page_at_root => {
            let page = Router::new()
                .route("/", get(admin::status_page))
                .with_state(admin.clone());
            api(admin).merge(page).merge(webhooks)
        }
        Some(admin) => api(admin).merge(webhooks),
        None => webhooks,
    }
}

/// The admin listener's router: `/healthz`, the admin API, and the status
/// page at `/` (also at `/status`).
pub fn admin_router(admin: Arc<admin::Admin>) -> Router {
    let page = Router::new()
        .route("/", get(admin::status_page))
        .with_state(admin.clone());
    api(admin)
        .merge(page)
        .route("/healthz", get(healthz))
        .fallback(|| async {
            webhook::error(
                StatusCode::NOT_FOUND,
                "this is the admin listener; webhooks are received on `listen`",
            )
        })
}

/// Every admin API route.
fn api(admin: Arc<admin::Admin>) -> Router {
    admin::api(admin.clone())
        .merge(tap::routes().with_state(admin.clone()))
        .merge(connections::routes().with_state(admin))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn dispatch(State(routes): State<Routes>, request: Request<Body>) -> Response {
    let path = request.uri().path();
    let routes = routes.load();
    // `<path>/<connection>` on a pipeline with `[connections]`.
    let found = match routes.get(path) {
        Some(slot) => Some((slot, None)),
        None => path
            .rsplit_once('/')
            .and_then(|(prefix, id)| Some((routes.get(prefix)?, Some(id.to_string()))))
            .filter(|(slot, _)| matches!(slot, Slot::Live(route) if route.connections.is_some())),
    };
    match found {
        Some((Slot::Restarting(pipeline), _)) => webhook::Refusal::Restarting {
            pipeline: pipeline.clone(),
        }
        .into_response(),
        Some((Slot::Live(route), connection)) => {
            let response = webhook::receive(route, request, connection.as_deref())
                .await
                .unwrap_or_else(IntoResponse::into_response);
            let status = response.status();
            if status == StatusCode::ACCEPTED {
                route.metrics.accepted.increment(1);
            } else {
                metrics::counter!("tributary_http_responses_total", "pipeline" => route.pipeline.clone(), "status" => status.as_u16().to_string()).increment(1);
            }
            response
        }
        None => webhook::error(
            StatusCode::NOT_FOUND,
            format!("no webhook source listens on {}; check the URL against source.path in the pipeline files", request.uri().path()),
        ),
    }
}
