//! The fast path of inference: whether a record is stored exactly as it is
//! by decoding its bytes ([`fits_as_is`]), checked in one pass over the
//! bytes that applies [`super::fit`]'s rules without building a tree.
//!
//! The scanner may always answer "no": the record then takes the slow path
//! (parsed, fitted), which is right for every record. So anything unusual —
//! an escaped key, a surrogate escape, an integer beyond 64 bits, nesting
//! past [`MAX_DEPTH`] — is simply "no". A "yes" must be right: the tests hold
//! it against serde's parser ([`oracle`]) and against `fit` itself.

use std::cell::Cell;

use arrow_schema::{DataType, Fields, Schema};

use super::{is_json_text, EXACT_IN_DOUBLE, EXTRA_COLUMN};

#[cfg(test)]
pub mod oracle;

/// Deepest nesting the scanner follows (serde's own limit is 128).
const MAX_DEPTH: usize = 128;

/// Whether the record `json` (one JSON object) is stored exactly as it is
/// by decoding its bytes with `schema`: every value fits its column, no
/// key is unknown (unless it holds no value), and nothing needs the
/// `_extra` column. Then [`fit`] would change nothing, and the record skips
/// parsing into a tree.
///
/// [`fit`]: super::fit
pub fn fits_as_is(json: &[u8], schema: &Schema) -> bool {
    AsIs::new(schema).fits(json)
}

/// [`fits_as_is`] for many records of one schema: the key order of the
/// records it has seen is kept per struct, so a record whose keys come in
/// the order of the one before (a producer serialises one way) finds each
/// field with one comparison instead of a scan.
pub struct AsIs<'s> {
    plan: Plan<'s>,
}

impl<'s> AsIs<'s> {
    /// A checker for records of `schema`.
    pub fn new(schema: &'s Schema) -> Self {
        Self {
            plan: Plan::new(schema.fields()),
        }
    }

    /// Whether the record `json` is stored exactly as it is (see [`fits_as_is`]).
    pub fn fits(&self, json: &[u8]) -> bool {
        // Outside strings the grammar admits ASCII only; each string with
        // other bytes is checked for UTF-8.
        let mut scan = Scan { b: json, i: 0 };
        scan.ws();
        if scan.peek() != Some(b'{') || !scan.object(&self.plan, true, 0) {
            return false;
        }
        scan.ws();
        scan.i == json.len()
    }
}

