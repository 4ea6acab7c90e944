//! Decoders: a topic's (or resource's) format and fields, and a message read with them.

use std::fmt;
use std::time::SystemTime;

use fieldgate_api::{FieldType, Value};
use serde::Deserialize;

use crate::convert::Scalar;
use crate::error::{json_error, quoted, DecodeError};
use crate::pointer::Pointer;
use crate::time::{date_time, number_time, text_time, TimeUnit};
use crate::tree::Node;
use crate::{cbor, senml};

/// A payload format; all fields fed by one topic (or resource) share it.
///
/// In configuration: `"plain"`, `"json"`, `"senml"`, `"cbor"`, `"senml-cbor"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The payload is the value, as UTF-8 text.
    Plain,
    /// A JSON document; fields are found by pointers.
    Json,
    /// A SenML JSON pack (RFC 8428); fields are found by record name.
    Senml,
    /// A CBOR item (RFC 8949); fields are found by pointers (see [`Pointer`]).
    Cbor,
    /// A SenML CBOR pack (RFC 8428 §6); fields are found by record name.
    #[serde(rename = "senml-cbor")]
    SenmlCbor,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Plain => "plain",
            Format::Json => "JSON",
            Format::Senml => "SenML",
            Format::Cbor => "CBOR",
            Format::SenmlCbor => "SenML CBOR",
        })
    }
}

impl Format {
    /// Whether a payload of this format is CBOR, where every byte counts (a space is the
    /// integer −1), rather than text.
    fn is_cbor(self) -> bool {
        matches!(self, Format::Cbor | Format::SenmlCbor)
    }
}

/// Where one field's value is in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    /// The whole payload: a plain payload, or the whole JSON or CBOR document.
    Whole,
    /// JSON or CBOR: the value at a pointer (the root pointer is the whole document).
    Pointer(Pointer),
    /// SenML (JSON or CBOR): the record whose full name (`bn` + `n`) is this, or whose own
    /// `n` is.
    Senml(String),
}

/// The pointer to a field named `name` at the top of a JSON object or CBOR map
/// (`/<name>`, with `~` and `/` escaped as RFC 6901 says).
pub fn default_pointer(name: &str) -> String {
    format!("/{}", name.replace('~', "~0").replace('/', "~1"))
}

impl Locator {
    /// Where field `name` is in a payload of `format`, as a configuration names it: the
    /// whole payload (plain text), `pointer` (JSON and CBOR; `/<name>` if not given), or
    /// the SenML record `senml_name` (`name` if not given). `Err`: the pointer as written
    /// and why it is none.
    pub fn for_field(
        format: Format,
        name: &str,
        pointer: Option<&str>,
        senml_name: Option<&str>,
    ) -> Result<Locator, (String, crate::PointerError)> {
        Ok(match format {
            Format::Plain => Locator::Whole,
            Format::Json | Format::Cbor => {
                let text = pointer.map_or_else(|| default_pointer(name), str::to_owned);
                Locator::Pointer(Pointer::parse(&text).map_err(|e| (text, e))?)
            }
            Format::Senml | Format::SenmlCbor => {
                Locator::Senml(senml_name.unwrap_or(name).to_owned())
            }
        })
    }

    /// Where this locator points in a message of `format`, for error messages.
    pub(crate) fn place(&self, format: Format) -> String {
        match self {
            Locator::Whole => "in the payload".to_owned(),
            Locator::Pointer(p) => p.place(format),
            Locator::Senml(name) => format!("in SenML record {}", quoted(name)),
        }
    }

    /// What kind of locator this is, for error messages.
    fn what(&self) -> &'static str {
        match self {
            Locator::Whole => "the whole payload",
            Locator::Pointer(_) => "a JSON pointer",
            Locator::Senml(_) => "a SenML record name",
        }
    }

    /// Whether this locator can find a value in a payload of `format`.
    pub(crate) fn fits(&self, format: Format) -> bool {
        matches!(
            (self, format),
            (Locator::Whole, Format::Plain | Format::Json | Format::Cbor)
                | (Locator::Pointer(_), Format::Json | Format::Cbor)
                | (Locator::Senml(_), Format::Senml | Format::SenmlCbor)
        )
    }
}

/// Where a JSON or CBOR message carries its time, and how: an RFC 3339 time, or a number
/// (or numeric text) in `unit`; in CBOR also a tagged date/time (tag 0, RFC 3339 text;
/// tag 1, Unix seconds whatever `unit` says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampSpec {
    /// Where the time is.
    pub pointer: Pointer,
    /// The unit of a numeric time.
    pub unit: TimeUnit,
}

/// How one field is read from its topic's messages.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDecoder {
    /// The field's type.
    pub kind: FieldType,
    /// Where its value is.
    pub locator: Locator,
    /// The labels of an enum field (unused for other types).
    pub labels: Vec<String>,
}

/// How a topic's messages are read: its format, where its messages carry their time, and
/// the fields it feeds.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicDecoder {
    /// The payload format.
    pub format: Format,
    /// Where a JSON or CBOR message carries its time, if it does.
    pub timestamp: Option<TimestampSpec>,
    /// The fields, found in every message; results refer to them by index.
    pub fields: Vec<FieldDecoder>,
}

/// What one message said.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    /// The values found: (index in [`TopicDecoder::fields`], value, time of the value), in
    /// the order of the fields.
    pub values: Vec<(usize, Value, SystemTime)>,
    /// The fields whose value was there but unreadable, and why.
    pub errors: Vec<(usize, DecodeError)>,
}

