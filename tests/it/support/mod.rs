//! Helpers: a project directory, the binary as a child process, HTTP posting
//! and Parquet read-back by the `parquet` crate and by DuckDB (Python).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub mod accounts;
mod delta;
pub mod fake_api;
pub mod fault_proxy;
mod readers;
pub use delta::*;
pub use readers::*;

/// The Shopify customer schema shipped in `schemas/`.
pub const SHOPIFY_SCHEMA: &str = include_str!("../../../schemas/shopify_customer.json");

/// A throw-away project: `tributary.toml`, `pipelines/`, `schemas/`.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Project {
    /// A project listening on a free port, with the Shopify schema.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(dir.path().join("pipelines")).unwrap();
        fs::create_dir_all(dir.path().join("schemas")).unwrap();
        fs::write(
            dir.path().join("schemas/shopify_customer.json"),
            SHOPIFY_SCHEMA,
        )
        .unwrap();
        let port = free_port();
        let project = Self { dir, port };
        project.write(
            "tributary.toml",
            &format!("listen = \"127.0.0.1:{port}\"\n"),
        );
        project
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, relative: &str, text: &str) {
        let path = self.path().join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// A Shopify-customers webhook pipeline with a Parquet sink and the given extra TOML.
    pub fn shopify_pipeline(&self, batch: &str, extra: &str) {
        self.shopify_pipeline_with(batch, extra, "type = \"parquet\"");
    }

    /// The Shopify-customers webhook pipeline: `extra` TOML in `[source]`,
    /// `batch` in `[batch]`, `sink` in its one `[[sink]]` table.
    pub fn shopify_pipeline_with(&self, batch: &str, extra: &str, sink: &str) {
        self.write(
            "pipelines/shopify_customers.toml",
            &format!(
                r#"name = "shopify_customers"
schema = "schemas/shopify_customer.json"
record_path = "/customers"
primary_key = ["id"]

[source]
type = "webhook"
path = "/hooks/shopify/customers"
{extra}

[batch]
{batch}

[[sink]]
{sink}
"#
            ),
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn table_dir(&self) -> PathBuf {
        self.path().join("lake/shopify_customers")
    }

    /// Where the sinks of `pipeline` without a `uri` write.
    pub fn table_dir_of(&self, pipeline: &str) -> PathBuf {
        self.path().join("lake").join(pipeline)
    }

    /// Runs `tributary <args>` to completion in the project directory, with
    /// extra environment variables.
    pub fn command_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(self.path())
            .output()
            .expect("run tributary")
    }

    /// Runs `tributary <args>` to completion in the project directory.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        self.command_with_env(args, &[])
    }

    /// Starts `tributary run` and waits until it answers `/healthz`.
    pub async fn start(&self) -> Server {
        self.start_with_env(&[]).await
    }

    /// Like [`Project::start`], with extra environment variables.
    pub async fn start_with_env(&self, env: &[(&str, &str)]) -> Server {
        self.start_with(&[], env).await
    }

    /// Like [`Project::start`], with arguments before `run` and extra environment variables.
    pub async fn start_with(&self, args: &[&str], env: &[(&str, &str)]) -> Server {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("run.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(args)
            .arg("run")
            .current_dir(self.path())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tributary run");
        let server = Server { child };
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(r) = client.get(self.url("/healthz")).send().await {
                if r.status() == 200 {
                    return server;
                }
            }
            // A hang guard, not a timing assertion: startup takes milliseconds.
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "tributary did not start; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The status `/healthz` answers with.
    pub async fn health(&self) -> u16 {
        reqwest::get(self.url("/healthz"))
            .await
            .expect("GET /healthz")
            .status()
            .as_u16()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path().join("run.log")).unwrap_or_default()
    }
}

/// A running `tributary run`.
pub struct Server {
    child: Child,
}

impl Server {
    /// Takes over a `tributary run` started by hand (killed when dropped).
    pub fn adopt(child: Child) -> Self {
        Self { child }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no flush, no clean-up.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// Sends `signal` (e.g. `"STOP"`, `"CONT"`): a paused process keeps its
    /// sockets and state but runs nothing, as a VM or GC pause would.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "tributary did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `done` every 20 ms until it holds. The 30 s limit is a hang guard,
/// not a timing assertion; on it, the test fails naming `what` and the log.
pub async fn eventually(project: &Project, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never saw {what}; log:\n{}",
            project.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Shopify-style `customers/create` payload.
pub fn shopify_customer(id: u64) -> serde_json::Value {
    serde_json::json!({"customers": {
        "id": id,
        "email": format!("c{id}@example.com"),
        "orders_count": id % 7,
        "total_spent": "12.50",
        "created_at": "2024-05-01T12:00:00-04:00",
        "verified_email": true,
        "tags": "Test",
        "addresses": [{"id": id * 10, "city": "Berlin", "default": true}]
    }})
}

/// The ids a 202 answer lists.
pub fn accepted_ids(body: &serde_json::Value) -> Vec<String> {
    body["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Every row of every Parquet file under `dir`, read by the `parquet` crate.
pub fn read_parquet(dir: &Path) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for file in parquet_files(dir) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&file).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            batches.push(batch.unwrap());
        }
    }
    batches
}

pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(parquet_files(&path));
        } else if path.extension().is_some_and(|x| x == "parquet") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Every `_event_id` in the Parquet files under `dir`, in file order (parquet crate).
pub fn event_ids(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for batch in read_parquet(dir) {
        let ids = batch
            .column_by_name("_event_id")
            .expect("_event_id column")
            .as_string::<i32>();
        out.extend(ids.iter().map(|id| id.unwrap().to_string()));
    }
    out
}

/// How often each `_event_id` occurs in the Parquet files under `dir` (parquet crate).
pub fn id_counts(dir: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in event_ids(dir) {
        *counts.entry(id).or_default() += 1;
    }
    counts
}

/// Posts `requests` requests of `per` Shopify customers (ids from `first`)
/// to the Shopify pipeline and returns the acknowledged ids.
pub async fn post_customers(
    project: &Project,
    first: u64,
    requests: u64,
    per: u64,
) -> HashSet<String> {
    let client = reqwest::Client::new();
    let mut acked = HashSet::new();
    for r in 0..requests {
        let events: Vec<_> = (0..per)
            .map(|i| shopify_customer(first + r * per + i))
            .collect();
        let response = client
            .post(project.url("/hooks/shopify/customers"))
            .json(&events)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        acked.extend(accepted_ids(&response.json().await.unwrap()));
    }
    acked
}

/// The same, read by DuckDB through Python: an engine we did not write.
pub fn duckdb_id_counts(dir: &Path) -> HashMap<String, usize> {
    let script = r#"
import json, sys, duckdb
rows = duckdb.sql("SELECT _event_id, count(*) FROM read_parquet(?, hive_partitioning = true) GROUP BY 1", params=[sys.argv[1] + "/**/*.parquet"]).fetchall()
print(json.dumps(dict(rows)))
"#;
    let python = crate::support::python();
    let out = Command::new(&python)
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python}: {e}; scripts/test installs DuckDB for Python")
        });
    assert!(
        out.status.success(),
        "DuckDB read failed (scripts/test installs duckdb): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("DuckDB printed JSON")
}

