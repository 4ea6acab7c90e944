"""The CoAP adapter end to end: the gateway against real CoAP servers (coap_peers.py) —
aiocoap with test-controlled resources and libcoap's coap-server-notls — read, observed and
written through a real Prosody with XEP-0323 readouts, XEP-0325 sets, IoT event
subscriptions and presence from slixmpp; lossy paths and hostile datagrams through a UDP
relay (coap_peers.LossyRelay) that records every datagram with its time.

One world for the module: one Prosody, one gateway with a device per concern, and these
servers (none of them shared by tests that disturb it):

- `ai`: aiocoap on "::" (dual-stack: 127.0.0.1 and [::1]); most devices read it directly,
  three through relays (`lossy`: the first two transmissions of every request dropped from
  the start; `stale`: an observation whose datagrams are recorded and injected into;
  `mal`: malformed datagrams and RSTs injected toward the gateway).
- `af`: aiocoap whose /sensor has Max-Age 2 s; the test that makes it forget its
  observers uses it alone.
- `lc`: libcoap on "::" (dual-stack), polled and observed.
- `lv`: libcoap polled by one device; killed and started again.

Every wait polls a condition; the few fixed sleeps are measurement windows, named as such.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import shutil
import statistics
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import HarnessError, IqReply, gateway_toml, make_env, run_cli, wait_for
from iot import (NS_SD, Fld, IotClient, all_fields, brief, expect_error, extra_sections, failure_texts,
                 fields_of, q, req_iq, set_iq, set_response_code, subscribe_iq, unsubscribe_iq)

DOMAIN = "gw.example.test"
ALICE = "alice@example.test"
ACCESS = {"subscribe": [ALICE], "read": [ALICE], "control": [ALICE]}
SEQ = itertools.count(1)

# transmission parameters for devices whose tests are not about them: quick to give up
FAST = {"ack_timeout": "500ms", "max_retransmit": 3}
# the devices whose tests wait for the gateway to give up
QUICK_ACK, QUICK_MAXR = "200ms", 2
QUICK = {"ack_timeout": QUICK_ACK, "max_retransmit": QUICK_MAXR}

# the responses of /codes/<c.dd> and what a set answered by them must become (README)
CODE_MAP = [
    ("4.00", "bad-request", "modify"),
    ("4.01", "forbidden", "auth"),
    ("4.03", "forbidden", "auth"),
    ("4.04", "item-not-found", "cancel"),
    ("4.05", "not-allowed", "cancel"),
    ("4.13", "not-acceptable", "modify"),
    ("5.03", "service-unavailable", "wait"),
    ("5.00", "internal-server-error", "cancel"),
    ("5.02", "internal-server-error", "cancel"),  # "other 5.xx"
]
CODE_OK = ["2.04", "2.01"]  # "2.xx success"

SENML_BN = "urn:dev:mac:0024befffe804ff1/"
LIBCOAP_TIME = re.compile(r"^[A-Z][a-z]{2} [ 0-9]\d [0-2]\d:[0-5]\d:[0-6]\d$")
LIBCOAP_INFO = "This is a test server made with libcoap"


def jid(device_id: str) -> str:
    return f"{device_id}@{DOMAIN}"


def fld(name: str, type_: str, coap: dict, writable: bool = False, **kw) -> dict:
    f = {"name": name, "type": type_, **kw}
    if writable:
        f["writable"] = True
    f["coap"] = coap
    return f


def coap_device(id: str, address: str, fields: list[dict], max_age: str | None = None, **coap) -> dict:
    """A `[[device]]` with `adapter = "coap"`; its `[device.coap]` as an inline table."""
    d = {"id": id, "name": id, "adapter": "coap", "coap": {"address": address, **coap}, "fields": fields}
    if max_age is not None:
        d["max_age"] = max_age
    return d


def senml_pack(temperature: float) -> list[dict]:
    """aiocoap_server.SENML_PACK with another temperature."""
    return [
        {"bn": SENML_BN, "bt": 1700000000.0, "n": "temperature", "u": "Cel", "v": temperature},
        {"n": "humidity", "u": "%RH", "v": 41.0},
        {"n": "door", "vb": False},
        {"n": "label", "vs": "hall"},
    ]


# --------------------------------------------------------------------------------------
# readouts and events


@dataclass
class Readout:
    seqnr: int
    fields: dict[str, Fld] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def value(self, name: str) -> str:
        assert name in self.fields, f"no field {name} in the readout; failures: {self.failures}"
        return self.fields[name].value

    def summary(self) -> dict[str, str]:
        return {k: f.value for k, f in self.fields.items()}


def timed_events(c: IotClient, seqnr: int, since: int, dev: str) -> list[tuple[float, ET.Element]]:
    """(arrival, <fields>) of the events of subscription `seqnr` from `dev` since stanza mark `since`."""
    out = []
    for t, s in c.timed_since(since):
        if s.tag == q("jabber:client", "message") and s.get("from", "").split("/")[0] == jid(dev):
            out += [(t, p) for p in s if p.tag == q(NS_SD, "fields") and p.get("seqnr") == str(seqnr)]
    return out


def event_values(c: IotClient, seqnr: int, since: int, dev: str, name: str) -> list[float]:
    out = []
    for _t, ev in timed_events(c, seqnr, since, dev):
        assert ev.get("done") == "true", brief(ev)
        fs = {f.name: f for f in fields_of(ev)}
        if name in fs:
            out.append(float(fs[name].value))
    return out


def log_lines(gw, since: int, *needles: str) -> list[str]:
    return [line for line in gw.log_since(since).splitlines() if all(n in line for n in needles)]


def wait_log(gw, since: int, *needles: str, timeout: float = 10.0) -> list[str]:
    return wait_for(lambda: log_lines(gw, since, *needles), timeout, f"a gateway log line with {needles}")


class Subscription:
    """An IoT events subscription of alice's, ended by `close()`."""

    def __init__(self, w: "CoapWorld", dev: str, fields: list[dict], **kw) -> None:
        self.w, self.dev, self.c = w, dev, w.alice
        self.seqnr = next(SEQ)
        self.mark = self.c.mark_stanzas()
        r = self.c.iq(subscribe_iq(jid(dev), self.seqnr, fields, momentary=True, **kw))
        assert r.ok, f"subscribe to {dev} refused: {r.condition} {r.text}"

    def values(self, name: str) -> list[float]:
        return event_values(self.c, self.seqnr, self.mark, self.dev, name)

    def wait_value(self, name: str, pred, what: str, timeout: float = 10.0) -> list[float]:
        return wait_for(lambda: (lambda v: v if any(pred(x) for x in v) else None)(self.values(name)), timeout,
                        f"an event of {self.dev}.{name} {what}")

    def close(self) -> None:
        self.c.iq(unsubscribe_iq(jid(self.dev), self.seqnr))


