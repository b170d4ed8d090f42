//! The one-pass decoder against arrow-json: on every input it takes, the same
//! batch; what it declines, arrow-json decides.

use std::path::Path;

use arrow_json::ReaderBuilder;
use arrow_schema::{ArrowError, Field, Schema};

use super::*;

/// arrow-json's decoding of `records`, as `Encoder::decode` does it.
fn arrow_json(schema: &SchemaRef, records: &[&[u8]]) -> Result<RecordBatch, ArrowError> {
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_batch_size(records.len().max(1))
        .build_decoder()?;
    for record in records {
        let read = decoder.decode(record)?;
        if read != record.len() || decoder.has_partial_record() {
            return Err(ArrowError::JsonError("partial".into()));
        }
    }
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

/// Whether the fast decoder took `records`; panics if it took them and
/// decoded anything otherwise than arrow-json.
fn agrees(schema: &SchemaRef, records: &[&[u8]]) -> bool {
    let Some(fast) = decode(schema, records) else {
        return false;
    };
    let reference = arrow_json(schema, records).unwrap_or_else(|e| {
        panic!(
            "the fast decoder took records arrow-json refuses ({e}): {:?}",
            records
                .iter()
                .map(|r| String::from_utf8_lossy(r))
                .collect::<Vec<_>>()
        )
    });
    assert_eq!(
        fast,
        reference,
        "different batches for {:?}",
        records
            .iter()
            .map(|r| String::from_utf8_lossy(r))
            .collect::<Vec<_>>()
    );
    true
}

fn declared(file: &str) -> SchemaRef {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(file);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    Arc::new(crate::schema::from_json_schema(&doc).unwrap())
}

fn events_of(payloads: &[Vec<u8>]) -> Vec<crate::event::Event> {
    payloads
        .iter()
        .map(|p| crate::event::Event::new(bytes::Bytes::from(p.clone())))
        .collect()
}

/// Each provider's published payloads in the corpus, with the settled
/// inferring encoder they grow (its record schema ends with `_extra`).
fn corpus() -> Vec<(Vec<Vec<u8>>, crate::encode::Encoder)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus");
    ["github", "gitlab", "shopify", "slack", "stripe"]
        .into_iter()
        .map(|provider| {
            let mut payloads = Vec::new();
            for entry in std::fs::read_dir(root.join(provider)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "json") {
                    payloads.push(std::fs::read(path).unwrap());
                }
            }
            let cold =
                crate::encode::Encoder::new(Arc::new(Schema::empty()), "", "test").inferring(true);
            let grown = cold
                .encode(&events_of(&payloads))
                .grown
                .expect("a schema grows");
            (payloads, cold.with_record_schema(grown))
        })
        .collect()
}

