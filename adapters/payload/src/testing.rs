//! Helpers of the unit tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldgate_api::{FieldSpec, FieldType, Value};

use crate::{DecodeError, Decoded, FieldDecoder, Format, Locator, Pointer, TopicDecoder};

pub(crate) fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// An arrival time for the tests: 2024-05-01T12:00:00Z.
pub(crate) const NOW: u64 = 1_714_564_800;

pub(crate) fn ptr(p: &str) -> Pointer {
    Pointer::parse(p).unwrap()
}

pub(crate) fn field(kind: FieldType, locator: Locator) -> FieldDecoder {
    FieldDecoder {
        kind,
        locator,
        labels: Vec::new(),
    }
}

pub(crate) fn json_field(kind: FieldType, pointer: &str) -> FieldDecoder {
    field(kind, Locator::Pointer(ptr(pointer)))
}

pub(crate) fn senml_field(kind: FieldType, name: &str) -> FieldDecoder {
    field(kind, Locator::Senml(name.into()))
}

pub(crate) fn topic(format: Format, fields: Vec<FieldDecoder>) -> TopicDecoder {
    TopicDecoder {
        format,
        timestamp: None,
        fields,
    }
}

/// Decodes one plain payload for one field of `kind`.
pub(crate) fn plain(kind: FieldType, payload: &[u8]) -> Result<Value, DecodeError> {
    let t = topic(Format::Plain, vec![field(kind, Locator::Whole)]);
    one(t.decode(payload, at(NOW)).unwrap())
}

/// Decodes `{"x": <json>}` for one field of `kind` at `/x`.
pub(crate) fn json(kind: FieldType, value: &str) -> Result<Value, DecodeError> {
    let t = topic(Format::Json, vec![json_field(kind, "/x")]);
    one(t
        .decode(format!(r#"{{"x":{value}}}"#).as_bytes(), at(NOW))
        .unwrap())
}

/// Decodes `{"x": <cbor>}` (the item's bytes) for one field of `kind` at `/x`.
pub(crate) fn cbor(kind: FieldType, item: &[u8]) -> Result<Value, DecodeError> {
    let t = topic(Format::Cbor, vec![json_field(kind, "/x")]);
    let mut payload = vec![0xa1, 0x61, b'x'];
    payload.extend_from_slice(item);
    one(t.decode(&payload, at(NOW)).unwrap())
}

/// The one result of a one-field decode.
pub(crate) fn one(d: Decoded) -> Result<Value, DecodeError> {
    match (d.values.as_slice(), d.errors.as_slice()) {
        ([(0, v, _)], []) => Ok(v.clone()),
        ([], [(0, e)]) => Err(e.clone()),
        other => panic!("expected one result, got {other:?}"),
    }
}

pub(crate) fn spec(kind: FieldType) -> FieldSpec {
    FieldSpec {
        writable: true,
        ..FieldSpec::new("f", kind)
    }
}

/// A JSON document as CBOR: numbers as integers where JSON has them whole, else as the
/// shortest float; with `senml`, the SenML labels of RFC 8428 Table 4 as integers, and
/// `vd`'s text as the bytes it stands for (base64url, padding ignored).
pub(crate) fn to_cbor(json: &serde_json::Value, senml: bool) -> Vec<u8> {
    let mut w = crate::cbor::Writer::default();
    write_cbor(&mut w, json, senml, None);
    w.finish()
}

fn write_cbor(
    w: &mut crate::cbor::Writer,
    json: &serde_json::Value,
    senml: bool,
    label: Option<&str>,
) {
    use serde_json::Value as J;
    match json {
        J::Null => w.null(),
        J::Bool(b) => w.bool(*b),
        J::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(v), _) => w.int(v.into()),
            (_, Some(v)) => w.int(v.into()),
            _ => w.float(n.as_f64().unwrap()),
        },
        J::String(s) if label == Some("vd") => w.bytes(&from_base64url(s)),
        J::String(s) => w.text(s),
        J::Array(items) => {
            w.array(items.len() as u64);
            for item in items {
                write_cbor(w, item, senml, None);
            }
        }
        J::Object(members) => {
            w.map(members.len() as u64);
            for (key, value) in members {
                const LABELS: [(&str, i128); 15] = [
                    ("bver", -1),
                    ("bn", -2),
                    ("bt", -3),
                    ("bu", -4),
                    ("bv", -5),
                    ("bs", -6),
                    ("n", 0),
                    ("u", 1),
                    ("v", 2),
                    ("vs", 3),
                    ("vb", 4),
                    ("s", 5),
                    ("t", 6),
                    ("ut", 7),
                    ("vd", 8),
                ];
                match LABELS.iter().find(|(l, _)| senml && l == key) {
                    Some((_, int)) => w.int(*int),
                    None => w.text(key),
                }
                write_cbor(w, value, senml, Some(key.as_str()).filter(|_| senml));
            }
        }
    }
}

fn from_base64url(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let sextets: Vec<u32> = s
        .bytes()
        .filter_map(|c| ALPHABET.iter().position(|a| *a == c))
        .map(|v| v as u32)
        .collect();
    let mut out = Vec::new();
    for chunk in sextets.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, v)| n | v << (18 - 6 * i));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}
