//! The HTTPS sink's HTTP client: hyper's connections over rustls, kept in
//! a small pool of its own, for the one URL a sink posts to.
//!
//! Measured on the sink's benchmark, each layer above hyper cost its share
//! of the sink's thread per POST: reqwest a sixth (its redirect layer
//! re-parsed every URL, its futures moved kilobytes by value), then
//! hyper-util's general pool ~7% (keys hashed per checkout, idle lists,
//! waiters, request URIs rewritten per send). A sink needs none of that: one
//! origin, no proxy, no redirects, its own retries. What it keeps: kept-alive
//! HTTP/1.1 connections (up to `concurrency` idle, closed after 90 s idle),
//! HTTP/2 over TLS when the receiver offers it (one multiplexed connection),
//! and a request that never went out on a kept connection the receiver had
//! closed is sent again on another at once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::http::header::{
    HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT,
};
use hyper::http::uri::PathAndQuery;
use hyper::http::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tower_service::Service as _;

use crate::config::spec::HttpsSinkSpec;

/// Why an HTTPS sink's client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `ca_file` cannot be read.
    #[error("cannot read ca_file {}: {source}", path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `ca_file` holds no usable certificate.
    #[error("ca_file {}: {problem}; give a PEM file with one or more CERTIFICATE blocks", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The machine's own root certificates are all unusable.
    #[error("the system's root certificates cannot be used: {0}; install ca-certificates or give ca_file")]
    Roots(String),
    /// `url` is not a URL an HTTP client can call.
    #[error("url: {0}")]
    Url(String),
    /// rustls refused the TLS settings.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Why a POST got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No answer within the sink's `timeout`.
    #[error("no answer within {} (the sink's timeout)", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// Connecting or TLS failed.
    #[error("cannot connect: {}", chain(&**.0))]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection broke, or the answer was not HTTP.
    #[error("{}", chain(.0))]
    Http(hyper::Error),
}

/// An error and its causes on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A sink's client for its one URL.
pub struct Client {
    connector: HttpsConnector<HttpConnector>,
    /// The URL without user info (absolute form, as HTTP/2 sends it).
    uri: Uri,
    /// Its path and query (origin form, as HTTP/1.1 sends it).
    origin: Uri,
    /// Its `Host` header.
    host: HeaderValue,
    /// Basic credentials from the URL's user info, if it has any.
    authorization: Option<HeaderValue>,
    timeout: Duration,
    pool: Arc<Pool>,
}

/// How long a kept-alive connection may stay unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Kept-alive connections: idle HTTP/1.1 ones (the last used first), or
/// the one HTTP/2 connection every POST shares.
struct Pool {
    idle: Mutex<Vec<(Instant, http1::SendRequest<Full<Bytes>>)>>,
    h2: Mutex<Option<http2::SendRequest<Full<Bytes>>>>,
    max_idle: usize,
    /// Whether the task that closes idle connections runs.
    reaping: std::sync::atomic::AtomicBool,
}

impl Pool {
    /// A kept HTTP/1.1 connection ready for a request, if one is idle.
    fn checkout(&self) -> Option<http1::SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // The least recently used first: those idle too long are closed.
        let expired = idle
            .iter()
            .take_while(|(since, _)| now.duration_since(*since) >= IDLE_TIMEOUT)
            .count();
        idle.drain(..expired);
        while let Some((_, sender)) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn release(&self, sender: http1::SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.max_idle {
            // Connections the receiver closed make room first, then the
            // least recently used.
            idle.retain(|(_, s)| !s.is_closed());
            if idle.len() >= self.max_idle {
                idle.remove(0);
            }
        }
        idle.push((Instant::now(), sender));
    }

    /// Closes the connections idle for [`IDLE_TIMEOUT`] or closed by the
    /// receiver.
    fn prune(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        idle.retain(|(since, s)| now.duration_since(*since) < IDLE_TIMEOUT && !s.is_closed());
    }