# --------------------------------------------------------------------------------------
# the world


class CoapWorld:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fg-coap-"))
        self.env = None
        self.peers: list = []

    def start(self) -> None:
        try:
            import coap_peers as cp
        except ImportError as e:
            pytest.fail(f"{e}: run bash tests/run.sh (it installs tests/e2e/requirements.txt into .venv)",
                        pytrace=False)
        missing = cp.missing_tools()
        if missing:
            pytest.fail(f"{', '.join(missing)} not installed: install the Debian package 'libcoap3-bin' "
                        "(bash tests/run.sh does it)", pytrace=False)
        import coap_wire as cw

        self.cp, self.cw = cp, cw
        self.ai = self._peer(cp.AiocoapServer(self.root / "ai", name="aiocoap", bind="::")).start()
        self.af = self._peer(cp.AiocoapServer(self.root / "af", name="aiocoap-forget")).start()
        self.lc = self._peer(cp.LibcoapServer(self.root / "lc", name="libcoap", bind="::")).start()
        self.lv = self._peer(cp.LibcoapServer(self.root / "lv", name="libcoap-vanish")).start()
        self.af.configure("sensor", max_age=2)
        # the first two transmissions of every CON toward the server are lost, from the start
        self.r_lossy = self._peer(cp.LossyRelay(self.ai.port, name="relay-lossy"))
        self.r_lossy.drop_first(2, "up", ("CON",))
        self.r_stale = self._peer(cp.LossyRelay(self.ai.port, name="relay-stale"))
        self.r_mal = self._peer(cp.LossyRelay(self.ai.port, name="relay-mal"))
        # nothing gets through toward the server until a test says so
        self.r_dead = self._peer(cp.LossyRelay(self.ai.port, name="relay-dead"))
        self.r_dead.blackhole("up")
        # what /large holds, to name a field at its far end
        body = cw.request_sync(self.ai.port, "GET", "/large").payload
        self.large_len = len(body)
        self.large = json.loads(body)
        self.large_last = len(self.large["samples"]) - 1

        ai4 = f"coap://127.0.0.1:{self.ai.port}"
        ai6 = f"coap://[::1]:{self.ai.port}"
        lc4 = f"coap://127.0.0.1:{self.lc.port}"
        lc6 = f"coap://[::1]:{self.lc.port}"
        relay = lambda r: f"coap://127.0.0.1:{r.port}"  # noqa: E731
        devices = [
            coap_device("counter", ai4, [fld("count", "long", {"path": "/counter"})], poll="300ms", **FAST),
            coap_device("sensor", ai4, [
                fld("temperature", "double", {"path": "/sensor"}, unit="°C"),
                fld("humidity", "double", {"path": "/sensor", "pointer": "/humidity"}),
            ], observe=True, poll="60s", **FAST),
            coap_device("thermo", ai4, [fld("setpoint", "double", {"path": "/setpoint"}, writable=True)],
                        poll="500ms", **FAST),
            coap_device("cmd", ai4, [fld("level", "int", {"path": "/command", "method": "post",
                                                          "command_format": "json"}, writable=True)],
                        poll="1h", **FAST),
            coap_device("codes", ai4, [
                fld("c" + c.replace(".", "_"), "double", {"path": "/setpoint", "command_path": f"/codes/{c}"},
                    writable=True) for c in [c for c, _, _ in CODE_MAP] + CODE_OK
            ] + [fld("void", "double", {"path": "/setpoint", "command_path": "/void"}, writable=True)],
                poll="1h", **QUICK),
            coap_device("big", ai4, [
                fld("first", "long", {"path": "/large", "pointer": "/samples/0/i"}),
                fld("last", "double", {"path": "/large", "pointer": f"/samples/{self.large_last}/v"}),
            ], max_age="0s", poll="1h", block_size=512, **FAST),
            # one resource, three representations: chosen by each device's Accept
            *[coap_device(f"acc-{fmt}", ai4, [fld("temperature", "double", {"path": "/multi", "accept": fmt})],
                          max_age="0s", poll="1h", **FAST) for fmt in ("json", "cbor", "senml", "senml-cbor")],
            coap_device("cfdev", ai4, [fld("temperature", "double", {"path": "/cbor"})], max_age="0s",
                        poll="300ms", **FAST),
            coap_device("lossy", relay(self.r_lossy), [fld("temperature", "double", {"path": "/senml"})],
                        max_age="1h", poll="1h"),  # RFC 7252 defaults
            coap_device("stale", relay(self.r_stale), [fld("temperature", "double", {"path": "/senml"})],
                        observe=True, poll="60s", **FAST),
            coap_device("mal", relay(self.r_mal), [fld("temperature", "double", {"path": "/senml-cbor"})],
                        poll="300ms", ack_timeout="300ms", max_retransmit=2),
            coap_device("dead3", relay(self.r_dead), [
                fld("count", "long", {"path": "/counter"}),
                fld("temperature", "double", {"path": "/sensor"}),
                fld("setpoint", "double", {"path": "/setpoint"}),
            ], poll="300ms", **QUICK),
            coap_device("forget", f"coap://127.0.0.1:{self.af.port}",
                        [fld("temperature", "double", {"path": "/sensor"})],
                        observe=True, observe_margin="1s", poll="60s", **FAST),
            coap_device("vanish", f"coap://127.0.0.1:{self.lv.port}", [fld("clock", "string", {"path": "/time"})],
                        poll="300ms", **QUICK),
            coap_device("lcpoll", lc4, [
                fld("info", "string", {"path": "/"}),
                fld("data", "string", {"path": "/example_data"}),
            ], poll="500ms", **FAST),
            coap_device("lcobs", lc4, [fld("clock", "string", {"path": "/time"})], max_age="5s",
                        observe=True, poll="60s", **FAST),
            coap_device("lc6", lc6, [fld("clock", "string", {"path": "/time"})], poll="500ms", **FAST),
            coap_device("ai6", ai6, [fld("count", "long", {"path": "/counter"})], poll="500ms", **FAST),
            # a zone (RFC 6874) on an address that needs none: read, and not let in the way
            coap_device("zoned", f"coap://[::1%25lo]:{self.ai.port}", [fld("count", "long", {"path": "/counter"})],
                        poll="500ms", **FAST),
            # a link-local address on an interface that does not exist
            coap_device("nozone", f"coap://[fe80::1%25nosuchif0]:{self.ai.port}",
                        [fld("count", "long", {"path": "/counter"})], poll="500ms", **FAST),
        ]
        self.devices = devices
        self.env = make_env(self.root, users=("alice",))
        self.alice = IotClient(self.env.prosody, "alice", resource="coap")
        self.env.clients.append(self.alice)
        self.alice.connect()
        self.gw = self.env.new_gateway()
        self.gw.write_raw_config(gateway_toml(self.env.prosody, self.gw.state_dir, devices, ACCESS)
                                 + extra_sections({"events": {"min_interval": "100ms"}}))
        self.gw.start()
        # the gateway's IPv4 socket, as the relays see it (the observation of `stale` goes
        # out at once)
        self.gw_port = wait_for(lambda: self.r_stale.clients, 10, "the gateway's first datagram to a relay")[0][1]

    def _peer(self, p):
        self.peers.append(p)
        return p

    # -- XEP-0323

    def readout(self, dev: str, fields: tuple[str, ...] = (), timeout: float = 10.0) -> Readout:
        c = self.alice
        seqnr = next(SEQ)
        mk = c.mark_stanzas()
        r = c.iq(req_iq(jid(dev), seqnr, fields, momentary=True), timeout)
        assert r.ok, f"readout of {dev} refused: {r.condition} {r.text}"
        payloads = c.wait_readout_end(seqnr, mk, timeout)
        out = Readout(seqnr, failures=failure_texts(payloads))
        for f in all_fields(payloads):
            assert f.name not in out.fields, f"{f.name} reported twice: {[brief(p) for p in payloads]}"
            out.fields[f.name] = f
        return out

    def wait_readout(self, dev: str, pred, what: str, timeout: float = 10.0,
                     fields: tuple[str, ...] = ()) -> Readout:
        last: list[Readout] = []

        def cond():
            r = self.readout(dev, fields)
            last[:] = [r]
            return r if pred(r) else None

        try:
            return wait_for(cond, timeout, what, interval=0.1)
        except HarnessError as e:
            r = last[0] if last else None
            raise HarnessError(f"{e}; last readout of {dev}: values {r and r.summary()}, "
                               f"failures {r and r.failures}") from None

    def wait_value(self, dev: str, name: str, pred, what: str, timeout: float = 10.0) -> Fld:
        r = self.wait_readout(dev, lambda r: name in r.fields and pred(r.fields[name].value),
                              f"{dev}.{name} {what} in a readout", timeout)
        return r.fields[name]

    # -- XEP-0325

    def set(self, dev: str, params: list[tuple[str, str, str]], timeout: float = 15.0) -> IqReply:
        return self.alice.iq(set_iq(jid(dev), params), timeout)

    # -- presence

    def subscribe(self, dev: str, state="available", timeout: float = 10.0, pred=None):
        m = self.alice.mark()
        self.alice.subscribe(jid(dev))
        return self.alice.wait_presence(jid(dev), state, m, timeout=timeout, pred=pred)

    def assert_alive(self) -> None:
        assert self.gw.running, f"gateway died\n{self.gw.log_tail()}"
        assert "panicked" not in self.gw.log_text(), f"panic in the gateway log\n{self.gw.log_tail()}"

    def close(self) -> None:
        try:
            if self.env:
                self.env.close()
        finally:
            for p in reversed(self.peers):
                try:
                    p.close()
                except Exception:  # noqa: BLE001 - teardown best effort
                    pass
            if os.environ.get("FIELDGATE_E2E_KEEP") != "1":
                shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def w():
    world = CoapWorld()
    try:
        world.start()
        yield world
    finally:
        world.close()


