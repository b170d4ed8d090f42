//! A request body through the webhook's splitter (JSON and NDJSON), then
//! every event it yields through the encoder, against a fixed schema and with
//! inference: errors are fine, panics are not.
#![no_main]

use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tributary::encode::Encoder;
use tributary::event::Event;
use tributary::source::webhook::body::{split, Format};

fn encoders() -> &'static [Encoder; 2] {
    static ENCODERS: OnceLock<[Encoder; 2]> = OnceLock::new();
    ENCODERS.get_or_init(|| {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("email", DataType::Utf8, true),
            Field::new("total", DataType::Float64, true),
            Field::new("tags", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), true),
        ]));
        [
            Encoder::new(schema, "/customer", "webhook:/fuzz"),
            Encoder::new(Arc::new(Schema::empty()), "", "webhook:/fuzz").inferring(true),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    for format in [Format::Json, Format::Ndjson] {
        if let Ok(payloads) = split(&body, format) {
            let events: Vec<Event> = payloads.into_iter().map(Event::new).collect();
            for encoder in encoders() {
                let _ = encoder.encode(&events);
            }
        }
    }
});
