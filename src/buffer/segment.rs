//! One log segment on disk: the record encoding, the reader, and the scan that
//! recovery uses to find a torn tail.
//!
//! A segment file is named by the offset of its first record,
//! `{base:020}.log`, and holds:
//!
//! ```text
//! magic "TRBLOG\0\x03" (8 bytes)
//! record*: len u32 LE | crc32c u32 LE | body (len bytes)
//! body:    flags u8 | event id (16 bytes, UUID) | received_at µs i64 LE
//!          | topic len u8 | topic (UTF-8) | payload (JSON bytes)
//! flags:   bits 0-6 the record's kind (RecordKind), bit 7 set on the last record of its append
//! ```
//!
//! The topic is the routing value a request header gave (`[route] header`),
//! empty when there is none. Format 2 (`TRBLOG\0\x02`, no topic) is read too
//! and, like format 1, continued in a new segment.
//!
//! Every record says on disk what it is and whether its append ended with it,
//! so recovery cuts a torn append whole (a power cut can keep part of one
//! write) without asking the configuration what the log holds. Segments of
//! format 1 (`TRBLOG\0\x01`, no flags byte) are still read: a record with a
//! nil id is then told apart by its payload, and every record counts as the
//! end of its append.
//!
//! The CRC covers the body. A record whose header or body is cut short, or
//! whose CRC does not match, ends the valid part of the segment. Segments are
//! preallocated with zeros (so an fsync after an append need not journal a
//! new file size); an all-zero record header marks the end of the data, since
//! a real record is never shorter than its fixed part.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use uuid::Uuid;

use crate::event::{Event, RecordKind, DEDUPE_PREFIX, REPLAY_PREFIX};

/// Identifies a tributary log segment and its format version (the one written).
pub const MAGIC: [u8; 8] = *b"TRBLOG\0\x03";
/// Format 2: records without a topic (read, never written).
const MAGIC_V2: [u8; 8] = *b"TRBLOG\0\x02";
/// Format 1: records without a flags byte (read, never written).
const MAGIC_V1: [u8; 8] = *b"TRBLOG\0\x01";
/// Bytes before the first record.
pub const HEADER_LEN: u64 = MAGIC.len() as u64;
/// `len` + `crc` before each body.
pub const RECORD_HEADER_LEN: usize = 8;
/// Flags + event id + received_at + topic length, before the topic.
const BODY_FIXED_LEN: usize = 26;
/// Flags + event id + received_at, before the payload, in format 2.
const BODY_FIXED_LEN_V2: usize = 25;
/// Event id + received_at, before the payload, in format 1.
const BODY_FIXED_LEN_V1: usize = 24;
/// Flag bit: the record is the last of its append.
const END_OF_APPEND: u8 = 0x80;
// A record's body must stay within MAX_BODY_LEN, or a reader would take it
// for corruption.
const _: () = assert!(
    crate::event::MAX_PAYLOAD_BYTES + BODY_FIXED_LEN + crate::event::MAX_TOPIC_BYTES
        <= MAX_BODY_LEN as usize
);
/// Largest body accepted when reading; anything larger is corruption.
const MAX_BODY_LEN: u32 = 1 << 30;
/// Read-ahead of segment readers.
const READ_BUFFER: usize = 1 << 20;

/// File name of the segment starting at `base`.
pub fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The base offset a segment file name carries, if it is one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// Path of the segment starting at `base` in `dir`.
pub fn path(dir: &Path, base: u64) -> PathBuf {
    dir.join(file_name(base))
}

/// The format of a segment, from its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Records without a flags byte.
    V1,
    /// Records that carry their kind and the end of their append.
    V2,
    /// Records that also carry a topic (the one written).
    V3,
}

impl Format {
    fn fixed_len(self) -> usize {
        match self {
            Format::V1 => BODY_FIXED_LEN_V1,
            Format::V2 => BODY_FIXED_LEN_V2,
            Format::V3 => BODY_FIXED_LEN,
        }
    }
}

/// Reads a segment's magic: its format.
fn read_magic(r: &mut impl Read, path: &Path) -> io::Result<Format> {
    let mut magic = [0u8; MAGIC.len()];
    let format = if !read_exact_or_eof(r, &mut magic)? {
        None
    } else if magic == MAGIC {
        Some(Format::V3)
    } else if magic == MAGIC_V2 {
        Some(Format::V2)
    } else if magic == MAGIC_V1 {
        Some(Format::V1)
    } else {
        None
    };
    format.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a tributary log segment (bad magic)",
                path.display()
            ),
        )
    })
}

