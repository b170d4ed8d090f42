//! `schema = "infer"`: the record schema grows by one nullable column for
//! each new top-level field, typed by arrow-json's inference from its first
//! non-null value (integer → Int64, number → Float64, string → Utf8, object →
//! Struct, array → List). Existing columns keep their type, so a later value
//! of another type becomes a dead letter. Fields inside an existing struct
//! column are not added (a known limit).

use std::sync::Arc;

use arrow_json::reader::infer_json_schema_from_iterator;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use tracing::warn;

use crate::schema::METADATA_COLUMNS;

/// Characters a Delta column name may not hold without column mapping.
const NOT_IN_NAMES: &[char] = &[' ', ',', ';', '{', '}', '(', ')', '\n', '\t', '='];

/// `schema` plus a column for each new field of `records`, if there is one.
pub fn grow(schema: &SchemaRef, records: &[&[u8]]) -> Option<SchemaRef> {
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    let mut grew = false;
    for record in records {
        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(record) else {
            continue;
        };
        for (name, value) in map {
            if value.is_null() || fields.iter().any(|f| f.name() == &name) {
                continue;
            }
            // Delta column names are case-insensitive: `Email` next to `email` is a clash.
            let clash = fields.iter().any(|f| f.name().eq_ignore_ascii_case(&name))
                || METADATA_COLUMNS
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(&name));
            if clash || !valid_names(&name, &value) {
                warn!(field = %name, "A record field cannot be a column (its name clashes with another column's when case is ignored, or it or a nested key holds a character tables do not allow); it is not written.");
                continue;
            }
            let object = serde_json::Value::Object([(name, value)].into_iter().collect());
            let Ok(inferred) = infer_json_schema_from_iterator(std::iter::once(Ok(object))) else {
                continue;
            };
            let field = inferred.field(0).clone().with_nullable(true);
            // An empty array or object says nothing yet; wait for a value.
            if has_null(field.data_type()) {
                continue;
            }
            fields.push(Arc::new(field));
            grew = true;
        }
    }
    grew.then(|| Arc::new(Schema::new(fields)))
}

/// Whether `name` and every key nested in `value` can be a column name.
fn valid_names(name: &str, value: &serde_json::Value) -> bool {
    let ok = |n: &str| !n.is_empty() && !n.contains(NOT_IN_NAMES);
    ok(name)
        && match value {
            serde_json::Value::Object(map) => {
                let mut seen = std::collections::HashSet::new();
                map.iter()
                    .all(|(k, v)| seen.insert(k.to_ascii_lowercase()) && valid_names(k, v))
            }
            serde_json::Value::Array(items) => items.iter().all(|v| valid_names("item", v)),
            _ => true,
        }
}

fn has_null(t: &DataType) -> bool {
    match t {
        DataType::Null => true,
        DataType::List(f) | DataType::LargeList(f) => has_null(f.data_type()),
        DataType::Struct(fields) => {
            fields.is_empty() || fields.iter().any(|f| has_null(f.data_type()))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_fields_become_nullable_columns_and_old_ones_keep_their_type() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let records: Vec<&[u8]> = vec![
            br#"{"id": "not an int", "tier": "gold", "n": 1.5, "empty": [], "gone": null}"#,
            br#"{"id": 2, "tags": ["a"], "tier": 7, "bad name": 1, "_source": "x", "Tier": "x", "m": {"a b": 1}}"#,
        ];
        let grown = grow(&schema, &records).unwrap();
        let shape: Vec<_> = grown
            .fields()
            .iter()
            .map(|f| {
                (
                    f.name().as_str(),
                    f.data_type().to_string(),
                    f.is_nullable(),
                )
            })
            .collect();
        // The first record's new fields (in name order), then the second's.
        assert_eq!(shape[0], ("id", "Int64".to_string(), false));
        assert_eq!(shape[1], ("n", "Float64".to_string(), true));
        assert_eq!(shape[2], ("tier", "Utf8".to_string(), true));
        assert_eq!(shape[3].0, "tags");
        assert_eq!(shape.len(), 4, "{shape:?}");
        assert!(
            grow(&grown, &records).is_none(),
            "nothing new the second time"
        );
    }
}
