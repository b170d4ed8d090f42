//! Where sinks write: an object store built from a sink's location. S3 (and
//! S3-compatible servers) go through `object_store`; local directories get a
//! small writer of our own because `object_store`'s local backend does not
//! fsync, and a sink commits its offset only once the file survives a power cut.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::config::Location;
use crate::error::{Classify, ErrorKind};
use crate::log::ledger::sync_dir;

/// Why storage could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The settings do not describe a usable store.
    #[error("invalid storage settings for {location}")]
    Build {
        /// The location.
        location: String,
        /// What object_store said.
        #[source]
        source: object_store::Error,
    },
    /// The store does not answer.
    #[error("{location}: {}", one_line(&.source.to_string()))]
    Unreachable {
        /// The location.
        location: String,
        /// What object_store said.
        source: object_store::Error,
    },
    /// A `*_env` setting names a variable that is not set.
    #[error("storage setting {key} names the environment variable {var}, which is not set")]
    MissingEnv {
        /// The setting.
        key: String,
        /// The variable.
        var: String,
    },
    /// Writing an object failed.
    #[error("failed to write {path}")]
    Put {
        /// Full location of the object.
        path: String,
        /// What object_store said.
        #[source]
        source: object_store::Error,
    },
    /// Listing what is stored at a location failed.
    #[error("failed to list {location}")]
    List {
        /// The location.
        location: String,
        /// What the file system or object_store said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading or deleting an object failed.
    #[error("failed to {action} {path}")]
    Object {
        /// `read` or `delete`.
        action: &'static str,
        /// Full location of the object.
        path: String,
        /// What object_store said.
        #[source]
        source: object_store::Error,
    },
    /// Writing a local file failed.
    #[error("failed to write {}", path.display())]
    Local {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl Classify for StorageError {
    fn kind(&self) -> ErrorKind {
        match self {
            StorageError::Build { .. } | StorageError::MissingEnv { .. } => ErrorKind::Config,
            // A name the file system cannot hold fails the same way every
            // time; anything else (a full disk, a hiccup) may pass.
            StorageError::Local { source, .. }
                if source.raw_os_error() == Some(libc::ENAMETOOLONG) =>
            {
                ErrorKind::Permanent
            }
            StorageError::Put { .. }
            | StorageError::List { .. }
            | StorageError::Object { .. }
            | StorageError::Unreachable { .. }
            | StorageError::Local { .. } => ErrorKind::Transient,
        }
    }
}

/// A writable place: a local directory or a prefix in a bucket.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Files under a directory, written durably.
    Local(PathBuf),
    /// Objects under a prefix.
    Object {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// Key prefix of every object.
        prefix: ObjectPath,
        /// For messages: `s3://bucket/prefix`.
        display: String,
    },
}

impl Storage {
    /// Builds the storage for `location`; S3 settings come from the AWS
    /// environment variables, overridden by `options` (validated keys).
    pub fn new(
        location: &Location,
        options: &BTreeMap<String, String>,
    ) -> Result<Self, StorageError> {
        match location {
            Location::Local(dir) => Ok(Storage::Local(dir.clone())),
            Location::S3 { bucket, prefix } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                for (key, value) in options {
                    let env = |var: &str| {
                        std::env::var(var).map_err(|_| StorageError::MissingEnv {
                            key: key.clone(),
                            var: var.to_string(),
                        })
                    };
                    builder = match key.as_str() {
                        "endpoint" => builder.with_endpoint(value),
                        "region" => builder.with_region(value),
                        "allow_http" => builder.with_allow_http(value == "true"),
                        "virtual_hosted_style_request" => {
                            builder.with_virtual_hosted_style_request(value == "true")
                        }
                        "access_key_id_env" => builder.with_access_key_id(env(value)?),
                        "secret_access_key_env" => builder.with_secret_access_key(env(value)?),
                        "session_token_env" => builder.with_token(env(value)?),
                        other => {
                            unreachable!("validation admits only known storage keys, got {other}")
                        }
                    };
                }
                let display = location.to_string();
                let store = builder.build().map_err(|source| StorageError::Build {
                    location: display.clone(),
                    source,
                })?;
                Ok(Storage::Object {
                    store: Arc::new(store),
                    prefix: ObjectPath::from(prefix.as_str()),
                    display,
                })
            }
        }
    }

    /// Writes `bytes` at `relative` (a `/`-separated path) and returns once it is durable.
    /// Writing the same path again replaces the object whole.
    pub async fn put(&self, relative: &str, bytes: Bytes) -> Result<(), StorageError> {
        match self {
            Storage::Local(dir) => {
                let path = dir.join(relative);
                let target = path.clone();
                tokio::task::spawn_blocking(move || write_durably(&target, &bytes))
                    .await
                    .map_err(io::Error::other)
                    .and_then(|r| r)
                    .map_err(|source| StorageError::Local { path, source })
            }
            Storage::Object {
                store,
                prefix,
                display,
            } => {
                let path = object_path(prefix, relative);
                store
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map(|_| ())
                    .map_err(|source| StorageError::Put {
                        path: format!("{display}/{relative}"),
                        source,
                    })
            }
        }
    }
}

