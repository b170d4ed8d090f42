//! Pure validation: raw TOML mirrors and schema documents → typed specs, or
//! every problem found, each naming file, key, what is wrong and the fix.
//! No I/O happens here; `config::load` reads the files.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::Schema;

use super::check::{
    parse_duration, schema_file, size, valid_name, ConfigError, Errors, Location, SchemaDocs,
};
use super::raw::{RawGlobal, RawPipeline, RawSource};
use super::sink;
use super::spec::{BatchPolicy, GlobalSpec, PipelineSpec, SinkSpec, SourceSpec};

/// Default `listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `batch.max_events`.
pub const DEFAULT_MAX_EVENTS: u64 = 10_000;
/// Default `batch.max_bytes`.
pub const DEFAULT_BATCH_BYTES: u64 = 64 << 20;
/// Default `batch.max_age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30);
/// Default `buffer.max_bytes`: disk the log may hold before webhooks get 503.
pub const DEFAULT_BUFFER_BYTES: u64 = 1 << 30;
/// Smallest `buffer.max_bytes`: a few segments must fit.
pub const MIN_BUFFER_BYTES: u64 = 64 << 10;

/// Validates the global file; a wrong value is reported and replaced by its
/// default so that the pipelines can still be checked against something.
pub fn global(
    file: &Path,
    raw: &RawGlobal,
    root: &Path,
    errors: &mut Vec<ConfigError>,
) -> GlobalSpec {
    let mut e = Errors { file, list: errors };
    let default_listen: SocketAddr = DEFAULT_LISTEN.parse().expect("the default address parses");
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        e.push(
            "listen",
            format!("\"{listen_text}\" is not an address"),
            "write an IP address and port such as \"127.0.0.1:8080\" or \"0.0.0.0:8080\"",
        );
        default_listen
    });
    let data_dir = root.join(raw.data_dir.as_deref().unwrap_or("data"));
    let lake = Location::parse(raw.lake.as_deref().unwrap_or("lake"), root).unwrap_or_else(
        |(problem, fix)| {
            e.push("lake", problem, fix);
            Location::Local(root.join("lake"))
        },
    );
    let server = super::server::server(
        raw.server.as_ref(),
        raw.tls.as_ref(),
        raw.admin.as_ref(),
        root,
        &mut e,
    );
    if server.admin_listen == Some(listen) {
        e.push(
            "admin.listen",
            "is the same address as listen",
            "give the admin endpoints another port, or remove admin.listen to serve them on listen",
        );
    }
    let log = super::log::log(raw.log.as_ref(), &mut e);
    GlobalSpec {
        file: file.to_path_buf(),
        listen,
        data_dir,
        lake,
        server,
        log,
    }
}

/// Validates every pipeline, including checks across files (unique names and paths).
pub fn pipelines(
    global: &GlobalSpec,
    raws: &[(PathBuf, RawPipeline)],
    schemas: &SchemaDocs,
    root: &Path,
    errors: &mut Vec<ConfigError>,
) -> Vec<PipelineSpec> {
    let mut specs = Vec::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    let mut paths: HashMap<String, PathBuf> = HashMap::new();
    for (file, raw) in raws {
        let mut e = Errors { file, list: errors };
        let Some(spec) = pipeline(global, file, raw, schemas, root, &mut e) else {
            continue;
        };
        if let Some(other) = names.insert(spec.name.clone(), file.clone()) {
            e.push(
                "name",
                format!(
                    "pipeline \"{}\" is also defined in {}",
                    spec.name,
                    other.display()
                ),
                "give each pipeline a unique name",
            );
            continue;
        }
        if let Some(path) = spec.source.kind().http_path() {
            if let Some(other) = paths.insert(path.to_string(), file.clone()) {
                e.push(
                    "source.path",
                    format!("\"{path}\" is also used by {}", other.display()),
                    "give each webhook source its own path",
                );
                continue;
            }
        }
        specs.push(spec);
    }
    specs
}

