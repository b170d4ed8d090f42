//! JSON Schema → Arrow schema: the columns a pipeline's table will have.
//!
//! Supported: `type` (a name, or `["null", T]` for nullable), `properties`,
//! `required` (non-null), `items`, `additionalProperties` with a schema (→ Map),
//! `format: date-time` → Timestamp(µs, UTC), `format: date` → Date32, local
//! `$ref`s (`#/$defs/…`, `#/definitions/…`),
//! integer → Int64, number → Float64, boolean → Boolean, string → Utf8, nested
//! objects → Struct, arrays → List; a field of more than one type (`{}`, a
//! `type` list such as `["string", "integer"]`, `oneOf`, `anyOf`) → a text
//! column holding each value's JSON text. Annotation keys (`title`, `description`,
//! `$schema`, …) are ignored; any other keyword is an error, so that a schema
//! never means less than its author thinks.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};
use serde_json::{Map, Value};

/// Names of the metadata columns every row carries, in table order.
pub const METADATA_COLUMNS: [&str; 5] = [
    "_event_id",
    "_received_at",
    "_received_date",
    "_source",
    "_connection",
];

/// Field metadata marking a declared column that holds any JSON value as
/// its JSON text (a schema field without one type: `{}`, a type list,
/// `oneOf`/`anyOf`).
pub const JSON_TEXT: &str = "tributary.json_text";

/// Whether the column holds JSON text (see [`JSON_TEXT`]).
pub fn is_json_text(field: &Field) -> bool {
    field.metadata().contains_key(JSON_TEXT)
}

/// The metadata column of a `[connections]` pipeline that names the
/// connection (end-user account) each row came from.
pub const CONNECTION_COLUMN: &str = METADATA_COLUMNS[4];

/// The JSON Schema type names besides `null`.
const TYPES: [&str; 6] = ["string", "integer", "number", "boolean", "object", "array"];

/// Deepest nesting of objects, arrays and `$ref`s; deeper is a recursive schema.
const MAX_DEPTH: usize = 32;

/// Keywords that describe but do not constrain; accepted and ignored.
const ANNOTATIONS: [&str; 12] = [
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "enum",
    "const",
];

/// One problem in a schema file: where (a path of keys) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Location in the document, e.g. `properties.addresses.items.type`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Converts a JSON Schema document into the Arrow schema of the record columns.
/// Collects every problem rather than stopping at the first.
pub fn from_json_schema(doc: &Value) -> Result<Schema, Vec<SchemaError>> {
    let mut errors = Vec::new();
    let Some(obj) = doc.as_object() else {
        return Err(vec![err(
            "",
            "the schema must be a JSON object with \"type\": \"object\" and \"properties\"",
        )]);
    };
    let (ty, _) = type_of(obj, "", &mut errors);
    if ty.as_deref().is_some_and(|t| t != "object") {
        errors.push(err(
            "type",
            "the top-level type must be \"object\": each record is one JSON object",
        ));
    }
    let fields = object_fields(doc, obj, "", 0, &mut errors);
    if let Some(fields) = &fields {
        for f in fields.iter() {
            if METADATA_COLUMNS.contains(&f.name().as_str()) {
                errors.push(err(
                    &format!("properties.{}", f.name()),
                    "this name is reserved for a metadata column tributary adds; rename the property",
                ));
            }
        }
    } else if errors.is_empty() {
        errors.push(err(
            "properties",
            "the top-level object needs \"properties\" naming its fields",
        ));
    }
    match (fields, errors.is_empty()) {
        (Some(fields), true) => Ok(Schema::new(fields)),
        _ => Err(errors),
    }
}

