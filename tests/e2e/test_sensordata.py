"""XEP-0323 sensor-data readouts through a real XMPP server (Prosody and ejabberd): raw
stanzas for everything the specification defines, and slixmpp's own xep_0323 plugin as an
independent client within its limits (PROTOCOLS.md: numeric/string/boolean/dateTime/
timeSpan/enum only, completes on done='true' on <fields>, stops at the first <failure>).

One server + gateway serves the whole module (per server); every test uses its own sequence numbers.
"""

from __future__ import annotations

import itertools
import re
import statistics
import threading
import time

import pytest

from harness import NS_CLIENT, NS_DISCO_INFO, parse_disco_info, sim_device
from iot import (NS_CTL, NS_EV, NS_SD, ModuleEnv, all_fields, assert_accepted_first, brief, by_name,
                 cancel_iq, counter_at, expect_error, failure_texts, fields_of, iso, kinds, parse_iso, q, req_iq, sine_at,
                 subscribe_iq)

pytestmark = pytest.mark.servers("prosody", "ejabberd")

ALICE, BOB, CAROL, DAVE, ERIN = (f"{u}@example.test" for u in ("alice", "bob", "carol", "dave", "erin"))

# alice: read + control; bob: read; carol: subscribe only; dave: nothing; erin: read (only
# used by the test that disconnects her).
ACCESS = {"subscribe": [ALICE, BOB, CAROL, ERIN], "read": [ALICE, BOB, ERIN], "control": [ALICE]}

SINE = {"kind": "sine", "period": "60s", "amplitude": 1.5, "offset": 4.0}
ENERGY = {"kind": "counter", "start": 1000, "step": 5, "every": "1s"}  # > 2^32 today: a real long
TICKS = {"kind": "counter", "start": 0, "step": -1, "every": "1s"}  # negative, fits an int until 2038

DEVICES = [
    sim_device("pump1", name="Pump 1", model="P-300", serial="A1234", vendor="ACME Pumps", fields=[
        {"name": "pressure", "type": "double", "unit": "bar", "decimals": 2, "sim": SINE},
        {"name": "setpoint", "type": "double", "unit": "bar", "decimals": 1, "writable": True,
         "min": 0.0, "max": 10.0, "sim": {"kind": "constant", "value": 4.2}},
        {"name": "running", "type": "bool", "sim": {"kind": "constant", "value": True}},
        {"name": "mode", "type": "enum", "values": ["auto", "manual", "off"],
         "sim": {"kind": "constant", "value": "manual"}},
        {"name": "installed", "type": "timestamp"},
        {"name": "tag", "type": "string", "sim": {"kind": "constant", "value": "north wing"}},
    ]),
    sim_device("meter1", name="Meter 1", fields=[
        {"name": "energy", "type": "long", "unit": "Wh", "sim": ENERGY},
        {"name": "ticks", "type": "int", "sim": TICKS},
    ]),
    # only the cache test reads these two, so their cache state is known
    sim_device("cachemeter", name="Cache meter",
               fields=[{"name": "energy", "type": "long", "unit": "Wh", "sim": ENERGY}]),
    sim_device("nocache", name="No cache", max_age="0s",
               fields=[{"name": "energy", "type": "long", "unit": "Wh", "sim": ENERGY}]),
    sim_device("dead", name="Dead device", sim={"unreachable": "cable cut"}),
    sim_device("empty", name="Empty", fields=[]),
]

MAX_AGE = 2.0  # [readout] max_age


@pytest.fixture(scope="module")
def m(xmpp_server):
    env = ModuleEnv(DEVICES, ACCESS, users=("alice", "bob", "carol", "dave", "erin"),
                    sections={"readout": {"max_age": "2s"}}, server=xmpp_server)
    yield env
    env.close()


_seq = itertools.count(100)


def seq() -> int:
    return next(_seq)


def do_readout(c, to, seqnr=None, timeout=10.0, **kw):
    """A raw readout: (iq reply, message payloads of the readout, stanza mark)."""
    seqnr = seq() if seqnr is None else seqnr
    mk = c.mark_stanzas()
    r = c.iq(req_iq(to, seqnr, **kw))
    assert r.ok, f"readout {seqnr} of {to} refused: {r.condition} {r.text}"
    acc = r.payload()
    assert acc is not None and acc.tag == q(NS_SD, "accepted"), brief(r.xml)
    assert acc.get("seqnr") == str(seqnr)
    payloads = c.wait_readout_end(seqnr, mk, timeout)
    assert_accepted_first(c, mk, r.xml.get("id"), seqnr)
    return r, payloads, mk



def message_payloads(c, seqnr, mk):
    """The XEP-0323 payloads of `seqnr` that came in messages (not iq results)."""
    return [p for s in c.stanzas_since(mk) if s.tag == q(NS_CLIENT, "message")
            for p in s if p.tag.startswith(f"{{{NS_SD}}}") and p.get("seqnr") == str(seqnr)]


