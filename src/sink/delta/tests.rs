//! The table schema a Delta sink encodes with, and column alignment.
use super::*;
use arrow_array::{Int64Array, StringArray};
use arrow_schema::DataType;

fn field(name: &str, t: DataType, nullable: bool) -> Field {
    Field::new(name, t, nullable)
}

#[test]
fn the_table_keeps_its_types_and_gains_new_fields_as_nullable_columns() {
    let table = Schema::new(vec![
        field("id", DataType::Int64, false),
        field("name", DataType::Utf8, true),
        field("gone", DataType::Utf8, false),
        field("_event_id", DataType::Utf8, false),
    ]);
    let pipeline = Schema::new(vec![
        field("id", DataType::Int64, false),
        field("name", DataType::Int64, true),
        field("tier", DataType::Utf8, false),
    ]);
    let url = Url::parse("file:///t/").unwrap();
    let evolved = record_schema(&table, &pipeline, true, &url);
    let shape: Vec<_> = evolved
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type().clone(), f.is_nullable()))
        .collect();
    assert_eq!(
        shape,
        [
            ("id", DataType::Int64, false),
            ("name", DataType::Utf8, true),
            ("gone", DataType::Utf8, false),
            ("tier", DataType::Utf8, true),
        ]
    );
    let fixed = record_schema(&table, &pipeline, false, &url);
    assert_eq!(
        fixed.fields().len(),
        3,
        "schema_evolution = off adds nothing"
    );
}

#[test]
fn batches_are_aligned_to_the_table_order_with_new_columns_last() {
    let batch = RecordBatch::try_from_iter([
        ("new", Arc::new(StringArray::from(vec!["n"])) as _),
        ("b", Arc::new(Int64Array::from(vec![2])) as _),
        ("a", Arc::new(Int64Array::from(vec![1])) as _),
    ])
    .unwrap();
    let table = Schema::new(vec![
        field("a", DataType::Int64, true),
        field("b", DataType::Int64, true),
    ]);
    let aligned = align(&batch, &table);
    let names: Vec<_> = aligned
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["a", "b", "new"]);
}
