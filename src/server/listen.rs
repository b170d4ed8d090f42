//! The accept loop: HTTP/1.1 connections, optionally TLS, with a header-read
//! timeout (a slow client cannot pin a connection with a trickle of bytes), a
//! cap on open connections and graceful shutdown. axum's own `serve` sets no
//! header timeout, so connections are driven by hyper directly.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The address a request came from, in its extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a client may take to send a request's headers, and to finish a TLS handshake.
    pub header_timeout: Duration,
    /// Most connections open at once; more are closed when accepted.
    pub max_connections: usize,
}

/// Binds `listen`; separate from [`serve`] so a bind error is reported before
/// anything starts.
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Why the TLS files cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read or parsed.
    #[error("tls.cert {}: {source}", path.display())]
    Cert {
        /// The file.
        path: std::path::PathBuf,
        /// What rustls-pki-types said.
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("tls.cert {}: no PEM certificate in the file", .0.display())]
    NoCert(std::path::PathBuf),
    /// The key file cannot be read or parsed.
    #[error("tls.key {}: {source}", path.display())]
    Key {
        /// The file.
        path: std::path::PathBuf,
        /// What rustls-pki-types said.
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate and key do not go together, or rustls refused them.
    #[error("tls.cert {} and tls.key {} do not make a usable pair: {source}", cert.display(), key.display())]
    Pair {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// The key file.
        key: std::path::PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// rustls has no protocol version to offer.
    #[error("TLS set-up: {0}")]
    Setup(#[source] rustls::Error),
}

/// A TLS acceptor from PEM files (certificate chain leaf first; a PKCS#8,
/// PKCS#1 or SEC1 key), speaking HTTP/1.1. Uses ring, as the rest of tributary.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|source| TlsError::Cert {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert.to_path_buf()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_path_buf(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|source| TlsError::Pair {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` until `stop` is cancelled, then lets the requests in flight
/// finish (idle keep-alive connections are closed).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "Cannot accept a connection; retrying.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(
                limit = limits.max_connections,
                "Too many open connections (server.max_connections); closing a new one."
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, tls, watcher) = (app.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            connection(stream, peer, app, limits, tls, watcher).await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    // Each request carries the peer's address (the admin API answers only
    // loopback peers when it has no token).
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(Peer(peer));
        let mut app = app.clone();
        async move { tower_service::Service::call(&mut app, request).await }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let result = match tls {
        None => {
            watcher
                .watch(builder.serve_connection(TokioIo::new(stream), service))
                .await
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed.");
                    return;
                }
                Err(_) => {
                    debug!("TLS handshake timed out.");
                    return;
                }
            };
            watcher
                .watch(builder.serve_connection(TokioIo::new(stream), service))
                .await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "Connection ended with an error.");
    }
}
