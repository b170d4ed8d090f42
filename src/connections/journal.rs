//! A pipeline's connections on the file log, in `<data_dir>/<pipeline>/`:
//! `connections.json`, a snapshot, and `connections.journal`, one JSON line
//! per change since (the changed connection whole). A change is appended to
//! the journal and fsynced before it is answered: one small write, however
//! many connections there are. On open the journal is replayed over the
//! snapshot (a torn last line, never acknowledged, is dropped) and both are
//! folded into a new snapshot; the same happens when the journal outgrows
//! the snapshot, and after a removal (so that a removed connection's sealed
//! credentials do not linger in older lines). A snapshot is replaced whole
//! (temporary file, fsync, rename, directory fsync), so a crash leaves the
//! old one or the new one; replaying a journal over a snapshot that already
//! holds it changes nothing.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::stored::{StoreError, Stored};

/// The store's snapshot, under the pipeline's data directory.
pub const FILE: &str = "connections.json";
/// Its journal of changes since the snapshot.
pub const JOURNAL: &str = "connections.journal";
/// The journal is folded into the snapshot beyond this many lines (or as
/// many as there are connections, if more).
pub(super) const JOURNAL_LINES: usize = 1024;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    connections: Vec<Stored>,
}

/// The snapshot and the journal appended to.
pub(super) struct Journal {
    /// The snapshot's path.
    path: PathBuf,
    file: fs::File,
    lines: usize,
}

impl Journal {
    /// The connections kept in `dir` (created if missing), and the journal
    /// to append their changes to (folded first if it held any).
    pub(super) fn open(dir: &Path) -> Result<(BTreeMap<String, Stored>, Journal), StoreError> {
        let path = dir.join(FILE);
        let io_error = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_error)?;
        let file: Snapshot = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Snapshot::default(),
            Err(e) => return Err(io_error(e)),
        };
        let mut map: BTreeMap<String, Stored> = file
            .connections
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        let journal_path = dir.join(JOURNAL);
        let journal = match fs::read(&journal_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error(e)),
        };
        let mut lines = journal.split(|b| *b == b'\n').peekable();
        while let Some(line) = lines.next() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Stored>(line) {
                Ok(stored) => {
                    map.insert(stored.id.clone(), stored);
                }
                // The last line, cut by a crash before its fsync: never acknowledged.
                Err(_) if lines.peek().is_none() => {}
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        path: journal_path.display().to_string(),
                        message: e.to_string(),
                    })
                }
            }
        }
        let mut opened = Journal {
            file: open_append(&journal_path).map_err(io_error)?,
            path,
            lines: 0,
        };
        if !journal.is_empty() {
            opened.fold(&map)?;
        }
        Ok((map, opened))
    }

    /// Where the connections are kept, for messages.
    pub(super) fn place(&self) -> String {
        self.path.display().to_string()
    }

    /// Appends `stored` and fsyncs: the change is durable on return.
    pub(super) fn append(&mut self, stored: &Stored) -> Result<(), StoreError> {
        let path = self.journal_path();
        let io_error = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut line = serde_json::to_vec(stored).expect("a connection serialises");
        line.push(b'\n');
        self.file.write_all(&line).map_err(io_error)?;
        self.file.sync_data().map_err(io_error)?;
        self.lines += 1;
        Ok(())
    }

    /// Whether the journal outgrew a snapshot of `connections` connections.
    pub(super) fn is_long(&self, connections: usize) -> bool {
        self.lines > JOURNAL_LINES.max(connections)
    }

    fn journal_path(&self) -> PathBuf {
        self.path.with_file_name(JOURNAL)
    }

    /// Writes `connections` as the new snapshot, then empties the journal.
    pub(super) fn fold(
        &mut self,
        connections: &BTreeMap<String, Stored>,
    ) -> Result<(), StoreError> {
        self.write(connections)?;
        let io_error = |source| StoreError::Io {
            path: self.journal_path().display().to_string(),
            source,
        };
        let journal = self.journal_path();
        let tmp = journal.with_extension("journal.tmp");
        fs::File::create(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_error)?;
        fs::rename(&tmp, &journal).map_err(io_error)?;
        sync_dir(&journal).map_err(io_error)?;
        self.file = open_append(&journal).map_err(io_error)?;
        self.lines = 0;
        Ok(())
    }

    /// Replaces the snapshot with `connections`: temporary file, fsync,
    /// rename, directory fsync.
    fn write(&self, connections: &BTreeMap<String, Stored>) -> Result<(), StoreError> {
        let io_error = |source| StoreError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let file = Snapshot {
            version: 1,
            connections: connections.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("the file serialises");
        let tmp = self.path.with_extension("json.tmp");
        let mut out = fs::File::create(&tmp).map_err(io_error)?;
        out.write_all(&bytes).map_err(io_error)?;
        out.sync_all().map_err(io_error)?;
        drop(out);
        fs::rename(&tmp, &self.path).map_err(io_error)?;
        sync_dir(&self.path).map_err(io_error)?;
        Ok(())
    }
}

/// The journal at `path`, opened to append (created if missing).
fn open_append(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new().create(true).append(true).open(path)
}

/// Fsyncs the directory holding `path` (a rename in it is then durable).
fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
