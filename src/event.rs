//! The event: one JSON value as a source received it, with the identity and
//! arrival time that every sink carries into its rows. The buffer stores events;
//! the encoder turns them into rows.

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

/// What a log record is. Written on disk with every record, so recovery and
/// readers never have to guess it from the configuration of the day or from
/// the payload's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// A received event: becomes a row.
    Event = 0,
    /// A poll source's cursor and page, appended with the records it fetched.
    PollState = 1,
    /// The delivery ids of a webhook append, for dedupe after a restart.
    DedupeIds = 2,
    /// A dead letter re-fed to the sinks that refused it (see [`crate::replay`]).
    Replay = 3,
}

impl RecordKind {
    /// The kind stored as `byte`, if it is one.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Event,
            1 => Self::PollState,
            2 => Self::DedupeIds,
            3 => Self::Replay,
            _ => return None,
        })
    }
}

/// One received event. `payload` holds the original JSON bytes exactly as they
/// arrived (the bytes a signed forward would sign), never a re-serialisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Time-ordered id (UUIDv7); `_event_id` in every table row. Nil for
    /// records that are not events.
    pub id: Uuid,
    /// Arrival time, microseconds since the Unix epoch, UTC.
    pub received_at_us: i64,
    /// What this record is; only [`RecordKind::Event`] becomes a row.
    pub kind: RecordKind,
    /// The event's JSON bytes.
    pub payload: Bytes,
    /// The value routing reads from a request header (`[route] header`),
    /// kept with the event because the body does not carry it; at most
    /// [`MAX_TOPIC_BYTES`].
    pub topic: Option<Arc<str>>,
}

impl Event {
    /// A new event received now.
    pub fn new(payload: Bytes) -> Self {
        Self {
            id: Uuid::now_v7(),
            received_at_us: now_us(),
            kind: RecordKind::Event,
            payload,
            topic: None,
        }
    }

    /// This event with the routing value `topic` (cut to [`MAX_TOPIC_BYTES`]
    /// at a character boundary).
    pub fn with_topic(mut self, topic: Option<&str>) -> Self {
        self.topic = topic.map(topic_of);
        self
    }

    /// A record that is not an event (a source's state, dedupe ids, a
    /// replayed dead letter): it takes an offset like any event but never
    /// becomes a row by itself.
    pub fn record(kind: RecordKind, payload: Bytes) -> Self {
        Self {
            id: Uuid::nil(),
            received_at_us: now_us(),
            kind,
            payload,
            topic: None,
        }
    }

    /// Whether this record is not a received event.
    pub fn is_state(&self) -> bool {
        self.kind != RecordKind::Event
    }

    /// Whether this is a replayed dead letter: a record that wraps an event
    /// for the sinks that dead-lettered it (see [`crate::replay`]).
    pub fn is_replay(&self) -> bool {
        self.kind == RecordKind::Replay
    }
}

/// How the payload of a replayed dead letter's record starts (what tells
/// one apart in a log written before records carried their kind).
pub const REPLAY_PREFIX: &[u8] = b"{\"replay\":";
/// How the payload of a dedupe-ids record starts (likewise, for old logs).
pub const DEDUPE_PREFIX: &[u8] = b"{\"dedupe\":";

/// Largest payload one log record may hold: 1 GiB less 64 KiB, the room a
/// replay record's envelope adds around an event. `source.max_body` and
/// `source.max_response` are capped to it, so an acknowledged event can
/// always be read back.
pub const MAX_PAYLOAD_BYTES: usize = (1 << 30) - (1 << 16);

/// Longest routing value kept with an event.
pub const MAX_TOPIC_BYTES: usize = 255;

/// A routing value as an event keeps it: cut to [`MAX_TOPIC_BYTES`] at a
/// character boundary.
pub fn topic_of(value: &str) -> Arc<str> {
    let mut end = value.len().min(MAX_TOPIC_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    Arc::from(&value[..end])
}

/// Microseconds since the Unix epoch, UTC.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