/// What a column takes, as the scanner sees it.
#[derive(Clone, Copy)]
enum Want<'p, 's> {
    /// A struct (or the record): an object, checked against its plan.
    Struct(&'p Plan<'s>),
    /// A list: an array whose items are checked against `item`.
    List(&'s DataType, Option<&'p Plan<'s>>),
    Text,
    Int,
    Double,
    Bool,
    /// A type the decoder judges itself (timestamps, dates, maps…): any value.
    Any,
    /// Nothing fits but null.
    Never,
}

/// A field's [`Want`] without the plans (which its [`Plan`] holds).
#[derive(Clone, Copy)]
enum Kind<'s> {
    /// JSON text: fit() always rewrites it.
    JsonText,
    Struct,
    List(&'s DataType),
    Text,
    Int,
    Double,
    Bool,
    Any,
}

impl<'s> Kind<'s> {
    fn of(field: &'s std::sync::Arc<arrow_schema::Field>) -> Self {
        if is_json_text(field) {
            return Kind::JsonText;
        }
        match field.data_type() {
            DataType::Struct(_) => Kind::Struct,
            DataType::List(item) | DataType::LargeList(item) => Kind::List(item.data_type()),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Text,
            DataType::Int64 => Kind::Int,
            DataType::Float64 => Kind::Double,
            DataType::Boolean => Kind::Bool,
            _ => Kind::Any,
        }
    }
}

impl<'p, 's> Want<'p, 's> {
    /// What a value of `data_type` must be; `plan` is the plan of the
    /// struct it is or holds through lists.
    fn of(data_type: &'s DataType, plan: Option<&'p Plan<'s>>) -> Self {
        match data_type {
            DataType::Struct(_) => match plan {
                Some(plan) => Want::Struct(plan),
                // Plan::of gives every struct a plan; "no" if one had none.
                None => Want::Never,
            },
            DataType::List(item) | DataType::LargeList(item) => Want::List(item.data_type(), plan),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Want::Text,
            DataType::Int64 => Want::Int,
            DataType::Float64 => Want::Double,
            DataType::Boolean => Want::Bool,
            _ => Want::Any,
        }
    }
}

/// A cursor over one record's bytes.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Consumes `byte` (after whitespace); false if something else is there.
    fn eat(&mut self, byte: u8) -> bool {
        self.ws();
        if self.peek() == Some(byte) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    /// A value wanted as `want`, at `depth`: true if it fits as it is.
    fn value(&mut self, want: Want<'_, '_>, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        self.ws();
        match (self.peek(), want) {
            (Some(b'n'), _) => self.literal(b"null"),
            (_, Want::Any) => self.skip(depth),
            (Some(b't'), Want::Bool) => self.literal(b"true"),
            (Some(b'f'), Want::Bool) => self.literal(b"false"),
            (Some(b'"'), Want::Text) => self.string().is_some(),
            (Some(b'-' | b'0'..=b'9'), Want::Int | Want::Double) => match self.number() {
                Some(Number::Int(v)) => match want {
                    Want::Int => true,
                    _ => v.unsigned_abs() <= EXACT_IN_DOUBLE,
                },
                Some(Number::Fraction) => matches!(want, Want::Double),
                None => false,
            },
            (Some(b'['), Want::List(item, plan)) => {
                self.i += 1;
                if self.eat(b']') {
                    return true;
                }
                let item = Want::of(item, plan);
                loop {
                    if !self.value(item, depth + 1) {
                        return false;
                    }
                    if self.eat(b',') {
                        continue;
                    }
                    return self.eat(b']');
                }
            }
            (Some(b'{'), Want::Struct(plan)) => self.object(plan, false, depth),
            // Another kind than the column's: fit() moves or nulls it.
            _ => false,
        }
    }

    /// An object of `plan`'s struct (the record itself if `record`).
    fn object(&mut self, plan: &Plan<'_>, record: bool, depth: usize) -> bool {
        self.i += 1;
        if self.eat(b'}') {
            return true;
        }
        let mut after = None;
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return false;
            }
            // An escaped key is left to the slow path.
            let Some(Text {
                raw: key,
                escaped: false,
            }) = self.string()
            else {
                return false;
            };
            if !self.eat(b':') {
                return false;
            }
            let index = plan
                .find(after, key)
                .filter(|_| !(record && key == EXTRA_COLUMN.as_bytes()));
            if index.is_some() {
                after = index;
            }
            let fits = match index {
                Some(i) => {
                    let want = match plan.kinds[i] {
                        // JSON text is always rewritten by fit().
                        Kind::JsonText => return false,
                        Kind::Text => Want::Text,
                        Kind::Int => Want::Int,
                        Kind::Double => Want::Double,
                        Kind::Bool => Want::Bool,
                        Kind::Any => Want::Any,
                        Kind::Struct => match &plan.below[i] {
                            Some(below) => Want::Struct(below),
                            None => return false,
                        },
                        Kind::List(item) => Want::List(item, plan.below[i].as_ref()),
                    };
                    self.value(want, depth + 1)
                }
                // An unknown key: the decoder skips it, as fit() does when
                // it holds no value.
                None => self.leafless(depth + 1),
            };
            if !fits {
                return false;
            }
            if self.eat(b',') {
                continue;
            }
            return self.eat(b'}');
        }
    }

    /// A value with no non-null scalar anywhere in it (`null`, `[]`,
    /// `{"a": [null]}`…).
    fn leafless(&mut self, depth: usize) -> bool {
        self.skip_with(depth, true)
    }

    /// Skips any valid value.
    fn skip(&mut self, depth: usize) -> bool {
        self.skip_with(depth, false)
    }

    /// Skips a valid value; with `leafless`, one holding no scalar but null.
    fn skip_with(&mut self, depth: usize, leafless: bool) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        self.ws();
        match self.peek() {
            Some(b'n') => self.literal(b"null"),
            Some(b'[') => {
                self.i += 1;
                if self.eat(b']') {
                    return true;
                }
                loop {
                    if !self.skip_with(depth + 1, leafless) {
                        return false;
                    }
                    if self.eat(b',') {
                        continue;
                    }
                    return self.eat(b']');
                }
            }
            Some(b'{') => {
                self.i += 1;
                if self.eat(b'}') {
                    return true;
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"')
                        || self.string().is_none()
                        || !self.eat(b':')
                        || !self.skip_with(depth + 1, leafless)
                    {
                        return false;
                    }
                    if self.eat(b',') {
                        continue;
                    }
                    return self.eat(b'}');
                }
            }
            _ if leafless => false,
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'"') => self.string().is_some(),
            Some(b'-' | b'0'..=b'9') => self.number().is_some(),
            _ => false,
        }
    }

    /// A string at the opening quote: its raw contents (escapes as
    /// written), or `None` if it is not a valid JSON string or holds a
    /// surrogate escape.
    fn string(&mut self) -> Option<Text<'a>> {
        let start = self.i + 1;
        let mut at = start;
        let mut ascii = true;
        let mut escaped = false;
        loop {
            // Plain bytes run until a quote, a backslash, a control
            // character or a non-ASCII byte: eight at a time, then one by one.
            while let Some(chunk) = self.b.get(at..at + 8) {
                let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
                if special(word) {
                    break;
                }
                at += 8;
            }
            while let Some(&c) = self.b.get(at) {
                if SPECIAL[c as usize] {
                    break;
                }
                at += 1;
            }
            match *self.b.get(at)? {
                b'"' => {
                    self.i = at + 1;
                    let text = &self.b[start..at];
                    // Non-ASCII text must be UTF-8 (checked once per string).
                    return (ascii || std::str::from_utf8(text).is_ok())
                        .then_some(Text { raw: text, escaped });
                }
                b'\\' => match *self.b.get(at + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                        escaped = true;
                        at += 2;
                    }
                    b'u' => {
                        let hex = self.b.get(at + 2..at + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        let code = u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                        if (0xD800..=0xDFFF).contains(&code) {
                            return None;
                        }
                        escaped = true;
                        at += 6;
                    }
                    _ => return None,
                },
                c if c >= 0x80 => {
                    ascii = false;
                    at += 1;
                }
                // A raw control character.
                _ => return None,
            }
        }
    }

    /// Consumes one or more digits; false if there is none.
    fn digits(&mut self) -> bool {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i > start
    }

    /// A number as JSON writes it: an integer that fits 64 bits, or a
    /// fraction (with `.` or an exponent); `None` if malformed or larger.
    fn number(&mut self) -> Option<Number> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let digits = self.i;
        // Up to 18 digits always fit an i64; longer ones are parsed below.
        let mut value: i64 = 0;
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                while let Some(d @ b'0'..=b'9') = self.peek() {
                    value = value.wrapping_mul(10).wrapping_add(i64::from(d - b'0'));
                    self.i += 1;
                }
            }
            _ => return None,
        }
        let integer = &self.b[digits..self.i];
        let mut fraction = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.digits() {
                return None;
            }
            fraction = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !self.digits() {
                return None;
            }
            fraction = true;
        }
        if fraction {
            // serde refuses what overflows a double (`1e400`).
            let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
            return text
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(|_| Number::Fraction);
        }
        // serde reads `-0` as a double, to keep its sign.
        if negative && integer == b"0" {
            return Some(Number::Fraction);
        }
        if integer.len() <= 18 {
            return Some(Number::Int(if negative { -value } else { value }));
        }
        // Digits only: they parse, unless beyond 64 bits, where a column of
        // integers cannot hold them, nor a double exactly: "no" either way.
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        text.parse::<i64>().ok().map(Number::Int)
    }
}