/// Why a topic's decoder cannot work as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// A field's locator does not fit the topic's format.
    #[error("field {index}: {what} cannot locate a value in a {format} payload")]
    Locator {
        /// The field's index.
        index: usize,
        /// The locator's kind.
        what: &'static str,
        /// The topic's format.
        format: Format,
    },
    /// A SenML field names no record.
    #[error("field {index}: the SenML record name is empty")]
    EmptyName {
        /// The field's index.
        index: usize,
    },
    /// An enum field without labels.
    #[error("field {index}: an enum field needs labels")]
    NoLabels {
        /// The field's index.
        index: usize,
    },
    /// A timestamp pointer on a topic that is neither JSON nor CBOR.
    #[error("a timestamp pointer needs the JSON or CBOR format, not {0}")]
    Timestamp(Format),
}

impl TopicDecoder {
    /// Checks that every field can be found in the topic's format; meant for the
    /// configuration, so that a mistake is not reported with every message.
    pub fn validate(&self) -> Result<(), SetupError> {
        if self.timestamp.is_some() && !matches!(self.format, Format::Json | Format::Cbor) {
            return Err(SetupError::Timestamp(self.format));
        }
        for (index, field) in self.fields.iter().enumerate() {
            if !field.locator.fits(self.format) {
                return Err(SetupError::Locator {
                    index,
                    what: field.locator.what(),
                    format: self.format,
                });
            }
            if matches!(&field.locator, Locator::Senml(name) if name.is_empty()) {
                return Err(SetupError::EmptyName { index });
            }
            if field.kind == FieldType::Enum && field.labels.is_empty() {
                return Err(SetupError::NoLabels { index });
            }
        }
        Ok(())
    }

    /// Reads one message, received at `arrival`.
    ///
    /// `Err` when the payload as a whole is unusable: a plain payload that is not UTF-8,
    /// a JSON or CBOR payload that is not JSON or CBOR, a SenML payload that is not a
    /// pack, an unreadable timestamp. Otherwise the values found; a field absent from the
    /// message is neither a value nor an error, and a field whose value cannot be read is
    /// an error beside the others' values.
    pub fn decode(&self, payload: &[u8], arrival: SystemTime) -> Result<Decoded, DecodeError> {
        let mut out = Decoded {
            values: Vec::with_capacity(self.fields.len()),
            errors: Vec::new(),
        };
        let empty = if self.format.is_cbor() {
            payload.is_empty()
        } else {
            payload.trim_ascii().is_empty()
        };
        if empty {
            return Ok(out);
        }
        match self.format {
            Format::Plain => self.decode_plain(payload, arrival, &mut out)?,
            Format::Json => {
                let doc: Node = serde_json::from_slice(payload).map_err(json_error)?;
                self.decode_tree(&doc, arrival, &mut out)?;
            }
            Format::Cbor => {
                let doc = cbor::parse(payload)?;
                self.decode_tree(&doc, arrival, &mut out)?;
            }
            Format::Senml => {
                let records = senml::from_json(payload)?;
                senml::resolve(&records, self, arrival, &mut out)?;
            }
            Format::SenmlCbor => {
                let doc = cbor::parse(payload)?;
                let records = senml::from_cbor(&doc)?;
                senml::resolve(&records, self, arrival, &mut out)?;
            }
        }
        Ok(out)
    }

    fn decode_plain(
        &self,
        payload: &[u8],
        arrival: SystemTime,
        out: &mut Decoded,
    ) -> Result<(), DecodeError> {
        let text = std::str::from_utf8(payload)
            .map_err(|e| DecodeError::NotUtf8 {
                offset: e.valid_up_to(),
            })?
            .trim_ascii();
        for (i, field) in self.fields.iter().enumerate() {
            match &field.locator {
                Locator::Whole => {
                    out.put(i, field.convert(Scalar::Text(text), self.format), arrival)
                }
                other => out.errors.push((i, misplaced(other, self.format))),
            }
        }
        Ok(())
    }

    /// A JSON or CBOR message, read into a tree.
    fn decode_tree(
        &self,
        doc: &Node,
        arrival: SystemTime,
        out: &mut Decoded,
    ) -> Result<(), DecodeError> {
        let stamp = match &self.timestamp {
            Some(spec) => spec.read(doc, self.format)?.unwrap_or(arrival),
            None => arrival,
        };
        for (i, field) in self.fields.iter().enumerate() {
            let found = match &field.locator {
                Locator::Whole => Some(doc),
                Locator::Pointer(p) => p.find(doc),
                other => {
                    out.errors.push((i, misplaced(other, self.format)));
                    continue;
                }
            };
            if let Some(scalar) = found.and_then(Scalar::of) {
                out.put(i, field.convert(scalar, self.format), stamp);
            }
        }
        Ok(())
    }
}

impl Decoded {
    pub(crate) fn put(
        &mut self,
        index: usize,
        value: Result<Value, DecodeError>,
        time: SystemTime,
    ) {
        match value {
            Ok(value) => self.values.push((index, value, time)),
            Err(e) => self.errors.push((index, e)),
        }
    }
}

/// The error of a field whose locator does not fit the topic's format (a configuration
/// mistake [`TopicDecoder::validate`] catches).
pub(crate) fn misplaced(locator: &Locator, format: Format) -> DecodeError {
    DecodeError::Locator {
        what: locator.what(),
        format,
    }
}

