//! The fast path of inference: whether a record is stored exactly as it is
//! by decoding its bytes ([`fits_as_is`]), checked in one streaming pass
//! that applies [`super::fit`]'s rules without building a tree.

use arrow_schema::{DataType, Field, Fields, Schema};
use serde::Deserialize as _;

use super::{is_json_text, EXACT_IN_DOUBLE, EXTRA_COLUMN};

/// Whether the record `json` (one JSON object) is stored exactly as it is
/// by decoding its bytes with `schema`: every value fits its column, no
/// key is unknown (unless it holds no value), and nothing needs the
/// `_extra` column. Then [`fit`] would change nothing, and the record skips
/// parsing into a tree. Reads the bytes once, allocating nothing for
/// unescaped keys.
pub fn fits_as_is(json: &[u8], schema: &Schema) -> bool {
    // One UTF-8 check of the whole record (fast), instead of one per string.
    let Ok(text) = std::str::from_utf8(json) else {
        return false;
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let fits = serde::de::DeserializeSeed::deserialize(
        Check {
            fields: Some(schema.fields()),
            data_type: None,
            record: true,
        },
        &mut de,
    );
    matches!(fits, Ok(true)) && de.end().is_ok()
}

/// The streaming form of [`fit`]'s rules: `true` if the value needs no change.
struct Check<'s> {
    /// A struct's (or the record's) fields.
    fields: Option<&'s Fields>,
    /// Any other column's type.
    data_type: Option<&'s DataType>,
    /// The record itself: `_extra` is not its field to fill.
    record: bool,
}

impl<'s> Check<'s> {
    fn of(field: &'s Field) -> Self {
        match field.data_type() {
            DataType::Struct(fields) => Check {
                fields: Some(fields),
                data_type: None,
                record: false,
            },
            other => Check {
                fields: None,
                data_type: Some(other),
                record: false,
            },
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Check<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        match self.data_type {
            // Types the decoder judges itself (timestamps, dates, maps…).
            Some(t)
                if !matches!(
                    t,
                    DataType::Utf8
                        | DataType::LargeUtf8
                        | DataType::Utf8View
                        | DataType::Int64
                        | DataType::Float64
                        | DataType::Boolean
                        | DataType::List(_)
                        | DataType::LargeList(_)
                ) =>
            {
                serde::de::IgnoredAny::deserialize(d).map(|_| true)
            }
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Check<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(true)
    }

    fn visit_none<E>(self) -> Result<bool, E> {
        Ok(true)
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(matches!(self.data_type, Some(DataType::Boolean)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<bool, E> {
        Ok(match self.data_type {
            Some(DataType::Int64) => true,
            Some(DataType::Float64) => v.unsigned_abs() <= EXACT_IN_DOUBLE,
            _ => false,
        })
    }

    fn visit_u64<E>(self, v: u64) -> Result<bool, E> {
        Ok(match self.data_type {
            Some(DataType::Int64) => i64::try_from(v).is_ok(),
            Some(DataType::Float64) => v <= EXACT_IN_DOUBLE,
            _ => false,
        })
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(matches!(self.data_type, Some(DataType::Float64)))
    }

    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(matches!(
            self.data_type,
            Some(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        ))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let item = match self.data_type {
            Some(DataType::List(item) | DataType::LargeList(item)) => Some(item),
            _ => None,
        };
        let Some(item) = item else {
            // Another kind than the column's: fit() moves or nulls it.
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            return Ok(false);
        };
        let mut fits = true;
        while let Some(ok) = seq.next_element_seed(Check::of(item))? {
            fits &= ok;
        }
        Ok(fits)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let Some(fields) = self.fields else {
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            return Ok(false);
        };
        let mut fits = true;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let field = match fields.find(&key) {
                Some((_, field)) if !(self.record && key == EXTRA_COLUMN) => Some(field),
                _ => None,
            };
            fits &= match field {
                Some(field) if is_json_text(field) => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    false
                }
                Some(field) => map.next_value_seed(Check::of(field))?,
                // An unknown key: the decoder skips it, as fit() does when
                // it holds no value.
                None => !map.next_value::<Leaf>()?.0,
            };
        }
        Ok(fits)
    }
}

/// Whether a JSON value holds a non-null scalar, read without keeping it.
struct Leaf(bool);

impl<'de> serde::Deserialize<'de> for Leaf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Leaf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Leaf, E> {
                Ok(Leaf(false))
            }
            fn visit_none<E>(self) -> Result<Leaf, E> {
                Ok(Leaf(false))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Leaf, E> {
                Ok(Leaf(true))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Leaf, E> {
                Ok(Leaf(true))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Leaf, E> {
                Ok(Leaf(true))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Leaf, E> {
                Ok(Leaf(true))
            }
            fn visit_str<E>(self, _: &str) -> Result<Leaf, E> {
                Ok(Leaf(true))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Leaf, A::Error> {
                let mut any = false;
                while let Some(Leaf(l)) = seq.next_element()? {
                    any |= l;
                }
                Ok(Leaf(any))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Leaf, A::Error> {
                let mut any = false;
                while let Some((_, Leaf(l))) = map.next_entry::<serde::de::IgnoredAny, Leaf>()? {
                    any |= l;
                }
                Ok(Leaf(any))
            }
        }
        d.deserialize_any(V)
    }
}