def ts_of(f) -> float:
    return parse_iso(f.timestamp)


def check_sine(value: str, stamp: str) -> None:
    """The sine value is consistent with its timestamp (t in [stamp, stamp + 1 ms): the
    timestamp is truncated to the millisecond; the value is rounded to 2 decimals)."""
    t = parse_iso(stamp)
    lo, hi = sorted((sine_at(t, 60, 1.5, 4.0), sine_at(t + 0.001, 60, 1.5, 4.0)))
    v = float(value)
    assert lo - 0.0051 <= v <= hi + 0.0051, f"pressure {value} at {stamp}: the sine gives {lo:.4f}..{hi:.4f}"


def check_counter(value: str, stamp: str, start: int, step: int) -> None:
    t = parse_iso(stamp)
    allowed = {counter_at(t, start, step, 1.0), counter_at(t + 0.000999, start, step, 1.0)}
    assert int(value) in allowed, f"counter {value} at {stamp}: expected one of {sorted(allowed)}"


# --------------------------------------------------------------------------------------
# discovery


def test_disco_features_follow_the_catalogue(m):
    alice = m.client("alice")
    expect = {
        # device: (sensordata, control, events)
        "pump1": (True, True, True),  # a writable field
        "meter1": (True, False, True),  # fields, none writable
        "dead": (True, False, True),
        "empty": (True, False, False),  # no fields: only status and identity can be read
    }
    for dev, (sd, ctl, ev) in expect.items():
        feats = parse_disco_info(alice.disco_info(m.dev(dev))).features
        assert NS_DISCO_INFO in feats
        assert (NS_SD in feats, NS_CTL in feats, NS_EV in feats) == (sd, ctl, ev), (dev, sorted(feats))


# --------------------------------------------------------------------------------------
# momentary readouts: values, precision, units, flags, order


def test_momentary_readout_values_precision_units_and_flags(m):
    alice = m.client("alice")
    r, payloads, _ = do_readout(alice, m.dev("pump1"), momentary=True)
    assert r.payload().get("queued") in (None, "false"), "an immediate readout is not queued"
    assert kinds(payloads) == ["fields"], f"one <fields> message expected, got {kinds(payloads)}"
    fields_el = payloads[0]
    assert fields_el.get("done") == "true"
    msg = alice.wait_stanza(lambda s: fields_el in list(s), timeout=1)
    assert msg.get("from") == m.full("pump1"), "readout messages come from the device's full JID"
    flds = fields_of(fields_el)
    assert [f.name for f in flds] == ["pressure", "setpoint", "running", "mode", "installed", "tag"], \
        "momentary fields in catalogue order, and nothing else (no status, no identity)"
    assert {f.node for f in flds} == {"pump1"}
    f = by_name(flds)

    p = f["pressure"]
    assert p.tag == "numeric" and p.attrs.get("unit") == "bar"
    assert re.fullmatch(r"-?\d+\.\d{2}", p.value), f"decimals=2 must give two decimals: {p.value!r}"
    check_sine(p.value, p.timestamp)
    assert p.flag("momentary") and p.flag("automaticReadout")
    assert "writable" not in p.attrs, "a read-only field is not flagged writable"

    s = f["setpoint"]
    assert (s.tag, s.value, s.attrs.get("unit")) == ("numeric", "4.2", "bar"), s
    assert s.attrs.get("writable") == "true"
    assert s.flag("momentary") and s.flag("automaticReadout")

    assert (f["running"].tag, f["running"].value) == ("boolean", "true")
    assert (f["mode"].tag, f["mode"].value) == ("enum", "manual")
    assert f["mode"].attrs.get("dataType"), "an enum field needs a dataType"
    assert (f["installed"].tag, f["installed"].value) == ("dateTime", "1970-01-01T00:00:00Z")
    assert (f["tag"].tag, f["tag"].value) == ("string", "north wing")
    for x in flds:
        assert x.flag("momentary") and x.flag("automaticReadout"), x
        assert not (x.flag("status") or x.flag("identity")), x
        # a timestamp with milliseconds at most, in UTC
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", x.timestamp), x.timestamp
        assert abs(ts_of(x) - time.time()) < MAX_AGE + 5


def test_int_and_long_fields(m):
    alice = m.client("alice")
    _r, payloads, _ = do_readout(alice, m.dev("meter1"), momentary=True)
    f = by_name(all_fields(payloads))
    assert set(f) == {"energy", "ticks"}
    e, t = f["energy"], f["ticks"]
    assert e.tag == "long", f"a long field is written as <long>: {e}"
    assert int(e.value) > 2**31, "the counter is beyond 32 bits: it must not be truncated"
    check_counter(e.value, e.timestamp, 1000, 5)
    assert t.tag == "int", f"an int field is written as <int>: {t}"
    assert -(2**31) <= int(t.value) < 0
    check_counter(t.value, t.timestamp, 0, -1)
    assert e.flag("momentary") and e.flag("automaticReadout") and t.flag("momentary")


