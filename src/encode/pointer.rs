//! JSON pointers (RFC 6901) over raw bytes: finds the record inside an event
//! without re-serialising it, so the encoder reads the original bytes.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::value::RawValue;

/// Splits a pointer into unescaped tokens (`""` → none).
pub fn tokens(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// Why an event holds no record: a dead letter's reason.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The event is not JSON.
    #[error("the event is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// Nothing at `record_path` (the path up to the missing token).
    #[error("record_path /{0} not found in the event")]
    NotFound(String),
    /// A scalar on the way to `record_path`.
    #[error("record_path /{0}: the event has no object or array there")]
    NotContainer(String),
    /// An array where one record was expected.
    #[error("the record is a JSON array, not an object; point record_path at one record")]
    Array,
    /// A scalar where one record was expected.
    #[error("the record is not a JSON object")]
    NotObject,
}

/// The bytes of the record at `tokens` in `payload`; it must be a JSON object.
pub fn record<'a>(payload: &'a [u8], tokens: &[String]) -> Result<&'a [u8], RecordError> {
    let current = value(payload, tokens)
        .map_err(RecordError::NotJson)?
        .map_err(|depth| match depth {
            Missing::At(depth) => RecordError::NotFound(tokens[..=depth].join("/")),
            Missing::NotContainer(depth) => RecordError::NotContainer(tokens[..=depth].join("/")),
        })?;
    match first_byte(current) {
        Some(b'{') => Ok(current),
        Some(b'[') => Err(RecordError::Array),
        _ => Err(RecordError::NotObject),
    }
}

/// Why a pointer found nothing: the token at this depth is missing, or the
/// value before it is neither an object nor an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No such key or index.
    At(usize),
    /// A scalar where an object or array was needed.
    NotContainer(usize),
}

/// The bytes of the value at `tokens` in `json`: `Err` if the JSON on the
/// way is invalid, `Ok(Err(_))` if the pointer leads nowhere.
pub fn value<'a>(
    json: &'a [u8],
    tokens: &[String],
) -> Result<Result<&'a [u8], Missing>, serde_json::Error> {
    let mut current: &'a [u8] = json;
    for (depth, token) in tokens.iter().enumerate() {
        let found = match first_byte(current) {
            Some(b'{') => {
                let map: HashMap<Cow<'a, str>, &'a RawValue> = serde_json::from_slice(current)?;
                map.get(token.as_str()).map(|v| v.get().as_bytes())
            }
            Some(b'[') => {
                let list: Vec<&'a RawValue> = serde_json::from_slice(current)?;
                token
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| list.get(i))
                    .map(|v| v.get().as_bytes())
            }
            _ => return Ok(Err(Missing::NotContainer(depth))),
        };
        match found {
            Some(v) => current = v,
            None => return Ok(Err(Missing::At(depth))),
        }
    }
    Ok(Ok(current))
}

/// The values at several pointers into one JSON document, reading its top
/// level once (the bytes at `pointers[i]`, or `None` where nothing is).
/// Cheaper than [`value`] per pointer: no map is built, other keys are skipped.
pub fn values<'a>(json: &'a [u8], pointers: &[Vec<String>]) -> Vec<Option<&'a [u8]>> {
    let mut top: Vec<Option<&'a RawValue>> = vec![None; pointers.len()];
    let visitor = TopLevel {
        pointers,
        out: &mut top,
        list: None,
    };
    let fast = pointers.iter().all(|p| !p.is_empty())
        && first_byte(json) == Some(b'{')
        && serde::Deserializer::deserialize_map(
            &mut serde_json::Deserializer::from_slice(json),
            visitor,
        )
        .is_ok();
    pointers
        .iter()
        .zip(top)
        .map(|(pointer, found)| {
            if !fast {
                // Escaped keys, a non-object or an empty pointer: the general path.
                return value(json, pointer).ok().and_then(Result::ok);
            }
            below(found, pointer)
        })
        .collect()
}

/// The value at `pointer` given `top`, the value at its first token.
fn below<'a>(top: Option<&'a RawValue>, pointer: &[String]) -> Option<&'a [u8]> {
    value(top?.get().as_bytes(), &pointer[1..])
        .ok()
        .and_then(Result::ok)
}

