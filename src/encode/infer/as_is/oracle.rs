//! The first fast check, on serde's streaming parser: slower than the
//! byte scanner in [`super`], and kept as the reference the scanner is
//! tested against (the scanner may only say "as is" where this does).

use arrow_schema::{DataType, Field, Schema};
use serde::Deserialize as _;

use super::super::{is_json_text, EXACT_IN_DOUBLE, EXTRA_COLUMN};
use super::Plan;

/// Whether `json` fits `schema` as it is, by serde.
pub fn fits(json: &[u8], schema: &Schema) -> bool {
    let plan = Plan::new(schema.fields());
    let Ok(text) = std::str::from_utf8(json) else {
        return false;
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let fits = serde::de::DeserializeSeed::deserialize(
        Check {
            plan: Some(&plan),
            data_type: None,
            record: true,
        },
        &mut de,
    );
    matches!(fits, Ok(true)) && de.end().is_ok()
}

/// The streaming form of [`fit`]'s rules: `true` if the value needs no change.
struct Check<'p, 's> {
    /// The plan of a struct column (or the record), or of the struct a list
    /// column holds.
    plan: Option<&'p Plan<'s>>,
    /// Any column's type but a struct's.
    data_type: Option<&'s DataType>,
    /// The record itself: `_extra` is not its field to fill.
    record: bool,
}

impl<'p, 's> Check<'p, 's> {
    /// The check of a value of `field`, `below` the plan it holds.
    fn of(field: &'s Field, below: Option<&'p Plan<'s>>) -> Self {
        Check {
            plan: below,
            data_type: match field.data_type() {
                DataType::Struct(_) => None,
                other => Some(other),
            },
            record: false,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Check<'_, '_> {
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

impl<'de> serde::de::Visitor<'de> for Check<'_, '_> {
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
        while let Some(ok) = seq.next_element_seed(Check::of(item, self.plan))? {
            fits &= ok;
        }
        Ok(fits)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let Some(plan) = self.plan.filter(|_| self.data_type.is_none()) else {
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            return Ok(false);
        };
        let mut fits = true;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let index = match plan.fields.find(&key) {
                Some((index, _)) if !(self.record && key == EXTRA_COLUMN) => Some(index),
                _ => None,
            };
            fits &= match index {
                Some(i) if is_json_text(&plan.fields[i]) => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    false
                }
                Some(i) => {
                    map.next_value_seed(Check::of(&plan.fields[i], plan.below[i].as_ref()))?
                }
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