def test_status_fields_only_when_requested(m):
    alice = m.client("alice")
    _r, payloads, _ = do_readout(alice, m.dev("pump1"), status=True)
    flds = all_fields(payloads)
    assert [(f.name, f.tag, f.value) for f in flds] == [("reachable", "boolean", "true")], \
        "status only: reachable, no momentary values, no lastError on a healthy device"
    assert flds[0].flag("status") and not flds[0].flag("momentary")

    _r, payloads, _ = do_readout(alice, m.dev("pump1"), momentary=True, status=True)
    names = [f.name for f in all_fields(payloads)]
    assert "reachable" in names and "pressure" in names and "name" not in names

    # an unreachable device: reachable=false and lastError with the reason
    _r, payloads, _ = do_readout(alice, m.dev("dead"), status=True)
    assert kinds(payloads) == ["fields"], "status of an unreachable device is no failure"
    f = by_name(all_fields(payloads))
    assert set(f) == {"reachable", "lastError"}
    assert (f["reachable"].tag, f["reachable"].value) == ("boolean", "false")
    assert f["lastError"].tag == "string" and "cable cut" in f["lastError"].value
    assert f["lastError"].flag("status")


def test_identity_fields_only_when_requested(m):
    alice = m.client("alice")
    _r, payloads, _ = do_readout(alice, m.dev("pump1"), identity=True)
    flds = all_fields(payloads)
    assert [(f.name, f.tag, f.value) for f in flds] == [
        ("name", "string", "Pump 1"), ("model", "string", "P-300"),
        ("serial", "string", "A1234"), ("vendor", "string", "ACME Pumps")]
    assert all(f.flag("identity") and not f.flag("momentary") for f in flds)
    # a device without model/serial/vendor only has its name
    _r, payloads, _ = do_readout(alice, m.dev("meter1"), identity=True)
    assert [(f.name, f.value) for f in all_fields(payloads)] == [("name", "Meter 1")]
    # identity is not part of a momentary readout
    _r, payloads, _ = do_readout(alice, m.dev("pump1"), momentary=True)
    assert not {"name", "model", "serial", "vendor"} & {f.name for f in all_fields(payloads)}


def test_identification_is_read_as_identity(m):
    """One XEP-0323 example spells the flag `identification`: accepted as `identity`."""
    alice = m.client("alice")
    _r, payloads, _ = do_readout(alice, m.dev("meter1"), identification=True)
    assert [(f.name, f.value) for f in all_fields(payloads)] == [("name", "Meter 1")]
    assert all_fields(payloads)[0].flag("identity")


def test_no_type_flag_means_all_types(m):
    alice = m.client("alice")
    _r, payloads, _ = do_readout(alice, m.dev("meter1"))
    assert {f.name for f in all_fields(payloads)} == {"energy", "ticks", "reachable", "name"}


def test_field_filter(m):
    alice = m.client("alice")
    _r, payloads, _ = do_readout(alice, m.dev("pump1"), fields=["setpoint"], momentary=True)
    assert [f.name for f in all_fields(payloads)] == ["setpoint"]

    # the filter applies to status and identity fields too; order follows the catalogue
    _r, payloads, _ = do_readout(alice, m.dev("pump1"), fields=["serial", "pressure"], all=True)
    assert [f.name for f in all_fields(payloads)] == ["pressure", "serial"]

    # an unknown name: the known fields, then a <failure> naming it, last, with done
    _r, payloads, _ = do_readout(alice, m.dev("pump1"), fields=["setpoint", "nope"], momentary=True)
    assert kinds(payloads) == ["fields", "failure"], kinds(payloads)
    assert payloads[0].get("done") is None, "done belongs on the last message only"
    assert payloads[1].get("done") == "true"
    assert [f.name for f in fields_of(payloads[0])] == ["setpoint"]
    texts = failure_texts(payloads)
    assert len(texts) == 1 and "nope" in texts[0], texts


def test_node_filter(m):
    alice = m.client("alice")
    pump = m.dev("pump1")
    r = alice.iq(req_iq(pump, seq(), nodes=["other"], momentary=True))
    expect_error(r, "item-not-found", "cancel")
    _r, payloads, _ = do_readout(alice, pump, nodes=["pump1"], fields=["setpoint"], momentary=True)
    assert [(f.node, f.name) for f in all_fields(payloads)] == [("pump1", "setpoint")]