def gateway_requests(w: "CoapWorld", path: str, since: int = 0, v6: bool = False) -> list[dict]:
    """Requests aiocoap (`ai`) saw for `path` straight from the gateway's IPv4 socket (not
    through a relay), or from its IPv6 socket."""
    if v6:
        return [r for r in w.ai.requests(since, path) if r["remote"].startswith("[::1]:")]
    return [r for r in w.ai.requests(since, path) if r["remote"] == f"127.0.0.1:{w.gw_port}"]


def assert_ok(r: IqReply) -> None:
    assert r.ok, f"set failed: {r.condition} {r.text}: {brief(r.xml)}"
    assert set_response_code(r) == "OK", brief(r.xml)


# --------------------------------------------------------------------------------------
# polling and observing


def test_polled_counter_changes_reach_subscribers_as_events(w):
    """/counter grows by one on every GET: polled every 300 ms, each poll is a change."""
    mk = w.ai.mark()[0]
    sub = Subscription(w, "counter", [{"name": "count", "changedBy": 1}])
    try:
        vals = wait_for(lambda: (lambda v: v if len(v) >= 4 else None)(sub.values("count")), 10,
                        "four change events of counter.count")
        assert all(b > a for a, b in zip(vals, vals[1:])), f"the counter only grows: {vals}"
    finally:
        sub.close()
    # the events came from polls at the configured period (from the gateway's own socket)
    gets = [r for r in gateway_requests(w, "/counter", mk) if r["method"] == "GET"]
    assert len(gets) >= 4, gets
    gaps = [b["t"] - a["t"] for a, b in zip(gets, gets[1:])]
    assert 0.2 <= statistics.median(gaps) <= 0.6, f"poll = 300ms, GETs came {gaps}"
    assert all(r["observe"] is None for r in gets), "a polled device does not observe"


