use super::*;
use std::io::Write;

fn event(n: u8) -> Event {
    Event {
        id: Uuid::from_bytes([n; 16]),
        received_at_us: 1_700_000_000_000_000 + n as i64,
        kind: RecordKind::Event,
        payload: Bytes::from(format!("{{\"n\":{n}}}")),
        topic: None,
        connection: None,
    }
}

fn write_segment(path: &Path, events: &[Event]) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    for e in events {
        encode(e, true, &mut bytes);
    }
    File::create(path).unwrap().write_all(&bytes).unwrap();
    bytes
}

#[test]
fn records_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<Event> = (0..5).map(event).collect();
    write_segment(&path(dir.path(), 10), &events);
    let mut r = SegmentReader::open(dir.path(), 10, 12).unwrap();
    assert_eq!(r.read().unwrap(), events[2]);
    assert_eq!(r.read().unwrap(), events[3]);
    assert_eq!(r.next, 14);
    let s = scan(&path(dir.path(), 10)).unwrap();
    assert_eq!((s.records, s.torn), (5, None));
}

#[test]
fn scan_stops_at_every_kind_of_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(dir.path(), 0);
    let events: Vec<Event> = (0..3).map(event).collect();
    let full = write_segment(&p, &events);
    let two = {
        let mut b = MAGIC.to_vec();
        encode(&events[0], true, &mut b);
        encode(&events[1], true, &mut b);
        b.len() as u64
    };
    // Every truncation point inside the last record leaves exactly two valid records.
    for cut in two + 1..full.len() as u64 {
        File::create(&p)
            .unwrap()
            .write_all(&full[..cut as usize])
            .unwrap();
        let s = scan(&p).unwrap();
        assert_eq!((s.records, s.valid_len), (2, two), "cut at {cut}");
        assert!(s.torn.is_some());
    }
    // A flipped bit in the last body is caught by the CRC.
    let mut flipped = full.clone();
    *flipped.last_mut().unwrap() ^= 1;
    File::create(&p).unwrap().write_all(&flipped).unwrap();
    assert_eq!(scan(&p).unwrap().torn, Some("record checksum mismatch"));
    // Garbage length.
    let mut garbage = full[..two as usize].to_vec();
    garbage.extend_from_slice(&[0xff; 12]);
    File::create(&p).unwrap().write_all(&garbage).unwrap();
    assert_eq!(scan(&p).unwrap().torn, Some("record length out of range"));
}

#[test]
fn a_zero_filled_tail_is_preallocated_space_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(dir.path(), 0);
    let mut bytes = write_segment(&p, &[event(1), event(2)]);
    let valid = bytes.len() as u64;
    bytes.resize(4096, 0);
    File::create(&p).unwrap().write_all(&bytes).unwrap();
    let s = scan(&p).unwrap();
    assert_eq!(
        (s.records, s.valid_len, s.torn, s.file_len),
        (2, valid, None, 4096)
    );
}

#[test]
fn a_reader_never_serves_stale_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(dir.path(), 0);
    let mut bytes = write_segment(&p, &[event(1)]);
    let valid = bytes.len();
    bytes.resize(1 << 16, 0);
    File::create(&p).unwrap().write_all(&bytes).unwrap();
    let mut r = SegmentReader::open(dir.path(), 0, 0).unwrap();
    assert_eq!(r.read().unwrap(), event(1));
    // The reader buffered zeros past the first record; now an append lands there.
    let mut more = Vec::new();
    encode(&event(2), true, &mut more);
    let file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &more, valid as u64).unwrap();
    assert_eq!(r.read().unwrap(), event(2));
}

#[test]
fn every_record_keeps_its_kind_and_the_end_of_its_append() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(dir.path(), 0);
    let kinds = [
        RecordKind::Event,
        RecordKind::PollState,
        RecordKind::DedupeIds,
        RecordKind::Replay,
    ];
    let mut bytes = MAGIC.to_vec();
    let records: Vec<Event> = kinds
        .iter()
        .map(|&kind| Event {
            kind,
            topic: (kind == RecordKind::Event).then(|| "push".into()),
            connection: matches!(kind, RecordKind::Event | RecordKind::Replay)
                .then(|| "acme-01".into()),
            ..event(7)
        })
        .collect();
    for (i, e) in records.iter().enumerate() {
        encode(e, i == 1, &mut bytes);
    }
    File::create(&p).unwrap().write_all(&bytes).unwrap();
    let s = scan(&p).unwrap();
    assert_eq!((s.records, s.format, s.whole.0), (4, Format::V4, 2));
    assert_eq!(s.last_poll_state, Some((1, records[1].payload.clone())));
    let mut r = SegmentReader::open(dir.path(), 0, 0).unwrap();
    for e in &records {
        assert_eq!(&r.read().unwrap(), e);
    }
    // A kind this version does not know is damage, not an event.
    let mut unknown = MAGIC.to_vec();
    encode(&event(1), true, &mut unknown);
    let body = RECORD_HEADER_LEN + HEADER_LEN as usize;
    unknown[body] = 0x7f;
    let crc = crc32c::crc32c(&unknown[body..]);
    unknown[body - 4..body].copy_from_slice(&crc.to_le_bytes());
    File::create(&p).unwrap().write_all(&unknown).unwrap();
    assert_eq!(scan(&p).unwrap().torn, Some("unknown record kind"));
}