fn schema(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

#[test]
fn shopify_customers_take_the_fast_path_and_decode_as_arrow_json_does() {
    let schema = declared("shopify_customer.json");
    // The published webhook body wraps the record: {"customers": {...}}.
    let sample = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/payloads/shopify_customers_create.json"),
    )
    .ok()
    .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok())
    .map(|body| body["customers"].to_string().into_bytes());
    let mut records: Vec<Vec<u8>> = sample.into_iter().collect();
    // The shape the benchmarks generate, with its variations: nulls, an
    // empty list, escapes, offsets, a missing optional field, an unknown one.
    records.push(br#"{"id":981998860701,"email":"a\"b\\c@example.com","accepts_marketing":true,"created_at":"2024-05-03T12:54:00-04:00","updated_at":"2024-04-28T13:06:00Z","first_name":"J\u00f6rg \ud83d\ude00","orders_count":40,"state":"enabled","total_spent":"1401.68","note":null,"tax_exempt":false,"addresses":[{"id":538052153943,"customer_id":981998860701,"zip":"44118","default":true},{"id":2,"default":false}],"tax_exemptions":[],"email_marketing_consent":{"state":"subscribed","opt_in_level":"single_opt_in","consent_updated_at":"2024-01-01T00:00:00-04:00"},"default_address":null,"not_declared":{"deep":[1,{"x":[true,null,"y"]}],"n":-1.5e3}}"#.to_vec());
    records.push(br#"  {"id": -1, "addresses": null, "email_marketing_consent": {}}  "#.to_vec());
    let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    assert!(
        agrees(&schema, &refs),
        "the fast path declined Shopify customers"
    );
    for record in &refs {
        assert!(agrees(&schema, std::slice::from_ref(record)));
    }
}

#[test]
fn every_corpus_payload_decodes_the_same_with_its_inferred_schema() {
    // Real payloads providers publish: infer each provider's schema, then
    // decode its payloads both ways.
    let (mut taken, mut total) = (0, 0);
    for (payloads, settled) in corpus() {
        let grown = settled.record_schema();
        // Without the JSON-text columns inference makes for mixed values.
        let fields: Vec<Field> = grown
            .fields()
            .iter()
            .filter(|f| !crate::encode::infer::has_json_text(&Fields::from(vec![(*f).clone()])))
            .map(|f| f.as_ref().clone())
            .collect();
        let schema = schema(fields);
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        for record in &refs {
            total += 1;
            taken += usize::from(agrees(&schema, std::slice::from_ref(record)));
        }
        agrees(&schema, &refs);
    }
    // Most real payloads fit the fast path's types; the rest were compared
    // by arrow-json alone.
    eprintln!("the fast path took {taken} of {total} corpus payloads");
    assert!(
        taken * 2 > total,
        "the fast path took {taken} of {total} corpus payloads"
    );
}

#[test]
fn what_arrow_json_reads_otherwise_is_declined() {
    let s = schema(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("at", ts(), true),
        Field::new("day", DataType::Date32, true),
    ]);
    let declined: &[&[u8]] = &[
        br#"{"id": "7"}"#, // arrow-json parses a numeric string
        br#"{"id": 1.0}"#, // and truncates a float
        br#"{"id": 1e3}"#,
        br#"{"id": 99999999999999999999}"#, // out of range
        br#"{"id": 1, "score": "2.5"}"#,
        br#"{"id": 1, "name": 5}"#, // an error in arrow-json
        br#"{"id": 1, "ok": 1}"#,
        br#"{"id": 1, "id": 2}"#, // a duplicate key
        br#"{"name": "no id"}"#,  // a required field missing
        br#"{"id": null}"#,
        br#"{"id": 1, "at": 1700000000}"#, // a number as a time
        br#"{"id": 1, "at": "not a time"}"#,
        br#"{"id": 1, "day": "2024-13-45"}"#,
        br#"{"id": 1, "name": "\ud800"}"#,       // a lone surrogate
        br#"{"id": 1, "name": "a\qb"}"#,         // not an escape
        b"{\"id\": 1, \"name\": \"tab\there\"}", // a raw control character
        br#"{"id": 1} {"id": 2}"#,               // two values
        br#"{"id": 1"#,                          // cut short
        br#"[{"id": 1}]"#,
        br#"{"id": 1, "x": [1: 2]}"#, // not JSON in an unknown field
        br#"{"id": 1, "x": {"a" 1}}"#,
        br#"{"id": 01}"#,
    ];
    for record in declined {
        assert!(
            decode(&s, &[*record]).is_none(),
            "took {}",
            String::from_utf8_lossy(record)
        );
    }
}

