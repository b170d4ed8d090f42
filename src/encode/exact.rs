//! Values arrive exactly as sent: the numbers arrow-json would store as
//! another number are found here first, so their event becomes a dead letter
//! with the reason instead of a row holding a different value.
//!
//! arrow-json reads a number for an integer column as an integer, and if that
//! fails, as a double cast to the column's type: `2.7` is stored as `2` and
//! `-0.5` as `0`. For a double column it rounds an integer a double cannot
//! hold (`9007199254740993` becomes `…992`). The fast decoder declines every
//! such value, and the encoder asks [`misfit`] before arrow-json decodes.
//! What arrow-json refuses by itself (a string where a number belongs, a
//! value beyond the column's range) is left to it: its error is the reason.
//!
//! A number written with a fraction or an exponent (`2.0`, `1e3`) does not
//! fit an integer column either: once parsed, `1.0000000000000000001` and
//! `4503599627370496.5` are integral doubles, so only the text could tell
//! them from `1.0`, and inference puts such values in `_extra` alike.

use arrow_schema::{DataType, Field, Fields};
use serde_json::{Map, Number, Value};

/// Why `object` (a record) cannot be stored as it is under `fields`: the
/// first number a decoder would change, with its JSON pointer; `None` when
/// every number is stored exactly.
pub fn misfit(fields: &Fields, object: &Map<String, Value>) -> Option<String> {
    let mut path = String::new();
    in_object(fields, object, &mut path)
}

/// [`misfit`] of a record's JSON bytes; `None` also when they are not a JSON
/// object (the decoder then says what is wrong).
pub fn misfit_in(fields: &Fields, record: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(record) {
        Ok(Value::Object(object)) => misfit(fields, &object),
        _ => None,
    }
}

/// Whether any column of `fields`, at any depth, holds numbers.
pub fn has_numbers(fields: &Fields) -> bool {
    fields.iter().any(|f| numeric(f.data_type()))
}

fn numeric(data_type: &DataType) -> bool {
    match data_type {
        DataType::Struct(fields) => has_numbers(fields),
        DataType::List(item) | DataType::LargeList(item) => numeric(item.data_type()),
        other => other.is_integer() || other.is_floating(),
    }
}

fn in_object(fields: &Fields, object: &Map<String, Value>, path: &mut String) -> Option<String> {
    for (key, value) in object {
        let Some((_, field)) = fields.find(key) else {
            continue;
        };
        let len = path.len();
        path.push('/');
        path.push_str(&key.replace('~', "~0").replace('/', "~1"));
        let found = in_value(field, value, path);
        path.truncate(len);
        if found.is_some() {
            return found;
        }
    }
    None
}

fn in_value(field: &Field, value: &Value, path: &mut String) -> Option<String> {
    match (field.data_type(), value) {
        (data_type, Value::Number(n)) if data_type.is_integer() => {
            integer_misfit(n, data_type).map(|why| format!("{path}: {n} {why}"))
        }
        (data_type, Value::Number(n)) if data_type.is_floating() => {
            double_misfit(n).map(|why| format!("{path}: {n} {why}"))
        }
        (DataType::Struct(fields), Value::Object(object)) => in_object(fields, object, path),
        (DataType::List(item) | DataType::LargeList(item), Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                let found = in_value(item, v, path);
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        _ => None,
    }
}

/// Why `n` is not stored exactly in an integer column of `data_type`.
fn integer_misfit(n: &Number, data_type: &DataType) -> Option<String> {
    if n.is_i64() || (n.is_u64() && *data_type == DataType::UInt64) {
        // In the column's range or not, arrow-json decides exactly.
        return None;
    }
    if n.is_u64() {
        return Some(format!("is beyond the range of the {data_type} column"));
    }
    Some(format!(
        "is not an integer, but the column is {data_type}; declare the field as \"number\" to keep fractions"
    ))
}

/// Why integer `n` is not held exactly by a double.
fn double_misfit(n: &Number) -> Option<String> {
    let exact = if let Some(i) = n.as_i64() {
        (i as f64) as i128 == i128::from(i)
    } else if let Some(u) = n.as_u64() {
        (u as f64) as u128 == u128::from(u)
    } else {
        // Written as a fraction: parsed correctly rounded, the double it names.
        true
    };
    (!exact).then(|| {
        "is an integer a double cannot hold exactly; declare the field as \"integer\" or send it as a string"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn fields() -> Fields {
        Fields::from(vec![
            Field::new("count", DataType::Int64, true),
            Field::new("price", DataType::Float64, true),
            Field::new(
                "lines",
                DataType::List(Arc::new(Field::new(
                    "item",
                    DataType::Struct(Fields::from(vec![Field::new("qty", DataType::Int64, true)])),
                    true,
                ))),
                true,
            ),
        ])
    }

    fn check(json: &str) -> Option<String> {
        misfit_in(&fields(), json.as_bytes())
    }

    #[test]
    fn a_fraction_in_an_integer_column_is_named_with_its_place() {
        let why = check(r#"{"count": 2.7}"#).expect("2.7 is no integer");
        assert!(why.starts_with("/count: 2.7 is not an integer"), "{why}");
        assert!(check(r#"{"count": -0.5}"#).is_some());
        let nested = check(r#"{"lines": [{"qty": 1}, {"qty": 1.5}]}"#).expect("nested");
        assert!(nested.starts_with("/lines/1/qty: 1.5"), "{nested}");
    }

    #[test]
    fn integers_fit_integer_columns_and_fractions_do_not() {
        assert_eq!(check(r#"{"count": 9223372036854775807}"#), None);
        assert_eq!(check(r#"{"count": -9223372036854775808}"#), None);
        assert!(
            check(r#"{"count": 9223372036854775808}"#).is_some(),
            "beyond i64"
        );
        assert!(
            check(r#"{"count": 1e19}"#).is_some(),
            "beyond i64, as a fraction"
        );
        for written in ["2.0", "1e3", "1.0000000000000000001", "4503599627370496.5"] {
            assert!(
                check(&format!(r#"{{"count": {written}}}"#)).is_some(),
                "{written} is not an integer as written"
            );
        }
    }

    #[test]
    fn an_integer_a_double_rounds_does_not_fit_a_number_column() {
        assert_eq!(check(r#"{"price": 9007199254740992}"#), None, "2^53");
        assert!(
            check(r#"{"price": 9007199254740993}"#).is_some(),
            "2^53 + 1"
        );
        assert!(check(r#"{"price": -9007199254740993}"#).is_some());
        assert_eq!(
            check(r#"{"price": 1152921504606846976}"#),
            None,
            "2^60 is exact"
        );
        assert_eq!(check(r#"{"price": 116.47000000812113}"#), None);
        assert_eq!(
            check(r#"{"price": "text", "other": 2.5}"#),
            None,
            "left to the decoder"
        );
    }
}