    /// The shared HTTP/2 connection, while it is open.
    fn h2(&self) -> Option<http2::SendRequest<Full<Bytes>>> {
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        match &*h2 {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }
}

/// A connection a request was sent on.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// An answer's head, and the HTTP/1.1 connection it came on: that goes
/// back to the pool once the answer's body is read ([`read_answer`]).
pub struct Answer {
    /// The answer, its body unread.
    pub response: Response<Incoming>,
    lease: Option<(Arc<Pool>, http1::SendRequest<Full<Bytes>>)>,
}

impl Client {
    /// The client `spec` asks for: the system's roots plus `ca_file`'s,
    /// kept-alive connections (up to `concurrency` idle), HTTP/2 over TLS
    /// when offered.
    pub fn new(spec: &HttpsSinkSpec) -> Result<Self, SetupError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, unusable) = roots.add_parsable_certificates(native.certs);
        if let Some(ca) = &spec.ca_file {
            let pem = std::fs::read(ca).map_err(|source| SetupError::ReadCa {
                path: ca.clone(),
                source,
            })?;
            let problem = |problem: String| SetupError::Ca {
                path: ca.clone(),
                problem,
            };
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| problem(e.to_string()))?;
            if certs.is_empty() {
                return Err(problem("no certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| problem(e.to_string()))?;
            }
        } else if added == 0 && unusable > 0 {
            // As reqwest: a store with only broken certificates is an error,
            // an empty one (a container without ca-certificates) is not.
            let why = native
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>();
            return Err(SetupError::Roots(if why.is_empty() {
                format!("none of {unusable} parses")
            } else {
                why.join("; ")
            }));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SetupError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(spec.timeout));
        // TCP keepalive as reqwest set it: a kept connection a NAT dropped
        // silently fails in ~1 min, not at the next delivery's timeout.
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(15)));
        http.set_keepalive_retries(Some(3));
        // Over TLS, HTTP/2 when the receiver offers it (ALPN), else HTTP/1.1.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let url = url::Url::parse(&spec.url).map_err(|e| SetupError::Url(e.to_string()))?;
        let authorization = (!url.username().is_empty() || url.password().is_some()).then(|| {
            let user = percent_encoding::percent_decode_str(url.username()).decode_utf8_lossy();
            let pass = url
                .password()
                .map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy());
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", pass.unwrap_or_default()));
            let mut value = HeaderValue::try_from(format!("Basic {token}"))
                .expect("base64 is a valid header value");
            value.set_sensitive(true);
            value
        });
        let mut bare = url;
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        let uri = Uri::try_from(bare.as_str()).map_err(|e| SetupError::Url(e.to_string()))?;
        let Some(host) = uri.host() else {
            return Err(SetupError::Url(format!("{uri} has no host")));
        };
        let host = match bare.port() {
            // Only a port that is not the scheme's default goes in Host.
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let host = HeaderValue::try_from(host).map_err(|e| SetupError::Url(e.to_string()))?;
        let origin = Uri::from(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Ok(Self {
            connector,
            uri,
            origin,
            host,
            authorization,
            timeout: spec.timeout,
            pool: Arc::new(Pool {
                idle: Mutex::new(Vec::with_capacity(spec.concurrency)),
                h2: Mutex::new(None),
                max_idle: spec.concurrency,
                reaping: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// POSTs `body` as JSON with `headers`; the answer's head, its body
    /// unread. Everything up to the head (a connection, TLS, the request)
    /// is bounded by the sink's `timeout`.
    pub async fn post(
        &self,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<Answer, Failure> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = hyper::Method::POST;
        let map = request.headers_mut();
        map.reserve(8);
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        map.insert(ACCEPT, HeaderValue::from_static("*/*"));
        map.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("tributary/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(auth) = &self.authorization {
            map.insert(AUTHORIZATION, auth.clone());
        }
        for (name, value) in headers {
            map.insert(name, value);
        }
        match tokio::time::timeout(self.timeout, self.send(request)).await {
            Ok(answer) => answer,
            Err(_) => Err(Failure::Timeout(self.timeout)),
        }
    }

    /// Sends on a kept connection, or on a new one. A request a kept
    /// connection could not take (the receiver closed it while idle) goes
    /// to the next one: it never left.
    async fn send(&self, mut request: Request<Full<Bytes>>) -> Result<Answer, Failure> {
        loop {
            let (sender, reused) = match self.pool.h2() {
                Some(h2) => (Sender::H2(h2), true),
                None => match self.pool.checkout() {
                    Some(h1) => (Sender::H1(h1), true),
                    // Boxed: a connection's futures (TLS, handshakes) are
                    // large, and every delivery's task would carry their room.
                    None => (Box::pin(self.connect()).await?, false),
                },
            };
            let sent = match sender {
                Sender::H1(mut h1) => {
                    *request.uri_mut() = self.origin.clone();
                    request.headers_mut().insert(HOST, self.host.clone());
                    match h1.try_send_request(request).await {
                        Ok(response) => Ok(Answer {
                            response,
                            lease: Some((self.pool.clone(), h1)),
                        }),
                        Err(e) => Err(e),
                    }
                }
                Sender::H2(mut h2) => {
                    *request.uri_mut() = self.uri.clone();
                    request.headers_mut().remove(HOST);
                    if h2.ready().await.is_err() {
                        // Closed before this request went out: another.
                        self.pool
                            .h2
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .take();
                        continue;
                    }
                    match h2.try_send_request(request).await {
                        Ok(response) => Ok(Answer {
                            response,
                            lease: None,
                        }),
                        Err(e) => Err(e),
                    }
                }
            };
            match sent {
                Ok(answer) => return Ok(answer),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(Failure::Http(e.into_error())),
                },
            }
        }
    }

    /// A new connection: TCP, then TLS for https (HTTP/2 if the receiver
    /// chose it), its I/O driven by a task of its own.
    async fn connect(&self) -> Result<Sender, Failure> {
        if !self
            .pool
            .reaping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            // Idle connections close after IDLE_TIMEOUT even when the sink
            // has nothing to send (checkout prunes only when it runs); the
            // task ends with the client.
            let pool = Arc::downgrade(&self.pool);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(IDLE_TIMEOUT / 3);
                every.tick().await;
                loop {
                    every.tick().await;
                    match pool.upgrade() {
                        Some(pool) => pool.prune(),
                        None => return,
                    }
                }
            });
        }
        let stream = self
            .connector
            .clone()
            .call(self.uri.clone())
            .await
            .map_err(Failure::Connect)?;
        if stream.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                // A connection that stops answering is found by its pings,
                // not by every delivery's timeout in turn.
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(15))
                .handshake(stream)
                .await
                .map_err(Failure::Http)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %chain(&e), "HTTPS sink's HTTP/2 connection ended");
                }
            });
            *self.pool.h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
            Ok(Sender::H2(sender))
        } else {
            let (sender, connection) = http1::handshake(stream).await.map_err(Failure::Http)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %chain(&e), "HTTPS sink's connection ended");
                }
            });
            Ok(Sender::H1(sender))
        }
    }
}

