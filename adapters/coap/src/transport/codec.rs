//! The glue to coap-lite: decoding a datagram into a checked [`Message`], encoding
//! requests and empty messages, the Block option, and reading a [`Response`] out of a
//! packet. coap-lite parses the framing; the checks RFC 7252 asks for that it does not
//! make (version, reserved classes, the shape of an empty message, critical options) are
//! made here.

use coap_lite::option_value::{OptionValueU16, OptionValueU32};
use coap_lite::{CoapOption, MessageClass, MessageType, Packet};
use std::time::Duration;

use super::error::TransportError;
use super::types::{Request, Response};

/// The largest datagram we encode (a UDP payload must fit in 65,507 bytes over IPv4).
/// Requests stay far below: a body larger than the block size goes block-wise.
pub(crate) const MAX_DATAGRAM: usize = 64_000;

/// A token: 0–8 bytes, kept inline so that it can be a cheap map key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Token {
    len: u8,
    bytes: [u8; 8],
}

impl Token {
    /// `None` if longer than 8 bytes.
    pub fn new(b: &[u8]) -> Option<Token> {
        if b.len() > 8 {
            return None;
        }
        let mut bytes = [0u8; 8];
        bytes[..b.len()].copy_from_slice(b);
        Some(Token {
            len: b.len() as u8,
            bytes,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.as_slice() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A decoded and checked message.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub mtype: MessageType,
    pub mid: u16,
    pub token: Token,
    /// The raw code byte: class in the top 3 bits, detail in the low 5.
    pub code: u8,
    pub packet: Packet,
}

impl Message {
    pub fn is_empty(&self) -> bool {
        self.code == 0
    }
    pub fn is_request(&self) -> bool {
        self.code != 0 && self.code >> 5 == 0
    }
    pub fn is_response(&self) -> bool {
        matches!(self.code >> 5, 2 | 4 | 5)
    }
}

/// Why a datagram was dropped. `con_mid` is set when the header was readable and said
/// Confirmable: such a message is rejected with a Reset (RFC 7252 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError {
    pub what: String,
    pub con_mid: Option<u16>,
}

/// Options this transport understands in a response. An unknown critical (odd-numbered)
/// option makes a response unprocessable (RFC 7252 §5.4.1).
const KNOWN_OPTIONS: &[u16] = &[
    1, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 17, 20, 23, 27, 28, 35, 39, 60, 258,
];

pub(crate) fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    let err = |what: String, con_mid: Option<u16>| DecodeError { what, con_mid };
    if buf.len() < 4 {
        return Err(err(format!("truncated header ({} bytes)", buf.len()), None));
    }
    let version = buf[0] >> 6;
    if version != 1 {
        // §3: messages with unknown version numbers MUST be silently ignored; no Reset.
        return Err(err(format!("unknown version {version}"), None));
    }
    let mid = u16::from_be_bytes([buf[2], buf[3]]);
    let con_mid = ((buf[0] >> 4) & 0b11 == 0).then_some(mid);
    let tkl = buf[0] & 0x0f;
    if tkl > 8 {
        return Err(err(format!("token length {tkl}"), con_mid));
    }
    let code = buf[1];
    if code == 0 && buf.len() != 4 {
        // §4.1: an empty message has no token, options or payload.
        return Err(err(
            format!(
                "empty message with {} bytes after the header",
                buf.len() - 4
            ),
            con_mid,
        ));
    }
    if matches!(code >> 5, 1 | 6 | 7) {
        return Err(err(format!("reserved code class {}", code >> 5), con_mid));
    }
    let packet = Packet::from_bytes(buf).map_err(|e| err(e.to_string(), con_mid))?;
    let token = Token::new(packet.get_token())
        .ok_or_else(|| err("token longer than 8 bytes".into(), con_mid))?;
    if matches!(code >> 5, 2 | 4 | 5) {
        if let Some((n, _)) = packet
            .options()
            .find(|(n, _)| *n % 2 == 1 && !KNOWN_OPTIONS.contains(n))
        {
            return Err(err(format!("unrecognised critical option {n}"), con_mid));
        }
    }
    Ok(Message {
        mtype: packet.header.get_type(),
        mid,
        token,
        code,
        packet,
    })
}

/// An empty ACK or RST for `mid`.
pub(crate) fn empty(mtype: MessageType, mid: u16) -> Vec<u8> {
    let b0 = 0x40
        | match mtype {
            MessageType::Confirmable => 0,
            MessageType::NonConfirmable => 1,
            MessageType::Acknowledgement => 2,
            MessageType::Reset => 3,
        } << 4;
    let m = mid.to_be_bytes();
    vec![b0, 0, m[0], m[1]]
}

/// The Block1/Block2 option value (RFC 7959 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockOpt {
    pub num: u32,
    pub more: bool,
    pub szx: u8,
}