def test_unreachable_device_failure_comes_last_with_reason(m):
    alice = m.client("alice")
    dead = m.dev("dead")
    seqnr = seq()
    _r, payloads, mk = do_readout(alice, dead, seqnr, momentary=True, status=True)
    assert kinds(payloads) == ["fields", "failure"], kinds(payloads)
    fields_el, failure = payloads
    assert fields_el.get("done") is None
    assert failure.get("done") == "true"
    f = by_name(fields_of(fields_el))
    assert set(f) == {"reachable", "lastError"}, "the requested status fields are still delivered"
    assert f["reachable"].value == "false"
    errors = failure.findall(q(NS_SD, "error"))
    assert errors, brief(failure)
    for e in errors:
        assert e.get("nodeId") == "dead"
        assert e.get("timestamp") and abs(parse_iso(e.get("timestamp")) - time.time()) < 10
        assert "cable cut" in (e.text or ""), e.text
    assert any("pressure" in (e.text or "") for e in errors), "the failure names the field not read"
    # nothing after the failure
    alice.barrier(dead)
    assert kinds(message_payloads(alice, seqnr, mk)) == ["fields", "failure"]

    # momentary only: a failure, no fields at all
    _r, payloads, _ = do_readout(alice, dead, momentary=True)
    assert kinds(payloads) == ["failure"] and payloads[0].get("done") == "true"


# --------------------------------------------------------------------------------------
# scheduled readouts, cancel, conflicts


def test_when_in_the_future_is_queued_then_started(m):
    """A queued readout: accepted queued='true', then <started>, then the fields, read when
    the readout runs: a value cached when the request came in but older than max_age by
    `when` must not be served."""
    alice = m.client("alice")
    pump = m.dev("pump1")
    # a fresh pressure value in the cache now; `when` is later than its max_age
    do_readout(alice, pump, momentary=True, fields=["pressure"])
    seqnr = seq()
    when = time.time() + MAX_AGE + 0.5
    mk = alice.mark_stanzas()
    r = alice.iq(req_iq(pump, seqnr, when=iso(when), momentary=True, fields=["pressure"]))
    assert r.ok, r.condition
    acc = r.payload()
    assert acc.tag == q(NS_SD, "accepted") and acc.get("queued") == "true", brief(r.xml)
    payloads = alice.wait_readout_end(seqnr, mk, timeout=10)
    t_end = time.time()
    assert kinds(payloads) == ["started", "fields"], kinds(payloads)
    assert_accepted_first(alice, mk, r.xml.get("id"), seqnr)
    f = all_fields(payloads)
    assert [x.name for x in f] == ["pressure"]
    age = when - ts_of(f[0])
    assert age <= MAX_AGE, (f"a readout scheduled for {iso(when)} served a value read at {f[0].timestamp}, "
                            f"{age:.2f}s old then, older than max_age ({MAX_AGE}s)")
    assert t_end >= when - 0.05
    check_sine(f[0].value, f[0].timestamp)

    # a `when` in the past is not queued
    r, payloads, _ = do_readout(alice, pump, when=iso(time.time() - 60), momentary=True, fields=["setpoint"])
    assert r.payload().get("queued") in (None, "false")
    assert kinds(payloads) == ["fields"]


def test_cancel_queued_readout(m):
    alice = m.client("alice")
    pump = m.dev("pump1")
    seqnr = seq()
    when = time.time() + 1.5
    mk = alice.mark_stanzas()
    r = alice.iq(req_iq(pump, seqnr, when=iso(when), momentary=True))
    assert r.ok and r.payload().get("queued") == "true"
    c = alice.iq(cancel_iq(pump, seqnr))
    assert c.ok, f"cancel refused: {c.condition} {c.text}"
    cancelled = c.payload()
    assert cancelled is not None and cancelled.tag == q(NS_SD, "cancelled") and cancelled.get("seqnr") == str(seqnr)
    # past the scheduled time: nothing may come for that readout
    time.sleep(max(0.0, when - time.time()) + 1.0)
    alice.barrier(pump)
    late = [kinds([p])[0] for p in message_payloads(alice, seqnr, mk)]
    assert late == [], f"a cancelled readout sent {late}"
    # cancelling it again (or anything unknown): item-not-found
    expect_error(alice.iq(cancel_iq(pump, seqnr)), "item-not-found")
    # the seqnr is free again
    _r, payloads, _ = do_readout(alice, pump, seqnr, momentary=True, fields=["setpoint"])
    assert [f.name for f in all_fields(payloads)] == ["setpoint"]


def test_duplicate_seqnr_in_progress_is_conflict(m):
    alice = m.client("alice")
    pump = m.dev("pump1")
    seqnr = seq()
    r = alice.iq(req_iq(pump, seqnr, when=iso(time.time() + 5), momentary=True))
    assert r.ok and r.payload().get("queued") == "true"
    try:
        dup = alice.iq(req_iq(pump, seqnr, momentary=True))
        expect_error(dup, "conflict", text_contains=[str(seqnr)])
        # seqnr is unique per requester only: bob may use the same number
        bob = m.client("bob")
        _r, payloads, _ = do_readout(bob, pump, seqnr, momentary=True, fields=["setpoint"])
        assert [f.name for f in all_fields(payloads)] == ["setpoint"]
    finally:
        assert alice.iq(cancel_iq(pump, seqnr)).ok


