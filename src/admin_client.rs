//! `tributary status` and `tributary replay`: clients of the running server's
//! admin API, found through the same configuration `run` reads (`admin.listen`
//! if set, else `listen`, over HTTPS when `[tls]` is set there), with the
//! bearer token from `admin.token_env`.

use std::net::SocketAddr;

use serde_json::Value;

use crate::config::GlobalSpec;
use crate::replay::Filter;

/// Why a client command failed; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server's certificate file cannot be read.
    #[error("cannot read tls.cert {}: {source}", path.display())]
    ReadCert {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file or the client cannot be used.
    #[error("tls.cert {}: {source}", path.display())]
    Cert {
        /// The file.
        path: std::path::PathBuf,
        /// What reqwest said.
        source: reqwest::Error,
    },
    /// The HTTP client cannot be built.
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    /// `admin.token_env` names an unset variable.
    #[error("admin.token_env names {0}, which is not set here; export the admin token")]
    Token(String),
    /// No server answers.
    #[error("cannot reach tributary at {base} ({source}); is `tributary run` running with this configuration?")]
    Unreachable {
        /// The admin API's base URL.
        base: String,
        /// What reqwest said.
        source: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("the server answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// The `error` of its JSON body.
        message: String,
    },
    /// The answer could not be read.
    #[error("the server's answer could not be read: {0}")]
    Answer(#[source] reqwest::Error),
    /// A line of the answer is not JSON.
    #[error("the server's answer is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The replay failed on the server.
    #[error("{0}")]
    Replay(String),
    /// The answer ended early.
    #[error("the server ended the replay without a result; check its log")]
    NoResult,
    /// `--since` does not parse.
    #[error(
        "--since {0:?} is neither an RFC 3339 time (2026-11-28T10:00:00Z) nor a duration (2h)"
    )]
    Since(String),
}

/// What a tap follows.
#[derive(Debug, Clone, Copy)]
pub enum Tap<'a> {
    /// Each event once it is acknowledged.
    Events,
    /// Each event once this sink has written it.
    Sink(&'a str),
    /// The dead letters the sinks write.
    DeadLetters,
}

/// The admin API's base URL and a client for it.
pub struct AdminClient {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
}

/// A wildcard listen address is reached on loopback.
fn reachable(address: SocketAddr) -> SocketAddr {
    let mut address = address;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    address
}

