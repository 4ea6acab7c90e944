//! CBOR (RFC 8949) on the wire: a payload read into a [`Node`] tree, and the few items a
//! command is written with.
//!
//! The reader takes the payload token by token (minicbor's decoder, which borrows strings
//! from the payload and never allocates for a length a header claims), and builds the
//! tree with a stack of its own, not by recursion, refusing nesting deeper than
//! [`MAX_DEPTH`]. Every node comes from at least one byte of the payload, so the tree is
//! bounded by the payload's size. A payload is one well-formed item with nothing after it.

use std::borrow::Cow;

use minicbor::data::Token;
use minicbor::Decoder;

use crate::tree::{Key, Node, Num};

/// The deepest nesting of arrays, maps and tags read (serde_json's bound for JSON).
pub(crate) const MAX_DEPTH: usize = 128;

/// Why a payload is not CBOR, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CborError {
    /// The offset of the item at fault.
    pub(crate) offset: usize,
    /// What is wrong there.
    pub(crate) reason: String,
}

impl CborError {
    fn at(offset: usize, reason: impl Into<String>) -> Self {
        CborError {
            offset,
            reason: reason.into(),
        }
    }
}

/// An item being read: a container or tag waiting for what it holds.
enum Frame<'de> {
    /// An array of `left` more items (`None`: indefinite, until a break).
    Array {
        left: Option<u64>,
        items: Vec<Node<'de>>,
    },
    /// A map of `left` more pairs; `key` is a key waiting for its value.
    Map {
        left: Option<u64>,
        members: Vec<(Key<'de>, Node<'de>)>,
        key: Option<Key<'de>>,
    },
    /// A tag waiting for its item.
    Tag(u64),
    /// An indefinite-length byte string: its chunks so far.
    Bytes(Vec<u8>),
    /// An indefinite-length text string: its chunks so far.
    Text(String),
}

