//! Commands: a value written for its field by a template, and whether a device's echo
//! confirms it.

use std::time::{SystemTime, UNIX_EPOCH};

use fieldgate_api::{FieldSpec, FieldType, Value};
use serde_json::{Map, Number, Value as Json};

use crate::cbor::Writer;
use crate::error::{article, quoted};
use crate::pointer::Pointer;
use crate::time::in_range;

/// How a command's value is written into a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// The value as text.
    Plain,
    /// A JSON object holding the value at the pointer (the root pointer: the value alone).
    Json {
        /// Where the value goes.
        pointer: Pointer,
    },
    /// A CBOR map holding the value at the path (the root path: the value alone); a token
    /// that is an integer (`/1/-2`) is an integer key, any other a text key.
    Cbor {
        /// Where the value goes.
        path: Pointer,
    },
}

/// Why a value cannot be encoded for its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// A value of another type than the field's.
    #[error("{value} value cannot be written to {} field", article(*.kind))]
    WrongType {
        /// The value's type.
        value: &'static str,
        /// The field's type.
        kind: FieldType,
    },
    /// A long too large for an int field.
    #[error("value {value} is out of range for {} field", article(*.kind))]
    OutOfRange {
        /// The value.
        value: String,
        /// The field's type.
        kind: FieldType,
    },
    /// NaN or an infinity.
    #[error("value {0} is not a finite number")]
    NotFinite(f64),
    /// A label that is not one of the field's.
    #[error("{value} is not one of the labels {labels}")]
    NotALabel {
        /// The label, quoted.
        value: String,
        /// The field's labels, comma-separated.
        labels: String,
    },
    /// A time outside 1970–9999.
    #[error("the time is before 1970 or after 9999")]
    TimeOutOfRange,
}

/// A value checked against its field, in the form it is written.
enum Out<'a> {
    Bool(bool),
    Whole(i64),
    Double(f64),
    Text(&'a str),
    Time(SystemTime),
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an int",
        Value::Long(_) => "a long",
        Value::Double(_) => "a double",
        Value::String(_) => "a string",
        Value::Enum(_) => "an enum",
        Value::Timestamp(_) => "a timestamp",
    }
}

fn checked<'a>(spec: &FieldSpec, value: &'a Value) -> Result<Out<'a>, EncodeError> {
    Ok(match (spec.kind, value) {
        (FieldType::Bool, Value::Bool(b)) => Out::Bool(*b),
        (FieldType::Int, Value::Int(v)) => Out::Whole((*v).into()),
        (FieldType::Int, Value::Long(v)) => match i32::try_from(*v) {
            Ok(v) => Out::Whole(v.into()),
            Err(_) => {
                return Err(EncodeError::OutOfRange {
                    value: v.to_string(),
                    kind: spec.kind,
                })
            }
        },
        (FieldType::Long, Value::Int(v)) => Out::Whole((*v).into()),
        (FieldType::Long, Value::Long(v)) => Out::Whole(*v),
        (FieldType::Double, Value::Int(_) | Value::Long(_) | Value::Double(_)) => {
            let v = value.as_f64().unwrap_or(f64::NAN);
            if !v.is_finite() {
                return Err(EncodeError::NotFinite(v));
            }
            Out::Double(v)
        }
        (FieldType::String, Value::String(s) | Value::Enum(s)) => Out::Text(s),
        (FieldType::Enum, Value::String(s) | Value::Enum(s)) => {
            if !spec.values.is_empty() && !spec.values.contains(s) {
                return Err(EncodeError::NotALabel {
                    value: quoted(s),
                    labels: spec.values.join(", "),
                });
            }
            Out::Text(s)
        }
        (FieldType::Timestamp, Value::Timestamp(t)) => {
            Out::Time(in_range(*t).ok_or(EncodeError::TimeOutOfRange)?)
        }
        _ => {
            return Err(EncodeError::WrongType {
                value: value_type(value),
                kind: spec.kind,
            })
        }
    })
}

