//! What a poll source remembers: the cursor for the next run, when the last
//! run started, and the page a run in progress has reached.
//!
//! The state travels in the log: every page's append ends with a state record
//! ([`RecordKind::PollState`](crate::event::RecordKind::PollState)), so records and the state
//! that says they were fetched become durable in one fsync. A copy goes to
//! `<data_dir>/<pipeline>/source.json` after each append, because the log's
//! segments are deleted once the sinks have passed them; on start the newer of
//! the two (by offset) wins.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;

/// The poll source's memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PollState {
    /// Lower bound of the next run: the largest cursor value the last
    /// finished run saw (before `lookback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Value>,
    /// When the last run started, µs since the epoch (for missed runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_us: Option<i64>,
    /// A run that has not finished: it resumes at `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunState>,
}

/// A run in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// When it started, µs since the epoch.
    pub started_us: i64,
    /// The lower bound its requests send (cursor minus lookback).
    pub lower: Option<Value>,
    /// The largest cursor value its pages held so far.
    pub max_seen: Option<Value>,
    /// The page to fetch next.
    pub next: PageRef,
    /// Pages fetched so far.
    pub pages: u64,
    /// Records appended so far.
    pub records: u64,
}

/// Where the next page is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PageRef {
    /// The run's first request.
    First,
    /// A next-page token (`paginate.type = "cursor"`).
    Token(String),
    /// A next-page URL (`Link: rel="next"`).
    Url(String),
    /// A record offset.
    Offset(u64),
    /// A page number.
    Page(u64),
}

/// The side copy of the state, with the log offset of the record it copies.
#[derive(Debug, Serialize, Deserialize)]
struct SideFile {
    offset: u64,
    state: PollState,
}

/// `<data_dir>/<pipeline>/source.json`.
pub fn side_path(pipeline_dir: &Path) -> PathBuf {
    pipeline_dir.join("source.json")
}

/// The newest state: the log's last state record or the side copy, whichever
/// has the higher offset; the default (a new pipeline) if neither exists.
pub fn load(side: &Path, in_log: Option<(u64, bytes::Bytes)>) -> (PollState, Option<u64>) {
    let from_file = match fs::read(side) {
        Ok(bytes) => match serde_json::from_slice::<SideFile>(&bytes) {
            Ok(f) => Some((f.offset, f.state)),
            Err(e) => {
                warn!(file = %side.display(), error = %e, "Ignoring an unreadable poll state copy; the log's state record is used.");
                None
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            warn!(file = %side.display(), error = %e, "Cannot read the poll state copy; the log's state record is used.");
            None
        }
    };
    let from_log =
        in_log.and_then(
            |(offset, payload)| match serde_json::from_slice::<PollState>(&payload) {
                Ok(state) => Some((offset, state)),
                Err(e) => {
                    warn!(offset, error = %e, "Ignoring an unreadable poll state record.");
                    None
                }
            },
        );
    match (from_file, from_log) {
        (Some(f), Some(l)) if f.0 >= l.0 => (f.1, Some(f.0)),
        (_, Some(l)) => (l.1, Some(l.0)),
        (Some(f), None) => (f.1, Some(f.0)),
        (None, None) => (PollState::default(), None),
    }
}

/// Writes the side copy: write, then rename over the old one, so a reader
/// finds the old or the new copy, never a torn one. With `sync`, also fsyncs
/// it (at start). After each page it is not synced: the log's state record is
/// the durable one, and this copy is needed only once the record's segment is
/// deleted, long after the page cache wrote the copy out.
pub fn save(side: &Path, offset: u64, state: &PollState, sync: bool) -> io::Result<()> {
    let tmp = side.with_extension("json.tmp");
    let mut file = fs::File::create(&tmp)?;
    let body = serde_json::to_vec(&SideFile {
        offset,
        state: state.clone(),
    })
    .map_err(io::Error::other)?;
    file.write_all(&body)?;
    if sync {
        file.sync_data()?;
    }
    fs::rename(&tmp, side)?;
    if sync {
        if let Some(dir) = side.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newer_copy_wins() {
        let dir = tempfile::tempdir().unwrap();
        let side = side_path(dir.path());
        let old = PollState {
            cursor: Some("a".into()),
            ..Default::default()
        };
        let new = PollState {
            cursor: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(load(&side, None), (PollState::default(), None));
        save(&side, 5, &old, true).unwrap();
        let record = bytes::Bytes::from(serde_json::to_vec(&new).unwrap());
        assert_eq!(
            load(&side, Some((9, record.clone()))),
            (new.clone(), Some(9))
        );
        save(&side, 12, &old, false).unwrap();
        assert_eq!(load(&side, Some((9, record))), (old, Some(12)));
        fs::write(&side, b"{not json").unwrap();
        assert_eq!(load(&side, None).1, None);
    }
}
