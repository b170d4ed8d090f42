//! The HTTPS sink's HTTP client: hyper-util's pooled client over rustls
//! (both already in the tree under reqwest), with the URL parsed once.
//!
//! reqwest on top of the same client cost a sixth of the sink's thread per
//! POST (measured: its redirect layer re-parses the URL of every request,
//! and its request and response futures are moved by value, kilobytes at a
//! time). This sink needs none of what that layer adds: it follows no
//! redirects, retries by its own rules and uses no proxy.

use std::error::Error as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::header::{
    HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT,
};
use hyper::http::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

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
    /// Connecting, TLS, or the connection broke.
    #[error("{}", chain(.0))]
    Transport(hyper_util::client::legacy::Error),
}

/// An error and its causes on one line.
fn chain(e: &hyper_util::client::legacy::Error) -> String {
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
    inner: hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    /// Basic credentials from the URL's user info, if it has any.
    authorization: Option<HeaderValue>,
    timeout: Duration,
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
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(spec.concurrency)
            // Idle connections expire (90 s) on a timer, as under reqwest.
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
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
        Ok(Self {
            inner,
            uri,
            authorization,
            timeout: spec.timeout,
        })
    }

    /// POSTs `body` as JSON with `headers`; the answer's head, its body unread.
    pub async fn post(
        &self,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<Response<Incoming>, Failure> {
        let mut request = Request::post(self.uri.clone())
            .body(Full::new(body))
            .expect("a parsed URI and a POST make a request");
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
        match tokio::time::timeout(self.timeout, self.inner.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(Failure::Transport(e)),
            Err(_) => Err(Failure::Timeout(self.timeout)),
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
pub async fn read_answer(response: Response<Incoming>, keep: usize, timeout: Duration) -> Vec<u8> {
    let mut body = response.into_body();
    let mut start = Vec::new();
    if hyper::body::Body::is_end_stream(&body) {
        // No body (a 202 or 204, or Content-Length: 0): no timer either.
        return start;
    }
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
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read).await;
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
            let response = client.post([], Bytes::from_static(b"{}")).await.unwrap();
            assert_eq!(response.status(), 200);
            let start = read_answer(response, 4, Duration::from_secs(5)).await;
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
        let e = client
            .post([], Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(matches!(e, Failure::Timeout(_)), "{e}");
        assert_eq!(e.to_string(), "no answer within 300ms (the sink's timeout)");
        held.abort();
    }
}
