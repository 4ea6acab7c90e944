//! The payload codecs' fuzz target body, shared by the cargo-fuzz target `payload_codec`
//! and the regular test that replays its corpus (`tests/fuzz_corpus.rs`).
//!
//! The first byte picks the format (its low three bits, modulo 5: plain, JSON, SenML,
//! CBOR, SenML CBOR), whether a JSON or CBOR message's time is read and in which unit,
//! whether paths use integer keys, and the decimals of double fields; the rest is the
//! payload. It is decoded for a field of every type, read as an availability message,
//! and every value decoded is encoded again as a command in every form. None of it may
//! panic; a value encoded as JSON or CBOR must decode to the same value (by
//! [`same_value`]), and error messages stay short.
//!
//! Not part of the crate's API: public only so the fuzz crate can link it.

use std::time::SystemTime;

use fieldgate_api::{FieldSpec, FieldType, Value};

use crate::{
    encode, same_value, Availability, FieldDecoder, Format, Locator, Pointer, Template, TimeUnit,
    TimestampSpec, TopicDecoder,
};

/// Every field type, for fuzz bodies that try each (the MQTT adapter's too).
pub const TYPES: [FieldType; 7] = [
    FieldType::Bool,
    FieldType::Int,
    FieldType::Long,
    FieldType::Double,
    FieldType::String,
    FieldType::Enum,
    FieldType::Timestamp,
];

const FORMATS: [Format; 5] = [
    Format::Plain,
    Format::Json,
    Format::Senml,
    Format::Cbor,
    Format::SenmlCbor,
];

fn labels() -> Vec<String> {
    vec!["on".into(), "off".into(), "1".into()]
}

fn pointer(text: &str) -> Pointer {
    Pointer::parse(text).unwrap_or_else(|_| Pointer::root())
}

/// Decodes `data` as its first byte says; checks that nothing panics and that values
/// survive a round trip through commands.
pub fn codec(data: &[u8]) {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let format = FORMATS[usize::from(pick & 0x07) % FORMATS.len()];
    let integer_keys = pick & 0x08 != 0;
    let paths: [&str; 5] = if integer_keys {
        ["/0", "/1", "/-2", "/1/0", ""]
    } else {
        ["/temperature", "/state", "/a~1b", "/0", ""]
    };
    let names = ["temperature", "state", "a/b", "0"];
    let fields: Vec<FieldDecoder> = TYPES
        .iter()
        .enumerate()
        .map(|(i, kind)| FieldDecoder {
            kind: *kind,
            locator: match format {
                Format::Plain => Locator::Whole,
                Format::Json | Format::Cbor => Locator::Pointer(pointer(paths[i % paths.len()])),
                Format::Senml | Format::SenmlCbor => {
                    Locator::Senml(names[(i + usize::from(pick >> 4)) % names.len()].to_owned())
                }
            },
            labels: labels(),
        })
        .collect();
    let timed = matches!(format, Format::Json | Format::Cbor) && pick & 0x10 != 0;
    let timestamp = timed.then(|| TimestampSpec {
        pointer: pointer(if integer_keys { "/6" } else { "/time" }),
        unit: if pick & 0x20 != 0 {
            TimeUnit::Millis
        } else {
            TimeUnit::Seconds
        },
    });
    let decoder = TopicDecoder {
        format,
        timestamp,
        fields,
    };
    let now = SystemTime::now();
    if let Ok(decoded) = decoder.decode(payload, now) {
        for (_, e) in &decoded.errors {
            let text = e.to_string();
            assert!(text.len() < 512, "{} bytes: {text}", text.len());
        }
        for (i, value, _) in decoded.values {
            let mut spec = FieldSpec::new("f", TYPES[i]);
            spec.values = labels();
            spec.writable = true;
            spec.decimals = (pick & 0x40 != 0).then_some(pick % 7);
            round_trips(&spec, &value);
        }
    }
    let availability = Availability {
        pointer: (pick & 1 == 0).then(|| pointer("/state")),
        online: "online".into(),
        offline: "offline".into(),
    };
    let _ = availability.decode(payload);
}

/// Encodes `value` in every form; the JSON and CBOR forms must read back as the value.
fn round_trips(spec: &FieldSpec, value: &Value) {
    let path = pointer("/x/1");
    for (template, format) in [
        (Template::Plain, Format::Plain),
        (
            Template::Json {
                pointer: path.clone(),
            },
            Format::Json,
        ),
        (Template::Cbor { path: path.clone() }, Format::Cbor),
        (
            Template::Cbor {
                path: Pointer::root(),
            },
            Format::Cbor,
        ),
    ] {
        let _ = encode(&template, spec, value, Some(("ON", "OFF")));
        let Ok(payload) = encode(&template, spec, value, None) else {
            continue;
        };
        if format == Format::Plain {
            continue;
        }
        let locator = match &template {
            Template::Cbor { path } if path.is_root() => Locator::Whole,
            _ => Locator::Pointer(path.clone()),
        };
        let back = TopicDecoder {
            format,
            timestamp: None,
            fields: vec![FieldDecoder {
                kind: spec.kind,
                locator,
                labels: spec.values.clone(),
            }],
        }
        .decode(&payload, SystemTime::now());
        let Ok(back) = back else {
            panic!("{template:?} of {value:?} does not decode: {back:?}");
        };
        match back.values.as_slice() {
            [(0, echoed, _)] => assert!(
                same_value(spec, value, echoed),
                "{template:?}: {value:?} read back as {echoed:?}"
            ),
            _ => panic!("{template:?} of {value:?} read back as {back:?}"),
        }
    }
}
