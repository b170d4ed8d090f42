//! `[log]` in `tributary.toml` (where the pipelines' logs live: the local
//! segment files, or a NATS JetStream cluster) and `[log]` in a pipeline
//! file (its partitions on JetStream).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{positive_duration, Errors};

/// `[log]` in `tributary.toml`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `"file"` (default) or `"jetstream"`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `nats://host:port` URLs of the cluster's servers.
    pub servers: Option<Vec<String>>,
    /// Copies of each stream (1, 3 or 5).
    pub replicas: Option<u64>,
    /// How long a node owns a partition without renewing, e.g. `"15s"`.
    pub lease: Option<String>,
    /// This node's name in leases and status (default: the host name).
    pub node: Option<String>,
    /// Env var holding the NATS user name.
    pub user_env: Option<String>,
    /// Env var holding the NATS password.
    pub password_env: Option<String>,
    /// Env var holding a NATS token.
    pub token_env: Option<String>,
}

/// `[log]` in a pipeline file.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPipelineLog {
    /// Streams the pipeline's events are spread over on JetStream.
    pub partitions: Option<u64>,
}

/// Where the pipelines' logs live.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LogSpec {
    /// Segment files under `data_dir` (the embedded default).
    #[default]
    File,
    /// Streams on a NATS JetStream cluster.
    JetStream(JetStreamSpec),
}

/// `[log] type = "jetstream"`, defaulted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JetStreamSpec {
    /// Server URLs.
    pub servers: Vec<String>,
    /// Copies of each stream and bucket.
    pub replicas: usize,
    /// A partition's owner must renew within this.
    #[serde(serialize_with = "super::check::shown::duration")]
    pub lease: Duration,
    /// This node's name (a random suffix per process makes its id).
    pub node: String,
    /// Env vars of the credentials, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_env: Option<String>,
    /// See `user_env`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Env var of a token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// Default `log.lease`: a dead node's partitions move within it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// Default `[log] partitions` of a pipeline.
pub const DEFAULT_PARTITIONS: u32 = 6;
/// Most partitions of a pipeline (each is a replicated stream).
pub const MAX_PARTITIONS: u64 = 256;

pub(super) fn log(raw: Option<&RawLog>, e: &mut Errors<'_>) -> LogSpec {
    let Some(raw) = raw else {
        return LogSpec::File;
    };
    match raw.kind.as_deref().unwrap_or("file") {
        "file" => {
            if raw.servers.is_some() || raw.replicas.is_some() || raw.lease.is_some() {
                e.push(
                    "log.servers",
                    "is set but log.type is \"file\"",
                    "set type = \"jetstream\" to use the servers, or remove the jetstream keys",
                );
            }
            return LogSpec::File;
        }
        "jetstream" => {}
        other => {
            e.push(
                "log.type",
                format!("\"{other}\" is not a kind of log"),
                "set type = \"file\" (local segment files, the default) or \"jetstream\"",
            );
            return LogSpec::File;
        }
    }
    let servers = raw.servers.clone().unwrap_or_default();
    if servers.is_empty() {
        e.push(
            "log.servers",
            "missing",
            "list the cluster's servers, e.g. servers = [\"nats://10.0.0.1:4222\", \"nats://10.0.0.2:4222\"]",
        );
    }
    for server in &servers {
        let ok = url::Url::parse(server)
            .is_ok_and(|u| matches!(u.scheme(), "nats" | "tls") && u.host_str().is_some());
        if !ok {
            e.push(
                "log.servers",
                format!("\"{server}\" is not a nats:// URL"),
                "write each server as \"nats://host:4222\" (or tls://host:4222)",
            );
        }
    }
    let replicas = match raw.replicas {
        None => 3.min(servers.len().max(1)),
        Some(n @ (1 | 3 | 5)) => n as usize,
        Some(n) => {
            e.push(
                "log.replicas",
                format!("{n} copies cannot keep a quorum"),
                "set 1, 3 or 5 (3 survives one server lost)",
            );
            1
        }
    };
    let lease = positive_duration(raw.lease.as_deref(), "log.lease", DEFAULT_LEASE, "15s", e);
    if lease < Duration::from_secs(3) {
        e.push(
            "log.lease",
            "is below 3s",
            "set at least \"3s\": a node renews three times per lease, and a shorter one moves partitions on every pause",
        );
    }
    let node = raw.node.clone().unwrap_or_else(host_name);
    for (key, value) in [
        ("log.user_env", &raw.user_env),
        ("log.password_env", &raw.password_env),
        ("log.token_env", &raw.token_env),
    ] {
        if value.as_deref() == Some("") {
            e.push(key, "is empty", "name an env var, or remove the key");
        }
    }
    if raw.user_env.is_some() != raw.password_env.is_some() {
        e.push(
            "log.password_env",
            "user_env and password_env come together",
            "set both (user name and password), or neither",
        );
    }
    LogSpec::JetStream(JetStreamSpec {
        servers,
        replicas,
        lease,
        node,
        user_env: raw.user_env.clone(),
        password_env: raw.password_env.clone(),
        token_env: raw.token_env.clone(),
    })
}

pub(super) fn partitions(raw: Option<&RawPipelineLog>, e: &mut Errors<'_>) -> u32 {
    match raw.and_then(|l| l.partitions) {
        None => DEFAULT_PARTITIONS,
        Some(n) if (1..=MAX_PARTITIONS).contains(&n) => n as u32,
        Some(n) => {
            e.push(
                "log.partitions",
                format!("{n} is out of range"),
                format!("set between 1 and {MAX_PARTITIONS}, e.g. {DEFAULT_PARTITIONS}"),
            );
            DEFAULT_PARTITIONS
        }
    }
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let done = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(0);
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if done && !name.is_empty() => name.to_string(),
        _ => "node".to_string(),
    }
}