impl Storage {
    /// The bytes at `relative` (a path as [`Storage::put`] takes it), or
    /// `None` if nothing is stored there.
    pub async fn read(&self, relative: &str) -> Result<Option<Bytes>, StorageError> {
        match self {
            Storage::Local(dir) => {
                let path = dir.join(relative);
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StorageError::Local { path, source }),
                }
            }
            Storage::Object {
                store,
                prefix,
                display,
            } => {
                let path = object_path(prefix, relative);
                let failed = |source| StorageError::Object {
                    action: "read",
                    path: format!("{display}/{relative}"),
                    source,
                };
                match store.get(&path).await {
                    Ok(got) => got.bytes().await.map(Some).map_err(failed),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(failed(e)),
                }
            }
        }
    }

    /// A name as [`Storage::list`] returns it, relative to this location (as
    /// [`Storage::put`] takes it).
    pub fn relative(&self, name: &str) -> String {
        match self {
            Storage::Local(_) => name.to_string(),
            Storage::Object { prefix, .. } => {
                let prefix = prefix.as_ref();
                name.strip_prefix(prefix)
                    .map(|rest| rest.trim_start_matches('/'))
                    .unwrap_or(name)
                    .to_string()
            }
        }
    }

    /// Names (relative paths) of every object below this location.
    pub async fn list(&self) -> Result<Vec<String>, StorageError> {
        match self {
            Storage::Local(dir) => {
                let root = dir.clone();
                tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    walk(&root, &root, &mut out)?;
                    Ok(out)
                })
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(|source| StorageError::List {
                    location: dir.display().to_string(),
                    source: source.into(),
                })
            }
            Storage::Object {
                store,
                prefix,
                display,
            } => {
                use futures::TryStreamExt;
                let listed: Vec<_> =
                    store
                        .list(Some(prefix))
                        .try_collect()
                        .await
                        .map_err(|source| StorageError::List {
                            location: display.clone(),
                            source: source.into(),
                        })?;
                Ok(listed
                    .into_iter()
                    .map(|meta| meta.location.to_string())
                    .collect())
            }
        }
    }
}

impl Storage {
    /// The bytes of `name`, a name as [`Storage::list`] returns it.
    pub async fn get(&self, name: &str) -> Result<Bytes, StorageError> {
        match self {
            Storage::Local(dir) => {
                let path = dir.join(name);
                tokio::fs::read(&path)
                    .await
                    .map(Bytes::from)
                    .map_err(|source| StorageError::Local { path, source })
            }
            Storage::Object { store, display, .. } => {
                let failed = |source| StorageError::Object {
                    action: "read",
                    path: format!("{display}: {name}"),
                    source,
                };
                let path = ObjectPath::from(name);
                store
                    .get(&path)
                    .await
                    .map_err(failed)?
                    .bytes()
                    .await
                    .map_err(failed)
            }
        }
    }

