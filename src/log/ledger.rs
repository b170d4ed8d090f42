//! Each sink's progress through the log, persisted so a restart resumes where
//! the sink left off.
//!
//! One small JSON file per sink, `<pipeline data>/sinks/<sink>.json`:
//! `{"committed": N, "pending": [first, end] | null}`. `committed` is the first
//! offset the sink has *not* made durable in storage. `pending` is the range of
//! a flush under way: it is recorded before the upload so that a replay after a
//! crash cuts exactly the same batch and rewrites the same objects. Files are
//! replaced atomically (write, fsync, rename, fsync the directory).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A sink's persisted progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkState {
    /// First offset not yet durable in the sink's storage.
    pub committed: u64,
    /// A flush that started but has not been committed: `[first, end)`.
    pub pending: Option<(u64, u64)>,
}

/// The progress of every sink of one pipeline.
pub struct Ledger {
    dir: PathBuf,
    /// In-memory copy of the files; the mutex serialises the writers (one per sink,
    /// plus segment clean-up reading the minimum).
    states: Mutex<HashMap<String, SinkState>>,
}

impl Ledger {
    /// Loads the state of `sinks` from `dir` (absent files mean a new sink at `start`).
    pub fn open(dir: &Path, sinks: &[String], start: u64) -> io::Result<Self> {
        create_dirs_durably(dir)?;
        let mut states = HashMap::new();
        for sink in sinks {
            let path = dir.join(format!("{sink}.json"));
            let state = match fs::read(&path) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => SinkState {
                    committed: start,
                    pending: None,
                },
                Err(e) => return Err(e),
            };
            states.insert(sink.clone(), state);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            states: Mutex::new(states),
        })
    }

    /// The state of one sink.
    pub fn get(&self, sink: &str) -> SinkState {
        self.lock().get(sink).cloned().unwrap_or_default()
    }

    /// The lowest committed offset over all sinks (`None` without sinks).
    pub fn min_committed(&self) -> Option<u64> {
        self.lock().values().map(|s| s.committed).min()
    }

    /// The highest committed offset over all sinks.
    pub fn max_committed(&self) -> u64 {
        self.lock().values().map(|s| s.committed).max().unwrap_or(0)
    }

    /// Records that a flush of `range` is under way.
    pub fn begin(&self, sink: &str, range: Range<u64>) -> io::Result<()> {
        self.update(sink, |s| s.pending = Some((range.start, range.end)))
    }

    /// Records that everything below `offset` is durable in the sink's storage.
    pub fn commit(&self, sink: &str, offset: u64) -> io::Result<()> {
        self.update(sink, |s| {
            s.committed = offset;
            s.pending = None;
        })
    }

    fn update(&self, sink: &str, change: impl FnOnce(&mut SinkState)) -> io::Result<()> {
        let mut states = self.lock();
        let mut state = states.get(sink).cloned().unwrap_or_default();
        change(&mut state);
        write_atomic(
            &self.dir,
            &format!("{sink}.json"),
            &serde_json::to_vec(&state).expect("SinkState serialises"),
        )?;
        states.insert(sink.to_string(), state);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SinkState>> {
        // A panic while holding the lock cannot leave a half-updated map: every
        // update replaces one entry after its file is written.
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Replaces `dir/name` with `bytes` so that a crash leaves the old or the new
/// content, never a mix.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Makes a directory's entries (created, renamed, deleted files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and the ancestors it lacks, syncing the parent of each one
/// created, so a new partition directory survives a power cut with its file.
pub fn create_dirs_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        missing.push(d);
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            // Another writer made it meanwhile: it syncs its own.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let sinks = vec!["a".to_string(), "b".to_string()];
        let ledger = Ledger::open(dir.path(), &sinks, 5).unwrap();
        assert_eq!(
            ledger.get("a"),
            SinkState {
                committed: 5,
                pending: None
            }
        );
        ledger.begin("a", 5..9).unwrap();
        ledger.commit("b", 7).unwrap();
        let again = Ledger::open(dir.path(), &sinks, 0).unwrap();
        assert_eq!(
            again.get("a"),
            SinkState {
                committed: 5,
                pending: Some((5, 9))
            }
        );
        assert_eq!(again.get("b").committed, 7);
        assert_eq!(again.min_committed(), Some(5));
        again.commit("a", 9).unwrap();
        assert_eq!(
            Ledger::open(dir.path(), &sinks, 0).unwrap().get("a"),
            SinkState {
                committed: 9,
                pending: None
            }
        );
    }
}