/// Reads a payload that is one CBOR item.
pub(crate) fn parse(payload: &[u8]) -> Result<Node<'_>, CborError> {
    let mut d = Decoder::new(payload);
    let mut stack: Vec<Frame> = Vec::new();
    loop {
        let at = d.position();
        let token: Token = d.decode().map_err(|e| {
            let reason = if e.is_end_of_input() {
                "the payload ends inside an item".to_owned()
            } else {
                e.to_string()
            };
            CborError::at(at, reason)
        })?;
        let deeper = |stack: &Vec<Frame>| {
            if stack.len() >= MAX_DEPTH {
                Err(CborError::at(
                    at,
                    format!("nesting deeper than {MAX_DEPTH} levels"),
                ))
            } else {
                Ok(())
            }
        };
        // Inside an indefinite-length string: definite chunks of its kind, then a break.
        match (stack.last_mut(), token) {
            (Some(Frame::Bytes(buf)), Token::Bytes(chunk)) => {
                buf.extend_from_slice(chunk);
                continue;
            }
            (Some(Frame::Text(buf)), Token::String(chunk)) => {
                buf.push_str(chunk);
                continue;
            }
            (Some(Frame::Bytes(_) | Frame::Text(_)), Token::Break) => {}
            (Some(Frame::Bytes(_) | Frame::Text(_)), _) => {
                return Err(CborError::at(
                    at,
                    "an indefinite-length string holds something other than definite strings of its kind",
                ))
            }
            _ => {}
        }
        let node = match token {
            Token::Bool(b) => Node::Bool(b),
            Token::U8(v) => Node::Number(Num::Int(v.into())),
            Token::U16(v) => Node::Number(Num::Int(v.into())),
            Token::U32(v) => Node::Number(Num::Int(v.into())),
            Token::U64(v) => Node::Number(Num::Int(v.into())),
            Token::I8(v) => Node::Number(Num::Int(v.into())),
            Token::I16(v) => Node::Number(Num::Int(v.into())),
            Token::I32(v) => Node::Number(Num::Int(v.into())),
            Token::I64(v) => Node::Number(Num::Int(v.into())),
            Token::Int(v) => Node::Number(Num::Int(v.into())),
            // Exactly: preferred serialization (RFC 8949 §4.2.2) sends 84.375 as a half.
            Token::F16(v) => Node::Number(Num::Float(v.into())),
            Token::F32(v) => Node::Number(Num::Float(v.into())),
            Token::F64(v) => Node::Number(Num::Float(v)),
            Token::Bytes(b) => Node::Bytes(Cow::Borrowed(b)),
            Token::String(s) => Node::String(Cow::Borrowed(s)),
            Token::Null | Token::Undefined => Node::Null,
            Token::Simple(_) => Node::Other("a simple value"),
            Token::Array(0) => Node::Array(Vec::new()),
            Token::Map(0) => Node::Object(Vec::new()),
            Token::Array(n) => {
                deeper(&stack)?;
                stack.push(Frame::Array {
                    left: Some(n),
                    items: Vec::new(),
                });
                continue;
            }
            Token::Map(n) => {
                deeper(&stack)?;
                stack.push(Frame::Map {
                    left: Some(n),
                    members: Vec::new(),
                    key: None,
                });
                continue;
            }
            Token::BeginArray => {
                deeper(&stack)?;
                stack.push(Frame::Array {
                    left: None,
                    items: Vec::new(),
                });
                continue;
            }
            Token::BeginMap => {
                deeper(&stack)?;
                stack.push(Frame::Map {
                    left: None,
                    members: Vec::new(),
                    key: None,
                });
                continue;
            }
            Token::BeginBytes => {
                deeper(&stack)?;
                stack.push(Frame::Bytes(Vec::new()));
                continue;
            }
            Token::BeginString => {
                deeper(&stack)?;
                stack.push(Frame::Text(String::new()));
                continue;
            }
            Token::Tag(tag) => {
                deeper(&stack)?;
                stack.push(Frame::Tag(tag.as_u64()));
                continue;
            }
            Token::Break => match stack.pop() {
                Some(Frame::Bytes(buf)) => Node::Bytes(Cow::Owned(buf)),
                Some(Frame::Text(buf)) => Node::String(Cow::Owned(buf)),
                Some(Frame::Array { left: None, items }) => Node::Array(items),
                Some(Frame::Map {
                    left: None,
                    members,
                    key: None,
                }) => Node::Object(members),
                Some(Frame::Map {
                    left: None,
                    key: Some(_),
                    ..
                }) => return Err(CborError::at(at, "a map ends between a key and its value")),
                _ => {
                    return Err(CborError::at(
                        at,
                        "a break outside an indefinite-length item",
                    ))
                }
            },
        };
        // Hand the finished item up, finishing the containers and tags it completes.
        let mut node = node;
        loop {
            match stack.last_mut() {
                None => {
                    if d.position() != payload.len() {
                        return Err(CborError::at(
                            d.position(),
                            "bytes after the end of the CBOR item",
                        ));
                    }
                    return Ok(node);
                }
                Some(Frame::Tag(tag)) => {
                    let tag = *tag;
                    stack.pop();
                    node = tagged(tag, node);
                }
                Some(Frame::Array { left, items }) => {
                    items.push(node);
                    match left {
                        Some(n) if *n <= 1 => {
                            let items = std::mem::take(items);
                            stack.pop();
                            node = Node::Array(items);
                        }
                        Some(n) => {
                            *n -= 1;
                            break;
                        }
                        None => break,
                    }
                }
                Some(Frame::Map { left, members, key }) => match key.take() {
                    None => {
                        *key = Some(key_of(node));
                        break;
                    }
                    Some(k) => {
                        members.push((k, node));
                        match left {
                            Some(n) if *n <= 1 => {
                                let members = std::mem::take(members);
                                stack.pop();
                                node = Node::Object(members);
                            }
                            Some(n) => {
                                *n -= 1;
                                break;
                            }
                            None => break,
                        }
                    }
                },
                // A string's chunks are taken above; nothing else reaches it.
                Some(Frame::Bytes(_) | Frame::Text(_)) => {
                    return Err(CborError::at(at, "an item inside a string"));
                }
            }
        }
    }
}