/// A double rounded as the field writes it: 21.456 with one decimal is 21.5.
fn rounded(v: f64, decimals: Option<u8>) -> f64 {
    match decimals {
        Some(d) => format!("{:.*}", usize::from(d), v).parse().unwrap_or(v),
        None => v,
    }
}

/// Encodes a command's value for the field `spec` by `template`; `bools` are the
/// device's words for on and off, if it has its own.
///
/// Plain: the value as text (a double with the field's decimals, a bool as
/// `true`/`false`, a time as RFC 3339 to the second). JSON: an object for every step of
/// the pointer, numbers and booleans as JSON numbers and booleans (a double rounded to the
/// field's decimals), text and labels as strings, times as RFC 3339 strings to the second.
/// CBOR: a map for every step of the path, whole numbers as integers, doubles (rounded
/// likewise) as the shortest float that holds them exactly, text and labels as text
/// strings, times as tag 1 with whole Unix seconds. The device's words for on and off
/// replace `true` and `false` as text in every form.
pub fn encode(
    template: &Template,
    spec: &FieldSpec,
    value: &Value,
    bools: Option<(&str, &str)>,
) -> Result<Vec<u8>, EncodeError> {
    let out = checked(spec, value)?;
    let word = |b: bool| match bools {
        Some((on, off)) => Some(if b { on } else { off }),
        None => None,
    };
    match template {
        Template::Plain => Ok(match out {
            Out::Bool(b) => word(b)
                .unwrap_or(if b { "true" } else { "false" })
                .as_bytes()
                .to_vec(),
            Out::Whole(v) => v.to_string().into_bytes(),
            Out::Double(v) => Value::Double(v).display_with(spec.decimals).into_bytes(),
            Out::Text(s) => s.as_bytes().to_vec(),
            Out::Time(t) => humantime::format_rfc3339_seconds(t)
                .to_string()
                .into_bytes(),
        }),
        Template::Json { pointer } => {
            let mut doc = match out {
                Out::Bool(b) => match word(b) {
                    Some(w) => Json::String(w.to_owned()),
                    None => Json::Bool(b),
                },
                Out::Whole(v) => Json::Number(v.into()),
                Out::Double(v) => {
                    let v = rounded(v, spec.decimals);
                    Json::Number(Number::from_f64(v).ok_or(EncodeError::NotFinite(v))?)
                }
                Out::Text(s) => Json::String(s.to_owned()),
                Out::Time(t) => Json::String(humantime::format_rfc3339_seconds(t).to_string()),
            };
            for token in pointer.tokens().iter().rev() {
                let mut object = Map::new();
                object.insert(token.key.clone(), doc);
                doc = Json::Object(object);
            }
            Ok(doc.to_string().into_bytes())
        }
        Template::Cbor { path } => {
            let mut w = Writer::default();
            for token in path.tokens() {
                w.map(1);
                match token.int {
                    Some(i) => w.int(i),
                    None => w.text(&token.key),
                }
            }
            match out {
                Out::Bool(b) => match word(b) {
                    Some(word) => w.text(word),
                    None => w.bool(b),
                },
                Out::Whole(v) => w.int(v.into()),
                Out::Double(v) => {
                    let v = rounded(v, spec.decimals);
                    if !v.is_finite() {
                        return Err(EncodeError::NotFinite(v));
                    }
                    w.float(v);
                }
                Out::Text(s) => w.text(s),
                Out::Time(t) => {
                    w.tag(1);
                    // In range by `checked`: after 1970.
                    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    w.int(secs.into());
                }
            }
            Ok(w.finish())
        }
    }
}

