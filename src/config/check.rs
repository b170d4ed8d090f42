//! What every config file's checks share, and nothing else: the error
//! type, an error collector per file, names, sizes, durations and storage
//! locations. Component files (`sink/*.rs`, `source/*.rs`, `route.rs`,
//! `log.rs`, `server.rs`, `connections.rs`) import from here and from
//! nothing else of `config/`, so the config has no import circle and a new
//! component stands on this file alone.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::Schema;
use serde::Deserialize;

pub use super::units::{format_size, parse_duration, parse_size};

/// One problem in the configuration: file, key, what is wrong and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file that holds the problem.
    pub file: PathBuf,
    /// Dotted key (`sink[0].uri`), a schema location, or `line L, column C`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// How to fix it (may be empty when the problem says it all).
    pub fix: String,
}

impl ConfigError {
    /// Builds an error.
    pub fn new(
        file: &Path,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_path_buf(),
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.problem)?;
        if !self.fix.is_empty() {
            write!(f, "; {}", self.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A parsed schema document, by the path the pipeline named.
pub type SchemaDocs = HashMap<PathBuf, Result<serde_json::Value, SchemaDocError>>;

/// Why a schema file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaDocError {
    /// It cannot be read.
    #[error("{0}")]
    Read(#[from] std::io::Error),
    /// It is not JSON.
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Collects errors for one file.
pub(crate) struct Errors<'a> {
    pub(crate) file: &'a Path,
    pub(crate) list: &'a mut Vec<ConfigError>,
}

impl Errors<'_> {
    pub(crate) fn push(
        &mut self,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.list
            .push(ConfigError::new(self.file, key, problem, fix));
    }
}

/// A name a pipeline, table or sink may have: lower-case letters, digits,
/// `_` and `-`, starting with a letter or digit, at most 64 bytes.
pub(crate) fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// A duration above zero at `key`, or `default` when unset; a bad or zero
/// value is reported (with `example` as the fix) and replaced by `default`.
pub(crate) fn positive_duration(
    text: Option<&str>,
    key: &str,
    default: Duration,
    example: &str,
    e: &mut Errors<'_>,
) -> Duration {
    match text.map(parse_duration) {
        None => default,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            e.push(key, "must be above zero", format!("set e.g. \"{example}\""));
            default
        }
        Some(Err(problem)) => {
            e.push(key, problem.to_string(), "");
            default
        }
    }
}

/// A size at `key` in bytes; a bad unit is reported.
pub(crate) fn size(raw: &RawSize, key: &str, e: &mut Errors<'_>) -> Option<u64> {
    match raw {
        RawSize::Bytes(n) => Some(*n),
        RawSize::Text(t) => match parse_size(t) {
            Ok(n) => Some(n),
            Err(problem) => {
                e.push(key, problem.to_string(), "");
                None
            }
        },
    }
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// As a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A size: a string with a unit (`"64MiB"`) or a plain number of bytes.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum RawSize {
    /// A number of bytes.
    Bytes(u64),
    /// A number and a unit.
    Text(String),
}

/// A place in storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on local disk.
    Local(PathBuf),
    /// A prefix in an S3-compatible bucket.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/` (may be empty).
        prefix: String,
    },
}

