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
mod tests {
    use super::*;
    use crate::config::spec::SigningSpec;

    fn spec(url: &str, ca_file: Option<PathBuf>) -> HttpsSinkSpec {
        HttpsSinkSpec {
            name: "https".into(),
            url: url.into(),
            ca_file,
            signing: SigningSpec::StandardWebhooks {
                secret_envs: vec!["S".into()],
            },
            concurrency: 4,
            timeout: Duration::from_secs(5),
            max_retry_duration: Duration::from_secs(60),
            ordered: false,
        }
    }

    #[tokio::test]
    async fn user_info_in_the_url_becomes_basic_authorization_and_leaves_the_uri() {
        let client =
            Client::new(&spec("https://ann:p%40ss@receiver.example/hook?x=1", None)).unwrap();
        assert_eq!(client.uri.to_string(), "https://receiver.example/hook?x=1");
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ann:p@ss")
        );
        assert_eq!(client.authorization.unwrap(), expected.as_str());
        let plain = Client::new(&spec("http://127.0.0.1:9/hook", None)).unwrap();
        assert!(plain.authorization.is_none());
    }

    #[tokio::test]
    async fn a_ca_file_without_a_certificate_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let Err(e) = Client::new(&spec("https://receiver.example/hook", Some(path.clone()))) else {
            panic!("a ca_file without a certificate was taken");
        };
        let text = e.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("no certificate"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_connection_is_kept_when_the_answer_s_body_comes_later_and_is_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Answers every request on a connection; counts connections.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let server = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        // Each request is a head and a 2-byte body ("{}").
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            if seen.len() < end + 6 {
                                break;
                            }
                            seen.drain(..end + 6);
                            // The head first, the body (20 kB) a moment later:
                            // not yet read when the head is handed over.
                            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 20000\r\n\r\n";
                            if socket.write_all(head).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            let mut body = b"{\"ok\": true".to_vec();
                            body.resize(19_999, b' ');
                            body.push(b'}');
                            if socket.write_all(&body).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let client = Client::new(&spec(&url, None)).unwrap();
        for _ in 0..5 {
            let answer = client.post([], Bytes::from_static(b"{}")).await.unwrap();
            assert_eq!(answer.response.status(), 200);
            let start = read_answer(answer, 4, Duration::from_secs(5)).await;
            assert_eq!(start, b"{\"ok");
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one kept-alive connection for five POSTs"
        );
        server.abort();
    }

    #[tokio::test]
    async fn no_answer_within_the_timeout_is_a_timeout_naming_it() {
        // A listener that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        });
        let mut silent = spec(&url, None);
        silent.timeout = Duration::from_millis(300);
        let client = Client::new(&silent).unwrap();
        let Err(e) = client.post([], Bytes::from_static(b"{}")).await else {
            panic!("a receiver that never answers gave an answer");
        };
        assert!(matches!(e, Failure::Timeout(_)), "{e}");
        assert_eq!(e.to_string(), "no answer within 300ms (the sink's timeout)");
        held.abort();
    }

    /// A CA and a certificate for 127.0.0.1 it signed, made by openssl in `dir`.
    fn certificates(dir: &std::path::Path) {
        let script = "set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost -keyout server.key -out server.csr
printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.pem";
        let status = std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl made the certificates");
    }

    #[tokio::test]
    async fn http2_over_tls_when_the_receiver_offers_it_all_posts_on_one_connection() {
        use rustls_pki_types::PrivateKeyDer;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path());
        let chain = CertificateDer::pem_file_iter(dir.path().join("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.path().join("server.key")).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/hook?x=1", listener.local_addr().unwrap());
        let (connections, requests) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (accepted, served) = (connections.clone(), requests.clone());
        let server = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                let tls = acceptor.accept(tcp).await.unwrap();
                let served = served.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let served = served.clone();
                    async move {
                        // What the receiver sees: HTTP/2, the URL's path and query.
                        let ok = request.version() == hyper::Version::HTTP_2
                            && request.uri().path() == "/hook"
                            && request.uri().query() == Some("x=1")
                            && request.headers()["webhook-id"] == "msg_1";
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        if ok && body == "{}" {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"thanks"),
                        )))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service),
                );
            }
        });
        let client = Client::new(&spec(&url, Some(dir.path().join("ca.pem")))).unwrap();
        let post = || async {
            let id = (
                HeaderName::from_static("webhook-id"),
                HeaderValue::from_static("msg_1"),
            );
            let answer = client.post([id], Bytes::from_static(b"{}")).await.unwrap();
            assert_eq!(answer.response.version(), hyper::Version::HTTP_2);
            assert_eq!(answer.response.status(), 200);
            read_answer(answer, 10, Duration::from_secs(5)).await
        };
        // The first POST finds the receiver speaks HTTP/2; the rest, at
        // once, share its connection.
        assert_eq!(post().await, b"thanks");
        let answers = futures::future::join_all((0..20).map(|_| post())).await;
        assert!(answers.iter().all(|a| a == b"thanks"));
        assert_eq!(
            requests.load(Ordering::SeqCst),
            21,
            "every POST arrived whole"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 1, "one connection");
        server.abort();
    }

    #[tokio::test]
    async fn a_kept_connection_the_receiver_closed_is_not_used_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Answers one request per connection, keep-alive promised, then
        // closes it: the next POST must not fail on the dead connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf).await.unwrap();
                    seen.extend_from_slice(&buf[..n]);
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(socket);
            }
        });
        let client = Client::new(&spec(&url, None)).unwrap();
        for _ in 0..3 {
            let answer = client.post([], Bytes::from_static(b"{}")).await.unwrap();
            assert_eq!(answer.response.status(), 200);
            read_answer(answer, 0, Duration::from_secs(1)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server.abort();
    }
}