impl BlockOpt {
    /// The largest NUM that fits the option's 20 bits.
    pub const MAX_NUM: u32 = (1 << 20) - 1;

    pub fn size(&self) -> usize {
        16usize << self.szx
    }

    pub fn offset(&self) -> usize {
        self.num as usize * self.size()
    }

    pub fn encode(&self) -> Vec<u8> {
        let v = (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx & 7);
        let b = v.to_be_bytes();
        let skip = b.iter().take_while(|x| **x == 0).count();
        b[skip..].to_vec()
    }

    pub fn decode(v: &[u8]) -> Result<BlockOpt, String> {
        if v.len() > 3 {
            return Err(format!("block option of {} bytes", v.len()));
        }
        let n = v.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        let szx = (n & 7) as u8;
        if szx == 7 {
            // BERT (RFC 8323) exists on reliable transports only.
            return Err("block size exponent 7 on UDP".into());
        }
        Ok(BlockOpt {
            num: n >> 4,
            more: n & 8 != 0,
            szx,
        })
    }

    pub fn get(packet: &Packet, which: CoapOption) -> Result<Option<BlockOpt>, TransportError> {
        packet
            .get_first_option(which)
            .map(|v| BlockOpt::decode(v).map_err(TransportError::Malformed))
            .transpose()
    }
}

/// Extra options of one transmission of a request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extra {
    pub observe: Option<u32>,
    pub block1: Option<BlockOpt>,
    pub block2: Option<BlockOpt>,
    pub size1: Option<u32>,
}

/// A request packet without message id or token (the exchange sets those).
pub(crate) fn request_packet(req: &Request, payload: &[u8], extra: Extra) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(if req.confirmable {
        MessageType::Confirmable
    } else {
        MessageType::NonConfirmable
    });
    p.header.code = MessageClass::from(req.method.code());
    if let Some(v) = extra.observe {
        p.add_option_as(CoapOption::Observe, OptionValueU32(v));
    }
    for seg in &req.path {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    if let Some(cf) = req.content_format {
        p.add_option_as(CoapOption::ContentFormat, OptionValueU16(cf));
    }
    for q in &req.query {
        p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    if let Some(a) = req.accept {
        p.add_option_as(CoapOption::Accept, OptionValueU16(a));
    }
    if let Some(b) = extra.block2 {
        p.add_option(CoapOption::Block2, b.encode());
    }
    if let Some(b) = extra.block1 {
        p.add_option(CoapOption::Block1, b.encode());
    }
    if let Some(s) = extra.size1 {
        p.add_option_as(CoapOption::Size1, OptionValueU32(s));
    }
    p.payload = payload.to_vec();
    p
}

/// Encodes a packet; the only failure is a message over [`MAX_DATAGRAM`].
pub(crate) fn encode(p: &Packet) -> Result<Vec<u8>, TransportError> {
    p.to_bytes_with_limit(MAX_DATAGRAM)
        .map_err(|e| TransportError::Invalid(format!("cannot encode the request: {e}")))
}

fn uint(p: &Packet, o: CoapOption, max_len: usize) -> Result<Option<u32>, TransportError> {
    match p.get_first_option(o) {
        None => Ok(None),
        Some(v) if v.len() > max_len => Err(TransportError::Malformed(format!(
            "option {} has {} bytes",
            u16::from(o),
            v.len()
        ))),
        Some(v) => Ok(Some(v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b)))),
    }
}