def test_requester_limit_is_resource_constraint(m):
    """[readout] max_per_requester (default 64) readouts in progress or queued per user (bare
    JID: all its resources together); the next is refused with resource-constraint, from any
    of the user's resources; other users are not affected; room again after a cancel."""
    c = m.client("alice", resource="limit")
    pump = m.dev("pump1")
    base = 50_000
    when = iso(time.time() + 30)
    ids = [f"lim-{i}" for i in range(65)]
    mk = c.mark_stanzas()
    c.send_raw("".join(req_iq(pump, base + i, iq_id=ids[i], when=when, momentary=True) for i in range(65)))
    try:
        replies = [c.wait_stanza(lambda s, i=i: s.get("id") == i and s.get("type") in ("result", "error"), mk,
                                 20, f"reply to {i}") for i in ids]
        types = [s.get("type") for s in replies]
        assert types[:64] == ["result"] * 64, f"the first 64 are accepted: {types}"
        assert types[64] == "error", "the 65th readout in progress must be refused"
        err = replies[64].find(q(NS_CLIENT, "error"))
        assert err.get("type") == "wait"
        assert err.find("{urn:ietf:params:xml:ns:xmpp-stanzas}resource-constraint") is not None, brief(replies[64])
        text = err.findtext("{urn:ietf:params:xml:ns:xmpp-stanzas}text") or ""
        assert "64" in text, text
        # another resource of the same user shares the bound: a user cannot multiply it
        r = m.client("alice").iq(req_iq(pump, seq(), momentary=True))
        assert not r.ok and r.condition == "resource-constraint", f"{r.condition} {r.text}"
        # another user is not affected
        _r, payloads, _ = do_readout(m.client("bob"), pump, momentary=True, fields=["setpoint"])
        assert kinds(payloads) == ["fields"]
        # cancel one: room for one more
        assert c.iq(cancel_iq(pump, base)).ok
        r = c.iq(req_iq(pump, base + 64, when=when, momentary=True))
        assert r.ok, f"after a cancel there is room again: {r.condition}"
    finally:
        c.send_raw("".join(f"<iq type='get' id='lim-c{i}' to='{pump}'><cancel xmlns='{NS_SD}' seqnr='{base + i}'/></iq>"
                           for i in range(1, 65)))
        c.wait_stanza(lambda s: s.get("id") == "lim-c64", mk, 20, "the last cancel's answer")


# --------------------------------------------------------------------------------------
# cache


def test_cached_readout_reaches_the_client_in_one_read(m):
    """A readout served from the cache leaves the gateway in one write, so Prosody reads
    the iq result and the <fields> message together and passes them on together: they come
    out of one read of the client's socket. Written apart, Prosody (Nagle's algorithm on, its
    default) holds the second until the client ACKs the first: a delayed ACK, ~40 ms.

    ejabberd routes each stanza on its own and writes each to the client socket by itself
    (most readouts arrive in two reads), but without that wait: the message follows the
    result within a millisecond or so, never a delayed ACK later."""
    c = m.client("erin", resource="wire")
    dev = m.dev("meter1")
    do_readout(c, dev, momentary=True)  # fills the cache, if it was not already
    chunks: list[str] = []
    times: list[float] = []  # when each chunk was read
    proto = c.xmpp
    received = proto.data_received

    def spy(data):
        chunks.append(data.decode() if isinstance(data, (bytes, bytearray)) else str(data))
        times.append(time.monotonic())
        received(data)

    proto.data_received = spy
    seqnrs, stamps = [], []
    try:
        for _ in range(20):
            _r, payloads, _ = do_readout(c, dev, momentary=True)
            seqnrs.append(int(payloads[-1].get("seqnr")))
            stamps.append(all_fields(payloads)[0].timestamp)
    finally:
        proto.data_received = received
    seq_attr = r"""seqnr=['"](\d+)['"]"""
    together, apart = [], []
    gaps = []
    for n in seqnrs:
        with_acc = {i for i, ch in enumerate(chunks)
                    if str(n) in re.findall(r"<accepted[^>]*" + seq_attr, ch)}
        with_fields = {i for i, ch in enumerate(chunks)
                       if str(n) in re.findall(r"<fields[^>]*" + seq_attr, ch)}
        assert with_acc and with_fields, f"readout {n} not seen on the wire: {chunks[-3:]}"
        (together if with_acc & with_fields else apart).append(n)
        gaps.append(times[min(with_fields)] - times[min(with_acc)])
    # a readout that found its value past max_age reads the device; that one may arrive in
    # two pieces (the read takes its time), so at most one per cache expiry
    expiries = sum(1 for a, b in zip(stamps, stamps[1:]) if a != b)
    if m.env.server_name == "prosody":
        assert len(apart) <= expiries, (
            f"cached readouts arrived in two reads: {apart} (together: {together}, "
            f"cache expiries: {expiries})")
    else:
        # a delayed ACK would hold every second write ~40 ms; the median shows it
        ms = sorted(g * 1000 for g in gaps)
        assert statistics.median(ms) < 10, f"<fields> arrived this long after the result (ms): {ms}"


