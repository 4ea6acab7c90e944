//! A value found in a message read as its field's type, by the rules of the crate
//! documentation ("What a field accepts").

use std::borrow::Cow;

use fieldgate_api::{FieldType, Value};

use crate::decode::{FieldDecoder, Format};
use crate::error::{quoted, DecodeError};
use crate::time::{date_time, number_time, text_time, TimeUnit};
use crate::tree::{Node, Num};

/// The largest float up to which every whole number is exact (2^53).
const EXACT_FLOAT: f64 = 9_007_199_254_740_992.0;

/// A value found in a message, before it is read as a field's type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scalar<'a> {
    Bool(bool),
    Num(Num),
    Text(&'a str),
    /// CBOR tag 0: RFC 3339 text.
    DateTime(&'a str),
    /// CBOR tag 1: Unix seconds.
    Epoch(Num),
    /// What no field type accepts (an object, an array, a byte string...), named.
    Composite(&'static str),
}

impl<'a> Scalar<'a> {
    /// `None` for null, which counts as absent.
    pub(crate) fn of(node: &'a Node) -> Option<Self> {
        Some(match node {
            Node::Null => return None,
            Node::Bool(b) => Scalar::Bool(*b),
            Node::Number(n) => Scalar::Num(*n),
            Node::String(s) => Scalar::Text(s),
            Node::DateTime(s) => Scalar::DateTime(s),
            Node::Epoch(n) => Scalar::Epoch(*n),
            other => Scalar::Composite(other.kind()),
        })
    }

    /// A tagged time as its item, for the fields that are not times.
    fn untagged(self) -> Self {
        match self {
            Scalar::DateTime(s) => Scalar::Text(s),
            Scalar::Epoch(n) => Scalar::Num(n),
            other => other,
        }
    }

    /// The scalar described for an error message, quoting at most 64 bytes.
    fn describe(self) -> String {
        match self {
            Scalar::Bool(b) => format!("{b}"),
            Scalar::Num(n) => format!("the number {n}"),
            Scalar::Text(s) => format!("the text {}", quoted(s)),
            Scalar::DateTime(s) => format!("the date/time {}", quoted(s)),
            Scalar::Epoch(n) => format!("the epoch time {n}"),
            Scalar::Composite(what) => what.to_owned(),
        }
    }

    /// The value alone, as an error message shows it (`21.5`, `"warm"`).
    fn shown(self) -> String {
        match self.untagged() {
            Scalar::Num(n) => n.to_string(),
            Scalar::Text(s) => quoted(s.trim_ascii()),
            other => other.describe(),
        }
    }

    /// The text of a string-like scalar: text as is, numbers and booleans as JSON writes
    /// them.
    fn text(self) -> Option<Cow<'a, str>> {
        match self.untagged() {
            Scalar::Text(s) => Some(Cow::Borrowed(s)),
            Scalar::Num(n) => Some(Cow::Owned(n.to_string())),
            Scalar::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
            _ => None,
        }
    }
}

/// Why a found value does not fit its field (the place is added by the caller).
enum Misfit {
    WrongType(&'static str),
    NotWhole(String),
    OutOfRange(String),
    NotFinite(String),
    NotALabel(String),
    BadTime(String),
}

impl FieldDecoder {
    /// Reads a value found in a message of `format` as this field's type.
    pub(crate) fn convert(&self, found: Scalar, format: Format) -> Result<Value, DecodeError> {
        self.convert_inner(found).map_err(|misfit| {
            let at = self.locator.place(format);
            let kind = self.kind;
            match misfit {
                Misfit::WrongType(expected) => DecodeError::WrongType {
                    at,
                    expected,
                    got: found.describe(),
                },
                Misfit::NotWhole(value) => DecodeError::NotWhole { at, value, kind },
                Misfit::OutOfRange(value) => DecodeError::OutOfRange { at, value, kind },
                Misfit::NotFinite(value) => DecodeError::NotFinite { at, value },
                Misfit::NotALabel(value) => DecodeError::NotALabel {
                    at,
                    value,
                    labels: self.labels.join(", "),
                },
                Misfit::BadTime(reason) => DecodeError::BadTime { at, reason },
            }
        })
    }

    fn convert_inner(&self, found: Scalar) -> Result<Value, Misfit> {
        match self.kind {
            FieldType::Bool => boolean(found).map(Value::Bool),
            FieldType::Int => whole(found, i32::MIN.into(), i32::MAX.into())
                .and_then(|v| i32::try_from(v).map_err(|_| Misfit::OutOfRange(v.to_string())))
                .map(Value::Int),
            FieldType::Long => whole(found, i64::MIN, i64::MAX).map(Value::Long),
            FieldType::Double => double(found).map(Value::Double),
            FieldType::String => found
                .text()
                .map(|t| Value::String(t.into_owned()))
                .ok_or(Misfit::WrongType("text")),
            FieldType::Enum => {
                let text = found.text().ok_or(Misfit::WrongType("a label"))?;
                match self.labels.iter().find(|l| **l == *text) {
                    Some(label) => Ok(Value::Enum(label.clone())),
                    None => Err(Misfit::NotALabel(quoted(&text))),
                }
            }
            FieldType::Timestamp => match found {
                Scalar::Num(n) | Scalar::Epoch(n) => number_time(n, TimeUnit::Seconds),
                Scalar::Text(s) => text_time(s, TimeUnit::Seconds),
                Scalar::DateTime(s) => date_time(s),
                _ => return Err(Misfit::WrongType("a time")),
            }
            .map(Value::Timestamp)
            .map_err(Misfit::BadTime),
        }
    }
}

fn boolean(found: Scalar) -> Result<bool, Misfit> {
    const TRUE: [&str; 4] = ["true", "on", "yes", "1"];
    const FALSE: [&str; 4] = ["false", "off", "no", "0"];
    let wrong = Misfit::WrongType("a boolean");
    match found.untagged() {
        Scalar::Bool(b) => Ok(b),
        Scalar::Num(n) => match n.as_f64() {
            0.0 => Ok(false),
            1.0 => Ok(true),
            _ => Err(wrong),
        },
        Scalar::Text(s) => {
            let s = s.trim_ascii();
            if TRUE.iter().any(|w| s.eq_ignore_ascii_case(w)) {
                Ok(true)
            } else if FALSE.iter().any(|w| s.eq_ignore_ascii_case(w)) {
                Ok(false)
            } else {
                Err(wrong)
            }
        }
        _ => Err(wrong),
    }
}

/// A whole number within `min..=max`, from a number or numeric text.
fn whole(found: Scalar, min: i64, max: i64) -> Result<i64, Misfit> {
    let within = |v: i128, shown: &dyn Fn() -> String| {
        if (i128::from(min)..=i128::from(max)).contains(&v) {
            // In range of an i64 by the check.
            i64::try_from(v).map_err(|_| Misfit::OutOfRange(shown()))
        } else {
            Err(Misfit::OutOfRange(shown()))
        }
    };
    let from_float = |v: f64, shown: &dyn Fn() -> String| {
        if !v.is_finite() {
            Err(Misfit::NotFinite(shown()))
        } else if v.fract() != 0.0 {
            Err(Misfit::NotWhole(shown()))
        } else if v.abs() > EXACT_FLOAT {
            // Beyond 2^53 a float is not exact: -9223372036854775809 would read as i64::MIN.
            Err(Misfit::OutOfRange(shown()))
        } else {
            within(v as i128, shown)
        }
    };
    let shown = || found.shown();
    match found.untagged() {
        Scalar::Num(Num::Int(v)) => within(v, &shown),
        Scalar::Num(Num::Float(v)) => from_float(v, &shown),
        Scalar::Text(s) => {
            let s = s.trim_ascii();
            if let Ok(v) = s.parse::<i128>() {
                within(v, &shown)
            } else if let Ok(v) = s.parse::<f64>() {
                from_float(v, &shown)
            } else {
                Err(Misfit::WrongType("a whole number"))
            }
        }
        _ => Err(Misfit::WrongType("a whole number")),
    }
}

fn double(found: Scalar) -> Result<f64, Misfit> {
    let v = match found.untagged() {
        Scalar::Num(n) => Some(n.as_f64()),
        Scalar::Text(s) => s.trim_ascii().parse::<f64>().ok(),
        _ => None,
    };
    match v {
        Some(v) if v.is_finite() => Ok(v),
        Some(_) => Err(Misfit::NotFinite(found.shown())),
        None => Err(Misfit::WrongType("a number")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use fieldgate_api::{FieldType, Value};

    use crate::testing::*;
    use crate::time::END_OF_TIME;
    use crate::{DecodeError, Format};

    #[test]
    fn bools_accept_the_usual_words() {
        for (text, want) in [
            ("true", true),
            ("false", false),
            ("1", true),
            ("0", false),
            ("1.0", true),
            ("0.0", false),
            ("\"ON\"", true),
            ("\"off\"", false),
            ("\"Yes\"", true),
            ("\"NO\"", false),
            ("\"True\"", true),
            ("\"FALSE\"", false),
            ("\"1\"", true),
            ("\"0\"", false),
            ("\" on \"", true),
        ] {
            assert_eq!(json(FieldType::Bool, text), Ok(Value::Bool(want)), "{text}");
        }
        for text in ["2", "-1", "0.5", "\"toggle\"", "\"\"", "[]", "{}", "\"y\""] {
            let e = json(FieldType::Bool, text).unwrap_err();
            assert!(
                matches!(
                    e,
                    DecodeError::WrongType {
                        expected: "a boolean",
                        ..
                    }
                ),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn ints_take_whole_numbers_in_range() {
        for (text, want) in [
            ("21", 21),
            ("-21", -21),
            ("21.0", 21),
            ("2.1e1", 21),
            ("1e3", 1000),
            ("-0", 0),
            ("\"21\"", 21),
            ("\" -21 \"", -21),
            ("\"21.0\"", 21),
            ("\"+21\"", 21),
            ("2147483647", i32::MAX),
            ("-2147483648", i32::MIN),
        ] {
            assert_eq!(json(FieldType::Int, text), Ok(Value::Int(want)), "{text}");
        }
        for text in [
            "2147483648",
            "-2147483649",
            "3000000000",
            "\"3000000000\"",
            "1e10",
            "18446744073709551615",
        ] {
            let e = json(FieldType::Int, text).unwrap_err();
            assert!(
                matches!(
                    e,
                    DecodeError::OutOfRange {
                        kind: FieldType::Int,
                        ..
                    }
                ),
                "{text}: {e}"
            );
        }
        for text in ["21.5", "\"21.5\"", "-0.1", "1e-3"] {
            let e = json(FieldType::Int, text).unwrap_err();
            assert!(matches!(e, DecodeError::NotWhole { .. }), "{text}: {e}");
        }
        for text in ["\"NaN\"", "\"inf\""] {
            let e = json(FieldType::Int, text).unwrap_err();
            assert!(matches!(e, DecodeError::NotFinite { .. }), "{text}: {e}");
        }
        for text in ["true", "\"abc\"", "\"\"", "[1]", "{\"a\":1}"] {
            let e = json(FieldType::Int, text).unwrap_err();
            assert!(matches!(e, DecodeError::WrongType { .. }), "{text}: {e}");
        }
    }

    #[test]
    fn longs_are_exact_to_the_last_digit() {
        for (text, want) in [
            ("9007199254740993", 9_007_199_254_740_993),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
            ("\"9223372036854775807\"", i64::MAX),
            ("3000000000", 3_000_000_000),
            ("9007199254740992.0", 9_007_199_254_740_992),
            ("-9.007199254740992e15", -9_007_199_254_740_992),
        ] {
            assert_eq!(json(FieldType::Long, text), Ok(Value::Long(want)), "{text}");
        }
        for text in [
            "9223372036854775808",
            "18446744073709551615",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "\"123456789012345678901234567890123456789012345678901234567890\"",
            "1e300",
            "\"1e300\"",
            // Not exact as floats.
            "1e18",
            "9007199254740993.0",
            "\"9007199254740994.0\"",
        ] {
            let e = json(FieldType::Long, text).unwrap_err();
            assert!(
                matches!(
                    e,
                    DecodeError::OutOfRange {
                        kind: FieldType::Long,
                        ..
                    }
                ),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn doubles_take_finite_numbers() {
        for (text, want) in [
            ("21.5", 21.5),
            ("21", 21.0),
            ("-1e-300", -1e-300),
            ("18446744073709551615", 18_446_744_073_709_551_615.0),
            ("\"21.5\"", 21.5),
            ("\" 1e3 \"", 1000.0),
        ] {
            assert_eq!(
                json(FieldType::Double, text),
                Ok(Value::Double(want)),
                "{text}"
            );
        }
        for text in [
            "\"NaN\"",
            "\"nan\"",
            "\"inf\"",
            "\"-infinity\"",
            "\"1e400\"",
        ] {
            let e = json(FieldType::Double, text).unwrap_err();
            assert!(matches!(e, DecodeError::NotFinite { .. }), "{text}: {e}");
        }
        for text in ["true", "\"warm\"", "[21.5]", "{}"] {
            let e = json(FieldType::Double, text).unwrap_err();
            assert!(
                matches!(
                    e,
                    DecodeError::WrongType {
                        expected: "a number",
                        ..
                    }
                ),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn strings_take_text_and_scalars_as_their_json_text() {
        assert_eq!(
            json(FieldType::String, r#"" idle ""#),
            Ok(Value::String(" idle ".into()))
        );
        assert_eq!(
            json(FieldType::String, r#""a\"b\u00e9""#),
            Ok(Value::String("a\"bé".into()))
        );
        assert_eq!(
            json(FieldType::String, "21.5"),
            Ok(Value::String("21.5".into()))
        );
        assert_eq!(
            json(FieldType::String, "21"),
            Ok(Value::String("21".into()))
        );
        assert_eq!(
            json(FieldType::String, "false"),
            Ok(Value::String("false".into()))
        );
        assert!(matches!(
            json(FieldType::String, "[]"),
            Err(DecodeError::WrongType { .. })
        ));
        assert!(matches!(
            json(FieldType::String, "{}"),
            Err(DecodeError::WrongType { .. })
        ));
    }

    #[test]
    fn enums_take_exact_labels() {
        let mut f = json_field(FieldType::Enum, "/mode");
        f.labels = vec!["auto".into(), "manual".into(), "1".into()];
        let t = topic(Format::Json, vec![f]);
        let get = |payload: &str| one(t.decode(payload.as_bytes(), at(NOW)).unwrap());
        assert_eq!(get(r#"{"mode":"auto"}"#), Ok(Value::Enum("auto".into())));
        assert_eq!(get(r#"{"mode":1}"#), Ok(Value::Enum("1".into())));
        let e = get(r#"{"mode":"Auto"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#""Auto" at /mode is not one of the labels auto, manual, 1"#
        );
        assert!(matches!(
            get(r#"{"mode":{}}"#),
            Err(DecodeError::WrongType { .. })
        ));
    }

    #[test]
    fn timestamps_take_rfc3339_and_unix_seconds() {
        let want = Ok(Value::Timestamp(at(NOW)));
        for text in [
            "\"2024-05-01T12:00:00Z\"",
            "\"2024-05-01t12:00:00z\"",
            "\"2024-05-01T14:00:00+02:00\"",
            "\"2024-05-01T07:30:00-04:30\"",
            "\"2024-05-01T12:00:00+00:00\"",
            "\"2024-05-01T12:00:00-00:00\"",
            "1714564800",
            "1714564800.0",
            "\"1714564800\"",
        ] {
            assert_eq!(json(FieldType::Timestamp, text), want, "{text}");
        }
        assert_eq!(
            json(FieldType::Timestamp, "\"2024-05-01T12:00:00.250Z\""),
            Ok(Value::Timestamp(at(NOW) + Duration::from_millis(250)))
        );
        assert_eq!(
            json(FieldType::Timestamp, "\"2024-05-01T14:00:00.5+02:00\""),
            Ok(Value::Timestamp(at(NOW) + Duration::from_millis(500)))
        );
        assert_eq!(
            json(FieldType::Timestamp, "1714564800.5"),
            Ok(Value::Timestamp(at(NOW) + Duration::from_millis(500)))
        );
        assert_eq!(
            json(FieldType::Timestamp, "0"),
            Ok(Value::Timestamp(UNIX_EPOCH))
        );
        for text in [
            "\"yesterday\"",
            "\"2024-05-01T12:00:00\"",
            "\"2024-05-01 12:00:00Z\"",
            "\"2024-05-01T12:00:00+2:00\"",
            "\"2024-05-01T12:00:00+24:00\"",
            "\"2024-05-01T12:00:00+02:60\"",
            "\"2024-13-01T12:00:00Z\"",
            "\"2024-02-30T12:00:00Z\"",
            "\"1969-12-31T23:59:59Z\"",
            "\"1970-01-01T00:30:00+01:00\"",
            "\"9999-12-31T23:00:00-02:00\"",
            "\"2024-05-01T12:00:00.12345678901234567890123456789Z\"",
            "\"2024-05-01T12:00:00Zé\"",
            "\"2024-05-01Té2:00:00Z\"",
            "\"é024-05-01T12:00:00+01:00\"",
            "\"\"",
            "-1",
            "\"-1\"",
            "1e12",
            "1e300",
            "\"NaN\"",
        ] {
            let e = json(FieldType::Timestamp, text).unwrap_err();
            assert!(matches!(e, DecodeError::BadTime { .. }), "{text}: {e}");
        }
        assert!(matches!(
            json(FieldType::Timestamp, "true"),
            Err(DecodeError::WrongType { .. })
        ));
        assert_eq!(
            json(FieldType::Timestamp, "\"9999-12-31T23:59:59Z\""),
            Ok(Value::Timestamp(at(END_OF_TIME - 1)))
        );
        // Values are always writable as RFC 3339 (humantime panics before 1970).
        let Ok(Value::Timestamp(t)) = json(FieldType::Timestamp, "253402300799.9") else {
            panic!()
        };
        assert!(!humantime::format_rfc3339(t).to_string().is_empty());
    }

    // -- CBOR ----------------------------------------------------------------------------

    /// Each type rule again with CBOR items.
    #[test]
    fn cbor_items_follow_the_same_rules() {
        use FieldType::{Bool, Double, Int, Long, String as Text, Timestamp};
        let f16_21 = [0xf9, 0x4d, 0x40];
        let f16_21_5 = [0xf9, 0x4d, 0x60];
        let u64_max = [0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let minus_2_64 = [0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let i64_max = [0x1b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let i64_min = [0x3b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let f21_1 = 21.1f32.to_be_bytes();
        for (kind, item, want) in [
            (Bool, &[0xf5][..], Value::Bool(true)),
            (Bool, &[0xf4], Value::Bool(false)),
            (Bool, &[0x01], Value::Bool(true)),
            (Bool, &[0xf9, 0x00, 0x00], Value::Bool(false)),
            (Bool, &[0x62, b'O', b'N'], Value::Bool(true)),
            (Int, &[0x15], Value::Int(21)),
            (Int, &f16_21, Value::Int(21)),
            (Int, &[0x3a, 0x7f, 0xff, 0xff, 0xff], Value::Int(i32::MIN)),
            (Int, &[0x62, b'2', b'1'], Value::Int(21)),
            (Int, &[0xc4, 0x82, 0x01, 0x02], Value::Int(20)),
            (Long, &i64_max, Value::Long(i64::MAX)),
            (Long, &i64_min, Value::Long(i64::MIN)),
            (Long, &[0xc2, 0x41, 0x05], Value::Long(5)),
            (Long, &[0xc4, 0x82, 0x02, 0x0f], Value::Long(1500)),
            (Double, &f16_21_5, Value::Double(21.5)),
            (Double, &[0x15], Value::Double(21.0)),
            (
                Double,
                &[0xfa, f21_1[0], f21_1[1], f21_1[2], f21_1[3]],
                Value::Double(21.100000381469727),
            ),
            (
                Double,
                &minus_2_64,
                Value::Double(-18_446_744_073_709_551_616.0),
            ),
            (
                Double,
                &[0xc4, 0x82, 0x21, 0x19, 0x6a, 0xb3],
                Value::Double(273.15),
            ),
            (Double, &[0xc1, 0x05], Value::Double(5.0)),
            (
                Text,
                &[0x66, b' ', b'i', b'd', b'l', b'e', b' '],
                Value::String(" idle ".into()),
            ),
            (
                Text,
                &[0x7f, 0x61, b'a', 0x61, b'b', 0xff],
                Value::String("ab".into()),
            ),
            (Text, &f16_21_5, Value::String("21.5".into())),
            (Text, &[0x38, 0x14], Value::String("-21".into())),
            (Text, &u64_max, Value::String("18446744073709551615".into())),
            (
                Text,
                &minus_2_64,
                Value::String("-18446744073709551616".into()),
            ),
            (Text, &[0xf5], Value::String("true".into())),
            (Text, &[0xc0, 0x61, b'x'], Value::String("x".into())),
            (Text, &[0xd8, 0x20, 0x61, b'u'], Value::String("u".into())),
        ] {
            assert_eq!(cbor(kind, item), Ok(want), "{kind:?} {item:02x?}");
        }
        for (kind, item, error) in [
            (
                Bool,
                &[0x02][..],
                "expected a boolean at /x, got the number 2",
            ),
            (
                Bool,
                &[0x41, 0x01],
                "expected a boolean at /x, got a byte string",
            ),
            (
                Int,
                &f16_21_5,
                "value 21.5 at /x is not a whole number, as an int field needs",
            ),
            (
                Int,
                &[0x1a, 0x80, 0x00, 0x00, 0x00],
                "value 2147483648 at /x is out of range for an int field",
            ),
            (
                Long,
                &u64_max,
                "value 18446744073709551615 at /x is out of range for a long field",
            ),
            (
                Long,
                &minus_2_64,
                "value -18446744073709551616 at /x is out of range for a long field",
            ),
            (
                Long,
                &[0xc2, 0x49, 0x01, 0, 0, 0, 0, 0, 0, 0, 0],
                "value 18446744073709551616 at /x is out of range for a long field",
            ),
            (
                Long,
                &[0xfb, 0x43, 0x40, 0, 0, 0, 0, 0, 1],
                "value 9007199254740994.0 at /x is out of range for a long field",
            ),
            (
                Double,
                &[0xf9, 0x7e, 0x00],
                "value NaN at /x is not a finite number",
            ),
            (
                Double,
                &[0xfa, 0x7f, 0x80, 0x00, 0x00],
                "value inf at /x is not a finite number",
            ),
            (
                Double,
                &[0xfb, 0xff, 0xf0, 0, 0, 0, 0, 0, 0],
                "value -inf at /x is not a finite number",
            ),
            (
                Long,
                &[0xf9, 0x7e, 0x00],
                "value NaN at /x is not a finite number",
            ),
            (
                Double,
                &[0x42, 0x01, 0x02],
                "expected a number at /x, got a byte string",
            ),
            (
                Double,
                &[0xf0],
                "expected a number at /x, got a simple value",
            ),
            (Text, &[0x40], "expected text at /x, got a byte string"),
            (Text, &[0xa0], "expected text at /x, got an object"),
            (Text, &[0x80], "expected text at /x, got an array"),
            (
                Timestamp,
                &[0x41, 0x00],
                "expected a time at /x, got a byte string",
            ),
        ] {
            assert_eq!(
                cbor(kind, item).unwrap_err().to_string(),
                error,
                "{kind:?} {item:02x?}"
            );
        }
        // null and undefined: absent.
        for item in [&[0xf6][..], &[0xf7]] {
            let t = topic(Format::Cbor, vec![json_field(Double, "/x")]);
            let mut payload = vec![0xa1, 0x61, b'x'];
            payload.extend_from_slice(item);
            assert_eq!(t.decode(&payload, at(NOW)), Ok(Default::default()));
        }
    }

    #[test]
    fn cbor_times_tagged_and_untagged() {
        let want = Ok(Value::Timestamp(at(NOW)));
        // 0("2024-05-01T12:00:00Z"), 0("2024-05-01T14:00:00+02:00"), 1(1714564800),
        // 1714564800, "2024-05-01T12:00:00Z", "1714564800".
        let rfc = b"2024-05-01T12:00:00Z";
        let offset = b"2024-05-01T14:00:00+02:00";
        let text = |text: &[u8]| {
            let mut item = vec![0x78, text.len() as u8];
            item.extend_from_slice(text);
            item
        };
        let tagged = |tag: u8, t: &[u8]| [vec![tag], text(t)].concat();
        let secs = [0x1a, 0x66, 0x32, 0x2e, 0xc0];
        let mut epoch = vec![0xc1];
        epoch.extend(secs);
        for item in [
            tagged(0xc0, rfc),
            tagged(0xc0, offset),
            epoch.clone(),
            secs.to_vec(),
            text(rfc),
            text(b"1714564800"),
        ] {
            assert_eq!(cbor(FieldType::Timestamp, &item), want, "{item:02x?}");
        }
        let half = (NOW as f64 + 0.5).to_be_bytes();
        let mut item = vec![0xc1, 0xfb];
        item.extend(half);
        assert_eq!(
            cbor(FieldType::Timestamp, &item),
            Ok(Value::Timestamp(at(NOW) + Duration::from_millis(500)))
        );
        // A date/time tag holds RFC 3339 text only; an epoch tag a time in range.
        for (item, error) in [
            (
                tagged(0xc0, b"1714564800"),
                r#""1714564800" is not an RFC 3339 time"#,
            ),
            (
                tagged(0xc0, b"2024-05-01T12:00:00+0200"),
                "has no time zone",
            ),
            (vec![0xc1, 0x20], "-1 is before 1970 or after 9999"),
            (
                vec![0xc1, 0xf9, 0x7e, 0x00],
                "NaN is before 1970 or after 9999",
            ),
            (
                vec![0xc1, 0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                "18446744073709551615 is before 1970 or after 9999",
            ),
        ] {
            let e = cbor(FieldType::Timestamp, &item).unwrap_err();
            assert!(matches!(e, DecodeError::BadTime { .. }), "{item:02x?}: {e}");
            assert!(e.to_string().contains(error), "{item:02x?}: {e}");
        }
        for (item, got) in [
            (vec![0xc0, 0x01], "a date/time (tag 0) that is not text"),
            (
                vec![0xc1, 0x61, b'x'],
                "an epoch time (tag 1) that is not a number",
            ),
        ] {
            assert_eq!(
                cbor(FieldType::Timestamp, &item).unwrap_err().to_string(),
                format!("expected a time at /x, got {got}")
            );
        }
        // Other fields read a time tag's item.
        assert_eq!(
            cbor(FieldType::String, &tagged(0xc0, rfc)),
            Ok(Value::String("2024-05-01T12:00:00Z".into()))
        );
        assert_eq!(cbor(FieldType::Long, &epoch), Ok(Value::Long(NOW as i64)));
        let e = cbor(FieldType::Int, &tagged(0xc0, b"x")).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"expected a whole number at /x, got the date/time "x""#
        );
    }
}
