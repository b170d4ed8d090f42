//! The event: one JSON value as a source received it, with the identity and
//! arrival time that every sink carries into its rows. The buffer stores events;
//! the encoder turns them into rows.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::warn;
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
    /// A dead letter re-fed to the sinks that refused it (see [`wrap`]).
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
    /// The connection (end-user account) it came from, in a pipeline with
    /// `[connections]`: `_connection` in its row. On a poll-state record,
    /// the connection whose cursor it holds.
    pub connection: Option<Arc<str>>,
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
            connection: None,
        }
    }

    /// This record tagged with the connection it came from.
    pub fn with_connection(mut self, connection: Option<&Arc<str>>) -> Self {
        self.connection = connection.cloned();
        self
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
            connection: None,
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

// Replayed dead letters. A dead letter belongs to one sink: the others stored
// the event fine. So a replayed event goes into the log wrapped in a state
// record addressed to the sinks that dead-lettered it, `{"replay": {"sinks":
// [...], "id": ..., "received_at_us": ..., "event": <the original JSON>}}`.
// Those sinks unwrap it into the original event (same `_event_id`, same
// `_received_at`, same bytes); every other sink skips it like any state
// record. `crate::replay` writes these records; every sink reads them here.

#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    replay: Replayed<'a>,
}

#[derive(Serialize, Deserialize)]
struct Replayed<'a> {
    #[serde(borrow)]
    sinks: Vec<Cow<'a, str>>,
    id: Uuid,
    received_at_us: i64,
    #[serde(borrow)]
    event: &'a RawValue,
    /// The routing value the event was received with, if any.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    topic: Option<Cow<'a, str>>,
    /// The connection the event came from, if any.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    connection: Option<Cow<'a, str>>,
}

/// The log record that replays `event` (raw JSON) to `sinks`; `record` is
/// the record's own id (see [`record_id`]), `id` the event's.
pub fn wrap(
    record: Uuid,
    id: Uuid,
    received_at_us: i64,
    event: &RawValue,
    (topic, connection): (Option<&str>, Option<&str>),
    sinks: &[&str],
) -> Event {
    let envelope = Envelope {
        replay: Replayed {
            sinks: sinks.iter().map(|s| Cow::Borrowed(*s)).collect(),
            id,
            received_at_us,
            event,
            topic: topic.map(Cow::Borrowed),
            connection: connection.map(Cow::Borrowed),
        },
    };
    let payload = serde_json::to_vec(&envelope).expect("an envelope serialises");
    debug_assert!(payload.starts_with(REPLAY_PREFIX));
    Event {
        id: record,
        ..Event::record(RecordKind::Replay, Bytes::from(payload))
    }
}

/// The id of the record that replays event `id` from dead-letter file
/// `file` to `sink`: the same every time that dead letter is replayed, and
/// another for every other dead letter.
pub fn record_id(file: &str, sink: &str, id: Uuid) -> Uuid {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{file}\n{sink}\n{id}").as_bytes(),
    );
    let bytes: [u8; 16] = digest.as_ref()[..16]
        .try_into()
        .expect("a SHA-256 digest has 32 bytes");
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// The original event if `event` replays one to `sink`; otherwise `event` as it is.
pub fn unwrap_for(sink: &str, event: Event) -> Event {
    if !event.is_replay() {
        return event;
    }
    match serde_json::from_slice::<Envelope<'_>>(&event.payload) {
        Ok(envelope) if envelope.replay.sinks.iter().any(|s| s == sink) => Event {
            id: envelope.replay.id,
            received_at_us: envelope.replay.received_at_us,
            kind: RecordKind::Event,
            payload: Bytes::copy_from_slice(envelope.replay.event.get().as_bytes()),
            topic: envelope
                .replay
                .topic
                .map(|t| std::sync::Arc::from(t.as_ref())),
            connection: envelope
                .replay
                .connection
                .map(|c| std::sync::Arc::from(c.as_ref())),
        },
        Ok(_) => event,
        Err(e) => {
            warn!(sink, error = %e, "Skipping an unreadable replay record.");
            event
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_record_unwraps_for_its_sink_only() {
        let raw: &RawValue =
            serde_json::from_str(r#"{"customers": {"id": 7, "note": "ü"}}"#).unwrap();
        let id = Uuid::now_v7();
        let own = record_id("dl-1.parquet", "delta", id);
        let record = wrap(own, id, 42, raw, (Some("push"), Some("acme")), &["delta"]);
        assert!(record.is_state() && record.is_replay());
        assert_eq!(record.id, own, "the record carries its own id");
        let other = unwrap_for("parquet", record.clone());
        assert!(other.is_state(), "another sink skips it");
        let mine = unwrap_for("delta", record);
        assert_eq!(mine.id, id);
        assert_eq!(mine.received_at_us, 42);
        assert_eq!(
            &mine.payload[..],
            raw.get().as_bytes(),
            "the original bytes"
        );
        assert_eq!(mine.topic.as_deref(), Some("push"), "and its routing value");
        assert_eq!(
            mine.connection.as_deref(),
            Some("acme"),
            "and its connection"
        );
        // Plain events and other state records pass through.
        let plain = Event::new(Bytes::from_static(b"{}"));
        assert_eq!(unwrap_for("delta", plain.clone()), plain);
        let state = Event::record(
            crate::event::RecordKind::DedupeIds,
            Bytes::from_static(b"{\"dedupe\":[]}"),
        );
        assert!(!state.is_replay());
    }

    #[test]
    fn each_dead_letter_replays_under_an_id_of_its_own() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let id = record_id("dl-1.parquet", "delta", a);
        assert!(!id.is_nil());
        assert_eq!(id, record_id("dl-1.parquet", "delta", a), "again: the same");
        assert_ne!(id, record_id("dl-1.parquet", "delta", b), "another event");
        assert_ne!(id, record_id("dl-1.parquet", "parquet", a), "another sink");
        assert_ne!(id, record_id("dl-2.parquet", "delta", a), "a later file");
        assert_ne!(
            id, a,
            "never the event's own id (its message is stored already)"
        );
    }
}
