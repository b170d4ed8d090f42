//! Table upkeep after a commit: a checkpoint every `checkpoint_interval`
//! commits of this sink, compaction once `compact_min_files` files of a
//! partition below half the target size are of a similar size, and vacuum of the files removed longer than
//! `vacuum_retention` ago, at most hourly, once this sink has removed files
//! (by compaction, or by a merge rewriting them).
//!
//! Compaction commits on top of concurrent appends only if every file it
//! removes is still in the table as it read it (see [`super::compact`]);
//! otherwise it starts over. It never loses an append, and a merge that read
//! the files it removed conflicts and is redone. Upkeep failures are logged
//! and retried after a later commit; upkeep never holds back data.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use deltalake::checkpoints;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::DeltaTable;
use parquet::file::properties::WriterProperties;
use tracing::{debug, info, warn};
use url::Url;

use super::compact;
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

impl State {
    /// Counts one commit of this sink.
    pub fn committed(&mut self) {
        self.commits += 1;
    }

    /// Takes in what an upkeep that ran beside the sink's commits did:
    /// `started` is this state as that upkeep began, `ended` its copy after.
    fn absorb(&mut self, started: &State, ended: State) {
        if ended.commits < started.commits {
            // It wrote a checkpoint: count only the commits made since it began.
            self.commits = self.commits.saturating_sub(started.commits);
        }
        self.removed |= ended.removed;
        self.vacuumed = ended.vacuumed.max(self.vacuumed);
    }
}

/// An upkeep running beside the sink's commits, with the state it began from.
pub struct Beside {
    started: State,
    handle: tokio::task::JoinHandle<State>,
}

impl Beside {
    /// Starts upkeep of `table` on `runtime`; on local disk (`local`) it
    /// fsyncs what it wrote (a checkpoint, a compaction) before it ends.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        table: DeltaTable,
        spec: DeltaSinkSpec,
        props: WriterProperties,
        started: State,
        url: Url,
        local: Option<PathBuf>,
    ) -> Beside {
        let mut state = started.clone();
        let handle = runtime.spawn(async move {
            let from = table.version();
            let table = run(table, &spec, props, &mut state, &url).await;
            let wrote = table.version() != from || state.commits == 0;
            if let (true, Some(dir), Some(from), Some(to)) = (wrote, local, from, table.version()) {
                let synced =
                    tokio::task::spawn_blocking(move || super::sync::versions(&dir, from, to))
                        .await;
                if !matches!(synced, Ok(Ok(()))) {
                    warn!(table = %url, "Failed to fsync the files upkeep wrote; the next commit syncs them.");
                }
            }
            state
        });
        Beside { started, handle }
    }

    /// Whether it has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for it to end and takes what it did into `state`.
    pub async fn settle(self, state: &mut State) {
        match self.handle.await {
            Ok(ended) => state.absorb(&self.started, ended),
            Err(e) => {
                warn!(error = %e, "Table upkeep ended abnormally; it runs again after the next commit.")
            }
        }
    }
}

/// Runs what is due after the sink's commits ([`State::committed`]);
/// returns the table as it now is.
pub async fn run(
    mut table: DeltaTable,
    spec: &DeltaSinkSpec,
    props: WriterProperties,
    state: &mut State,
    url: &Url,
) -> DeltaTable {
    if state.commits >= spec.checkpoint_interval {
        match checkpoints::create_checkpoint(&table, None).await {
            Ok(()) => {
                state.commits = 0;
                info!(table = %url, version = table.version(), "Wrote checkpoint.");
            }
            Err(e) => {
                warn!(table = %url, error = %e, "Checkpoint failed; trying again after the next commit.")
            }
        }
    }
    if spec.merge_on.is_some() {
        state.removed = true;
    }
    if spec.compact_min_files > 0 {
        table = compact(table, spec, props, state, url).await;
    }
    if !state.removed || state.vacuumed.is_some_and(|at| at.elapsed() < VACUUM_EVERY) {
        return table;
    }
    vacuum(table, spec, state, url).await
}

/// How often one compaction starts over after losing a race to another commit.
const COMPACT_TRIES: usize = 5;

/// Rewrites small files into files of about the target size (see
/// [`compact`](super::compact) for why it never lets delta-rs rebase it).
async fn compact(
    mut table: DeltaTable,
    spec: &DeltaSinkSpec,
    props: WriterProperties,
    state: &mut State,
    url: &Url,
) -> DeltaTable {
    for _ in 0..COMPACT_TRIES {
        let (target, min) = (spec.target_file_size, spec.compact_min_files);
        match compact::small_files(table.clone(), target, min, props.clone()).await {
            Ok(Some(done)) => {
                info!(table = %url, files_removed = done.removed, files_added = done.added, version = done.table.version(), "Compacted small files.");
                state.removed = true;
                return done.table;
            }
            Ok(None) => return table,
            Err(e) => {
                debug!(table = %url, error = %e, "Compaction lost a race or failed; starting over on the latest version.");
                if let Err(e) = table.update_incremental(None).await {
                    warn!(table = %url, error = %e, "Compaction failed; trying again after the next commit.");
                    return table;
                }
            }
        }
    }
    warn!(table = %url, tries = COMPACT_TRIES, "Compaction kept losing races with other writers; trying again after the next commit.");
    table
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
        // Also files of compactions that lost a race and were never committed.
        .with_mode(VacuumMode::Full)
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
