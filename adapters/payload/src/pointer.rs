//! Pointers: where a field's value is in a JSON or CBOR message, written as an RFC 6901
//! JSON pointer.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::decode::Format;
use crate::tree::{Key, Node};

/// An RFC 6901 JSON pointer (`/temperature`, `/state/battery`, `/sensors/0`, `/a~1b` for
/// the key `a/b`), checked and split into its reference tokens once, when the
/// configuration is read, so that a message is not spent on it.
///
/// In a CBOR message the same pointer is a path: a token names a map's text key equal to
/// it, or, when it is an integer in canonical decimal form (`0`, `7`, `-2`: no sign but
/// `-`, no leading zero), also the map's integer key of that value; in an array it is an
/// index, as in JSON. Of several members that match, the last in the map is taken.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Pointer {
    text: String,
    tokens: Vec<Token>,
}

/// One reference token, unescaped, with its value as an array index and as a CBOR integer
/// key where it is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) key: String,
    index: Option<usize>,
    pub(crate) int: Option<i128>,
}

impl Token {
    /// Whether this token names a member with `key`.
    fn names(&self, key: &Key) -> bool {
        match key {
            Key::Text(k) => *k == self.key,
            Key::Int(i) => self.int == Some(*i),
            Key::Other => false,
        }
    }
}

/// Why a text is not a JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    /// A non-empty pointer must begin with `/`.
    #[error("a JSON pointer is empty or begins with '/'")]
    NoLeadingSlash,
    /// `~` not followed by `0` or `1`.
    #[error("'~' at byte {0} of the JSON pointer is not followed by 0 or 1")]
    BadEscape(usize),
}

