//! The JSON grammar of the one-pass decoder: a cursor over one record's
//! bytes that reads strings, numbers and literals, skips values, and
//! declines (`None`) anything that is not JSON.

/// Why a record is left to arrow-json.
pub(super) type Decline = Option<()>;

/// Deepest nesting skipped in an unknown field; deeper is left to arrow-json.
const MAX_SKIP_DEPTH: usize = 64;

/// A position in one record's bytes.
pub(super) struct Cursor<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) at: usize,
    /// Unescaped text of a string with escapes.
    pub(super) scratch: &'a mut Vec<u8>,
    /// See [`super::decode_fitting`].
    pub(super) strict: bool,
}

impl<'a> Cursor<'a> {
    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    pub(super) fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    pub(super) fn literal(&mut self, word: &[u8]) -> Decline {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Some(())
        } else {
            None
        }
    }

    /// An object key's text (unescaped into the scratch buffer if needed).
    pub(super) fn key(&mut self) -> Option<&[u8]> {
        if self.strict {
            let (start, end, escaped) = self.raw_string()?;
            let key = &self.bytes[start..end];
            return (!escaped && key != crate::encode::infer::EXTRA_COLUMN.as_bytes())
                .then_some(key);
        }
        self.text()
    }

    /// A string's unescaped text; the cursor is on its opening quote.
    pub(super) fn text(&mut self) -> Option<&[u8]> {
        let (start, end, escaped) = self.raw_string()?;
        if !escaped {
            return Some(&self.bytes[start..end]);
        }
        self.scratch.clear();
        unescape(&self.bytes[start..end], self.scratch)?;
        Some(self.scratch.as_slice())
    }

    /// Appends a string's unescaped text to `out`.
    pub(super) fn string_into(&mut self, out: &mut Vec<u8>) -> Decline {
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
    pub(super) fn raw_string(&mut self) -> Option<(usize, usize, bool)> {
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
    pub(super) fn number(&mut self) -> Option<&'a [u8]> {
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
    pub(super) fn integer(&mut self) -> Option<i64> {
        let text = self.number()?;
        if text.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            return None;
        }
        std::str::from_utf8(text).ok()?.parse().ok()
    }

    /// Skips any JSON value, strictly: what is not JSON declines. With
    /// `leafless`, so does any scalar but null (a value inference keeps
    /// nothing of: `null`, `[]`, `{"a": [null]}`).
    pub(super) fn skip_value(&mut self, leafless: bool) -> Decline {
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

    /// After an item of an object or array: true on a comma (another item
    /// follows), false on `close` (consumed); anything else declines.
    pub(super) fn another(&mut self, close: u8) -> Option<bool> {
        self.whitespace();
        match self.peek()? {
            b',' => {
                self.at += 1;
                Some(true)
            }
            b if b == close => {
                self.at += 1;
                Some(false)
            }
            _ => None,
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
