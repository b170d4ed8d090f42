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

use cursor::{Cursor, Decline};

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
                if !cursor.another(b'}')? {
                    break;
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
                // An integer a double may round: the encoder's exactness
                // check decides (see `super::exact`).
                if !text.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
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
                        if !cursor.another(b']')? {
                            break;
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

mod cursor;
#[cfg(test)]
mod tests;
