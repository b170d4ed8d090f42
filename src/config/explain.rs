//! `tributary check --explain`: the effective configuration, every default
//! filled in, as TOML a person can read next to their files. Secrets appear
//! only as the names of their env vars (the spec holds nothing else).

use std::time::Duration;

use toml::{Table, Value};

use super::spec::{Config, Location, PipelineSpec, SinkSpec, SourceSpec};
use super::units::format_size;

fn text(s: impl ToString) -> Value {
    Value::String(s.to_string())
}

fn duration(d: Duration) -> Value {
    text(humantime::format_duration(d))
}

fn size(bytes: u64) -> Value {
    text(format_size(bytes))
}

fn list<T: std::fmt::Display>(items: &[T]) -> Value {
    Value::Array(items.iter().map(text).collect())
}

fn table(pairs: Vec<(&str, Value)>) -> Value {
    Value::Table(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn location(l: &Location) -> Value {
    match l {
        Location::Local(p) => text(p.display()),
        Location::S3 { .. } => text(l),
    }
}

/// The effective configuration as TOML: `tributary.toml` first, then each
/// pipeline file under a comment naming it.
pub fn explain(config: &Config) -> String {
    let g = &config.global;
    let s = &g.server;
    let mut global = Table::new();
    global.insert("listen".into(), text(g.listen));
    global.insert("data_dir".into(), text(g.data_dir.display()));
    global.insert("lake".into(), location(&g.lake));
    global.insert(
        "server".into(),
        table(vec![
            ("header_timeout", duration(s.header_timeout)),
            ("body_timeout", duration(s.body_timeout)),
            ("max_connections", Value::Integer(s.max_connections as i64)),
        ]),
    );
    if let Some((cert, key)) = &s.tls {
        global.insert(
            "tls".into(),
            table(vec![
                ("cert", text(cert.display())),
                ("key", text(key.display())),
            ]),
        );
    }
    let mut admin = vec![(
        "listen",
        text(
            s.admin_listen
                .map_or("(on listen)".to_string(), |a| a.to_string()),
        ),
    )];
    if let Some(env) = &s.admin_token_env {
        admin.push(("token_env", text(env)));
    }
    global.insert("admin".into(), table(admin));
    let log = match &g.log {
        super::log::LogSpec::File => table(vec![("type", text("file"))]),
        super::log::LogSpec::JetStream(js) => {
            let mut pairs = vec![
                ("type", text("jetstream")),
                ("servers", list(&js.servers)),
                ("replicas", Value::Integer(js.replicas as i64)),
                ("lease", duration(js.lease)),
                ("node", text(&js.node)),
            ];
            for (key, env) in [
                ("user_env", &js.user_env),
                ("password_env", &js.password_env),
                ("token_env", &js.token_env),
            ] {
                if let Some(env) = env {
                    pairs.push((key, text(env)));
                }
            }
            table(pairs)
        }
    };
    global.insert("log".into(), log);
    let mut out = String::from("# tributary.toml (effective)\n");
    out.push_str(&toml::to_string(&global).unwrap_or_default());
    for p in &config.pipelines {
        out.push_str(&format!("\n# {} (effective)\n", p.file.display()));
        out.push_str(&toml::to_string(&pipeline(p)).unwrap_or_default());
    }
    out
}

fn pipeline(p: &PipelineSpec) -> Table {
    let mut t = Table::new();
    t.insert("name".into(), text(&p.name));
    let columns: Vec<&str> = p
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    t.insert(
        "schema_columns".into(),
        if p.infer_schema {
            text("infer")
        } else {
            list(&columns)
        },
    );
    t.insert("record_path".into(), text(&p.record_path));
    t.insert("primary_key".into(), list(&p.primary_key));
    t.insert("source".into(), source(&p.source));
    t.insert(
        "batch".into(),
        table(vec![
            ("max_events", Value::Integer(p.batch.max_events as i64)),
            ("max_bytes", size(p.batch.max_bytes)),
            ("max_age", duration(p.batch.max_age)),
        ]),
    );
    t.insert(
        "buffer".into(),
        table(vec![("max_bytes", size(p.buffer_max_bytes))]),
    );
    // Used on a JetStream log only.
    t.insert(
        "log".into(),
        table(vec![(
            "partitions",
            Value::Integer(i64::from(p.partitions)),
        )]),
    );
    t.insert(
        "sink".into(),
        Value::Array(p.sinks.iter().map(sink).collect()),
    );
    if let Some(connections) = &p.connections {
        if let Ok(value) = Value::try_from(connections) {
            t.insert("connections".into(), value);
        }
    }
    if let Some(route) = &p.route {
        // Derived from the spec itself: nothing to keep in step by hand.
        if let Ok(value) = Value::try_from(route) {
            t.insert("route".into(), value);
        }
    }
    t
}

fn source(source: &SourceSpec) -> Value {
    source.kind().explain()
}

fn sink(sink: &SinkSpec) -> Value {
    // Derived from the specs: a new key cannot be forgotten here.
    sink.kind().explain()
}
