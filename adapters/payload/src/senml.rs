//! SenML (RFC 8428): packs read from JSON (straight from the payload: names borrowed
//! where they need no unescaping, unknown fields skipped without being built) or from
//! CBOR (from the payload's tree, with the integer labels of §6), then resolved alike:
//! base name, time and value, relative times, the latest record of each field.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Number;

use crate::convert::Scalar;
use crate::decode::{misplaced, Decoded, Format, Locator, TopicDecoder};
use crate::error::{json_error, json_reason, quoted, DecodeError};
use crate::time::in_range;
use crate::tree::{Key, Node, Num, Text};

/// The highest SenML version understood (RFC 8428's).
const VERSION: u64 = 10;

/// SenML times below this (2^28 s, about 8.5 years) count from now (RFC 8428 §4.5.3).
const SENML_RELATIVE_BELOW: f64 = 268_435_456.0;

/// The fields of one record the decoder uses.
#[derive(Default)]
pub(crate) struct Record<'de> {
    bn: Option<Cow<'de, str>>,
    bt: Option<f64>,
    bv: Option<Num>,
    n: Option<Cow<'de, str>>,
    t: Option<f64>,
    value: Option<RecordValue<'de>>,
}

/// A record's value, by the field it came in.
enum RecordValue<'de> {
    /// `v`.
    Number(Num),
    /// `vs`.
    Text(Cow<'de, str>),
    /// `vb`.
    Bool(bool),
    /// `vd`: its base64 text (in CBOR a byte string, written here as SenML JSON writes
    /// it: base64url without padding).
    Data(Cow<'de, str>),
}

// ---------------------------------------------------------------------------------------
// SenML JSON

/// A SenML JSON pack: its records in order.
struct Pack<'de>(Vec<Record<'de>>);

/// A record's key.
enum Label {
    Bn,
    Bt,
    Bv,
    Bver,
    N,
    T,
    V,
    Vs,
    Vb,
    Vd,
    /// A known field the decoder does not use, or an optional extension.
    Ignored,
    /// An extension that must be understood (its name ends in `_`), quoted.
    Mandatory(String),
}

impl Label {
    /// A label as SenML JSON writes it (and SenML CBOR writes extensions).
    fn of_text(key: &str) -> Label {
        match key {
            "bn" => Label::Bn,
            "bt" => Label::Bt,
            "bv" => Label::Bv,
            "bver" => Label::Bver,
            "n" => Label::N,
            "t" => Label::T,
            "v" => Label::V,
            "vs" => Label::Vs,
            "vb" => Label::Vb,
            "vd" => Label::Vd,
            k if k.ends_with('_') => Label::Mandatory(quoted(k)),
            _ => Label::Ignored,
        }
    }

    /// A label as SenML CBOR writes it (RFC 8428 Table 4): text keys are extensions
    /// (the labels of Table 4 are integers in CBOR), unknown integers optional ones.
    fn of_cbor(key: &Key) -> Label {
        match key {
            Key::Int(-1) => Label::Bver,
            Key::Int(-2) => Label::Bn,
            Key::Int(-3) => Label::Bt,
            Key::Int(-5) => Label::Bv,
            Key::Int(0) => Label::N,
            Key::Int(2) => Label::V,
            Key::Int(3) => Label::Vs,
            Key::Int(4) => Label::Vb,
            Key::Int(6) => Label::T,
            Key::Int(8) => Label::Vd,
            Key::Text(k) if k.ends_with('_') => Label::Mandatory(quoted(k)),
            // bu (-4), bs (-6), u (1), s (5), ut (7), and the others.
            _ => Label::Ignored,
        }
    }
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LabelVisitor;
        impl Visitor<'_> for LabelVisitor {
            type Value = Label;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SenML field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Label, E> {
                Ok(Label::of_text(key))
            }
        }
        d.deserialize_str(LabelVisitor)
    }
}

/// Sets a field met once at most.
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

fn unsupported_version(version: u64) -> String {
    format!("SenML version {version} is not supported (only {VERSION})")
}

const MORE_THAN_ONE_VALUE: &str = "a record has more than one value";

/// A JSON number as a record's number.
struct JsonNum(Num);

impl<'de> Deserialize<'de> for JsonNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Number::deserialize(d).map(|n| JsonNum(Num::from(&n)))
    }
}

impl<'de> Deserialize<'de> for Record<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RecordVisitor;
        impl<'de> Visitor<'de> for RecordVisitor {
            type Value = Record<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SenML record (an object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record<'de>, A::Error> {
                let mut r = Record::default();
                let mut values = 0;
                while let Some(label) = map.next_key::<Label>()? {
                    let value = match label {
                        Label::Bn => {
                            once(&mut r.bn, map.next_value::<Text>()?.0, "bn")?;
                            continue;
                        }
                        Label::Bt => {
                            once(&mut r.bt, map.next_value()?, "bt")?;
                            continue;
                        }
                        Label::Bv => {
                            once(&mut r.bv, map.next_value::<JsonNum>()?.0, "bv")?;
                            continue;
                        }
                        Label::N => {
                            once(&mut r.n, map.next_value::<Text>()?.0, "n")?;
                            continue;
                        }
                        Label::T => {
                            once(&mut r.t, map.next_value()?, "t")?;
                            continue;
                        }
                        Label::Bver => {
                            let version: u64 = map.next_value()?;
                            if version > VERSION {
                                return Err(de::Error::custom(unsupported_version(version)));
                            }
                            continue;
                        }
                        Label::Ignored => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                        Label::Mandatory(name) => {
                            return Err(de::Error::custom(format_args!(
                                "unsupported mandatory field {name}"
                            )));
                        }
                        Label::V => RecordValue::Number(map.next_value::<JsonNum>()?.0),
                        Label::Vs => RecordValue::Text(map.next_value::<Text>()?.0),
                        Label::Vb => RecordValue::Bool(map.next_value()?),
                        Label::Vd => RecordValue::Data(map.next_value::<Text>()?.0),
                    };
                    values += 1;
                    if values > 1 {
                        return Err(de::Error::custom(MORE_THAN_ONE_VALUE));
                    }
                    r.value = Some(value);
                }
                Ok(r)
            }
        }
        d.deserialize_map(RecordVisitor)
    }
}

