//! The MQTT payload codecs' fuzz target body, shared by the cargo-fuzz target
//! `mqtt_codec` and the regular test that replays its corpus.
//!
//! The first byte picks the topic's format, the field types and whether a timestamp is
//! read; the rest is the payload, decoded as a message, read as an availability message,
//! and every value decoded is encoded again as a command and compared with itself. None of
//! it may panic.
//!
//! Not part of the adapter's API: public only so the fuzz crate can link it.

use std::time::SystemTime;

use fieldgate_api::FieldSpec;

use fieldgate_payload::fuzzing::TYPES;
use fieldgate_payload::{
    encode, same_value, Availability, FieldDecoder, Format, Locator, Pointer, Template, TimeUnit,
    TimestampSpec, TopicDecoder,
};

/// Decodes `data` as the first byte says; checks that nothing panics.
pub fn codec(data: &[u8]) {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let format = match pick % 3 {
        0 => Format::Plain,
        1 => Format::Json,
        _ => Format::Senml,
    };
    let names = ["temperature", "state", "a/b", "0", ""];
    let fields: Vec<FieldDecoder> = TYPES
        .iter()
        .enumerate()
        .map(|(i, kind)| FieldDecoder {
            kind: *kind,
            locator: match format {
                Format::Plain => Locator::Whole,
                Format::Json | Format::Cbor => Locator::Pointer(
                    Pointer::parse(&format!("/{}", names[i % names.len()].replace('/', "~1")))
                        .unwrap_or_else(|_| Pointer::root()),
                ),
                Format::Senml | Format::SenmlCbor => {
                    Locator::Senml(names[(i + usize::from(pick)) % 4].to_owned())
                }
            },
            labels: vec!["on".into(), "off".into(), "1".into()],
        })
        .collect();
    let timestamp = (format == Format::Json && pick & 0x10 != 0).then(|| TimestampSpec {
        pointer: Pointer::parse("/time").unwrap_or_else(|_| Pointer::root()),
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
    if let Ok(decoded) = decoder.decode(payload, SystemTime::now()) {
        for (i, value, _) in decoded.values {
            let mut spec = FieldSpec::new("f", TYPES[i]);
            spec.values = vec!["on".into(), "off".into(), "1".into()];
            spec.writable = true;
            spec.decimals = (pick & 0x40 != 0).then_some(pick % 7);
            for template in [
                Template::Plain,
                Template::Json {
                    pointer: Pointer::parse("/x/y").unwrap_or_else(|_| Pointer::root()),
                },
            ] {
                if encode(&template, &spec, &value, None).is_ok() {
                    let _ = same_value(&spec, &value, &value);
                }
                let _ = encode(&template, &spec, &value, Some(("ON", "OFF")));
            }
        }
    }
    let availability = Availability {
        pointer: (pick & 1 == 0)
            .then(|| Pointer::parse("/state").unwrap_or_else(|_| Pointer::root())),
        online: "online".into(),
        offline: "offline".into(),
    };
    let _ = availability.decode(payload);
    let _ = crate::localpart::map_segment(&String::from_utf8_lossy(payload), "");
}
