//! A JetStream message's body: one event, with its kind, id, arrival time
//! and topic before the payload (the file log's record, without the framing
//! a stream already gives).

use std::io;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::event::{Event, RecordKind};

/// Format version of a message's body.
const VERSION: u8 = 1;

/// An event as a message body: version, kind, id, arrival time, topic, payload.
pub(super) fn encode(event: &Event) -> Bytes {
    // `check` refuses [connections] on a JetStream log: no event carries one here.
    debug_assert!(event.connection.is_none());
    let topic = event.topic.as_deref().unwrap_or("");
    let mut out = BytesMut::with_capacity(28 + topic.len() + event.payload.len());
    out.put_u8(VERSION);
    out.put_u8(event.kind as u8);
    out.put_slice(event.id.as_bytes());
    out.put_i64_le(event.received_at_us);
    out.put_u16_le(topic.len() as u16);
    out.put_slice(topic.as_bytes());
    out.put_slice(&event.payload);
    out.freeze()
}

/// The event a message body holds.
pub(super) fn decode(body: Bytes) -> io::Result<Event> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a JetStream message is not a tributary event: {what}"),
        )
    };
    if body.len() < 28 || body[0] != VERSION {
        return Err(bad("unknown format"));
    }
    let kind = RecordKind::from_byte(body[1]).ok_or_else(|| bad("unknown kind"))?;
    let id = Uuid::from_slice(&body[2..18]).map_err(|_| bad("id"))?;
    let received_at_us = i64::from_le_bytes(body[18..26].try_into().expect("8 bytes"));
    let topic_len = u16::from_le_bytes([body[26], body[27]]) as usize;
    if body.len() < 28 + topic_len {
        return Err(bad("topic"));
    }
    let topic = (topic_len > 0)
        .then(|| std::str::from_utf8(&body[28..28 + topic_len]).map(Arc::from))
        .transpose()
        .map_err(|_| bad("topic"))?;
    Ok(Event {
        id,
        received_at_us,
        kind,
        payload: body.slice(28 + topic_len..),
        topic,
        connection: None,
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
        assert!(decode(Bytes::from_static(b"\x02rest")).is_err());
        assert!(decode(encode(&plain).slice(..20)).is_err());
    }
}
