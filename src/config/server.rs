//! Validation of `[server]`, `[tls]` and `[admin]` in `tributary.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::check::{positive_duration, Errors};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

/// `[server]` in `tributary.toml`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Longest a client may take to send a request's headers (and a TLS handshake).
    pub header_timeout: Option<String>,
    /// Longest a client may take to send a request's body.
    pub body_timeout: Option<String>,
    /// Most connections open at once on each listener.
    pub max_connections: Option<u64>,
}

/// `[tls]` in `tributary.toml`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub cert: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<String>,
}

/// `[admin]` in `tributary.toml`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// A separate address for the admin endpoints (plain HTTP); default: on `listen`.
    pub listen: Option<String>,
    /// Env var holding a bearer token the admin API requires.
    pub token_env: Option<String>,
}

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

/// `check --explain`'s form: the `[server]`, `[tls]` and `[admin]` tables
/// the spec came from, every default filled in.
impl Serialize for ServerSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut server = toml::Table::new();
        let shown = |d: Duration| toml::Value::from(humantime::format_duration(d).to_string());
        server.insert("header_timeout".into(), shown(self.header_timeout));
        server.insert("body_timeout".into(), shown(self.body_timeout));
        server.insert(
            "max_connections".into(),
            (self.max_connections as i64).into(),
        );
        let mut admin = toml::Table::new();
        let listen = self
            .admin_listen
            .map_or("(on listen)".to_string(), |a| a.to_string());
        admin.insert("listen".into(), listen.into());
        if let Some(env) = &self.admin_token_env {
            admin.insert("token_env".into(), env.clone().into());
        }
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("server", &server)?;
        if let Some((cert, key)) = &self.tls {
            let mut tls = toml::Table::new();
            tls.insert("cert".into(), cert.display().to_string().into());
            tls.insert("key".into(), key.display().to_string().into());
            map.serialize_entry("tls", &tls)?;
        }
        map.serialize_entry("admin", &admin)?;
        map.end()
    }
}

/// Default `server.header_timeout`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `server.body_timeout`.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `server.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

pub(super) fn server(
    limits: Option<&RawServer>,
    tls: Option<&RawTls>,
    admin: Option<&RawAdmin>,
    root: &Path,
    e: &mut Errors<'_>,
) -> ServerSpec {
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
    let tls = tls.and_then(|t| {
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
