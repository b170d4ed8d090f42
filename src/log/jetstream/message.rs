//! A JetStream message's body: one event, with its kind, id, arrival time,
//! topic and connection before the payload (the file log's record, without
//! the framing a stream already gives).
//!
//! Version 2 (written): version, kind, id, arrival time, topic (u16 length
//! + bytes), connection (u16 length + bytes), payload. Version 1 (read
//! only) has no connection.

use std::io;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::event::{Event, RecordKind};

/// Format version of a message's body.
const VERSION: u8 = 2;
/// Bytes before the topic: version, kind, id, arrival time, topic length.
const HEAD: usize = 28;

/// An event as a message body.
pub(super) fn encode(event: &Event) -> Bytes {
    let topic = event.topic.as_deref().unwrap_or("");
    let connection = event.connection.as_deref().unwrap_or("");
    let mut out =
        BytesMut::with_capacity(HEAD + 2 + topic.len() + connection.len() + event.payload.len());
    out.put_u8(VERSION);
    out.put_u8(event.kind as u8);
    out.put_slice(event.id.as_bytes());
    out.put_i64_le(event.received_at_us);
    out.put_u16_le(topic.len() as u16);
    out.put_slice(topic.as_bytes());
    out.put_u16_le(connection.len() as u16);
    out.put_slice(connection.as_bytes());
    out.put_slice(&event.payload);
    out.freeze()
}

/// The event a message body holds (version 1 or 2).
pub(super) fn decode(body: Bytes) -> io::Result<Event> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a JetStream message is not a tributary event: {what}"),
        )
    };
    if body.len() < HEAD || !matches!(body[0], 1 | 2) {
        return Err(bad("unknown format"));
    }
    let kind = RecordKind::from_byte(body[1]).ok_or_else(|| bad("unknown kind"))?;
    let id = Uuid::from_slice(&body[2..18]).map_err(|_| bad("id"))?;
    let received_at_us = i64::from_le_bytes(body[18..26].try_into().expect("8 bytes"));
    // A u16-length-prefixed text at `at`: the text (none if empty) and where it ends.
    let text = |at: usize, what: &str| -> io::Result<(Option<Arc<str>>, usize)> {
        let len_at = body.get(at..at + 2).ok_or_else(|| bad(what))?;
        let len = u16::from_le_bytes([len_at[0], len_at[1]]) as usize;
        let bytes = body.get(at + 2..at + 2 + len).ok_or_else(|| bad(what))?;
        let text = (len > 0)
            .then(|| std::str::from_utf8(bytes).map(Arc::from))
            .transpose()
            .map_err(|_| bad(what))?;
        Ok((text, at + 2 + len))
    };
    let (topic, end) = text(HEAD - 2, "topic")?;
    let (connection, end) = match body[0] {
        1 => (None, end),
        _ => text(end, "connection")?,
    };
    Ok(Event {
        id,
        received_at_us,
        kind,
        payload: body.slice(end..),
        topic,
        connection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_survives_its_message_body() {
        let mut event = Event::new(Bytes::from_static(b"{\"a\":1}"));
        event.topic = Some(Arc::from("orders/create"));
        let back = decode(encode(&event)).unwrap();
        assert_eq!(back.id, event.id);
        assert_eq!(back.received_at_us, event.received_at_us);
        assert_eq!(back.kind, event.kind);
        assert_eq!(back.payload, event.payload);
        assert_eq!(back.topic.as_deref(), Some("orders/create"));
        let plain = Event::new(Bytes::from_static(b"[]"));
        assert_eq!(decode(encode(&plain)).unwrap().topic, None);
        assert!(decode(Bytes::from_static(b"\x03rest")).is_err());
        let mut from = Event::new(Bytes::from_static(b"{}"));
        from.connection = Some(Arc::from("acct-1"));
        let back = decode(encode(&from)).unwrap();
        assert_eq!(back.connection.as_deref(), Some("acct-1"));
        assert_eq!(back.payload, from.payload);
        assert!(decode(encode(&plain).slice(..20)).is_err());
    }

    #[test]
    fn a_version_1_body_still_reads() {
        let event = Event::new(Bytes::from_static(b"{\"v\":1}"));
        let mut v1 = vec![1u8, event.kind as u8];
        v1.extend_from_slice(event.id.as_bytes());
        v1.extend_from_slice(&event.received_at_us.to_le_bytes());
        v1.extend_from_slice(&[3, 0]);
        v1.extend_from_slice(b"t/x");
        v1.extend_from_slice(&event.payload);
        let back = decode(Bytes::from(v1)).unwrap();
        assert_eq!(back.id, event.id);
        assert_eq!(back.topic.as_deref(), Some("t/x"));
        assert_eq!(back.connection, None);
        assert_eq!(back.payload, event.payload);
    }
}
