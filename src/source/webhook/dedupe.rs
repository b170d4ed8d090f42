//! Provider retries stored once: each delivery id is remembered for a window
//! (default 24 h), also across restarts.
//!
//! The ids of a request go into the pipeline's log in the same durable append
//! as its events, as a source-state record `{"dedupe": [ids]}` at its end (the
//! log cuts a torn append whole, so it loses both or neither). A
//! crash can therefore never keep the events without their ids or the ids
//! without their events. The log's segments are deleted once the sinks are
//! done with them, so an index task ([`Index`]) reads the ids back out of the
//! log into a journal, `<data_dir>/<pipeline>/dedupe.journal`, and only then
//! lets the log delete them (it is a consumer of the log named `_dedupe`). At
//! start-up the ids are the journal's plus those in the log after the journal's
//! last mark.
//!
//! Journal lines: `<received µs> <id as a JSON string>` for each id, then
//! `@<offset>` once every id below that log offset is written and fsynced.
//! Lines after the last mark are ignored (the log still holds them). The file
//! is rewritten with only the ids inside the window at start-up and whenever
//! it grows past twice their number.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::spec::{DedupeBy, DedupeSpec};
use crate::event::{Event, RecordKind};
use crate::log::ledger::write_atomic;
use crate::log::Log;

/// The log consumer whose progress keeps not-yet-journalled ids from deletion.
pub const CONSUMER: &str = "_dedupe";
/// Longest delivery id accepted (longer ones are refused with 400).
pub const MAX_ID: usize = 256;
const JOURNAL: &str = "dedupe.journal";
/// Most ids one source remembers (about 100 bytes each, so some 500 MB at
/// the cap); past it the oldest are forgotten before their window ends,
/// counted in `tributary_dedupe_evicted_total`.
pub const MAX_IDS: usize = 5_000_000;
/// Ids forgotten early because of [`MAX_IDS`], over all sources.
static EVICTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Ids forgotten early because of [`MAX_IDS`] since start, over all sources.
pub fn evicted() -> u64 {
    EVICTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// How often the index task journals new ids.
const INDEX_EVERY: Duration = Duration::from_secs(1);

/// The source-state record carrying a request's ids.
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    dedupe: Vec<std::borrow::Cow<'a, str>>,
}

/// A delivery id longer than [`MAX_ID`]: the request is refused with 400.
#[derive(Debug, thiserror::Error)]
#[error("a delivery id is longer than {MAX_ID} bytes; check source.dedupe")]
pub struct IdTooLong;

/// The ids a request carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Ids {
    /// One id for the whole request (a header), or none.
    Request(Option<String>),
    /// One id per event (a JSON pointer), `None` where an event has none.
    Events(Vec<Option<String>>),
}

/// The remembered ids of one webhook source.
pub struct Dedupe {
    by: DedupeBy,
    window_us: i64,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    map: HashMap<Box<str>, Slot>,
    /// Stored ids by arrival, for expiry.
    order: VecDeque<(i64, Box<str>)>,
}

enum Slot {
    /// Durable in the log since this time (µs).
    Stored(i64),
    /// An append carrying it is under way; waiters are woken when it ends.
    Pending(Arc<Notify>),
}

/// What a request may store: the ids it claimed, to be settled after its append.
pub struct Claim {
    /// Per event: false if it is a repeat and must not be stored.
    pub fresh: Vec<bool>,
    /// The ids this request now holds as pending.
    ids: Vec<String>,
    notify: Arc<Notify>,
}

impl Claim {
    /// The source-state record to append after the fresh events (always one,
    /// so that every append of this log ends with a state record).
    pub fn record(&self) -> Event {
        let record = Record {
            dedupe: self.ids.iter().map(|s| s.as_str().into()).collect(),
        };
        Event::record(
            RecordKind::DedupeIds,
            Bytes::from(serde_json::to_vec(&record).expect("ids serialise")),
        )
    }
}

