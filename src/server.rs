//! The HTTP server: every pipeline's webhook path plus `/healthz`. Unknown
//! paths get a JSON 404. Stops accepting on shutdown and lets requests in
//! flight finish, so every 202 it sent is backed by a durable append.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::source::webhook::{self, Route};

/// Webhook routes by exact path.
pub type Routes = Arc<HashMap<String, Route>>;

/// The router of webhook paths and admin endpoints.
pub fn router(routes: Routes) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .fallback(dispatch)
        // Each route enforces its own `max_body`; axum's default 2 MB cap must not interfere.
        .layer(DefaultBodyLimit::disable())
        .with_state(routes)
}

async fn dispatch(State(routes): State<Routes>, request: Request<Body>) -> Response {
    match routes.get(request.uri().path()) {
        Some(route) => webhook::receive(route, request).await,
        None => webhook::error(
            StatusCode::NOT_FOUND,
            format!("no webhook source listens on {}; check the URL against source.path in the pipeline files", request.uri().path()),
        ),
    }
}

/// Binds `listen`; separate from [`serve`] so a bind error is reported before
/// anything starts.
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Serves until `stop` is cancelled, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(routes))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