def test_cache_max_age(m):
    alice = m.client("alice")
    dev = m.dev("cachemeter")
    _r, p1, _ = do_readout(alice, dev, momentary=True)
    _r, p2, _ = do_readout(alice, dev, momentary=True)
    a, b = all_fields(p1)[0], all_fields(p2)[0]
    assert time.time() - ts_of(a) < MAX_AGE, "test too slow to check the cache"
    assert (b.value, b.timestamp) == (a.value, a.timestamp), \
        f"a second readout within max_age must be served from the cache: {a} vs {b}"
    check_counter(a.value, a.timestamp, 1000, 5)
    # past max_age: a new reading
    time.sleep(max(0.0, ts_of(a) + MAX_AGE + 0.3 - time.time()))
    _r, p3, _ = do_readout(alice, dev, momentary=True)
    c = all_fields(p3)[0]
    assert ts_of(c) >= ts_of(a) + MAX_AGE, f"reading older than max_age served: {a.timestamp} then {c.timestamp}"
    assert int(c.value) > int(a.value), "the counter moved on"
    check_counter(c.value, c.timestamp, 1000, 5)

    # a device with its own max_age = 0s is read every time
    nc = m.dev("nocache")
    _r, p1, _ = do_readout(alice, nc, momentary=True)
    time.sleep(0.01)
    _r, p2, _ = do_readout(alice, nc, momentary=True)
    assert all_fields(p1)[0].timestamp != all_fields(p2)[0].timestamp


# --------------------------------------------------------------------------------------
# access


def test_access_read_right_required(m):
    pump = m.dev("pump1")
    carol = m.client("carol")  # may subscribe to presence, may not read
    r = carol.iq(req_iq(pump, seq(), momentary=True))
    expect_error(r, "forbidden", "cancel")
    r = carol.iq(subscribe_iq(pump, seq(), [{"name": "pressure", "changedBy": 1}], momentary=True))
    expect_error(r, "forbidden", "cancel")
    dave = m.client("dave")  # no right at all: the device does not exist for him
    for payload in (req_iq(pump, seq(), momentary=True),
                    subscribe_iq(pump, seq(), [{"name": "pressure", "changedBy": 1}], momentary=True)):
        expect_error(dave.iq(payload), "service-unavailable")
    # bob may read
    _r, payloads, _ = do_readout(m.client("bob"), pump, momentary=True, fields=["setpoint"])
    assert kinds(payloads) == ["fields"]
    # nothing was sent to carol or dave besides the errors
    for c in (carol, dave):
        c.barrier(m.env.domain)
        assert not [s for s in c.stanzas if s.tag == q(NS_CLIENT, "message")], "no readout messages"


# --------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("name,req,mentions", [
    ("missing_seqnr", "<req xmlns='urn:xmpp:iot:sensordata' momentary='true'/>", ["seqnr"]),
    ("non_numeric_seqnr", "<req xmlns='urn:xmpp:iot:sensordata' seqnr='abc' momentary='true'/>", ["seqnr", "abc"]),
    ("negative_seqnr", "<req xmlns='urn:xmpp:iot:sensordata' seqnr='-1' momentary='true'/>", ["seqnr"]),
    ("momentary_yes", "<req xmlns='urn:xmpp:iot:sensordata' seqnr='7' momentary='yes'/>", ["momentary", "yes"]),
    ("bad_when", "<req xmlns='urn:xmpp:iot:sensordata' seqnr='7' when='2026-13-45T25:00:00Z'/>", ["when"]),
    ("when_not_a_date", "<req xmlns='urn:xmpp:iot:sensordata' seqnr='7' when='tomorrow'/>", ["when"]),
    ("unknown_child", "<req xmlns='urn:xmpp:iot:sensordata' seqnr='7'><bogus/></req>", ["bogus"]),
    ("field_without_name", "<req xmlns='urn:xmpp:iot:sensordata' seqnr='7'><field/></req>", ["name"]),
    ("cancel_without_seqnr", "<cancel xmlns='urn:xmpp:iot:sensordata'/>", ["seqnr"]),
])
def test_bad_request_input(m, name, req, mentions):
    alice = m.client("alice")
    mk = alice.mark_stanzas()
    r = alice.iq(f"<iq type='get' to='{m.dev('pump1')}'>{req}</iq>")
    expect_error(r, "bad-request", "modify", text_contains=mentions)
    alice.barrier(m.dev("pump1"))
    assert not [s for s in alice.stanzas_since(mk) if s.tag == q(NS_CLIENT, "message")], \
        "a refused readout sends nothing"


