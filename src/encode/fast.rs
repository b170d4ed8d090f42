//! One pass from JSON record bytes straight into Arrow arrays, for the types
//! declared schemas use: text, integers, numbers, booleans, date-times, dates,
//! objects and arrays. arrow-json first builds a tape of the whole flush and
//! then walks it once per column; this walks each record once.
//!
//! It takes only what it decodes exactly as arrow-json would, and declines
//! everything else (a string in an integer column, a float literal, a
//! duplicate key, a missing required field, a type it does not know): the
//! caller then decodes the flush with arrow-json, which also names the
//! culprit of a dead letter. So the rows and the dead letters never depend on
//! which decoder ran; the tests compare the two on every input they accept.

use std::str::FromStr;
use std::sync::Arc;

use arrow_array::timezone::Tz;
use arrow_array::types::Date32Type;
use arrow_array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, ListArray, RecordBatch,
    StringArray, StructArray, TimestampMicrosecondArray,
};
use arrow_buffer::{BooleanBufferBuilder, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_cast::parse::{string_to_datetime, Parser};
use arrow_schema::{DataType, FieldRef, Fields, SchemaRef, TimeUnit};

/// Deepest nesting skipped in an unknown field; deeper is left to arrow-json.
const MAX_SKIP_DEPTH: usize = 64;

/// The rows of `records` as a batch of `schema`, or `None` where arrow-json
/// must decide (see the module documentation).
pub fn decode(schema: &SchemaRef, records: &[&[u8]]) -> Option<RecordBatch> {
    decode_as(schema, records, false)
}

/// With `schema = "infer"`: the rows of `records` if each is stored exactly
/// as it is, so inference has nothing to grow and nothing for `_extra`.
/// Stricter than [`decode`] (and than [`super::infer::AsIs`], which it
/// replaces for such a flush): a key the schema does not have (unless it
/// holds nothing but nulls and empty containers), an escaped key, an
/// `_extra` key, or an integer a double cannot hold exactly declines.
pub fn decode_fitting(schema: &SchemaRef, records: &[&[u8]]) -> Option<RecordBatch> {
    decode_as(schema, records, true)
}

fn decode_as(schema: &SchemaRef, records: &[&[u8]], strict: bool) -> Option<RecordBatch> {
    let mut root = Struct::new(schema.fields(), records.len())?;
    let mut scratch = Vec::new();
    for record in records {
        let mut cursor = Cursor {
            bytes: record,
            at: 0,
            scratch: &mut scratch,
            strict,
        };
        cursor.whitespace();
        if cursor.peek()? != b'{' {
            return None;
        }
        root.object(&mut cursor)?;
        cursor.whitespace();
        if cursor.at != record.len() {
            return None;
        }
    }
    let (fields, columns) = root.finish()?;
    debug_assert_eq!(&fields, schema.fields());
    RecordBatch::try_new(schema.clone(), columns).ok()
}

/// Why a record is left to arrow-json.
type Decline = Option<()>;

/// A column being built.
enum Column {
    Text {
        offsets: Vec<i32>,
        data: Vec<u8>,
        nulls: NullBufferBuilder,
    },
    Int {
        values: Vec<i64>,
        nulls: NullBufferBuilder,
    },
    Float {
        values: Vec<f64>,
        nulls: NullBufferBuilder,
    },
    Bool {
        values: BooleanBufferBuilder,
        nulls: NullBufferBuilder,
    },
    /// Microseconds since the epoch; `tz` is how arrow-json reads a time
    /// without an offset.
    Timestamp {
        values: Vec<i64>,
        nulls: NullBufferBuilder,
        tz: Tz,
        data_type: DataType,
    },
    Date {
        values: Vec<i32>,
        nulls: NullBufferBuilder,
    },
    Struct(Box<Struct>),
    List {
        item: FieldRef,
        offsets: Vec<i32>,
        child: Box<Column>,
        nulls: NullBufferBuilder,
    },
}

/// An object column: its fields' columns and its own nulls.
struct Struct {
    fields: Fields,
    columns: Vec<Column>,
    nulls: NullBufferBuilder,
    /// Which fields the current object set (declines a duplicate key).
    seen: Vec<bool>,
    /// Whether any field is required (a null object then goes to arrow-json).
    required: bool,
    /// The field index of each key position in the last object read
    /// (`usize::MAX` for a key the schema does not have).
    order: Vec<usize>,
}

impl Struct {
    fn new(fields: &Fields, capacity: usize) -> Option<Self> {
        let columns = fields
            .iter()
            .map(|f| Column::new(f.data_type(), capacity))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            fields: fields.clone(),
            columns,
            nulls: NullBufferBuilder::new(capacity),
            seen: vec![false; fields.len()],
            required: fields.iter().any(|f| !f.is_nullable()),
            order: Vec::with_capacity(fields.len()),
        })
    }

    /// Reads one object (the cursor is on its `{`).
    fn object(&mut self, cursor: &mut Cursor<'_>) -> Decline {
        cursor.at += 1;
        self.seen.iter_mut().for_each(|s| *s = false);
        cursor.whitespace();
        let mut position = 0;
        if cursor.peek()? == b'}' {
            cursor.at += 1;
        } else {
            loop {
                cursor.whitespace();
                let index = {
                    let key = cursor.key()?;
                    // Records of a kind list their keys in one order: try
                    // the field the previous record had at this position.
                    let guess = self.order.get(position).copied();
                    match guess.filter(|&g| {
                        self.fields
                            .get(g)
                            .is_some_and(|f| f.name().as_bytes() == key)
                    }) {
                        Some(g) => Some(g),
                        None => {
                            let found = self.fields.iter().position(|f| f.name().as_bytes() == key);
                            let remembered = found.unwrap_or(usize::MAX);
                            match self.order.get_mut(position) {
                                Some(slot) => *slot = remembered,
                                None => self.order.push(remembered),
                            }
                            found
                        }
                    }
                };
                position += 1;
                cursor.whitespace();
                if cursor.peek()? != b':' {
                    return None;
                }
                cursor.at += 1;
                cursor.whitespace();
                match index {
                    Some(i) => {
                        if std::mem::replace(&mut self.seen[i], true) {
                            return None;
                        }
                        self.columns[i].value(cursor, self.fields[i].is_nullable())?;
                    }
                    // Under inference a key the schema lacks may only hold
                    // nothing (what fit() would drop).
                    None => cursor.skip_value(cursor.strict)?,
                }
                cursor.whitespace();
                match cursor.peek()? {
                    b',' => cursor.at += 1,
                    b'}' => {
                        cursor.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        for (i, seen) in self.seen.iter().enumerate() {
            if !seen {
                if !self.fields[i].is_nullable() {
                    return None;
                }
                self.columns[i].null();
            }
        }
        self.nulls.append_non_null();
        Some(())
    }

    fn null(&mut self) -> Decline {
        if self.required {
            return None;
        }
        self.nulls.append_null();
        for column in &mut self.columns {
            column.null();
        }
        Some(())
    }

    fn finish(self) -> Option<(Fields, Vec<ArrayRef>)> {
        let columns = self
            .columns
            .into_iter()
            .map(Column::finish)
            .collect::<Option<Vec<_>>>()?;
        Some((self.fields, columns))
    }
}

impl Column {
    fn new(data_type: &DataType, capacity: usize) -> Option<Self> {
        let nulls = NullBufferBuilder::new(capacity);
        Some(match data_type {
            DataType::Utf8 => {
                let mut offsets = Vec::with_capacity(capacity + 1);
                offsets.push(0);
                Column::Text {
                    offsets,
                    data: Vec::with_capacity(capacity * 16),
                    nulls,
                }
            }
            DataType::Int64 => Column::Int {
                values: Vec::with_capacity(capacity),
                nulls,
            },
            DataType::Float64 => Column::Float {
                values: Vec::with_capacity(capacity),
                nulls,
            },
            DataType::Boolean => Column::Bool {
                values: BooleanBufferBuilder::new(capacity),
                nulls,
            },
            DataType::Timestamp(TimeUnit::Microsecond, tz) => Column::Timestamp {
                values: Vec::with_capacity(capacity),
                nulls,
                // arrow-json reads a time without an offset as UTC when the
                // column has no zone.
                tz: Tz::from_str(tz.as_deref().unwrap_or("+00:00")).ok()?,
                data_type: data_type.clone(),
            },
            DataType::Date32 => Column::Date {
                values: Vec::with_capacity(capacity),
                nulls,
            },
            DataType::Struct(fields) => Column::Struct(Box::new(Struct::new(fields, capacity)?)),
            DataType::List(item) => {
                let mut offsets = Vec::with_capacity(capacity + 1);
                offsets.push(0);
                Column::List {
                    child: Box::new(Column::new(item.data_type(), capacity)?),
                    item: item.clone(),
                    offsets,
                    nulls,
                }
            }
            _ => return None,
        })
    }

    /// Reads one value (the cursor is on its first byte).
    fn value(&mut self, cursor: &mut Cursor<'_>, nullable: bool) -> Decline {
        if cursor.peek()? == b'n' {
            cursor.literal(b"null")?;
            return if nullable { self.null() } else { None };
        }
        match self {
            Column::Text {
                offsets,
                data,
                nulls,
            } => {
                cursor.string_into(data)?;
                offsets.push(i32::try_from(data.len()).ok()?);
                nulls.append_non_null();
            }
            Column::Int { values, nulls } => {
                values.push(cursor.integer()?);
                nulls.append_non_null();
            }
            Column::Float { values, nulls } => {
                let text = cursor.number()?;
                if cursor.strict && !text.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
                    let int: i64 = std::str::from_utf8(text).ok()?.parse().ok()?;
                    if int.unsigned_abs() > super::infer::EXACT_IN_DOUBLE {
                        return None;
                    }
                }
                // The shortest correctly rounded value, as lexical-core's.
                values.push(std::str::from_utf8(text).ok()?.parse().ok()?);
                nulls.append_non_null();
            }
            Column::Bool { values, nulls } => {
                let value = match cursor.peek()? {
                    b't' => cursor.literal(b"true").map(|()| true)?,
                    b'f' => cursor.literal(b"false").map(|()| false)?,
                    _ => return None,
                };
                values.append(value);
                nulls.append_non_null();
            }
            Column::Timestamp {
                values, nulls, tz, ..
            } => {
                let text = cursor.text()?;
                let at = string_to_datetime(tz, std::str::from_utf8(text).ok()?).ok()?;
                values.push(at.timestamp_micros());
                nulls.append_non_null();
            }
            Column::Date { values, nulls } => {
                let text = cursor.text()?;
                values.push(Date32Type::parse(std::str::from_utf8(text).ok()?)?);
                nulls.append_non_null();
            }
            Column::Struct(inner) => {
                if cursor.peek()? != b'{' {
                    return None;
                }
                inner.object(cursor)?;
            }
            Column::List {
                item,
                offsets,
                child,
                nulls,
            } => {
                if cursor.peek()? != b'[' {
                    return None;
                }
                cursor.at += 1;
                cursor.whitespace();
                let mut count = 0usize;
                if cursor.peek()? == b']' {
                    cursor.at += 1;
                } else {
                    loop {
                        cursor.whitespace();
                        child.value(cursor, item.is_nullable())?;
                        count += 1;
                        cursor.whitespace();
                        match cursor.peek()? {
                            b',' => cursor.at += 1,
                            b']' => {
                                cursor.at += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                let last = *offsets.last().expect("offsets start with 0");
                offsets.push(last.checked_add(i32::try_from(count).ok()?)?);
                nulls.append_non_null();
            }
        }
        Some(())
    }

    fn null(&mut self) -> Decline {
        match self {
            Column::Text { offsets, nulls, .. } | Column::List { offsets, nulls, .. } => {
                let last = *offsets.last().expect("offsets start with 0");
                offsets.push(last);
                nulls.append_null();
            }
            Column::Int { values, nulls } | Column::Timestamp { values, nulls, .. } => {
                values.push(0);
                nulls.append_null();
            }
            Column::Float { values, nulls } => {
                values.push(0.0);
                nulls.append_null();
            }
            Column::Bool { values, nulls } => {
                values.append(false);
                nulls.append_null();
            }
            Column::Date { values, nulls } => {
                values.push(0);
                nulls.append_null();
            }
            Column::Struct(inner) => inner.null()?,
        }
        Some(())
    }

    fn finish(self) -> Option<ArrayRef> {
        Some(match self {
            Column::Text {
                offsets,
                data,
                mut nulls,
            } => Arc::new(
                StringArray::try_new(
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    data.into(),
                    nulls.finish(),
                )
                .ok()?,
            ),
            Column::Int { values, mut nulls } => {
                Arc::new(Int64Array::new(values.into(), nulls.finish()))
            }
            Column::Float { values, mut nulls } => {
                Arc::new(Float64Array::new(values.into(), nulls.finish()))
            }
            Column::Bool {
                mut values,
                mut nulls,
            } => Arc::new(BooleanArray::new(values.finish(), nulls.finish())),
            Column::Timestamp {
                values,
                mut nulls,
                data_type,
                ..
            } => Arc::new(
                TimestampMicrosecondArray::new(values.into(), nulls.finish())
                    .with_data_type(data_type),
            ),
            Column::Date { values, mut nulls } => {
                Arc::new(Date32Array::new(values.into(), nulls.finish()))
            }
            Column::Struct(inner) => {
                let mut inner = *inner;
                let nulls = inner.nulls.finish();
                let (fields, columns) = inner.finish()?;
                Arc::new(StructArray::try_new(fields, columns, nulls).ok()?)
            }
            Column::List {
                item,
                offsets,
                child,
                mut nulls,
            } => Arc::new(
                ListArray::try_new(
                    item,
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    child.finish()?,
                    nulls.finish(),
                )
                .ok()?,
            ),
        })
    }
}

/// A position in one record's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Unescaped text of a string with escapes.
    scratch: &'a mut Vec<u8>,
    /// See [`decode_fitting`].
    strict: bool,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Decline {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Some(())
        } else {
            None
        }
    }

    /// An object key's text (unescaped into the scratch buffer if needed).
    fn key(&mut self) -> Option<&[u8]> {
        if self.strict {
            let (start, end, escaped) = self.raw_string()?;
            let key = &self.bytes[start..end];
            return (!escaped && key != super::infer::EXTRA_COLUMN.as_bytes()).then_some(key);
        }
        self.text()
    }

    /// A string's unescaped text; the cursor is on its opening quote.
    fn text(&mut self) -> Option<&[u8]> {
        let (start, end, escaped) = self.raw_string()?;
        if !escaped {
            return Some(&self.bytes[start..end]);
        }
        self.scratch.clear();
        unescape(&self.bytes[start..end], self.scratch)?;
        Some(self.scratch.as_slice())
    }

    /// Appends a string's unescaped text to `out`.
    fn string_into(&mut self, out: &mut Vec<u8>) -> Decline {
        let (start, end, escaped) = self.raw_string()?;
        if escaped {
            unescape(&self.bytes[start..end], out)
        } else {
            out.extend_from_slice(&self.bytes[start..end]);
            Some(())
        }
    }

    /// The bounds of a string's raw content and whether it holds escapes;
    /// declines control characters (not JSON).
    fn raw_string(&mut self) -> Option<(usize, usize, bool)> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at + 1;
        let mut at = start;
        let mut escaped = false;
        loop {
            at += memchr::memchr2(b'"', b'\\', self.bytes.get(at..)?)?;
            if self.bytes[at] == b'"' {
                break;
            }
            escaped = true;
            at += 2;
        }
        if self.bytes[start..at].iter().any(|b| *b < 0x20) {
            return None;
        }
        self.at = at + 1;
        Some((start, at, escaped))
    }

    /// A number's literal: `-? digits (. digits)? ([eE] [+-]? digits)?`.
    fn number(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        let bytes = self.bytes;
        let mut at = start;
        if bytes.get(at) == Some(&b'-') {
            at += 1;
        }
        let digits = |mut at: usize| {
            let from = at;
            while bytes.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            (at > from).then_some(at)
        };
        let int_start = at;
        at = digits(at)?;
        if bytes[int_start] == b'0' && at - int_start > 1 {
            return None;
        }
        if bytes.get(at) == Some(&b'.') {
            at = digits(at + 1)?;
        }
        if let Some(b'e' | b'E') = bytes.get(at) {
            at += 1;
            if let Some(b'+' | b'-') = bytes.get(at) {
                at += 1;
            }
            at = digits(at)?;
        }
        self.at = at;
        Some(&bytes[start..at])
    }

    /// An integer literal that fits an i64 (a fraction or exponent declines:
    /// arrow-json truncates those through a float).
    fn integer(&mut self) -> Option<i64> {
        let text = self.number()?;
        if text.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            return None;
        }
        std::str::from_utf8(text).ok()?.parse().ok()
    }

    /// Skips any JSON value, strictly: what is not JSON declines. With
    /// `leafless`, so does any scalar but null (a value inference keeps
    /// nothing of: `null`, `[]`, `{"a": [null]}`).
    fn skip_value(&mut self, leafless: bool) -> Decline {
        // The open containers, innermost last: bit `d` set for an object.
        let mut objects = 0u64;
        let mut depth = 0usize;
        loop {
            // On a value.
            self.whitespace();
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    self.at += 1;
                    self.whitespace();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek()? != close {
                        if depth == MAX_SKIP_DEPTH {
                            return None;
                        }
                        objects = (objects & !(1 << depth)) | (u64::from(open == b'{') << depth);
                        depth += 1;
                        if open == b'{' {
                            self.member_key()?;
                        }
                        continue;
                    }
                    self.at += 1;
                }
                b'n' => self.literal(b"null")?,
                _ if leafless => return None,
                b'"' => {
                    self.raw_string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                _ => {
                    self.number()?;
                }
            }
            // After a value: the next one, or the end of its container.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let in_object = objects & (1 << (depth - 1)) != 0;
                self.whitespace();
                match self.peek()? {
                    b',' => {
                        self.at += 1;
                        if in_object {
                            self.member_key()?;
                        }
                        break;
                    }
                    b'}' if in_object => {
                        self.at += 1;
                        depth -= 1;
                    }
                    b']' if !in_object => {
                        self.at += 1;
                        depth -= 1;
                    }
                    _ => return None,
                }
            }
        }
    }

    /// Skips an object member's key and its colon.
    fn member_key(&mut self) -> Decline {
        self.whitespace();
        self.raw_string()?;
        self.whitespace();
        if self.peek()? != b':' {
            return None;
        }
        self.at += 1;
        Some(())
    }
}

/// Appends the unescaped text of a JSON string's raw content to `out`;
/// declines a bad escape or a lone surrogate.
fn unescape(raw: &[u8], out: &mut Vec<u8>) -> Decline {
    let mut at = 0;
    while at < raw.len() {
        let Some(found) = memchr::memchr(b'\\', &raw[at..]) else {
            out.extend_from_slice(&raw[at..]);
            break;
        };
        out.extend_from_slice(&raw[at..at + found]);
        at += found + 1;
        let byte = *raw.get(at)?;
        at += 1;
        let simple = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let high = hex4(raw.get(at..at + 4)?)?;
                at += 4;
                let code = if (0xD800..0xDC00).contains(&high) {
                    if raw.get(at..at + 2)? != b"\\u" {
                        return None;
                    }
                    let low = hex4(raw.get(at + 2..at + 6)?)?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    at += 6;
                    0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00..0xE000).contains(&high) {
                    return None;
                } else {
                    high
                };
                let c = char::from_u32(code)?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                continue;
            }
            _ => return None,
        };
        out.push(simple);
    }
    Some(())
}

fn hex4(digits: &[u8]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0u32, |acc, d| Some(acc * 16 + (*d as char).to_digit(16)?))
}

#[cfg(test)]
mod tests;
