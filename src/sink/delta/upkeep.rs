//! Table upkeep after a commit: a checkpoint every `checkpoint_interval`
//! commits of this sink, compaction once `compact_min_files` files are below
//! half the target size, and vacuum of the files removed longer than
//! `vacuum_retention` ago, at most hourly, once this sink has removed files
//! (by compaction, or by a merge rewriting them).
//!
//! Compaction and vacuum are ordinary Delta commits: a concurrent append by
//! another writer only adds files, which delta-rs's conflict checker lets
//! both commits keep; a real conflict fails the compaction, which is simply
//! tried again after a later commit. Upkeep never holds back data.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use deltalake::checkpoints;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::DeltaTable;
use parquet::file::properties::WriterProperties;
use tracing::{info, warn};
use url::Url;

use crate::config::spec::DeltaSinkSpec;

/// Least time between two vacuums by one sink.
const VACUUM_EVERY: Duration = Duration::from_secs(3600);

/// What upkeep remembers between commits.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Commits by this sink since its last checkpoint.
    commits: u64,
    /// When this sink last vacuumed.
    vacuumed: Option<Instant>,
    /// Whether this sink has removed files (so vacuum has work).
    removed: bool,
}

/// Runs what is due after one commit; returns the table as it now is.
pub async fn run(
    mut table: DeltaTable,
    spec: &DeltaSinkSpec,
    props: WriterProperties,
    state: &mut State,
    url: &Url,
) -> DeltaTable {
    state.commits += 1;
    if state.commits >= spec.checkpoint_interval {
        match checkpoints::create_checkpoint(&table, None).await {
            Ok(()) => {
                state.commits = 0;
                info!(table = %url, version = ?table.version(), "Wrote checkpoint.");
            }
            Err(e) => {
                warn!(table = %url, error = %e, "Checkpoint failed; trying again after the next commit.")
            }
        }
    }
    if spec.merge_on.is_some() {
        state.removed = true;
    }
    if spec.compact_min_files > 0
        && small_files(&table, spec.target_file_size / 2) >= spec.compact_min_files
    {
        table = compact(table, spec, props, state, url).await;
    }
    if !state.removed || state.vacuumed.is_some_and(|at| at.elapsed() < VACUUM_EVERY) {
        return table;
    }
    vacuum(table, spec, state, url).await
}

/// Rewrites small files into files of about the target size.
async fn compact(
    mut table: DeltaTable,
    spec: &DeltaSinkSpec,
    props: WriterProperties,
    state: &mut State,
    url: &Url,
) -> DeltaTable {
    let target = NonZeroU64::new(spec.target_file_size).unwrap_or(NonZeroU64::MIN);
    let optimized = table
        .clone()
        .optimize()
        .with_target_size(target)
        .with_writer_properties(props)
        .with_commit_properties(CommitProperties::default().with_max_retries(10))
        .await;
    match optimized {
        Ok((compacted, metrics)) => {
            info!(table = %url, files_removed = metrics.num_files_removed, files_added = metrics.num_files_added, version = ?compacted.version(), "Compacted small files.");
            state.removed = true;
            compacted
        }
        Err(e) => {
            warn!(table = %url, error = %e, "Compaction failed; trying again after the next commit.");
            let _ = table.update_incremental(None).await;
            table
        }
    }
}

/// Deletes the files removed from the table longer than the retention ago.
async fn vacuum(
    table: DeltaTable,
    spec: &DeltaSinkSpec,
    state: &mut State,
    url: &Url,
) -> DeltaTable {
    let retention =
        chrono::Duration::from_std(spec.vacuum_retention).unwrap_or(chrono::Duration::MAX);
    let vacuumed = table
        .clone()
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .await;
    match vacuumed {
        Ok((vacuumed, metrics)) => {
            state.vacuumed = Some(Instant::now());
            info!(table = %url, files_deleted = metrics.files_deleted.len(), "Vacuumed.");
            vacuumed
        }
        Err(e) => {
            warn!(table = %url, error = %e, "Vacuum failed; trying again after the next commit.");
            table
        }
    }
}

/// How many of the table's files are smaller than `below` bytes.
fn small_files(table: &DeltaTable, below: u64) -> u64 {
    let Ok(state) = table.snapshot() else {
        return 0;
    };
    state
        .log_data()
        .iter()
        .filter(|f| (f.size() as u64) < below)
        .count() as u64
}