def test_observed_notifications_reach_subscribers_as_events(w):
    """/sensor is observed: its value reaches subscribers when the server notifies, and only
    then (the device's poll is 60 s: no poll can bring it within the wait)."""
    ai = w.ai
    wait_for(lambda: ai.observers("sensor") >= 1, 10, "the gateway observing /sensor")
    sub = Subscription(w, "sensor", [{"name": "temperature", "changedBy": 0.5}])
    try:
        ai.set("sensor", {"temperature": 25.0, "humidity": 41.0}, notify=True)
        sub.wait_value("temperature", lambda v: v == 25.0, "= 25.0 (notified)", timeout=5)
        # changed silently: no notification, no event
        ai.set("sensor", {"temperature": 27.0, "humidity": 41.0})
        time.sleep(1.5)  # measurement window: nothing may come
        w.alice.barrier(jid("sensor"))
        assert 27.0 not in sub.values("temperature"), "a value the server did not notify reached subscribers"
        n = ai.notify("sensor")
        assert n >= 1, "the gateway's observation is gone"
        vals = sub.wait_value("temperature", lambda v: v == 27.0, "= 27.0 (notified)", timeout=5)
        assert vals == [25.0, 27.0], vals
    finally:
        sub.close()
        ai.set("sensor", {"temperature": 21.5, "humidity": 40.0})
    # one registration, nothing polled: every request for /sensor from the gateway was it
    reqs = gateway_requests(w, "/sensor")
    assert [r["observe"] for r in reqs] == [0], f"expected one GET with Observe 0: {reqs}"


def test_readout_of_polled_values(w):
    ai = w.ai
    r = w.readout("counter")
    f = r.fields.get("count")
    assert f is not None, (r.summary(), r.failures)
    assert f.tag == "long", f
    assert f.flag("momentary"), f.attrs
    assert 1 <= int(f.value) <= ai.get("counter"), f"count {f.value}, server at {ai.get('counter')}"
    r = w.readout("lcpoll", ("info",))
    assert r.summary().keys() == {"info"}, "only the field asked for"
    assert r.fields["info"].tag == "string" and r.value("info").startswith(LIBCOAP_INFO), r.summary()


# --------------------------------------------------------------------------------------
# writes


def test_set_is_a_put_of_plain_text(w):
    ai = w.ai
    mk = ai.mark()[0]
    try:
        assert_ok(w.set("thermo", [("double", "setpoint", "42.5")]))
        puts = [r for r in ai.requests(mk, "/setpoint") if r["method"] == "PUT"]
        assert len(puts) == 1, puts
        p = puts[0]
        assert p["payload"] == "42.5", p
        assert p["content_format"] == 0, f"text/plain is Content-Format 0: {p}"
        assert p["mtype"] == "CON", p
        assert ai.get("setpoint") == 42.5
        w.wait_value("thermo", "setpoint", lambda v: float(v) == 42.5, "= 42.5 (read back)")
        # the server refuses a value: its diagnostic comes back with the error
        r = w.set("thermo", [("double", "setpoint", "150")])
        expect_error(r, "bad-request", "modify", ["4.00", "out of range"])
        assert ai.get("setpoint") == 42.5
    finally:
        ai.set("setpoint", 20)


def test_set_as_post_of_json(w):
    ai = w.ai
    mk = ai.mark()[0]
    assert_ok(w.set("cmd", [("int", "level", "7")]))
    posts = [r for r in ai.requests(mk, "/command") if r["method"] == "POST"]
    assert len(posts) == 1, posts
    assert posts[0]["content_format"] == 50, posts[0]
    assert json.loads(posts[0]["payload"]) == {"level": 7}, posts[0]


