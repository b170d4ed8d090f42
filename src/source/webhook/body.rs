//! Splits a webhook request body into events without copying them: one JSON
//! value, a JSON array (each element one event) or NDJSON (one event a line).
//! Every event is validated as JSON here, so the log only ever holds valid JSON.

use bytes::Bytes;
use serde_json::value::RawValue;

/// Why a body was refused, for a 400 answer a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Nothing but whitespace.
    #[error("the request body is empty; send one JSON event, a JSON array of events, or NDJSON")]
    Empty,
    /// Not JSON.
    #[error("the request body is not valid JSON: {0}; send one JSON event, a JSON array of events, or NDJSON with Content-Type: application/x-ndjson")]
    Json(String),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("the JSON nests deeper than {MAX_DEPTH} levels (at byte {at}); real events are far flatter, so this looks like an attack or a bug in the sender")]
    TooDeep {
        /// Byte offset where the limit was passed.
        at: usize,
    },
    /// One NDJSON line is not JSON.
    #[error(
        "line {line} of the NDJSON body is not valid JSON: {message}; send one JSON value per line"
    )]
    Line {
        /// 1-based line number.
        line: usize,
        /// What the parser said.
        message: String,
    },
}

/// The body's format, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON value or an array of them.
    Json,
    /// One JSON value per line.
    Ndjson,
}

impl Format {
    /// NDJSON for `application/x-ndjson` (and its aliases), JSON otherwise.
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        let essence = content_type
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/jsonlines" => Format::Ndjson,
            _ => Format::Json,
        }
    }
}

/// The events of `body`, each a zero-copy slice of it.
pub fn split(body: &Bytes, format: Format) -> Result<Vec<Bytes>, BodyError> {
    let first = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or(BodyError::Empty)?;
    // serde_json checks no depth when it only skips over values; everything
    // after the log (schema inference, encoding) must never meet a 10k-deep value.
    if let Some(at) = too_deep(body, format) {
        return Err(BodyError::TooDeep { at });
    }
    match format {
        Format::Ndjson => {
            let mut events = Vec::new();
            for (i, line) in body.split(|b| *b == b'\n').enumerate() {
                let trimmed = line.trim_ascii();
                if trimmed.is_empty() {
                    continue;
                }
                let value: &RawValue =
                    serde_json::from_slice(trimmed).map_err(|e| BodyError::Line {
                        line: i + 1,
                        message: e.to_string(),
                    })?;
                events.push(body.slice_ref(value.get().as_bytes()));
            }
            Ok(events)
        }
        Format::Json if body[first] == b'[' => {
            let values: Vec<&RawValue> =
                serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))?;
            Ok(values
                .into_iter()
                .map(|v| body.slice_ref(v.get().as_bytes()))
                .collect())
        }
        Format::Json => {
            let value: &RawValue =
                serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))?;
            Ok(vec![body.slice_ref(value.get().as_bytes())])
        }
    }
}

/// Deepest accepted nesting of arrays and objects (an array of events counts one).
pub const MAX_DEPTH: usize = 128;

/// The offset where nesting passes [`MAX_DEPTH`], if it does. Brackets inside
/// strings do not count; one pass over the bytes.
fn too_deep(body: &[u8], format: Format) -> Option<usize> {
    // Fast path: with no more openers than the limit, no nesting can pass it.
    memchr::memchr2_iter(b'[', b'{', body).nth(MAX_DEPTH)?;
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in body.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            // NDJSON: each line starts afresh (a line never ends inside a
            // value). In JSON a newline is only whitespace.
            b'\n' if format == Format::Ndjson => depth = 0,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(events: Vec<Bytes>) -> Vec<String> {
        events
            .into_iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn one_value_an_array_and_ndjson() {
        let one = Bytes::from_static(b" {\"a\": 1} \n");
        assert_eq!(texts(split(&one, Format::Json).unwrap()), ["{\"a\": 1}"]);
        let array = Bytes::from_static(b"[{\"a\":1}, {\"b\": [2]} ]");
        assert_eq!(
            texts(split(&array, Format::Json).unwrap()),
            ["{\"a\":1}", "{\"b\": [2]}"]
        );
        let nd = Bytes::from_static(b"{\"a\":1}\r\n\n  {\"b\":2}\n");
        assert_eq!(
            texts(split(&nd, Format::Ndjson).unwrap()),
            ["{\"a\":1}", "{\"b\":2}"]
        );
        assert!(split(&Bytes::from_static(b"[]"), Format::Json)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = |n: usize| Bytes::from(format!("{}{}", "[".repeat(n), "]".repeat(n)));
        assert!(split(&deep(MAX_DEPTH), Format::Json).is_ok());
        let e = split(&deep(100_000), Format::Json).unwrap_err();
        assert_eq!(e, BodyError::TooDeep { at: MAX_DEPTH });
        assert!(e.to_string().contains("deeper than 128 levels"), "{e}");
        // Brackets in strings, escaped quotes included, do not count.
        let text = format!("{{\"a\": \"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert!(split(&Bytes::from(text), Format::Json).is_ok());
        let lines = "[[[[]]]]\n".repeat(100);
        assert!(split(&Bytes::from(lines), Format::Ndjson).is_ok());
        // In JSON a newline is whitespace: it does not reset the depth.
        let newline_deep = Bytes::from("[\n".repeat(10_000));
        assert_eq!(
            split(&newline_deep, Format::Json).unwrap_err(),
            BodyError::TooDeep { at: 2 * MAX_DEPTH }
        );
    }

    #[test]
    fn refusals_say_where_and_what_to_send() {
        assert_eq!(
            split(&Bytes::from_static(b"  "), Format::Json),
            Err(BodyError::Empty)
        );
        let e = split(&Bytes::from_static(b"{\"a\": }"), Format::Json).unwrap_err();
        assert!(e.to_string().contains("line 1 column 7"), "{e}");
        let e = split(&Bytes::from_static(b"{}\n{oops}\n"), Format::Ndjson).unwrap_err();
        assert!(matches!(e, BodyError::Line { line: 2, .. }), "{e}");
        let e = split(&Bytes::from_static(b"{} {}"), Format::Json).unwrap_err();
        assert!(e.to_string().contains("trailing characters"), "{e}");
        assert!(split(&Bytes::from(vec![b'"', 0xff, b'"']), Format::Json).is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Format::from_content_type(Some("application/x-ndjson; charset=utf-8")),
            Format::Ndjson
        );
        assert_eq!(
            Format::from_content_type(Some("application/json")),
            Format::Json
        );
        assert_eq!(Format::from_content_type(None), Format::Json);
    }
}
