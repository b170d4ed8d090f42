//! The connections API, under the admin API's token and loopback rules:
//!
//! * `GET  /api/pipelines/{pipeline}/connections` → `{"connections": […]}`
//! * `POST /api/pipelines/{pipeline}/connections` with
//!   `{"id", "credentials": {…}, "params": {…}}` → 201 and the connection;
//!   409 if the id exists, 400 naming missing or unknown credential fields;
//! * `GET|PATCH|DELETE /api/pipelines/{pipeline}/connections/{id}`; PATCH
//!   takes `{"state": "active"|"paused"}`, new `credentials` or `params`;
//! * `POST /api/pipelines/{pipeline}/connections/{id}/register` with
//!   `{"url", "events", "repo"|"org"|"shop", "api", "dry_run", "list"}`
//!   subscribes the connection with its provider using its own `api_token`
//!   and verify `secret` (see [`crate::register`]) → `{"output": …}`;
//! * `POST /api/pipelines/{pipeline}/rekey` seals every connection's
//!   credentials again under the current `TRIBUTARY_SECRET_KEY` →
//!   `{"resealed": n}` (then the old key can leave `TRIBUTARY_SECRET_KEY_OLD`).
//!
//! Bodies must be `application/json` (a cross-site form cannot send that
//! without a preflight). Every change is fsynced before its answer; answers
//! name credential fields, never their values.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::json;

use super::admin::{refusal, sent_as_json, Admin};
use super::Peer;
use crate::connections::store::{New, Patch, Store, StoreError};
use crate::source::webhook;

/// The connections routes.
pub fn routes() -> Router<Arc<Admin>> {
    Router::new()
        .route("/api/pipelines/{name}/connections", get(list).post(add))
        .route(
            "/api/pipelines/{name}/connections/{id}",
            get(show).patch(change).delete(remove),
        )
        .route("/api/pipelines/{name}/rekey", axum::routing::post(rekey))
        .route(
            "/api/pipelines/{name}/connections/{id}/register",
            axum::routing::post(register),
        )
}

/// The request's store, or the answer that refuses it.
fn store(
    admin: &Admin,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
    peer: Option<&Peer>,
) -> Result<Arc<Store>, Response> {
    if let Some(refused) = refusal(admin, method, headers, peer) {
        return Err(refused);
    }
    let Some(pipeline) = admin.pipeline(name) else {
        return Err(webhook::error(
            StatusCode::NOT_FOUND,
            format!("no pipeline is named {name}"),
        ));
    };
    pipeline.connections.clone().ok_or_else(|| {
        webhook::error(
            StatusCode::NOT_FOUND,
            format!("pipeline {name} takes no connections; add a [connections] table to its file to stream from each of your customers' accounts"),
        )
    })
}

/// The JSON body, if it is one: a 415 or 400 otherwise.
fn body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, Response> {
    if !sent_as_json(headers) {
        return Err(webhook::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the connection as Content-Type: application/json",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        // serde names the key and position, never a value.
        webhook::error(
            StatusCode::BAD_REQUEST,
            format!("the body is not a connection: {e}; send {{\"id\": …, \"credentials\": {{…}}, \"params\": {{…}}}}"),
        )
    })
}

/// `error` as an answer.
fn refused(error: StoreError) -> Response {
    let status = match &error {
        StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
        StoreError::Removed { .. } => StatusCode::GONE,
        StoreError::Exists { .. } => StatusCode::CONFLICT,
        StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        StoreError::Io { .. } | StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        StoreError::Contended(_) => StatusCode::CONFLICT,
        StoreError::Seal(_) | StoreError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::error!(error = %crate::error::chain(&error), "A connection could not be stored.");
    }
    webhook::error(status, crate::error::chain(&error))
}

