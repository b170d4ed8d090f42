//! The benchmark baseline: an axum server that reads each POST body and answers
//! 202 without doing anything else. `scripts/bench` runs the same wrk load
//! against it and against `tributary run` to price durability.
//!
//! Usage: `bare_server 127.0.0.1:9000`

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::Router;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let app = Router::new().fallback(|body: Bytes| async move {
        (
            StatusCode::ACCEPTED,
            format!("{{\"accepted\":1,\"bytes\":{}}}", body.len()),
        )
    });
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app).await
}
