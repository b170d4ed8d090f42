//! A pipeline's connections on a JetStream log: the KV bucket
//! `tributary_connections_<pipeline>` (replicated like the log), one key per
//! connection (its id, with `.` written `=2E`), whose value is the
//! connection as the file log's journal holds it: credentials sealed, so
//! the servers' disks hold no token in plaintext either.
//!
//! Every node keeps all of a pipeline's connections in memory and watches
//! the bucket ([`watch`]), so a connection added or changed on one node is
//! seen by every node: its webhook URL answers on all of them, and the node
//! that polls it (see [`super::cluster`]) starts, stops or restarts it.
//!
//! A change is written with the revision this node last saw of its key
//! (`create` for a new connection), and answered only once JetStream
//! acknowledged it (after a quorum of replicas stored it). Two nodes
//! changing one connection at once cannot both win: the loser reads the
//! newer value and makes its change again on it, so a rotated refresh token
//! is never overwritten by a PATCH made elsewhere at the same moment, nor
//! the reverse.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::stored::{StoreError, Stored};

/// The key of connection `id` (ids are `[A-Za-z0-9._-]`; a key's `.`
/// separates tokens, which may not be empty).
fn key(id: &str) -> String {
    crate::log::jetstream::id_key(id)
}

/// The connection id of `key`.
fn id_of(key: &str) -> String {
    key.replace("=2E", ".")
}

/// The bucket, written to from the store's blocking callers.
pub(super) struct Bucket {
    kv: kv::Store,
    runtime: tokio::runtime::Handle,
}

impl Bucket {
    /// `kv`, written to from the store's (blocking) callers on `runtime`.
    pub(super) fn new(kv: kv::Store, runtime: tokio::runtime::Handle) -> Self {
        Self { kv, runtime }
    }

    /// Where the connections are kept, for messages.
    pub(super) fn place(&self) -> String {
        format!("JetStream bucket {}", self.kv.name)
    }

    /// Writes `stored` if its key is still at revision `seen` (absent when
    /// `None`); its new revision, or `None` if another node changed it first.
    /// Called off the runtime's workers (see `Store::exclusive`).
    pub(super) fn write(
        &self,
        stored: &Stored,
        seen: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        let key = key(&stored.id);
        let value = Bytes::from(serde_json::to_vec(stored).expect("a connection serialises"));
        let written = match seen {
            None => self
                .runtime
                .block_on(self.kv.create(&key, value))
                .map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                }),
            Some(revision) => self
                .runtime
                .block_on(self.kv.update(&key, value, revision))
                .map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
        };
        match written {
            Ok(revision) => Ok(Some(revision)),
            Err((true, _)) => Ok(None),
            Err((false, message)) => Err(StoreError::Unavailable(format!(
                "{}: {message}",
                self.place()
            ))),
        }
    }

    /// The newest value of connection `id` in the bucket, with its revision.
    pub(super) fn read(&self, id: &str) -> Result<Option<(u64, Stored)>, StoreError> {
        let entry = self
            .runtime
            .block_on(self.kv.entry(key(id)))
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", self.place())))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let stored = serde_json::from_slice(&entry.value).map_err(|e| StoreError::Corrupt {
            path: self.place(),
            message: e.to_string(),
        })?;
        Ok(Some((entry.revision, stored)))
    }
}

/// What the watch hands each connection to: the store, applying it at its
/// revision; `None` only asks whether the store is still there. False once
/// it is gone (the watch then ends).
pub(super) type Apply = Box<dyn Fn(Option<(u64, Stored)>) -> bool + Send + Sync>;

/// Loads every connection of `kv` into the store through `apply`, then,
/// until `stop` (the store's drop) and while the store lives, applies each
/// change any node makes; returns once the load is done (the watch runs on
/// as a task).
pub(super) async fn watch(
    kv: kv::Store,
    apply: Apply,
    stop: CancellationToken,
) -> Result<(), StoreError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        StoreError::Unavailable(format!("JetStream bucket {}: {e}", kv.name))
    };
    let mut stream = kv.stream.clone();
    let held = stream
        .info()
        .await
        .map_err(|e| unavailable(&e))?
        .state
        .messages;
    let mut entries = kv
        .watch_with_history(">")
        .await
        .map_err(|e| unavailable(&e))?;
    let mut last = 0;
    // The last value of each key, up to the newest one stored before the watch.
    if held > 0 {
        loop {
            match entries.next().await {
                Some(Ok(entry)) => {
                    last = last.max(entry.revision);
                    let current = entry.delta == 0 || entry.seen_current;
                    if let Some(stored) = decode(&entry)? {
                        apply(Some((entry.revision, stored)));
                    }
                    if current {
                        break;
                    }
                }
                Some(Err(e)) => return Err(unavailable(&e)),
                None => return Err(unavailable(&"the watch ended while loading")),
            }
        }
    }
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = follow(apply, kv, entries, last) => {}
        }
    });
    Ok(())
}

/// Applies the bucket's changes while the store lives; a broken watch is
/// made again from the last revision seen.
async fn follow(apply: Apply, kv: kv::Store, mut entries: kv::Watch, mut last: u64) {
    loop {
        match entries.next().await {
            Some(Ok(entry)) => {
                last = last.max(entry.revision);
                match decode(&entry) {
                    Ok(Some(stored)) => {
                        if !apply(Some((entry.revision, stored))) {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(bucket = %kv.name, error = %crate::error::chain(&e), "A connection in JetStream cannot be read; it is left as this node last saw it.")
                    }
                }
            }
            Some(Err(e)) => {
                warn!(bucket = %kv.name, error = %e, "Watching the connections failed; watching again.");
            }
            None => {
                if !apply(None) {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                match kv.watch_all_from_revision(last + 1).await {
                    Ok(again) => entries = again,
                    Err(e) => {
                        warn!(bucket = %kv.name, error = %e, "Cannot watch the connections; trying again in 1 s.")
                    }
                }
            }
        }
    }
}

/// The connection an entry of the bucket holds; `None` for a deletion
/// (connections are never deleted from the bucket, a removed one stays as a
/// tombstone, so only an operator did this).
fn decode(entry: &kv::Entry) -> Result<Option<Stored>, StoreError> {
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    let corrupt = |message: String| StoreError::Corrupt {
        path: format!("JetStream bucket {} key {}", entry.bucket, entry.key),
        message,
    };
    let stored: Stored =
        serde_json::from_slice(&entry.value).map_err(|e| corrupt(e.to_string()))?;
    if stored.id != id_of(&entry.key) {
        return Err(corrupt(format!(
            "it holds connection {}",
            super::printable(&stored.id)
        )));
    }
    Ok(Some(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_id_is_a_key_and_back() {
        for id in ["acme", "a.b.c", ".x.", "9_-z", ".."] {
            assert!(crate::connections::valid_id(id));
            let k = key(id);
            assert!(
                !k.contains('.') && !k.is_empty(),
                "{id} → {k}: a key's tokens may not be empty"
            );
            assert_eq!(id_of(&k), id);
        }
    }
}
