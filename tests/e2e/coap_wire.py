"""A small CoAP (RFC 7252) datagram codec for the test harness: encode and decode messages,
name their types, codes and options, read Block1/Block2 and Observe, and build malformed
datagrams on purpose.

Independent of aiocoap (the test process never needs an asyncio loop to use it) and of the
gateway's own codec, so it can judge what the gateway sends. Used by coap_peers.py (the
relay's datagram record, readiness pings, the synchronous `request()` helper) and by
aiocoap_server.py (its wire-level record).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Iterable

CON, NON, ACK, RST = 0, 1, 2, 3
TYPE_NAMES = {CON: "CON", NON: "NON", ACK: "ACK", RST: "RST"}
TYPES = {v: k for k, v in TYPE_NAMES.items()}

METHODS = {"GET": 1, "POST": 2, "PUT": 3, "DELETE": 4, "FETCH": 5, "PATCH": 6, "iPATCH": 7}
METHOD_NAMES = {v: k for k, v in METHODS.items()}

# option numbers (RFC 7252 §5.10, RFC 7641, RFC 7959, RFC 8613, RFC 7967)
IF_MATCH, URI_HOST, ETAG, IF_NONE_MATCH, OBSERVE, URI_PORT, LOCATION_PATH = 1, 3, 4, 5, 6, 7, 8
URI_PATH, CONTENT_FORMAT, MAX_AGE, URI_QUERY, ACCEPT, LOCATION_QUERY = 11, 12, 14, 15, 17, 20
BLOCK2, BLOCK1, SIZE2, PROXY_URI, PROXY_SCHEME, SIZE1, NO_RESPONSE = 23, 27, 28, 35, 39, 60, 258
OPTION_NAMES = {
    IF_MATCH: "If-Match", URI_HOST: "Uri-Host", ETAG: "ETag", IF_NONE_MATCH: "If-None-Match",
    OBSERVE: "Observe", URI_PORT: "Uri-Port", LOCATION_PATH: "Location-Path", 9: "OSCORE",
    URI_PATH: "Uri-Path", CONTENT_FORMAT: "Content-Format", MAX_AGE: "Max-Age", URI_QUERY: "Uri-Query",
    ACCEPT: "Accept", LOCATION_QUERY: "Location-Query", BLOCK2: "Block2", BLOCK1: "Block1",
    SIZE2: "Size2", PROXY_URI: "Proxy-Uri", PROXY_SCHEME: "Proxy-Scheme", SIZE1: "Size1",
    NO_RESPONSE: "No-Response",
}
UINT_OPTIONS = {OBSERVE, URI_PORT, CONTENT_FORMAT, MAX_AGE, ACCEPT, BLOCK2, BLOCK1, SIZE2, SIZE1, NO_RESPONSE}
STRING_OPTIONS = {URI_HOST, LOCATION_PATH, URI_PATH, URI_QUERY, LOCATION_QUERY, PROXY_URI, PROXY_SCHEME}

# Content-Formats the CoAP adapter meets (IANA CoAP Content-Formats registry)
CF_TEXT, CF_LINK_FORMAT, CF_OCTETS, CF_JSON, CF_CBOR = 0, 40, 42, 50, 60
CF_SENML_JSON, CF_SENSML_JSON, CF_SENML_CBOR, CF_SENSML_CBOR = 110, 111, 112, 113

# RFC 7252 §4.8 transmission parameters
ACK_TIMEOUT = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4


def code_str(code: int) -> str:
    """0x45 -> "2.05"; 0 -> "0.00" (empty); requests by name: 1 -> "GET"."""
    if code in METHOD_NAMES:
        return METHOD_NAMES[code]
    return f"{code >> 5}.{code & 0x1F:02d}"


def parse_code(code: str | int) -> int:
    """"2.05" / "GET" / 0x45 -> the code byte."""
    if isinstance(code, int):
        return code
    if code in METHODS:
        return METHODS[code]
    cls, _, detail = code.partition(".")
    c, d = int(cls), int(detail)
    if not (0 <= c <= 7 and 0 <= d <= 31):
        raise ValueError(f"bad CoAP code {code!r}")
    return (c << 5) | d


def encode_uint(v: int) -> bytes:
    """Minimal big-endian unsigned integer (0 is the empty string)."""
    if v < 0:
        raise ValueError("negative uint option")
    return v.to_bytes((v.bit_length() + 7) // 8, "big") if v else b""


def decode_uint(b: bytes) -> int:
    return int.from_bytes(b, "big") if b else 0


@dataclass(frozen=True)
class Block:
    """A Block1/Block2 option value (RFC 7959 §2.2)."""
    num: int
    more: bool
    szx: int

    @property
    def size(self) -> int:
        return 16 << self.szx

    @property
    def offset(self) -> int:
        return self.num * self.size

    def encode(self) -> bytes:
        return encode_uint((self.num << 4) | (8 if self.more else 0) | self.szx)

    @classmethod
    def decode(cls, b: bytes) -> "Block":
        v = decode_uint(b)
        return cls(v >> 4, bool(v & 8), v & 7)

    def __str__(self) -> str:
        return f"{self.num}/{'M' if self.more else '_'}/{self.size}"


@dataclass
class Message:
    mtype: int = CON
    code: int = 0
    mid: int = 0
    token: bytes = b""
    options: list[tuple[int, bytes]] = field(default_factory=list)  # in order, repeated ones repeated
    payload: bytes = b""

    # -- options

    def opt(self, number: int) -> bytes | None:
        for n, v in self.options:
            if n == number:
                return v
        return None

    def opts(self, number: int) -> list[bytes]:
        return [v for n, v in self.options if n == number]

    def uint(self, number: int) -> int | None:
        v = self.opt(number)
        return None if v is None else decode_uint(v)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.mtype]

    @property
    def code_name(self) -> str:
        return code_str(self.code)

    @property
    def is_request(self) -> bool:
        return 1 <= self.code <= 31

    @property
    def is_response(self) -> bool:
        return 64 <= self.code <= 191

    @property
    def is_empty(self) -> bool:
        return self.code == 0

    @property
    def path(self) -> str:
        return "/" + "/".join(v.decode(errors="replace") for v in self.opts(URI_PATH))

    @property
    def query(self) -> list[str]:
        return [v.decode(errors="replace") for v in self.opts(URI_QUERY)]

    @property
    def observe(self) -> int | None:
        return self.uint(OBSERVE)

    @property
    def content_format(self) -> int | None:
        return self.uint(CONTENT_FORMAT)

    @property
    def max_age(self) -> int | None:
        return self.uint(MAX_AGE)

    @property
    def block1(self) -> Block | None:
        v = self.opt(BLOCK1)
        return None if v is None else Block.decode(v)

    @property
    def block2(self) -> Block | None:
        v = self.opt(BLOCK2)
        return None if v is None else Block.decode(v)

    def options_dict(self) -> dict[str, object]:
        """Readable options: names -> value (uint, str, Block as "num/M/size", or hex);
        a repeated option gives a list."""
        out: dict[str, object] = {}
        for n, v in self.options:
            name = OPTION_NAMES.get(n, str(n))
            if n in (BLOCK1, BLOCK2):
                val: object = str(Block.decode(v))
            elif n in UINT_OPTIONS:
                val = decode_uint(v)
            elif n in STRING_OPTIONS:
                val = v.decode(errors="replace")
            else:
                val = v.hex()
            if name in out:
                prev = out[name]
                out[name] = (prev if isinstance(prev, list) else [prev]) + [val]
            else:
                out[name] = val
        return out

    def summary(self) -> str:
        parts = [self.type_name, self.code_name, f"mid={self.mid}", f"tok={self.token.hex() or '-'}"]
        od = self.options_dict()
        if od:
            parts.append(" ".join(f"{k}:{v}" for k, v in od.items()))
        if self.payload:
            parts.append(f"{len(self.payload)}B")
        return " ".join(parts)

    # -- wire

    def encode(self) -> bytes:
        return encode(self)


def encode(m: Message) -> bytes:
    if len(m.token) > 8:
        raise ValueError("token longer than 8 bytes (use raw_* helpers for malformed datagrams)")
    out = bytearray([0x40 | (m.mtype << 4) | len(m.token), m.code])
    out += m.mid.to_bytes(2, "big")
    out += m.token
    last = 0
    for number, value in sorted(m.options, key=lambda o: o[0]):  # stable: repeated keep order
        delta, length = number - last, len(value)
        last = number
        dn, dext = _nibble(delta)
        ln, lext = _nibble(length)
        out.append((dn << 4) | ln)
        out += dext + lext
        out += value
    if m.payload:
        out.append(0xFF)
        out += m.payload
    return bytes(out)


def _nibble(v: int) -> tuple[int, bytes]:
    if v < 13:
        return v, b""
    if v < 269:
        return 13, bytes([v - 13])
    if v < 65805:
        return 14, (v - 269).to_bytes(2, "big")
    raise ValueError("option delta/length too large")


class DecodeError(ValueError):
    pass


def decode(data: bytes) -> Message:
    """Parse one CoAP datagram; raises DecodeError on anything RFC 7252 calls a format error."""
    if len(data) < 4:
        raise DecodeError(f"datagram of {len(data)} bytes is shorter than the 4-byte header")
    ver, mtype, tkl = data[0] >> 6, (data[0] >> 4) & 3, data[0] & 0x0F
    if ver != 1:
        raise DecodeError(f"version {ver}")
    if tkl > 8:
        raise DecodeError(f"token length {tkl}")
    code = data[1]
    mid = int.from_bytes(data[2:4], "big")
    if len(data) < 4 + tkl:
        raise DecodeError("truncated token")
    token = bytes(data[4:4 + tkl])
    i = 4 + tkl
    options: list[tuple[int, bytes]] = []
    number = 0
    payload = b""
    while i < len(data):
        b = data[i]
        if b == 0xFF:
            payload = bytes(data[i + 1:])
            if not payload:
                raise DecodeError("payload marker followed by no payload")
            break
        i += 1
        delta, length = b >> 4, b & 0x0F
        delta, i = _ext(data, delta, i, "delta")
        length, i = _ext(data, length, i, "length")
        if i + length > len(data):
            raise DecodeError("option value past the end of the datagram")
        number += delta
        options.append((number, bytes(data[i:i + length])))
        i += length
    if code == 0 and (tkl or len(data) > 4):
        raise DecodeError("empty message with token, options or payload")
    return Message(mtype, code, mid, token, options, payload)


def _ext(data: bytes, nib: int, i: int, what: str) -> tuple[int, int]:
    if nib < 13:
        return nib, i
    if nib == 13:
        if i + 1 > len(data):
            raise DecodeError(f"truncated extended option {what}")
        return data[i] + 13, i + 1
    if nib == 14:
        if i + 2 > len(data):
            raise DecodeError(f"truncated extended option {what}")
        return int.from_bytes(data[i:i + 2], "big") + 269, i + 2
    raise DecodeError(f"option {what} nibble 15")


def try_decode(data: bytes) -> Message | None:
    try:
        return decode(data)
    except DecodeError:
        return None


def peek_header(data: bytes) -> tuple[int | None, int | None, int | None, bytes]:
    """(type, code, mid, token) from as much of the header as is there: for datagrams that
    do not decode (the relay still records what it can)."""
    if len(data) < 4:
        return None, None, None, b""
    tkl = data[0] & 0x0F
    return (data[0] >> 4) & 3, data[1], int.from_bytes(data[2:4], "big"), bytes(data[4:4 + min(tkl, 8)])


# --------------------------------------------------------------------------------------
# building messages


def request(method: str | int, path: str = "/", payload: bytes | str = b"", *, mtype: int = CON,
            mid: int | None = None, token: bytes | None = None, content_format: int | None = None,
            observe: int | None = None, block1: Block | None = None, block2: Block | None = None,
            accept: int | None = None, query: Iterable[str] = (), extra: Iterable[tuple[int, bytes]] = ()) -> Message:
    opts: list[tuple[int, bytes]] = []
    if observe is not None:
        opts.append((OBSERVE, encode_uint(observe)))
    for seg in [s for s in path.split("/") if s]:
        opts.append((URI_PATH, seg.encode()))
    if content_format is not None:
        opts.append((CONTENT_FORMAT, encode_uint(content_format)))
    for q in query:
        opts.append((URI_QUERY, q.encode()))
    if accept is not None:
        opts.append((ACCEPT, encode_uint(accept)))
    if block2 is not None:
        opts.append((BLOCK2, block2.encode()))
    if block1 is not None:
        opts.append((BLOCK1, block1.encode()))
    opts.extend(extra)
    return Message(mtype, parse_code(method), next_mid() if mid is None else mid,
                   os.urandom(4) if token is None else token, opts,
                   payload.encode() if isinstance(payload, str) else payload)


def random_mid() -> int:
    return int.from_bytes(os.urandom(2), "big")


_MIDS = itertools.count(random_mid())


def next_mid() -> int:
    """Message ids for this process's requests: sequential from a random start, so that
    a server never takes a new request for a duplicate of an earlier one (random ids
    collide within EXCHANGE_LIFETIME after a few hundred requests)."""
    return next(_MIDS) & 0xFFFF


def empty(mtype: int, mid: int) -> bytes:
    """An empty message (ACK, RST, or CON = CoAP ping) for `mid`."""
    return Message(mtype, 0, mid).encode()


def rst(mid: int) -> bytes:
    return empty(RST, mid)


def empty_ack(mid: int) -> bytes:
    return empty(ACK, mid)


def ping(mid: int | None = None) -> bytes:
    return empty(CON, next_mid() if mid is None else mid)


# malformed datagrams (RFC 7252 §4.2/§4.3: a CON that cannot be parsed is rejected with RST,
# a NON or ACK silently ignored)

def raw_truncated_header(n: int = 3) -> bytes:
    """A datagram shorter than the 4-byte header (n bytes: 0..3)."""
    return bytes([0x60, 0x45, 0x12])[:n]


def raw_bad_version(mtype: int = CON, mid: int = 0x1234) -> bytes:
    return bytes([0x80 | (mtype << 4), 0x45]) + mid.to_bytes(2, "big")


def raw_token_length(tkl: int, mtype: int = ACK, code: int = 0x45, mid: int = 0x1234, payload: bytes = b"x") -> bytes:
    """A header announcing token length `tkl` (9..15 are reserved, a format error), followed by
    `tkl` token bytes so that only the length is wrong."""
    return bytes([0x40 | (mtype << 4) | (tkl & 0x0F), code]) + mid.to_bytes(2, "big") + os.urandom(tkl) + \
        (b"\xff" + payload if payload else b"")


def raw_option_delta_15(mtype: int = ACK, code: int = 0x45, mid: int = 0x1234, token: bytes = b"\x01") -> bytes:
    """An option byte with delta nibble 15 (reserved; only 0xFF as a whole is the payload marker)."""
    return bytes([0x40 | (mtype << 4) | len(token), code]) + mid.to_bytes(2, "big") + token + bytes([0xF1, 0x00])


def raw_option_length_15(mtype: int = ACK, code: int = 0x45, mid: int = 0x1234, token: bytes = b"\x01") -> bytes:
    return bytes([0x40 | (mtype << 4) | len(token), code]) + mid.to_bytes(2, "big") + token + bytes([0x1F, 0x00])


def raw_option_overrun(mtype: int = ACK, code: int = 0x45, mid: int = 0x1234, token: bytes = b"\x01") -> bytes:
    """An option whose length runs past the end of the datagram."""
    return bytes([0x40 | (mtype << 4) | len(token), code]) + mid.to_bytes(2, "big") + token + bytes([0xB8, 0x61])


def raw_empty_payload_marker(mtype: int = ACK, code: int = 0x45, mid: int = 0x1234, token: bytes = b"\x01") -> bytes:
    """A payload marker with no payload after it (a format error)."""
    return bytes([0x40 | (mtype << 4) | len(token), code]) + mid.to_bytes(2, "big") + token + b"\xff"


# --------------------------------------------------------------------------------------
# a synchronous one-socket client (readiness checks and simple test assertions; not a
# CoAP implementation to test the gateway against)


class CoapTimeout(AssertionError):
    pass


def exchange(port: int, msg: Message | bytes, host: str = "127.0.0.1", timeout: float = 5.0,
             retransmit: float = 0.5, sock: socket.socket | None = None) -> Message:
    """Send `msg` (CON retransmitted every `retransmit` s on loopback) and return the response
    matching it: for a request, the piggybacked or separate response with its token (a
    separate CON response is ACKed); for an empty CON (ping), the RST."""
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if isinstance(msg, bytes):
            msg = decode(msg)
        data = msg.encode()
        deadline = time.monotonic() + timeout
        next_send = 0.0
        acked = False
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise CoapTimeout(f"no answer from 127.0.0.1:{port} within {timeout}s to {msg.summary()}")
            if not acked and now >= next_send and (msg.mtype == CON or next_send == 0.0):
                s.sendto(data, (host, port))
                next_send = now + retransmit
            s.settimeout(max(0.01, min(deadline, next_send if not acked else deadline) - now))
            try:
                raw, _ = s.recvfrom(65536)
            except (socket.timeout, ConnectionRefusedError):
                continue
            r = try_decode(raw)
            if r is None:
                continue
            if msg.is_empty:
                if r.mtype == RST and r.mid == msg.mid:
                    return r
                continue
            if r.mtype in (ACK, RST) and r.mid == msg.mid:
                if r.mtype == RST:
                    return r
                if r.is_empty:
                    acked = True  # separate response follows
                    continue
                if r.token == msg.token:
                    return r
            elif r.mtype in (CON, NON) and r.token == msg.token and r.is_response:
                if r.mtype == CON:
                    s.sendto(empty_ack(r.mid), (host, port))
                return r
            elif r.mtype == CON:
                s.sendto(rst(r.mid), (host, port))
    finally:
        if own:
            s.close()


def coap_ping(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """Whether a CoAP endpoint answers an empty CON with RST (RFC 7252 §4.3 'CoAP ping')."""
    try:
        exchange(port, ping(), host, timeout, retransmit=0.2)
        return True
    except (CoapTimeout, OSError):
        return False


def request_sync(port: int, method: str, path: str, payload: bytes | str = b"", *, host: str = "127.0.0.1",
                 timeout: float = 5.0, szx: int | None = None, **kw) -> Message:
    """One request (CON), following Block2 to the end if the response is block-wise: the
    returned Message carries the whole body. `szx` asks for a block size up front."""
    block2 = Block(0, False, szx) if szx is not None else None
    # one socket for all blocks: servers key block-wise state by the client's address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        first = exchange(port, request(method, path, payload, block2=block2, **kw), host, timeout, sock=sock)
        b = first.block2
        if b is None or not b.more:
            return first
        body = bytearray(first.payload)
        while b is not None and b.more:
            r = exchange(port, request(method, path, payload, block2=Block(b.num + 1, False, b.szx), **kw), host,
                         timeout, sock=sock)
            if not r.is_response or r.code >> 5 != 2:
                return r
            body += r.payload
            b = r.block2
    first.payload = bytes(body)
    return first