/// The Size2 option (the total size of a block-wise body), if present.
pub(crate) fn size2(p: &Packet) -> Result<Option<u32>, TransportError> {
    uint(p, CoapOption::Size2, 4)
}

/// The Size1 option, if present (4.13: the largest body the server takes).
pub(crate) fn size1(p: &Packet) -> Result<Option<u32>, TransportError> {
    uint(p, CoapOption::Size1, 4)
}

/// The Observe option value, if present.
pub(crate) fn observe(p: &Packet) -> Result<Option<u32>, TransportError> {
    uint(p, CoapOption::Observe, 3)
}

/// The ETag option, if present.
pub(crate) fn etag(p: &Packet) -> Option<Vec<u8>> {
    p.get_first_option(CoapOption::ETag).cloned()
}

/// Reads a response's code and options (payload included as it is: one block).
pub(crate) fn response(p: &Packet) -> Result<Response, TransportError> {
    let code = u8::from(p.header.code);
    let content_format = uint(p, CoapOption::ContentFormat, 2)?.map(|v| v as u16);
    let max_age = uint(p, CoapOption::MaxAge, 4)?.map(|s| Duration::from_secs(u64::from(s)));
    let location_path = p
        .get_option(CoapOption::LocationPath)
        .map(|l| {
            l.iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
        .unwrap_or_default();
    Ok(Response {
        code: (code >> 5, code & 0x1f),
        content_format,
        max_age,
        etag: etag(p),
        location_path,
        payload: p.payload.clone(),
        observe: observe(p)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::types::Method;

    #[test]
    fn block_option_round_trip() {
        for (num, more, szx) in [
            (0, false, 0),
            (0, true, 6),
            (1, true, 2),
            (4095, false, 6),
            (BlockOpt::MAX_NUM, true, 5),
        ] {
            let b = BlockOpt { num, more, szx };
            assert_eq!(BlockOpt::decode(&b.encode()).unwrap(), b);
        }
        // RFC 7959 §2.2: NUM 0, M 0, SZX 0 is the empty value.
        assert!(BlockOpt {
            num: 0,
            more: false,
            szx: 0
        }
        .encode()
        .is_empty());
        assert_eq!(
            BlockOpt {
                num: 0,
                more: false,
                szx: 6
            }
            .size(),
            1024
        );
        assert_eq!(
            BlockOpt {
                num: 3,
                more: false,
                szx: 2
            }
            .offset(),
            192
        );
        assert!(BlockOpt::decode(&[0x0f]).is_err(), "szx 7");
        assert!(BlockOpt::decode(&[1, 2, 3, 4]).is_err());
    }

    #[test]
    fn decode_rejects_what_rfc_7252_calls_format_errors() {
        let cases: &[(&[u8], &str, Option<u16>)] = &[
            (&[0x40, 0x01], "truncated", None),
            (&[0x80, 0x01, 0, 1], "version 2", None),
            (&[0x00, 0x01, 0, 1], "version 0", None),
            (
                &[0x49, 0x45, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                "token length 9",
                Some(7),
            ),
            (&[0x5f, 0x45, 0, 7], "token length 15", None),
            (&[0x40, 0x45, 0, 9, 0xf0], "option delta 15", Some(9)),
            (&[0x40, 0x45, 0, 9, 0x1f], "option length 15", Some(9)),
            (
                &[0x40, 0x45, 0, 9, 0xd1],
                "truncated extended delta",
                Some(9),
            ),
            (
                &[0x40, 0x45, 0, 9, 0x13, 1],
                "option value beyond the end",
                Some(9),
            ),
            (
                &[0x60, 0x00, 0, 3, 0xff],
                "empty ACK with a payload marker",
                None,
            ),
            (
                &[0x44, 0x00, 0, 3, 1, 2, 3, 4],
                "empty CON with a token",
                Some(3),
            ),
            (&[0x40, 0x20, 0, 3], "reserved class 1", Some(3)),
            (&[0x50, 0xe0, 0, 3], "reserved class 7", None),
            // Option 13 (delta 13, extended byte 0): odd and unknown, in a response.
            (
                &[0x40, 0x45, 0, 9, 0xd0, 0x00],
                "unknown critical option",
                Some(9),
            ),
        ];
        for (bytes, what, con_mid) in cases {
            let e = decode(bytes).expect_err(what);
            assert_eq!(e.con_mid, *con_mid, "{what}: {e:?}");
        }
    }

    #[test]
    fn decode_accepts_the_usual_messages() {
        let ack = decode(&empty(MessageType::Acknowledgement, 0x1234)).unwrap();
        assert!(ack.is_empty());
        assert_eq!(ack.mid, 0x1234);
        assert_eq!(ack.mtype, MessageType::Acknowledgement);

        let mut req = Request::get("/a/b");
        req.query.push("x=1".into());
        req.accept = Some(50);
        let mut p = request_packet(
            &req,
            b"",
            Extra {
                observe: Some(0),
                ..Default::default()
            },
        );
        p.set_token(vec![1, 2, 3, 4]);
        p.header.message_id = 77;
        let m = decode(&encode(&p).unwrap()).unwrap();
        assert!(m.is_request());
        assert_eq!(m.token.as_slice(), &[1, 2, 3, 4]);
        assert_eq!(m.mid, 77);
        assert_eq!(observe(&m.packet).unwrap(), Some(0));
        let segs: Vec<_> = m
            .packet
            .get_option(CoapOption::UriPath)
            .unwrap()
            .iter()
            .cloned()
            .collect();
        assert_eq!(segs, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(m.packet.header.code, MessageClass::from(Method::Get.code()));
    }

    #[test]
    fn response_reads_code_and_options() {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Acknowledgement);
        p.header.code = MessageClass::from(0x45);
        p.add_option_as(CoapOption::ContentFormat, OptionValueU16(50));
        p.add_option_as(CoapOption::MaxAge, OptionValueU32(30));
        p.add_option_as(CoapOption::Observe, OptionValueU32(0x00ab_cdef));
        p.add_option(CoapOption::ETag, vec![9, 9]);
        p.payload = b"{}".to_vec();
        let m = decode(&encode(&p).unwrap()).unwrap();
        let r = response(&m.packet).unwrap();
        assert_eq!(r.code, (2, 5));
        assert_eq!(r.code_string(), "2.05");
        assert_eq!(r.content_format, Some(50));
        assert_eq!(r.max_age, Some(Duration::from_secs(30)));
        assert_eq!(r.observe, Some(0x00ab_cdef));
        assert_eq!(r.etag, Some(vec![9, 9]));
        assert_eq!(r.payload, b"{}");
        // A Content-Format of 3 bytes is not a uint16.
        let mut bad = p.clone();
        bad.clear_all_options();
        bad.add_option(CoapOption::ContentFormat, vec![1, 2, 3]);
        assert!(response(&bad).is_err());
    }

    /// Longer run of the same: `cargo test -p fieldgate-coap -- --ignored decode_fuzz`.
    #[test]
    #[ignore]
    fn decode_fuzz_long() {
        for i in 0..2_000_000usize {
            let mut b = vec![0u8; i % 48];
            rand::fill(&mut b[..]);
            if let Some(x) = b.first_mut() {
                *x = (*x & 0x3f) | 0x40;
            }
            // Bias towards option headers with extended deltas/lengths.
            for x in b.iter_mut().skip(4).step_by(3) {
                if rand::random_bool(0.3) {
                    *x |= 0xd0;
                }
            }
            let _ = decode(&b);
        }
    }

    #[test]
    fn decode_never_panics_on_random_bytes() {
        for len in 0..64 {
            for _ in 0..200 {
                let mut b = vec![0u8; len];
                rand::fill(&mut b[..]);
                if len > 0 && rand::random_bool(0.7) {
                    b[0] = (b[0] & 0x3f) | 0x40; // version 1 mostly
                }
                let _ = decode(&b);
            }
        }
    }
}
