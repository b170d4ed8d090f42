//! `schema = "infer"`: the record schema is decided from every value a flush
//! holds, then each record is fitted to it, and whatever still does not fit
//! is kept in the `_extra` column. Nothing of an accepted record is dropped.
//!
//! **Deciding types.** Every record of the flush is observed first
//! ([`Shape`]): how often each position held a boolean, an integer, a
//! fractional number, a string, a non-empty object or a non-empty array.
//! `null`, `[]` and `{}` say nothing and never fix a type. A new position
//! takes the kind seen most often (ties: object, array, string, number,
//! boolean); integers and fractions together make a double. New fields join
//! in name order, so the schema does not depend on the order events arrive
//! in within a flush. A column that exists keeps its type for good (files
//! already written use it); a struct gains new nested fields, and a list's
//! struct items do too.
//!
//! **Fitting.** A value fits a column of its own kind (an integer a double
//! column only while a double holds it exactly). A value that does not fit,
//! a field whose name cannot be a column, and anything nested deeper than
//! [`MAX_NESTING`] or beyond [`MAX_FIELDS`] columns is moved to `_extra`: one
//! JSON object per row, keyed by the value's JSON pointer (RFC 6901) in the
//! record, e.g. `{"/data/object/amount": "12.00"}`. Its slot in the typed
//! columns is null. So every leaf value is either in its typed column or in
//! `_extra`, at its own path.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use serde_json::{Map, Value};

use crate::schema::METADATA_COLUMNS;

/// The column holding, as JSON text, the values of a row that fit no typed
/// column: `{"<JSON pointer>": value, …}`; null when everything fit.
pub const EXTRA_COLUMN: &str = "_extra";

/// Deepest nesting of structs and lists made into columns; deeper values go
/// to `_extra` whole.
pub const MAX_NESTING: usize = 16;

/// Most fields (at every depth) a record schema grows to; later new fields
/// go to `_extra`. Guards against objects keyed by ids, which would otherwise
/// make a column per id.
pub const MAX_FIELDS: usize = 4000;

/// Characters a Delta column name may not hold without column mapping.
const NOT_IN_NAMES: &[char] = &[' ', ',', ';', '{', '}', '(', ')', '\n', '\t', '='];

/// Above this magnitude an integer is not exact in a double.
pub(crate) const EXACT_IN_DOUBLE: u64 = 1 << 53;

/// What one flush's values say about one position in the record.
#[derive(Debug, Default)]
pub struct Shape {
    bools: u32,
    ints: u32,
    floats: u32,
    strings: u32,
    objects: u32,
    arrays: u32,
    fields: BTreeMap<String, Shape>,
    items: Option<Box<Shape>>,
}

impl Shape {
    /// Adds what `value` (at nesting `depth`) says.
    pub fn observe(&mut self, value: &Value, depth: usize) {
        match value {
            Value::Null => {}
            Value::Bool(_) => self.bools += 1,
            Value::Number(n) if n.is_f64() => self.floats += 1,
            Value::Number(_) => self.ints += 1,
            Value::String(_) => self.strings += 1,
            Value::Array(items) if !items.is_empty() && depth < MAX_NESTING => {
                self.arrays += 1;
                let shape = self.items.get_or_insert_with(Default::default);
                for item in items {
                    shape.observe(item, depth + 1);
                }
            }
            Value::Object(map) if !map.is_empty() && depth < MAX_NESTING => {
                self.observe_object(map, depth)
            }
            // Empty, or too deep to be columns: no type from them.
            Value::Array(_) | Value::Object(_) => {}
        }
    }

    /// Adds what a non-empty object (at nesting `depth`) says; a record is
    /// one at depth 0.
    pub fn observe_object(&mut self, map: &Map<String, Value>, depth: usize) {
        if map.is_empty() {
            return;
        }
        self.objects += 1;
        for (key, value) in map {
            // `entry` would allocate the key for every value seen.
            match self.fields.get_mut(key) {
                Some(shape) => shape.observe(value, depth + 1),
                None => {
                    let mut shape = Shape::default();
                    shape.observe(value, depth + 1);
                    self.fields.insert(key.clone(), shape);
                }
            }
        }
    }