@pytest.mark.parametrize("code,condition,etype", CODE_MAP, ids=[c for c, _, _ in CODE_MAP])
def test_set_answered_with_an_error_code(w, code, condition, etype):
    """/codes/<c.dd> answers a PUT with that code: the set's error follows the README's table."""
    ai = w.ai
    mk = ai.mark()[0]
    r = w.set("codes", [("double", "c" + code.replace(".", "_"), "1")])
    seen = ai.requests(mk, f"/codes/{code}")
    assert [(x["method"], x["payload"]) for x in seen] == [("PUT", "1")], f"{code}: {seen}"
    expect_error(r, condition, etype, [code])
    if code == "5.03":
        assert "retry in 5s" in r.text, f"5.03 carries Max-Age 5, the time to retry: {r.text!r}"


def test_set_answered_with_success_codes(w):
    ai = w.ai
    for code in CODE_OK:
        mk = ai.mark()[0]
        assert_ok(w.set("codes", [("double", "c" + code.replace(".", "_"), "2")]))
        assert [x["method"] for x in ai.requests(mk, f"/codes/{code}")] == ["PUT"], code


def test_set_without_any_answer_times_out(w):
    """/void never answers: the PUT is retransmitted max_retransmit times, then the set is
    answered remote-server-timeout."""
    ai = w.ai
    _, dmk = ai.mark()
    t0 = time.monotonic()
    r = w.set("codes", [("double", "void", "1")])
    took = time.monotonic() - t0
    expect_error(r, "remote-server-timeout", "wait")
    ack = float(QUICK_ACK.removesuffix("ms")) / 1000
    total = ack * (2 ** (QUICK_MAXR + 1) - 1)
    assert total * 0.9 <= took <= total * 1.5 + 1.0, f"gave up after {took:.2f}s, expected {total}..{total * 1.5}s"
    seen = [d for d in ai.datagrams(dmk) if d["dir"] == "in" and d["options"].get("Uri-Path") == "void"]
    assert len(seen) == 1 + QUICK_MAXR, f"1 + max_retransmit transmissions: {seen}"
    assert len({d["mid"] for d in seen}) == 1 and all(d["dropped"] for d in seen), seen
    w.assert_alive()


# --------------------------------------------------------------------------------------
# block-wise


def test_blockwise_read_of_a_large_resource(w):
    _, dmk = w.ai.mark()
    r = w.readout("big")
    assert r.summary().keys() == {"first", "last"}, (r.summary(), r.failures)
    expected = w.large["samples"][w.large_last]["v"]
    assert int(r.value("first")) == 0 and float(r.value("last")) == expected, r.summary()
    blocks = [d["options"].get("Block2") for d in w.ai.datagrams(dmk)
              if d["dir"] == "in" and d["options"].get("Uri-Path") == "large"]
    n = math.ceil(w.large_len / 512)
    assert w.large_len == 10240 and n == 20
    nums = sorted({int(b.split("/")[0]) for b in blocks if b})
    assert nums == list(range(n)), f"block_size = 512: blocks 0..{n - 1} of 10240 bytes asked for: {blocks}"
    assert all(b.endswith("/512") for b in blocks if b), blocks


# --------------------------------------------------------------------------------------
# a lossy path: RFC 7252 §4.2 retransmission


def test_lost_transmissions_are_retransmitted_with_rfc_backoff(w):
    """The relay in front of `lossy` dropped the first two transmissions of every request
    from the start; the device (RFC 7252 defaults) got its first value with the third."""
    relay = w.r_lossy
    first = wait_for(lambda: relay.first_request("/senml"), 10, "the first request of `lossy`")
    answer = relay.wait_datagram(lambda d: d.dir == "down" and d.msg is not None and d.msg.token == first.token
                                 and d.msg.is_response, timeout=20, what="the answer to the first request")
    tx = relay.transmissions(first.mid, "up", token=first.token)
    assert [d.dropped for d in tx] == [True, True, False], "\n".join(map(str, tx))
    assert all(d.data == tx[0].data for d in tx), "a retransmission repeats the message byte for byte"
    # first timeout in [ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR] = [2 s, 3 s], then twice that
    w.cp.assert_backoff([d.t for d in tx])
    assert answer.msg.code_name == "2.05", answer
    # the server took the request once
    ins = [d for d in w.ai.datagrams() if d["dir"] == "in" and d["mid"] == first.mid and d["token"] == first.token.hex()]
    assert len(ins) == 1, ins
    r = w.readout("lossy")
    assert float(r.value("temperature")) == 23.5, (r.summary(), r.failures)


# --------------------------------------------------------------------------------------
# Observe: order, forgotten observations