impl Location {
    /// This location with `name` appended as a sub-directory.
    pub fn join(&self, name: &str) -> Location {
        match self {
            Location::Local(p) => Location::Local(p.join(name)),
            Location::S3 { bucket, prefix } => Location::S3 {
                bucket: bucket.clone(),
                prefix: if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                },
            },
        }
    }

    /// Parses a storage location: `s3://bucket/prefix`, `file:///abs/dir` or a path
    /// (relative to `root`). Errors carry (problem, fix).
    pub fn parse(text: &str, root: &Path) -> Result<Location, (String, String)> {
        if let Some((scheme, rest)) = text.split_once("://") {
            return match scheme {
                "s3" | "s3a" => {
                    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                    if bucket.is_empty() {
                        return Err((
                            format!("\"{text}\" names no bucket"),
                            "write s3://bucket/prefix".into(),
                        ));
                    }
                    Ok(Location::S3 {
                        bucket: bucket.to_string(),
                        prefix: prefix.trim_matches('/').to_string(),
                    })
                }
                "file" => {
                    if !rest.starts_with('/') {
                        return Err((
                            format!("\"{text}\" is not an absolute file URL"),
                            "write file:///absolute/path or a plain path".into(),
                        ));
                    }
                    Ok(Location::Local(PathBuf::from(rest)))
                }
                other => Err((
                    format!("unknown scheme \"{other}\""),
                    "expected s3://, file:// or a path".into(),
                )),
            };
        }
        if text.is_empty() {
            return Err((
                "is empty".into(),
                "write a path, file:// or s3:// location".into(),
            ));
        }
        Ok(Location::Local(root.join(text)))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// The record schema in the JSON Schema file `path` (named at `key`).
pub(crate) fn schema_file(
    path: &str,
    key: &str,
    schemas: &SchemaDocs,
    root: &Path,
    e: &mut Errors<'_>,
) -> Option<Arc<Schema>> {
    let resolved = root.join(path);
    match schemas.get(&resolved) {
        None => {
            e.push(
                key,
                format!("{} was not read", resolved.display()),
                "check the path",
            );
            None
        }
        Some(Err(problem)) => {
            e.push(key, format!("cannot use {}: {problem}", resolved.display()), "fix the path (relative paths start at the directory of tributary.toml) or the file's JSON");
            None
        }
        Some(Ok(doc)) => match crate::schema::from_json_schema(doc) {
            Ok(s) => Some(Arc::new(s)),
            Err(problems) => {
                for p in problems {
                    e.list
                        .push(ConfigError::new(&resolved, p.key, p.message, ""));
                }
                None
            }
        },
    }
}

/// `check --explain`'s forms of spec fields: each spec derives `Serialize`
/// with these, so what it prints is the spec itself (no hand-written copy).
pub mod shown {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::Serializer;

    use super::{format_size, Location};

    /// `spec` as `check --explain` prints it (its `Serialize` form), with its `type`.
    pub fn explained<T: serde::Serialize>(ty: &str, spec: &T) -> toml::Value {
        let mut value = toml::Value::try_from(spec)
            .unwrap_or_else(|e| toml::Value::String(format!("cannot show: {e}")));
        if let toml::Value::Table(t) = &mut value {
            t.insert("type".into(), toml::Value::String(ty.to_string()));
        }
        value
    }

    pub fn location<S: Serializer>(l: &Location, s: S) -> Result<S::Ok, S::Error> {
        match l {
            Location::Local(p) => s.collect_str(&p.display()),
            Location::S3 { .. } => s.collect_str(l),
        }
    }

    /// The storage keys set (their values may name credentials' variables only,
    /// but print the keys alone).
    pub fn keys<S: Serializer>(m: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.keys())
    }

    pub fn size<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(*n))
    }

    pub fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
    /// Any value by its `Display` form.
    pub fn display<T: std::fmt::Display, S: Serializer>(
        value: &T,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn locations() {
        let root = Path::new("/srv/t");
        assert_eq!(
            Location::parse("lake", root).unwrap(),
            Location::Local("/srv/t/lake".into())
        );
        assert_eq!(
            Location::parse("file:///x/y", root).unwrap(),
            Location::Local("/x/y".into())
        );
        assert_eq!(
            Location::parse("s3://b/p/q/", root).unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        let (problem, fix) = Location::parse("s4://b", root).unwrap_err();
        assert_eq!(problem, "unknown scheme \"s4\"");
        assert!(fix.contains("s3://"));
    }

    #[test]
    fn names() {
        assert!(valid_name("shopify_customers"));
        assert!(valid_name("a-1"));
        assert!(!valid_name("Shop"));
        assert!(!valid_name("_x"));
        assert!(!valid_name(""));
    }
}