/// Appends the on-disk form of `event` to `out`; `end_of_append` marks the
/// last record of an append.
pub fn encode(event: &Event, end_of_append: bool, out: &mut Vec<u8>) {
    let topic = event.topic.as_deref().unwrap_or("").as_bytes();
    let topic = &topic[..topic.len().min(crate::event::MAX_TOPIC_BYTES)];
    let body_len = BODY_FIXED_LEN + topic.len() + event.payload.len();
    let start = out.len();
    out.reserve(RECORD_HEADER_LEN + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let end = if end_of_append { END_OF_APPEND } else { 0 };
    out.push(event.kind as u8 | end);
    out.extend_from_slice(event.id.as_bytes());
    out.extend_from_slice(&event.received_at_us.to_le_bytes());
    out.push(topic.len() as u8);
    out.extend_from_slice(topic);
    out.extend_from_slice(&event.payload);
    let crc = crc32c::crc32c(&out[start + RECORD_HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a body that passed its CRC check (and is at least the format's
/// fixed length): the event and whether it ends its append. `None` if its
/// kind is unknown (written by a newer version).
fn decode_body(body: Vec<u8>, format: Format) -> Option<(Event, bool)> {
    let (kind, end, fixed) = match format {
        Format::V2 | Format::V3 => (
            RecordKind::from_byte(body[0] & !END_OF_APPEND)?,
            body[0] & END_OF_APPEND != 0,
            &body[1..BODY_FIXED_LEN_V2],
        ),
        Format::V1 => (RecordKind::Event, true, &body[..BODY_FIXED_LEN_V1]),
    };
    let id = Uuid::from_bytes(fixed[..16].try_into().expect("16 bytes of id"));
    let received_at_us = i64::from_le_bytes(fixed[16..24].try_into().expect("8 bytes of time"));
    let (topic, start) = match format {
        Format::V3 => {
            let len = body[BODY_FIXED_LEN - 1] as usize;
            let topic = body.get(BODY_FIXED_LEN..BODY_FIXED_LEN + len)?;
            let topic = std::str::from_utf8(topic).ok()?;
            (
                (!topic.is_empty()).then(|| std::sync::Arc::from(topic)),
                BODY_FIXED_LEN + len,
            )
        }
        _ => (None, format.fixed_len()),
    };
    let payload = Bytes::from(body).slice(start..);
    // Format 1 marked every non-event with a nil id and told them apart by payload.
    let kind = match format {
        Format::V1 if id.is_nil() && payload.starts_with(REPLAY_PREFIX) => RecordKind::Replay,
        Format::V1 if id.is_nil() && payload.starts_with(DEDUPE_PREFIX) => RecordKind::DedupeIds,
        Format::V1 if id.is_nil() => RecordKind::PollState,
        _ => kind,
    };
    let event = Event {
        id,
        received_at_us,
        kind,
        payload,
        topic,
    };
    Some((event, end))
}

/// What a record read found.
enum Next {
    /// A valid record of this many bytes on disk, and whether it ends its append.
    Record(Event, u64, bool),
    /// Clean end of the data.
    End,
    /// A torn or corrupt record starts here.
    Invalid(&'static str),
}

fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn read_record(r: &mut impl Read, format: Format) -> io::Result<Next> {
    let mut header = [0u8; RECORD_HEADER_LEN];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(Next::End),
            Ok(0) => return Ok(Next::Invalid("record header cut short")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if header == [0; RECORD_HEADER_LEN] {
        return Ok(Next::End);
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len < format.fixed_len() as u32 || len > MAX_BODY_LEN {
        return Ok(Next::Invalid("record length out of range"));
    }
    let mut body = vec![0u8; len as usize];
    if !read_exact_or_eof(r, &mut body)? {
        return Ok(Next::Invalid("record body cut short"));
    }
    if crc32c::crc32c(&body) != crc {
        return Ok(Next::Invalid("record checksum mismatch"));
    }
    match decode_body(body, format) {
        Some((event, end)) => Ok(Next::Record(
            event,
            RECORD_HEADER_LEN as u64 + len as u64,
            end,
        )),
        None => Ok(Next::Invalid("unknown record kind")),
    }
}

/// The valid prefix of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Bytes from the start of the file (header included) that hold valid records.
    pub valid_len: u64,
    /// Valid records.
    pub records: u64,
    /// Why the scan stopped at a damaged record, if it did.
    pub torn: Option<&'static str>,
    /// Length of the file, preallocated space included.
    pub file_len: u64,
    /// The segment's format.
    pub format: Format,
    /// Records, and bytes from the start of the file, up to and including
    /// the last record that ended its append: what a torn append is cut to.
    pub whole: (u64, u64),
    /// The last poll-state record: its index in the segment and its payload.
    pub last_poll_state: Option<(u64, Bytes)>,
}

/// Scans a whole segment file, validating every record.
pub fn scan(path: &Path) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(READ_BUFFER, file);
    let format = read_magic(&mut r, path)?;
    let mut scan = Scan {
        valid_len: HEADER_LEN,
        records: 0,
        torn: None,
        file_len,
        format,
        whole: (0, HEADER_LEN),
        last_poll_state: None,
    };
    loop {
        match read_record(&mut r, format)? {
            Next::Record(event, n, end) => {
                scan.valid_len += n;
                if event.kind == RecordKind::PollState {
                    scan.last_poll_state = Some((scan.records, event.payload));
                }
                scan.records += 1;
                if end {
                    scan.whole = (scan.records, scan.valid_len);
                }
            }
            Next::End => break,
            Next::Invalid(why) => {
                scan.torn = Some(why);
                break;
            }
        }
    }
    Ok(scan)
}

/// Sequential reader of one segment, positioned at a record boundary.
pub struct SegmentReader {
    /// Offset of the segment's first record.
    pub base: u64,
    /// Offset of the next record this reader returns.
    pub next: u64,
    /// Byte position of that record in the file.
    pos: u64,
    /// The segment's format.
    format: Format,
    /// Read-ahead may run into preallocated zeros that a later append
    /// overwrites; [`SegmentReader::read`] drops such stale bytes.
    file: BufReader<File>,
}

impl SegmentReader {
    /// Opens the segment starting at `base` and skips to offset `at`.
    pub fn open(dir: &Path, base: u64, at: u64) -> io::Result<Self> {
        let path = path(dir, base);
        let mut file = BufReader::with_capacity(READ_BUFFER, File::open(&path)?);
        let format = read_magic(&mut file, &path)?;
        let mut reader = Self {
            base,
            next: base,
            pos: HEADER_LEN,
            format,
            file,
        };
        while reader.next < at {
            reader.skip()?;
        }
        Ok(reader)
    }

    fn skip(&mut self) -> io::Result<()> {
        let mut header = [0u8; RECORD_HEADER_LEN];
        self.file.read_exact(&mut header)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        self.file.seek_relative(len as i64)?;
        self.next += 1;
        self.pos += RECORD_HEADER_LEN as u64 + len as u64;
        Ok(())
    }

    /// Drops the read-ahead: bytes buffered past the log's end may be those
    /// of a write that failed and was cut, not the records that replaced them.
    pub fn forget_read_ahead(&mut self) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(self.pos))?;
        Ok(())
    }

    /// Reads the next record; the caller guarantees it is durable (below the log's end).
    pub fn read(&mut self) -> io::Result<Event> {
        let mut found = read_record(&mut self.file, self.format)?;
        if !matches!(found, Next::Record(..)) {
            // The read-ahead buffer may hold zeros (or half a record) from
            // before the append; seeking discards it, so read again from disk.
            self.file.seek(SeekFrom::Start(self.pos))?;
            found = read_record(&mut self.file, self.format)?;
        }
        match found {
            Next::Record(event, n, _) => {
                self.next += 1;
                self.pos += n;
                Ok(event)
            }
            Next::End => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("offset {} is missing from its segment", self.next),
            )),
            Next::Invalid(why) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("offset {}: {why}", self.next),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn event(n: u8) -> Event {
        Event {
            id: Uuid::from_bytes([n; 16]),
            received_at_us: 1_700_000_000_000_000 + n as i64,
            kind: RecordKind::Event,
            payload: Bytes::from(format!("{{\"n\":{n}}}")),
            topic: None,
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
                ..event(7)
            })
            .collect();
        for (i, e) in records.iter().enumerate() {
            encode(e, i == 1, &mut bytes);
        }
        File::create(&p).unwrap().write_all(&bytes).unwrap();
        let s = scan(&p).unwrap();
        assert_eq!((s.records, s.format, s.whole.0), (4, Format::V3, 2));
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
}
