//! The event: one JSON value as a source received it, with the identity and
//! arrival time that every sink carries into its rows. The buffer stores events;
//! the encoder turns them into rows.

use bytes::Bytes;
use uuid::Uuid;

/// One received event. `payload` holds the original JSON bytes exactly as they
/// arrived (the bytes a signed forward would sign), never a re-serialisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Time-ordered id (UUIDv7); `_event_id` in every table row.
    pub id: Uuid,
    /// Arrival time, microseconds since the Unix epoch, UTC.
    pub received_at_us: i64,
    /// The event's JSON bytes.
    pub payload: Bytes,
}

impl Event {
    /// A new event received now.
    pub fn new(payload: Bytes) -> Self {
        Self {
            id: Uuid::now_v7(),
            received_at_us: now_us(),
            payload,
        }
    }

    /// A source-state record: the poll source's cursor and page, appended in
    /// the same durable write as the records it fetched. It takes an offset
    /// like any event but never becomes a row; the nil id marks it.
    pub fn state(payload: Bytes) -> Self {
        Self {
            id: Uuid::nil(),
            received_at_us: now_us(),
            payload,
        }
    }

    /// Whether this is a source-state record rather than a received event.
    pub fn is_state(&self) -> bool {
        self.id.is_nil()
    }

    /// Whether this is a replayed dead letter: a state record that wraps an
    /// event for the sinks that dead-lettered it (see [`crate::replay`]).
    pub fn is_replay(&self) -> bool {
        self.is_state() && self.payload.starts_with(REPLAY_PREFIX)
    }
}

/// How the payload of a replayed dead letter's record starts.
pub const REPLAY_PREFIX: &[u8] = b"{\"replay\":";

/// Microseconds since the Unix epoch, UTC.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