impl AdminClient {
    /// The client for the server `global` configures.
    pub fn new(global: &GlobalSpec) -> Result<Self, ClientError> {
        let server = &global.server;
        let mut builder = reqwest::Client::builder().no_proxy();
        let base = match server.admin_listen {
            Some(admin) => format!("http://{}", reachable(admin)),
            None => {
                let address = reachable(global.listen);
                match &server.tls {
                    None => format!("http://{address}"),
                    Some((cert, _)) => {
                        // Trust the server's own certificate file (self-signed or its chain).
                        let pem = std::fs::read(cert).map_err(|source| ClientError::ReadCert {
                            path: cert.clone(),
                            source,
                        })?;
                        let certs =
                            reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                                ClientError::Cert {
                                    path: cert.clone(),
                                    source,
                                }
                            })?;
                        for c in certs {
                            builder = builder.add_root_certificate(c);
                        }
                        format!("https://{address}")
                    }
                }
            }
        };
        let token = match &server.admin_token_env {
            None => None,
            Some(var) => Some(std::env::var(var).map_err(|_| ClientError::Token(var.clone()))?),
        };
        let client = builder.build().map_err(ClientError::Build)?;
        Ok(Self {
            base,
            client,
            token,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                base: self.base.clone(),
                source,
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Err(ClientError::Refused {
            status,
            message: body["error"].as_str().unwrap_or("(no message)").to_string(),
        })
    }

    /// `GET /api/pipelines`.
    pub async fn pipelines(&self) -> Result<Value, ClientError> {
        let response = self
            .send(self.request(reqwest::Method::GET, "/api/pipelines"))
            .await?;
        response.json().await.map_err(ClientError::Answer)
    }

    /// Follows `pipeline`'s tap of `what`: each NDJSON line to `line`,
    /// until the server ends the stream.
    pub async fn tap(
        &self,
        pipeline: &str,
        what: Tap<'_>,
        line: &mut dyn FnMut(&str),
    ) -> Result<(), ClientError> {
        let query = match what {
            Tap::Events => String::new(),
            Tap::Sink(sink) => format!(
                "?sink={}",
                percent_encoding::utf8_percent_encode(sink, percent_encoding::NON_ALPHANUMERIC)
            ),
            Tap::DeadLetters => "?dead_letters=true".to_string(),
        };
        let request = self.request(
            reqwest::Method::GET,
            &format!("/api/pipelines/{pipeline}/tap{query}"),
        );
        let mut response = self.send(request).await?;
        let mut pending = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(ClientError::Answer)? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let text: Vec<u8> = pending.drain(..=end).collect();
                line(String::from_utf8_lossy(&text).trim_end());
            }
        }
        Ok(())
    }

    /// `method path` with `body` (as JSON) if any; the answer's JSON.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(request).await?;
        response.json().await.map_err(ClientError::Answer)
    }

    /// `POST /api/pipelines/{name}/replay`; `progress` sees each progress
    /// line; returns the final result.
    pub async fn replay(
        &self,
        pipeline: &str,
        filter: &Filter,
        progress: &mut dyn FnMut(&Value),
    ) -> Result<Value, ClientError> {
        let request = self
            .request(
                reqwest::Method::POST,
                &format!("/api/pipelines/{pipeline}/replay"),
            )
            .json(filter);
        let mut response = self.send(request).await?;
        let mut pending = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(ClientError::Answer)? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let value: Value = serde_json::from_slice(&line).map_err(ClientError::NotJson)?;
                if let Some(p) = value.get("progress") {
                    progress(p);
                } else if let Some(e) = value.get("error") {
                    return Err(ClientError::Replay(
                        e.as_str().unwrap_or("replay failed").to_string(),
                    ));
                } else if value.get("done").is_some() {
                    return Ok(value["result"].clone());
                }
            }
        }
        Err(ClientError::NoResult)
    }
}

/// `--since`: an RFC 3339 time or a duration back from now, as µs since the epoch.
pub fn parse_since(text: &str) -> Result<i64, ClientError> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_micros());
    }
    let back = crate::config::units::parse_duration(text)
        .map_err(|_| ClientError::Since(text.to_string()))?;
    Ok(crate::event::now_us() - back.as_micros() as i64)
}