    /// Deletes `name`, a name as [`Storage::list`] returns it (durably, for local files).
    pub async fn delete(&self, name: &str) -> Result<(), StorageError> {
        match self {
            Storage::Local(dir) => {
                let path = dir.join(name);
                let target = path.clone();
                tokio::task::spawn_blocking(move || {
                    fs::remove_file(&target)?;
                    sync_dir(target.parent().unwrap_or(Path::new(".")))
                })
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(|source| StorageError::Local { path, source })
            }
            Storage::Object { store, display, .. } => store
                .delete(&ObjectPath::from(name))
                .await
                .map_err(|source| StorageError::Object {
                    action: "delete",
                    path: format!("{display}: {name}"),
                    source,
                }),
        }
    }

    /// Whether the storage answers: an object store must answer a HEAD under
    /// the prefix (a missing object counts: the store answered); a local
    /// directory is made on first write, so it always counts.
    pub async fn reachable(&self) -> Result<(), StorageError> {
        match self {
            Storage::Local(_) => Ok(()),
            Storage::Object {
                store,
                prefix,
                display,
            } => {
                let probe = format!("{prefix}/_tributary_probe");
                match store
                    .head(&ObjectPath::from(probe.trim_start_matches('/')))
                    .await
                {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(source) => Err(StorageError::Unreachable {
                        location: display.clone(),
                        source,
                    }),
                }
            }
        }
    }

    /// Writes `bytes` at `name`, a name as [`Storage::list`] returns it.
    pub async fn replace(&self, name: &str, bytes: Bytes) -> Result<(), StorageError> {
        match self {
            Storage::Local(_) => self.put(name, bytes).await,
            Storage::Object { store, display, .. } => store
                .put(&ObjectPath::from(name), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|source| StorageError::Put {
                    path: format!("{display}: {name}"),
                    source,
                }),
        }
    }
}

/// The object path of `relative` under `prefix`.
fn object_path(prefix: &ObjectPath, relative: &str) -> ObjectPath {
    ObjectPath::from(format!("{prefix}/{relative}").trim_start_matches('/'))
}

/// Every file below `dir`, as paths relative to `root` (nothing if `dir` is missing).
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(relative) = path.strip_prefix(root) {
            out.push(relative.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Local(dir) => write!(f, "{}", dir.display()),
            Storage::Object { display, .. } => f.write_str(display),
        }
    }
}

/// An S3 error answer (`<Error><Code>…</Code><Message>…</Message>…</Error>`),
/// as an object store quotes it in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Answer<'a> {
    /// `NoSuchBucket`, `AccessDenied`, …
    pub code: &'a str,
    /// What the server says about it.
    pub message: Option<&'a str>,
    /// The bucket it names, if any.
    pub bucket: Option<&'a str>,
}

impl std::fmt::Display for S3Answer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code)?;
        if let Some(message) = self.message {
            write!(f, ": {message}")?;
        }
        if let Some(bucket) = self.bucket {
            write!(f, " (bucket {bucket})")?;
        }
        Ok(())
    }
}

/// The first S3 error answer in `text`, and the bytes it spans (its XML
/// declaration included).
fn s3_answer(text: &str) -> Option<(std::ops::Range<usize>, S3Answer<'_>)> {
    const OPEN: &str = "<Error>";
    const CLOSE: &str = "</Error>";
    let open = text.find(OPEN)?;
    let end = open + text[open..].find(CLOSE)? + CLOSE.len();
    let start = match text[..open].trim_end().strip_suffix("?>") {
        Some(before) => before.rfind("<?xml").unwrap_or(open),
        None => open,
    };
    let body = &text[open..end];
    let element = |name: &str| {
        let (start_tag, end_tag) = (format!("<{name}>"), format!("</{name}>"));
        let from = body.find(&start_tag)? + start_tag.len();
        let to = from + body[from..].find(&end_tag)?;
        Some(body[from..to].trim()).filter(|v| !v.is_empty())
    };
    let answer = S3Answer {
        code: element("Code")?,
        message: element("Message"),
        bucket: element("BucketName"),
    };
    Some((start..end, answer))
}

