//! Widening, conflicts, nulls and empty containers, nested evolution.

use serde_json::json;

use super::*;

fn records(values: &[Value]) -> Vec<Map<String, Value>> {
    values
        .iter()
        .map(|v| v.as_object().expect("a record is an object").clone())
        .collect()
}

fn empty() -> SchemaRef {
    with_extra(&Arc::new(Schema::empty()))
}

fn shape_of(schema: &Schema) -> Vec<(String, String)> {
    schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect()
}

fn grown(schema: &SchemaRef, values: &[Value]) -> SchemaRef {
    grow(schema, &records(values)).expect("the schema grows")
}

/// Fits `value` to `schema`; returns the fitted record and its `_extra`.
fn fitted(schema: &Schema, value: Value) -> (Value, Value) {
    let mut record = value.as_object().unwrap().clone();
    let mut extra = Map::new();
    fit(&mut record, schema, Misfit::ToExtra, &mut extra);
    (Value::Object(record), Value::Object(extra))
}

#[test]
fn nulls_and_empty_containers_never_fix_a_type() {
    let schema = grow(
        &empty(),
        &records(&[json!({"a": null, "b": [], "c": {}, "d": {"e": null}, "f": [[], {}]})]),
    );
    assert!(schema.is_none(), "{schema:?}");
    let schema = grown(
        &empty(),
        &[
            json!({"a": null, "b": [], "c": {}}),
            json!({"a": 1, "b": ["x"], "c": {"k": true}}),
        ],
    );
    assert_eq!(
        shape_of(&schema),
        [
            ("a".into(), "Int64".into()),
            ("b".into(), "List(Utf8)".into()),
            ("c".into(), "Struct(\"k\": Boolean)".into()),
            ("_extra".into(), "Utf8".into()),
        ]
    );
}

#[test]
fn integers_and_fractions_widen_to_double_in_any_order() {
    for values in [
        vec![json!({"n": 1}), json!({"n": 2.5})],
        vec![json!({"n": 2.5}), json!({"n": 1})],
    ] {
        let schema = grown(&empty(), &values);
        assert_eq!(
            schema.field_with_name("n").unwrap().data_type(),
            &DataType::Float64
        );
        let (_, extra) = fitted(&schema, json!({"n": 1}));
        assert_eq!(extra, json!({}), "an integer fits a double exactly");
        let (_, extra) = fitted(&schema, json!({"n": 9007199254740993_u64}));
        assert_eq!(
            extra,
            json!({"/n": 9007199254740993_u64}),
            "but not above 2^53"
        );
    }
}

#[test]
fn the_most_frequent_kind_wins_and_the_rest_is_kept_in_extra() {
    let a = [
        json!({"id": 1}),
        json!({"id": 2}),
        json!({"id": "gid://shop/3"}),
    ];
    let mut b = a.clone();
    b.reverse();
    let (sa, sb) = (grown(&empty(), &a), grown(&empty(), &b));
    assert_eq!(sa, sb, "arrival order does not matter");
    assert_eq!(
        sa.field_with_name("id").unwrap().data_type(),
        &DataType::Int64
    );
    let (record, extra) = fitted(&sa, json!({"id": "gid://shop/3"}));
    assert_eq!(record, json!({"id": null}));
    assert_eq!(extra, json!({"/id": "gid://shop/3"}));
    // A tie: string before number.
    let schema = grown(&empty(), &[json!({"x": 1}), json!({"x": "1"})]);
    assert_eq!(
        schema.field_with_name("x").unwrap().data_type(),
        &DataType::Utf8
    );
}

#[test]
fn an_existing_column_keeps_its_type_and_structs_gain_fields() {
    let first = grown(
        &empty(),
        &[json!({"data": {"object": {"id": "ch_1", "amount": 100}}, "n": 1})],
    );
    let next = grown(
        &first,
        &[
            json!({"data": {"object": {"id": "cus_1", "email": "a@x", "amount": "12.00"}}, "n": 1.5, "m": 2}),
        ],
    );
    assert_eq!(
        shape_of(&next),
        [
            (
                "data".into(),
                r#"Struct("object": Struct("amount": Int64, "id": Utf8, "email": Utf8))"#.into()
            ),
            ("n".into(), "Int64".into()),
            ("m".into(), "Int64".into()),
            ("_extra".into(), "Utf8".into()),
        ],
        "existing fields keep their place; new ones follow; _extra stays last"
    );
    let (record, extra) = fitted(
        &next,
        json!({"data": {"object": {"id": "cus_1", "email": "a@x", "amount": "12.00"}}, "n": 1.5}),
    );
    assert_eq!(
        record,
        json!({"data": {"object": {"id": "cus_1", "email": "a@x", "amount": null}}, "n": null})
    );
    assert_eq!(extra, json!({"/data/object/amount": "12.00", "/n": 1.5}));
}