def test_stale_notification_is_discarded(w):
    """RFC 7641 §3.4: a notification with an older Observe number than the last one taken
    is not a change. Injected into the gateway's observation of /senml through its relay."""
    cw, relay, ai = w.cw, w.r_stale, w.ai
    reg = wait_for(lambda: relay.first_request("/senml"), 10, "the registration of `stale`")
    assert reg.msg.observe == 0, reg
    token = reg.msg.token
    sub = Subscription(w, "stale", [{"name": "temperature", "changedBy": 1}])
    try:
        mk = relay.mark()
        ai.set("senml", senml_pack(30.0), notify=True)
        sub.wait_value("temperature", lambda v: v == 30.0, "= 30.0 (notified)", timeout=5)
        notes = [d for d in relay.datagrams(0, "down") if d.msg is not None and d.msg.token == token
                 and d.msg.observe is not None]
        last = notes[-1].msg.observe
        assert notes[-1].seq >= mk, "the notification of 30.0 went through the relay"

        def note(seq: int, temperature: float) -> bytes:
            return cw.Message(cw.NON, cw.parse_code("2.05"), random.randrange(1 << 16), token,
                              [(cw.OBSERVE, cw.encode_uint(seq & 0xFFFFFF)),
                               (cw.CONTENT_FORMAT, cw.encode_uint(cw.CF_SENML_JSON))],
                              json.dumps(senml_pack(temperature)).encode()).encode()

        since = w.gw.log_size()
        relay.inject_down(note(last - 1, -99.0))
        wait_log(w.gw, since, "stale notification discarded", f"last={last}", f"got={(last - 1) & 0xFFFFFF}",
                 timeout=5)
        relay.inject_down(note(last + 1, -50.0))
        sub.wait_value("temperature", lambda v: v == -50.0, "= -50.0 (injected, fresher)", timeout=5)
        w.alice.barrier(jid("stale"))
        assert sub.values("temperature") == [30.0, -50.0], sub.values("temperature")
    finally:
        sub.close()


def test_forgotten_observation_is_registered_again_after_max_age(w):
    """/sensor of `af` has Max-Age 2 s and the device observe_margin 1 s: when the server
    forgets its observers, the gateway registers again 3 s after the last notification."""
    af = w.af
    wait_for(lambda: af.observers("sensor") >= 1, 10, "the gateway observing af's /sensor")
    sub = Subscription(w, "forget", [{"name": "temperature", "changedBy": 0.5}])
    try:
        _, dmk = af.mark()
        af.set("sensor", {"temperature": 30.0, "humidity": 40.0}, notify=True)
        sub.wait_value("temperature", lambda v: v == 30.0, "= 30.0 (notified)", timeout=5)
        out = [d for d in af.datagrams(dmk) if d["dir"] == "out" and d["options"].get("Observe") is not None]
        assert out, "no notification went out"
        notified = out[-1]["t"]
        rmk, _ = af.mark()
        af.forget()
        assert af.observers("sensor") == 0
        reg = af.wait_request(lambda r: r["method"] == "GET" and r["observe"] == 0, "/sensor", rmk, timeout=10)
        silent = reg["t"] - notified
        assert 3.0 - 0.1 <= silent <= 3.0 + 1.5, f"registered again {silent:.2f}s after the last notification, " \
                                                 "expected Max-Age 2 s + margin 1 s"
        af.wait_observers("sensor", 1, timeout=5)
        af.set("sensor", {"temperature": 31.0, "humidity": 40.0}, notify=True)
        sub.wait_value("temperature", lambda v: v == 31.0, "= 31.0 (notified after re-registration)", timeout=5)
    finally:
        sub.close()


# --------------------------------------------------------------------------------------
# reachability


def test_server_that_disappears_and_returns(w):
    lv = w.lv
    w.subscribe("vanish")
    w.wait_value("vanish", "clock", LIBCOAP_TIME.match, "a libcoap time")
    m = w.alice.mark()
    lv.kill()
    t0 = time.monotonic()
    down = w.alice.wait_presence(jid("vanish"), "unavailable", m, timeout=10)
    assert f"no answer after {QUICK_MAXR} retransmissions" in down.status, down.status
    took = time.monotonic() - t0
    assert took <= 0.3 + 2.1 + 2.0, f"unavailable {took:.2f}s after the server went (poll 300ms, " \
                                    f"ack_timeout {QUICK_ACK}, max_retransmit {QUICK_MAXR})"
    r = w.readout("vanish")
    assert any(f"no answer after {QUICK_MAXR} retransmissions" in f for f in r.failures), (r.summary(), r.failures)
    m = w.alice.mark()
    lv.start()
    w.alice.wait_presence(jid("vanish"), "available", m, timeout=10)
    w.wait_value("vanish", "clock", LIBCOAP_TIME.match, "a libcoap time after the restart")
    w.assert_alive()


def test_a_silent_server_costs_one_exchange_per_polling_round(w):
    """The resources of a device are read one after the other each round; when the
    server does not answer the first, the rest of the round is not queued behind it (each
    would hold the server's NSTART 1 queue for the whole give-up time)."""
    r = w.r_dead
    w.subscribe("dead3", "unavailable")
    # two give-ups at least (the first round at start, then the next ones)
    wait_for(lambda: len({d.mid for d in r.datagrams() if d.dir == "up" and d.type == "CON"}) >= 3, 20,
             "three exchanges toward the silent server")
    ups = [d for d in r.datagrams() if d.dir == "up" and d.msg is not None and d.msg.is_request]
    assert {d.msg.path for d in ups} == {"/counter"}, sorted({d.msg.path for d in ups})
    # one exchange at a time: each message id is transmitted 1 + max_retransmit times
    # before the next one starts
    order = [d.mid for d in ups]
    runs = [m for i, m in enumerate(order) if i == 0 or order[i - 1] != m]
    assert len(runs) == len(set(runs)), f"exchanges interleaved: {order}"
    assert all(order.count(m) <= 1 + QUICK_MAXR for m in set(order)), order
    # the server back: the whole device is read again
    m = w.alice.mark()
    r.forward()
    w.alice.wait_presence(jid("dead3"), "available", m, timeout=10)
    got = w.wait_readout("dead3", lambda x: {"count", "temperature", "setpoint"} <= set(x.fields),
                         "every resource read once the server answers")
    assert got.fields["temperature"].value
    w.assert_alive()


# --------------------------------------------------------------------------------------
# hostile datagrams