/// Runs `change` on the blocking pool (it fsyncs) and answers its result.
async fn blocking<F>(store: Arc<Store>, success: StatusCode, change: F) -> Response
where
    F: FnOnce(&Store) -> Result<crate::connections::store::View, StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(move || change(&store)).await {
        Ok(Ok(view)) => (success, Json(view)).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => webhook::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn list(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    match store(&admin, &name, &method, &headers, peer.as_deref()) {
        Ok(store) => Json(json!({ "connections": store.list() })).into_response(),
        Err(refused) => refused,
    }
}

async fn add(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let store = match store(&admin, &name, &method, &headers, peer.as_deref()) {
        Ok(store) => store,
        Err(refused) => return refused,
    };
    let new: New = match body(&headers, &bytes) {
        Ok(new) => new,
        Err(refused) => return refused,
    };
    let id = new.id.clone();
    let answer = blocking(store, StatusCode::CREATED, move |s| s.add(new)).await;
    if answer.status() == StatusCode::CREATED {
        tracing::info!(pipeline = %name, connection = %id, "Connection added.");
    }
    answer
}

/// What `register` takes for a connection (its credentials are the
/// connection's own).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    url: Option<String>,
    #[serde(default)]
    events: Vec<String>,
    repo: Option<String>,
    org: Option<String>,
    shop: Option<String>,
    api: Option<String>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    list: bool,
}

