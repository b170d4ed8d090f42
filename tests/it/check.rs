//! `tributary check`: the shipped example files pass; broken files produce
//! every error at once, each with file, key, problem and fix.

use std::path::Path;

use crate::support::*;

/// The variables the shipped poll pipelines read their credentials from.
fn shipped_credentials(config: &tributary::config::Config) -> Vec<String> {
    config
        .pipelines
        .iter()
        .flat_map(|p| match &p.source {
            tributary::config::SourceSpec::Poll(poll) => poll.secret_envs(),
            tributary::config::SourceSpec::Webhook(_) => Vec::new(),
        })
        .map(String::from)
        .collect()
}

#[test]
fn every_shipped_pipeline_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = tributary::config::load(&tributary::config::Paths {
        config: Some(root.join("tributary.toml")),
        pipelines: None,
        files: Vec::new(),
    })
    .unwrap_or_else(|errors| {
        panic!(
            "{}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let shipped = std::fs::read_dir(root.join("pipelines")).unwrap().count();
    assert_eq!(config.pipelines.len(), shipped);

    // With the credentials the poll examples name, `check` passes.
    let credentials = shipped_credentials(&config);
    assert!(
        credentials.contains(&"HUBSPOT_TOKEN".to_string()),
        "{credentials:?}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["check"])
        .envs(credentials.iter().map(|v| (v, "set")))
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok:"));
}

#[test]
fn check_names_every_unset_variable_as_an_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = tributary::config::load(&tributary::config::Paths {
        config: Some(root.join("tributary.toml")),
        pipelines: None,
        files: Vec::new(),
    })
    .unwrap();
    // A fresh machine: none of the shipped credentials is set.
    let credentials = shipped_credentials(&config);
    let mut check = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"));
    check.arg("check").current_dir(root);
    for var in &credentials {
        check.env_remove(var);
    }
    let out = check.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for var in &credentials {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("source.auth: ")
                    && l.contains(&format!("env var {var} is not set"))),
            "{var} not named in:\n{stderr}"
        );
    }
    // `--explain` shows the files' effective settings without asking the environment.
    let mut explain = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"));
    explain.args(["check", "--explain"]).current_dir(root);
    for var in &credentials {
        explain.env_remove(var);
    }
    assert!(explain.output().unwrap().status.success());

    // A webhook's secret and a sink's S3 credential: errors too, by key.
    let project = Project::new();
    project.shopify_pipeline_with(
        "",
        "verify = { scheme = \"shopify\", secret_env = \"TRIBUTARY_TEST_UNSET_SHOP_SECRET\" }",
        "type = \"parquet\"\nuri = \"s3://lake/customers\"\nstorage = { region = \"us-east-1\", access_key_id_env = \"TRIBUTARY_TEST_UNSET_KEY_ID\", secret_access_key_env = \"TRIBUTARY_TEST_UNSET_SECRET\" }",
    );
    let out = project.command(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "pipelines/shopify_customers.toml: source.verify.secret_env: env var TRIBUTARY_TEST_UNSET_SHOP_SECRET is not set",
        "pipelines/shopify_customers.toml: sink[0].storage.access_key_id_env: env var TRIBUTARY_TEST_UNSET_KEY_ID is not set",
        "pipelines/shopify_customers.toml: sink[0].storage.secret_access_key_env: env var TRIBUTARY_TEST_UNSET_SECRET is not set",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    let set = [
        ("TRIBUTARY_TEST_UNSET_SHOP_SECRET", "s"),
        ("TRIBUTARY_TEST_UNSET_KEY_ID", "k"),
        ("TRIBUTARY_TEST_UNSET_SECRET", "s"),
    ];
    let out = project.command_with_env(&["check"], &set);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_shipped_provider_pipelines_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let secrets = [
        "GITHUB_WEBHOOK_SECRET",
        "SHOPIFY_WEBHOOK_SECRET",
        "STRIPE_WEBHOOK_SECRET",
        "SLACK_SIGNING_SECRET",
    ];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["check", "--pipelines", "examples/providers"])
        .envs(secrets.iter().map(|v| (v, "whsec_c2VjcmV0")))
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("ok:") && stdout.contains("4 pipeline"),
        "{stdout}"
    );
}