    /// The type for a position no column holds yet; `None` while nothing
    /// but nulls and empty containers was seen. `budget` is how many more
    /// fields the schema may gain.
    fn decide(&self, budget: &mut usize) -> Option<DataType> {
        let numbers = self.ints + self.floats;
        // The most frequent kind; on a tie the earlier in this list.
        let kinds = [
            (self.objects, 0),
            (self.arrays, 1),
            (self.strings, 2),
            (numbers, 3),
            (self.bools, 4),
        ];
        let mut order: Vec<(u32, u8)> = kinds.into_iter().filter(|(n, _)| *n > 0).collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, kind) in order {
            let decided = match kind {
                0 => {
                    let fields = self.new_fields(&[], budget, false);
                    (!fields.is_empty()).then(|| DataType::Struct(fields.into()))
                }
                1 => self
                    .items
                    .as_ref()
                    .and_then(|items| items.decide(budget))
                    .map(|t| DataType::List(Arc::new(Field::new("item", t, true)))),
                2 => Some(DataType::Utf8),
                3 if self.floats > 0 => Some(DataType::Float64),
                3 => Some(DataType::Int64),
                _ => Some(DataType::Boolean),
            };
            if decided.is_some() {
                return decided;
            }
        }
        None
    }

    /// Fields for the observed keys that `existing` does not have and that
    /// can be columns, in name order. At the top level (`record`) the
    /// metadata column names and `_extra` are taken.
    fn new_fields(
        &self,
        existing: &[Arc<Field>],
        budget: &mut usize,
        record: bool,
    ) -> Vec<Arc<Field>> {
        let mut taken: Vec<String> = existing
            .iter()
            .map(|f| f.name().to_ascii_lowercase())
            .collect();
        if record {
            taken.extend(METADATA_COLUMNS.iter().map(|m| m.to_string()));
            taken.push(EXTRA_COLUMN.to_string());
        }
        let mut added = Vec::new();
        for (name, shape) in &self.fields {
            if existing.iter().any(|f| f.name() == name) || !column_name(name) {
                continue;
            }
            // Delta column names are case-insensitive: `Email` beside `email` clashes.
            let lower = name.to_ascii_lowercase();
            if taken.contains(&lower) || *budget == 0 {
                continue;
            }
            *budget -= 1;
            if let Some(data_type) = shape.decide(budget) {
                taken.push(lower);
                added.push(Arc::new(Field::new(name, data_type, true)));
            } else {
                *budget += 1;
            }
        }
        added
    }

    /// `data_type` with what this shape adds: new fields of structs (also
    /// inside lists); `None` if nothing changes. Other types stay.
    fn grow(&self, data_type: &DataType, budget: &mut usize) -> Option<DataType> {
        match data_type {
            DataType::Struct(fields) if self.objects > 0 => {
                let mut changed = false;
                let mut out: Vec<Arc<Field>> = Vec::with_capacity(fields.len());
                for field in fields.iter() {
                    let grown = self
                        .fields
                        .get(field.name())
                        .and_then(|shape| shape.grow(field.data_type(), budget));
                    match grown {
                        Some(t) => {
                            changed = true;
                            out.push(Arc::new(field.as_ref().clone().with_data_type(t)));
                        }
                        None => out.push(field.clone()),
                    }
                }
                let added = self.new_fields(fields, budget, false);
                changed |= !added.is_empty();
                out.extend(added);
                changed.then(|| DataType::Struct(out.into()))
            }
            DataType::List(item) if self.arrays > 0 => {
                let grown = self.items.as_ref()?.grow(item.data_type(), budget)?;
                Some(DataType::List(Arc::new(
                    item.as_ref().clone().with_data_type(grown),
                )))
            }
            _ => None,
        }
    }
}

/// `schema` grown by what `records` hold (see the module notes), if it
/// changes. `schema` ends with the `_extra` column.
pub fn grow(schema: &SchemaRef, records: &[Map<String, Value>]) -> Option<SchemaRef> {
    let mut shape = Shape::default();
    for record in records {
        shape.observe_object(record, 0);
    }
    grow_by(schema, &shape)
}

