//! `[connections]`: the pipeline is a template, and each end-user account
//! it streams from is a connection added at run time (see
//! [`crate::connections`]). Per-user secrets then come from each
//! connection: the auth's per-user `*_env` keys must be absent.

use serde::{Deserialize, Serialize};

use super::validate::Errors;

/// Runs in flight at once across a pipeline's connections, by default.
pub const DEFAULT_MAX_CONCURRENT_RUNS: u32 = 16;

/// `[connections]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnections {
    /// Most poll runs in flight at once across the pipeline's connections.
    pub max_concurrent_runs: Option<u32>,
}

/// `[connections]`, defaulted.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsSpec {
    /// Most poll runs in flight at once across the pipeline's connections.
    pub max_concurrent_runs: u32,
}

/// Checks `[connections]`.
pub(super) fn validate(raw: &RawConnections, e: &mut Errors<'_>) -> Option<ConnectionsSpec> {
    let max = raw
        .max_concurrent_runs
        .unwrap_or(DEFAULT_MAX_CONCURRENT_RUNS);
    if !(1..=10_000).contains(&max) {
        e.push(
            "connections.max_concurrent_runs",
            format!("{max} is out of range"),
            "use a number from 1 to 10000",
        );
        return None;
    }
    Some(ConnectionsSpec {
        max_concurrent_runs: max,
    })
}