fn pipeline(
    global: &GlobalSpec,
    file: &Path,
    raw: &RawPipeline,
    schemas: &SchemaDocs,
    root: &Path,
    e: &mut Errors<'_>,
) -> Option<PipelineSpec> {
    let start = e.list.len();
    let name = match raw.name.as_deref() {
        None => {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            e.push("name", "missing", format!("add name = \"{stem}\""));
            None
        }
        Some(n) if valid_name(n) => Some(n.to_string()),
        Some(n) => {
            e.push(
                "name",
                format!("\"{n}\" is not a valid name"),
                "use 1-64 lower-case letters, digits, '_' or '-', starting with a letter or digit",
            );
            None
        }
    };
    let schema = record_schema(raw, schemas, root, e);
    let infer_schema = raw.schema.as_deref() == Some("infer");
    // With an inferred schema no column is known in advance.
    let known = schema.as_deref().filter(|_| !infer_schema);
    let record_path = raw.record_path.clone().unwrap_or_default();
    if !(record_path.is_empty() || record_path.starts_with('/')) {
        e.push(
            "record_path",
            format!("\"{record_path}\" is not a JSON pointer"),
            "start it with '/', e.g. \"/customers\", or use \"\" for the whole event",
        );
    }
    let primary_key = raw.primary_key.clone().unwrap_or_default();
    if let Some(schema) = known {
        for (i, column) in primary_key.iter().enumerate() {
            if schema.field_with_name(column).is_err() {
                e.push(
                    format!("primary_key[{i}]"),
                    format!("column \"{column}\" is not a top-level property of the schema"),
                    "name a property listed in the schema's \"properties\"",
                );
            }
        }
    }
    let connections = raw.connections.as_ref().and_then(|c| {
        let webhook = raw.source.as_ref().is_some_and(RawSource::is_sent);
        super::connections::validate(c, webhook, e)
    });
    let source = super::source::validate(raw.source.as_ref(), raw.connections.is_some(), e);
    if let (Some(c), Some(SourceSpec::Webhook(w))) = (&connections, &source) {
        let shared = w.verify.as_ref().map(|v| !v.secret_envs.is_empty());
        if c.attribute_pointer.is_some() && shared == Some(false) {
            e.push(
                "source.verify.secret_env",
                "missing: with attribute = { pointer = … } the connection is known only after the body is parsed, so the signature is checked with the pipeline's secret",
                "name the env var that holds the app's webhook secret, e.g. secret_env = \"HUBSPOT_CLIENT_SECRET\"",
            );
        }
    }
    let route = raw.route.as_ref().and_then(|r| {
        let webhook = raw.source.as_ref().is_some_and(RawSource::is_sent);
        super::route::route(r, webhook, schemas, root, e)
    });
    let batch = batch(raw, e);
    let buffer_max_bytes = match raw.buffer.as_ref().and_then(|b| b.max_bytes.as_ref()) {
        None => DEFAULT_BUFFER_BYTES,
        Some(s) => size(s, "buffer.max_bytes", e).unwrap_or(DEFAULT_BUFFER_BYTES),
    };
    if buffer_max_bytes < MIN_BUFFER_BYTES {
        e.push(
            "buffer.max_bytes",
            "is below 64KiB",
            "set it to at least \"64KiB\" (the default is \"1GiB\")",
        );
    }
    let partitions = super::log::partitions(raw.log.as_ref(), e);
    let mut sinks = Vec::new();
    if raw.sink.is_empty() {
        e.push(
            "sink",
            "no sink is configured",
            "add a [[sink]] table with type = \"parquet\" or \"delta\"",
        );
    }
    let mut sink_names = HashSet::new();
    for (i, raw_sink) in raw.sink.iter().enumerate() {
        let key = format!("sink[{i}]");
        let table = name.as_deref().map(|n| sink::Table {
            lake: &global.lake,
            pipeline: n,
            schema: known,
            infer: infer_schema,
            connections: raw.connections.is_some(),
            primary_key: &primary_key,
            root,
        });
        let spec = sink::validate(raw_sink, table, &key, root, e);
        if let Some(spec) = spec {
            if let Some(other) = sinks
                .iter()
                .find(|s: &&SinkSpec| s.location().is_some() && s.location() == spec.location())
            {
                e.push(
                    format!("{key}.uri"),
                    format!(
                        "sink \"{}\" already writes to {}",
                        other.name(),
                        spec.location().map(ToString::to_string).unwrap_or_default()
                    ),
                    "give one of the two sinks its own uri = \"…\"",
                );
            }
            if !sink_names.insert(spec.name().to_string()) {
                e.push(
                    format!("{key}.name"),
                    format!("another sink is already named \"{}\"", spec.name()),
                    "give each sink of a pipeline a unique name = \"…\"",
                );
            }
            sinks.push(spec);
        }
    }
    if e.list.len() > start {
        return None;
    }
    Some(PipelineSpec {
        name: name?,
        file: file.to_path_buf(),
        schema: schema?,
        infer_schema,
        record_path,
        primary_key,
        source: source?,
        batch: batch?,
        buffer_max_bytes,
        partitions,
        sinks,
        route,
        connections,
    })
}

/// Resolves `schema` and converts the document it names.
fn record_schema(
    raw: &RawPipeline,
    schemas: &SchemaDocs,
    root: &Path,
    e: &mut Errors<'_>,
) -> Option<Arc<Schema>> {
    let Some(path) = raw.schema.as_deref() else {
        e.push(
            "schema",
            "missing",
            "add schema = \"schemas/<stream>.json\" pointing at a JSON Schema file",
        );
        return None;
    };
    if path == "infer" {
        return Some(Arc::new(Schema::empty()));
    }
    schema_file(path, "schema", schemas, root, e)
}

fn batch(raw: &RawPipeline, e: &mut Errors<'_>) -> Option<BatchPolicy> {
    let default = Default::default();
    let b = raw.batch.as_ref().unwrap_or(&default);
    let max_events = b.max_events.unwrap_or(DEFAULT_MAX_EVENTS);
    if max_events == 0 || max_events > 10_000_000 {
        e.push(
            "batch.max_events",
            format!("{max_events} is out of range"),
            "use a number from 1 to 10000000",
        );
    }
    let max_bytes = match &b.max_bytes {
        None => DEFAULT_BATCH_BYTES,
        Some(s) => size(s, "batch.max_bytes", e)?,
    };
    if max_bytes == 0 {
        e.push(
            "batch.max_bytes",
            "must be above zero",
            "set e.g. \"64MiB\"",
        );
    }
    let max_age = match &b.max_age {
        None => DEFAULT_MAX_AGE,
        Some(text) => match parse_duration(text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                e.push("batch.max_age", "must be above zero", "set e.g. \"30s\"");
                return None;
            }
            Err(problem) => {
                e.push("batch.max_age", problem.to_string(), "");
                return None;
            }
        },
    };
    Some(BatchPolicy {
        max_events: max_events as usize,
        max_bytes,
        max_age,
    })
}
