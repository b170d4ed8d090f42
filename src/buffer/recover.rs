//! Opening a log after a stop or a crash: one process per log (a lock file),
//! the torn tail cut, and the newest source-state record found.

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

/// Validates the last segment, cuts what follows its valid records, and
/// returns the log's end offset and its newest source-state record.
///
/// With `whole_appends` (a poll source's log, which holds poll appends only),
/// records after the last state record of the last segment are cut as well:
/// they belong to an append whose state record never became durable, so that
/// append was never acknowledged and is fetched again.
pub(super) fn tail(
    log_dir: &Path,
    bases: &[u64],
    whole_appends: bool,
) -> io::Result<(u64, Option<(u64, Bytes)>)> {
    let Some(&last) = bases.last() else {
        return Ok((0, None));
    };
    let path = segment::path(log_dir, last);
    let scan = segment::scan(&path)?;
    let (mut keep_len, mut records) = (scan.valid_len, scan.records);
    if whole_appends {
        // A group never spans segments (the log rolls before writing one), so
        // records after the segment's last state record, or a segment with
        // records but no state record, are an append cut short.
        let (end, kept) = scan
            .last_state
            .as_ref()
            .map_or((segment::HEADER_LEN, 0), |m| (m.end, m.index + 1));
        if kept < scan.records {
            warn!(segment = %path.display(), records = scan.records - kept, "Cutting the records of a poll append whose state record was not written (a crash); that page is fetched again.");
        }
        (keep_len, records) = (end, kept);
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
    let end = last + records;
    let mut state = scan
        .last_source_state
        .filter(|_| whole_appends)
        .map(|(index, payload)| (last + index, payload));
    // A segment with no state record (new, or a webhook's) sends the search
    // back through the older ones; they are scanned only until one is found.
    for &base in bases.iter().rev().skip(1) {
        if state.is_some() || !whole_appends {
            break;
        }
        let scan = segment::scan(&segment::path(log_dir, base))?;
        state = scan
            .last_source_state
            .map(|(index, payload)| (base + index, payload));
    }
    Ok((end, state))
}
