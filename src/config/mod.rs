//! Configuration: `tributary.toml`, `pipelines/*.toml` and the JSON Schema
//! files they name. Two phases: `raw` (what serde reads) → `validate` (pure,
//! collects every error) → `spec` (typed, defaulted). This file does the I/O;
//! [`check`] also asks the environment for every variable the files name
//! ([`env`]).

pub mod check;
pub mod connections;
pub mod env;
pub mod explain;
pub mod interpolate;
pub mod log;
pub mod parse;
pub mod raw;
pub mod route;
mod server;
pub mod sink;
pub mod source;
pub mod spec;
pub mod units;
pub mod validate;

use std::path::{Path, PathBuf};

pub use check::{ConfigError, Location};
pub use spec::{Config, GlobalSpec, PipelineSpec, SinkKind, SinkSpec, SourceKind, SourceSpec};

use raw::{RawGlobal, RawPipeline};

/// File name of the global settings, looked up in the current directory.
pub const GLOBAL_FILE: &str = "tributary.toml";

/// Where to look for the files.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    /// `--config`: the global file; `None` uses `./tributary.toml` if present.
    pub config: Option<PathBuf>,
    /// `--pipelines`: the pipeline directory; `None` uses `pipelines/` beside the config.
    pub pipelines: Option<PathBuf>,
    /// `check FILE…`: these pipeline files instead of the directory's.
    pub files: Vec<PathBuf>,
}

/// Reads and validates everything; returns all errors found, in file order.
pub fn load(paths: &Paths) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let config_file = match &paths.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(GLOBAL_FILE)).filter(|p| p.is_file()),
    };
    // Relative paths in every file resolve against the directory of tributary.toml.
    let root = config_file
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let raw_global = match &config_file {
        None => RawGlobal::default(),
        Some(file) => match std::fs::read_to_string(file) {
            Ok(text) => raw::parse_toml(file, &text).unwrap_or_else(|e| {
                errors.extend(e);
                RawGlobal::default()
            }),
            Err(e) => {
                errors.push(ConfigError::new(
                    file,
                    "",
                    format!("cannot read: {e}"),
                    "pass an existing file to --config",
                ));
                RawGlobal::default()
            }
        },
    };
    let global_file = config_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(GLOBAL_FILE));
    let global = validate::global(&global_file, &raw_global, &root, &mut errors);

    let dir = paths
        .pipelines
        .clone()
        .unwrap_or_else(|| root.join("pipelines"));
    let mut files = paths.files.clone();
    match std::fs::read_dir(&dir) {
        _ if !files.is_empty() => {}
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|x| x == "toml") {
                    files.push(path);
                }
            }
        }
        Err(e) => errors.push(ConfigError::new(
            &dir,
            "",
            format!("cannot read the pipeline directory: {e}"),
            "create it, or pass --pipelines DIR",
        )),
    }
    files.sort();
    if files.is_empty() && errors.is_empty() {
        errors.push(ConfigError::new(
            &dir,
            "",
            "holds no *.toml pipeline file",
            "add one; see pipelines/ in the tributary repository for examples",
        ));
    }

    let mut raws = Vec::new();
    for file in files {
        let parsed = std::fs::read_to_string(&file)
            .map_err(|e| {
                vec![ConfigError::new(
                    &file,
                    "",
                    format!("cannot read: {e}"),
                    "check the file's permissions",
                )]
            })
            .and_then(|text| raw::parse_toml::<RawPipeline>(&file, &text));
        match parsed {
            Ok(raw) => raws.push((file, raw)),
            Err(e) => errors.extend(e),
        }
    }

    let mut schemas = check::SchemaDocs::new();
    for (_, raw) in &raws {
        let routed = raw.route.iter().flat_map(route::schema_files);
        for name in raw
            .schema
            .as_deref()
            .filter(|s| *s != "infer")
            .into_iter()
            .chain(routed)
        {
            let path = root.join(name);
            if schemas.contains_key(&path) {
                continue;
            }
            let doc = std::fs::read_to_string(&path)
                .map_err(check::SchemaDocError::from)
                .and_then(|text| Ok(serde_json::from_str(&text)?));
            schemas.insert(path, doc);
        }
    }

    let pipelines = validate::pipelines(&global, &raws, &schemas, &root, &mut errors);
    if errors.is_empty() {
        Ok(Config { global, pipelines })
    } else {
        Err(errors)
    }
}

/// What `tributary check` reports: [`load`]'s errors, or else every
/// environment variable the files name that is not set (a secret, a
/// credential), each an error. `run` reads the variables itself: it does
/// not start without a webhook's, a sink's or the server's, and starts the
/// other pipelines when a poll source's credential is missing.
pub fn check(paths: &Paths) -> Result<Config, Vec<ConfigError>> {
    let config = load(paths)?;
    let unset = env::unset(&config, |var| std::env::var_os(var).is_some());
    if unset.is_empty() {
        Ok(config)
    } else {
        Err(unset)
    }
}

/// The JSON Schema (draft 2020-12) of a pipeline file, derived from the
/// types that read it: every key with its doc, no other key.
pub fn pipeline_schema() -> serde_json::Value {
    schemars::schema_for!(raw::RawPipeline).to_value()
}

/// The JSON Schema of `tributary.toml`.
pub fn config_schema() -> serde_json::Value {
    schemars::schema_for!(raw::RawGlobal).to_value()
}
