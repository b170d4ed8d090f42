//! A fault-injecting HTTP proxy on loopback, in front of the S3 server: each
//! request is forwarded, or answered 503 (S3's SlowDown), or dropped without
//! an answer (the connection closes: a reset to the client), or delayed; and
//! the whole upstream can be taken down (every request dropped) and back.
//! No packaged fault proxy is available here, so this one is small on
//! purpose: hyper serves, reqwest forwards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rand::Rng;

/// How often each fault happens, per request.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Answered 503 SlowDown.
    pub unavailable: f64,
    /// Dropped: the connection closes without an answer.
    pub reset: f64,
    /// Forwarded after this long a wait.
    pub slow: f64,
    /// The wait of a slow answer.
    pub delay: Duration,
}

/// What the proxy did, for the notes and the assertions.
#[derive(Debug, Default)]
pub struct Counts {
    pub forwarded: AtomicU64,
    pub unavailable: AtomicU64,
    pub reset: AtomicU64,
    pub slow: AtomicU64,
    pub down: AtomicU64,
}

struct State {
    upstream: String,
    client: reqwest::Client,
    faults: std::sync::Mutex<Faults>,
    down: AtomicBool,
    counts: Counts,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`) on a free loopback port.
    pub async fn start(upstream: &str, faults: Faults) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            faults: std::sync::Mutex::new(faults),
            down: AtomicBool::new(false),
            counts: Counts::default(),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { handle(&state, request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            endpoint: format!("http://{addr}"),
            state,
            task,
        }
    }

    /// Takes the upstream down (every request dropped) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// What it did so far.
    pub fn counts(&self) -> &Counts {
        &self.state.counts
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An error makes hyper close the connection without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

async fn handle(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let counts = &state.counts;
    if state.down.load(Ordering::SeqCst) {
        counts.down.fetch_add(1, Ordering::Relaxed);
        return Err(Dropped);
    }
    let faults = *state.faults.lock().unwrap();
    let roll: f64 = rand::rng().random();
    if roll < faults.unavailable {
        counts.unavailable.fetch_add(1, Ordering::Relaxed);
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        return Ok(Response::builder()
            .status(503)
            .header("content-type", "application/xml")
            .body(Full::new(Bytes::from(body)))
            .unwrap());
    }
    if roll < faults.unavailable + faults.reset {
        counts.reset.fetch_add(1, Ordering::Relaxed);
        return Err(Dropped);
    }
    if roll < faults.unavailable + faults.reset + faults.slow {
        counts.slow.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(faults.delay).await;
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut forward = state
        .client
        .request(parts.method, format!("{}{path}", state.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        // reqwest sets its own framing; the host header stays (it is signed).
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            forward = forward.header(name, value);
        }
    }
    let answer = forward.send().await.map_err(|_| Dropped)?;
    counts.forwarded.fetch_add(1, Ordering::Relaxed);
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.map_err(|_| Dropped)?;
    Ok(response.body(Full::new(bytes)).unwrap())
}