impl TimestampSpec {
    /// The message's time: `None` if it carries none, `Err` if it is unreadable.
    fn read(&self, doc: &Node, format: Format) -> Result<Option<SystemTime>, DecodeError> {
        let bad = |reason: String| DecodeError::BadTime {
            at: self.pointer.place(format),
            reason,
        };
        match self.pointer.find(doc) {
            None | Some(Node::Null) => Ok(None),
            Some(Node::Number(n)) => number_time(*n, self.unit).map(Some).map_err(bad),
            Some(Node::String(s)) => text_time(s, self.unit).map(Some).map_err(bad),
            Some(Node::Epoch(n)) => number_time(*n, TimeUnit::Seconds).map(Some).map_err(bad),
            Some(Node::DateTime(s)) => date_time(s).map(Some).map_err(bad),
            Some(other) => Err(bad(format!("expected a time, got {}", other.kind()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::quoted;
    use crate::testing::*;
    use crate::time::in_range;
    use crate::{Availability, TimeUnit};

    // -- plain ---------------------------------------------------------------------------

    #[test]
    fn plain_payloads_are_trimmed_text() {
        assert_eq!(plain(FieldType::Int, b" 21\r\n"), Ok(Value::Int(21)));
        assert_eq!(plain(FieldType::Double, b"21.5"), Ok(Value::Double(21.5)));
        assert_eq!(
            plain(FieldType::Double, b"-2e-3"),
            Ok(Value::Double(-0.002))
        );
        assert_eq!(
            plain(FieldType::Long, b"-9223372036854775808"),
            Ok(Value::Long(i64::MIN))
        );
        assert_eq!(plain(FieldType::Bool, b"ON"), Ok(Value::Bool(true)));
        assert_eq!(
            plain(FieldType::String, b"\tidle \n"),
            Ok(Value::String("idle".into()))
        );
        assert_eq!(
            plain(FieldType::String, "Küche 😀".as_bytes()),
            Ok(Value::String("Küche 😀".into()))
        );
        let t = plain(FieldType::Timestamp, b"2024-05-01T12:00:00Z");
        assert_eq!(t, Ok(Value::Timestamp(at(NOW))));
    }

    #[test]
    fn plain_values_are_stamped_with_arrival() {
        let t = topic(Format::Plain, vec![field(FieldType::Int, Locator::Whole)]);
        let d = t.decode(b"7", at(NOW)).unwrap();
        assert_eq!(d.values, vec![(0, Value::Int(7), at(NOW))]);
    }

    #[test]
    fn plain_payloads_must_be_utf8() {
        let t = topic(
            Format::Plain,
            vec![field(FieldType::String, Locator::Whole)],
        );
        let e = t.decode(b"ab\xff\xfe", at(NOW)).unwrap_err();
        assert_eq!(e, DecodeError::NotUtf8 { offset: 2 });
        assert_eq!(
            e.to_string(),
            "payload is not UTF-8 (invalid byte at offset 2)"
        );
        // A truncated multi-byte character.
        assert_eq!(
            t.decode("é".as_bytes()[..1].as_ref(), at(NOW)).unwrap_err(),
            DecodeError::NotUtf8 { offset: 0 }
        );
    }

    #[test]
    fn empty_payloads_yield_nothing() {
        for format in [Format::Plain, Format::Json, Format::Senml] {
            let t = topic(format, vec![field(FieldType::String, Locator::Whole)]);
            for payload in [&b""[..], b"  \r\n\t"] {
                assert_eq!(
                    t.decode(payload, at(NOW)),
                    Ok(Decoded::default()),
                    "{format}"
                );
            }
        }
    }

    #[test]
    fn plain_garbage_is_reported_per_field() {
        assert!(matches!(
            plain(FieldType::Int, b"abc"),
            Err(DecodeError::WrongType { .. })
        ));
        assert!(matches!(
            plain(FieldType::Double, b"NaN"),
            Err(DecodeError::NotFinite { .. })
        ));
        assert!(matches!(
            plain(FieldType::Double, b"inf"),
            Err(DecodeError::NotFinite { .. })
        ));
        assert!(matches!(
            plain(FieldType::Double, b"-Infinity"),
            Err(DecodeError::NotFinite { .. })
        ));
        assert!(matches!(
            plain(FieldType::Double, b"1e400"),
            Err(DecodeError::NotFinite { .. })
        ));
        assert!(matches!(
            plain(FieldType::Double, b"21.5 C"),
            Err(DecodeError::WrongType { .. })
        ));
        assert!(matches!(
            plain(FieldType::Int, b"0x10"),
            Err(DecodeError::WrongType { .. })
        ));
        assert!(matches!(
            plain(FieldType::Bool, b"maybe"),
            Err(DecodeError::WrongType { .. })
        ));
    }

    fn zigbee_topic() -> TopicDecoder {
        topic(
            Format::Json,
            vec![
                json_field(FieldType::Double, "/temperature"),
                json_field(FieldType::Double, "/humidity"),
                json_field(FieldType::Int, "/battery"),
                json_field(FieldType::Int, "/linkquality"),
                json_field(FieldType::Bool, "/state"),
            ],
        )
    }

    #[test]
    fn a_json_object_feeds_all_its_fields() {
        let d = zigbee_topic()
            .decode(
                br#"{"battery":97,"humidity":45.2,"linkquality":120,"state":"ON","temperature":21.5}"#,
                at(NOW),
            )
            .unwrap();
        assert_eq!(
            d.values,
            vec![
                (0, Value::Double(21.5), at(NOW)),
                (1, Value::Double(45.2), at(NOW)),
                (2, Value::Int(97), at(NOW)),
                (3, Value::Int(120), at(NOW)),
                (4, Value::Bool(true), at(NOW)),
            ]
        );
        assert!(d.errors.is_empty());
    }

    #[test]
    fn absent_and_null_fields_are_skipped() {
        let d = zigbee_topic()
            .decode(br#"{"temperature":21.5,"battery":null,"other":1}"#, at(NOW))
            .unwrap();
        assert_eq!(d.values, vec![(0, Value::Double(21.5), at(NOW))]);
        assert!(d.errors.is_empty());
        // A document of another shape altogether: nothing there, nothing wrong.
        for payload in ["[1,2]", "21", "\"x\"", "null", "{}"] {
            let d = zigbee_topic().decode(payload.as_bytes(), at(NOW)).unwrap();
            assert_eq!(d, Decoded::default(), "{payload}");
        }
    }

    #[test]
    fn a_wrong_value_does_not_spoil_its_neighbours() {
        let d = zigbee_topic()
            .decode(
                br#"{"temperature":"warm","humidity":45.2,"battery":3000000000,"linkquality":12.5,"state":"OFF"}"#,
                at(NOW),
            )
            .unwrap();
        assert_eq!(
            d.values,
            vec![
                (1, Value::Double(45.2), at(NOW)),
                (4, Value::Bool(false), at(NOW))
            ]
        );
        let texts: Vec<_> = d.errors.iter().map(|(i, e)| (*i, e.to_string())).collect();
        assert_eq!(
            texts,
            vec![
                (
                    0,
                    r#"expected a number at /temperature, got the text "warm""#.to_owned()
                ),
                (
                    2,
                    "value 3000000000 at /battery is out of range for an int field".to_owned()
                ),
                (
                    3,
                    "value 12.5 at /linkquality is not a whole number, as an int field needs"
                        .to_owned()
                ),
            ]
        );
    }

    #[test]
    fn nested_pointers_and_the_whole_document() {
        let t = topic(
            Format::Json,
            vec![
                json_field(FieldType::Int, "/update/state/0"),
                json_field(FieldType::String, "/a~1b"),
                field(FieldType::Double, Locator::Whole),
                json_field(FieldType::Double, ""),
            ],
        );
        let d = t
            .decode(br#"{"update":{"state":[4,5]},"a/b":"x"}"#, at(NOW))
            .unwrap();
        assert_eq!(
            d.values,
            vec![
                (0, Value::Int(4), at(NOW)),
                (1, Value::String("x".into()), at(NOW))
            ]
        );
        assert_eq!(d.errors.len(), 2);
        assert_eq!(
            d.errors[0].1.to_string(),
            "expected a number in the payload, got an object"
        );
        assert_eq!(
            d.errors[1].1.to_string(),
            "expected a number at the JSON root, got an object"
        );
        let d = t.decode(b" 21.5 ", at(NOW)).unwrap();
        assert_eq!(
            d.values,
            vec![
                (2, Value::Double(21.5), at(NOW)),
                (3, Value::Double(21.5), at(NOW))
            ]
        );
    }

    #[test]
    fn not_json_is_refused_with_its_position() {
        let t = zigbee_topic();
        let e = t.decode(br#"{"temperature" 21}"#, at(NOW)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not valid JSON at line 1 column 16: expected `:`"
        );
        let e = t.decode(b"{\n  \"a\": tru }", at(NOW)).unwrap_err();
        assert!(matches!(e, DecodeError::NotJson { line: 2, .. }), "{e}");
        for payload in [
            &b"\xff\xfe\x00garbage"[..],
            b"online",
            b"{\"a\":1}{",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":NaN}",
            b"{\"a\":1e400}",
            b"\x00\x01\x02",
        ] {
            let e = t.decode(payload, at(NOW)).unwrap_err();
            assert!(matches!(e, DecodeError::NotJson { .. }), "{payload:?}: {e}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let t = zigbee_topic();
        let deep = vec![b'['; 1 << 20];
        let e = t.decode(&deep, at(NOW)).unwrap_err();
        assert!(e.to_string().contains("recursion limit"), "{e}");
        let deep = r#"{"a":"#.repeat(100_000);
        assert!(t.decode(deep.as_bytes(), at(NOW)).is_err());
        // Nesting within the limit is fine.
        let ok = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(t.decode(ok.as_bytes(), at(NOW)).is_ok());
    }

    #[test]
    fn errors_quote_little_of_hostile_payloads() {
        let huge = format!(r#"{{"x":"{}"}}"#, r"\u0007A".repeat(1 << 20));
        for kind in [
            FieldType::Int,
            FieldType::Double,
            FieldType::Bool,
            FieldType::Timestamp,
        ] {
            let t = topic(Format::Json, vec![json_field(kind, "/x")]);
            let e = one(t.decode(huge.as_bytes(), at(NOW)).unwrap()).unwrap_err();
            let text = e.to_string();
            assert!(text.len() < 300, "{kind:?}: {} bytes", text.len());
            assert!(
                !text.contains('\u{7}'),
                "control characters are escaped: {text}"
            );
        }
        let mut f = json_field(FieldType::Enum, "/x");
        f.labels = vec!["a".into()];
        let e = one(topic(Format::Json, vec![f])
            .decode(huge.as_bytes(), at(NOW))
            .unwrap());
        assert!(e.unwrap_err().to_string().len() < 300);
        // Cut at a character boundary.
        assert_eq!(quoted(&"é".repeat(40)), format!("{:?}…", "é".repeat(32)));
        assert_eq!(quoted("ok"), "\"ok\"");
    }

    #[test]
    fn json_timestamps_stamp_the_message() {
        let mut t = zigbee_topic();
        t.timestamp = Some(TimestampSpec {
            pointer: ptr("/last_seen"),
            unit: TimeUnit::Millis,
        });
        let d = t
            .decode(br#"{"temperature":21.5,"last_seen":1714564800250}"#, at(0))
            .unwrap();
        assert_eq!(
            d.values,
            vec![(0, Value::Double(21.5), at(NOW) + Duration::from_millis(250))]
        );
        let d = t
            .decode(
                br#"{"temperature":21.5,"last_seen":"2024-05-01T14:00:00+02:00"}"#,
                at(0),
            )
            .unwrap();
        assert_eq!(d.values[0].2, at(NOW));
        let d = t
            .decode(
                br#"{"temperature":21.5,"last_seen":"1714564800000"}"#,
                at(0),
            )
            .unwrap();
        assert_eq!(d.values[0].2, at(NOW));
        // Absent or null: the arrival.
        for payload in [
            r#"{"temperature":21.5}"#,
            r#"{"temperature":21.5,"last_seen":null}"#,
        ] {
            let d = t.decode(payload.as_bytes(), at(NOW)).unwrap();
            assert_eq!(d.values[0].2, at(NOW));
        }
        // There but unreadable: the message is refused.
        for payload in [
            r#"{"temperature":21.5,"last_seen":"soon"}"#,
            r#"{"temperature":21.5,"last_seen":-5}"#,
            r#"{"temperature":21.5,"last_seen":1e300}"#,
            r#"{"temperature":21.5,"last_seen":{}}"#,
            r#"{"temperature":21.5,"last_seen":true}"#,
        ] {
            let e = t.decode(payload.as_bytes(), at(NOW)).unwrap_err();
            assert!(matches!(e, DecodeError::BadTime { .. }), "{payload}: {e}");
        }
        t.timestamp = Some(TimestampSpec {
            pointer: ptr("/ts"),
            unit: TimeUnit::Seconds,
        });
        let d = t
            .decode(br#"{"temperature":21.5,"ts":1714564800.5}"#, at(0))
            .unwrap();
        assert_eq!(d.values[0].2, at(NOW) + Duration::from_millis(500));
        let e = t.decode(br#"{"ts":"x"}"#, at(0)).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"unreadable time at /ts: "x" is not an RFC 3339 time"#
        );
    }

    #[test]
    fn locators_must_fit_the_format() {
        let mut t = topic(Format::Plain, vec![json_field(FieldType::Int, "/x")]);
        assert_eq!(
            t.validate().unwrap_err().to_string(),
            "field 0: a JSON pointer cannot locate a value in a plain payload"
        );
        // Were it used anyway, every message would say so for that field.
        let d = t.decode(b"1", at(NOW)).unwrap();
        assert_eq!(
            d.errors[0].1.to_string(),
            "a JSON pointer cannot locate a value in a plain payload"
        );
        t.format = Format::Senml;
        assert!(t.validate().is_err());
        assert_eq!(t.decode(b"[]", at(NOW)).unwrap().errors.len(), 1);
        t.format = Format::Json;
        t.fields.push(senml_field(FieldType::Int, "x"));
        assert!(matches!(
            t.validate(),
            Err(SetupError::Locator { index: 1, .. })
        ));
        assert_eq!(t.decode(b"{\"x\":1}", at(NOW)).unwrap().errors.len(), 1);

        let t = topic(Format::Senml, vec![senml_field(FieldType::Int, "")]);
        assert_eq!(t.validate(), Err(SetupError::EmptyName { index: 0 }));
        let t = topic(Format::Plain, vec![field(FieldType::Enum, Locator::Whole)]);
        assert_eq!(t.validate(), Err(SetupError::NoLabels { index: 0 }));
        let mut t = topic(Format::Senml, vec![senml_field(FieldType::Int, "a")]);
        assert_eq!(t.validate(), Ok(()));
        t.timestamp = Some(TimestampSpec {
            pointer: ptr("/t"),
            unit: TimeUnit::Seconds,
        });
        assert_eq!(t.validate(), Err(SetupError::Timestamp(Format::Senml)));
        assert!(zigbee_topic().validate().is_ok());
    }

    #[test]
    fn formats_and_units_read_from_configuration() {
        let f: Format = serde_json::from_str(r#""senml""#).unwrap();
        assert_eq!(f, Format::Senml);
        let u: TimeUnit = serde_json::from_str(r#""millis""#).unwrap();
        assert_eq!(u, TimeUnit::Millis);
    }

    #[test]
    fn mangled_payloads_never_panic() {
        // Valid payloads with bytes overwritten, dropped and repeated, by a fixed
        // pseudo-random sequence (xorshift), through every decoder.
        let mut mode = json_field(FieldType::Enum, "/m");
        mode.labels = vec!["a".into()];
        let mut json_topic = topic(
            Format::Json,
            vec![
                json_field(FieldType::Bool, "/b"),
                json_field(FieldType::Int, "/i"),
                json_field(FieldType::Long, "/l/0"),
                json_field(FieldType::Double, "/d"),
                json_field(FieldType::String, "/s"),
                json_field(FieldType::Timestamp, "/t"),
                mode,
            ],
        );
        json_topic.timestamp = Some(TimestampSpec {
            pointer: ptr("/ts"),
            unit: TimeUnit::Millis,
        });
        let kinds = [
            FieldType::Bool,
            FieldType::Int,
            FieldType::Long,
            FieldType::Double,
            FieldType::String,
            FieldType::Timestamp,
        ];
        let senml_topic = topic(
            Format::Senml,
            kinds.iter().map(|k| senml_field(*k, "d:x")).collect(),
        );
        let plain_topic = topic(
            Format::Plain,
            kinds.iter().map(|k| field(*k, Locator::Whole)).collect(),
        );
        let availability = Availability {
            pointer: Some(ptr("/state")),
            online: "online".into(),
            offline: "offline".into(),
        };
        let seeds: [&[u8]; 4] = [
            br#"{"b":"ON","i":21,"l":[9007199254740993],"d":-2.5e3,"s":"h\u00e9","t":"2024-05-01T14:00:00+02:00","m":"a","ts":1714564800000}"#,
            br#"[{"bn":"d:","bt":1714564800,"bv":1,"n":"x","v":20.5,"t":-1},{"n":"x","vs":"1","t":2},{"n":"x","vb":true}]"#,
            b"2024-05-01T12:00:00.123456789Z",
            br#"{"state":"online"}"#,
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..4000 {
            let mut payload = seeds[round % seeds.len()].to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % payload.len().max(1);
                let byte = next() as u8;
                match next() % 3 {
                    0 if !payload.is_empty() => payload[at] = byte,
                    1 if !payload.is_empty() => {
                        payload.remove(at);
                    }
                    _ => payload.insert(at, byte),
                }
            }
            for t in [&json_topic, &senml_topic, &plain_topic] {
                if let Ok(d) = t.decode(&payload, at(NOW)) {
                    for (_, value, stamp) in &d.values {
                        // Whatever is returned can be written out.
                        let _ = value.to_string();
                        assert!(in_range(*stamp).is_some());
                    }
                    for (_, e) in &d.errors {
                        assert!(e.to_string().len() < 400, "{e}");
                    }
                }
            }
            let _ = availability.decode(&payload);
        }
    }

    // -- CBOR ----------------------------------------------------------------------------

    fn as_cbor(json: &str) -> Vec<u8> {
        to_cbor(&serde_json::from_str(json).unwrap(), false)
    }

    /// A JSON message and the same message in CBOR give the same values and errors.
    #[test]
    fn cbor_reads_as_json_does() {
        let mut mode = json_field(FieldType::Enum, "/mode");
        mode.labels = vec!["auto".into(), "1".into()];
        let mut fields = zigbee_topic().fields;
        fields.extend([
            json_field(FieldType::Long, "/l"),
            json_field(FieldType::String, "/s"),
            json_field(FieldType::Timestamp, "/t"),
            json_field(FieldType::Int, "/a/1/b"),
            mode,
            field(FieldType::String, Locator::Whole),
        ]);
        for doc in [
            r#"{"battery":97,"humidity":45.2,"linkquality":120,"state":"ON","temperature":21.5}"#,
            r#"{"temperature":21.5,"battery":null,"other":1}"#,
            r#"{"temperature":"warm","humidity":45.2,"battery":3000000000,"linkquality":12.5,"state":"OFF"}"#,
            r#"{"l":9223372036854775807,"s":" x ","t":"2024-05-01T14:00:00+02:00","mode":"auto"}"#,
            r#"{"l":-9223372036854775808,"s":21.5,"t":1714564800.5,"mode":1,"a":[0,{"b":"21"}]}"#,
            r#"{"l":18446744073709551615,"s":false,"t":-1,"mode":"x","state":2,"humidity":"1e999"}"#,
            r#"{"l":1e18,"s":[],"t":"soon","temperature":1e300,"battery":2.1e1}"#,
            r#"[1,2]"#,
            r#""x""#,
            r#"21"#,
        ] {
            let mut json = topic(Format::Json, fields.clone());
            json.timestamp = Some(TimestampSpec {
                pointer: ptr("/ts"),
                unit: TimeUnit::Seconds,
            });
            let mut cbor = json.clone();
            cbor.format = Format::Cbor;
            let a = json.decode(doc.as_bytes(), at(NOW)).unwrap();
            let b = cbor.decode(&as_cbor(doc), at(NOW)).unwrap();
            assert_eq!(a, b, "{doc}");
        }
    }

    #[test]
    fn cbor_paths_name_integer_keys() {
        let t = topic(
            Format::Cbor,
            vec![
                json_field(FieldType::Double, "/1"),
                json_field(FieldType::Bool, "/2/0"),
                json_field(FieldType::Int, "/-3/1"),
                json_field(FieldType::String, "/name"),
                field(FieldType::String, Locator::Whole),
                json_field(FieldType::Double, ""),
            ],
        );
        // {1: 21.5, 2: {0: true}, -3: [5, 6], "name": "pump"}
        let payload = [
            0xa4, 0x01, 0xf9, 0x4d, 0x60, 0x02, 0xa1, 0x00, 0xf5, 0x22, 0x82, 0x05, 0x06, 0x64,
            b'n', b'a', b'm', b'e', 0x64, b'p', b'u', b'm', b'p',
        ];
        let d = t.decode(&payload, at(NOW)).unwrap();
        assert_eq!(
            d.values,
            vec![
                (0, Value::Double(21.5), at(NOW)),
                (1, Value::Bool(true), at(NOW)),
                (2, Value::Int(6), at(NOW)),
                (3, Value::String("pump".into()), at(NOW)),
            ]
        );
        let texts: Vec<_> = d.errors.iter().map(|(i, e)| (*i, e.to_string())).collect();
        assert_eq!(
            texts,
            vec![
                (4, "expected text in the payload, got an object".to_owned()),
                (
                    5,
                    "expected a number at the CBOR root, got an object".to_owned()
                ),
            ]
        );
        // The whole payload, and the root pointer.
        let d = t.decode(&[0xf9, 0x4d, 0x60], at(NOW)).unwrap();
        assert_eq!(
            d.values,
            vec![
                (4, Value::String("21.5".into()), at(NOW)),
                (5, Value::Double(21.5), at(NOW))
            ]
        );
    }

    #[test]
    fn cbor_payloads_are_empty_only_when_empty() {
        let t = topic(Format::Cbor, vec![field(FieldType::Int, Locator::Whole)]);
        assert_eq!(t.decode(b"", at(NOW)), Ok(Decoded::default()));
        // A space is -1, a line feed 10.
        assert_eq!(one(t.decode(b" ", at(NOW)).unwrap()), Ok(Value::Int(-1)));
        assert_eq!(one(t.decode(b"\n", at(NOW)).unwrap()), Ok(Value::Int(10)));
        let e = t.decode(b"\r\n", at(NOW)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not valid CBOR at byte 1: bytes after the end of the CBOR item"
        );
        let t = topic(Format::SenmlCbor, vec![senml_field(FieldType::Int, "a")]);
        assert_eq!(t.decode(b"", at(NOW)), Ok(Decoded::default()));
        assert!(matches!(
            t.decode(b" ", at(NOW)),
            Err(DecodeError::NotSenml { .. })
        ));
    }

    #[test]
    fn not_cbor_is_refused_as_a_whole() {
        let t = topic(
            Format::Cbor,
            vec![
                json_field(FieldType::Double, "/a"),
                json_field(FieldType::String, "/b"),
            ],
        );
        let mut four_gb = vec![0xa1, 0x61, b'b', 0x5a, 0xff, 0xff, 0xff, 0xff];
        four_gb.extend([0; 64]);
        let mut eight_eb = vec![0xa1, 0x61, b'b', 0x7b];
        eight_eb.extend([0xff; 8]);
        for (payload, says) in [
            (
                vec![0xa2, 0x61, b'a', 0x01],
                "at byte 4: the payload ends inside an item",
            ),
            (
                vec![0xa1, 0x61, b'a', 0xfb, 0x40],
                "at byte 3: the payload ends inside an item",
            ),
            (
                vec![0xa1, 0x61, b'a', 0x01, 0x00],
                "at byte 4: bytes after the end",
            ),
            (
                vec![0xa1, 0x61, b'b', 0x62, 0xc3, 0x28],
                "at byte 3: invalid utf-8",
            ),
            (
                vec![0xa1, 0x61, b'b', 0x7f, 0x61, 0xff, 0xff],
                "at byte 4: invalid utf-8",
            ),
            (vec![0xa1, 0x61, b'a', 0x1c], "at byte 3"),
            (four_gb, "at byte 3: the payload ends inside an item"),
            (eight_eb, "at byte 3: the payload ends inside an item"),
            (
                vec![0xbf, 0x61, b'a', 0xff],
                "at byte 3: a map ends between a key and its value",
            ),
            (
                b"{\"a\":1}".to_vec(),
                "at byte 0: the payload ends inside an item",
            ),
        ] {
            let e = t.decode(&payload, at(NOW)).unwrap_err();
            assert!(
                matches!(e, DecodeError::NotCbor { .. }),
                "{payload:02x?}: {e}"
            );
            assert!(e.to_string().contains(says), "{payload:02x?}: {e}");
        }
        // Deep nesting, of every kind of container and of tags.
        for byte in [0x81, 0x9f, 0xa1, 0xbf, 0xc6] {
            let e = t.decode(&vec![byte; 1 << 20], at(NOW)).unwrap_err();
            assert_eq!(
                e.to_string(),
                "not valid CBOR at byte 128: nesting deeper than 128 levels"
            );
        }
        let mut ok = vec![0xa1, 0x61, b'a'];
        ok.extend([0x81; 100]);
        ok.push(0x01);
        let d = t.decode(&ok, at(NOW)).unwrap();
        assert_eq!(
            d.errors[0].1.to_string(),
            "expected a number at /a, got an array"
        );
        // A hostile string in an error is cut.
        let mut huge = vec![0xa1, 0x61, b'a', 0x7a, 0x00, 0x10, 0x00, 0x00];
        huge.extend(std::iter::repeat_n(b'x', 1 << 20));
        let e = one(
            topic(Format::Cbor, vec![json_field(FieldType::Double, "/a")])
                .decode(&huge, at(NOW))
                .unwrap(),
        )
        .unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn cbor_timestamps_stamp_the_message() {
        let mut t = topic(Format::Cbor, vec![json_field(FieldType::Double, "/1")]);
        t.timestamp = Some(TimestampSpec {
            pointer: ptr("/6"),
            unit: TimeUnit::Millis,
        });
        assert_eq!(t.validate(), Ok(()));
        let msg = |time: &[u8]| [&[0xa2, 0x01, 0x02, 0x06][..], time].concat();
        let millis = (NOW * 1000 + 250).to_be_bytes();
        for (time, want) in [
            (
                [&[0x1b][..], &millis].concat(),
                at(NOW) + Duration::from_millis(250),
            ),
            // Tag 1 counts seconds, whatever the unit.
            (vec![0xc1, 0x1a, 0x66, 0x32, 0x2e, 0xc0], at(NOW)),
            (
                [&[0xc0, 0x74][..], b"2024-05-01T12:00:00Z"].concat(),
                at(NOW),
            ),
            (vec![0xf6], at(0)),
        ] {
            let d = t.decode(&msg(&time), at(0)).unwrap();
            assert_eq!(d.values, vec![(0, Value::Double(2.0), want)], "{time:02x?}");
        }
        let d = t.decode(&[0xa1, 0x01, 0x02], at(0)).unwrap();
        assert_eq!(d.values[0].2, at(0));
        for (time, says) in [
            (
                vec![0x20],
                "unreadable time at /6: -1 is before 1970 or after 9999",
            ),
            (
                vec![0xc1, 0x61, b'x'],
                "expected a time, got an epoch time (tag 1) that is not a number",
            ),
            (vec![0x40], "expected a time, got a byte string"),
            (vec![0xc0, 0x61, b'x'], r#""x" is not an RFC 3339 time"#),
        ] {
            let e = t.decode(&msg(&time), at(0)).unwrap_err();
            assert!(e.to_string().contains(says), "{time:02x?}: {e}");
        }
    }

    #[test]
    fn cbor_locators_and_formats_from_configuration() {
        let t = topic(Format::Cbor, vec![senml_field(FieldType::Int, "x")]);
        assert_eq!(
            t.validate().unwrap_err().to_string(),
            "field 0: a SenML record name cannot locate a value in a CBOR payload"
        );
        let t = topic(Format::SenmlCbor, vec![json_field(FieldType::Int, "/x")]);
        assert_eq!(
            t.validate().unwrap_err().to_string(),
            "field 0: a JSON pointer cannot locate a value in a SenML CBOR payload"
        );
        assert_eq!(t.decode(&[0x80], at(NOW)).unwrap().errors.len(), 1);
        let t = topic(
            Format::SenmlCbor,
            vec![field(FieldType::Int, Locator::Whole)],
        );
        assert!(t.validate().is_err());
        let mut t = topic(Format::SenmlCbor, vec![senml_field(FieldType::Int, "x")]);
        assert_eq!(t.validate(), Ok(()));
        t.timestamp = Some(TimestampSpec {
            pointer: ptr("/t"),
            unit: TimeUnit::Seconds,
        });
        assert_eq!(
            t.validate().unwrap_err().to_string(),
            "a timestamp pointer needs the JSON or CBOR format, not SenML CBOR"
        );
        let t = topic(Format::Cbor, vec![field(FieldType::Int, Locator::Whole)]);
        assert_eq!(t.validate(), Ok(()));
        for (text, format) in [
            ("plain", Format::Plain),
            ("json", Format::Json),
            ("senml", Format::Senml),
            ("cbor", Format::Cbor),
            ("senml-cbor", Format::SenmlCbor),
        ] {
            let f: Format = serde_json::from_str(&format!("{text:?}")).unwrap();
            assert_eq!(f, format);
        }
        assert!(serde_json::from_str::<Format>(r#""senmlcbor""#).is_err());
    }

    #[test]
    fn mangled_cbor_payloads_never_panic() {
        // As mangled_payloads_never_panic, with CBOR and SenML CBOR payloads.
        let mut mode = json_field(FieldType::Enum, "/m");
        mode.labels = vec!["a".into()];
        let mut cbor_topic = topic(
            Format::Cbor,
            vec![
                json_field(FieldType::Bool, "/b"),
                json_field(FieldType::Int, "/1"),
                json_field(FieldType::Long, "/l/0"),
                json_field(FieldType::Double, "/-2"),
                json_field(FieldType::String, "/s"),
                json_field(FieldType::Timestamp, "/t"),
                mode,
            ],
        );
        cbor_topic.timestamp = Some(TimestampSpec {
            pointer: ptr("/ts"),
            unit: TimeUnit::Millis,
        });
        let kinds = [
            FieldType::Bool,
            FieldType::Int,
            FieldType::Long,
            FieldType::Double,
            FieldType::String,
            FieldType::Timestamp,
        ];
        let senml_topic = topic(
            Format::SenmlCbor,
            kinds.iter().map(|k| senml_field(*k, "d:x")).collect(),
        );
        let whole_topic = topic(
            Format::Cbor,
            kinds.iter().map(|k| field(*k, Locator::Whole)).collect(),
        );
        let mut seeds = vec![
            as_cbor(
                r#"{"b":"ON","1":21,"l":[9007199254740993],"-2":-2.5e3,"s":"h\u00e9","t":"2024-05-01T14:00:00+02:00","m":"a","ts":1714564800000}"#,
            ),
            to_cbor(
                &serde_json::from_str(
                    r#"[{"bn":"d:","bt":1714564800,"bv":1,"n":"x","v":20.5,"t":-1},{"n":"x","vs":"1","t":2},{"n":"x","vb":true},{"n":"x","vd":"aGk"}]"#,
                )
                .unwrap(),
                true,
            ),
        ];
        seeds.push(vec![
            0xbf, 0x61, b'b', 0xc1, 0xfb, 0x41, 0xd9, 0x8c, 0x8b, 0xb0, 0x00, 0x00, 0x00, 0x61,
            b't', 0xc0, 0x74, b'2', b'0', b'2', b'4', b'-', b'0', b'5', b'-', b'0', b'1', b'T',
            b'1', b'2', b':', b'0', b'0', b':', b'0', b'0', b'Z', 0x21, 0xc4, 0x82, 0x21, 0x19,
            0x6a, 0xb3, 0x61, b's', 0x7f, 0x61, b'a', 0x61, b'b', 0xff, 0x01, 0xc2, 0x42, 0x01,
            0x00, 0xff,
        ]);
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..6000 {
            let mut payload = seeds[round % seeds.len()].clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % payload.len().max(1);
                let byte = next() as u8;
                match next() % 3 {
                    0 if !payload.is_empty() => payload[at] = byte,
                    1 if !payload.is_empty() => {
                        payload.remove(at);
                    }
                    _ => payload.insert(at, byte),
                }
            }
            for t in [&cbor_topic, &senml_topic, &whole_topic] {
                match t.decode(&payload, at(NOW)) {
                    Ok(d) => {
                        for (_, value, stamp) in &d.values {
                            let _ = value.to_string();
                            assert!(in_range(*stamp).is_some());
                        }
                        for (_, e) in &d.errors {
                            assert!(e.to_string().len() < 400, "{e}");
                        }
                    }
                    Err(e) => assert!(e.to_string().len() < 400, "{e}"),
                }
            }
        }
    }
}
