//! One log segment on disk: the record encoding, the reader, and the scan that
//! recovery uses to find a torn tail.
//!
//! A segment file is named by the offset of its first record,
//! `{base:020}.log`, and holds:
//!
//! ```text
//! magic "TRBLOG\0\x01" (8 bytes)
//! record*: len u32 LE | crc32c u32 LE | body (len bytes)
//! body:    event id (16 bytes, UUID) | received_at µs i64 LE | payload (JSON bytes)
//! ```
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

use crate::event::Event;

/// Identifies a tributary log segment and its format version.
pub const MAGIC: [u8; 8] = *b"TRBLOG\0\x01";
/// Bytes before the first record.
pub const HEADER_LEN: u64 = MAGIC.len() as u64;
/// `len` + `crc` before each body.
pub const RECORD_HEADER_LEN: usize = 8;
/// Event id + received_at, before the payload.
const BODY_FIXED_LEN: usize = 24;
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

/// Appends the on-disk form of `event` to `out`.
pub fn encode(event: &Event, out: &mut Vec<u8>) {
    let body_len = BODY_FIXED_LEN + event.payload.len();
    let start = out.len();
    out.reserve(RECORD_HEADER_LEN + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(event.id.as_bytes());
    out.extend_from_slice(&event.received_at_us.to_le_bytes());
    out.extend_from_slice(&event.payload);
    let crc = crc32c::crc32c(&out[start + RECORD_HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a body that passed its CRC check.
fn decode_body(body: Vec<u8>) -> Event {
    let id = Uuid::from_bytes(
        body[..16]
            .try_into()
            .expect("body is at least BODY_FIXED_LEN long"),
    );
    let received_at_us = i64::from_le_bytes(
        body[16..24]
            .try_into()
            .expect("body is at least BODY_FIXED_LEN long"),
    );
    let payload = Bytes::from(body).slice(BODY_FIXED_LEN..);
    Event {
        id,
        received_at_us,
        payload,
    }
}

/// What a record read found.
enum Next {
    /// A valid record of this many bytes on disk.
    Record(Event, u64),
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

fn read_record(r: &mut impl Read) -> io::Result<Next> {
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
    if len < BODY_FIXED_LEN as u32 || len > MAX_BODY_LEN {
        return Ok(Next::Invalid("record length out of range"));
    }
    let mut body = vec![0u8; len as usize];
    if !read_exact_or_eof(r, &mut body)? {
        return Ok(Next::Invalid("record body cut short"));
    }
    if crc32c::crc32c(&body) != crc {
        return Ok(Next::Invalid("record checksum mismatch"));
    }
    Ok(Next::Record(
        decode_body(body),
        RECORD_HEADER_LEN as u64 + len as u64,
    ))
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
    /// The last state record ([`Event::is_state`], a replayed dead letter
    /// included): its index in the segment, the valid length up to and
    /// including it, and its payload. Appends of a poll log end with one.
    pub last_state: Option<StateMark>,
    /// The last source-state record proper (not a replayed dead letter): its
    /// index in the segment and its payload.
    pub last_source_state: Option<(u64, Bytes)>,
}

/// Where a segment's last source-state record is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateMark {
    /// Records before it in the segment.
    pub index: u64,
    /// Bytes of the segment up to and including it.
    pub end: u64,
    /// The state.
    pub payload: Bytes,
}

/// Scans a whole segment file, validating every record.
pub fn scan(path: &Path) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(READ_BUFFER, file);
    let mut magic = [0u8; MAGIC.len()];
    if !read_exact_or_eof(&mut r, &mut magic)? || magic != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a tributary log segment (bad magic)",
                path.display()
            ),
        ));
    }
    let mut scan = Scan {
        valid_len: HEADER_LEN,
        records: 0,
        torn: None,
        file_len,
        last_state: None,
        last_source_state: None,
    };
    loop {
        match read_record(&mut r)? {
            Next::Record(event, n) => {
                scan.valid_len += n;
                if event.is_state() {
                    if !event.is_replay() {
                        scan.last_source_state = Some((scan.records, event.payload.clone()));
                    }
                    scan.last_state = Some(StateMark {
                        index: scan.records,
                        end: scan.valid_len,
                        payload: event.payload,
                    });
                }
                scan.records += 1;
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
    /// Read-ahead may run into preallocated zeros that a later append
    /// overwrites; [`SegmentReader::read`] drops such stale bytes.
    file: BufReader<File>,
}

impl SegmentReader {
    /// Opens the segment starting at `base` and skips to offset `at`.
    pub fn open(dir: &Path, base: u64, at: u64) -> io::Result<Self> {
        let mut file = BufReader::with_capacity(READ_BUFFER, File::open(path(dir, base))?);
        file.seek(SeekFrom::Start(HEADER_LEN))?;
        let mut reader = Self {
            base,
            next: base,
            pos: HEADER_LEN,
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

    /// Reads the next record; the caller guarantees it is durable (below the log's end).
    pub fn read(&mut self) -> io::Result<Event> {
        let mut found = read_record(&mut self.file)?;
        if !matches!(found, Next::Record(..)) {
            // The read-ahead buffer may hold zeros (or half a record) from
            // before the append; seeking discards it, so read again from disk.
            self.file.seek(SeekFrom::Start(self.pos))?;
            found = read_record(&mut self.file)?;
        }
        match found {
            Next::Record(event, n) => {
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
            payload: Bytes::from(format!("{{\"n\":{n}}}")),
        }
    }

    fn write_segment(path: &Path, events: &[Event]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for e in events {
            encode(e, &mut bytes);
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
            encode(&events[0], &mut b);
            encode(&events[1], &mut b);
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
        encode(&event(2), &mut more);
        let file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &more, valid as u64).unwrap();
        assert_eq!(r.read().unwrap(), event(2));
    }

    #[test]
    fn names() {
        assert_eq!(file_name(42), "00000000000000000042.log");
        assert_eq!(parse_file_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_file_name("42.log"), None);
        assert_eq!(parse_file_name("00000000000000000042.tmp"), None);
    }
}
