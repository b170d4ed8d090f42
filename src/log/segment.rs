//! One log segment on disk: the record encoding, the reader, and the scan that
//! recovery uses to find a torn tail.
//!
//! A segment file is named by the offset of its first record,
//! `{base:020}.log`, and holds:
//!
//! ```text
//! magic "TRBLOG\0\x04" (8 bytes)
//! record*: len u32 LE | crc32c u32 LE | body (len bytes)
//! body:    flags u8 | event id (16 bytes, UUID) | received_at µs i64 LE
//!          | topic len u8 | topic (UTF-8) | connection len u8
//!          | connection (UTF-8) | payload (JSON bytes)
//! flags:   bits 0-6 the record's kind (RecordKind), bit 7 set on the last record of its append
//! ```
//!
//! The topic is the routing value a request header gave (`[route] header`),
//! empty when there is none; the connection is the end-user account the event
//! came from in a pipeline with `[connections]` (at most 128 bytes), empty
//! otherwise. Formats 3 (`TRBLOG\0\x03`, no connection) and 2
//! (`TRBLOG\0\x02`, no topic) are read too and, like format 1, continued in
//! a new segment.
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
pub const MAGIC: [u8; 8] = *b"TRBLOG\0\x04";
/// Format 3: records without a connection (read, never written).
const MAGIC_V3: [u8; 8] = *b"TRBLOG\0\x03";
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
/// The fixed part in format 4: that, and the connection's length.
const BODY_FIXED_LEN_V4: usize = BODY_FIXED_LEN + 1;
/// Longest connection id kept with an event.
const MAX_CONNECTION_BYTES: usize = 128;
/// Flags + event id + received_at, before the payload, in format 2.
const BODY_FIXED_LEN_V2: usize = 25;
/// Event id + received_at, before the payload, in format 1.
const BODY_FIXED_LEN_V1: usize = 24;
/// Flag bit: the record is the last of its append.
const END_OF_APPEND: u8 = 0x80;
// A record's body must stay within MAX_BODY_LEN, or a reader would take it
// for corruption.
const _: () = assert!(
    crate::event::MAX_PAYLOAD_BYTES
        + BODY_FIXED_LEN_V4
        + crate::event::MAX_TOPIC_BYTES
        + MAX_CONNECTION_BYTES
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
    /// Records that also carry a topic.
    V3,
    /// Records that also carry a connection (the one written).
    V4,
}

impl Format {
    fn fixed_len(self) -> usize {
        match self {
            Format::V1 => BODY_FIXED_LEN_V1,
            Format::V2 => BODY_FIXED_LEN_V2,
            Format::V3 => BODY_FIXED_LEN,
            Format::V4 => BODY_FIXED_LEN_V4,
        }
    }
}

/// Reads a segment's magic: its format.
fn read_magic(r: &mut impl Read, path: &Path) -> io::Result<Format> {
    let mut magic = [0u8; MAGIC.len()];
    let format = if !read_exact_or_eof(r, &mut magic)? {
        None
    } else if magic == MAGIC {
        Some(Format::V4)
    } else if magic == MAGIC_V3 {
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
    // Connection ids are checked to be at most 128 ASCII bytes when added.
    let connection = event.connection.as_deref().unwrap_or("").as_bytes();
    let connection = &connection[..connection.len().min(MAX_CONNECTION_BYTES)];
    let body_len = BODY_FIXED_LEN_V4 + topic.len() + connection.len() + event.payload.len();
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
    out.push(connection.len() as u8);
    out.extend_from_slice(connection);
    out.extend_from_slice(&event.payload);
    let crc = crc32c::crc32c(&out[start + RECORD_HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a body that passed its CRC check (and is at least the format's
/// fixed length): the event and whether it ends its append. `None` if its
/// kind is unknown (written by a newer version).
fn decode_body(body: Vec<u8>, format: Format) -> Option<(Event, bool)> {
    let (kind, end, fixed) = match format {
        Format::V2 | Format::V3 | Format::V4 => (
            RecordKind::from_byte(body[0] & !END_OF_APPEND)?,
            body[0] & END_OF_APPEND != 0,
            &body[1..BODY_FIXED_LEN_V2],
        ),
        Format::V1 => (RecordKind::Event, true, &body[..BODY_FIXED_LEN_V1]),
    };
    let id = Uuid::from_bytes(fixed[..16].try_into().expect("16 bytes of id"));
    let received_at_us = i64::from_le_bytes(fixed[16..24].try_into().expect("8 bytes of time"));
    // A length byte and that many bytes of UTF-8 at `at`; empty is none.
    let text = |at: usize| -> Option<(Option<std::sync::Arc<str>>, usize)> {
        let len = *body.get(at)? as usize;
        let text = std::str::from_utf8(body.get(at + 1..at + 1 + len)?).ok()?;
        Some((
            (!text.is_empty()).then(|| std::sync::Arc::from(text)),
            at + 1 + len,
        ))
    };
    let (topic, connection, start) = match format {
        Format::V3 | Format::V4 => {
            let (topic, next) = text(BODY_FIXED_LEN - 1)?;
            if format == Format::V4 {
                let (connection, next) = text(next)?;
                (topic, connection, next)
            } else {
                (topic, None, next)
            }
        }
        _ => (None, None, format.fixed_len()),
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
        connection,
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
    /// The last poll-state record of no connection: its index in the
    /// segment and its payload.
    pub last_poll_state: Option<(u64, Bytes)>,
    /// The last poll-state record of each connection, likewise.
    pub connection_states: std::collections::HashMap<std::sync::Arc<str>, (u64, Bytes)>,
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
        connection_states: Default::default(),
    };
    loop {
        match read_record(&mut r, format)? {
            Next::Record(event, n, end) => {
                scan.valid_len += n;
                if event.kind == RecordKind::PollState {
                    match event.connection {
                        None => scan.last_poll_state = Some((scan.records, event.payload)),
                        Some(connection) => {
                            scan.connection_states
                                .insert(connection, (scan.records, event.payload));
                        }
                    }
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
mod tests;
