//! Encoder behaviour on good, bad and nested input.

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int64Type, TimestampMicrosecondType};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use bytes::Bytes;

use super::*;

fn encoder(record_path: &str) -> Encoder {
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("email", DataType::Utf8, true),
        Field::new(
            "updated_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]);
    Encoder::new(Arc::new(schema), record_path, "webhook:/hooks/test")
}

fn event(json: &str) -> Event {
    Event::new(Bytes::from(json.to_string()))
}

#[test]
fn bad_events_become_dead_letters_without_blocking_the_rest() {
    let events = vec![
        event(
            r#"{"customers": {"id": 1, "email": "a@x", "updated_at": "2024-03-01T12:00:00-04:00", "extra": [1]}}"#,
        ),
        event(r#"{"customers": {"id": "not a number"}}"#),
        event(r#"{"customers": {"email": "no id"}}"#),
        event(r#"{"orders": {"id": 4}}"#),
        event(r#"{"customers": {"id": 5, "email": 55}}"#),
        event(r#"{"customers": {"id": 6}}"#),
    ];
    let out = encoder("/customers").encode(&events);
    assert_eq!(out.batch.num_rows(), 2);
    let ids = out
        .batch
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(ids.values(), &[1, 6]);
    let event_ids = out
        .batch
        .column_by_name("_event_id")
        .unwrap()
        .as_string::<i32>();
    assert_eq!(event_ids.value(0), events[0].id.hyphenated().to_string());
    assert_eq!(event_ids.value(1), events[5].id.hyphenated().to_string());

    let reasons: Vec<(Uuid, &str)> = out.dead.iter().map(|d| (d.id, d.reason.as_str())).collect();
    assert_eq!(reasons.len(), 4);
    assert_eq!(reasons[0].0, events[3].id);
    assert!(
        reasons[0].1.contains("/customers not found"),
        "{}",
        reasons[0].1
    );
    let by_id = |e: &Event| {
        out.dead
            .iter()
            .find(|d| d.id == e.id)
            .map(|d| d.reason.clone())
            .unwrap()
    };
    assert!(by_id(&events[1]).contains("id"), "{}", by_id(&events[1]));
    assert!(
        by_id(&events[2]).contains("does not fit the schema"),
        "{}",
        by_id(&events[2])
    );
    assert!(by_id(&events[4]).contains("email"), "{}", by_id(&events[4]));
    assert_eq!(out.dead[0].raw, events[3].payload);
}

#[test]
fn metadata_columns_and_timestamps_are_utc() {
    let mut e = event(r#"{"id": 1, "updated_at": "2024-03-01T23:30:00-04:00"}"#);
    e.received_at_us = 1_700_000_000_123_456; // 2023-11-14T22:13:20.123456Z
    let out = encoder("").encode(&[e]);
    assert!(out.dead.is_empty());
    let b = &out.batch;
    let at = b
        .column_by_name("_received_at")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    assert_eq!(at.value(0), 1_700_000_000_123_456);
    let date = b
        .column_by_name("_received_date")
        .unwrap()
        .as_primitive::<Date32Type>();
    assert_eq!(date.value(0), 19675);
    let updated = b
        .column_by_name("updated_at")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    // 23:30 at -04:00 is 03:30 the next day in UTC.
    assert_eq!(updated.value(0), 1_709_350_200_000_000);
    assert_eq!(
        b.column_by_name("_source")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "webhook:/hooks/test"
    );
    assert_eq!(b.schema().field(0).name(), "_event_id");
}

#[test]
fn an_empty_flush_is_an_empty_batch() {
    let out = encoder("").encode(&[]);
    assert_eq!(out.batch.num_rows(), 0);
    assert!(out.dead.is_empty());
}

#[test]
fn dead_letter_rows_carry_reason_and_raw() {
    let e = event(r#"{"id": "x"}"#);
    let out = encoder("").encode(std::slice::from_ref(&e));
    let rows = dead_letter::batch("p", "parquet", &out.dead);
    assert_eq!(rows.num_rows(), 1);
    assert_eq!(
        rows.column_by_name("raw")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        r#"{"id": "x"}"#
    );
    assert_eq!(
        rows.column_by_name("sink")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "parquet"
    );
}

use uuid::Uuid;

#[test]
fn an_inferring_encoder_adds_columns_for_new_fields_in_the_same_flush() {
    let encoder = Encoder::new(Arc::new(Schema::empty()), "", "webhook:/x").inferring(true);
    let out = encoder.encode(&[event(r#"{"id": 1}"#), event(r#"{"id": 2, "tier": "gold"}"#)]);
    assert!(out.dead.is_empty(), "{:?}", out.dead);
    let grown = out.grown.expect("the schema grew");
    let names: Vec<&str> = grown.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "tier", "_extra"]);
    let tier = out.batch.column_by_name("tier").unwrap().as_string::<i32>();
    assert_eq!(tier.iter().collect::<Vec<_>>(), [None, Some("gold")]);

    let next = encoder.with_record_schema(grown);
    let out = next.encode(&[event(r#"{"id": "three"}"#), event(r#"{"id": 4}"#)]);
    assert!(out.grown.is_none());
    assert!(
        out.dead.is_empty(),
        "a value of another type is kept, not refused"
    );
    let ids = out
        .batch
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(ids.iter().collect::<Vec<_>>(), [None, Some(4)]);
    let extra = out
        .batch
        .column_by_name("_extra")
        .unwrap()
        .as_string::<i32>();
    assert_eq!(
        extra.iter().collect::<Vec<_>>(),
        [Some(r#"{"/id":"three"}"#), None]
    );
}

#[test]
fn a_declared_json_text_column_takes_any_value() {
    let doc = serde_json::json!({
        "type": "object",
        "properties": {"id": {"type": "integer"}, "payload": {}, "tags": {"type": "array", "items": {"type": ["string", "integer"]}}}
    });
    let schema = Arc::new(crate::schema::from_json_schema(&doc).unwrap());
    let encoder = Encoder::new(schema, "", "webhook:/x");
    let out = encoder.encode(&[
        event(
            r#"{"id": 1, "payload": {"a": [1, {"b": null}]}, "tags": ["x", 2], "undeclared": 5}"#,
        ),
        event(r#"{"id": 2, "payload": "text", "tags": null}"#),
        event(r#"{"id": 3}"#),
        event(r#"{"id": "three", "payload": 3}"#),
    ]);
    assert_eq!(
        out.dead.len(),
        1,
        "a declared integer column still refuses text"
    );
    let payload = out
        .batch
        .column_by_name("payload")
        .unwrap()
        .as_string::<i32>();
    assert_eq!(
        payload.iter().collect::<Vec<_>>(),
        [Some(r#"{"a":[1,{"b":null}]}"#), Some(r#""text""#), None]
    );
    let tags = out.batch.column_by_name("tags").unwrap().as_list::<i32>();
    let first = tags.value(0);
    let first: Vec<_> = first.as_string::<i32>().iter().collect();
    assert_eq!(first, [Some(r#""x""#), Some("2")]);
    assert!(
        out.batch.column_by_name("_extra").is_none(),
        "declared schemas have no _extra"
    );
}

fn numbers_encoder(infer: bool) -> Encoder {
    let schema = Schema::new(vec![
        Field::new("orders_count", DataType::Int64, true),
        Field::new("total", DataType::Float64, true),
    ]);
    let schema = if infer { Schema::empty() } else { schema };
    Encoder::new(Arc::new(schema), "", "webhook:/x").inferring(infer)
}

#[test]
fn a_fraction_in_a_declared_integer_column_is_a_dead_letter_not_a_cut_number() {
    let events = [
        event(r#"{"orders_count": 2.7}"#),
        event(r#"{"orders_count": -0.5}"#),
        event(r#"{"orders_count": 3}"#),
        event(r#"{"orders_count": 4}"#),
        event(r#"{"total": 9007199254740993}"#),
    ];
    // On its own (the fast path declines the flush) and among good records.
    for flush in [&events[..1], &events[..]] {
        let out = numbers_encoder(false).encode(flush);
        let counts = out
            .batch
            .column_by_name("orders_count")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert!(
            !counts.iter().any(|c| c == Some(2) || c == Some(0)),
            "no cut number is stored: {counts:?}"
        );
        assert_eq!(out.batch.num_rows() + out.dead.len(), flush.len());
    }
    let out = numbers_encoder(false).encode(&events);
    let counts = out
        .batch
        .column_by_name("orders_count")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(counts.iter().collect::<Vec<_>>(), [Some(3), Some(4)]);
    let reasons: Vec<&str> = out.dead.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].contains("/orders_count: 2.7 is not an integer"),
        "{}",
        reasons[0]
    );
    assert!(reasons[1].contains("/orders_count: -0.5"), "{}", reasons[1]);
    assert!(
        reasons[2].contains("/total: 9007199254740993"),
        "{}",
        reasons[2]
    );
}

#[test]
fn under_inference_a_fraction_after_integers_keeps_its_value() {
    let encoder = numbers_encoder(true);
    let first = encoder.encode(&[event(r#"{"orders_count": 2}"#)]);
    let encoder = encoder.with_record_schema(first.grown.expect("grew"));
    let out = encoder.encode(&[
        event(r#"{"orders_count": 2.7}"#),
        event(r#"{"orders_count": -0.5}"#),
    ]);
    assert!(out.dead.is_empty(), "{:?}", out.dead);
    let schema = out
        .grown
        .clone()
        .unwrap_or_else(|| encoder.record_schema().clone());
    let column = out.batch.column_by_name("orders_count").unwrap();
    let kept: Vec<String> = match schema.field_with_name("orders_count").unwrap().data_type() {
        DataType::Float64 => column
            .as_primitive::<arrow_array::types::Float64Type>()
            .iter()
            .map(|v| format!("{v:?}"))
            .collect(),
        _ => {
            let extra = out
                .batch
                .column_by_name("_extra")
                .unwrap()
                .as_string::<i32>();
            extra.iter().map(|v| format!("{v:?}")).collect()
        }
    };
    assert!(
        kept[0].contains("2.7") && kept[1].contains("-0.5"),
        "{kept:?}"
    );
}

#[test]
fn a_record_that_fit_the_old_schema_is_refitted_when_the_flush_grows_it() {
    let encoder = Encoder::new(Arc::new(Schema::empty()), "", "webhook:/x").inferring(true);
    let first = encoder.encode(&[event(r#"{"a": 1}"#)]);
    let encoder = encoder.with_record_schema(first.grown.expect("grew"));
    let out = encoder.encode(&[
        event(r#"{"a": 2, "b": {}}"#),
        event(r#"{"a": 3, "b": "x"}"#),
    ]);
    assert!(out.dead.is_empty(), "{:?}", out.dead);
    assert_eq!(out.batch.num_rows(), 2);
    let b = out.batch.column_by_name("b").unwrap().as_string::<i32>();
    assert_eq!(b.iter().collect::<Vec<_>>(), [None, Some("x")]);
}

/// Doubles and integers of every kind, written as the shortest text that
/// reads back to them (as providers' serialisers write them), come out of
/// the encoder bit for bit: declared columns (fast path and arrow-json),
/// inferred columns and `_extra`.
#[test]
fn every_number_round_trips_bit_exactly() {
    use arrow_array::types::Float64Type;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7472_6962);
    let mut doubles = vec![
        116.470_000_008_121_13,
        123_456_789.123_456_79,
        0.1,
        -0.0,
        0.0,
        f64::MIN_POSITIVE,
        5e-324,
        -5e-324,
        2.225_073_858_507_201e-308,
        f64::MAX,
        f64::MIN,
        1e23,
        9_007_199_254_740_991.0,
    ];
    doubles.extend((0..3000).map(|_| loop {
        let v = f64::from_bits(rng.random::<u64>());
        if v.is_finite() {
            break v;
        }
    }));
    doubles.extend((0..1000).map(|_| rng.random::<f64>() * 1e6));
    let mut integers = vec![
        i64::MIN,
        i64::MAX,
        0,
        -1,
        (1 << 53) - 1,
        1 << 53,
        (1 << 53) + 1,
        -(1 << 53) - 1,
    ];
    integers.extend((0..2000).map(|_| rng.random::<i64>()));
    // A double column written with a fraction or exponent where the value
    // has one, as serde_json and JavaScript write them.
    let text = |v: f64| serde_json::to_string(&v).unwrap();
    let declared = |events: &[Event]| numbers_encoder(false).encode(events);
    let doubles_in = |v: f64| event(&format!(r#"{{"total": {}}}"#, text(v)));
    let integers_in = |v: i64| event(&format!(r#"{{"orders_count": {v}}}"#));
    // Declared: the flush as a whole (fast path), then with a record only
    // arrow-json reads (a number as text), so arrow-json decodes the flush.
    for extra in [None, Some(event(r#"{"orders_count": "5"}"#))] {
        let mut events: Vec<Event> = doubles.iter().map(|&v| doubles_in(v)).collect();
        events.extend(integers.iter().map(|&v| integers_in(v)));
        events.extend(extra.clone());
        let out = declared(&events);
        assert!(out.dead.is_empty(), "{:?}", out.dead.first());
        assert_eq!(out.batch.num_rows(), events.len());
        let totals = out
            .batch
            .column_by_name("total")
            .unwrap()
            .as_primitive::<Float64Type>();
        for (i, &v) in doubles.iter().enumerate() {
            assert_eq!(
                totals.value(i).to_bits(),
                v.to_bits(),
                "{} came back as {}",
                text(v),
                totals.value(i)
            );
        }
        let counts = out
            .batch
            .column_by_name("orders_count")
            .unwrap()
            .as_primitive::<Int64Type>();
        for (i, &v) in integers.iter().enumerate() {
            assert_eq!(counts.value(doubles.len() + i), v);
        }
    }
    // Inferred: a column of doubles, and doubles kept in `_extra` under a
    // text column.
    let encoder = Encoder::new(Arc::new(Schema::empty()), "", "webhook:/x").inferring(true);
    let events: Vec<Event> = doubles
        .iter()
        .map(|&v| event(&format!(r#"{{"v": {}, "w": "t"}}"#, text(v))))
        .collect();
    let out = encoder.encode(&events);
    assert!(out.dead.is_empty());
    let values = out
        .batch
        .column_by_name("v")
        .unwrap()
        .as_primitive::<Float64Type>();
    for (i, &v) in doubles.iter().enumerate() {
        assert_eq!(
            values.value(i).to_bits(),
            v.to_bits(),
            "inferred {}",
            text(v)
        );
    }
    let encoder = encoder.with_record_schema(out.grown.expect("grew"));
    let events: Vec<Event> = doubles
        .iter()
        .map(|&v| event(&format!(r#"{{"w": {}}}"#, text(v))))
        .collect();
    let out = encoder.encode(&events);
    assert!(out.dead.is_empty());
    let extra = out
        .batch
        .column_by_name("_extra")
        .unwrap()
        .as_string::<i32>();
    for (i, &v) in doubles.iter().enumerate() {
        let kept: serde_json::Value = serde_json::from_str(extra.value(i)).unwrap();
        let back = kept["/w"].as_f64().unwrap();
        assert_eq!(
            back.to_bits(),
            v.to_bits(),
            "_extra kept {} as {}",
            text(v),
            extra.value(i)
        );
    }
}
