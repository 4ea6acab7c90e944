//! Messages as trees: the one shape a JSON or CBOR message is read into, whatever its
//! format, and the numbers in it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Number;

/// A number as a message carries it: a whole number exactly (CBOR's integers reach −2^64
/// and 2^64 − 1, beyond an i64), or a float, finite or not (CBOR floats can be NaN or
/// infinite; JSON's cannot).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    /// A whole number, written as one (`21`, CBOR major types 0 and 1, bignums).
    Int(i128),
    /// A float (`21.0`, `2.1e1`, CBOR half, single and double precision).
    Float(f64),
}

impl Num {
    /// The number as an i64, if it is a whole number in range.
    pub(crate) fn as_i64(self) -> Option<i64> {
        match self {
            Num::Int(v) => i64::try_from(v).ok(),
            Num::Float(_) => None,
        }
    }

    /// The number as an f64, rounded to the nearest for large whole numbers.
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Num::Int(v) => v as f64,
            Num::Float(v) => v,
        }
    }
}

impl From<&Number> for Num {
    fn from(n: &Number) -> Self {
        if let Some(v) = n.as_u64() {
            Num::Int(v.into())
        } else if let Some(v) = n.as_i64() {
            Num::Int(v.into())
        } else {
            Num::Float(n.as_f64().unwrap_or(f64::NAN))
        }
    }
}

/// As JSON writes it: whole numbers in digits, finite floats in their shortest form
/// (`21.5`, `21.0`, `1e+300`), the others as `NaN`, `inf` and `-inf`.
impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Num::Int(v) => write!(f, "{v}"),
            Num::Float(v) => match Number::from_f64(v) {
                Some(n) => write!(f, "{n}"),
                None => write!(f, "{v}"),
            },
        }
    }
}

/// A message as the decoder reads it: strings and keys borrowed from the payload where
/// they can be, and objects (maps) as lists of members (a message's objects are small: a
/// search of a short list is cheaper than building a map, and most messages are read once
/// and dropped).
///
/// A JSON message has no `Bytes`, `DateTime`, `Epoch` or `Other`, and text keys only.
/// Its nesting is bounded by serde_json (128 levels), a CBOR message's by its reader: the
/// tree is dropped recursively.
#[derive(Debug)]
pub(crate) enum Node<'de> {
    /// JSON `null`; CBOR `null` and `undefined`. Counts as absent.
    Null,
    Bool(bool),
    Number(Num),
    String(Cow<'de, str>),
    /// A CBOR byte string.
    Bytes(Cow<'de, [u8]>),
    Array(Vec<Node<'de>>),
    /// A JSON object or a CBOR map, in message order.
    Object(Vec<(Key<'de>, Node<'de>)>),
    /// CBOR tag 0: a date/time as RFC 3339 text.
    DateTime(Cow<'de, str>),
    /// CBOR tag 1: a date/time as Unix seconds.
    Epoch(Num),
    /// What no field reads (a CBOR simple value, a malformed tag), described.
    Other(&'static str),
}

/// The key of an object's member.
#[derive(Debug)]
pub(crate) enum Key<'de> {
    /// Text: every JSON key, and CBOR text keys.
    Text(Cow<'de, str>),
    /// A CBOR integer key.
    Int(i128),
    /// A CBOR key of another type (bytes, a float, an array...), which no pointer names.
    Other,
}

impl Node<'_> {
    /// What kind of value this is, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Number(_) => "a number",
            Node::String(_) => "a string",
            Node::Bytes(_) => "a byte string",
            Node::Array(_) => "an array",
            Node::Object(_) => "an object",
            Node::DateTime(_) => "a date/time",
            Node::Epoch(_) => "an epoch time",
            Node::Other(what) => what,
        }
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node<'de>, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node<'de>, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node<'de>, E> {
                Ok(Node::Number(Num::Int(v.into())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node<'de>, E> {
                Ok(Node::Number(Num::Int(v.into())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node<'de>, E> {
                // serde_json refuses numbers beyond f64 itself; this is for other sources.
                if v.is_finite() {
                    Ok(Node::Number(Num::Float(v)))
                } else {
                    Err(E::custom("a number is not finite"))
                }
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Node<'de>, E> {
                Ok(Node::String(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node<'de>, E> {
                Ok(Node::String(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Node<'de>, E> {
                Ok(Node::String(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(Text(key)) = map.next_key()? {
                    members.push((Key::Text(key), map.next_value()?));
                }
                Ok(Node::Object(members))
            }
        }
        // serde_json bounds the nesting (128 levels) before a visitor recurses.
        d.deserialize_any(NodeVisitor)
    }
}

/// A string borrowed from the payload where it has no escapes.
pub(crate) struct Text<'de>(pub(crate) Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A found node as text, for comparisons.
    pub(crate) fn show(node: Option<&Node>) -> Option<String> {
        node.map(|n| match n {
            Node::Null => "null".to_owned(),
            Node::Bool(b) => b.to_string(),
            Node::Number(n) => n.to_string(),
            Node::String(s) => format!("{s:?}"),
            Node::Bytes(b) => format!("h{b:02x?}"),
            Node::Array(items) => format!("[{}]", items.len()),
            Node::Object(members) => format!("{{{}}}", members.len()),
            Node::DateTime(s) => format!("0({s:?})"),
            Node::Epoch(n) => format!("1({n})"),
            Node::Other(what) => what.to_string(),
        })
    }

    #[test]
    fn numbers_show_as_json_writes_them() {
        assert_eq!(Num::Int(21).to_string(), "21");
        assert_eq!(Num::Int(-(1 << 64)).to_string(), "-18446744073709551616");
        assert_eq!(Num::Float(21.5).to_string(), "21.5");
        assert_eq!(Num::Float(21.0).to_string(), "21.0");
        assert_eq!(Num::Float(1e300).to_string(), "1e+300");
        assert_eq!(Num::Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Num::Float(f64::NEG_INFINITY).to_string(), "-inf");
        assert_eq!(Num::Int(i128::from(u64::MAX)).as_i64(), None);
        assert_eq!(Num::Int(-5).as_i64(), Some(-5));
        assert_eq!(Num::Float(5.0).as_i64(), None);
        let n: Number = "18446744073709551615".parse().unwrap();
        assert_eq!(Num::from(&n), Num::Int(u64::MAX.into()));
        let n: Number = "-3".parse().unwrap();
        assert_eq!(Num::from(&n), Num::Int(-3));
        let n: Number = "2.5".parse().unwrap();
        assert_eq!(Num::from(&n), Num::Float(2.5));
    }
}