#[test]
fn a_format_3_segment_is_read_without_connections() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(dir.path(), 0);
    let mut bytes = MAGIC_V3.to_vec();
    // flags, id, received_at, topic "push", payload: format 3's body.
    let mut body = vec![0x80u8];
    body.extend_from_slice(&[9; 16]);
    body.extend_from_slice(&5i64.to_le_bytes());
    body.push(4);
    body.extend_from_slice(b"push");
    body.extend_from_slice(b"{\"a\":1}");
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    File::create(&p).unwrap().write_all(&bytes).unwrap();
    let s = scan(&p).unwrap();
    assert_eq!((s.records, s.format, s.torn), (1, Format::V3, None));
    let read = SegmentReader::open(dir.path(), 0, 0)
        .unwrap()
        .read()
        .unwrap();
    assert_eq!(
        (read.topic.as_deref(), read.connection, &read.payload[..]),
        (Some("push"), None, &b"{\"a\":1}"[..])
    );
}

#[test]
fn a_format_2_segment_is_read_without_topics() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(dir.path(), 0);
    let mut bytes = MAGIC_V2.to_vec();
    for (flags, payload) in [(0x00u8, &b"{\"a\":1}"[..]), (0x81, b"{\"cursor\":1}")] {
        let mut body = vec![flags];
        body.extend_from_slice(&[9; 16]);
        body.extend_from_slice(&5i64.to_le_bytes());
        body.extend_from_slice(payload);
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
    }
    File::create(&p).unwrap().write_all(&bytes).unwrap();
    let s = scan(&p).unwrap();
    assert_eq!(
        (s.records, s.format, s.whole.0, s.torn),
        (2, Format::V2, 2, None)
    );
    let mut r = SegmentReader::open(dir.path(), 0, 0).unwrap();
    let first = r.read().unwrap();
    assert_eq!(
        (first.kind, &first.payload[..], first.topic),
        (RecordKind::Event, &b"{\"a\":1}"[..], None)
    );
    assert_eq!(r.read().unwrap().kind, RecordKind::PollState);
}

#[test]
fn a_format_1_segment_is_read_with_kinds_told_by_payload() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(dir.path(), 0);
    let mut bytes = MAGIC_V1.to_vec();
    let v1 = |id: Uuid, payload: &'static [u8], out: &mut Vec<u8>| {
        let body_len = BODY_FIXED_LEN_V1 + payload.len();
        let mut body = id.as_bytes().to_vec();
        body.extend_from_slice(&5i64.to_le_bytes());
        body.extend_from_slice(payload);
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
    };
    v1(Uuid::from_bytes([1; 16]), b"{\"a\":1}", &mut bytes);
    v1(Uuid::nil(), b"{\"replay\":{}}", &mut bytes);
    v1(Uuid::nil(), b"{\"dedupe\":[]}", &mut bytes);
    v1(Uuid::nil(), b"{\"cursor\":1}", &mut bytes);
    File::create(&p).unwrap().write_all(&bytes).unwrap();
    let s = scan(&p).unwrap();
    assert_eq!(
        (s.records, s.format, s.whole.0, s.torn),
        (4, Format::V1, 4, None)
    );
    let mut r = SegmentReader::open(dir.path(), 0, 0).unwrap();
    let kinds: Vec<RecordKind> = (0..4).map(|_| r.read().unwrap().kind).collect();
    assert_eq!(
        kinds,
        [
            RecordKind::Event,
            RecordKind::Replay,
            RecordKind::DedupeIds,
            RecordKind::PollState
        ]
    );
}

#[test]
fn names() {
    assert_eq!(file_name(42), "00000000000000000042.log");
    assert_eq!(parse_file_name("00000000000000000042.log"), Some(42));
    assert_eq!(parse_file_name("42.log"), None);
    assert_eq!(parse_file_name("00000000000000000042.tmp"), None);
}