# --------------------------------------------------------------------------------------
# load and departures


def test_thousand_pipelined_readouts(m):
    """1,000 readouts sent back to back by one requester: each is accepted and completed, or
    refused with resource-constraint; nothing hangs; another requester is served meanwhile."""
    flood = m.client("alice", resource="flood")
    bob = m.client("bob")
    pump, meter = m.dev("pump1"), m.dev("meter1")
    n = 1000
    base = 100_000
    mk = flood.mark_stanzas()
    batch = "".join(req_iq(pump if i % 2 else meter, base + i, iq_id=f"fl-{i}", momentary=True) for i in range(n))
    t0 = time.monotonic()
    flood.send_raw(batch)

    # bob reads meanwhile, unaffected
    bob_times = []
    for _ in range(5):
        t = time.monotonic()
        _r, payloads, _ = do_readout(bob, meter, momentary=True, timeout=15)
        bob_times.append(time.monotonic() - t)
        assert kinds(payloads) == ["fields"]
        assert {f.name for f in all_fields(payloads)} == {"energy", "ticks"}

    # every request answered
    def answers():
        got = {}
        for s in flood.stanzas_since(mk):
            i = s.get("id", "")
            if s.tag == q(NS_CLIENT, "iq") and i.startswith("fl-"):
                got[int(i[3:])] = s
        return got

    deadline = time.monotonic() + 90
    while len(answers()) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    got = answers()
    missing = sorted(set(range(n)) - set(got))
    assert not missing, f"{len(missing)} of {n} readouts never answered, e.g. {missing[:5]}"
    accepted = [i for i, s in got.items() if s.get("type") == "result"]
    refused = [i for i, s in got.items() if s.get("type") == "error"]
    for i in refused:
        err = got[i].find(q(NS_CLIENT, "error"))
        assert err.find("{urn:ietf:params:xml:ns:xmpp-stanzas}resource-constraint") is not None, brief(got[i])
    for i in accepted:
        acc = got[i].find(q(NS_SD, "accepted"))
        assert acc is not None and acc.get("seqnr") == str(base + i)

    # every accepted readout completes with its fields (done='true')
    def done_seqnrs():
        out = set()
        for s in flood.stanzas_since(mk):
            for p in s:
                if p.tag == q(NS_SD, "fields") and p.get("done") == "true":
                    out.add(int(p.get("seqnr")))
        return out

    want = {base + i for i in accepted}
    while not want <= done_seqnrs() and time.monotonic() < deadline:
        time.sleep(0.2)
    not_done = sorted(want - done_seqnrs())
    assert not not_done, f"{len(not_done)} accepted readouts never completed, e.g. {not_done[:5]}"
    # no fields for refused ones
    assert not done_seqnrs() & {base + i for i in refused}
    print(f"1000 readouts: {len(accepted)} accepted, {len(refused)} refused, "
          f"{time.monotonic() - t0:.1f}s; bob's readouts took {[round(t, 2) for t in bob_times]}s")
    assert max(bob_times) < 10
    assert flood.ping(pump).ok and bob.ping(pump).ok
    m.assert_alive()


def test_requester_leaving_mid_readout(m):
    """A requester that disconnects with a readout queued: the gateway sends into the void
    (the server bounces), keeps serving others, does not crash."""
    erin = m.fresh_client("erin", "gone")
    pump = m.dev("pump1")
    pid = m.gw.pid
    before = m.gw.log_size()
    when = time.time() + 1.0
    seqnrs = [seq() for _ in range(3)]
    for s in seqnrs:
        r = erin.iq(req_iq(pump, s, when=iso(when), momentary=True))
        assert r.ok and r.payload().get("queued") == "true"
    erin.disconnect()
    time.sleep(max(0.0, when - time.time()) + 1.0)
    alice = m.client("alice")
    _r, payloads, _ = do_readout(alice, pump, momentary=True, fields=["setpoint"])
    assert kinds(payloads) == ["fields"]
    assert alice.ping(pump).ok
    assert m.gw.running and m.gw.pid == pid
    log = m.gw.log_since(before)
    assert "panicked" not in log, log
    m.assert_alive()


# --------------------------------------------------------------------------------------
# slixmpp's xep_0323 plugin as the client