/// `text` (an error and its causes) on one line: each S3 error answer in it
/// (object stores quote the XML body of a failed request whole) becomes
/// `Code: Message (bucket B)`, and line breaks become spaces, e.g.
/// `… 404 Not Found: NoSuchBucket: The specified bucket does not exist (bucket lake)`.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((span, answer)) = s3_answer(rest) {
        out.push_str(&rest[..span.start]);
        out.push_str(&answer.to_string());
        rest = &rest[span.end..];
    }
    out.push_str(rest);
    if !out.contains(['\n', '\r']) {
        return out;
    }
    out.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `text` (an error and its causes) holds S3's answer that the
/// bucket does not exist: nothing can have been stored there.
pub fn no_such_bucket(text: &str) -> bool {
    s3_answer(text).is_some_and(|(_, answer)| answer.code == "NoSuchBucket")
}

/// Writes a file so that a crash leaves either nothing or the whole file at
/// `path`: temporary file, fsync, rename, fsync of the directory (and of its
/// parent, which may have just gained the directory).
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("object paths have a parent directory");
    crate::log::ledger::create_dirs_durably(dir)?;
    let name = path
        .file_name()
        .expect("object paths name a file")
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written {
        // A full disk must not also keep the part written.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PUT to a bucket that does not exist, as object_store reports moto's answer.
    const NO_BUCKET: &str = "failed to write s3://lake/shopify_customers/part-1.parquet: Object at location shopify_customers/part-1.parquet not found: Error performing PUT http://127.0.0.1:9000/lake/shopify_customers/part-1.parquet in 3.1ms - Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n    <Code>NoSuchBucket</Code>\n    <Message>The specified bucket does not exist</Message>\n    <BucketName>lake</BucketName>\n    <RequestID>7a62c49f</RequestID>\n</Error>";

    #[test]
    fn an_s3_error_answer_is_told_on_one_line() {
        assert_eq!(
            one_line(NO_BUCKET),
            "failed to write s3://lake/shopify_customers/part-1.parquet: Object at location shopify_customers/part-1.parquet not found: Error performing PUT http://127.0.0.1:9000/lake/shopify_customers/part-1.parquet in 3.1ms - Server returned non-2xx status code: 404 Not Found: NoSuchBucket: The specified bucket does not exist (bucket lake)"
        );
        assert!(no_such_bucket(NO_BUCKET));
        // AWS's own answer, on one line without a declaration; and two in one chain.
        let denied = "list failed: <Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>X</RequestId></Error>";
        assert_eq!(one_line(denied), "list failed: AccessDenied: Access Denied");
        assert!(!no_such_bucket(denied));
        assert_eq!(
            one_line(&format!("{denied}: {denied}")),
            "list failed: AccessDenied: Access Denied: list failed: AccessDenied: Access Denied"
        );
        // Text without an answer is kept, its line breaks made spaces.
        assert_eq!(one_line("connection refused"), "connection refused");
        assert_eq!(one_line("a:\n  b\r\nc"), "a: b c");
        assert_eq!(one_line("<Error>no code</Error>"), "<Error>no code</Error>");
    }

    #[tokio::test]
    async fn local_put_creates_directories_and_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let storage =
            Storage::new(&Location::Local(dir.path().join("t")), &BTreeMap::new()).unwrap();
        storage
            .put("a=1/part.parquet", Bytes::from_static(b"first"))
            .await
            .unwrap();
        storage
            .put("a=1/part.parquet", Bytes::from_static(b"second"))
            .await
            .unwrap();
        assert_eq!(
            fs::read(dir.path().join("t/a=1/part.parquet")).unwrap(),
            b"second"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("t/a=1")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file remains");
    }
}