/// A moto S3 server on a free loopback port (scripts/test installs moto).
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub async fn start() -> Self {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (scripts/test installs it: pip install 'moto[server]')");
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while reqwest::get(&moto.endpoint).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto_server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        moto
    }

    /// Creates a bucket.
    pub async fn bucket(&self, name: &str) {
        let r = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "create bucket: {}", r.status());
    }

    /// Every `_event_id` in the Parquet objects under `prefix` of bucket
    /// `lake`, read through the S3 API, with the key of its object.
    pub async fn parquet_ids(&self, prefix: &str) -> Vec<(String, String)> {
        use futures::TryStreamExt;
        use object_store::{ObjectStore, ObjectStoreExt};
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("lake")
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        let prefix = object_store::path::Path::from(prefix);
        let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
        let mut seen = Vec::new();
        for meta in objects {
            let bytes = store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let ids = batch
                    .column_by_name("_event_id")
                    .unwrap()
                    .as_string::<i32>();
                seen.extend(
                    ids.iter()
                        .map(|v| (meta.location.to_string(), v.unwrap().to_string())),
                );
            }
        }
        seen
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One POST the test receiver got.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Delivery {
    pub id: Option<String>,
    pub verified: bool,
    pub status: u16,
    pub body: String,
}

/// A test CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it
/// (`server.pem`, `server.key`), made by openssl.
pub fn certificates(dir: &std::path::Path) {
    let script = "set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost -keyout server.key -out server.csr
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.pem";
    let status = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
}

/// The Python receiver (`receiver.py`) that verifies the HTTPS sink's signatures.
pub struct Receiver {
    child: Child,
    pub url: String,
    out: PathBuf,
    control: PathBuf,
}

impl Receiver {
    /// Starts a receiver for `scheme` with `key` (see receiver.py) in `dir`.
    pub async fn start(dir: &Path, scheme: &str, key: &str) -> Self {
        Self::start_on(dir, scheme, key, free_port()).await
    }

    /// Like [`Receiver::start`], on a given port (to bring a receiver back).
    pub async fn start_on(dir: &Path, scheme: &str, key: &str, port: u16) -> Self {
        Self::start_with(dir, scheme, key, port, None).await
    }

    /// Like [`Receiver::start`], over TLS with the certificate and key that
    /// [`certificates`] made in `certs` (its `ca.pem` signed them).
    pub async fn start_tls(dir: &Path, scheme: &str, key: &str, certs: &Path) -> Self {
        Self::start_with(dir, scheme, key, free_port(), Some(certs)).await
    }

    async fn start_with(
        dir: &Path,
        scheme: &str,
        key: &str,
        port: u16,
        tls: Option<&Path>,
    ) -> Self {
        let url = format!(
            "{}://127.0.0.1:{port}/hook",
            if tls.is_some() { "https" } else { "http" }
        );
        let (out, control) = (dir.join("deliveries.jsonl"), dir.join("control.json"));
        fs::write(&control, "{}").unwrap();
        let python = crate::support::python();
        let child = Command::new(&python)
            .args([
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support/receiver.py"),
                &port.to_string(),
                out.to_str().unwrap(),
                control.to_str().unwrap(),
                scheme,
                key,
                &url,
            ])
            .envs(tls.map(|certs| {
                (
                    "RECEIVER_TLS",
                    format!(
                        "{}:{}",
                        certs.join("server.pem").display(),
                        certs.join("server.key").display()
                    ),
                )
            }))
            .stdout(Stdio::null())
            .spawn()
            .expect("receiver.py (scripts/test installs standardwebhooks and cryptography)");
        let receiver = Self {
            child,
            url,
            out,
            control,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "receiver.py did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        receiver
    }

    /// Sets what the next requests are answered (see receiver.py).
    pub fn control(&self, value: serde_json::Value) {
        fs::write(&self.control, value.to_string()).unwrap();
    }

    /// Every POST so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Ids answered 200 so far.
    pub fn delivered_ids(&self) -> HashSet<String> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.status == 200)
            .filter_map(|d| d.id)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