impl Pointer {
    /// Checks and splits a pointer (`""`, `/temperature`, `/a~1b/0`).
    pub fn parse(text: &str) -> Result<Self, PointerError> {
        let mut tokens = Vec::new();
        if !text.is_empty() {
            let Some(rest) = text.strip_prefix('/') else {
                return Err(PointerError::NoLeadingSlash);
            };
            let mut offset = 1;
            for raw in rest.split('/') {
                let mut key = String::with_capacity(raw.len());
                let mut chars = raw.char_indices();
                while let Some((i, c)) = chars.next() {
                    if c == '~' {
                        match chars.next() {
                            Some((_, '0')) => key.push('~'),
                            Some((_, '1')) => key.push('/'),
                            _ => return Err(PointerError::BadEscape(offset + i)),
                        }
                    } else {
                        key.push(c);
                    }
                }
                tokens.push(Token {
                    index: array_index(&key),
                    int: integer_key(&key),
                    key,
                });
                offset += raw.len() + 1;
            }
        }
        Ok(Pointer {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The pointer to the whole document.
    pub fn root() -> Self {
        Pointer {
            text: String::new(),
            tokens: Vec::new(),
        }
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this is the pointer to the whole document.
    pub fn is_root(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The reference tokens, unescaped.
    pub(crate) fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// The node the pointer refers to in a decoded message, if there is one.
    pub(crate) fn find<'a, 'de>(&self, doc: &'a Node<'de>) -> Option<&'a Node<'de>> {
        self.tokens.iter().try_fold(doc, |node, token| match node {
            // The last of duplicate keys, as serde_json keeps it.
            Node::Object(members) => members
                .iter()
                .rev()
                .find(|(key, _)| token.names(key))
                .map(|(_, value)| value),
            Node::Array(items) => token.index.and_then(|i| items.get(i)),
            _ => None,
        })
    }

    /// Where this pointer is in a message of `format`, for error messages.
    pub(crate) fn place(&self, format: Format) -> String {
        if self.is_root() {
            let doc = match format {
                Format::Cbor | Format::SenmlCbor => "CBOR",
                _ => "JSON",
            };
            format!("at the {doc} root")
        } else {
            format!("at {}", self.text)
        }
    }
}

/// A token's array index: RFC 6901 allows `0` or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = token.bytes().all(|b| b.is_ascii_digit());
    if !digits || token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

/// A token's value as a CBOR integer key: an array index, or `-` and one, within CBOR's
/// integers (−2^64 to 2^64 − 1); `-0` is not one.
fn integer_key(token: &str) -> Option<i128> {
    let magnitude = token.strip_prefix('-').unwrap_or(token);
    let digits = magnitude.bytes().all(|b| b.is_ascii_digit());
    if !digits || magnitude.is_empty() || (magnitude.len() > 1 && magnitude.starts_with('0')) {
        return None;
    }
    if token == "-0" {
        return None;
    }
    let v: i128 = token.parse().ok()?;
    (-(1i128 << 64)..(1i128 << 64)).contains(&v).then_some(v)
}

impl FromStr for Pointer {
    type Err = PointerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pointer::parse(s)
    }
}

impl TryFrom<String> for Pointer {
    type Error = PointerError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Pointer::parse(&s)
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::testing::ptr;
    use crate::tree::tests::show;

    #[test]
    fn pointers_follow_rfc_6901() {
        let doc: Node = serde_json::from_str(
            r#"{"foo":["bar","baz"],"":0,"a/b":1,"m~n":8," ":7,"x":{"y":{"z":3}},"01":9}"#,
        )
        .unwrap();
        let get = |p: &str| show(ptr(p).find(&doc));
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(get(""), some("{7}"));
        assert_eq!(get("/foo"), some("[2]"));
        assert_eq!(get("/foo/0"), some("\"bar\""));
        assert_eq!(get("/foo/1"), some("\"baz\""));
        assert_eq!(get("/"), some("0"));
        assert_eq!(get("/a~1b"), some("1"));
        assert_eq!(get("/m~0n"), some("8"));
        assert_eq!(get("/ "), some("7"));
        assert_eq!(get("/x/y/z"), some("3"));
        assert_eq!(get("/01"), some("9"));
        // Array indices: no leading zeros, no '-', no sign, in bounds.
        assert_eq!(get("/foo/01"), None);
        assert_eq!(get("/foo/-"), None);
        assert_eq!(get("/foo/+1"), None);
        assert_eq!(get("/foo/2"), None);
        assert_eq!(get("/foo/99999999999999999999999"), None);
        assert_eq!(get("/x/y/z/w"), None);
        assert_eq!(get("/missing"), None);
    }

    #[test]
    fn messages_keep_the_last_duplicate_and_unescape_keys() {
        let doc: Node =
            serde_json::from_str(r#"{"a":1,"a":2,"\u0062":"\u00e9\n","c":[null,true]}"#).unwrap();
        assert_eq!(show(ptr("/a").find(&doc)), Some("2".into()));
        assert_eq!(show(ptr("/b").find(&doc)), Some("\"é\\n\"".into()));
        assert_eq!(show(ptr("/c/0").find(&doc)), Some("null".into()));
        assert_eq!(show(ptr("/c/1").find(&doc)), Some("true".into()));
        // Borrowed where there is nothing to unescape.
        let doc: Node = serde_json::from_str(r#"{"k":"plain"}"#).unwrap();
        let Some(Node::String(Cow::Borrowed("plain"))) = ptr("/k").find(&doc) else {
            panic!("not borrowed: {doc:?}");
        };
    }

    #[test]
    fn pointer_escapes_decode_in_order() {
        // "~01" is "~1" unescaped once, not "/".
        let p = ptr("/~01");
        assert_eq!(p.tokens[0].key, "~1");
        assert_eq!(p.as_str(), "/~01");
        assert_eq!(p.to_string(), "/~01");
    }

    #[test]
    fn bad_pointers_are_refused() {
        assert_eq!(Pointer::parse("a"), Err(PointerError::NoLeadingSlash));
        assert_eq!(Pointer::parse("/a~"), Err(PointerError::BadEscape(2)));
        assert_eq!(Pointer::parse("/a/b~2"), Err(PointerError::BadEscape(4)));
        assert_eq!(Pointer::parse("/é~x"), Err(PointerError::BadEscape(3)));
        assert!(Pointer::parse("").unwrap().is_root());
        assert_eq!(Pointer::root(), ptr(""));
        let p: Pointer = serde_json::from_str(r#""/state""#).unwrap();
        assert_eq!(p, ptr("/state"));
        assert!(serde_json::from_str::<Pointer>(r#""state""#).is_err());
    }

    #[test]
    fn integer_tokens_are_cbor_keys() {
        let int = |t: &str| integer_key(t);
        assert_eq!(int("0"), Some(0));
        assert_eq!(int("7"), Some(7));
        assert_eq!(int("-2"), Some(-2));
        assert_eq!(int("18446744073709551615"), Some(u64::MAX.into()));
        assert_eq!(int("-18446744073709551616"), Some(-(1 << 64)));
        for not in [
            "",
            "-",
            "-0",
            "01",
            "-01",
            "+1",
            "1.0",
            "1e3",
            " 1",
            "a",
            "18446744073709551616",
            "-18446744073709551617",
            "999999999999999999999999999999999999999999",
        ] {
            assert_eq!(int(not), None, "{not:?}");
        }
        assert_eq!(ptr("/-2").tokens[0].int, Some(-2));
        assert_eq!(ptr("/-2").tokens[0].index, None);
    }

    #[test]
    fn cbor_paths_name_text_and_integer_keys() {
        // {"a": {1: "x", "1": "y"}, 2: [10, 20], -3: true, h'01': 5, 1.5: 6, "-0": 7}
        let payload = [
            0xa6, 0x61, b'a', 0xa2, 0x01, 0x61, b'x', 0x61, b'1', 0x61, b'y', 0x02, 0x82, 0x0a,
            0x14, 0x22, 0xf5, 0x41, 0x01, 0x05, 0xf9, 0x3e, 0x00, 0x06, 0x62, b'-', b'0', 0x07,
        ];
        let doc = crate::cbor::parse(&payload).unwrap();
        let get = |p: &str| show(ptr(p).find(&doc));
        let some = |s: &str| Some(s.to_owned());
        // The last of the members that match: the text key "1" after the integer 1.
        assert_eq!(get("/a/1"), some("\"y\""));
        assert_eq!(get("/2/1"), some("20"));
        assert_eq!(get("/2/0"), some("10"));
        assert_eq!(get("/-3"), some("true"));
        assert_eq!(get("/-0"), some("7"));
        assert_eq!(get("/3"), None);
        assert_eq!(get("/1.5"), None);
        assert_eq!(get("/2/-1"), None);
        assert_eq!(get(""), some("{6}"));
        let payload = [0xa2, 0x01, 0x61, b'x', 0x01, 0x61, b'z'];
        let doc = crate::cbor::parse(&payload).unwrap();
        assert_eq!(show(ptr("/1").find(&doc)), some("\"z\""));
    }

    #[test]
    fn places_name_the_document() {
        assert_eq!(ptr("").place(Format::Json), "at the JSON root");
        assert_eq!(ptr("").place(Format::Cbor), "at the CBOR root");
        assert_eq!(ptr("/a").place(Format::Cbor), "at /a");
    }
}