#[test]
fn list_items_are_fitted_one_by_one() {
    let schema = grown(
        &empty(),
        &[json!({"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]})],
    );
    let schema = grown(
        &schema,
        &[json!({"items": [{"sku": "c", "price": "1.00"}]})],
    );
    let (record, extra) = fitted(
        &schema,
        json!({"items": [{"sku": "c", "qty": "two", "price": "1.00"}, 7], "tags": "x"}),
    );
    assert_eq!(
        record,
        json!({"items": [{"sku": "c", "qty": null, "price": "1.00"}, null]})
    );
    assert_eq!(
        extra,
        json!({"/items/0/qty": "two", "/items/1": 7, "/tags": "x"})
    );
}

#[test]
fn names_that_cannot_be_columns_go_to_extra_with_escaped_pointers() {
    let schema = grown(
        &empty(),
        &[json!({"ok": 1, "bad name": 2, "Ok": 3, "_source": 4, "_extra": 5, "a/b": {"c~d": 6}})],
    );
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    // "Ok" sorts before "ok" and takes the name; "ok" then clashes.
    assert_eq!(names, ["Ok", "a/b", "_extra"]);
    let (_, extra) = fitted(
        &schema,
        json!({"ok": 1, "bad name": 2, "Ok": 3, "_source": 4, "_extra": 5, "a/b": {"c~d": 6, "e f": 7}}),
    );
    assert_eq!(
        extra,
        json!({"/ok": 1, "/bad name": 2, "/_source": 4, "/_extra": 5, "/a~1b/e f": 7})
    );
}

#[test]
fn deep_values_and_too_many_fields_go_to_extra() {
    let mut deep = json!(1);
    for _ in 0..MAX_NESTING + 2 {
        deep = json!({"d": deep});
    }
    let schema = grown(&empty(), &[json!({"deep": deep.clone(), "x": 1})]);
    assert!(
        schema.field_with_name("deep").is_err(),
        "no column for what is too deep"
    );
    let (_, extra) = fitted(&schema, json!({"deep": deep.clone()}));
    assert_eq!(extra, json!({"/deep": deep}));

    let wide: Map<String, Value> = (0..MAX_FIELDS + 10)
        .map(|i| (format!("k{i:05}"), json!(i)))
        .collect();
    let schema = grown(&empty(), &[Value::Object(wide.clone())]);
    assert_eq!(
        schema.fields().len(),
        MAX_FIELDS,
        "the cap counts _extra too"
    );
    let (_, extra) = fitted(&schema, Value::Object(wide));
    assert_eq!(extra.as_object().unwrap().len(), 11);
}

#[test]
fn every_value_is_kept_somewhere() {
    // Whatever the schema, a fitted record plus its _extra give back the
    // original's every non-null leaf.
    let original = json!({
        "a": [1, "two", {"three": 3}, [4]],
        "b": {"c": {"d": true, "e": [null, 1.5]}},
        "f": 18446744073709551615_u64,
    });
    let schema = grown(
        &empty(),
        &[json!({"a": [1], "b": {"c": {"d": "x"}}, "f": 1})],
    );
    let (mut record, extra) = fitted(&schema, original.clone());
    for (pointer, value) in extra.as_object().unwrap() {
        let mut at = &mut record;
        let tokens: Vec<String> = pointer
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        for (i, token) in tokens.iter().enumerate() {
            let last = i + 1 == tokens.len();
            at = match at {
                Value::Object(map) if last => {
                    map.insert(token.clone(), value.clone());
                    break;
                }
                Value::Object(map) => map.get_mut(token).unwrap(),
                Value::Array(items) => &mut items[token.parse::<usize>().unwrap()],
                _ => unreachable!(),
            };
            if last {
                *at = value.clone();
            }
        }
    }
    assert_eq!(record, original);
}

#[test]
fn values_without_a_leaf_are_null_not_extra() {
    let schema = grown(&empty(), &[json!({"o": {"a": 1}, "l": [1], "s": "x"})]);
    let (record, extra) = fitted(
        &schema,
        json!({"o": [], "l": {}, "s": [null], "new": [], "newer": {"x": null}}),
    );
    assert_eq!(record, json!({"o": null, "l": null, "s": null}));
    assert_eq!(extra, json!({}));
}

#[test]
fn a_record_is_decoded_as_is_only_when_fitting_would_change_nothing() {
    let schema = grown(
        &empty(),
        &[json!({"id": 1, "n": 1.5, "s": "x", "b": true, "o": {"a": 1}, "l": [{"k": "v"}]})],
    );
    let as_is = |v: Value| fits_as_is(v.to_string().as_bytes(), &schema);
    assert!(as_is(
        json!({"id": 2, "n": 3, "s": "y", "b": false, "o": {}, "l": []})
    ));
    assert!(as_is(
        json!({"id": null, "unknown": null, "empty": [], "o": {"a": null}})
    ));
    assert!(as_is(json!({"l": [{"k": "a\"b", "other": []}]})));
    for misfit in [
        json!({"id": "1"}),
        json!({"id": 1.0}),
        json!({"n": 9007199254740993_u64}),
        json!({"s": 1}),
        json!({"o": []}),
        json!({"l": [1]}),
        json!({"unknown": 1}),
        json!({"o": {"a": 1, "b": "new"}}),
        json!({"_extra": "x"}),
    ] {
        assert!(!as_is(misfit.clone()), "{misfit} needs fitting");
    }
}

#[test]
fn published_payloads_that_fit_as_is_are_left_unchanged_by_fit() {
    // Every corpus payload, against the schema grown from all of them and
    // from half of them: whenever the fast check says "as is", fit() finds
    // nothing to move (it may only drop unknown keys without a value).
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/corpus");
    let mut payloads = Vec::new();
    for provider in std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
    {
        for file in std::fs::read_dir(provider.path()).unwrap().flatten() {
            payloads.push(std::fs::read(file.path()).unwrap());
        }
    }
    let values: Vec<Value> = payloads
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    for schema in [
        grown(&empty(), &values),
        grown(&empty(), &values[..values.len() / 2]),
    ] {
        let mut as_is = 0;
        // One checker for all: it learns each struct's key order from the
        // payload before, which other providers' payloads then break.
        let shared = AsIs::new(&schema);
        let mut agree = 0;
        for (bytes, value) in payloads.iter().zip(&values) {
            let fits = fits_as_is(bytes, &schema);
            assert_eq!(
                shared.fits(bytes),
                fits,
                "{}",
                String::from_utf8_lossy(bytes)
            );
            // The byte scanner says "as is" only where serde's check does.
            let reference = as_is::oracle::fits(bytes, &schema);
            assert!(!fits || reference, "{}", String::from_utf8_lossy(bytes));
            agree += usize::from(fits == reference);
            if fits {
                as_is += 1;
                let (_, extra) = fitted(&schema, value.clone());
                assert_eq!(extra, json!({}), "{}", String::from_utf8_lossy(bytes));
            }
        }
        assert!(as_is > 0);
        // It answers "no" where serde would say "yes" only for escaped keys
        // and surrogate escapes, which few payloads hold.
        assert!(
            agree * 100 >= payloads.len() * 95,
            "{agree} of {}",
            payloads.len()
        );
    }
}

#[test]
fn the_byte_scanner_says_as_is_only_where_serde_does() {
    let schema = grown(
        &empty(),
        &[
            json!({"i": 1, "d": 1.5, "s": "x", "b": true, "o": {"a": 1}, "l": [{"k": "v"}], "ll": [[1]]}),
        ],
    );
    let cases: &[&str] = &[
        r#"{"i": 1}"#,
        r#"{"i": -9223372036854775808}"#,
        r#"{"i": 9223372036854775808}"#,
        r#"{"i": 18446744073709551615}"#,
        r#"{"i": -0}"#,
        r#"{"i": 0}"#,
        r#"{"i": 999999999999999999}"#,
        r#"{"i": -999999999999999999}"#,
        r#"{"i": 9223372036854775807}"#,
        r#"{"d": 123456789012345678}"#,
        r#"{"s\"q": 1}"#,
        r#"{"i": 01}"#,
        r#"{"i": 1.0}"#,
        r#"{"i": 1e2}"#,
        r#"{"d": 1e2}"#,
        r#"{"d": 1E+2}"#,
        r#"{"d": 1e400}"#,
        r#"{"d": -0}"#,
        r#"{"d": 9007199254740992}"#,
        r#"{"d": 9007199254740993}"#,
        r#"{"d": -9007199254740993}"#,
        r#"{"d": 1.}"#,
        r#"{"d": .5}"#,
        r#"{"d": -}"#,
        r#"{"s": "caf\u00e9 \n \" \\ \/"}"#,
        r#"{"s": "a long string of plain text, more than eight bytes at a time"}"#,
        r#"{"s": "eight b\"tes then a quote inside a long string"}"#,
        "{\"s\": \"sixteen bytes ok\u{1f}control after them\"}",
        "{\"s\": \"sixteen bytes ok\u{7f} DEL is fine\"}",
        r#"{"s": "\ud83d\ude00"}"#,
        r#"{"s": "\ud83d"}"#,
        "{\"s\": \"raw\u{1}control\"}",
        r#"{"s": "bad \x escape"}"#,
        r#"{"s": "\u12"}"#,
        r#"{"s": "\u+123"}"#,
        r#"{"s": "unterminated}"#,
        r#"{"s\u0073": "escaped key"}"#,
        r#"{"b": true, "b2": null}"#,
        r#"{"b": tru}"#,
        r#"{"b": false,}"#,
        r#"{"i" 1}"#,
        r#"{"i": 1} x"#,
        " \t\r\n{ \"o\" : { \"a\" : 2 } , \"l\" : [ ] }\n ",
        r#"{"o": {"a": 1, "new": null}, "unknown": {"x": [null, {}]}}"#,
        r#"{"unknown": {"x": [null, 0]}}"#,
        r#"{"_extra": null}"#,
        r#"{"_extra": "x"}"#,
        r#"{"l": [{"k": "a"}, {"k": null}, null, {}]}"#,
        r#"{"l": [{"k": 1}]}"#,
        r#"{"l": {"k": "a"}}"#,
        r#"{"ll": [[1, 2], [], null, [null]]}"#,
        r#"{"ll": [[1.5]]}"#,
        r#"{"o": []}"#,
        r#"{"o": "x"}"#,
        r#"[]"#,
        r#"{}"#,
        "",
    ];
    for case in cases {
        let scanned = fits_as_is(case.as_bytes(), &schema);
        let reference = as_is::oracle::fits(case.as_bytes(), &schema);
        assert!(
            !scanned || reference,
            "{case}: the scanner says as is, serde does not"
        );
        // Where the scanner is more careful than serde, say why it may be.
        let careful = case.contains("\\ud83d") || case.contains("s\\u0073");
        assert!(
            scanned == reference || careful,
            "{case}: {scanned} vs {reference}"
        );
    }
    // The eight-byte scan finds each kind of byte at each place in a word.
    for at in 0..24 {
        for (byte, fits) in [
            ("\"", false),
            ("\\", false),
            ("\u{1}", false),
            ("é", true),
            ("~", true),
        ] {
            let mut text = "x".repeat(24);
            text.insert_str(at, byte);
            let json = format!("{{\"s\": \"{text}\"}}");
            assert_eq!(fits_as_is(json.as_bytes(), &schema), fits, "{json}");
            assert_eq!(
                as_is::oracle::fits(json.as_bytes(), &schema),
                fits,
                "{json}"
            );
        }
    }
    // UTF-8: checked inside strings; outside them no byte above ASCII passes.
    assert!(fits_as_is("{\"s\": \"café ☕\"}".as_bytes(), &schema));
    for bad in [
        &b"{\"s\": \"\xff\"}"[..],
        b"{\"s\": \"\xc3\"}",
        b"{\"s\"\xc2\xa0: \"x\"}",
    ] {
        assert!(!fits_as_is(bad, &schema));
        assert!(!as_is::oracle::fits(bad, &schema));
    }
    let deep = format!("{{\"unknown\": {}{}}}", "[".repeat(200), "]".repeat(200));
    assert!(!fits_as_is(deep.as_bytes(), &schema));
}

#[test]
fn merged_schemas_keep_the_first_type_of_a_column_and_gain_the_rest() {
    let ours = grown(
        &empty(),
        &[json!({"id": 1, "v": 5, "user": {"name": "a"}, "tags": [{"k": "x"}], "Email": "a"})],
    );
    let theirs = grown(
        &empty(),
        &[
            json!({"id": 2, "v": "five", "w": true, "user": {"age": 3}, "tags": [{"n": 1}], "email": "b"}),
        ],
    );
    let merged = merge(&ours, &theirs).expect("theirs adds columns");
    let shape = shape_of(&merged);
    let of = |name: &str| {
        shape
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    assert_eq!(
        of("v"),
        shape_of(&ours).iter().find(|(n, _)| n == "v").unwrap().1,
        "v keeps our type"
    );
    assert!(
        of("user").contains("name") && of("user").contains("age"),
        "{}",
        of("user")
    );
    assert!(
        of("tags").contains("k") && of("tags").contains("n"),
        "{}",
        of("tags")
    );
    assert!(shape.iter().any(|(n, _)| n == "w"));
    assert!(
        !shape.iter().any(|(n, _)| n == "email"),
        "email clashes with Email when case is ignored"
    );
    assert_eq!(merged.fields().last().unwrap().name(), EXTRA_COLUMN);
    assert!(merge(&merged, &theirs).is_none(), "nothing more to add");
    assert!(merge(&merged, &ours).is_none());
}