impl Dedupe {
    /// An empty set for `spec`.
    pub fn new(spec: &DedupeSpec) -> Self {
        Self {
            by: spec.by.clone(),
            window_us: spec.window.as_micros() as i64,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// How many ids are remembered now (stored or being appended).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads the ids remembered in `dir` and those in `log` after the
    /// journal's mark; returns the index task, which goes on from that mark.
    pub async fn load(&self, dir: &Path, log: &Log, now_us: i64) -> io::Result<Index> {
        let journal = dir.join(JOURNAL);
        let (mut entries, mark) = read_journal(&journal)?;
        entries.retain(|(at, _)| *at >= now_us - self.window_us);
        let committed = log.sink_state(CONSUMER).committed;
        let from = mark.unwrap_or(committed).max(committed);
        let mut seen = Seen::default();
        for (at, id) in &entries {
            seen.insert(id.as_str().into(), *at);
        }
        let mut reader = log.reader(from);
        let mut scanned = 0usize;
        read_ids(&mut reader, log.end(), |at, id| {
            seen.insert(id.into_boxed_str(), at);
            scanned += 1;
        })
        .await?;
        seen.expire(now_us - self.window_us);
        info!(dir = %dir.display(), ids = seen.map.len(), from_log = scanned, "Loaded the delivery ids of the dedupe window.");
        *self.lock() = seen;
        Ok(Index {
            dir: dir.to_path_buf(),
            log: log.clone(),
            from,
            window: Duration::from_micros(self.window_us as u64),
            journalled: entries.into(),
        })
    }

    /// The ids of a request with these headers and events.
    pub fn ids(&self, headers: &HeaderMap, events: &[Bytes]) -> Result<Ids, IdTooLong> {
        let ids = match &self.by {
            DedupeBy::Headers(names) => Ids::Request(
                names
                    .iter()
                    .find_map(|n| headers.get(n.as_str()))
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            ),
            DedupeBy::Pointer(pointer) => {
                Ids::Events(events.iter().map(|e| id_at(e, pointer)).collect())
            }
        };
        let too_long = match &ids {
            Ids::Request(id) => id.iter().any(|i| i.len() > MAX_ID),
            Ids::Events(ids) => ids.iter().flatten().any(|i| i.len() > MAX_ID),
        };
        if too_long {
            return Err(IdTooLong);
        }
        Ok(ids)
    }

    /// Claims the new ids among `ids` for `events` events, waiting for
    /// appends under way that carry any of them. Repeats (stored, or twice in
    /// this request) are marked not fresh.
    pub async fn claim(&self, ids: &Ids, events: usize, now_us: i64) -> Claim {
        loop {
            let notified = {
                let mut seen = self.lock();
                seen.expire(now_us - self.window_us);
                let wanted: Vec<Option<&str>> = match ids {
                    Ids::Request(id) => vec![id.as_deref()],
                    Ids::Events(ids) => ids.iter().map(|i| i.as_deref()).collect(),
                };
                let busy = wanted
                    .iter()
                    .flatten()
                    .find_map(|id| match seen.map.get(*id) {
                        Some(Slot::Pending(n)) => Some(n.clone()),
                        _ => None,
                    });
                if let Some(notify) = busy {
                    // Registered before the lock is released: no wake-up is missed.
                    let notified = notify.notified_owned();
                    Some(notified)
                } else {
                    let notify = Arc::new(Notify::new());
                    let mut claimed: Vec<String> = Vec::new();
                    let mut fresh = Vec::with_capacity(wanted.len());
                    for id in &wanted {
                        let new = match id {
                            None => true,
                            Some(id) => {
                                let known = seen.map.contains_key(*id);
                                if !known {
                                    seen.map.insert((*id).into(), Slot::Pending(notify.clone()));
                                    claimed.push(id.to_string());
                                }
                                !known
                            }
                        };
                        fresh.push(new);
                    }
                    let fresh = match ids {
                        Ids::Request(_) => vec![fresh[0]; events],
                        Ids::Events(_) => fresh,
                    };
                    return Claim {
                        fresh,
                        ids: claimed,
                        notify,
                    };
                }
            };
            if let Some(notified) = notified {
                notified.await;
            }
        }
    }

    /// Ends a claim: its ids are stored (the append is durable) or released.
    pub fn settle(&self, claim: Claim, stored: bool, at_us: i64) {
        let mut seen = self.lock();
        for id in claim.ids {
            let id = id.into_boxed_str();
            if stored {
                seen.insert(id, at_us);
            } else {
                seen.map.remove(&id);
            }
        }
        claim.notify.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Seen {
    fn insert(&mut self, id: Box<str>, at: i64) {
        self.order.push_back((at, id.clone()));
        self.map.insert(id, Slot::Stored(at));
        if self.order.len() > MAX_IDS {
            // Memory stays bounded: the oldest ids go before their window
            // ends (a retry of one of them that late would be stored again).
            let (at, id) = self.order.pop_front().expect("over the cap, so not empty");
            if matches!(self.map.get(&id), Some(Slot::Stored(t)) if *t == at) {
                self.map.remove(&id);
            }
            EVICTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Forgets stored ids that arrived before `oldest`.
    fn expire(&mut self, oldest: i64) {
        while let Some((at, _)) = self.order.front() {
            if *at >= oldest {
                break;
            }
            let (at, id) = self.order.pop_front().expect("front exists");
            if matches!(self.map.get(&id), Some(Slot::Stored(t)) if *t == at) {
                self.map.remove(&id);
            }
        }
    }
}

/// The id at `pointer` in one event: a string as is, another value as JSON text.
fn id_at(event: &[u8], pointer: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(event).ok()?;
    match value.pointer(pointer)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Reads the log up to `end`, passing each delivery id with its arrival time.
async fn read_ids(
    reader: &mut crate::log::Reader,
    end: u64,
    mut each: impl FnMut(i64, String),
) -> io::Result<()> {
    while reader.position() < end {
        let events = reader.read(4096).await?;
        if events.is_empty() {
            break;
        }
        for event in events.iter().filter(|e| e.kind == RecordKind::DedupeIds) {
            for id in ids_of(event) {
                each(event.received_at_us, id);
            }
        }
    }
    Ok(())
}

/// The ids in a source-state record of a webhook log (none in other records).
fn ids_of(event: &Event) -> Vec<String> {
    serde_json::from_slice::<Record<'_>>(&event.payload)
        .map(|r| r.dedupe.into_iter().map(|c| c.into_owned()).collect())
        .unwrap_or_default()
}

/// A journal's ids (arrival µs, id) up to its last mark, and that mark.
type Journal = (Vec<(i64, String)>, Option<u64>);

/// The journal's ids up to its last mark, and that mark.
fn read_journal(path: &Path) -> io::Result<Journal> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(e) => return Err(e),
    };
    let mut entries = Vec::new();
    let mut kept = 0;
    let mut mark = None;
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        if let Some(offset) = line.strip_prefix('@') {
            match offset.parse() {
                Ok(o) => {
                    mark = Some(o);
                    kept = entries.len();
                }
                Err(_) => break,
            }
            continue;
        }
        let parsed = line
            .split_once(' ')
            .and_then(|(at, id)| Some((at.parse().ok()?, serde_json::from_str(id).ok()?)));
        match parsed {
            Some(entry) => entries.push(entry),
            None => break,
        }
    }
    if entries.len() > kept {
        warn!(journal = %path.display(), ignored = entries.len() - kept, "Ids after the journal's last mark are read from the log instead.");
    }
    entries.truncate(kept);
    Ok((entries, mark))
}

fn journal_line(out: &mut Vec<u8>, at: i64, id: &str) {
    out.extend_from_slice(at.to_string().as_bytes());
    out.push(b' ');
    serde_json::to_writer(&mut *out, id).expect("a string serialises");
    out.push(b'\n');
}

/// Journals the ids in the log so that the log may delete their records.
pub struct Index {
    /// The pipeline's data directory.
    pub dir: PathBuf,
    /// The pipeline's log.
    pub log: Log,
    /// The first offset not yet journalled.
    pub from: u64,
    /// The dedupe window.
    pub window: Duration,
    /// The journal's ids up to its mark, inside the window (read by [`Dedupe::load`]).
    journalled: VecDeque<(i64, String)>,
}

impl Index {
    /// Runs until the log is closed and fully journalled.
    pub async fn run(self) -> io::Result<()> {
        let window_us = self.window.as_micros() as i64;
        let path = self.dir.join(JOURNAL);
        let mut live = self.journalled;
        // Start from a compact file holding exactly the marked, live ids.
        let mut lines = rewrite(&self.dir, &live, self.from)?;
        let mut file = OpenOptions::new().append(true).open(&path)?;
        let mut reader = self.log.reader(self.from);
        loop {
            let open = reader.wait().await;
            let end = self.log.end();
            let mut out = Vec::new();
            read_ids(&mut reader, end, |at, id| {
                journal_line(&mut out, at, &id);
                live.push_back((at, id));
                lines += 1;
            })
            .await?;
            let position = reader.position();
            if position > self.log.sink_state(CONSUMER).committed {
                out.extend_from_slice(format!("@{position}\n").as_bytes());
                file.write_all(&out)?;
                file.sync_data()?;
                let oldest = crate::event::now_us() - window_us;
                while live.front().is_some_and(|(at, _)| *at < oldest) {
                    live.pop_front();
                }
                if lines > 2 * live.len() + 10_000 {
                    lines = rewrite(&self.dir, &live, position)?;
                    file = OpenOptions::new().append(true).open(&path)?;
                }
                self.log.commit(CONSUMER, position)?;
            }
            if !open && reader.position() >= self.log.end() {
                return Ok(());
            }
            if open {
                // Journal at most once per interval: each round ends in an fsync.
                tokio::time::sleep(INDEX_EVERY).await;
            }
        }
    }
}

/// Replaces the journal with `live` and a mark at `offset`; returns its id lines.
fn rewrite(dir: &Path, live: &VecDeque<(i64, String)>, offset: u64) -> io::Result<usize> {
    let mut out = Vec::with_capacity(live.len() * 64 + 32);
    for (at, id) in live {
        journal_line(&mut out, *at, id);
    }
    out.extend_from_slice(format!("@{offset}\n").as_bytes());
    write_atomic(dir, JOURNAL, &out)?;
    Ok(live.len())
}

#[cfg(test)]
mod tests;