#[test]
fn broken_configs_report_every_error_with_file_key_and_fix() {
    let project = Project::new();
    project.write(
        "tributary.toml",
        "listen = \"localhost\"\nlake = \"s4://bucket\"\n",
    );
    project.write(
        "pipelines/a_typo.toml",
        "name = \"typo\"\nschema = \"schemas/shopify_customer.json\"\nrecrod_path = \"/c\"\n[source]\ntype = \"webhook\"\npth = \"/hooks/a\"\n[batch]\nmaxevents = 5\nmax_age = 5\n[[sink]]\ntype = \"parqet\"\n[[sink]]\ntype = \"delta\"\nmdoe = \"merge\"\n",
    );
    project.write(
        "pipelines/d_single.toml",
        "name = \"single\"\nschema = \"schemas/shopify_customer.json\"\n[source]\ntype = \"webhook\"\npath = \"/hooks/d\"\n[sink]\ntype = \"parquet\"\n",
    );
    project.write(
        "pipelines/b_many.toml",
        r#"schema = "schemas/broken.json"
record_path = "customers"
[source]
type = "webhook"
path = "hooks/b"
[batch]
max_age = "soon"
[[sink]]
type = "parquet"
uri = "s4://x/y"
partition_by = ["nope"]
"#,
    );
    project.write(
        "pipelines/c_delta.toml",
        r#"name = "c_delta"
schema = "schemas/shopify_customer.json"
[source]
type = "webhook"
path = "/hooks/c"
[[sink]]
type = "delta"
mode = "merge"
checkpoint_interval = 0
schema_evolution = "sometimes"
vacuum_retention = "10m"
[[sink]]
type = "https"
"#,
    );
    project.write(
        "schemas/broken.json",
        r#"{"type": "object", "properties": {"a": {"type": "strin"}}}"#,
    );
    let out = project.command(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "tributary.toml: listen: \"localhost\" is not an address; write an IP address and port",
        "tributary.toml: lake: unknown scheme \"s4\"; expected s3://, file:// or a path",
        // Every mistake of a file at once, in file order, each at its key
        // and line with the name meant.
        "pipelines/a_typo.toml: recrod_path (line 3): unknown field `recrod_path`",
        "did you mean `record_path`? (or remove the key)\npipelines/a_typo.toml: source.pth (line 6): unknown field `pth`",
        "did you mean `path`? (or remove the key)\npipelines/a_typo.toml: batch.maxevents (line 8): unknown field `maxevents`",
        "did you mean `max_events`? (or remove the key)\npipelines/a_typo.toml: batch.max_age (line 9): invalid type: integer `5`, expected a string",
        "pipelines/a_typo.toml: sink[0].type (line 11): unknown variant `parqet`, expected one of `parquet`, `delta`, `https`; did you mean \"parquet\"?",
        "pipelines/a_typo.toml: sink[1].mdoe (line 14): unknown field `mdoe`",
        "did you mean `mode`?",
        "pipelines/d_single.toml: sink (line 6): a single table where a list of tables is expected; write [[sink]] (two brackets) for each sink",
        "pipelines/b_many.toml: name: missing; add name = \"b_many\"",
        "pipelines/b_many.toml: record_path: \"customers\" is not a JSON pointer; start it with '/'",
        "pipelines/b_many.toml: source.path: \"hooks/b\" is not a URL path",
        "pipelines/b_many.toml: batch.max_age: \"soon\" is not a duration",
        "pipelines/c_delta.toml: sink[0].mode: mode = \"merge\" upserts on the pipeline's primary_key, which is not set; add primary_key = [\"id\"]",
        "pipelines/c_delta.toml: sink[0].checkpoint_interval: must be at least 1",
        "pipelines/c_delta.toml: sink[0].schema_evolution: unknown value \"sometimes\"; use \"add_columns\"",
        "pipelines/c_delta.toml: sink[0].vacuum_retention: is below 1h",
        "pipelines/c_delta.toml: sink[1].url: missing; add url = \"https://",
        "schemas/broken.json: properties.a.type: unknown type \"strin\"",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(stderr.contains("configuration error(s); nothing was started"));
}

#[test]
fn cross_file_and_sink_errors() {
    let project = Project::new();
    let pipeline = |name: &str, path: &str, sink: &str| {
        format!("name = \"{name}\"\nschema = \"schemas/shopify_customer.json\"\n[source]\ntype = \"webhook\"\npath = \"{path}\"\n{sink}")
    };
    project.write(
        "pipelines/one.toml",
        &pipeline("one", "/hooks/same", "[[sink]]\ntype = \"parquet\"\n"),
    );
    project.write(
        "pipelines/two.toml",
        &pipeline("two", "/hooks/same", "[[sink]]\ntype = \"parquet\"\n"),
    );
    project.write(
        "pipelines/three.toml",
        &pipeline(
            "three",
            "/hooks/three",
            "[[sink]]\ntype = \"parquet\"\npartition_by = [\"nope\", \"addresses\"]\nstorage = { secret_access_key = \"x\" }\n",
        ),
    );
    project.write("pipelines/four.toml", &pipeline("four", "/hooks/four", ""));
    project.write(
        "pipelines/five.toml",
        &pipeline(
            "five",
            "/hooks/five",
            "[[sink]]\ntype = \"parquet\"\n[[sink]]\ntype = \"delta\"\n",
        ),
    );
    project.write(
        "pipelines/six.toml",
        "name = \"six\"\nschema = \"infer\"\n[source]\ntype = \"webhook\"\npath = \"/hooks/six\"\n[[sink]]\ntype = \"delta\"\npartition_by = [\"shop\"]\n",
    );
    let out = project.command(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "pipelines/six.toml: sink[0].partition_by[0]: with schema = \"infer\", column \"shop\" may be missing from a batch",
        "pipelines/two.toml: source.path: \"/hooks/same\" is also used by pipelines/one.toml",
        "pipelines/three.toml: sink[0].partition_by[0]: column \"nope\" is not a top-level property",
        "pipelines/three.toml: sink[0].partition_by[1]: column \"addresses\" is a List",
        "pipelines/three.toml: sink[0].storage.secret_access_key: unknown storage key \"secret_access_key\"; never write credentials in TOML",
        "pipelines/four.toml: sink: no sink is configured; add a [[sink]] table",
        "pipelines/five.toml: sink[1].uri: sink \"parquet\" already writes to",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

#[test]
fn help_describes_every_command() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "check", "Stream webhooks"] {
        assert!(help.contains(word), "{help}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--config") && help.contains("--pipelines"),
        "{help}"
    );
}

#[test]
fn explain_prints_the_effective_config_with_every_default() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["check", "--explain"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // Each file's section is TOML of its own.
    let sections: Vec<&str> = text.split("\n# ").collect();
    assert!(sections.len() >= 4, "{text}");
    for section in &sections {
        let body = section.split_once('\n').map_or("", |(_, b)| b);
        toml::from_str::<toml::Table>(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    }
    for default in [
        "header_timeout = \"10s\"",
        "body_timeout = \"1m\"",
        "max_connections = 4096",
        "max_body = ",
        "max_events = ",
        "max_age = ",
        "[buffer]",
        "max_retries = 5",
        "max_pages = 10000",
        "checkpoint_interval = ",
        "dedupe = ",
        "partitions = 6",
    ] {
        assert!(text.contains(default), "{default:?} missing from:\n{text}");
    }
    assert!(!text.contains("whsec_"), "no secret values");
}

#[tokio::test]
async fn environment_variables_fill_the_files_set_defaulted_or_named_when_unset() {
    let project = Project::new();
    project.write(
        "pipelines/env.toml",
        "name = \"env\"\nschema = \"schemas/shopify_customer.json\"\nrecord_path = \"/customers\"\n\
         [source]\ntype = \"webhook\"\npath = \"${HOOK_PATH}\"\n\
         [batch]\nmax_events = ${MAX_EVENTS}\nmax_age = \"${MAX_AGE:-100ms}\"\n\
         [[sink]]\ntype = \"parquet\"\nuri = \"${LAKE:-lake}/customers\"\n",
    );
    // Unset, without a default: each named with its key and line; nothing starts.
    let out = project.command(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "pipelines/env.toml: source.path (line 6): the environment variable HOOK_PATH is not set; export HOOK_PATH, or give a default: ${HOOK_PATH:-…}",
        "pipelines/env.toml: batch.max_events (line 8): the environment variable MAX_EVENTS is not set",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("MAX_AGE") && !stderr.contains("LAKE"),
        "{stderr}"
    );

    // Set (and defaulted): the effective config holds the values...
    let env = [("HOOK_PATH", "/hooks/from-env"), ("MAX_EVENTS", "7")];
    let out = project.command_with_env(&["check", "--explain"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let explained = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "path = \"/hooks/from-env\"",
        "max_events = 7",
        "max_age = \"100ms\"",
    ] {
        assert!(
            explained.contains(expected),
            "missing {expected:?} in:\n{explained}"
        );
    }
    // ...and a running server listens where the environment said.
    let _server = project.start_with_env(&env).await;
    let answer = reqwest::Client::new()
        .post(project.url("/hooks/from-env"))
        .json(&shopify_customer(1))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let lake = project.path().join("lake/customers");
    let started = std::time::Instant::now();
    while !std::fs::read_dir(&lake).is_ok_and(|mut d| d.next().is_some()) {
        assert!(
            started.elapsed().as_secs() < 30,
            "nothing written under {}",
            lake.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[test]
fn check_takes_files_as_well_as_the_directory() {
    let project = Project::new();
    project.shopify_pipeline("", "");
    project.write(
        "pipelines/broken.toml",
        "name = \"broken\"\nschema = \"nope.json\"\n",
    );
    // The directory: the broken file fails the check.
    assert_eq!(project.command(&["check"]).status.code(), Some(2));
    // One file: only it is checked.
    let good = std::fs::read_dir(project.path().join("pipelines"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| !p.ends_with("broken.toml"))
        .unwrap();
    let good = good
        .strip_prefix(project.path())
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let out = project.command(&["check", "tributary.toml", &good]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: 1 pipeline(s) valid"));
    let out = project.command(&["check", "pipelines/broken.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pipelines/broken.toml: source: missing"),
        "{stderr}"
    );
    assert!(!stderr.contains(&good), "{stderr}");
}

/// Validates each TOML file against a JSON Schema with Python's
/// `jsonschema` (a validator we did not write); prints one line per file:
/// `ok` or the first problem.
const VALIDATE: &str = r#"
import json, sys, tomllib, jsonschema
schema = json.load(open(sys.argv[1]))
validator = jsonschema.Draft202012Validator(schema)
validator.check_schema(schema)
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    print(path, "ok" if not errors else "error: " + errors[0].message)
"#;

fn validate(schema: &str, files: &[std::path::PathBuf]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let schema_file = dir.path().join("schema.json");
    std::fs::write(&schema_file, schema).unwrap();
    let python = crate::support::python();
    let out = std::process::Command::new(&python)
        .args(["-c", VALIDATE, schema_file.to_str().unwrap()])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "jsonschema (scripts/test installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_json_schemas_take_every_shipped_file_and_refuse_a_misspelt_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |file: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["schema", file])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let pipeline = run("pipeline");
    let schema: serde_json::Value = serde_json::from_str(&pipeline).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    // Every key has its doc.
    assert!(
        schema["properties"]["record_path"]["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{schema:#}"
    );
    let mut files: Vec<_> = std::fs::read_dir(root.join("pipelines"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let broken = tempfile::tempdir().unwrap();
    for (name, text) in [
        (
            "misspelt.toml",
            "name = \"x\"\nschema = \"infer\"\n[batch]\nmax_evnets = 5\n",
        ),
        (
            "wrong_type.toml",
            "name = \"x\"\nschema = \"infer\"\n[[sink]]\ntype = \"parqet\"\n",
        ),
    ] {
        std::fs::write(broken.path().join(name), text).unwrap();
        files.push(broken.path().join(name));
    }
    let lines = validate(&pipeline, &files);
    assert_eq!(lines.len(), files.len());
    for (file, line) in files.iter().zip(&lines) {
        let shipped = file.starts_with(root);
        assert_eq!(line.ends_with(" ok"), shipped, "{line}");
    }
    let lines = validate(&run("config"), &[root.join("tributary.toml")]);
    assert!(lines[0].ends_with(" ok"), "{lines:?}");
}

/// `docs/reference.md` is what `scripts/config_reference.py` makes from
/// `tributary schema config|pipeline`: every key the files take, current.
#[test]
fn the_configuration_reference_is_generated_from_the_schema_and_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = crate::support::python();
    let out = std::process::Command::new(python)
        .arg(root.join("scripts/config_reference.py"))
        .arg(env!("CARGO_BIN_EXE_tributary"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).unwrap();
    let checked_in = std::fs::read_to_string(root.join("docs/reference.md")).unwrap();
    assert!(
        generated == checked_in,
        "docs/reference.md is not current: run scripts/config_reference.py target/debug/tributary > docs/reference.md"
    );
    // It names keys of every kind, from both files.
    for key in [
        "`listen`",
        "`log.servers`",
        "`source.verify`",
        "`sink[].partition_by`",
        "`connections.attribute.pointer`",
    ] {
        assert!(generated.contains(key), "{key} is missing");
    }
}