/// Most of an answer's body read to keep its connection: a body left unread
/// closes the connection, and the next POST would open (and TLS-handshake) a
/// new one.
const MAX_DRAIN: usize = 64 * 1024;

/// Reads an answer's body to its end (up to [`MAX_DRAIN`] bytes, within
/// `timeout`: what is left of the delivery's) so its connection goes back to
/// the pool; returns its first `keep` bytes (for a dead letter's reason).
pub async fn read_answer(answer: Answer, keep: usize, timeout: Duration) -> Vec<u8> {
    let Answer { response, lease } = answer;
    let mut body = response.into_body();
    let mut start = Vec::new();
    // No body (a 202 or 204, or Content-Length: 0): no timer either.
    let mut ended = hyper::body::Body::is_end_stream(&body);
    if !ended {
        let read = async {
            let mut seen = 0;
            while seen < MAX_DRAIN {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let room = keep.saturating_sub(start.len()).min(data.len());
                            start.extend_from_slice(&data[..room]);
                            seen += data.len();
                        }
                    }
                    Some(Err(_)) => return false,
                    None => return true,
                }
            }
            // MAX_DRAIN read: reusable only if that was all of it.
            hyper::body::Body::is_end_stream(&body)
        };
        ended = tokio::time::timeout(timeout, read).await.unwrap_or(false);
    }
    // A connection whose answer was not read to its end is not reused.
    if let (true, Some((pool, sender))) = (ended, lease) {
        pool.release(sender);
    }
    start
}

#[cfg(test)]
mod tests;