/// Whether a device's echo confirms a written value: numbers compared as numbers (an int
/// echo confirms a double written), a double within half a unit of the field's last
/// decimal (or, without decimals, within a relative 10⁻⁹); text and labels exactly (a
/// string confirms an enum of the same label); times to the second, as they are written;
/// booleans exactly.
pub fn same_value(spec: &FieldSpec, written: &Value, echoed: &Value) -> bool {
    use Value::{Bool, Double, Enum, Int, Long, String, Timestamp};
    match (written, echoed) {
        (Int(_) | Long(_), Int(_) | Long(_)) => whole_of(written) == whole_of(echoed),
        (Int(_) | Long(_) | Double(_), Int(_) | Long(_) | Double(_)) => {
            let (Some(a), Some(b)) = (written.as_f64(), echoed.as_f64()) else {
                return false;
            };
            close(a, b, spec.decimals)
        }
        (String(a) | Enum(a), String(b) | Enum(b)) => a == b,
        (Bool(a), Bool(b)) => a == b,
        (Timestamp(a), Timestamp(b)) => {
            match (a.duration_since(UNIX_EPOCH), b.duration_since(UNIX_EPOCH)) {
                (Ok(a), Ok(b)) => a.as_secs() == b.as_secs(),
                _ => a == b,
            }
        }
        _ => false,
    }
}

fn whole_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(v) => Some((*v).into()),
        Value::Long(v) => Some(*v),
        _ => None,
    }
}