/// Like [`values`], with the elements of the array at the top-level key
/// `list` split in the same pass (a page's records under `"/data"`), not in
/// a second pass over the array. `None` where that pass cannot be taken (not
/// an object, an escaped key, no array at `list`, a pointer into `list`): the
/// caller then reads the document as [`values`] does.
pub fn values_and_list<'a>(
    json: &'a [u8],
    list: &str,
    pointers: &[Vec<String>],
) -> Option<(Vec<&'a RawValue>, Vec<Option<&'a [u8]>>)> {
    let plain = |p: &Vec<String>| p.first().is_some_and(|k| k != list);
    if first_byte(json) != Some(b'{') || !pointers.iter().all(plain) {
        return None;
    }
    let mut top: Vec<Option<&'a RawValue>> = vec![None; pointers.len()];
    let mut elements = None;
    let visitor = TopLevel {
        pointers,
        out: &mut top,
        list: Some((list, &mut elements)),
    };
    serde::Deserializer::deserialize_map(&mut serde_json::Deserializer::from_slice(json), visitor)
        .ok()?;
    let found = pointers
        .iter()
        .zip(top)
        .map(|(pointer, found)| below(found, pointer))
        .collect();
    Some((elements?, found))
}

struct TopLevel<'k, 'a> {
    /// Each pointer's first token is a top-level key.
    pointers: &'k [Vec<String>],
    out: &'k mut [Option<&'a RawValue>],
    /// A top-level key whose array is split into its elements as it is read.
    list: Option<(&'k str, &'k mut Option<Vec<&'a RawValue>>)>,
}

impl<'a> serde::de::Visitor<'a> for TopLevel<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: serde::de::MapAccess<'a>>(mut self, mut map: M) -> Result<(), M::Error> {
        while let Some(key) = map.next_key::<&'a str>()? {
            if let Some((name, elements)) = &mut self.list {
                if key == *name {
                    **elements = Some(map.next_value::<Vec<&'a RawValue>>()?);
                    continue;
                }
            }
            let wanted = |p: &Vec<String>| p.first().is_some_and(|k| k == key);
            if self.pointers.iter().any(wanted) {
                let found = map.next_value::<&'a RawValue>()?;
                for (p, out) in self.pointers.iter().zip(self.out.iter_mut()) {
                    if wanted(p) {
                        *out = Some(found);
                    }
                }
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The first byte that is not JSON whitespace.
pub fn first_byte(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_records_by_their_original_bytes() {
        let event = br#"{"topic": "x", "customers": {"id": 1, "a~b": {"c/d": [{"z": 2}]}}}"#;
        assert_eq!(record(event, &tokens("")).unwrap(), event);
        assert_eq!(
            record(event, &tokens("/customers/a~0b/c~1d/0")).unwrap(),
            br#"{"z": 2}"#
        );
        assert!(record(event, &tokens("/orders"))
            .unwrap_err()
            .to_string()
            .contains("/orders not found"));
        assert!(record(event, &tokens("/topic/x"))
            .unwrap_err()
            .to_string()
            .contains("no object or array"));
        assert!(record(event, &tokens("/customers/a~0b/c~1d"))
            .unwrap_err()
            .to_string()
            .contains("array"));
        assert!(record(b"42", &[])
            .unwrap_err()
            .to_string()
            .contains("not a JSON object"));
    }

    #[test]
    fn several_values_in_one_pass() {
        let json = br#"{"id": 7, "a": {"b": "x"}, "skip": [1, {"c": 2}], "u": "2024"}"#;
        let pointers: Vec<Vec<String>> = ["/id", "/a/b", "/u", "/missing", "/a"]
            .iter()
            .map(|p| tokens(p))
            .collect();
        let found = values(json, &pointers);
        let want: [Option<&[u8]>; 5] = [
            Some(b"7"),
            Some(b"\"x\""),
            Some(b"\"2024\""),
            None,
            Some(br#"{"b": "x"}"#),
        ];
        assert_eq!(found, want);
        // The same, with the array at "/skip" split as it is read.
        let (list, found) = values_and_list(json, "skip", &pointers).unwrap();
        let list: Vec<&str> = list.iter().map(|v| v.get()).collect();
        assert_eq!(list, ["1", r#"{"c": 2}"#]);
        assert_eq!(found, want);
        // No such pass: no array there, no key, a pointer into the list.
        assert!(values_and_list(json, "a", &pointers).is_none());
        assert!(values_and_list(json, "none", &pointers).is_none());
        assert!(values_and_list(json, "id", &pointers).is_none());
        assert!(values_and_list(b"[1]", "a", &[]).is_none());
        // Escaped keys take the general path and still resolve.
        let escaped = br#"{"i\u0064": 8}"#;
        assert_eq!(values(escaped, &[tokens("/id")]), vec![Some(&b"8"[..])]);
    }
}
