//! A connection as a store's backend holds it ([`Stored`]: credentials
//! sealed, never opened here), and why a store refuses or fails a change
//! ([`StoreError`]): what the store and its backends, the file log's
//! journal and a JetStream log's bucket, share.

use std::collections::BTreeMap;
use std::io;

use serde::{Deserialize, Serialize};

use super::seal::SealError;
use super::State;

/// How often a change lost to another node's change of the same
/// connection is made again on the newer value before giving up.
pub(super) const RETRIES: usize = 8;

/// Why a connection could not be stored or found.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection has the id.
    #[error("pipeline {pipeline} has no connection {id}")]
    NotFound {
        /// The pipeline.
        pipeline: String,
        /// The id.
        id: String,
    },
    /// The connection was removed.
    #[error("connection {id} of pipeline {pipeline} was removed")]
    Removed {
        /// The pipeline.
        pipeline: String,
        /// The id.
        id: String,
    },
    /// The id is taken.
    #[error("pipeline {pipeline} already has a connection {id}; change it with PATCH, or remove it first")]
    Exists {
        /// The pipeline.
        pipeline: String,
        /// The id.
        id: String,
    },
    /// The request is not a valid connection; what is wrong and the fix.
    #[error("{0}")]
    Invalid(String),
    /// Sealing or opening credentials failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The file could not be read or written.
    #[error("connections file {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The cluster did not take or give the connection (no quorum, no
    /// server reachable).
    #[error(
        "the connections cannot be stored now: {0}; try again once the JetStream cluster answers"
    )]
    Unavailable(String),
    /// Another node kept changing the connection at the same time.
    #[error("connection {0} was changed on other nodes at the same time, {RETRIES} times over; try again")]
    Contended(String),
    /// The file is not one tributary wrote.
    #[error(
        "connections file {path} is not one tributary wrote ({message}); restore it from a backup"
    )]
    Corrupt {
        /// The file.
        path: String,
        /// What serde said.
        message: String,
    },
}

/// One connection as a backend holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Stored {
    pub(super) id: String,
    pub(super) state: State,
    #[serde(default)]
    pub(super) params: BTreeMap<String, String>,
    /// The names of its credential fields (never their values).
    #[serde(default)]
    pub(super) credential_fields: Vec<String>,
    /// The credentials, sealed; none once removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) credentials: Option<String>,
    pub(super) created_at: String,
    pub(super) updated_at: String,
    /// Why it needs new credentials (kept across restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<String>,
    /// The values that attribute a webhook to it (`[connections] attribute`).
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub(super) matches: Vec<String>,
}
