"""An aiocoap server for the CoAP end-to-end tests, run as a subprocess by coap_peers.py.

    python aiocoap_server.py --host 127.0.0.1 --port PORT [--log-level INFO]

Resources (every response of a resource carries Max-Age when one is configured for it):

  /counter        GET: text/plain (ct 0) integer, incremented before each GET answers (the
                  first GET reads "1"). `set counter N` sets it.
  /sensor         GET, observable: JSON (ct 50) {"temperature": 21.5, "humidity": 40.0}.
                  `set` changes the value silently; `notify` sends it to the observers.
  /setpoint       GET, PUT, observable: text/plain number (initially "20"). PUT: a number in
                  [lo, hi] (default [0, 100]) -> 2.04 Changed and a notification; outside
                  the range or not a number -> 4.00 Bad Request with a diagnostic payload; a
                  Content-Format other than text/plain -> 4.15. Every PUT is in the request
                  record (accepted or not).
  /command        POST: any payload, recorded; 2.04 Changed "ok".
  /large          GET: 10240 bytes of JSON (ct 50) by default (`configure large size=N`
                  regenerates it, `set large "<text>"` replaces it): block-wise (Block2),
                  aiocoap slices it at the client's SZX or 1024.
  /blob           GET, PUT: any bytes, initially 3000 bytes of text; PUT (Block1 reassembled
                  by aiocoap) replaces it and keeps its Content-Format (2.04).
  /senml          GET, observable: a SenML JSON pack (ct 110).
  /senml-cbor     GET, observable: the same pack as SenML CBOR (ct 112, integer labels of
                  RFC 8428 §6).
  /cbor           GET, observable: a CBOR map (ct 60) {"temperature": 21.5, "humidity": 40,
                  "ok": true}.
  /codes/<c.dd>   any method: answers that response code with a text/plain diagnostic
                  payload "<c.dd> <name>" (CODES below); 5.03 carries Max-Age 5, 4.13 Size1
                  64 (`configure codes/5.03 max_age=N`).
  /slow           GET, PUT, POST: answers 2.05/2.04 "slow" after `delay` s (default 2):
                  aiocoap sends an empty ACK after 0.1 s, then the response as its own CON.
  /hang           GET, PUT, POST: empty ACK after 0.1 s, then never a response.
  /void           never answered: its requests are dropped before aiocoap sees them.
  /.well-known/core  aiocoap's WKCResource (link-format, ct 40) listing all of the above
                  with ct, rt, title and obs.

Once it listens it prints `{"ready": true, "port": N}` on stdout. Then it serves a side
channel on stdin/stdout, one JSON object per line, answered in order with
{"ok": true, ...} or {"ok": false, "error": "..."}:

  {"op": "ping"}
  {"op": "get", "resource": "sensor"}                   -> {"value": ...}
  {"op": "set", "resource": "sensor", "value": {...}}   (no notification)
  {"op": "notify", "resource": "sensor", "mtype": "NON"|"CON"|null, "max_age": N|null}
                                                        -> {"observers": n}
  {"op": "end", "resource": "sensor", "code": "4.04", "payload": ""}
                  a final notification with an error code, without Observe: ends them all
  {"op": "observers", "resource": "sensor"}             -> {"observers": n}
  {"op": "configure", "resource": "sensor", "settings": {"max_age": 5, "mtype": "NON"}}
                  max_age (int|null), mtype (type of notifications), content_format (the
                  Content-Format announced instead of the real one), range [lo, hi]
                  (setpoint), delay (slow), size (large)
  {"op": "silence", "path": "*"|"sensor"|null, "on": true}
                  drop every incoming datagram ("*") or the requests for a path; null and
                  on=false lifts all silences
  {"op": "forget"}   shut the CoAP context down and bind the same port again: every
                     observation, message id, deduplication entry and block-wise state is gone
  {"op": "requests", "since": 0, "path": "/setpoint"|null}
                  -> {"requests": [{seq, t, method, path, query, payload, payload_b64,
                     content_format, observe, block1, block2, accept, mtype, mid, token,
                     remote}]}   as the resources saw them (block-wise requests reassembled)
  {"op": "datagrams", "since": 0}
                  -> {"datagrams": [{seq, t, dir ("in"/"out"), type, code, mid, token,
                     options, payload_len, remote, dropped}]}   every message in and out
  {"op": "clear"}    empty both records (sequence numbers go on)
  {"op": "marks"}    -> {"requests": next seq, "datagrams": next seq}

Times are time.monotonic(), the same clock as the test process (CLOCK_MONOTONIC). The
server exits when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiocoap  # noqa: E402
import aiocoap.resource as resource  # noqa: E402
import cbor2  # noqa: E402
from aiocoap import Code, Message  # noqa: E402
from aiocoap.messagemanager import MessageManager  # noqa: E402
from aiocoap.numbers.types import CON, NON  # noqa: E402

import coap_wire as cw  # noqa: E402

log = logging.getLogger("aiocoap-server")

CODES = {
    "2.01": "Created", "2.02": "Deleted", "2.04": "Changed",
    "4.00": "Bad Request", "4.01": "Unauthorized", "4.02": "Bad Option", "4.03": "Forbidden",
    "4.04": "Not Found", "4.05": "Method Not Allowed", "4.06": "Not Acceptable",
    "4.08": "Request Entity Incomplete", "4.09": "Conflict", "4.12": "Precondition Failed",
    "4.13": "Request Entity Too Large", "4.15": "Unsupported Content-Format",
    "5.00": "Internal Server Error", "5.01": "Not Implemented", "5.02": "Bad Gateway",
    "5.03": "Service Unavailable", "5.04": "Gateway Timeout", "5.05": "Proxying Not Supported",
}

SENML_PACK = [
    {"bn": "urn:dev:mac:0024befffe804ff1/", "bt": 1700000000.0, "n": "temperature", "u": "Cel", "v": 23.5},
    {"n": "humidity", "u": "%RH", "v": 41.0},
    {"n": "door", "vb": False},
    {"n": "label", "vs": "hall"},
]
# RFC 8428 §6, table 6
SENML_CBOR_LABELS = {"bver": -1, "bn": -2, "bt": -3, "bu": -4, "bv": -5, "bs": -6,
                     "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "s": 5, "t": 6, "ut": 7, "vd": 8}


def senml_cbor(pack: list[dict]) -> bytes:
    out = []
    for rec in pack:
        r = {}
        for k, v in rec.items():
            if k == "vd" and isinstance(v, str):  # base64url text in JSON, bytes in CBOR
                v = base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))
            r[SENML_CBOR_LABELS.get(k, k)] = v
        out.append(r)
    return cbor2.dumps(out)


def large_json(size: int) -> bytes:
    """Deterministic JSON of exactly `size` bytes (size >= 64)."""
    samples = []
    body = b""
    i = 0
    while True:
        samples.append({"i": i, "v": round((i * 37 % 1000) / 10.0, 1)})
        nxt = json.dumps({"samples": samples, "pad": ""}, separators=(",", ":")).encode()
        if len(nxt) > size:
            samples.pop()
            break
        body = nxt
        i += 1
    pad = size - len(body)
    return json.dumps({"samples": samples, "pad": "x" * pad}, separators=(",", ":")).encode()


def blob_text(size: int) -> bytes:
    return bytes((b"abcdefghijklmnopqrstuvwxyz0123456789"[(i // 10) % 36] if i % 10 == 0 else 48 + i % 10)
                 for i in range(size))


# --------------------------------------------------------------------------------------
# the records


def remote_str(remote: Any) -> str:
    """'127.0.0.1:40000' for a UDP peer (udp6 sees IPv4 peers as ::ffff:a.b.c.d)."""
    try:
        host, port = remote.sockaddr[:2]
    except Exception:  # noqa: BLE001
        return str(remote)
    if host.startswith("::ffff:"):
        host = host[7:]
    return f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"


class Records:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.datagrams: list[dict] = []
        self.req_seq = itertools.count()
        self.dgram_seq = itertools.count()
        self.next_req = 0
        self.next_dgram = 0
        self.silence_all = False
        self.silenced_paths: set[tuple[str, ...]] = {("void",)}

    def add_request(self, path: str, req: Message) -> None:
        payload = bytes(req.payload)
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            text = None
        seq = next(self.req_seq)
        self.next_req = seq + 1
        b1, b2 = req.opt.block1, req.opt.block2
        self.requests.append({
            "seq": seq, "t": time.monotonic(), "method": str(req.code), "path": path,
            "query": list(req.opt.uri_query), "payload": text, "payload_b64": base64.b64encode(payload).decode(),
            "content_format": None if req.opt.content_format is None else int(req.opt.content_format),
            "observe": req.opt.observe,
            "block1": None if b1 is None else f"{b1.block_number}/{'M' if b1.more else '_'}/{b1.size}",
            "block2": None if b2 is None else f"{b2.block_number}/{'M' if b2.more else '_'}/{b2.size}",
            "accept": None if req.opt.accept is None else int(req.opt.accept),
            "mtype": str(req.mtype), "mid": req.mid, "token": bytes(req.token).hex(), "remote": remote_str(req.remote),
        })
        log.info("request #%d %s %s %r", seq, req.code, path, payload[:60])

    def add_datagram(self, direction: str, msg: Message, dropped: bool = False) -> None:
        try:
            # Message.encode() only encodes outgoing messages: the options one by one
            opts = [(int(o.number), o.encode()) for o in msg.opt.option_list()]
            options = cw.Message(options=opts).options_dict()
        except Exception as e:  # noqa: BLE001 - a record must not break the server
            options = {"<undecodable>": f"{type(e).__name__}: {e}"}
        seq = next(self.dgram_seq)
        self.next_dgram = seq + 1
        self.datagrams.append({
            "seq": seq, "t": time.monotonic(), "dir": direction,
            "type": cw.TYPE_NAMES.get(int(msg.mtype), str(msg.mtype)) if msg.mtype is not None else None,
            "code": cw.code_str(int(msg.code)), "mid": msg.mid, "token": bytes(msg.token).hex(),
            "options": options, "payload_len": len(msg.payload), "remote": remote_str(msg.remote), "dropped": dropped,
        })

    def silenced(self, msg: Message) -> bool:
        if self.silence_all:
            return True
        return msg.code.is_request() and tuple(msg.opt.uri_path) in self.silenced_paths


REC = Records()

_orig_dispatch = MessageManager.dispatch_message
_orig_send = MessageManager._send_via_transport


def _dispatch(self, message):
    dropped = REC.silenced(message)
    REC.add_datagram("in", message, dropped)
    if dropped:
        log.info("silenced: dropped %r", message)
        return None
    return _orig_dispatch(self, message)


def _send(self, message):
    REC.add_datagram("out", message)
    return _orig_send(self, message)


MessageManager.dispatch_message = _dispatch
MessageManager._send_via_transport = _send


# --------------------------------------------------------------------------------------
# resources


class Base(resource.Resource):
    """A resource that records the requests it renders and applies its settings."""

    ct: int | None = None
    observable = False

    def __init__(self, server: "Server", path: str):
        super().__init__()
        self.server = server
        self.path = path  # "/sensor"
        self.settings: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.path.lstrip("/")

    def get_link_description(self):
        link = {}
        if self.ct is not None:
            link["ct"] = str(self.ct)
        for attr, key in (("rt", "rt"), ("title", "title"), ("if_", "if")):
            if getattr(self, attr, None):
                link[key] = getattr(self, attr)
        return link

    async def render(self, request):
        REC.add_request(self.path, request)
        response = await super().render(request)
        self.decorate(response)
        return response

    def decorate(self, response: Message) -> Message:
        if self.settings.get("max_age") is not None:
            response.opt.max_age = int(self.settings["max_age"])
        if self.settings.get("content_format") is not None and response.code.is_successful() \
                and response.opt.content_format is not None:
            response.opt.content_format = int(self.settings["content_format"])
        return response

    def content(self, code=Code.CONTENT) -> Message:
        """The current representation (overridden by value resources)."""
        raise NotImplementedError

    # value access for the side channel
    def get_value(self) -> Any:
        raise KeyError(f"{self.path} has no value")

    def set_value(self, value: Any) -> None:
        raise KeyError(f"{self.path} has no settable value")


class ObservableBase(Base, resource.ObservableResource):
    observable = True

    def __init__(self, server: "Server", path: str):
        Base.__init__(self, server, path)
        self._observations = set()

    def get_link_description(self):
        link = super().get_link_description()
        link["obs"] = None
        return link

    async def render_get(self, request):
        return self.content()

    def notify(self, mtype: str | None = None, max_age: int | None = None) -> int:
        """A fresh response to every observer (never one message object shared)."""
        mtype = mtype or self.settings.get("mtype")
        n = 0
        for obs in list(self._observations):
            r = self.decorate(self.content())
            if mtype:
                r.mtype = {"CON": CON, "NON": NON}[mtype]
            if max_age is not None:
                r.opt.max_age = max_age
            obs.trigger(r)
            n += 1
        return n

    def end(self, code: str, payload: str) -> int:
        n = 0
        for obs in list(self._observations):
            obs.trigger(Message(code=Code(cw.parse_code(code)), payload=payload.encode()))
            n += 1
        return n


class Counter(Base):
    ct = cw.CF_TEXT

    def __init__(self, server, path):
        super().__init__(server, path)
        self.value = 0

    async def render_get(self, request):
        self.value += 1
        return Message(payload=str(self.value).encode(), content_format=cw.CF_TEXT)

    def get_value(self):
        return self.value

    def set_value(self, value):
        self.value = int(value)


class JsonValue(ObservableBase):
    ct = cw.CF_JSON

    def __init__(self, server, path, value):
        super().__init__(server, path)
        self.value = value

    def content(self, code=Code.CONTENT):
        return Message(code=code, payload=json.dumps(self.value).encode(), content_format=self.ct)

    def get_value(self):
        return self.value

    def set_value(self, value):
        self.value = value


class SenmlJson(JsonValue):
    ct = cw.CF_SENML_JSON


class SenmlCbor(JsonValue):
    ct = cw.CF_SENML_CBOR

    def content(self, code=Code.CONTENT):
        return Message(code=code, payload=senml_cbor(self.value), content_format=self.ct)


class CborValue(JsonValue):
    ct = cw.CF_CBOR

    def content(self, code=Code.CONTENT):
        return Message(code=code, payload=cbor2.dumps(self.value), content_format=self.ct)


class Negotiated(Base):
    """One value in the representation the request's Accept option asks for (RFC 7252
    §5.10.4): JSON, CBOR or SenML JSON; without Accept, prose no decoder reads as a number;
    any other format 4.06 Not Acceptable."""
    ct = cw.CF_JSON

    def __init__(self, server, path, value):
        super().__init__(server, path)
        self.value = value

    async def render_get(self, request):
        accept = request.opt.accept
        v = {"temperature": self.value}
        if accept is None:
            return Message(payload=f"temperature {self.value} C".encode(), content_format=cw.CF_TEXT)
        accept = int(accept)
        if accept == cw.CF_JSON:
            return Message(payload=json.dumps(v).encode(), content_format=cw.CF_JSON)
        if accept == cw.CF_CBOR:
            return Message(payload=cbor2.dumps(v), content_format=cw.CF_CBOR)
        if accept == cw.CF_SENML_JSON:
            return Message(payload=json.dumps([{"n": "temperature", "v": self.value}]).encode(),
                           content_format=cw.CF_SENML_JSON)
        return Message(code=Code.NOT_ACCEPTABLE)

    def get_value(self):
        return self.value

    def set_value(self, value):
        self.value = value


class Setpoint(ObservableBase):
    ct = cw.CF_TEXT

    def __init__(self, server, path):
        super().__init__(server, path)
        self.text = "20"
        self.settings["range"] = [0, 100]

    def content(self, code=Code.CONTENT):
        return Message(code=code, payload=self.text.encode(), content_format=cw.CF_TEXT)

    async def render_put(self, request):
        cf = request.opt.content_format
        if cf is not None and int(cf) != cw.CF_TEXT:
            return Message(code=Code.UNSUPPORTED_CONTENT_FORMAT, payload=b"text/plain only")
        text = bytes(request.payload).decode(errors="replace").strip()
        try:
            v = float(text)
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError(text)
        except ValueError:
            return Message(code=Code.BAD_REQUEST, payload=f"not a number: {text!r}".encode())
        lo, hi = self.settings["range"]
        if not (lo <= v <= hi):
            return Message(code=Code.BAD_REQUEST, payload=f"{text} out of range [{lo}, {hi}]".encode())
        self.text = text
        asyncio.get_running_loop().call_soon(self.notify)
        return Message(code=Code.CHANGED)

    def get_value(self):
        v = float(self.text)
        return int(v) if v.is_integer() and "." not in self.text else v

    def set_value(self, value):
        self.text = str(value)


class Command(Base):
    async def render_post(self, request):
        return Message(code=Code.CHANGED, payload=b"ok", content_format=cw.CF_TEXT)


class Large(Base):
    ct = cw.CF_JSON

    def __init__(self, server, path):
        super().__init__(server, path)
        self.body = large_json(10240)

    async def render_get(self, request):
        return Message(payload=self.body, content_format=self.ct)

    def get_value(self):
        return self.body.decode()

    def set_value(self, value):
        self.body = value.encode() if isinstance(value, str) else bytes(value)


class Blob(Base):
    def __init__(self, server, path):
        super().__init__(server, path)
        self.body = blob_text(3000)
        self.cf: int | None = cw.CF_TEXT

    async def render_get(self, request):
        return Message(payload=self.body, content_format=self.cf)

    async def render_put(self, request):
        self.body = bytes(request.payload)
        self.cf = None if request.opt.content_format is None else int(request.opt.content_format)
        return Message(code=Code.CHANGED)

    def get_value(self):
        return {"b64": base64.b64encode(self.body).decode(), "content_format": self.cf, "len": len(self.body)}

    def set_value(self, value):
        if isinstance(value, dict):
            self.body = base64.b64decode(value["b64"])
            self.cf = value.get("content_format", self.cf)
        else:
            self.body = str(value).encode()


class CodeResource(Base):
    ct = cw.CF_TEXT

    def __init__(self, server, path, code: str):
        super().__init__(server, path)
        self.code = code
        if code == "5.03":
            self.settings["max_age"] = 5

    async def render(self, request):
        REC.add_request(self.path, request)
        r = Message(code=Code(cw.parse_code(self.code)), payload=f"{self.code} {CODES[self.code]}".encode(),
                    content_format=cw.CF_TEXT)
        if self.code == "4.13":
            r.opt.size1 = 64
        return self.decorate(r)


class Slow(Base):
    def __init__(self, server, path):
        super().__init__(server, path)
        self.settings["delay"] = 2.0

    async def _slow(self, code):
        await asyncio.sleep(float(self.settings["delay"]))
        return Message(code=code, payload=b"slow", content_format=cw.CF_TEXT)

    async def render_get(self, request):
        return await self._slow(Code.CONTENT)

    async def render_put(self, request):
        return await self._slow(Code.CHANGED)

    async def render_post(self, request):
        return await self._slow(Code.CHANGED)


class Hang(Base):
    async def _hang(self):
        await asyncio.get_running_loop().create_future()  # never done

    async def render_get(self, request):
        await self._hang()

    async def render_put(self, request):
        await self._hang()

    async def render_post(self, request):
        await self._hang()


class Void(Base):
    """Listed in /.well-known/core; its requests never get here (dropped as silenced)."""

    async def render_get(self, request):
        return Message(payload=b"void answered?!")


# --------------------------------------------------------------------------------------
# the server and its side channel


class Server:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.ctx: aiocoap.Context | None = None
        self.resources: dict[str, Base] = {}
        site = resource.Site()
        site.add_resource([".well-known", "core"],
                          resource.WKCResource(site.get_resources_as_linkheader, impl_info=None))

        def add(path: str, res: Base, title: str | None = None, rt: str | None = None) -> None:
            if title:
                res.title = title
            if rt:
                res.rt = rt
            site.add_resource([p for p in path.split("/") if p], res)
            self.resources[path.lstrip("/")] = res

        add("/counter", Counter(self, "/counter"), "GET counter", "fg.counter")
        add("/sensor", JsonValue(self, "/sensor", {"temperature": 21.5, "humidity": 40.0}), "Sensor", "fg.sensor")
        add("/setpoint", Setpoint(self, "/setpoint"), "Setpoint", "fg.setpoint")
        add("/command", Command(self, "/command"), "Command sink")
        add("/large", Large(self, "/large"), "Large JSON")
        add("/blob", Blob(self, "/blob"), "Blob")
        add("/senml", SenmlJson(self, "/senml", [dict(r) for r in SENML_PACK]), "SenML JSON", "fg.senml")
        add("/senml-cbor", SenmlCbor(self, "/senml-cbor", [dict(r) for r in SENML_PACK]), "SenML CBOR", "fg.senml")
        add("/multi", Negotiated(self, "/multi", 19.25), "Any format you Accept")
        add("/cbor", CborValue(self, "/cbor", {"temperature": 21.5, "humidity": 40, "ok": True}), "CBOR map")
        for code in CODES:
            add(f"/codes/{code}", CodeResource(self, f"/codes/{code}", code))
        add("/slow", Slow(self, "/slow"), "Slow")
        add("/hang", Hang(self, "/hang"), "Never answers (after an empty ACK)")
        add("/void", Void(self, "/void"), "Never answers at all")
        self.site = site

    async def bind(self) -> None:
        self.ctx = await aiocoap.Context.create_server_context(
            self.site, bind=(self.host, self.port), transports=["udp6"], loggername="coap-server")

    async def shutdown(self) -> None:
        if self.ctx is not None:
            await self.ctx.shutdown()
            self.ctx = None

    def res(self, name: str) -> Base:
        name = (name or "").strip("/")
        if name not in self.resources:
            raise KeyError(f"no resource {name!r} (have {sorted(self.resources)})")
        return self.resources[name]

    def obs(self, name: str) -> ObservableBase:
        r = self.res(name)
        if not isinstance(r, ObservableBase):
            raise KeyError(f"/{name} is not observable")
        return r

    async def handle(self, cmd: dict) -> dict:
        op = cmd.get("op")
        if op == "ping":
            return {}
        if op == "get":
            return {"value": self.res(cmd["resource"]).get_value()}
        if op == "set":
            r = self.res(cmd["resource"])
            r.set_value(cmd["value"])
            return {}
        if op == "notify":
            return {"observers": self.obs(cmd["resource"]).notify(cmd.get("mtype"), cmd.get("max_age"))}
        if op == "end":
            return {"observers": self.obs(cmd["resource"]).end(cmd.get("code", "4.04"), cmd.get("payload", ""))}
        if op == "observers":
            return {"observers": len(self.obs(cmd["resource"])._observations)}
        if op == "configure":
            r = self.res(cmd["resource"])
            settings = dict(cmd.get("settings") or {})
            if "size" in settings and isinstance(r, Large):
                r.body = large_json(int(settings.pop("size")))
            r.settings.update(settings)
            return {"settings": r.settings}
        if op == "silence":
            path, on = cmd.get("path"), cmd.get("on", True)
            if path is None:
                REC.silence_all = False
                REC.silenced_paths = {("void",)}
            elif path == "*":
                REC.silence_all = bool(on)
            else:
                key = tuple(p for p in path.split("/") if p)
                (REC.silenced_paths.add if on else REC.silenced_paths.discard)(key)
            return {}
        if op == "forget":
            # shutting the context down cancels every observation's task, whose cleanup
            # takes it out of its resource's set
            await self.shutdown()
            await asyncio.sleep(0)
            for r in self.resources.values():
                if isinstance(r, ObservableBase) and r._observations:
                    log.warning("forget: %d observations of %s left after shutdown", len(r._observations), r.path)
                    r._observations.clear()
            await self.bind()
            return {}
        if op == "requests":
            since, path = cmd.get("since", 0), cmd.get("path")
            if path is not None and not path.startswith("/"):
                path = "/" + path
            return {"requests": [r for r in REC.requests if r["seq"] >= since and (path is None or r["path"] == path)]}
        if op == "datagrams":
            since = cmd.get("since", 0)
            return {"datagrams": [d for d in REC.datagrams if d["seq"] >= since]}
        if op == "clear":
            REC.requests.clear()
            REC.datagrams.clear()
            return {}
        if op == "marks":
            return {"requests": REC.next_req, "datagrams": REC.next_dgram}
        raise KeyError(f"unknown op {op!r}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args()
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    server = Server(args.host, args.port)
    await server.bind()
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str | None] = asyncio.Queue()

    def stdin_reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line)
        loop.call_soon_threadsafe(commands.put_nowait, None)

    threading.Thread(target=stdin_reader, name="side-channel", daemon=True).start()
    print(json.dumps({"ready": True, "port": args.port}), flush=True)
    log.info("listening on udp %s:%d", args.host, args.port)

    while True:
        line = await commands.get()
        if line is None:
            break
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            reply = {"ok": True, **(await server.handle(cmd))}
        except Exception as e:  # noqa: BLE001 - every failure is reported to the harness
            log.exception("side channel command %s failed", line)
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)

    log.info("stdin closed: shutting down")
    await server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