/// A map key as pointers name it.
fn key_of(node: Node<'_>) -> Key<'_> {
    match node {
        Node::String(s) => Key::Text(s),
        Node::Number(Num::Int(i)) => Key::Int(i),
        _ => Key::Other,
    }
}

/// A tagged item as it is read: tags 0 and 1 (date/time), 2 and 3 (bignums) and 4
/// (decimal fractions) are understood; any other tag (55799, self-described CBOR; 32, a
/// URI...) is read as its item.
fn tagged(tag: u64, node: Node<'_>) -> Node<'_> {
    match (tag, node) {
        (0, Node::String(s)) => Node::DateTime(s),
        (0, _) => Node::Other("a date/time (tag 0) that is not text"),
        (1, Node::Number(n)) => Node::Epoch(n),
        (1, _) => Node::Other("an epoch time (tag 1) that is not a number"),
        (2, Node::Bytes(b)) => Node::Number(bignum(&b, false)),
        (3, Node::Bytes(b)) => Node::Number(bignum(&b, true)),
        (2 | 3, _) => Node::Other("a bignum (tag 2 or 3) that is not a byte string"),
        (4, Node::Array(items)) => match items.as_slice() {
            [Node::Number(Num::Int(e)), Node::Number(m)] => Node::Number(decimal(*e, *m)),
            _ => Node::Other("a malformed decimal fraction (tag 4)"),
        },
        (4, _) => Node::Other("a malformed decimal fraction (tag 4)"),
        (_, node) => node,
    }
}

/// A bignum's value: exact within an i128, else the nearest float (infinite beyond f64).
fn bignum(bytes: &[u8], negative: bool) -> Num {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let digits = &bytes[start..];
    if digits.len() <= 16 {
        let n = digits.iter().fold(0u128, |n, b| n << 8 | u128::from(*b));
        if let Ok(n) = i128::try_from(n) {
            // -1 - n: at least i128::MIN for n up to i128::MAX.
            return Num::Int(if negative { -1 - n } else { n });
        }
    }
    let n = digits.iter().fold(0f64, |n, b| n * 256.0 + f64::from(*b));
    Num::Float(if negative { -1.0 - n } else { n })
}

/// A decimal fraction's value, mantissa × 10^exponent: exact where it is a whole number
/// within an i128, else the nearest float.
fn decimal(exponent: i128, mantissa: Num) -> Num {
    match mantissa {
        Num::Int(m) => {
            if let Ok(e) = u32::try_from(exponent) {
                if let Some(v) = 10i128.checked_pow(e).and_then(|p| p.checked_mul(m)) {
                    return Num::Int(v);
                }
            }
            // Rust reads "me" + "e" correctly rounded: 0 and infinity beyond f64.
            Num::Float(format!("{m}e{exponent}").parse().unwrap_or(f64::NAN))
        }
        // Not an integer (RFC 8949 wants one), but a bignum beyond an i128 reads as this.
        Num::Float(m) => {
            // "1.5e0" and the exponent added: read back correctly rounded.
            let text = format!("{m:e}");
            let (digits, own) = text.split_once('e').unwrap_or((&text, "0"));
            let own: i128 = own.parse().unwrap_or(0);
            Num::Float(
                format!("{digits}e{}", own.saturating_add(exponent))
                    .parse()
                    .unwrap_or(f64::NAN),
            )
        }
    }
}

/// A CBOR item being written: a command's few items, in preferred serialization (RFC 8949
/// §4.2.2: the shortest argument, the shortest float that holds the value exactly).
#[derive(Default)]
pub(crate) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// The bytes written.
    pub(crate) fn finish(self) -> Vec<u8> {
        self.out
    }

    fn head(&mut self, major: u8, arg: u64) {
        let major = major << 5;
        if arg < 24 {
            self.out.push(major | arg as u8);
        } else if let Ok(a) = u8::try_from(arg) {
            self.out.extend_from_slice(&[major | 24, a]);
        } else if let Ok(a) = u16::try_from(arg) {
            self.out.push(major | 25);
            self.out.extend_from_slice(&a.to_be_bytes());
        } else if let Ok(a) = u32::try_from(arg) {
            self.out.push(major | 26);
            self.out.extend_from_slice(&a.to_be_bytes());
        } else {
            self.out.push(major | 27);
            self.out.extend_from_slice(&arg.to_be_bytes());
        }
    }

    /// An integer; CBOR's range is −2^64 to 2^64 − 1, and `v` is an i64 or a path token.
    pub(crate) fn int(&mut self, v: i128) {
        if v >= 0 {
            self.head(0, u64::try_from(v).unwrap_or(u64::MAX));
        } else {
            self.head(1, u64::try_from(-1 - v).unwrap_or(u64::MAX));
        }
    }

    /// A text string.
    pub(crate) fn text(&mut self, s: &str) {
        self.head(3, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }

    /// A map of `pairs` pairs (which follow).
    pub(crate) fn map(&mut self, pairs: u64) {
        self.head(5, pairs);
    }

    /// A tag (its item follows).
    pub(crate) fn tag(&mut self, tag: u64) {
        self.head(6, tag);
    }

    /// `true` or `false`.
    pub(crate) fn bool(&mut self, b: bool) {
        self.out.push(if b { 0xf5 } else { 0xf4 });
    }

    /// An array of `items` items (which follow).
    #[cfg(test)]
    pub(crate) fn array(&mut self, items: u64) {
        self.head(4, items);
    }

    /// A byte string.
    #[cfg(test)]
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.head(2, b.len() as u64);
        self.out.extend_from_slice(b);
    }

    /// `null`.
    #[cfg(test)]
    pub(crate) fn null(&mut self) {
        self.out.push(0xf6);
    }

    /// A float, in half, single or double precision: the shortest that holds it exactly.
    pub(crate) fn float(&mut self, v: f64) {
        let h = half::f16::from_f64(v);
        if h.to_f64() == v || (v.is_nan() && h.is_nan()) {
            self.out.push(0xf9);
            self.out.extend_from_slice(&h.to_bits().to_be_bytes());
        } else if f64::from(v as f32) == v {
            self.out.push(0xfa);
            self.out.extend_from_slice(&(v as f32).to_be_bytes());
        } else {
            self.out.push(0xfb);
            self.out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tests::show;

    fn read(payload: &[u8]) -> Result<String, CborError> {
        parse(payload).map(|n| show(Some(&n)).unwrap_or_default())
    }

    fn num(payload: &[u8]) -> Num {
        match parse(payload) {
            Ok(Node::Number(n)) => n,
            other => panic!("{payload:02x?}: {other:?}"),
        }
    }

    fn refused(payload: &[u8]) -> CborError {
        match parse(payload) {
            Err(e) => e,
            Ok(n) => panic!("{payload:02x?} read as {n:?}"),
        }
    }

    #[test]
    fn scalars() {
        assert_eq!(num(&[0x00]), Num::Int(0));
        assert_eq!(num(&[0x17]), Num::Int(23));
        assert_eq!(num(&[0x18, 0x18]), Num::Int(24));
        assert_eq!(num(&[0x19, 0x01, 0x00]), Num::Int(256));
        assert_eq!(
            num(&[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Num::Int(u64::MAX.into())
        );
        assert_eq!(num(&[0x20]), Num::Int(-1));
        assert_eq!(num(&[0x38, 0x63]), Num::Int(-100));
        // -2^64, beyond an i64.
        assert_eq!(
            num(&[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Num::Int(-(1 << 64))
        );
        assert_eq!(
            num(&[0x3b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Num::Int(i64::MIN.into())
        );
        assert_eq!(read(&[0xf4]).unwrap(), "false");
        assert_eq!(read(&[0xf5]).unwrap(), "true");
        assert_eq!(read(&[0xf6]).unwrap(), "null");
        assert_eq!(read(&[0xf7]).unwrap(), "null");
        assert_eq!(read(&[0xf0]).unwrap(), "a simple value");
        assert_eq!(read(&[0xf8, 0xff]).unwrap(), "a simple value");
        assert_eq!(read(&[0x63, b'a', 0xc3, 0xa9]).unwrap(), "\"aé\"");
        assert_eq!(read(&[0x42, 0x01, 0x02]).unwrap(), "h[01, 02]");
        // Definite strings are borrowed from the payload.
        let payload = [0x62, b'h', b'i'];
        assert!(matches!(
            parse(&payload),
            Ok(Node::String(Cow::Borrowed("hi")))
        ));
    }

    #[test]
    fn floats_of_every_width() {
        // RFC 8949 Appendix A.
        assert_eq!(num(&[0xf9, 0x00, 0x00]), Num::Float(0.0));
        assert_eq!(num(&[0xf9, 0x3c, 0x00]), Num::Float(1.0));
        assert_eq!(num(&[0xf9, 0x3e, 0x00]), Num::Float(1.5));
        assert_eq!(num(&[0xf9, 0x7b, 0xff]), Num::Float(65504.0));
        assert_eq!(num(&[0xf9, 0x00, 0x01]), Num::Float(5.960464477539063e-8));
        assert_eq!(num(&[0xf9, 0xc4, 0x00]), Num::Float(-4.0));
        assert_eq!(num(&[0xfa, 0x47, 0xc3, 0x50, 0x00]), Num::Float(100000.0));
        assert_eq!(
            num(&[0xfa, 0x7f, 0x7f, 0xff, 0xff]),
            Num::Float(3.4028234663852886e38)
        );
        assert_eq!(
            num(&[0xfb, 0x3f, 0xf1, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a]),
            Num::Float(1.1)
        );
        assert_eq!(
            num(&[0xfb, 0x7e, 0x37, 0xe4, 0x3c, 0x88, 0x00, 0x75, 0x9c]),
            Num::Float(1.0e300)
        );
        // Exactly, as the values they are: preferred serialization sends 84.375 as a
        // half; a float32 21.1 is 21.100000381469727.
        assert_eq!(num(&[0xf9, 0x55, 0x46]), Num::Float(84.375));
        assert_eq!(num(&[0xf9, 0x2e, 0x66]), Num::Float(0.0999755859375));
        let f = 21.1f32.to_be_bytes();
        assert_eq!(
            num(&[0xfa, f[0], f[1], f[2], f[3]]),
            Num::Float(21.100000381469727)
        );
        let f = 16_777_218f32.to_be_bytes();
        assert_eq!(
            num(&[0xfa, f[0], f[1], f[2], f[3]]),
            Num::Float(16_777_218.0)
        );
        // Not finite: read, and refused by the fields that need a finite number.
        for (payload, want) in [
            (&[0xf9, 0x7c, 0x00][..], f64::INFINITY),
            (&[0xf9, 0xfc, 0x00], f64::NEG_INFINITY),
            (&[0xfa, 0x7f, 0x80, 0x00, 0x00], f64::INFINITY),
            (&[0xfb, 0xff, 0xf0, 0, 0, 0, 0, 0, 0], f64::NEG_INFINITY),
        ] {
            assert_eq!(num(payload), Num::Float(want));
        }
        for payload in [
            &[0xf9, 0x7e, 0x00][..],
            &[0xfa, 0x7f, 0xc0, 0x00, 0x00],
            &[0xfb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
        ] {
            assert!(matches!(num(payload), Num::Float(v) if v.is_nan()));
        }
    }

    #[test]
    fn containers() {
        assert_eq!(read(&[0x80]).unwrap(), "[0]");
        assert_eq!(read(&[0x83, 0x01, 0x02, 0x03]).unwrap(), "[3]");
        assert_eq!(read(&[0xa0]).unwrap(), "{0}");
        assert_eq!(read(&[0xa2, 0x01, 0x02, 0x61, b'a', 0x80]).unwrap(), "{2}");
        // Indefinite lengths.
        assert_eq!(read(&[0x9f, 0x01, 0x9f, 0xff, 0xff]).unwrap(), "[2]");
        assert_eq!(read(&[0xbf, 0x61, b'a', 0x01, 0xff]).unwrap(), "{1}");
        assert_eq!(read(&[0x9f, 0xff]).unwrap(), "[0]");
        assert_eq!(
            read(&[0x7f, 0x62, b'a', b'b', 0x60, 0x61, b'c', 0xff]).unwrap(),
            "\"abc\""
        );
        assert_eq!(
            read(&[0x5f, 0x41, 0x01, 0x42, 0x02, 0x03, 0xff]).unwrap(),
            "h[01, 02, 03]"
        );
        assert_eq!(read(&[0x7f, 0xff]).unwrap(), "\"\"");
        // Nesting to the bound.
        let mut deep = vec![0x81; MAX_DEPTH - 1];
        deep.push(0x80);
        assert_eq!(read(&deep).unwrap(), "[1]");
    }

    #[test]
    fn tags() {
        // RFC 8949 Appendix A.
        let dt = b"\xc0\x74\x32\x30\x31\x33\x2d\x30\x33\x2d\x32\x31\x54\x32\x30\x3a\x30\x34\x3a\x30\x30\x5a";
        assert_eq!(read(dt).unwrap(), "0(\"2013-03-21T20:04:00Z\")");
        assert_eq!(
            read(&[0xc1, 0x1a, 0x51, 0x4b, 0x67, 0xb0]).unwrap(),
            "1(1363896240)"
        );
        assert_eq!(
            read(&[0xc1, 0xfb, 0x41, 0xd4, 0x52, 0xd9, 0xec, 0x20, 0x00, 0x00]).unwrap(),
            "1(1363896240.5)"
        );
        assert_eq!(
            read(&[0xc0, 0x01]).unwrap(),
            "a date/time (tag 0) that is not text"
        );
        assert_eq!(
            read(&[0xc1, 0x61, b'x']).unwrap(),
            "an epoch time (tag 1) that is not a number"
        );
        // Bignums: 2^64 and -1 - 2^64; beyond i128 as floats.
        assert_eq!(
            num(&[0xc2, 0x49, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]),
            Num::Int(1 << 64)
        );
        assert_eq!(
            num(&[0xc3, 0x49, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]),
            Num::Int(-1 - (1 << 64))
        );
        assert_eq!(num(&[0xc2, 0x43, 0x00, 0x00, 0x05]), Num::Int(5));
        assert_eq!(num(&[0xc2, 0x40]), Num::Int(0));
        assert_eq!(num(&[0xc3, 0x40]), Num::Int(-1));
        let mut big = vec![0xc2, 0x51, 0x01];
        big.extend([0; 16]);
        assert_eq!(num(&big), Num::Float(2f64.powi(128)));
        let mut huge = vec![0xc2, 0x59, 0x01, 0x00];
        huge.extend([0xff; 256]);
        assert_eq!(num(&huge), Num::Float(f64::INFINITY));
        assert_eq!(
            read(&[0xc2, 0x01]).unwrap(),
            "a bignum (tag 2 or 3) that is not a byte string"
        );
        // Decimal fractions: 273.15, 1.5e3, and beyond i128.
        assert_eq!(
            num(&[0xc4, 0x82, 0x21, 0x19, 0x6a, 0xb3]),
            Num::Float(273.15)
        );
        assert_eq!(num(&[0xc4, 0x82, 0x02, 0x0f]), Num::Int(1500));
        assert_eq!(num(&[0xc4, 0x82, 0x18, 0x64, 0x01]), Num::Float(1e100));
        assert_eq!(
            num(&[0xc4, 0x82, 0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Num::Float(f64::INFINITY)
        );
        assert_eq!(
            num(&[0xc4, 0x82, 0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Num::Float(0.0)
        );
        assert_eq!(num(&[0xc4, 0x82, 0x20, 0xf9, 0x3e, 0x00]), Num::Float(0.15));
        assert_eq!(
            read(&[0xc4, 0x82, 0xf9, 0x3e, 0x00, 0x01]).unwrap(),
            "a malformed decimal fraction (tag 4)"
        );
        assert_eq!(
            read(&[0xc4, 0x01]).unwrap(),
            "a malformed decimal fraction (tag 4)"
        );
        // Other tags are read as their item: self-described CBOR, a URI.
        assert_eq!(read(&[0xd9, 0xd9, 0xf7, 0xa1, 0x01, 0x02]).unwrap(), "{1}");
        assert_eq!(read(&[0xd8, 0x20, 0x61, b'u']).unwrap(), "\"u\"");
        assert_eq!(
            read(&[0xdb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).unwrap(),
            "1"
        );
    }

    #[test]
    fn malformed_items_are_refused() {
        for (payload, offset, says) in [
            // Truncated.
            (&[0x19, 0x01][..], 0, "ends inside"),
            (&[0x62, b'a'], 0, "ends inside"),
            (&[0x82, 0x01], 2, "ends inside"),
            (&[0xa1, 0x01], 2, "ends inside"),
            (&[0x9f, 0x01], 2, "ends inside"),
            (&[0x7f, 0x61, b'a'], 3, "ends inside"),
            (&[0xc1], 1, "ends inside"),
            (&[0xfb, 0x00], 0, "ends inside"),
            // Lengths far beyond the payload: refused, not allocated.
            (
                &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                0,
                "ends inside",
            ),
            (&[0x5a, 0xff, 0xff, 0xff, 0xff, 0x00], 0, "ends inside"),
            (
                &[0x7b, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00],
                0,
                "ends inside",
            ),
            (
                &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                10,
                "ends inside",
            ),
            (
                &[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                9,
                "ends inside",
            ),
            // Invalid UTF-8.
            (&[0x62, 0xc3, 0x28], 0, "utf-8"),
            (&[0x61, 0xff], 0, "utf-8"),
            // Reserved additional information; a lone break.
            (&[0x1c], 0, "unknown"),
            (&[0x5c], 0, "unknown"),
            (&[0xff], 0, "a break outside"),
            (&[0x81, 0xff], 1, "a break outside"),
            (&[0xbf, 0x01, 0xff], 2, "between a key and its value"),
            // Indefinite strings of the wrong chunks.
            (&[0x7f, 0x41, 0x00, 0xff], 1, "indefinite-length string"),
            (&[0x5f, 0x5f, 0xff, 0xff], 1, "indefinite-length string"),
            (&[0x7f, 0x01, 0xff], 1, "indefinite-length string"),
            // Indefinite length where only a definite one is allowed.
            (&[0x1f], 0, "unknown"),
            // Two items.
            (&[0x01, 0x02], 1, "bytes after"),
            (&[0x80, 0x00], 1, "bytes after"),
        ] {
            let e = refused(payload);
            assert_eq!(e.offset, offset, "{payload:02x?}: {e:?}");
            assert!(e.reason.contains(says), "{payload:02x?}: {e:?}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        for byte in [0x81, 0x9f, 0xa1, 0xbf, 0xc6] {
            let deep = vec![byte; 1 << 20];
            let e = refused(&deep);
            assert!(
                e.reason.contains("nesting deeper than 128"),
                "{byte:#x}: {e:?}"
            );
            assert_eq!(e.offset, MAX_DEPTH);
        }
        // Map keys nest too.
        let mut deep = vec![0xa1; 200];
        deep.push(0x00);
        assert!(refused(&deep).reason.contains("nesting"));
        let mut ok = vec![0xc6; MAX_DEPTH - 1];
        ok.push(0x01);
        assert_eq!(read(&ok).unwrap(), "1");
    }

    #[test]
    fn wide_payloads_take_no_more_than_they_hold() {
        // A million-element array of small ints: one node each, no quadratic work.
        let mut wide = vec![0x9a, 0x00, 0x0f, 0x42, 0x40];
        wide.extend(std::iter::repeat_n(0x01, 1_000_000));
        assert_eq!(read(&wide).unwrap(), "[1000000]");
        let mut indefinite = vec![0x5f];
        for _ in 0..100_000 {
            indefinite.extend([0x41, 0x00]);
        }
        indefinite.push(0xff);
        assert!(matches!(parse(&indefinite), Ok(Node::Bytes(b)) if b.len() == 100_000));
    }

    fn written(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
        let mut w = Writer::default();
        f(&mut w);
        w.finish()
    }

    #[test]
    fn items_are_written_in_preferred_serialization() {
        assert_eq!(written(|w| w.int(0)), [0x00]);
        assert_eq!(written(|w| w.int(23)), [0x17]);
        assert_eq!(written(|w| w.int(24)), [0x18, 0x18]);
        assert_eq!(written(|w| w.int(1000)), [0x19, 0x03, 0xe8]);
        assert_eq!(
            written(|w| w.int(1_000_000)),
            [0x1a, 0x00, 0x0f, 0x42, 0x40]
        );
        assert_eq!(
            written(|w| w.int(i64::MAX.into())),
            [0x1b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(written(|w| w.int(-1)), [0x20]);
        assert_eq!(written(|w| w.int(-1000)), [0x39, 0x03, 0xe7]);
        assert_eq!(
            written(|w| w.int(i64::MIN.into())),
            [0x3b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(written(|w| w.text("IETF")), [0x64, b'I', b'E', b'T', b'F']);
        assert_eq!(written(|w| w.bool(true)), [0xf5]);
        assert_eq!(written(|w| w.bool(false)), [0xf4]);
        assert_eq!(written(|w| w.map(1)), [0xa1]);
        assert_eq!(written(|w| w.tag(1)), [0xc1]);
        assert_eq!(written(|w| w.float(0.0)), [0xf9, 0x00, 0x00]);
        assert_eq!(written(|w| w.float(-0.0)), [0xf9, 0x80, 0x00]);
        assert_eq!(written(|w| w.float(1.5)), [0xf9, 0x3e, 0x00]);
        assert_eq!(written(|w| w.float(65504.0)), [0xf9, 0x7b, 0xff]);
        assert_eq!(
            written(|w| w.float(100000.0)),
            [0xfa, 0x47, 0xc3, 0x50, 0x00]
        );
        assert_eq!(
            written(|w| w.float(1.1)),
            [0xfb, 0x3f, 0xf1, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a]
        );
        for v in [
            21.5,
            -4.1,
            1e300,
            5.960464477539063e-8,
            3.4028234663852886e38,
            1e-310,
        ] {
            let bytes = written(|w| w.float(v));
            assert_eq!(num(&bytes), Num::Float(v), "{v}");
        }
    }
}