/// The Arrow fields of the metadata columns; `_connection` only in a
/// pipeline with `[connections]`.
pub fn metadata_fields(connections: bool) -> Vec<Field> {
    let mut fields = vec![
        Field::new("_event_id", DataType::Utf8, false),
        Field::new(
            "_received_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("_received_date", DataType::Date32, false),
        Field::new("_source", DataType::Utf8, false),
    ];
    if connections {
        fields.push(Field::new(CONNECTION_COLUMN, DataType::Utf8, false));
    }
    fields
}

/// The full table schema: metadata columns first, then the record columns.
pub fn table_schema(record: &Schema, connections: bool) -> Schema {
    let mut fields = metadata_fields(connections);
    fields.extend(record.fields().iter().map(|f| f.as_ref().clone()));
    Schema::new(fields)
}

fn err(key: &str, message: &str) -> SchemaError {
    SchemaError {
        key: key.to_string(),
        message: message.to_string(),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Reads `type`: returns the non-null type name and whether `null` is allowed.
fn type_of(
    obj: &Map<String, Value>,
    at: &str,
    errors: &mut Vec<SchemaError>,
) -> (Option<String>, bool) {
    let key = join(at, "type");
    match obj.get("type") {
        None if obj.contains_key("properties") => (Some("object".into()), false),
        None if obj.contains_key("items") => (Some("array".into()), false),
        None => {
            errors.push(err(
                &key,
                "missing \"type\"; add one of string, integer, number, boolean, object, array",
            ));
            (None, false)
        }
        Some(Value::String(t)) => (Some(t.clone()), false),
        Some(Value::Array(types)) => {
            let mut nullable = false;
            let mut named = Vec::new();
            for t in types {
                match t.as_str() {
                    Some("null") => nullable = true,
                    Some(t) => named.push(t.to_string()),
                    None => {
                        errors.push(err(&key, "every entry of a \"type\" list must be a string"))
                    }
                }
            }
            if let Some(unknown) = named.iter().find(|t| !TYPES.contains(&t.as_str())) {
                errors.push(err(&key, &format!("unknown type \"{unknown}\"; use string, integer, number, boolean, object, array or null")));
                return (None, nullable);
            }
            if named.len() != 1 {
                errors.push(err(
                    &key,
                    "a \"type\" list needs a type besides \"null\", e.g. [\"null\", \"string\"]",
                ));
                return (None, nullable);
            }
            (named.pop(), nullable)
        }
        Some(_) => {
            errors.push(err(
                &key,
                "\"type\" must be a string or a list such as [\"null\", \"string\"]",
            ));
            (None, false)
        }
    }
}

/// Converts the `properties` of an object schema into fields; `None` if absent.
fn object_fields(
    root: &Value,
    obj: &Map<String, Value>,
    at: &str,
    depth: usize,
    errors: &mut Vec<SchemaError>,
) -> Option<Fields> {
    let props = obj.get("properties")?;
    let Some(props) = props.as_object() else {
        errors.push(err(
            &join(at, "properties"),
            "\"properties\" must be an object of field schemas",
        ));
        return None;
    };
    let required: Vec<&str> = match obj.get("required") {
        None => Vec::new(),
        Some(Value::Array(names)) => {
            let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
            for name in &names {
                if !props.contains_key(*name) {
                    errors.push(err(&join(at, "required"), &format!("\"{name}\" is required but not in \"properties\"; add it there or remove it here")));
                }
            }
            names
        }
        Some(_) => {
            errors.push(err(
                &join(at, "required"),
                "\"required\" must be a list of property names",
            ));
            Vec::new()
        }
    };
    let mut fields = Vec::with_capacity(props.len());
    for (name, sub) in props {
        let sub_at = join(&join(at, "properties"), name);
        if let Some((data_type, nullable, json)) = data_type(root, sub, &sub_at, depth, errors) {
            let nullable = nullable || !required.contains(&name.as_str());
            fields.push(field(name, data_type, nullable, json));
        }
    }
    Some(Fields::from(fields))
}

/// Converts one sub-schema; returns its type, whether it allows null and
/// whether it holds JSON text (a field of more than one type).
fn data_type(
    root: &Value,
    schema: &Value,
    at: &str,
    depth: usize,
    errors: &mut Vec<SchemaError>,
) -> Option<(DataType, bool, bool)> {
    let Some(obj) = schema.as_object() else {
        errors.push(err(
            at,
            "a field schema must be a JSON object such as {\"type\": \"string\"}",
        ));
        return None;
    };
    if let Some(reference) = obj.get("$ref") {
        let key = join(at, "$ref");
        let target = reference
            .as_str()
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|p| root.pointer(p));
        return match target {
            _ if depth >= MAX_DEPTH => {
                errors.push(err(
                    &key,
                    "$refs nest too deep (a recursive schema?); tables need a finite shape",
                ));
                None
            }
            Some(target) => data_type(root, target, at, depth + 1, errors),
            None => {
                errors.push(err(&key, "only local references such as \"#/$defs/address\" that exist in this file are supported"));
                None
            }
        };
    }
    if let Some(nullable) = any_json(obj) {
        return Some((DataType::Utf8, nullable, true));
    }
    for key in obj.keys() {
        let known = matches!(
            key.as_str(),
            "type" | "properties" | "required" | "items" | "format" | "additionalProperties"
        ) || ANNOTATIONS.contains(&key.as_str());
        if !known {
            errors.push(err(&join(at, key), &format!("keyword \"{key}\" is not supported; remove it or express the field with type/properties/items/format")));
        }
    }
    let (ty, nullable) = type_of(obj, at, errors);
    let data_type = match ty?.as_str() {
        "string" => match obj.get("format").and_then(Value::as_str) {
            Some("date-time") => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Some("date") => DataType::Date32,
            _ => DataType::Utf8,
        },
        "integer" => DataType::Int64,
        "number" => DataType::Float64,
        "boolean" => DataType::Boolean,
        "object" => {
            if let Some(fields) = object_fields(root, obj, at, depth + 1, errors) {
                DataType::Struct(fields)
            } else if let Some(values) = obj.get("additionalProperties").filter(|v| v.is_object()) {
                let (value_type, _, json) = data_type(
                    root,
                    values,
                    &join(at, "additionalProperties"),
                    depth + 1,
                    errors,
                )?;
                let entries = Fields::from(vec![
                    Field::new("keys", DataType::Utf8, false),
                    field("values", value_type, true, json),
                ]);
                DataType::Map(
                    Arc::new(Field::new("entries", DataType::Struct(entries), false)),
                    false,
                )
            } else {
                errors.push(err(at, "an object needs \"properties\" (→ struct) or an \"additionalProperties\" schema (→ map)"));
                return None;
            }
        }
        "array" => {
            let Some(items) = obj.get("items") else {
                errors.push(err(at, "an array needs \"items\" describing its elements"));
                return None;
            };
            let (item_type, _, json) =
                data_type(root, items, &join(at, "items"), depth + 1, errors)?;
            DataType::List(Arc::new(field("item", item_type, true, json)))
        }
        other => {
            errors.push(err(&join(at, "type"), &format!("unknown type \"{other}\"; use string, integer, number, boolean, object or array")));
            return None;
        }
    };
    Some((data_type, nullable, false))
}

/// Whether a field schema admits values of more than one type: `{}` (or only
/// annotations), a `type` list naming several types, or `oneOf`/`anyOf`.
/// Such a field becomes a JSON-text column; returns its nullability (a
/// union may hold null unless its type list leaves it out).
fn any_json(obj: &Map<String, Value>) -> Option<bool> {
    if obj.contains_key("oneOf") || obj.contains_key("anyOf") {
        return Some(true);
    }
    if obj.keys().all(|k| ANNOTATIONS.contains(&k.as_str())) {
        return Some(true);
    }
    let types = obj.get("type")?.as_array()?;
    let named = types.iter().filter(|t| t.as_str() != Some("null")).count();
    let known = types.iter().all(|t| {
        t.as_str()
            .is_some_and(|t| t == "null" || TYPES.contains(&t))
    });
    (named > 1 && known).then(|| types.iter().any(|t| t.as_str() == Some("null")))
}

/// A field; one that holds JSON text is marked so in its metadata
/// ([`JSON_TEXT`]).
fn field(name: &str, data_type: DataType, nullable: bool, json: bool) -> Field {
    let field = Field::new(name, data_type, nullable);
    if json {
        let marker = [(JSON_TEXT.to_string(), "true".to_string())];
        field.with_metadata(marker.into_iter().collect())
    } else {
        field
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_every_supported_shape() {
        let doc = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": {"type": "integer"},
                "email": {"type": ["null", "string"]},
                "score": {"type": "number"},
                "ok": {"type": "boolean"},
                "at": {"type": "string", "format": "date-time"},
                "day": {"type": "string", "format": "date"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "addr": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}},
                "meta": {"type": "object", "additionalProperties": {"type": "string"}},
                "home": {"$ref": "#/$defs/place"}
            },
            "$defs": {"place": {"type": "object", "properties": {"zip": {"type": "string"}}}}
        });
        let schema = from_json_schema(&doc).unwrap();
        let f = |n: &str| schema.field_with_name(n).unwrap().clone();
        assert_eq!(f("id").data_type(), &DataType::Int64);
        assert!(!f("id").is_nullable());
        assert!(f("email").is_nullable());
        assert_eq!(f("score").data_type(), &DataType::Float64);
        assert_eq!(f("ok").data_type(), &DataType::Boolean);
        assert_eq!(
            f("at").data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert_eq!(f("day").data_type(), &DataType::Date32);
        assert!(
            matches!(f("tags").data_type(), DataType::List(item) if item.data_type() == &DataType::Utf8)
        );
        let DataType::Struct(addr) = f("addr").data_type().clone() else {
            panic!("addr is not a struct")
        };
        assert!(!addr[0].is_nullable());
        assert!(matches!(f("meta").data_type(), DataType::Map(_, false)));
        assert!(
            matches!(f("home").data_type(), DataType::Struct(fields) if fields[0].name() == "zip")
        );
    }

    #[test]
    fn fields_of_more_than_one_type_hold_json_text() {
        let doc = json!({
            "type": "object",
            "required": ["either"],
            "properties": {
                "anything": {},
                "described": {"description": "any value"},
                "either": {"type": ["string", "integer"]},
                "maybe": {"type": ["null", "object", "array"]},
                "choice": {"oneOf": [{"type": "string"}, {"type": "object", "properties": {}}]},
                "some": {"anyOf": [{"type": "integer"}]},
                "list": {"type": "array", "items": {}}
            }
        });
        let schema = from_json_schema(&doc).unwrap();
        let json = is_json_text;
        for name in ["anything", "described", "either", "maybe", "choice", "some"] {
            let f = schema.field_with_name(name).unwrap();
            assert_eq!(f.data_type(), &DataType::Utf8, "{name}");
            assert!(json(f), "{name} is marked as JSON text");
        }
        assert!(!schema.field_with_name("either").unwrap().is_nullable());
        assert!(schema.field_with_name("maybe").unwrap().is_nullable());
        let DataType::List(item) = schema.field_with_name("list").unwrap().data_type() else {
            panic!("list is a list")
        };
        assert!(json(item));
    }

    #[test]
    fn recursive_and_foreign_refs_are_errors() {
        let doc = json!({
            "type": "object",
            "properties": {"node": {"$ref": "#/$defs/node"}, "far": {"$ref": "other.json#/x"}},
            "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}}
        });
        let errors = from_json_schema(&doc).unwrap_err();
        assert!(
            errors.iter().any(|e| e.message.contains("too deep")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.key == "properties.far.$ref"),
            "{errors:?}"
        );
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let doc = json!({
            "type": "object",
            "required": ["missing"],
            "properties": {
                "a": {"type": "strin"},
                "b": {"type": "array", "items": {"type": ["string", "intger"]}},
                "c": {"type": "array"},
                "d": {"allOf": [{"type": "string"}]},
                "_event_id": {"type": "string"}
            }
        });
        let errors = from_json_schema(&doc).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for key in [
            "required",
            "properties.a.type",
            "properties.b.items.type",
            "properties.c",
            "properties.d.allOf",
            "properties._event_id",
        ] {
            assert!(keys.contains(&key), "no error at {key}: {errors:?}");
        }
    }

    #[test]
    fn table_schema_puts_metadata_first() {
        let record = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        let names: Vec<String> = table_schema(&record, false)
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "_event_id",
                "_received_at",
                "_received_date",
                "_source",
                "id"
            ]
        );
    }
}
