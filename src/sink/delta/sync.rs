//! fsync of what delta-rs wrote to a local table: object_store's local
//! backend renames files into place but never syncs them, and a Delta commit
//! must be durable before the sink's ledger lets the log drop its events.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use percent_encoding::percent_decode_str;

use crate::log::ledger::sync_dir;

/// fsyncs the commits `from..=to` of the table in `dir`: each commit file,
/// the data files it adds (and their directories), a checkpoint of that
/// version and `_last_checkpoint` if present, then the log directory.
pub fn versions(dir: &Path, from: u64, to: u64) -> io::Result<()> {
    let log = dir.join("_delta_log");
    for version in from..=to {
        let commit = log.join(format!("{version:020}.json"));
        let file = match File::open(&commit) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in BufReader::new(&file).lines() {
            let line = line?;
            let Ok(action) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let Some(path) = action.pointer("/add/path").and_then(|p| p.as_str()) else {
                continue;
            };
            let relative = percent_decode_str(path).decode_utf8_lossy();
            if relative.contains("://") || relative.starts_with('/') {
                continue;
            }
            let data = dir.join(relative.as_ref());
            match File::open(&data) {
                Ok(f) => f.sync_all()?,
                // Removed since (compacted and vacuumed): nothing to keep.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            // Every directory from the file up to the table (nested partitions).
            let mut parent = data.parent();
            while let Some(p) = parent.filter(|p| p.starts_with(dir) && *p != dir) {
                sync_dir(p)?;
                parent = p.parent();
            }
        }
        file.sync_all()?;
        let checkpoint = log.join(format!("{version:020}.checkpoint.parquet"));
        if let Ok(f) = File::open(checkpoint) {
            f.sync_all()?;
        }
    }
    if let Ok(f) = File::open(log.join("_last_checkpoint")) {
        f.sync_all()?;
    }
    sync_dir(&log)?;
    sync_dir(dir)
}