def test_malformed_datagrams_and_resets(w):
    cw, relay, ai = w.cw, w.r_mal, w.ai
    w.subscribe("mal")
    w.wait_value("mal", "temperature", lambda v: float(v) == 23.5, "= 23.5")
    since = w.gw.log_size()
    m = w.alice.mark()
    mk = relay.mark()
    mids = iter(random.sample(range(1 << 16), 64))
    # not even a header: dropped without a word
    for n in (0, 1, 2, 3):
        relay.inject_down(cw.raw_truncated_header(n))
    # an unknown version: silently ignored, even a CON (RFC 7252 §3)
    bad_version = next(mids)
    relay.inject_down(cw.raw_bad_version(cw.CON, bad_version))
    # format errors in a readable header: a CON is rejected with RST, the rest dropped
    rejected = []
    for tkl in range(9, 16):
        relay.inject_down(cw.raw_token_length(tkl, cw.ACK, mid=next(mids)))
        mid = next(mids)
        relay.inject_down(cw.raw_token_length(tkl, cw.CON, mid=mid))
        rejected.append(mid)
    for make in (cw.raw_option_delta_15, cw.raw_option_length_15, cw.raw_option_overrun,
                 cw.raw_empty_payload_marker):
        relay.inject_down(make(cw.ACK, mid=next(mids)))
        mid = next(mids)
        relay.inject_down(make(cw.CON, mid=mid))
        rejected.append(mid)
    # resets nobody asked for
    relay.inject_down(cw.rst(next(mids)))
    relay.inject_down(cw.empty_ack(next(mids)))

    def rsts() -> set[int]:
        return {d.mid for d in relay.datagrams(mk, "up") if d.type == "RST" and not d.injected}

    wait_for(lambda: set(rejected) <= rsts(), 5, f"RSTs for the malformed CONs {rejected}")
    assert bad_version not in rsts(), "a message of another version must be silently ignored"
    wait_log(w.gw, since, "dropped a malformed CoAP datagram")

    # an RST answering the device's request: the server reset it
    mk = relay.mark()
    relay.blackhole("down")
    try:
        req = relay.wait_datagram(lambda d: d.dir == "up" and d.msg is not None and d.msg.is_request, mk,
                                  timeout=5, what="a request of `mal`")
        relay.inject_down(cw.rst(req.mid))
    finally:
        relay.forward()
    down = w.alice.wait_presence(jid("mal"), "unavailable", m, timeout=5)
    assert "reset by the server" in down.status, down.status
    w.alice.wait_presence(jid("mal"), "available", m, timeout=5, pred=lambda p: p.at >= down.at)

    # alive, and still serving this device and the others
    w.assert_alive()
    try:
        ai.set("senml-cbor", senml_pack(24.5))
        w.wait_value("mal", "temperature", lambda v: float(v) == 24.5, "= 24.5 (after the hostile datagrams)")
    finally:
        ai.set("senml-cbor", senml_pack(23.5))
    c = ai.get("counter")
    w.wait_value("counter", "count", lambda v: int(v) > c, f"> {c} (still polled)")


# --------------------------------------------------------------------------------------
# payloads


def test_accept_option_chooses_the_representation(w):
    """A server that varies a resource's format by the Accept option: each device gets
    the format it asks for and decodes it by the answer's Content-Format; a format the
    server does not offer is its 4.06, shown as the field's failure."""
    since = len(w.ai.requests())
    for fmt, cf in (("json", 50), ("cbor", 60), ("senml", 110)):
        r = w.readout(f"acc-{fmt}")
        assert r.value("temperature") == "19.25", (fmt, r.summary(), r.failures)
    seen = {q["accept"] for q in w.ai.requests(since, "/multi")}
    assert {50, 60, 110} <= seen, seen
    r = w.readout("acc-senml-cbor")
    assert "temperature" not in r.fields, r.summary()
    assert any("4.06" in f for f in r.failures), r.failures
    assert 112 in {q["accept"] for q in w.ai.requests(since, "/multi")}
    w.assert_alive()


def test_wrong_content_format_is_logged_and_polling_goes_on(w):
    ai = w.ai
    w.subscribe("cfdev")
    w.wait_value("cfdev", "temperature", lambda v: float(v) == 21.5, "= 21.5")
    m = w.alice.mark()
    since = w.gw.log_size()
    try:
        ai.configure("cbor", content_format=42)  # application/octet-stream: no decoder
        lines = wait_log(w.gw, since, "CoAP payload not usable", "cfdev", timeout=5)
        assert "42" in lines[0], lines[0]
        rmk, _ = ai.mark()
        ai.set("cbor", {"temperature": 33.5, "humidity": 40, "ok": True})
        wait_for(lambda: len(gateway_requests(w, "/cbor", rmk)) >= 3, 5, "polls of /cbor going on")
        r = w.readout("cfdev")  # max_age 0s: read now
        assert "temperature" not in r.fields, f"a value from an unreadable payload: {r.summary()}"
        assert any(f.startswith("temperature") and "/cbor" in f for f in r.failures), r.failures
    finally:
        ai.configure("cbor", content_format=None)
    w.wait_value("cfdev", "temperature", lambda v: float(v) == 33.5, "= 33.5 (readable again)")
    assert [p.status for p in w.alice.presences_since(m, jid("cfdev")) if p.type == "unavailable"] == [], \
        "a server that answers is reachable, whatever its payload"
    ai.set("cbor", {"temperature": 21.5, "humidity": 40, "ok": True})


# --------------------------------------------------------------------------------------
# libcoap


