//! Opening a log after a stop or a crash: one process per log (a lock file),
//! the torn tail cut back to the last whole append, and the newest poll-state
//! record found.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use bytes::Bytes;
use tracing::warn;

use super::segment;

/// Tries at taking the lock, 10 ms apart.
const LOCK_TRIES: u32 = 200;

/// Takes `<dir>/lock` for this process (released when the file closes, also on
/// a crash). Two processes appending to one log would corrupt it.
pub(super) fn lock(dir: &Path) -> io::Result<File> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // A log closed a moment ago in this process may still be held by its
    // writer thread as it ends; a real second process holds on for good.
    let mut taken = false;
    for _ in 0..LOCK_TRIES {
        // SAFETY: flock takes a valid open descriptor and no pointers.
        taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if taken {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if !taken {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "{} is locked by another tributary process (`tributary run` or `tributary poll`); stop it first, or give this one its own data_dir",
                path.display()
            ),
        ));
    }
    Ok(file)
}

/// What recovery found at the end of a log.
pub(super) struct Tail {
    /// The next offset to assign.
    pub end: u64,
    /// The last segment's newest poll-state record, with its offset.
    pub poll_state: Option<(u64, Bytes)>,
    /// The format of the last segment (appends go only into the current one).
    pub format: segment::Format,
    /// Records the last segment holds after recovery.
    pub last_records: u64,
}

/// Validates the last segment, cuts what follows its last whole append, and
/// returns the log's end offset and its newest poll-state record.
///
/// Whatever the configuration says today: each record says on disk whether
/// it ended its append, and an append is acknowledged only once its last
/// record is durable, so only records after the last end of an append (a
/// torn write, or one whose fsync never returned) are cut.
pub(super) fn tail(log_dir: &Path, bases: &[u64]) -> io::Result<Tail> {
    let Some(&last) = bases.last() else {
        return Ok(Tail {
            end: 0,
            poll_state: None,
            format: segment::Format::V4,
            last_records: 0,
        });
    };
    let path = segment::path(log_dir, last);
    let scan = segment::scan(&path)?;
    let (records, keep_len) = scan.whole;
    if scan.records > records {
        warn!(segment = %path.display(), records = scan.records - records, "Cutting the records of an append that was never acknowledged (a crash or a power cut tore it).");
    }
    if scan.file_len > keep_len {
        // Cut a torn record, and also preallocated zeros: bytes of an
        // unfinished write may sit beyond the zeros, and must never be
        // read as records once appends continue below them.
        if let Some(why) = scan.torn {
            warn!(segment = %path.display(), cut_bytes = scan.file_len - scan.valid_len, reason = why, "Truncating a torn log tail left by a crash.");
        }
        let file = OpenOptions::new().write(true).open(&path)?;
        file.set_len(keep_len)?;
        file.sync_all()?;
    }
    let poll_state = scan
        .last_poll_state
        .filter(|(index, _)| *index < records)
        .map(|(index, payload)| (last + index, payload));
    Ok(Tail {
        end: last + records,
        poll_state,
        format: scan.format,
        last_records: records,
    })
}

/// The newest poll-state record in the segments `bases` (oldest first),
/// scanning from the newest back until one is found.
pub(super) fn poll_state(log_dir: &Path, bases: &[u64]) -> io::Result<Option<(u64, Bytes)>> {
    for &base in bases.iter().rev() {
        let scan = segment::scan(&segment::path(log_dir, base))?;
        if let Some((index, payload)) = scan.last_poll_state {
            return Ok(Some((base + index, payload)));
        }
    }
    Ok(None)
}