/// `schema` grown by `shape`, if it changes.
pub fn grow_by(schema: &SchemaRef, shape: &Shape) -> Option<SchemaRef> {
    if shape.objects == 0 {
        return None;
    }
    let mut budget = MAX_FIELDS.saturating_sub(count_fields(schema.fields()));
    let mut changed = false;
    let mut fields: Vec<Arc<Field>> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields().iter() {
        let grown = shape
            .fields
            .get(field.name())
            .and_then(|s| s.grow(field.data_type(), &mut budget));
        match grown {
            Some(t) => {
                changed = true;
                fields.push(Arc::new(field.as_ref().clone().with_data_type(t)));
            }
            None => fields.push(field.clone()),
        }
    }
    let added = shape.new_fields(schema.fields(), &mut budget, true);
    if added.is_empty() && !changed {
        return None;
    }
    // `_extra` stays last.
    let extra = fields
        .iter()
        .position(|f| f.name() == EXTRA_COLUMN)
        .map(|i| fields.remove(i));
    fields.extend(added);
    fields.extend(extra);
    Some(Arc::new(Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}

/// `theirs` folded into `ours`: every column of `ours` as it is, then the
/// columns (and nested struct fields, also inside lists) that only `theirs`
/// has; `_extra` stays last. `None` when `ours` has them all already. The
/// writers of one table on a JetStream log agree on its schema through this:
/// the first to record a column fixes its type, and a writer that inferred
/// another one encodes again, its values of the other kind going to `_extra`.
pub fn merge(ours: &SchemaRef, theirs: &SchemaRef) -> Option<SchemaRef> {
    let (mut fields, changed) = merge_fields(ours.fields(), theirs.fields());
    if !changed {
        return None;
    }
    if let Some(i) = fields.iter().position(|f| f.name() == EXTRA_COLUMN) {
        let extra = fields.remove(i);
        fields.push(extra);
    }
    Some(Arc::new(Schema::new_with_metadata(
        fields,
        ours.metadata().clone(),
    )))
}

fn merge_fields(ours: &Fields, theirs: &Fields) -> (Vec<Arc<Field>>, bool) {
    let mut changed = false;
    let mut fields: Vec<Arc<Field>> = ours
        .iter()
        .map(|field| {
            let grown = theirs
                .find(field.name())
                .and_then(|(_, t)| merge_type(field.data_type(), t.data_type()));
            match grown {
                Some(data_type) => {
                    changed = true;
                    Arc::new(field.as_ref().clone().with_data_type(data_type))
                }
                None => field.clone(),
            }
        })
        .collect();
    for field in theirs.iter() {
        // Names clash when case is ignored (Delta column names).
        let lower = field.name().to_ascii_lowercase();
        if fields
            .iter()
            .any(|f| f.name().to_ascii_lowercase() == lower)
        {
            continue;
        }
        changed = true;
        fields.push(field.clone());
    }
    (fields, changed)
}

fn merge_type(ours: &DataType, theirs: &DataType) -> Option<DataType> {
    match (ours, theirs) {
        (DataType::Struct(a), DataType::Struct(b)) => {
            let (fields, changed) = merge_fields(a, b);
            changed.then(|| DataType::Struct(fields.into()))
        }
        (DataType::List(a), DataType::List(b)) => merge_type(a.data_type(), b.data_type())
            .map(|t| DataType::List(Arc::new(a.as_ref().clone().with_data_type(t)))),
        _ => None,
    }
}

/// `schema` with the `_extra` column at the end, if it lacks one.
pub fn with_extra(schema: &SchemaRef) -> SchemaRef {
    if schema.field_with_name(EXTRA_COLUMN).is_ok() {
        return schema.clone();
    }
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(EXTRA_COLUMN, DataType::Utf8, true)));
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

pub use crate::schema::{is_json_text, JSON_TEXT};

/// Whether any column, at any depth, holds JSON text.
pub fn has_json_text(fields: &Fields) -> bool {
    fields
        .iter()
        .any(|f| is_json_text(f) || nested_json_text(f.data_type()))
}

fn nested_json_text(data_type: &DataType) -> bool {
    match data_type {
        DataType::Struct(fields) => has_json_text(fields),
        DataType::List(item) | DataType::LargeList(item) => {
            is_json_text(item) || nested_json_text(item.data_type())
        }
        _ => false,
    }
}

/// How [`fit`] treats a value that does not fit its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misfit {
    /// Move it to `_extra` (inferred schemas).
    ToExtra,
    /// Leave it: the decoder then names it and the event is a dead letter
    /// (declared schemas, whose undeclared fields are not stored).
    Leave,
}