class PluginReadout:
    """Drives slixmpp's xep_0323 `request_data` and records its callbacks in order."""

    def __init__(self, client):
        self.c = client
        self.events: list[dict] = []
        self.cond = threading.Condition()
        self.seqnr = None

    def callback(self, **kw):
        with self.cond:
            self.events.append(kw)
            self.cond.notify_all()

    def request(self, to: str, flags: dict | None = None, fields=None, nodeIds=None) -> "PluginReadout":
        plugin = lambda: self.c.xmpp.plugin["xep_0323"]  # noqa: E731
        self.seqnr = self.c.lt.call(lambda: plugin().request_data(
            self.c.xmpp.boundjid.full, to, self.callback, nodeIds=nodeIds, fields=fields, flags=flags))
        return self

    def cancel(self) -> None:
        self.c.lt.call(lambda: self.c.xmpp.plugin["xep_0323"].cancel_request(self.seqnr))

    def wait(self, result: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events:
                    if e.get("result") == result:
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {result!r} callback within {timeout}s; got {self.results()}")
                self.cond.wait(left)

    def results(self) -> list[str]:
        with self.cond:
            return [e.get("result") for e in self.events]


@pytest.fixture(scope="module")
def plug(m):
    """alice on a separate resource with slixmpp's xep_0323 plugin (its seqnrs are its own)."""
    return m.client("alice", resource="plugin323", plugins=["xep_0323"])


def test_slixmpp_plugin_momentary_readout(m, plug):
    ro = PluginReadout(plug).request(m.dev("pump1"), flags={"momentary": "true"})
    ro.wait("done")
    res = ro.results()
    # one "fields" callback per <timestamp> (cached and fresh values have different ones)
    assert res[0] == "accepted" and res[-1] == "done" and set(res[1:-1]) == {"fields"}, res
    got, stamp = {}, {}
    for cb in ro.events[1:-1]:
        assert cb["nodeId"] == "pump1"
        assert str(cb["from_jid"]) == m.full("pump1")
        for f in cb["fields"]:
            assert f["name"] not in got, f"{f['name']} twice"
            got[f["name"]] = f
            stamp[f["name"]] = cb["timestamp"]
    assert set(got) == {"pressure", "setpoint", "running", "mode", "installed", "tag"}
    p = got["pressure"]
    assert p["typename"] == "numeric" and p["unit"] == "bar"
    assert re.fullmatch(r"-?\d+\.\d{2}", p["value"])
    check_sine(p["value"], stamp["pressure"])
    assert p["flags"].get("momentary") == "true" and p["flags"].get("automaticReadout") == "true"
    assert (got["setpoint"]["typename"], got["setpoint"]["value"]) == ("numeric", "4.2")
    assert (got["running"]["typename"], got["running"]["value"]) == ("boolean", "true")
    assert (got["mode"]["typename"], got["mode"]["value"]) == ("enum", "manual")
    assert got["mode"].get("dataType")
    assert (got["installed"]["typename"], got["installed"]["value"]) == ("dateTime", "1970-01-01T00:00:00Z")
    assert (got["tag"]["typename"], got["tag"]["value"]) == ("string", "north wing")


def test_slixmpp_plugin_completes_without_int_and_long(m, plug):
    """The plugin drops <int>/<long> (it does not know them) but the readout still completes
    (done='true' on <fields>), and the string identity fields come through."""
    ro = PluginReadout(plug).request(m.dev("meter1"), flags={"momentary": "true", "identity": "true"})
    ro.wait("done")
    res = ro.results()
    assert res[0] == "accepted" and res[-1] == "done" and set(res[1:-1]) == {"fields"}, res
    names = [f["name"] for e in ro.events if e["result"] == "fields" for f in e["fields"]]
    assert names == ["name"], names


def test_slixmpp_plugin_failure_of_unreachable_device(m, plug):
    ro = PluginReadout(plug).request(m.dev("dead"), flags={"momentary": "true", "status": "true"})
    fail = ro.wait("failure")
    assert ro.results() == ["accepted", "fields", "failure"], ro.results()
    assert fail["nodeId"] == "dead"
    assert "cable cut" in fail["error_msg"]
    assert fail["timestamp"]
    status = {f["name"]: f["value"] for f in ro.events[1]["fields"]}
    assert status.get("reachable") == "false" and "cable cut" in status.get("lastError", "")


def test_slixmpp_plugin_queued_readout_and_cancel(m, plug):
    ro = PluginReadout(plug).request(m.dev("pump1"), flags={"momentary": "true", "when": iso(time.time() + 1.0)},
                                     fields=["setpoint"])
    ro.wait("done")
    assert ro.results() == ["queued", "started", "fields", "done"], ro.results()
    assert [f["name"] for f in ro.events[2]["fields"]] == ["setpoint"]

    ro = PluginReadout(plug).request(m.dev("pump1"), flags={"momentary": "true", "when": iso(time.time() + 2.0)})
    ro.wait("queued")
    ro.cancel()
    ro.wait("cancelled")
    time.sleep(2.3)
    plug.barrier(m.dev("pump1"))
    assert ro.results() == ["queued", "cancelled"], ro.results()