#[test]
fn edge_values_decode_as_arrow_json_does() {
    let s = schema(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("at", ts(), true),
        Field::new(
            "naive",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
        Field::new("day", DataType::Date32, true),
        Field::new(
            "tags",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
        Field::new(
            "nested",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
                true,
            ))),
            true,
        ),
        Field::new(
            "obj",
            DataType::Struct(
                vec![
                    Field::new("a", DataType::Int64, true),
                    Field::new(
                        "inner",
                        DataType::Struct(vec![Field::new("b", DataType::Utf8, true)].into()),
                        true,
                    ),
                ]
                .into(),
            ),
            true,
        ),
    ]);
    let records: &[&[u8]] = &[
        br#"{"id": -9223372036854775808, "score": 0.1, "name": "", "ok": false}"#,
        br#"{"id": 9223372036854775807, "score": -0, "name": "\u0000\n\t\"\\\/\b\f\r", "ok": true}"#,
        br#"{"id": 3, "score": 9007199254740992, "at": "2024-02-29T23:59:59.999999+14:00", "naive": "2024-01-01T00:00:00"}"#,
        br#"{"id": 4, "score": 1.7976931348623157e308, "at": "2024-01-01 10:00:00", "naive": "2024-01-01T00:00:00-05:00", "day": "2024-02-29"}"#,
        br#"{"id": 5, "score": 5e-324, "tags": ["a", null, "\u00e9"], "nested": [[1, null], [], null]}"#,
        br#"{"id": 6, "obj": null, "tags": null, "nested": null}"#,
        br#"{"id": 7, "obj": {}, "tags": []}"#,
        br#"{"id": 8, "obj": {"inner": null, "a": 1, "zz": {"x": []}}}"#,
        br#"{"obj": {"inner": {"b": "x"}}, "id": 9}"#,
        br#"{"id": 10, "name": "\ud83d\ude00 \u4e2d", "unknown": [[[[{}]]]], "more": "\"}"}"#,
        br#"{"id":11,"score":1E2,"day":null,"at":null}"#,
        b" \r\n\t{ \"id\" : 12 , \"score\" : -1.5e-3 } \n",
    ];
    // An integer a double would round is the encoder's to refuse (see
    // `encode::exact`): the fast path declines it.
    assert!(decode(&s, &[br#"{"id": 3, "score": 9007199254740993}"#]).is_none());
    assert!(decode(&s, &[br#"{"id": 3, "score": 12345678901234567890}"#]).is_none());
    assert!(
        agrees(&s, records),
        "the fast path declined the edge values"
    );
    for record in records {
        assert!(
            agrees(&s, std::slice::from_ref(record)),
            "declined {}",
            String::from_utf8_lossy(record)
        );
    }
    assert!(agrees(&s, &[]), "an empty flush");
}

#[test]
fn required_fields_inside_objects_and_lists_are_left_to_arrow_json() {
    let s = schema(vec![
        Field::new(
            "obj",
            DataType::Struct(vec![Field::new("must", DataType::Int64, false)].into()),
            true,
        ),
        Field::new(
            "list",
            DataType::List(Arc::new(Field::new("item", DataType::Int64, false))),
            true,
        ),
    ]);
    assert!(agrees(&s, &[br#"{"obj": {"must": 1}, "list": [1, 2]}"#]));
    for record in [
        &br#"{"obj": null}"#[..],
        br#"{"obj": {}}"#,
        br#"{"list": [1, null]}"#,
    ] {
        assert!(
            decode(&s, &[record]).is_none(),
            "{}",
            String::from_utf8_lossy(record)
        );
    }
    // A type it does not build: the whole schema goes to arrow-json.
    let map = schema(vec![Field::new("n", DataType::Int32, true)]);
    assert!(decode(&map, &[br#"{"n": 1}"#]).is_none());
}

#[test]
fn a_flush_taken_as_it_is_under_inference_is_what_the_check_and_arrow_json_make() {
    // decode_fitting replaces "AsIs::fits, then decode" for a settled
    // inferred schema: what it takes, the check must call fitting, and the
    // rows must be arrow-json's (with `_extra` null, as the old route set it).
    let (mut taken, mut fitting, mut total) = (0, 0, 0);
    for (payloads, settled) in corpus() {
        let events = events_of(&payloads);
        let schema = settled.record_schema().clone();
        let as_is = crate::encode::infer::AsIs::new(&schema);
        for record in &payloads {
            total += 1;
            fitting += usize::from(as_is.fits(record));
            if let Some(fast) = decode_fitting(&schema, &[record.as_slice()]) {
                taken += 1;
                assert!(
                    as_is.fits(record),
                    "taken but not fitting: {}",
                    String::from_utf8_lossy(record)
                );
                let reference = arrow_json(&schema, &[record.as_slice()]).unwrap();
                assert_eq!(fast, reference);
                let extra = fast
                    .column_by_name(crate::encode::infer::EXTRA_COLUMN)
                    .unwrap();
                assert_eq!(extra.null_count(), 1);
            }
        }
        // The settled encoder takes the whole flush this way or the old one:
        // the same rows either way.
        let encoded = settled.encode(&events);
        assert!(encoded.grown.is_none() && encoded.dead.is_empty());
        assert_eq!(encoded.batch.num_rows(), events.len());
    }
    eprintln!(
        "decode_fitting took {taken} of {total} corpus payloads; the check calls {fitting} fitting"
    );
    assert!(
        taken * 10 >= fitting * 9,
        "decode_fitting took {taken}, the check {fitting}"
    );
    // What inference would change is declined.
    let s = schema(vec![
        Field::new("n", DataType::Float64, true),
        Field::new(crate::encode::infer::EXTRA_COLUMN, DataType::Utf8, true),
    ]);
    assert!(decode_fitting(&s, &[br#"{"n": 9007199254740992}"#]).is_some());
    assert!(agrees(
        &s,
        &[br#"{"n": 1, "none": null, "empty": [{}, [null]]}"#]
    ));
    assert!(decode_fitting(&s, &[br#"{"n": 1, "none": null, "empty": [{}, [null]]}"#]).is_some());
    assert!(decode_fitting(&s, &[br#"{"n": 9007199254740993}"#]).is_none());
    assert!(
        decode(&s, &[br#"{"n": 9007199254740993}"#]).is_none(),
        "an integer a double would round is the encoder's to refuse"
    );
    for record in [
        &br#"{"other": 1}"#[..],
        br#"{"other": [null, {"a": "x"}]}"#,
        br#"{"_extra": "x"}"#,
        br#"{"\u006e": 1}"#,
    ] {
        assert!(
            decode_fitting(&s, &[record]).is_none(),
            "{}",
            String::from_utf8_lossy(record)
        );
        assert!(
            decode(&s, &[record]).is_some(),
            "the lenient decoder takes {}",
            String::from_utf8_lossy(record)
        );
    }
}