impl<'de> Deserialize<'de> for Pack<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PackVisitor;
        impl<'de> Visitor<'de> for PackVisitor {
            type Value = Pack<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SenML pack (an array of records)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pack<'de>, A::Error> {
                let mut records = Vec::new();
                while let Some(record) = seq.next_element()? {
                    records.push(record);
                }
                Ok(Pack(records))
            }
        }
        d.deserialize_seq(PackVisitor)
    }
}

/// The records of a SenML JSON pack. JSON syntax errors are "not JSON"; JSON that is not
/// a pack is "not SenML".
pub(crate) fn from_json(payload: &[u8]) -> Result<Vec<Record<'_>>, DecodeError> {
    match serde_json::from_slice::<Pack>(payload) {
        Ok(Pack(records)) => Ok(records),
        Err(e) => Err(match e.classify() {
            serde_json::error::Category::Data => DecodeError::NotSenml {
                reason: format!(
                    "{} at line {} column {}",
                    json_reason(&e),
                    e.line(),
                    e.column()
                ),
            },
            _ => json_error(e),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// SenML CBOR

/// The records of a SenML CBOR pack, from its tree; the same rules as for SenML JSON.
pub(crate) fn from_cbor<'a>(doc: &'a Node<'_>) -> Result<Vec<Record<'a>>, DecodeError> {
    let Node::Array(items) = doc else {
        return Err(not_senml(format!(
            "expected a SenML pack (an array of records), got {}",
            doc.kind()
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            cbor_record(item).map_err(|why| not_senml(format!("record {index}: {why}")))
        })
        .collect()
}

fn not_senml(reason: String) -> DecodeError {
    DecodeError::NotSenml { reason }
}

fn cbor_record<'a>(item: &'a Node<'_>) -> Result<Record<'a>, String> {
    let Node::Object(members) = item else {
        return Err(format!(
            "expected a SenML record (a map), got {}",
            item.kind()
        ));
    };
    let invalid = |name: &str, node: &Node, expected: &str| {
        format!(
            "invalid type: {} for {name}, expected {expected}",
            node.kind()
        )
    };
    let text = |name: &'static str, node: &'a Node| match node {
        Node::String(s) => Ok(Cow::Borrowed(&**s)),
        other => Err(invalid(name, other, "a text string")),
    };
    let number = |name: &'static str, node: &'a Node| match node {
        Node::Number(n) => Ok(*n),
        other => Err(invalid(name, other, "a number")),
    };
    let duplicate = |name: &str| format!("duplicate field `{name}`");
    let mut r = Record::default();
    let mut values = 0;
    for (key, node) in members {
        let value = match Label::of_cbor(key) {
            Label::Bn => {
                once_cbor(&mut r.bn, text("bn", node)?, || duplicate("bn"))?;
                continue;
            }
            Label::Bt => {
                once_cbor(&mut r.bt, number("bt", node)?.as_f64(), || duplicate("bt"))?;
                continue;
            }
            Label::Bv => {
                once_cbor(&mut r.bv, number("bv", node)?, || duplicate("bv"))?;
                continue;
            }
            Label::N => {
                once_cbor(&mut r.n, text("n", node)?, || duplicate("n"))?;
                continue;
            }
            Label::T => {
                once_cbor(&mut r.t, number("t", node)?.as_f64(), || duplicate("t"))?;
                continue;
            }
            Label::Bver => {
                let version = match node {
                    Node::Number(Num::Int(v)) => u64::try_from(*v)
                        .map_err(|_| format!("invalid value: {v} for bver, expected u64"))?,
                    other => return Err(invalid("bver", other, "u64")),
                };
                if version > VERSION {
                    return Err(unsupported_version(version));
                }
                continue;
            }
            Label::Ignored => continue,
            Label::Mandatory(name) => return Err(format!("unsupported mandatory field {name}")),
            Label::V => RecordValue::Number(number("v", node)?),
            Label::Vs => RecordValue::Text(text("vs", node)?),
            Label::Vb => match node {
                Node::Bool(b) => RecordValue::Bool(*b),
                other => return Err(invalid("vb", other, "a boolean")),
            },
            Label::Vd => match node {
                Node::Bytes(b) => RecordValue::Data(Cow::Owned(base64url(b))),
                other => return Err(invalid("vd", other, "a byte string")),
            },
        };
        values += 1;
        if values > 1 {
            return Err(MORE_THAN_ONE_VALUE.to_owned());
        }
        r.value = Some(value);
    }
    Ok(r)
}

fn once_cbor<T>(
    slot: &mut Option<T>,
    value: T,
    duplicate: impl Fn() -> String,
) -> Result<(), String> {
    if slot.is_some() {
        return Err(duplicate());
    }
    *slot = Some(value);
    Ok(())
}

/// Bytes as base64url without padding (RFC 4648 §5), as SenML JSON writes `vd`.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Resolution

/// The latest record of a SenML field so far.
#[derive(Clone, Copy)]
struct Candidate<'r, 'de> {
    record: &'r Record<'de>,
    /// Its resolved time (`bt` + `t`).
    time: f64,
    /// That time on the scale of absolute times, to compare relative and absolute ones.
    order: f64,
    /// The base value in force at the record.
    bv: Option<Num>,
}

/// Resolves a pack's records for the topic's fields into `out`.
pub(crate) fn resolve(
    records: &[Record],
    topic: &TopicDecoder,
    arrival: SystemTime,
    out: &mut Decoded,
) -> Result<(), DecodeError> {
    let arrival_secs = arrival
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());

    let mut latest: Vec<Option<Candidate>> = vec![None; topic.fields.len()];
    let mut bn = "";
    let mut bt = 0.0;
    let mut bv = None;
    for (index, record) in records.iter().enumerate() {
        if let Some(b) = &record.bn {
            bn = b;
        }
        if let Some(b) = record.bt {
            bt = b;
        }
        if let Some(b) = record.bv {
            bv = Some(b);
        }
        if record.value.is_none() {
            continue;
        }
        let n = record.n.as_deref().unwrap_or("");
        let time = bt + record.t.unwrap_or(0.0);
        if !time.is_finite() {
            return Err(DecodeError::NotSenml {
                reason: format!("record {index}: its time is not a finite number"),
            });
        }
        // Relative and absolute times compared on one scale.
        let order = if time < SENML_RELATIVE_BELOW {
            arrival_secs + time
        } else {
            time
        };
        for (slot, field) in latest.iter_mut().zip(&topic.fields) {
            let Locator::Senml(name) = &field.locator else {
                continue;
            };
            let own = record.n.is_some() && n == name;
            let full =
                bn.len() + n.len() == name.len() && name.starts_with(bn) && name.ends_with(n);
            if !(own || full) {
                continue;
            }
            // `>=`: of records with the same time, the last in the pack.
            if slot.is_none_or(|c| order >= c.order) {
                *slot = Some(Candidate {
                    record,
                    time,
                    order,
                    bv,
                });
            }
        }
    }

    for (i, (field, slot)) in topic.fields.iter().zip(latest).enumerate() {
        if !field.locator.fits(Format::Senml) {
            out.errors
                .push((i, misplaced(&field.locator, topic.format)));
            continue;
        }
        let Some(Candidate {
            record, time, bv, ..
        }) = slot
        else {
            continue;
        };
        let at = || field.locator.place(topic.format);
        let stamp = match senml_time(time, arrival) {
            Some(stamp) => stamp,
            None => {
                out.errors.push((
                    i,
                    DecodeError::BadTime {
                        at: at(),
                        reason: format!("record time {time} is before 1970 or after 9999"),
                    },
                ));
                continue;
            }
        };
        let scalar = match &record.value {
            Some(RecordValue::Number(v)) => match bv {
                None => Scalar::Num(*v),
                Some(base) => match add(base, *v) {
                    Some(sum) => Scalar::Num(sum),
                    None => {
                        out.errors.push((
                            i,
                            DecodeError::NotFinite {
                                at: at(),
                                value: format!("{base} + {v}"),
                            },
                        ));
                        continue;
                    }
                },
            },
            Some(RecordValue::Text(s) | RecordValue::Data(s)) => Scalar::Text(s),
            Some(RecordValue::Bool(b)) => Scalar::Bool(*b),
            None => continue,
        };
        out.put(i, field.convert(scalar, topic.format), stamp);
    }
    Ok(())
}

/// A SenML record's resolved time as a point in time: relative to `arrival` below 2^28,
/// else Unix seconds; `None` outside 1970–9999.
fn senml_time(time: f64, arrival: SystemTime) -> Option<SystemTime> {
    let stamp = if time < SENML_RELATIVE_BELOW {
        let offset = Duration::try_from_secs_f64(time.abs()).ok()?;
        if time < 0.0 {
            arrival.checked_sub(offset)?
        } else {
            arrival.checked_add(offset)?
        }
    } else {
        UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(time).ok()?)?
    };
    in_range(stamp)
}

/// `base + v`, exact for whole numbers within i64; `None` if not finite.
fn add(base: Num, v: Num) -> Option<Num> {
    if let (Some(a), Some(b)) = (base.as_i64(), v.as_i64()) {
        if let Some(sum) = a.checked_add(b) {
            return Some(Num::Int(sum.into()));
        }
    }
    let sum = base.as_f64() + v.as_f64();
    sum.is_finite().then_some(Num::Float(sum))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fieldgate_api::{FieldType, Value};

    use super::*;
    use crate::testing::*;
    use crate::DecodeError;
    use crate::FieldDecoder;

    fn senml(fields: Vec<FieldDecoder>, payload: &str) -> Result<Decoded, DecodeError> {
        topic(Format::Senml, fields).decode(payload.as_bytes(), at(NOW))
    }

    #[test]
    fn senml_rfc_examples() {
        // RFC 8428 §5.1.1, a single datapoint.
        let d = senml(
            vec![senml_field(
                FieldType::Double,
                "urn:dev:ow:10e2073a01080063",
            )],
            r#"[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]"#,
        )
        .unwrap();
        assert_eq!(d.values, vec![(0, Value::Double(23.1), at(NOW))]);
        // §5.1.2, multiple datapoints with a base name and a base time.
        let d = senml(
            vec![
                senml_field(FieldType::Double, "urn:dev:ow:10e2073a01080063:voltage"),
                senml_field(FieldType::Double, "current"),
            ],
            r#"[
                {"bn":"urn:dev:ow:10e2073a01080063:","bt":1.276020076001e+09,"bu":"A","bver":5,
                 "n":"voltage","u":"V","v":120.1},
                {"n":"current","t":-5,"v":1.2},
                {"n":"current","t":-4,"v":1.3},
                {"n":"current","t":-3,"v":1.4},
                {"n":"current","t":-2,"v":1.5},
                {"n":"current","t":-1,"v":1.6},
                {"n":"current","v":1.7}
            ]"#,
        )
        .unwrap();
        let base = UNIX_EPOCH + Duration::from_secs_f64(1.276020076001e9);
        assert_eq!(
            d.values,
            vec![
                (0, Value::Double(120.1), base),
                (1, Value::Double(1.7), base)
            ]
        );
        assert!(d.errors.is_empty());
    }

    #[test]
    fn senml_takes_the_latest_record_of_a_series() {
        let fields = vec![senml_field(FieldType::Int, "temp")];
        // Out of order in the pack: the latest time wins, not the last record.
        let d = senml(
            fields.clone(),
            r#"[{"n":"temp","t":1714564810,"v":2},{"n":"temp","t":1714564800,"v":1}]"#,
        )
        .unwrap();
        assert_eq!(d.values, vec![(0, Value::Int(2), at(NOW + 10))]);
        // The same time: the last record.
        let d = senml(fields.clone(), r#"[{"n":"temp","v":1},{"n":"temp","v":2}]"#).unwrap();
        assert_eq!(d.values, vec![(0, Value::Int(2), at(NOW))]);
        // Relative and absolute times on one scale.
        let d = senml(
            fields.clone(),
            r#"[{"n":"temp","t":-60,"v":1},{"n":"temp","t":1714564700,"v":2},{"n":"temp","t":-120,"v":3}]"#,
        )
        .unwrap();
        assert_eq!(d.values, vec![(0, Value::Int(1), at(NOW - 60))]);
        // The latest record's value is taken even if it is wrong.
        let d = senml(
            fields,
            r#"[{"n":"temp","v":1},{"n":"temp","t":1,"vs":"x"}]"#,
        )
        .unwrap();
        assert!(d.values.is_empty());
        assert!(matches!(d.errors[0].1, DecodeError::WrongType { .. }));
    }

    #[test]
    fn senml_relative_times_count_from_arrival() {
        let fields = vec![senml_field(FieldType::Int, "a")];
        for (record, want) in [
            (r#"{"n":"a","v":1}"#, at(NOW)),
            (r#"{"n":"a","t":-60,"v":1}"#, at(NOW - 60)),
            (r#"{"n":"a","t":30,"v":1}"#, at(NOW + 30)),
            (
                r#"{"n":"a","t":-0.5,"v":1}"#,
                at(NOW) - Duration::from_millis(500),
            ),
            (r#"{"bt":-10,"n":"a","t":-5,"v":1}"#, at(NOW - 15)),
            (r#"{"n":"a","t":268435455,"v":1}"#, at(NOW + 268_435_455)),
            (r#"{"n":"a","t":268435456,"v":1}"#, at(268_435_456)),
            (r#"{"bt":1714564000,"n":"a","t":800,"v":1}"#, at(NOW)),
        ] {
            let d = senml(fields.clone(), &format!("[{record}]")).unwrap();
            assert_eq!(d.values, vec![(0, Value::Int(1), want)], "{record}");
        }
        for record in [
            r#"{"n":"a","t":1e300,"v":1}"#,
            r#"{"n":"a","t":-1e300,"v":1}"#,
            r#"{"n":"a","t":-2000000000,"v":1}"#,
            r#"{"n":"a","t":1e12,"v":1}"#,
        ] {
            let d = senml(fields.clone(), &format!("[{record}]")).unwrap();
            assert!(d.values.is_empty(), "{record}");
            assert!(
                matches!(d.errors[..], [(0, DecodeError::BadTime { .. })]),
                "{record}"
            );
        }
        let e = senml(fields, r#"[{"bt":1.7e308,"n":"a","t":1.7e308,"v":1}]"#).unwrap_err();
        assert!(matches!(e, DecodeError::NotSenml { .. }), "{e}");
    }

    #[test]
    fn senml_base_fields_carry_over() {
        let d = senml(
            vec![
                senml_field(FieldType::Double, "dev1:a"),
                senml_field(FieldType::Double, "dev1:b"),
                senml_field(FieldType::Long, "dev2:c"),
                senml_field(FieldType::Long, "dev2:d"),
                senml_field(FieldType::String, "dev2:e"),
            ],
            r#"[
                {"bn":"dev1:","bv":10,"n":"a","v":1.5},
                {"n":"b","v":2},
                {"bn":"dev2:","bv":9223372036854775800,"n":"c","v":7},
                {"bv":0.5,"n":"d","v":1},
                {"n":"e","vs":"text","bv":100}
            ]"#,
        )
        .unwrap();
        assert_eq!(
            d.values,
            vec![
                (0, Value::Double(11.5), at(NOW)),
                (1, Value::Double(12.0), at(NOW)),
                (2, Value::Long(9_223_372_036_854_775_807), at(NOW)),
                (4, Value::String("text".into()), at(NOW)),
            ]
        );
        // 0.5 + 1 is not a whole number.
        assert!(matches!(d.errors[..], [(3, DecodeError::NotWhole { .. })]));
        // A base value that overflows i64 is added as floats; beyond f64, not finite.
        let d = senml(
            vec![senml_field(FieldType::Double, "x")],
            r#"[{"bv":1.7e308,"n":"x","v":1.7e308}]"#,
        )
        .unwrap();
        assert!(matches!(d.errors[..], [(0, DecodeError::NotFinite { .. })]));
    }

    #[test]
    fn senml_names_match_in_full_or_by_own_name() {
        let fields = vec![
            senml_field(FieldType::Int, "urn:dev:mac:0024befffe804ff1:temp"),
            senml_field(FieldType::Int, "hum"),
            senml_field(FieldType::Int, "urn:dev:mac:0024befffe804ff1:"),
        ];
        let d = senml(
            fields.clone(),
            r#"[{"bn":"urn:dev:mac:0024befffe804ff1:","n":"temp","v":21},{"n":"hum","v":40},{"v":1}]"#,
        )
        .unwrap();
        assert_eq!(
            d.values,
            vec![
                (0, Value::Int(21), at(NOW)),
                (1, Value::Int(40), at(NOW)),
                (2, Value::Int(1), at(NOW)),
            ]
        );
        // Prefixes and suffixes alone do not match.
        let d = senml(
            fields,
            r#"[{"bn":"urn:dev:mac:0024befffe804ff1","n":"temp","v":21},{"n":"humidity","v":40},{"n":"temp","v":1}]"#,
        )
        .unwrap();
        assert_eq!(d, Decoded::default());
    }

    #[test]
    fn senml_value_kinds() {
        let mut mode = senml_field(FieldType::Enum, "mode");
        mode.labels = vec!["auto".into()];
        let d = senml(
            vec![
                senml_field(FieldType::Bool, "on"),
                senml_field(FieldType::String, "msg"),
                mode,
                senml_field(FieldType::String, "blob"),
                senml_field(FieldType::Bool, "sw"),
                senml_field(FieldType::Double, "absent"),
                senml_field(FieldType::Double, "t"),
            ],
            r#"[{"n":"on","vb":true},{"n":"msg","vs":"h\u00e9"},{"n":"mode","vs":"auto"},
                {"n":"blob","vd":"aGk="},{"n":"sw","v":1},{"n":"absent","s":5},{"n":"t","vs":"21.5"},
                {"n":"x","ut":5,"u":"Cel","bs":1,"ext":{"deep":[1,2]},"v":1}]"#,
        )
        .unwrap();
        assert_eq!(
            d.values,
            vec![
                (0, Value::Bool(true), at(NOW)),
                (1, Value::String("hé".into()), at(NOW)),
                (2, Value::Enum("auto".into()), at(NOW)),
                (3, Value::String("aGk=".into()), at(NOW)),
                (4, Value::Bool(true), at(NOW)),
                (6, Value::Double(21.5), at(NOW)),
            ]
        );
        assert!(d.errors.is_empty());
        let d = senml(
            vec![senml_field(FieldType::Bool, "on")],
            r#"[{"n":"on","v":21.5}]"#,
        )
        .unwrap();
        assert_eq!(
            d.errors[0].1.to_string(),
            r#"expected a boolean in SenML record "on", got the number 21.5"#
        );
    }

    #[test]
    fn malformed_packs_are_refused() {
        let fields = vec![senml_field(FieldType::Double, "a")];
        for (payload, says) in [
            (r#"{"n":"a","v":1}"#, "expected a SenML pack"),
            (r#"[1]"#, "expected a SenML record"),
            (r#"[{"n":"a","v":"1"}]"#, "invalid type"),
            (r#"[{"n":"a","v":1,"vs":"x"}]"#, "more than one value"),
            (r#"[{"n":"a","v":1,"v":2}]"#, "more than one value"),
            (r#"[{"n":"a","n":"b","v":1}]"#, "duplicate field"),
            (
                r#"[{"n":"a","v":1,"foo_":1}]"#,
                "unsupported mandatory field \"foo_\"",
            ),
            (r#"[{"bver":11,"n":"a","v":1}]"#, "SenML version 11"),
            (r#"[{"bver":-1,"n":"a","v":1}]"#, "invalid"),
            (r#"[{"n":1,"v":1}]"#, "invalid type"),
            (r#"[{"n":"a","v":null}]"#, "invalid type"),
            (r#"[{"n":"a","t":"now","v":1}]"#, "invalid type"),
        ] {
            let e = senml(fields.clone(), payload).unwrap_err();
            assert!(matches!(e, DecodeError::NotSenml { .. }), "{payload}: {e}");
            assert!(e.to_string().contains(says), "{payload}: {e}");
        }
        let e = senml(fields.clone(), r#"[{"n":"a","v":1},"#).unwrap_err();
        assert!(matches!(e, DecodeError::NotJson { .. }), "{e}");
        let deep = format!("[{{\"x\":{}", "[".repeat(1 << 20));
        assert!(senml(fields.clone(), &deep).is_err());
        let deep = "[".repeat(1 << 20);
        assert!(senml(fields.clone(), &deep).is_err());
        // A hostile string in an error is cut.
        let payload = format!(r#"[{{"n":"a","v":"{}"}}]"#, "x".repeat(1 << 20));
        let e = senml(fields.clone(), &payload).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
        let payload = format!(r#"[{{"n":"a","v":1,"{}_":1}}]"#, "x".repeat(1 << 20));
        let e = senml(fields, &payload).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
    }

    #[test]
    fn senml_records_without_value_are_skipped() {
        let d = senml(
            vec![senml_field(FieldType::Double, "a")],
            r#"[{"bn":"dev:","bt":1714564800},{"n":"a","s":10},[]]"#,
        );
        // `[]` is not a record.
        assert!(d.is_err());
        let d = senml(
            vec![senml_field(FieldType::Double, "dev:a")],
            r#"[{"bn":"dev:","bt":1714564800},{"n":"a","s":10},{"n":"a","t":5,"v":1}]"#,
        )
        .unwrap();
        assert_eq!(d.values, vec![(0, Value::Double(1.0), at(NOW + 5))]);
        assert_eq!(
            senml(vec![senml_field(FieldType::Double, "a")], "[]"),
            Ok(Decoded::default())
        );
    }

    // -- SenML CBOR ----------------------------------------------------------------------

    fn senml_cbor(fields: Vec<FieldDecoder>, payload: &[u8]) -> Result<Decoded, DecodeError> {
        topic(Format::SenmlCbor, fields).decode(payload, at(NOW))
    }

    /// A SenML JSON pack as SenML CBOR (integer labels, `vd` as bytes).
    fn pack(json: &str) -> Vec<u8> {
        to_cbor(&serde_json::from_str(json).unwrap(), true)
    }

    /// Every pack of the SenML JSON tests that JSON can hold without duplicate keys, and a
    /// few more, resolve to the same values and errors in CBOR.
    #[test]
    fn senml_cbor_resolves_as_senml_json() {
        let mut mode = senml_field(FieldType::Enum, "mode");
        mode.labels = vec!["auto".into()];
        let fields = vec![
            senml_field(FieldType::Double, "urn:dev:ow:10e2073a01080063"),
            senml_field(FieldType::Double, "urn:dev:ow:10e2073a01080063:voltage"),
            senml_field(FieldType::Double, "current"),
            senml_field(FieldType::Int, "temp"),
            senml_field(FieldType::Int, "a"),
            senml_field(FieldType::Double, "dev1:a"),
            senml_field(FieldType::Double, "dev1:b"),
            senml_field(FieldType::Long, "dev2:c"),
            senml_field(FieldType::Long, "dev2:d"),
            senml_field(FieldType::String, "dev2:e"),
            senml_field(FieldType::Double, "x"),
            senml_field(FieldType::Int, "urn:dev:mac:0024befffe804ff1:temp"),
            senml_field(FieldType::Int, "hum"),
            senml_field(FieldType::Bool, "on"),
            senml_field(FieldType::String, "msg"),
            mode,
            senml_field(FieldType::Bool, "sw"),
            senml_field(FieldType::Double, "dev:a"),
            senml_field(FieldType::Timestamp, "when"),
        ];
        let packs = [
            r#"[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]"#,
            r#"[{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.276020076001e+09,"bu":"A","bver":5,
                 "n":"voltage","u":"V","v":120.1},{"n":"current","t":-5,"v":1.2},
                {"n":"current","t":-4,"v":1.3},{"n":"current","v":1.7}]"#,
            r#"[{"n":"temp","t":1714564810,"v":2},{"n":"temp","t":1714564800,"v":1}]"#,
            r#"[{"n":"temp","v":1},{"n":"temp","v":2}]"#,
            r#"[{"n":"temp","t":-60,"v":1},{"n":"temp","t":1714564700,"v":2},{"n":"temp","t":-120,"v":3}]"#,
            r#"[{"n":"temp","v":1},{"n":"temp","t":1,"vs":"x"}]"#,
            r#"[{"n":"a","t":-0.5,"v":1},{"bt":-10,"n":"a","t":-5,"v":1}]"#,
            r#"[{"n":"a","t":268435456,"v":1}]"#,
            r#"[{"bt":1714564000,"n":"a","t":800,"v":1}]"#,
            r#"[{"n":"a","t":1e300,"v":1}]"#,
            r#"[{"n":"a","t":-2000000000,"v":1}]"#,
            r#"[{"bt":1.7e308,"n":"a","t":1.7e308,"v":1}]"#,
            r#"[{"bn":"dev1:","bv":10,"n":"a","v":1.5},{"n":"b","v":2},
                {"bn":"dev2:","bv":9223372036854775800,"n":"c","v":7},{"bv":0.5,"n":"d","v":1},
                {"n":"e","vs":"text","bv":100}]"#,
            r#"[{"bv":1.7e308,"n":"x","v":1.7e308}]"#,
            r#"[{"bn":"urn:dev:mac:0024befffe804ff1:","n":"temp","v":21},{"n":"hum","v":40},{"v":1}]"#,
            r#"[{"bn":"urn:dev:mac:0024befffe804ff1","n":"temp","v":21},{"n":"humidity","v":40}]"#,
            r#"[{"n":"on","vb":true},{"n":"msg","vs":"h\u00e9"},{"n":"mode","vs":"auto"},
                {"n":"sw","v":1},{"n":"absent","s":5},{"n":"x","vs":"21.5"},
                {"n":"x2","ut":5,"u":"Cel","bs":1,"ext":{"deep":[1,2]},"v":1}]"#,
            r#"[{"n":"on","v":21.5}]"#,
            r#"[{"n":"when","v":1714564800},{"n":"x","v":-1e-300},{"n":"hum","v":18446744073709551615}]"#,
            r#"{"n":"a","v":1}"#,
            r#"[1]"#,
            r#"[{"n":"a","v":"1"}]"#,
            r#"[{"n":"a","v":1,"vs":"x"}]"#,
            r#"[{"n":"a","v":1,"foo_":1}]"#,
            r#"[{"bver":11,"n":"a","v":1}]"#,
            r#"[{"bver":-1,"n":"a","v":1}]"#,
            r#"[{"n":1,"v":1}]"#,
            r#"[{"n":"a","v":null}]"#,
            r#"[{"n":"a","t":"now","v":1}]"#,
            r#"[{"bn":"dev:","bt":1714564800},{"n":"a","s":10},[]]"#,
            r#"[{"bn":"dev:","bt":1714564800},{"n":"a","s":10},{"n":"a","t":5,"v":1}]"#,
            r#"[]"#,
        ];
        for json in packs {
            let a = senml(fields.clone(), json);
            let b = senml_cbor(fields.clone(), &pack(json));
            match (&a, &b) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{json}"),
                (Err(DecodeError::NotSenml { .. }), Err(DecodeError::NotSenml { .. })) => {}
                _ => panic!("{json}: JSON {a:?}, CBOR {b:?}"),
            }
        }
    }

    #[test]
    fn senml_cbor_rfc_8428_example() {
        // RFC 8428 §5.1.2 in CBOR, as §6 writes it: integer labels, floats in double
        // precision.
        let mut w = crate::cbor::Writer::default();
        w.array(3);
        w.map(6);
        w.int(-2);
        w.text("urn:dev:ow:10e2073a01080063:");
        w.int(-3);
        w.float(1.276020076001e9);
        w.int(-4);
        w.text("A");
        w.int(-1);
        w.int(5);
        w.int(0);
        w.text("voltage");
        w.int(2);
        w.float(120.1);
        for (t, v) in [(-5, 1.2), (0, 1.7)] {
            w.map(3);
            w.int(0);
            w.text("current");
            w.int(6);
            w.int(t);
            w.int(2);
            w.float(v);
        }
        let d = senml_cbor(
            vec![
                senml_field(FieldType::Double, "urn:dev:ow:10e2073a01080063:voltage"),
                senml_field(FieldType::Double, "current"),
            ],
            &w.finish(),
        )
        .unwrap();
        let base = UNIX_EPOCH + Duration::from_secs_f64(1.276020076001e9);
        assert_eq!(
            d.values,
            vec![
                (0, Value::Double(120.1), base),
                (1, Value::Double(1.7), base)
            ]
        );
        assert!(d.errors.is_empty());
    }

    #[test]
    fn senml_cbor_values_of_its_own() {
        let fields = vec![
            senml_field(FieldType::String, "blob"),
            senml_field(FieldType::Double, "dec"),
            senml_field(FieldType::Long, "big"),
            senml_field(FieldType::Double, "nan"),
            senml_field(FieldType::Long, "neg"),
            senml_field(FieldType::Double, "half"),
        ];
        // vd: bytes, read as base64url without padding; a decimal fraction; a bignum; NaN;
        // -2^64; a half-precision float; and the labels of Table 4 unused.
        let payload = [
            0x86, //
            0xa2, 0x00, 0x64, b'b', b'l', b'o', b'b', 0x08, 0x44, 0xfb, 0xff, 0xfe, 0x01, //
            0xa2, 0x00, 0x63, b'd', b'e', b'c', 0x02, 0xc4, 0x82, 0x21, 0x19, 0x6a, 0xb3, //
            0xa2, 0x00, 0x63, b'b', b'i', b'g', 0x02, 0xc2, 0x42, 0x01, 0x00, //
            0xa2, 0x00, 0x63, b'n', b'a', b'n', 0x02, 0xf9, 0x7e, 0x00, //
            0xa2, 0x00, 0x63, b'n', b'e', b'g', 0x02, 0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, //
            0xa8, 0x00, 0x64, b'h', b'a', b'l', b'f', 0x02, 0xf9, 0x3e, 0x00, 0x01, 0x61, b'V',
            0x05, 0x01, 0x07, 0x01, 0x23, 0x61, b'A', 0x25, 0x01, 0x18, 0x63, 0x01,
        ];
        let d = senml_cbor(fields, &payload).unwrap();
        assert_eq!(
            d.values,
            vec![
                (0, Value::String("-__-AQ".into()), at(NOW)),
                (1, Value::Double(273.15), at(NOW)),
                (2, Value::Long(256), at(NOW)),
                (5, Value::Double(1.5), at(NOW)),
            ]
        );
        let texts: Vec<_> = d.errors.iter().map(|(i, e)| (*i, e.to_string())).collect();
        assert_eq!(
            texts,
            vec![
                (3, r#"value NaN in SenML record "nan" is not a finite number"#.to_owned()),
                (
                    4,
                    r#"value -18446744073709551616 in SenML record "neg" is out of range for a long field"#
                        .to_owned()
                ),
            ]
        );
        // A NaN base value makes the sum not finite.
        let payload = [
            0x81, 0xa3, 0x24, 0xf9, 0x7e, 0x00, 0x00, 0x61, b'x', 0x02, 0x01,
        ];
        let d = senml_cbor(vec![senml_field(FieldType::Double, "x")], &payload).unwrap();
        assert_eq!(
            d.errors[0].1.to_string(),
            r#"value NaN + 1 in SenML record "x" is not a finite number"#
        );
    }

    #[test]
    fn base64url_as_senml_json_writes_it() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (b"foobar", "Zm9vYmFy"),
            (&[0xfb, 0xff, 0xbf], "-_-_"),
        ] {
            assert_eq!(base64url(bytes), text);
        }
    }

    #[test]
    fn malformed_cbor_packs_are_refused() {
        let fields = vec![senml_field(FieldType::Double, "a")];
        // {0: "a", ...} records.
        let rec = |rest: &[u8]| [&[0x81][..], rest].concat();
        for (payload, says) in [
            (
                vec![0xa1, 0x00, 0x61, b'a'],
                "expected a SenML pack (an array of records), got an object",
            ),
            (
                vec![0x81, 0x01],
                "record 0: expected a SenML record (a map), got a number",
            ),
            (
                rec(&[0xa2, 0x00, 0x61, b'a', 0x02, 0x61, b'1']),
                "invalid type: a string for v, expected a number",
            ),
            (
                rec(&[0xa2, 0x00, 0x01, 0x02, 0x01]),
                "invalid type: a number for n, expected a text string",
            ),
            (
                rec(&[0xa2, 0x00, 0x61, b'a', 0x02, 0xf6]),
                "invalid type: null for v, expected a number",
            ),
            (
                rec(&[0xa2, 0x00, 0x61, b'a', 0x08, 0x61, b'x']),
                "invalid type: a string for vd, expected a byte string",
            ),
            (
                rec(&[0xa2, 0x00, 0x61, b'a', 0x04, 0x01]),
                "invalid type: a number for vb, expected a boolean",
            ),
            (
                rec(&[0xa3, 0x00, 0x61, b'a', 0x02, 0x01, 0x03, 0x61, b'x']),
                "more than one value",
            ),
            (
                rec(&[0xa3, 0x00, 0x61, b'a', 0x02, 0x01, 0x02, 0x02]),
                "more than one value",
            ),
            (
                rec(&[0xa3, 0x00, 0x61, b'a', 0x00, 0x61, b'b', 0x02, 0x01]),
                "duplicate field `n`",
            ),
            (
                rec(&[0xa3, 0x06, 0x01, 0x06, 0x01, 0x02, 0x01]),
                "duplicate field `t`",
            ),
            (
                rec(&[0xa2, 0x20, 0x0b, 0x02, 0x01]),
                "SenML version 11 is not supported (only 10)",
            ),
            (
                rec(&[0xa2, 0x20, 0x20, 0x02, 0x01]),
                "invalid value: -1 for bver",
            ),
            (
                rec(&[0xa2, 0x20, 0xf9, 0x49, 0x00, 0x02, 0x01]),
                "invalid type: a number for bver",
            ),
            (
                rec(&[0xa2, 0x02, 0x01, 0x64, b'f', b'o', b'o', b'_', 0x01]),
                "unsupported mandatory field \"foo_\"",
            ),
            (
                rec(&[0xa2, 0x02, 0x01, 0x06, 0xf9, 0x7e, 0x00]),
                "record 0: its time is not a finite number",
            ),
            (
                rec(&[0xa2, 0x02, 0x01, 0x22, 0xfa, 0x7f, 0x80, 0x00, 0x00]),
                "its time is not a finite number",
            ),
            (
                rec(&[0xa2, 0x02, 0x01, 0x06, 0x61, b'x']),
                "invalid type: a string for t, expected a number",
            ),
        ] {
            let e = senml_cbor(fields.clone(), &payload).unwrap_err();
            assert!(
                matches!(e, DecodeError::NotSenml { .. }),
                "{payload:02x?}: {e}"
            );
            assert!(e.to_string().contains(says), "{payload:02x?}: {e}");
        }
        // Not CBOR: refused as such.
        let e = senml_cbor(fields.clone(), &[0x82, 0xa0]).unwrap_err();
        assert!(matches!(e, DecodeError::NotCbor { .. }), "{e}");
        let e = senml_cbor(fields.clone(), &[0x81; 1 << 20]).unwrap_err();
        assert!(e.to_string().contains("nesting deeper than 128"), "{e}");
        // Text labels are extensions: the JSON names are not read, but ignored.
        let d = senml_cbor(
            fields.clone(),
            &rec(&[0xa2, 0x61, b'n', 0x61, b'a', 0x61, b'v', 0x01]),
        )
        .unwrap();
        assert_eq!(d, Decoded::default());
        // Unknown integer labels and keys of other types are skipped.
        let d = senml_cbor(
            fields,
            &rec(&[
                0xa4, 0x00, 0x61, b'a', 0x02, 0x01, 0x18, 0x64, 0x80, 0x41, 0x00, 0xa0,
            ]),
        )
        .unwrap();
        assert_eq!(d.values, vec![(0, Value::Double(1.0), at(NOW))]);
    }
}
