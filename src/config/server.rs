//! Validation of `[server]`, `[tls]` and `[admin]` in `tributary.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::RawGlobal;
use super::validate::{positive_duration, Errors};

/// `[server]`, `[tls]` and `[admin]`, defaulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Longest a client may take to send a request's headers (and a TLS handshake).
    pub header_timeout: Duration,
    /// Longest a client may take to send a request's body.
    pub body_timeout: Duration,
    /// Most connections open at once on each listener.
    pub max_connections: usize,
    /// Certificate and key files for HTTPS on `listen`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A separate (plain HTTP) address for the admin endpoints.
    pub admin_listen: Option<SocketAddr>,
    /// Env var of the bearer token the admin API requires.
    pub admin_token_env: Option<String>,
}

/// Default `server.header_timeout`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `server.body_timeout`.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `server.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

pub(super) fn server(raw: &RawGlobal, root: &Path, e: &mut Errors<'_>) -> ServerSpec {
    let limits = raw.server.as_ref();
    let header_timeout = positive_duration(
        limits.and_then(|s| s.header_timeout.as_deref()),
        "server.header_timeout",
        DEFAULT_HEADER_TIMEOUT,
        "10s",
        e,
    );
    let body_timeout = positive_duration(
        limits.and_then(|s| s.body_timeout.as_deref()),
        "server.body_timeout",
        DEFAULT_BODY_TIMEOUT,
        "60s",
        e,
    );
    let max_connections = match limits.and_then(|s| s.max_connections) {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(n) if (1..=1_000_000).contains(&n) => n as usize,
        Some(n) => {
            e.push(
                "server.max_connections",
                format!("{n} is out of range"),
                "set between 1 and 1000000, e.g. 4096",
            );
            DEFAULT_MAX_CONNECTIONS
        }
    };
    let tls = raw.tls.as_ref().and_then(|t| {
        let mut file = |key: &str, value: &Option<String>, example: &str| match value {
            Some(v) if !v.is_empty() => Some(root.join(v)),
            _ => {
                e.push(
                    format!("tls.{key}"),
                    "missing",
                    format!("name the PEM file, e.g. {key} = \"{example}\", or remove [tls] to serve plain HTTP"),
                );
                None
            }
        };
        let cert = file("cert", &t.cert, "certs/server.pem");
        let key = file("key", &t.key, "certs/server.key");
        Some((cert?, key?))
    });
    let admin = raw.admin.as_ref();
    let admin_listen = admin.and_then(|a| a.listen.as_deref()).and_then(|text| {
        text.parse::<SocketAddr>()
            .map_err(|_| {
                e.push(
                    "admin.listen",
                    format!("\"{text}\" is not an address"),
                    "write an IP address and port such as \"127.0.0.1:9090\"",
                )
            })
            .ok()
    });
    let admin_token_env = admin.and_then(|a| a.token_env.clone());
    if admin_token_env.as_deref() == Some("") {
        e.push(
            "admin.token_env",
            "is empty",
            "name the env var holding the admin bearer token, e.g. token_env = \"TRIBUTARY_ADMIN_TOKEN\"",
        );
    }
    ServerSpec {
        header_timeout,
        body_timeout,
        max_connections,
        tls,
        admin_listen,
        admin_token_env,
    }
}