def test_libcoap_polled_and_observed(w):
    lc = w.lc
    r = w.wait_readout("lcpoll", lambda r: {"info", "data"} <= set(r.fields), "lcpoll's two fields")
    assert r.value("info").startswith(LIBCOAP_INFO), r.value("info")
    data = r.value("data")
    assert len(data) == 1500 and data.startswith("a123456789b123456789"), \
        f"/example_data is 1500 bytes in two blocks: {len(data)} {data[:40]!r}"
    # /time observed: readouts served from the notifications (max_age 5s), the time moving on
    clocks = set()
    wait_for(lambda: clocks.add(w.readout("lcobs").value("clock")) or len(clocks) >= 3, 10,
             "three distinct times from lcobs")
    assert all(LIBCOAP_TIME.match(c) for c in clocks), clocks
    # every GET of /time from the gateway's IPv4 socket is lcobs' (lcpoll reads / and
    # /example_data, lc6 goes over IPv6): one registration, no polling
    gets = [p for p in lc.received() if p["code"] == "GET" and "Uri-Path:time" in p["options"]
            and p["peer"].startswith("[::ffff:127.0.0.1]")]
    assert len(gets) == 1 and "Observe:0" in gets[0]["options"], gets
    tok = gets[0]["token"]
    notes = [p for p in lc.pdus(direction="out") if p["token"] == tok and "Observe:" in p["options"]]
    assert len(notes) >= 3, f"libcoap notifies every second: {notes[-3:]}"


# --------------------------------------------------------------------------------------
# discovery


EXPECTED_AI = {"/counter", "/sensor", "/setpoint", "/command", "/large", "/blob", "/senml", "/senml-cbor", "/cbor", "/multi",
               "/slow", "/hang", "/void"}
EXPECTED_LC = {"/", "/time", "/async", "/example_data"}


def discover(w, address: str) -> dict:
    """`fieldgate coap-discover address`: its skeleton parsed, after checking that it is TOML
    and, below an [xmpp] section, a configuration `fieldgate check` accepts."""
    proc = run_cli(w.gw.binary, "coap-discover", address, timeout=30)
    assert proc.returncode == 0, f"coap-discover {address}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    try:
        doc = tomllib.loads(proc.stdout)
    except tomllib.TOMLDecodeError as e:
        raise AssertionError(f"coap-discover {address} printed no TOML: {e}\n{proc.stdout}") from None
    devs = doc.get("device")
    assert isinstance(devs, list) and len(devs) == 1, proc.stdout
    d = devs[0]
    assert d["adapter"] == "coap" and d["coap"]["address"] == address, proc.stdout
    n = len(d["field"])
    assert f"# {n} resources found at {address}/.well-known/core" in proc.stdout, proc.stdout[:200]
    cfg = w.root / f"discovered-{next(SEQ)}.toml"
    cfg.write_text(gateway_toml(w.env.prosody, w.root / "discover-state", [], ACCESS) + "\n" + proc.stdout)
    check = run_cli(w.gw.binary, "check", "--config", str(cfg))
    assert check.returncode == 0, f"the skeleton of {address} is no valid configuration:\n{check.stdout}" \
                                  f"{check.stderr}\n{proc.stdout}"
    assert f"adapter=coap fields={n} " in check.stdout, check.stdout
    return d


def test_coap_discover_prints_a_skeleton(w):
    for address in (f"coap://127.0.0.1:{w.ai.port}", f"coap://[::1]:{w.ai.port}"):
        d = discover(w, address)
        paths = {f["coap"]["path"] for f in d["field"]}
        codes = {p for p in paths if p.startswith("/codes/")}
        assert paths - codes == EXPECTED_AI, f"{address}: {sorted(paths)}"
        assert "/codes/5.03" in codes and "/codes/4.04" in codes, sorted(codes)
        assert d["coap"].get("observe") is True, "/sensor is observable (obs)"
        types = {f["coap"]["path"]: f["type"] for f in d["field"]}
        # guessed from ct=110 (SenML) and rt="fg.counter"
        assert types["/senml"] == "double" and types["/counter"] == "long", types
    for address in (f"coap://127.0.0.1:{w.lc.port}", f"coap://[::1]:{w.lc.port}"):
        d = discover(w, address)
        paths = {f["coap"]["path"] for f in d["field"]}
        assert paths == EXPECTED_LC, f"{address}: {sorted(paths)}"
        assert d["coap"].get("observe") is True, "/time is observable (obs)"
        types = {f["coap"]["path"]: f["type"] for f in d["field"]}
        # if="clock" (its rt="ticks" notwithstanding): libcoap's /time answers a date as text
        assert types["/time"] == "string", types


# --------------------------------------------------------------------------------------
# IPv6


def test_ipv6_loopback(w):
    r = w.wait_readout("lc6", lambda r: "clock" in r.fields, "lc6.clock")
    assert LIBCOAP_TIME.match(r.value("clock")), r.value("clock")
    assert any(p["peer"].startswith("[::1]:") and p["code"] == "GET" for p in w.lc.received()), \
        "libcoap saw no request over IPv6"
    r = w.wait_readout("ai6", lambda r: "count" in r.fields, "ai6.count")
    assert int(r.value("count")) >= 1
    assert gateway_requests(w, "/counter", v6=True), "aiocoap saw no request over IPv6"
    r = w.wait_readout("zoned", lambda r: "count" in r.fields, "zoned.count")
    assert int(r.value("count")) >= 1
    down = w.subscribe("nozone", "unavailable")
    assert "does not resolve" in down.status, down.status
    r = w.readout("nozone")
    assert any("nosuchif0" in f for f in r.failures), (r.summary(), r.failures)
    w.assert_alive()
