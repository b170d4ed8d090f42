//! The HTTPS sink client's tests: against raw TCP receivers, and an HTTP/2
//! one over TLS.

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
    let client = Client::new(&spec("https://ann:p%40ss@receiver.example/hook?x=1", None)).unwrap();
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
    let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
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
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"thanks",
                    ))))
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