/// A string's contents as written, and whether they hold an escape.
struct Text<'a> {
    raw: &'a [u8],
    escaped: bool,
}

/// Whether any of the eight bytes of `word` is in [`SPECIAL`] (SWAR).
fn special(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_in = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = zero_in(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_in(word ^ (ONES * u64::from(b'\\')));
    // Below 0x20 (on bytes without the high bit, which the last term catches).
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    (quote | backslash | control | (word & HIGH)) != 0
}

/// Bytes that end a run of plain string bytes.
static SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = i < 0x20 || i >= 0x80 || i == b'"' as usize || i == b'\\' as usize;
        i += 1;
    }
    table
};

/// A number's kind.
enum Number {
    /// An integer, and its value.
    Int(i64),
    /// A number with a fraction or an exponent.
    Fraction,
}

/// A struct's fields, the plans of the structs below them, and which
/// field followed which in the objects seen so far.
struct Plan<'s> {
    /// The fields (the test oracle looks them up by name).
    #[cfg_attr(not(test), allow(dead_code))]
    fields: &'s Fields,
    /// The fields' names.
    names: Vec<&'s [u8]>,
    /// Per field: the plan of the struct it holds (directly or in lists).
    below: Vec<Option<Plan<'s>>>,
    /// Per field: what its values must be.
    kinds: Vec<Kind<'s>>,
    /// The field whose key came after field `i` last time (at `i + 1`;
    /// the first key's at 0); `u32::MAX` if none yet.
    follow: Vec<Cell<u32>>,
}

impl<'s> Plan<'s> {
    fn new(fields: &'s Fields) -> Self {
        Self {
            fields,
            names: fields.iter().map(|f| f.name().as_bytes()).collect(),
            kinds: fields.iter().map(Kind::of).collect(),
            below: fields.iter().map(|f| Plan::of(f.data_type())).collect(),
            follow: (0..=fields.len()).map(|_| Cell::new(u32::MAX)).collect(),
        }
    }

    /// The plan of the struct `data_type` is, or holds through lists.
    fn of(data_type: &'s DataType) -> Option<Self> {
        match data_type {
            DataType::Struct(fields) => Some(Plan::new(fields)),
            DataType::List(item) | DataType::LargeList(item) => Plan::of(item.data_type()),
            _ => None,
        }
    }

    /// The index of the field named `key`, whose key comes after that of
    /// field `after` (`None`: the first key): first the field that came
    /// after it last time, so a record in the order of the one before
    /// finds each field with one comparison.
    fn find(&self, after: Option<usize>, key: &[u8]) -> Option<usize> {
        let slot = &self.follow[after.map_or(0, |a| a + 1)];
        let guess = slot.get() as usize;
        if self.names.get(guess) == Some(&key) {
            return Some(guess);
        }
        let index = self.names.iter().position(|n| *n == key)?;
        slot.set(index as u32);
        Some(index)
    }
}
