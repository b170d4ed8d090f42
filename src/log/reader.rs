//! A reader of the file log: in order from an offset, across segments, on
//! the blocking pool.

use std::io;
use std::sync::atomic::Ordering;

use futures::future::BoxFuture;

use super::segment::SegmentReader;
use super::{FileLog, LogRead, Shared};
use crate::event::Event;

/// Reads the file log in order from an offset.
pub(super) struct FileReader {
    pub(super) log: FileLog,
    pub(super) next: u64,
    pub(super) segment: Option<SegmentReader>,
    /// [`Shared::cut_writes`] when the segment reader last read ahead.
    pub(super) cut_writes: u64,
}

impl FileReader {
    /// Waits until at least one durable event is past the reader; returns
    /// false once the log is closed and fully read. Cancel-safe.
    async fn wait(&mut self) -> bool {
        let next = self.next;
        match self
            .log
            .progress
            .wait_for(|p| p.end > next || p.closed)
            .await
        {
            Ok(p) => p.end > next,
            Err(_) => false,
        }
    }

    /// Offset of the next event this reader returns.
    fn position(&self) -> u64 {
        self.next
    }

    /// Reads up to `max` durable events (none if there are none yet).
    async fn read(&mut self, max: usize) -> io::Result<Vec<Event>> {
        let end = self.log.end();
        let want = (end.saturating_sub(self.next)).min(max as u64) as usize;
        if want == 0 {
            return Ok(Vec::new());
        }
        let shared = self.log.shared.clone();
        let mut segment = self.segment.take();
        let mut next = self.next;
        // Read after `end` above: a write cut before that end was published
        // has already counted here.
        let cut_writes = shared.cut_writes.load(Ordering::Acquire);
        let forget = cut_writes != self.cut_writes;
        self.cut_writes = cut_writes;
        let (segment, events) = tokio::task::spawn_blocking(move || {
            if forget {
                if let Some(s) = segment.as_mut() {
                    s.forget_read_ahead()?;
                }
            }
            let mut events = Vec::with_capacity(want);
            while events.len() < want {
                let current = match segment.take() {
                    Some(s) if !starts_later_segment(&shared, &s, next) => s,
                    _ => SegmentReader::open(&shared.log_dir, locate(&shared, next)?, next)?,
                };
                let s = segment.insert(current);
                events.push(s.read()?);
                next += 1;
            }
            Ok::<_, io::Error>((segment, events))
        })
        .await
        .map_err(io::Error::other)??;
        self.segment = segment;
        self.next += events.len() as u64;
        Ok(events)
    }
}

/// Whether offset `next` lies in a segment after the one `reader` reads.
fn starts_later_segment(shared: &Shared, reader: &SegmentReader, next: u64) -> bool {
    let segments = shared.segments.lock().expect("segment list lock");
    segments.iter().any(|&b| b > reader.base && b <= next)
}

/// Base of the segment holding `offset`.
fn locate(shared: &Shared, offset: u64) -> io::Result<u64> {
    let segments = shared.segments.lock().expect("segment list lock");
    segments
        .iter()
        .rev()
        .find(|&&b| b <= offset)
        .copied()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("offset {offset} was already deleted from the log"),
            )
        })
}

impl LogRead for FileReader {
    fn wait(&mut self) -> BoxFuture<'_, bool> {
        Box::pin(FileReader::wait(self))
    }

    fn position(&self) -> u64 {
        FileReader::position(self)
    }

    fn read(&mut self, max: usize) -> BoxFuture<'_, io::Result<Vec<Event>>> {
        Box::pin(FileReader::read(self, max))
    }
}