async fn register(
    State(admin): State<Arc<Admin>>,
    Path((name, id)): Path<(String, String)>,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    use crate::register::RegisterError;
    let store = match store(&admin, &name, &method, &headers, peer.as_deref()) {
        Ok(store) => store,
        Err(refused) => return refused,
    };
    let asked: Registration = match body(&headers, &bytes) {
        Ok(asked) => asked,
        Err(refused) => return refused,
    };
    let config = admin.config.load().as_ref().clone();
    let Some(spec) = config
        .as_ref()
        .and_then(|c| c.pipelines.iter().find(|p| p.name == name).cloned())
    else {
        return webhook::error(
            StatusCode::NOT_FOUND,
            format!("no pipeline is named {name}"),
        );
    };
    let credentials = match store.credentials(&id) {
        Ok(credentials) => credentials,
        Err(e) => return refused(e),
    };
    let Some(token) = credentials.get("api_token").cloned() else {
        return webhook::error(
            StatusCode::BAD_REQUEST,
            format!("connection {id} has no api_token, the provider API credential to subscribe with; PATCH its credentials with one (and every other field it has)"),
        );
    };
    let request = crate::register::Request {
        url: asked.url,
        events: asked.events,
        repo: asked.repo,
        org: asked.org,
        shop: asked.shop,
        api: asked.api,
        dry_run: asked.dry_run,
        list: asked.list,
        token: Some(token),
        secret: credentials.get("secret").cloned(),
        connection: Some(id.clone()),
        token_env: None,
    };
    let registered = match crate::register::register(&spec, &request).await {
        Ok(registered) => registered,
        Err(e @ (RegisterError::Usage(_) | RegisterError::Env { .. })) => {
            return webhook::error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => return webhook::error(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    if let Some(secret) = registered.signing_secret {
        // The provider's new signing secret verifies this connection from now on.
        let mut kept = credentials;
        kept.insert("secret".into(), secret);
        let patch = Patch {
            credentials: Some(kept),
            ..Default::default()
        };
        let connection = id.clone();
        let stored = blocking(store, StatusCode::OK, move |s| s.patch(&connection, patch)).await;
        if stored.status() != StatusCode::OK {
            return webhook::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("subscribed, but the provider's signing secret could not be kept in connection {id}; roll the endpoint's secret at the provider and PATCH it into the connection's credentials as \"secret\""),
            );
        }
    }
    tracing::info!(pipeline = %name, connection = %id, dry_run = request.dry_run, "Registered a connection's webhook subscription.");
    Json(json!({ "output": registered.out })).into_response()
}

async fn rekey(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let store = match store(&admin, &name, &method, &headers, peer.as_deref()) {
        Ok(store) => store,
        Err(refused) => return refused,
    };
    match tokio::task::spawn_blocking(move || store.rekey()).await {
        Ok(Ok(resealed)) => {
            tracing::info!(pipeline = %name, resealed, "Connections' credentials sealed again under the current key.");
            Json(json!({ "resealed": resealed })).into_response()
        }
        Ok(Err(e)) => refused(e),
        Err(e) => webhook::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn show(
    State(admin): State<Arc<Admin>>,
    Path((name, id)): Path<(String, String)>,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    match store(&admin, &name, &method, &headers, peer.as_deref()) {
        Ok(store) => match store.get(&id) {
            Ok(view) => Json(view).into_response(),
            Err(e) => refused(e),
        },
        Err(refused) => refused,
    }
}

async fn change(
    State(admin): State<Arc<Admin>>,
    Path((name, id)): Path<(String, String)>,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let store = match store(&admin, &name, &method, &headers, peer.as_deref()) {
        Ok(store) => store,
        Err(refused) => return refused,
    };
    let patch: Patch = match body(&headers, &bytes) {
        Ok(patch) => patch,
        Err(refused) => return refused,
    };
    let what = (
        patch.state,
        patch.credentials.is_some(),
        patch.params.is_some(),
    );
    let connection = id.clone();
    let answer = blocking(store, StatusCode::OK, move |s| s.patch(&connection, patch)).await;
    if answer.status() == StatusCode::OK {
        tracing::info!(pipeline = %name, connection = %id, state = ?what.0, new_credentials = what.1, new_params = what.2, "Connection changed.");
    }
    answer
}

async fn remove(
    State(admin): State<Arc<Admin>>,
    Path((name, id)): Path<(String, String)>,
    uri: Uri,
    method: Method,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let store = match store(&admin, &name, &method, &headers, peer.as_deref()) {
        Ok(store) => store,
        Err(refused) => return refused,
    };
    let purge = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .any(|(k, v)| k == "purge" && v != "false");
    if purge {
        return purge_connection(&admin, &name, &id, store).await;
    }
    let connection = id.clone();
    let notify = store.clone();
    let answer = blocking(store, StatusCode::OK, move |s| s.remove(&connection)).await;
    if answer.status() == StatusCode::OK {
        tracing::info!(pipeline = %name, connection = %id, "Connection removed.");
        notify.notify("connection.removed", &id, json!({ "purged": null }));
    }
    answer
}

/// `DELETE …?purge=true`: removes the connection (if it is not already) and
/// deletes its rows, dead letters and cursor (see [`crate::connections::purge`]).
async fn purge_connection(admin: &Admin, name: &str, id: &str, store: Arc<Store>) -> Response {
    use crate::connections::purge::{self, PurgeError};
    let (Some(config), Some(view)) = (admin.config.load().as_ref().clone(), admin.pipeline(name))
    else {
        return webhook::error(
            StatusCode::NOT_FOUND,
            format!("no pipeline is named {name}"),
        );
    };
    let Some(spec) = config.pipelines.iter().find(|p| p.name == name) else {
        return webhook::error(
            StatusCode::NOT_FOUND,
            format!("no pipeline is named {name}"),
        );
    };
    // Refused before anything changes.
    if let Some(why) = purge::refusal(spec) {
        return webhook::error(StatusCode::CONFLICT, format!("cannot purge: {why}"));
    }
    let connection = id.to_string();
    let removed = tokio::task::spawn_blocking(move || match store.remove(&connection) {
        Err(StoreError::Removed { .. }) => store.get(&connection),
        other => other,
    })
    .await;
    let view_of = match removed {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => return refused(e),
        Err(e) => return webhook::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let dir = config.global.data_dir.join(name);
    let cluster = view.log_status.as_deref();
    match purge::purge(spec, (&view.log, &view.dead_letters, cluster), &dir, id).await {
        Ok(report) => {
            tracing::info!(pipeline = %name, connection = %id, purged = ?report, "Connection removed and its data purged.");
            if let Some(store) = &view.connections {
                store.notify("connection.removed", id, json!({ "purged": report }));
            }
            Json(json!({ "connection": view_of, "purged": report })).into_response()
        }
        Err(e) => {
            let status = match e {
                PurgeError::Refused(_) => StatusCode::CONFLICT,
                PurgeError::Behind { .. } => StatusCode::SERVICE_UNAVAILABLE,
                PurgeError::Sink { .. } | PurgeError::DeadLetters(_) | PurgeError::Cursor(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            let why = crate::error::chain(&e);
            tracing::warn!(pipeline = %name, connection = %id, error = %why, "A purge did not finish; the connection is removed, and the purge can be repeated.");
            webhook::error(status, format!("the connection is removed, but the purge did not finish: {why}; repeat the request"))
        }
    }
}