/// `status --watch`'s table: per pipeline, events in per second (its log's
/// end) and per sink events out per second (its committed offset), from
/// `before` (the answer `elapsed` earlier; none on the first frame), with
/// lags, dead letters and the last error.
pub fn rates_table(before: Option<(&Value, std::time::Duration)>, now: &Value) -> String {
    let mut rows = vec![[
        "PIPELINE",
        "SINK",
        "STATE",
        "IN/S",
        "OUT/S",
        "LAG",
        "LAG_S",
        "DEAD",
        "LAST_ERROR",
    ]
    .map(String::from)];
    let rate = |path: &dyn Fn(&Value) -> Option<u64>, pipeline: &str, sink: Option<&str>| {
        let (then, elapsed) = before?;
        let find = |all: &Value| -> Option<u64> {
            let p = all["pipelines"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == pipeline)?;
            match sink {
                None => path(p),
                Some(sink) => path(p["sinks"].as_array()?.iter().find(|s| s["name"] == sink)?),
            }
        };
        let (a, b) = (find(then)?, find(now)?);
        Some(b.saturating_sub(a) as f64 / elapsed.as_secs_f64().max(1e-3))
    };
    let shown = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.0}"));
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    for p in now["pipelines"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("");
        let end = |p: &Value| p["log"]["end_offset"].as_u64();
        rows.push([
            name.to_string(),
            "(in)".into(),
            p["poll"]["state"].as_str().unwrap_or("").into(),
            shown(rate(&end, name, None)),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            p["poll"]["last_error"].as_str().unwrap_or("").into(),
        ]);
        for s in p["sinks"].as_array().into_iter().flatten() {
            let committed = |s: &Value| s["committed_offset"].as_u64();
            rows.push([
                String::new(),
                text(&s["name"]),
                text(&s["state"]),
                String::new(),
                shown(rate(&committed, name, s["name"].as_str())),
                text(&s["lag_events"]),
                format!("{:.1}", s["lag_seconds"].as_f64().unwrap_or(0.0)),
                text(&s["dead_letters"]),
                s["last_error"].as_str().unwrap_or("").into(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..9)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The status table: one line per sink, and one for each poll source (its
/// SINK `(source)`, its LAST_COMMIT the last successful run).
pub fn table(pipelines: &Value) -> String {
    let mut rows = vec![[
        "PIPELINE",
        "SOURCE",
        "SINK",
        "STATE",
        "COMMITTED",
        "LAG",
        "LAG_S",
        "LAST_COMMIT",
        "DEAD",
        "LAST_ERROR",
    ]
    .map(String::from)];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    for p in pipelines["pipelines"].as_array().into_iter().flatten() {
        let poll = &p["poll"];
        if poll.is_object() {
            let error = match (poll["last_error"].as_str(), poll["failures"].as_u64()) {
                (Some(e), Some(n)) => format!("{e} ({n} failure(s) since the last success)"),
                _ => "-".into(),
            };
            rows.push([
                text(&p["name"]),
                text(&p["source"]),
                "(source)".into(),
                text(&poll["state"]),
                "-".into(),
                "-".into(),
                "-".into(),
                text(&poll["last_success"]),
                "-".into(),
                error,
            ]);
        }
        for s in p["sinks"].as_array().into_iter().flatten() {
            rows.push([
                text(&p["name"]),
                text(&p["source"]),
                text(&s["name"]),
                text(&s["state"]),
                text(&s["committed_offset"]),
                text(&s["lag_events"]),
                format!("{:.1}", s["lag_seconds"].as_f64().unwrap_or(0.0)),
                text(&s["last_commit"]),
                text(&s["dead_letters"]),
                text(&s["last_error"]),
            ]);
            // On a JetStream log: each partition, with the node writing it.
            for u in p["partitions"].as_array().into_iter().flatten() {
                if u["sink"] != s["name"] {
                    continue;
                }
                rows.push([
                    String::new(),
                    String::new(),
                    format!("  partition {}", text(&u["partition"])),
                    u["owner"]
                        .as_str()
                        .map_or("unowned".into(), |o| format!("on {o}")),
                    text(&u["committed"]),
                    text(&u["lag_events"]),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
        }
    }
    let widths: Vec<usize> = (0..10)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 9 {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_poll_source_has_its_own_row_with_its_last_error() {
        let answer = serde_json::json!({"pipelines": [{
            "name": "hubspot_contacts",
            "source": "poll",
            "poll": {
                "state": "failing",
                "last_success": null,
                "last_error": "env var HUBSPOT_TOKEN is not set",
                "last_error_at": "2026-12-06T10:00:00+00:00",
                "failures": 3,
            },
            "sinks": [{
                "name": "delta", "state": "starting", "committed_offset": 0, "lag_events": 0,
                "lag_seconds": 0.0, "last_commit": null, "dead_letters": 0, "last_error": null,
            }],
        }]});
        let table = table(&answer);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[1].contains("(source)")
                && lines[1].contains("failing")
                && lines[1].ends_with(
                    "env var HUBSPOT_TOKEN is not set (3 failure(s) since the last success)"
                ),
            "{table}"
        );
        assert!(
            lines[2].contains("delta") && lines[2].contains("starting"),
            "{table}"
        );
    }
}
