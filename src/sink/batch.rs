//! The batch policy: when a columnar sink flushes. A batch closes when it holds
//! `max_events` events or `max_bytes` raw bytes, or when its first event has
//! waited `max_age` — also when no further event arrives, so a quiet pipeline
//! still flushes on time.

use std::ops::Range;

use tokio::time::Instant;

use crate::event::Event;

/// The flush limits, as `[batch]` configures them.
pub use crate::config::spec::BatchPolicy;

/// Events gathered for the next flush, with the log range they cover.
#[derive(Debug)]
pub struct Batch {
    policy: BatchPolicy,
    first: u64,
    events: Vec<Event>,
    bytes: u64,
    opened: Option<Instant>,
}

impl Batch {
    /// An empty batch whose first event will be at offset `first`.
    pub fn new(policy: BatchPolicy, first: u64) -> Self {
        Self {
            policy,
            first,
            events: Vec::new(),
            bytes: 0,
            opened: None,
        }
    }

    /// Adds the event at the next offset.
    pub fn push(&mut self, event: Event) {
        if self.events.is_empty() {
            self.opened = Some(Instant::now());
        }
        self.bytes += event.payload.len() as u64;
        self.events.push(event);
    }

    /// True when a count or size limit is reached.
    pub fn is_full(&self) -> bool {
        self.events.len() >= self.policy.max_events || self.bytes >= self.policy.max_bytes
    }

    /// How many more events fit under `max_events`.
    pub fn room(&self) -> usize {
        self.policy.max_events.saturating_sub(self.events.len())
    }

    /// When the batch must flush by age; `None` while empty.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened.map(|t| t + self.policy.max_age)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The log offsets the batch covers.
    pub fn range(&self) -> Range<u64> {
        self.first..self.first + self.events.len() as u64
    }

    /// Takes the events out, leaving an empty batch that starts after them.
    pub fn take(&mut self) -> (Range<u64>, Vec<Event>) {
        let range = self.range();
        self.first = range.end;
        self.bytes = 0;
        self.opened = None;
        (range, std::mem::take(&mut self.events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn policy() -> BatchPolicy {
        BatchPolicy {
            max_events: 3,
            max_bytes: 100,
            max_age: Duration::from_secs(30),
        }
    }

    fn event(len: usize) -> Event {
        Event::new(Bytes::from(vec![b' '; len]))
    }

    #[test]
    fn closes_at_max_events() {
        let mut b = Batch::new(policy(), 10);
        for _ in 0..2 {
            b.push(event(1));
        }
        assert!(!b.is_full());
        assert_eq!(b.room(), 1);
        b.push(event(1));
        assert!(b.is_full());
        let (range, events) = b.take();
        assert_eq!((range, events.len()), (10..13, 3));
        assert_eq!(b.range(), 13..13);
        assert!(b.is_empty() && b.deadline().is_none());
    }

    #[test]
    fn closes_at_max_bytes() {
        let mut b = Batch::new(policy(), 0);
        b.push(event(60));
        assert!(!b.is_full());
        b.push(event(40));
        assert!(b.is_full());
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_runs_from_the_first_event() {
        let mut b = Batch::new(policy(), 0);
        assert_eq!(b.deadline(), None);
        let start = Instant::now();
        b.push(event(1));
        tokio::time::advance(Duration::from_secs(20)).await;
        b.push(event(1));
        assert_eq!(b.deadline(), Some(start + Duration::from_secs(30)));
        b.take();
        tokio::time::advance(Duration::from_secs(5)).await;
        b.push(event(1));
        assert_eq!(b.deadline(), Some(start + Duration::from_secs(55)));
    }
}