fn close(a: f64, b: f64, decimals: Option<u8>) -> bool {
    if !a.is_finite() || !b.is_finite() {
        return false;
    }
    let scale = a.abs().max(b.abs());
    let diff = (a - b).abs();
    match decimals {
        Some(d) => {
            let half = 0.5 * 10f64.powi(-i32::from(d));
            // Slack for the error of the subtraction itself: 21.55 - 21.5 is a hair above
            // 0.05 in binary.
            diff <= half * (1.0 + 1e-9) + 4.0 * f64::EPSILON * scale
        }
        None => diff <= 1e-9 * scale,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::*;
    use crate::time::END_OF_TIME;
    use crate::{Format, Locator};

    fn text(
        template: &Template,
        spec: &FieldSpec,
        value: Value,
        bools: Option<(&str, &str)>,
    ) -> String {
        String::from_utf8(encode(template, spec, &value, bools).unwrap()).unwrap()
    }

    #[test]
    fn plain_commands_are_text() {
        let p = &Template::Plain;
        let double = FieldSpec {
            decimals: Some(2),
            ..spec(FieldType::Double)
        };
        assert_eq!(text(p, &double, Value::Double(21.5), None), "21.50");
        assert_eq!(text(p, &double, Value::Int(3), None), "3.00");
        assert_eq!(
            text(p, &spec(FieldType::Double), Value::Double(21.25), None),
            "21.25"
        );
        assert_eq!(text(p, &spec(FieldType::Int), Value::Int(-7), None), "-7");
        assert_eq!(
            text(p, &spec(FieldType::Long), Value::Long(i64::MAX), None),
            "9223372036854775807"
        );
        assert_eq!(
            text(p, &spec(FieldType::Bool), Value::Bool(true), None),
            "true"
        );
        assert_eq!(
            text(p, &spec(FieldType::Bool), Value::Bool(false), None),
            "false"
        );
        assert_eq!(
            text(
                p,
                &spec(FieldType::Bool),
                Value::Bool(true),
                Some(("ON", "OFF"))
            ),
            "ON"
        );
        assert_eq!(
            text(
                p,
                &spec(FieldType::Bool),
                Value::Bool(false),
                Some(("ON", "OFF"))
            ),
            "OFF"
        );
        assert_eq!(
            text(
                p,
                &spec(FieldType::String),
                Value::String("hé".into()),
                None
            ),
            "hé"
        );
        let mode = FieldSpec {
            values: vec!["auto".into(), "manual".into()],
            ..spec(FieldType::Enum)
        };
        assert_eq!(text(p, &mode, Value::Enum("auto".into()), None), "auto");
        assert_eq!(
            text(p, &mode, Value::String("manual".into()), None),
            "manual"
        );
        assert_eq!(
            text(
                p,
                &spec(FieldType::Timestamp),
                Value::Timestamp(at(NOW) + Duration::from_millis(5)),
                None
            ),
            "2024-05-01T12:00:00Z"
        );
    }

    #[test]
    fn json_commands_nest_at_the_pointer() {
        let j = |p: &str| Template::Json { pointer: ptr(p) };
        assert_eq!(
            text(
                &j("/state"),
                &spec(FieldType::Bool),
                Value::Bool(true),
                None
            ),
            r#"{"state":true}"#
        );
        assert_eq!(
            text(
                &j("/state"),
                &spec(FieldType::Bool),
                Value::Bool(false),
                Some(("ON", "OFF"))
            ),
            r#"{"state":"OFF"}"#
        );
        assert_eq!(
            text(&j("/a/b"), &spec(FieldType::Int), Value::Int(5), None),
            r#"{"a":{"b":5}}"#
        );
        assert_eq!(
            text(
                &j("/a~1b/c~0d/0"),
                &spec(FieldType::Long),
                Value::Long(-1),
                None
            ),
            r#"{"a/b":{"c~d":{"0":-1}}}"#
        );
        assert_eq!(
            text(&j(""), &spec(FieldType::Double), Value::Double(21.5), None),
            "21.5"
        );
        assert_eq!(
            text(
                &j("/"),
                &spec(FieldType::String),
                Value::String("x\"y".into()),
                None
            ),
            r#"{"":"x\"y"}"#
        );
        let double = FieldSpec {
            decimals: Some(1),
            ..spec(FieldType::Double)
        };
        assert_eq!(
            text(
                &j("/current_heating_setpoint"),
                &double,
                Value::Double(21.456),
                None
            ),
            r#"{"current_heating_setpoint":21.5}"#
        );
        assert_eq!(
            text(&j("/x"), &double, Value::Long(3), None),
            r#"{"x":3.0}"#
        );
        assert_eq!(
            text(
                &j("/brightness"),
                &spec(FieldType::Int),
                Value::Int(254),
                None
            ),
            r#"{"brightness":254}"#
        );
        assert_eq!(
            text(
                &j("/t"),
                &spec(FieldType::Timestamp),
                Value::Timestamp(at(NOW)),
                None
            ),
            r#"{"t":"2024-05-01T12:00:00Z"}"#
        );
        let mode = FieldSpec {
            values: vec!["auto".into()],
            ..spec(FieldType::Enum)
        };
        assert_eq!(
            text(&j("/mode"), &mode, Value::Enum("auto".into()), None),
            r#"{"mode":"auto"}"#
        );
    }

    #[test]
    fn commands_that_do_not_fit_are_refused() {
        let p = &Template::Plain;
        let j = &Template::Json { pointer: ptr("/x") };
        for t in [p, j] {
            assert!(matches!(
                encode(t, &spec(FieldType::Double), &Value::Double(f64::NAN), None),
                Err(EncodeError::NotFinite(v)) if v.is_nan()
            ));
            assert!(matches!(
                encode(
                    t,
                    &spec(FieldType::Double),
                    &Value::Double(f64::INFINITY),
                    None
                ),
                Err(EncodeError::NotFinite(_))
            ));
            let e =
                encode(t, &spec(FieldType::Int), &Value::Long(3_000_000_000), None).unwrap_err();
            assert_eq!(
                e.to_string(),
                "value 3000000000 is out of range for an int field"
            );
            let e = encode(t, &spec(FieldType::Double), &Value::Bool(true), None).unwrap_err();
            assert_eq!(
                e.to_string(),
                "a bool value cannot be written to a double field"
            );
            assert!(encode(t, &spec(FieldType::Int), &Value::Double(1.0), None).is_err());
            assert!(encode(t, &spec(FieldType::Bool), &Value::Int(1), None).is_err());
            let mode = FieldSpec {
                values: vec!["auto".into()],
                ..spec(FieldType::Enum)
            };
            let e = encode(t, &mode, &Value::Enum("off".into()), None).unwrap_err();
            assert_eq!(e.to_string(), r#""off" is not one of the labels auto"#);
            for time in [UNIX_EPOCH - Duration::from_secs(1), at(END_OF_TIME)] {
                assert_eq!(
                    encode(
                        t,
                        &spec(FieldType::Timestamp),
                        &Value::Timestamp(time),
                        None
                    ),
                    Err(EncodeError::TimeOutOfRange)
                );
            }
        }
    }

    #[test]
    fn encoded_commands_decode_to_the_same_value() {
        let double = FieldSpec {
            decimals: Some(1),
            ..spec(FieldType::Double)
        };
        for (s, v) in [
            (double.clone(), Value::Double(21.5)),
            (spec(FieldType::Int), Value::Int(-5)),
            (spec(FieldType::Long), Value::Long(i64::MIN)),
            (spec(FieldType::Bool), Value::Bool(true)),
            (spec(FieldType::String), Value::String("x y".into())),
            (spec(FieldType::Timestamp), Value::Timestamp(at(NOW))),
        ] {
            for (template, format, locator) in [
                (Template::Plain, Format::Plain, Locator::Whole),
                (
                    Template::Json {
                        pointer: ptr("/a/b"),
                    },
                    Format::Json,
                    Locator::Pointer(ptr("/a/b")),
                ),
            ] {
                let payload = encode(&template, &s, &v, None).unwrap();
                let t = topic(format, vec![field(s.kind, locator)]);
                let back = one(t.decode(&payload, at(NOW)).unwrap()).unwrap();
                assert!(
                    same_value(&s, &v, &back),
                    "{v:?} via {template:?}: {back:?}"
                );
            }
        }
    }

    #[test]
    fn echoes_confirm_by_value() {
        let any = spec(FieldType::Double);
        let one_decimal = FieldSpec {
            decimals: Some(1),
            ..spec(FieldType::Double)
        };
        // Numbers across types.
        assert!(same_value(&any, &Value::Int(3), &Value::Long(3)));
        assert!(same_value(&any, &Value::Long(3), &Value::Double(3.0)));
        assert!(same_value(&any, &Value::Double(3.0), &Value::Int(3)));
        assert!(!same_value(&any, &Value::Int(3), &Value::Long(4)));
        assert!(same_value(
            &any,
            &Value::Long(i64::MAX),
            &Value::Long(i64::MAX)
        ));
        assert!(!same_value(
            &any,
            &Value::Long(i64::MAX),
            &Value::Long(i64::MAX - 1)
        ));
        // Doubles with decimals: within half a unit of the last decimal.
        assert!(same_value(
            &one_decimal,
            &Value::Double(21.5),
            &Value::Double(21.54)
        ));
        assert!(same_value(
            &one_decimal,
            &Value::Double(21.5),
            &Value::Double(21.55)
        ));
        assert!(same_value(
            &one_decimal,
            &Value::Double(21.5),
            &Value::Double(21.45)
        ));
        assert!(!same_value(
            &one_decimal,
            &Value::Double(21.5),
            &Value::Double(21.56)
        ));
        assert!(!same_value(
            &one_decimal,
            &Value::Double(21.5),
            &Value::Double(21.6)
        ));
        let none = FieldSpec {
            decimals: Some(0),
            ..spec(FieldType::Double)
        };
        assert!(same_value(&none, &Value::Double(21.0), &Value::Int(21)));
        assert!(same_value(&none, &Value::Double(21.4), &Value::Int(21)));
        assert!(!same_value(&none, &Value::Double(21.6), &Value::Int(21)));
        // Without decimals: relative 1e-9.
        assert!(same_value(
            &any,
            &Value::Double(0.1 + 0.2),
            &Value::Double(0.3)
        ));
        assert!(same_value(
            &any,
            &Value::Double(1e12),
            &Value::Double(1e12 + 1e2)
        ));
        assert!(!same_value(
            &any,
            &Value::Double(1e12),
            &Value::Double(1e12 + 1e4)
        ));
        assert!(!same_value(
            &any,
            &Value::Double(21.5),
            &Value::Double(21.51)
        ));
        assert!(same_value(&any, &Value::Double(0.0), &Value::Double(-0.0)));
        assert!(!same_value(
            &any,
            &Value::Double(f64::NAN),
            &Value::Double(f64::NAN)
        ));
        assert!(!same_value(
            &one_decimal,
            &Value::Double(f64::INFINITY),
            &Value::Double(f64::INFINITY)
        ));
        // Others exactly.
        let s = spec(FieldType::String);
        assert!(same_value(
            &s,
            &Value::String("a".into()),
            &Value::String("a".into())
        ));
        assert!(!same_value(
            &s,
            &Value::String("a".into()),
            &Value::String("A".into())
        ));
        assert!(same_value(
            &s,
            &Value::String("auto".into()),
            &Value::Enum("auto".into())
        ));
        assert!(same_value(&s, &Value::Bool(true), &Value::Bool(true)));
        assert!(!same_value(&s, &Value::Bool(true), &Value::Bool(false)));
        assert!(!same_value(&s, &Value::Bool(true), &Value::Int(1)));
        assert!(!same_value(&s, &Value::String("1".into()), &Value::Int(1)));
        // Times to the second.
        let t = spec(FieldType::Timestamp);
        let stamp = at(NOW) + Duration::from_millis(700);
        assert!(same_value(
            &t,
            &Value::Timestamp(stamp),
            &Value::Timestamp(at(NOW))
        ));
        assert!(!same_value(
            &t,
            &Value::Timestamp(stamp),
            &Value::Timestamp(at(NOW + 1))
        ));
    }

    // -- CBOR ----------------------------------------------------------------------------

    fn bytes(
        template: &Template,
        spec: &FieldSpec,
        value: Value,
        bools: Option<(&str, &str)>,
    ) -> Vec<u8> {
        encode(template, spec, &value, bools).unwrap()
    }

    #[test]
    fn cbor_commands_nest_at_the_path() {
        let c = |p: &str| Template::Cbor { path: ptr(p) };
        let double = FieldSpec {
            decimals: Some(1),
            ..spec(FieldType::Double)
        };
        for (template, spec, value, bools, want) in [
            // {"state": true}
            (
                c("/state"),
                spec(FieldType::Bool),
                Value::Bool(true),
                None,
                vec![0xa1, 0x65, b's', b't', b'a', b't', b'e', 0xf5],
            ),
            // {"s": "OFF"}
            (
                c("/s"),
                spec(FieldType::Bool),
                Value::Bool(false),
                Some(("ON", "OFF")),
                vec![0xa1, 0x61, b's', 0x63, b'O', b'F', b'F'],
            ),
            // {1: {-2: 5}}
            (
                c("/1/-2"),
                spec(FieldType::Int),
                Value::Int(5),
                None,
                vec![0xa1, 0x01, 0xa1, 0x21, 0x05],
            ),
            // {"a/b": {"01": -1}}: "01" is no integer.
            (
                c("/a~1b/01"),
                spec(FieldType::Long),
                Value::Long(-1),
                None,
                vec![0xa1, 0x63, b'a', b'/', b'b', 0xa1, 0x62, b'0', b'1', 0x20],
            ),
            // The value alone: 21.5 as a half.
            (
                c(""),
                spec(FieldType::Double),
                Value::Double(21.5),
                None,
                vec![0xf9, 0x4d, 0x60],
            ),
            // {"": "x"}
            (
                c("/"),
                spec(FieldType::String),
                Value::String("x".into()),
                None,
                vec![0xa1, 0x60, 0x61, b'x'],
            ),
            // Rounded to the field's decimals: 21.456 is 21.5; 3 stays a float.
            (
                c(""),
                double.clone(),
                Value::Double(21.456),
                None,
                vec![0xf9, 0x4d, 0x60],
            ),
            (
                c(""),
                double.clone(),
                Value::Long(3),
                None,
                vec![0xf9, 0x42, 0x00],
            ),
            (
                c(""),
                double.clone(),
                Value::Double(0.1),
                None,
                vec![0xfb, 0x3f, 0xb9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a],
            ),
            (
                c(""),
                spec(FieldType::Double),
                Value::Double(100000.0),
                None,
                vec![0xfa, 0x47, 0xc3, 0x50, 0x00],
            ),
            (
                c(""),
                spec(FieldType::Long),
                Value::Long(i64::MIN),
                None,
                vec![0x3b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
            (
                c(""),
                spec(FieldType::Int),
                Value::Int(254),
                None,
                vec![0x18, 0xfe],
            ),
            // A time: tag 1, whole seconds.
            (
                c(""),
                spec(FieldType::Timestamp),
                Value::Timestamp(at(NOW) + Duration::from_millis(700)),
                None,
                vec![0xc1, 0x1a, 0x66, 0x32, 0x2e, 0xc0],
            ),
            (
                c(""),
                FieldSpec {
                    values: vec!["auto".into()],
                    ..spec(FieldType::Enum)
                },
                Value::Enum("auto".into()),
                None,
                vec![0x64, b'a', b'u', b't', b'o'],
            ),
        ] {
            assert_eq!(
                bytes(&template, &spec, value.clone(), bools),
                want,
                "{template:?} {value:?}"
            );
        }
    }

    #[test]
    fn cbor_commands_that_do_not_fit_are_refused() {
        let t = &Template::Cbor { path: ptr("/x") };
        assert!(matches!(
            encode(t, &spec(FieldType::Double), &Value::Double(f64::NAN), None),
            Err(EncodeError::NotFinite(v)) if v.is_nan()
        ));
        assert!(encode(t, &spec(FieldType::Int), &Value::Long(3_000_000_000), None).is_err());
        assert!(encode(t, &spec(FieldType::Double), &Value::Bool(true), None).is_err());
        assert_eq!(
            encode(
                t,
                &spec(FieldType::Timestamp),
                &Value::Timestamp(at(END_OF_TIME)),
                None
            ),
            Err(EncodeError::TimeOutOfRange)
        );
    }

    #[test]
    fn cbor_commands_decode_to_the_same_value() {
        let double = FieldSpec {
            decimals: Some(1),
            ..spec(FieldType::Double)
        };
        let mode = FieldSpec {
            values: vec!["auto".into()],
            ..spec(FieldType::Enum)
        };
        for (s, v) in [
            (double.clone(), Value::Double(21.5)),
            (double, Value::Double(-1e300)),
            (spec(FieldType::Double), Value::Double(0.1)),
            (
                spec(FieldType::Double),
                Value::Double(f64::MIN_POSITIVE / 3.0),
            ),
            (spec(FieldType::Int), Value::Int(-5)),
            (spec(FieldType::Long), Value::Long(i64::MIN)),
            (spec(FieldType::Long), Value::Long(i64::MAX)),
            (spec(FieldType::Bool), Value::Bool(true)),
            (spec(FieldType::String), Value::String(" x\u{0}y ".into())),
            (mode, Value::Enum("auto".into())),
            (spec(FieldType::Timestamp), Value::Timestamp(at(NOW))),
        ] {
            for (path, locator) in [
                ("/a/1", Locator::Pointer(ptr("/a/1"))),
                ("", Locator::Whole),
            ] {
                let template = Template::Cbor { path: ptr(path) };
                let payload = encode(&template, &s, &v, None).unwrap();
                let mut f = field(s.kind, locator);
                f.labels = s.values.clone();
                let t = topic(Format::Cbor, vec![f]);
                let back = one(t.decode(&payload, at(NOW)).unwrap()).unwrap();
                assert!(
                    same_value(&s, &v, &back),
                    "{v:?} via {template:?}: {back:?}"
                );
            }
        }
    }
}