/// Fits `record` (a JSON object) to `schema`: writes JSON-text columns' values
/// as text and, with [`Misfit::ToExtra`], moves every value that does not fit
/// its column into `extra`, keyed by its JSON pointer.
pub fn fit(
    record: &mut Map<String, Value>,
    schema: &Schema,
    misfit: Misfit,
    extra: &mut Map<String, Value>,
) {
    let mut fitting = Fitting {
        path: String::new(),
        extra,
        misfit,
    };
    fitting.fields(record, schema.fields(), true);
}

struct Fitting<'a> {
    path: String,
    extra: &'a mut Map<String, Value>,
    misfit: Misfit,
}

impl Fitting<'_> {
    fn fields(&mut self, object: &mut Map<String, Value>, fields: &Fields, record: bool) {
        let mut gone: Vec<String> = Vec::new();
        for (key, value) in object.iter_mut() {
            let len = self.path.len();
            push_token(&mut self.path, key);
            match fields.find(key) {
                Some((_, field)) if !(record && key == EXTRA_COLUMN) => self.value(value, field),
                _ if self.misfit == Misfit::ToExtra => {
                    if has_leaf(value) {
                        self.extra.insert(self.path.clone(), value.take());
                    }
                    gone.push(key.clone());
                }
                // A declared schema's undeclared field: not stored.
                _ => {}
            }
            self.path.truncate(len);
        }
        for key in gone {
            object.remove(&key);
        }
    }

    fn value(&mut self, value: &mut Value, field: &Field) {
        if value.is_null() {
            return;
        }
        if is_json_text(field) {
            *value = Value::String(value.to_string());
            return;
        }
        let fits = match (field.data_type(), &mut *value) {
            (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, v) => v.is_string(),
            (DataType::Int64, v) => v.is_i64(),
            (DataType::Float64, Value::Number(n)) => {
                n.is_f64()
                    || n.as_i64()
                        .is_some_and(|i| i.unsigned_abs() <= EXACT_IN_DOUBLE)
                    || n.as_u64().is_some_and(|u| u <= EXACT_IN_DOUBLE)
            }
            (DataType::Boolean, v) => v.is_boolean(),
            (DataType::Struct(fields), Value::Object(map)) => {
                self.fields(map, fields, false);
                true
            }
            (DataType::List(item) | DataType::LargeList(item), Value::Array(items)) => {
                for (i, v) in items.iter_mut().enumerate() {
                    let len = self.path.len();
                    self.path.push('/');
                    self.path.push_str(&i.to_string());
                    self.value(v, item);
                    self.path.truncate(len);
                }
                true
            }
            (
                DataType::Float64
                | DataType::Struct(_)
                | DataType::List(_)
                | DataType::LargeList(_),
                _,
            ) => false,
            // Types only a declared schema or an existing table gives
            // (timestamps, dates, maps, narrower numbers): the decoder
            // decides, and a value it cannot read makes the event a dead
            // letter with the reason.
            _ => true,
        };
        if !fits && self.misfit == Misfit::ToExtra {
            if has_leaf(value) {
                self.extra.insert(self.path.clone(), value.take());
            } else {
                // `[]`, `{}` or nulls of another kind than the column's
                // hold no value: the slot is null.
                *value = Value::Null;
            }
        }
    }
}

/// Whether `value` holds a non-null scalar anywhere.
fn has_leaf(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Array(items) => items.iter().any(has_leaf),
        Value::Object(map) => map.values().any(has_leaf),
        _ => true,
    }
}

/// Appends `/token` to a JSON pointer, escaped per RFC 6901.
fn push_token(path: &mut String, token: &str) {
    path.push('/');
    for c in token.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

/// Whether `name` can be a column name.
fn column_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(NOT_IN_NAMES)
}

fn count_fields(fields: &Fields) -> usize {
    fields
        .iter()
        .map(|f| 1 + nested_fields(f.data_type()))
        .sum()
}

fn nested_fields(data_type: &DataType) -> usize {
    match data_type {
        DataType::Struct(fields) => count_fields(fields),
        DataType::List(item) | DataType::LargeList(item) => nested_fields(item.data_type()),
        _ => 0,
    }
}

mod as_is;
pub use as_is::{fits_as_is, AsIs};

#[cfg(test)]
mod tests;
