"""Change-event subscriptions ("IoT Events" ProtoXEP, urn:xmpp:iot:events) through a real
XMPP server (Prosody and ejabberd), with raw stanzas: subscribe (req, minInterval, maxInterval, per-field changedBy /
changedUp / changedDown, currentValue), events as XEP-0323 <fields seqnr done='true'>
messages reusing the subscription's seqnr, unsubscribe, refusals, and the end of a
subscription whose holder went away (bounces, liveness pings from the device JID).

One server + gateway serves the module (per server); every test ends its own subscriptions.
"""

from __future__ import annotations

import itertools
import re
import time

import pytest

from harness import NS_CLIENT, NS_PING, sim_device, wait_for
from iot import (NS_SD, ModuleEnv, assert_accepted_first, brief, by_name, counter_at, expect_error,
                 fields_of, parse_iso, q, set_iq, sine_at, subscribe_iq, unsubscribe_iq)

pytestmark = pytest.mark.servers("prosody", "ejabberd")

USERS = ("alice", "bob", "carol", "dave", "erin", "frank")
J = {u: f"{u}@example.test" for u in USERS}
ACCESS = {
    "subscribe": [J["alice"], J["bob"], J["carol"], J["erin"], J["frank"]],
    "read": [J["alice"], J["bob"], J["erin"], J["frank"]],  # carol: subscribe only; dave: nothing
    "control": [J["alice"]],
}
SINE = {"kind": "sine", "period": "20s", "amplitude": 1.5, "offset": 4.0}
DEVICES = [
    sim_device("pump1", name="Pump 1", fields=[
        {"name": "pressure", "type": "double", "unit": "bar", "decimals": 2, "sim": SINE},
        {"name": "setpoint", "type": "double", "unit": "bar", "decimals": 1, "writable": True,
         "min": 0.0, "max": 100.0},
    ]),
    sim_device("meter1", name="Meter 1", serial="M-1", fields=[
        {"name": "energy", "type": "long", "unit": "Wh",
         "sim": {"kind": "counter", "start": 1000, "step": 5, "every": "1s"}},
    ]),
    sim_device("tank", name="Tank", fields=[
        {"name": "level", "type": "double", "unit": "m", "decimals": 1, "writable": True, "min": 0.0, "max": 100.0},
    ]),
]
PUMP, METER, TANK = (f"{d}@gw.example.test" for d in ("pump1", "meter1", "tank"))


@pytest.fixture(scope="module")
def m(xmpp_server):
    env = ModuleEnv(DEVICES, ACCESS, users=USERS, sections={"events": {"sample_interval": "200ms", "min_interval": "200ms"}},
                    server=xmpp_server)
    yield env
    env.close()


_seq = itertools.count(1)


def seq() -> int:
    return next(_seq)


def subscribe(c, dev, seqnr, fields=(), **kw):
    mk = c.mark_stanzas()
    r = c.iq(subscribe_iq(dev, seqnr, fields, **kw))
    assert r.ok, f"subscribe refused: {r.condition} {r.text}"
    acc = r.payload()
    assert acc is not None and acc.tag == q(NS_SD, "accepted") and acc.get("seqnr") == str(seqnr), brief(r.xml)
    return r, mk


def unsubscribe(c, dev, seqnr):
    r = c.iq(unsubscribe_iq(dev, seqnr))
    assert r.ok, f"unsubscribe: {r.condition} {r.text}"
    assert r.payload() is None, "unsubscribe is answered with an empty result"


def timed_events(c, seqnr, since=0, frm=None) -> list:
    """(arrival time, payload) of the events (<fields> in messages) of subscription `seqnr`."""
    out = []
    for t, s in c.timed_since(since):
        if s.tag != q(NS_CLIENT, "message"):
            continue
        if frm is not None and s.get("from") != f"{frm}/gw":
            continue
        out += [(t, p) for p in s if p.tag.startswith(f"{{{NS_SD}}}") and p.get("seqnr") == str(seqnr)]
    return out


def events(c, seqnr, since=0, frm=None) -> list:
    return [p for _t, p in timed_events(c, seqnr, since, frm)]


def wait_events(c, seqnr, n, since=0, timeout=10.0, frm=None) -> list:
    wait_for(lambda: len(events(c, seqnr, since, frm)) >= n, timeout, f"{n} events of subscription {seqnr}")
    return events(c, seqnr, since, frm)


def check_event(ev) -> list:
    """An event is a complete XEP-0323 <fields> message: done='true', one node."""
    assert ev.tag == q(NS_SD, "fields"), brief(ev)
    assert ev.get("done") == "true", f"an event is complete in one message: {brief(ev)}"
    return fields_of(ev)


def values(evs, name) -> list[str]:
    return [by_name(check_event(e))[name].value for e in evs]


def set_value(c, dev, name, value) -> None:
    r = c.iq(set_iq(dev, [("double", name, value)]))
    assert r.ok, f"set {name}={value}: {r.condition} {r.text}"



# --------------------------------------------------------------------------------------
# subscribe, req='true', unsubscribe


def test_req_true_sends_an_event_at_once(m):
    alice = m.client("alice")
    set_value(alice, PUMP, "setpoint", "12.5")
    s = seq()
    r, mk = subscribe(alice, PUMP, s, [{"name": "setpoint", "changedBy": 1}], momentary=True, req=True)
    try:
        ev = wait_events(alice, s, 1, mk, timeout=5, frm=PUMP)
        assert_accepted_first(alice, mk, r.xml.get("id"), s)
        f = check_event(ev[0])
        assert [(x.name, x.tag, x.value) for x in f] == [("setpoint", "numeric", "12.5")], \
            "only the subscribed field, with its precision"
        assert f[0].node == "pump1" and f[0].flag("momentary") and f[0].attrs.get("unit") == "bar"
        assert abs(parse_iso(f[0].timestamp) - time.time()) < 5
        # nothing changes: no further event
        time.sleep(1.0)
        alice.barrier(PUMP)
        assert len(events(alice, s, mk)) == 1, [brief(e) for e in events(alice, s, mk)]
    finally:
        unsubscribe(alice, PUMP, s)


def test_max_interval_and_unsubscribe(m):
    alice = m.client("alice")
    s = seq()
    r, mk = subscribe(alice, METER, s, [{"name": "energy"}], momentary=True, maxInterval="PT1S")
    try:
        wait_events(alice, s, 3, mk, timeout=6, frm=METER)
        timed = timed_events(alice, s, mk)[:3]
        arrivals = [t for t, _e in timed]
        evs = [e for _t, e in timed]
        assert_accepted_first(alice, mk, r.xml.get("id"), s)
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        assert all(0.5 <= g <= 2.5 for g in gaps), f"maxInterval PT1S: events {gaps} apart"
        stamps = []
        for e in evs:
            f = check_event(e)
            assert [(x.name, x.tag) for x in f] == [("energy", "long")]
            t = parse_iso(f[0].timestamp)
            assert int(f[0].value) in {counter_at(t, 1000, 5, 1.0), counter_at(t + 0.000999, 1000, 5, 1.0)}
            stamps.append(t)
        assert stamps == sorted(stamps) and len(set(stamps)) == 3, "every event carries a new reading"
    finally:
        unsubscribe(alice, METER, s)
    after = alice.mark_stanzas()
    time.sleep(2.2)
    alice.barrier(METER)
    assert events(alice, s, after) == [], "events after unsubscribe"
    # unsubscribing again (or an unknown seqnr) is still an empty result
    unsubscribe(alice, METER, s)
    unsubscribe(alice, METER, 987654)


def test_min_interval_holds_events_back(m):
    alice = m.client("alice")
    set_value(alice, PUMP, "setpoint", "10")
    s = seq()
    _r, mk = subscribe(alice, PUMP, s, [{"name": "setpoint", "changedBy": 1, "currentValue": 10}],
                       momentary=True, minInterval="PT2S")
    t0 = time.monotonic()
    try:
        set_value(alice, PUMP, "setpoint", "20")
        ev = wait_events(alice, s, 1, mk, timeout=6, frm=PUMP)
        t1 = time.monotonic()
        assert t1 - t0 >= 1.8, f"first event {t1 - t0:.2f}s after subscribing despite minInterval PT2S"
        assert values(ev, "setpoint") == ["20.0"]
        set_value(alice, PUMP, "setpoint", "30")
        set_value(alice, PUMP, "setpoint", "40")
        ev = wait_events(alice, s, 2, mk, timeout=6, frm=PUMP)
        t2 = time.monotonic()
        assert t2 - t1 >= 1.8, f"second event {t2 - t1:.2f}s after the first despite minInterval PT2S"
        assert values(ev, "setpoint") == ["20.0", "40.0"], "held back, then the latest value"
    finally:
        unsubscribe(alice, PUMP, s)


def test_changed_up_and_changed_down(m):
    alice = m.client("alice")
    set_value(alice, PUMP, "setpoint", "50")
    up, down, any_ = seq(), seq(), seq()
    _r, mk = subscribe(alice, PUMP, up, [{"name": "setpoint", "changedUp": 2, "currentValue": 50}], momentary=True)
    subscribe(alice, PUMP, down, [{"name": "setpoint", "changedDown": 2, "currentValue": 50}], momentary=True)
    # reports every change: after its event for a step, the others have been evaluated too
    subscribe(alice, PUMP, any_, [{"name": "setpoint", "changedBy": 0.5, "currentValue": 50}], momentary=True)
    try:
        steps = ["51", "53", "50", "47"]
        for i, v in enumerate(steps, 1):
            set_value(alice, PUMP, "setpoint", v)
            wait_events(alice, any_, i, mk, timeout=5, frm=PUMP)
            time.sleep(0.25)  # past the 200 ms floor of minInterval before the next step
        alice.barrier(PUMP)
        assert values(events(alice, any_, mk), "setpoint") == ["51.0", "53.0", "50.0", "47.0"]
        assert values(events(alice, up, mk), "setpoint") == ["53.0"], \
            "changedUp=2 from 50: only 53 (51 is too small, 50 and 47 are falls)"
        assert values(events(alice, down, mk), "setpoint") == ["47.0"], \
            "changedDown=2 from 50: only 47 (rises do not count, 50 is no fall)"
    finally:
        for s in (up, down, any_):
            unsubscribe(alice, PUMP, s)


def test_changed_by_on_a_moving_value(m):
    alice = m.client("alice")
    s = seq()
    _r, mk = subscribe(alice, PUMP, s, [{"name": "pressure", "changedBy": 0.3}], momentary=True)
    try:
        evs = wait_events(alice, s, 3, mk, timeout=15, frm=PUMP)[:3]
        readings = []
        for e in evs:
            f = check_event(e)
            assert [x.name for x in f] == ["pressure"]
            assert re.fullmatch(r"-?\d+\.\d{2}", f[0].value)
            t = parse_iso(f[0].timestamp)
            lo, hi = sorted((sine_at(t, 20, 1.5, 4.0), sine_at(t + 0.001, 20, 1.5, 4.0)))
            assert lo - 0.0051 <= float(f[0].value) <= hi + 0.0051, (f[0].value, f[0].timestamp)
            readings.append(float(f[0].value))
        for a, b in zip(readings, readings[1:]):
            assert abs(b - a) >= 0.3 - 0.011, f"an event without a change of 0.3: {readings}"
    finally:
        unsubscribe(alice, PUMP, s)


def test_field_list_limits_event_content(m):
    """A subscription naming fields reports those fields only, whatever the type flags (as a
    readout's field filter does)."""
    alice = m.client("alice")
    s = seq()
    _r, mk = subscribe(alice, METER, s, [{"name": "energy"}], maxInterval="PT1S")
    try:
        ev = wait_events(alice, s, 1, mk, timeout=5, frm=METER)
        assert [x.name for x in check_event(ev[0])] == ["energy"], \
            f"fields not subscribed to in the event: {[x.name for x in check_event(ev[0])]}"
    finally:
        unsubscribe(alice, METER, s)


def test_status_and_identity_types_in_events(m):
    alice = m.client("alice")
    s = seq()
    _r, mk = subscribe(alice, METER, s, status=True, identity=True, maxInterval="PT1S")
    try:
        ev = wait_events(alice, s, 1, mk, timeout=5, frm=METER)
        f = by_name(check_event(ev[0]))
        assert set(f) == {"reachable", "name", "serial"}, "status and identity, no momentary values"
        assert f["reachable"].value == "true" and f["name"].value == "Meter 1" and f["serial"].value == "M-1"
    finally:
        unsubscribe(alice, METER, s)


# --------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("name,payload,condition,mentions", [
    ("unknown_field", "<subscribe xmlns='urn:xmpp:iot:events' seqnr='5' momentary='true'>"
                      "<field name='nope' changedBy='1'/></subscribe>", "item-not-found", ["nope"]),
    ("other_node", "<subscribe xmlns='urn:xmpp:iot:events' seqnr='5' maxInterval='PT1S'><node nodeId='other'/>"
                   "</subscribe>", "item-not-found", []),
    ("never_reports", "<subscribe xmlns='urn:xmpp:iot:events' seqnr='5' momentary='true'><field name='setpoint'/>"
                      "</subscribe>", "bad-request", ["maxInterval"]),
    ("negative_change", "<subscribe xmlns='urn:xmpp:iot:events' seqnr='5'><field name='setpoint' changedBy='-1'/>"
                        "</subscribe>", "bad-request", ["changedBy"]),
    ("zero_change", "<subscribe xmlns='urn:xmpp:iot:events' seqnr='5'><field name='setpoint' changedUp='0'/>"
                    "</subscribe>", "bad-request", ["changedUp"]),
    ("nan_change", "<subscribe xmlns='urn:xmpp:iot:events' seqnr='5'><field name='setpoint' changedDown='NaN'/>"
                   "</subscribe>", "bad-request", ["changedDown"]),
    ("bad_max_interval", "<subscribe xmlns='urn:xmpp:iot:events' seqnr='5' maxInterval='soon'/>", "bad-request",
     ["maxInterval"]),
    ("bad_min_interval", "<subscribe xmlns='urn:xmpp:iot:events' seqnr='5' minInterval='5' maxInterval='PT1S'/>",
     "bad-request", ["minInterval"]),
    ("missing_seqnr", "<subscribe xmlns='urn:xmpp:iot:events' maxInterval='PT1S'/>", "bad-request", ["seqnr"]),
    ("non_numeric_seqnr", "<subscribe xmlns='urn:xmpp:iot:events' seqnr='x' maxInterval='PT1S'/>", "bad-request",
     ["seqnr"]),
    ("req_yes", "<subscribe xmlns='urn:xmpp:iot:events' seqnr='5' req='yes' maxInterval='PT1S'/>", "bad-request",
     ["req"]),
    ("unsubscribe_without_seqnr", "<unsubscribe xmlns='urn:xmpp:iot:events'/>", "bad-request", ["seqnr"]),
])
def test_subscribe_refusals(m, name, payload, condition, mentions):
    alice = m.client("alice")
    mk = alice.mark_stanzas()
    r = alice.iq(f"<iq type='get' to='{PUMP}'>{payload}</iq>")
    expect_error(r, condition, text_contains=mentions)
    time.sleep(0.3)
    alice.barrier(PUMP)
    assert events(alice, 5, mk) == [], "a refused subscription sends nothing"


def test_subscribe_access(m):
    carol, dave = m.client("carol"), m.client("dave")
    payload = subscribe_iq(PUMP, seq(), [{"name": "setpoint", "changedBy": 1}], momentary=True, req=True)
    expect_error(carol.iq(payload), "forbidden", "cancel")
    expect_error(dave.iq(payload), "service-unavailable")
    carol.barrier(m.env.domain)
    dave.barrier(m.env.domain)
    assert not [s for s in carol.stanzas + dave.stanzas if s.tag == q(NS_CLIENT, "message")]


def test_subscription_limit_per_requester(m):
    """[events] max_per_requester (default 16) per user: all of a bare JID's resources
    share it; resubscribing with the same seqnr replaces."""
    c = m.client("bob", resource="many")
    seqnrs = [seq() for _ in range(16)]
    try:
        for s in seqnrs:
            subscribe(c, METER, s, [{"name": "energy", "changedBy": 1e9}], momentary=True)
        subscribe(c, METER, seqnrs[0], [{"name": "energy", "changedBy": 1e9}], momentary=True)  # a replacement
        r = c.iq(subscribe_iq(METER, seq(), [{"name": "energy", "changedBy": 1e9}], momentary=True))
        expect_error(r, "resource-constraint", "wait", text_contains=["16"])
        # another resource of the same user shares the bound: one user cannot multiply it
        r = m.client("bob").iq(subscribe_iq(METER, seq(), [{"name": "energy", "changedBy": 1e9}],
                                            momentary=True))
        expect_error(r, "resource-constraint", "wait", text_contains=["16"])
        # another user is not affected
        s = seq()
        subscribe(m.client("alice"), METER, s, [{"name": "energy", "changedBy": 1e9}], momentary=True)
        unsubscribe(m.client("alice"), METER, s)
        # room again after an unsubscribe
        unsubscribe(c, METER, seqnrs[0])
        subscribe(c, METER, seqnrs[0], [{"name": "energy", "changedBy": 1e9}], momentary=True)
    finally:
        for s in seqnrs:
            unsubscribe(c, METER, s)


# --------------------------------------------------------------------------------------
# subscribers that go away


def test_subscriber_going_offline_stops_events(m):
    """erin's only session subscribes, then goes offline: the next event bounces and the
    gateway drops the subscription; erin logging in again with the same full JID gets none."""
    erin = m.fresh_client("erin", "phone")
    s = seq()
    before = m.gw.log_size()
    _r, mk = subscribe(erin, METER, s, [{"name": "energy"}], momentary=True, maxInterval="PT1S")
    wait_events(erin, s, 1, mk, timeout=5, frm=METER)
    erin.disconnect()
    wait_for(lambda: any("requester gone" in line and "erin@example.test/phone" in line
                         for line in m.gw.log_since(before).splitlines()),
             10, "the gateway to drop erin's subscription")
    erin.connect()
    mk = erin.mark_stanzas()
    time.sleep(2.5)  # more than two maxIntervals
    erin.barrier(METER)
    assert events(erin, s, mk) == [], "events still sent after the subscriber went offline"
    m.assert_alive()


def test_directed_unavailable_presence_ends_subscriptions(m):
    alice = m.client("alice", resource="directed")
    s = seq()
    _r, mk = subscribe(alice, METER, s, [{"name": "energy"}], momentary=True, maxInterval="PT1S")
    wait_events(alice, s, 1, mk, timeout=5, frm=METER)
    alice.send_raw(f"<presence type='unavailable' to='{METER}'/>")
    alice.barrier(METER)
    mk = alice.mark_stanzas()
    time.sleep(2.3)
    alice.barrier(METER)
    assert events(alice, s, mk) == [], "a subscriber that said it went offline still gets events"
    alice.send_raw(f"<presence to='{METER}'/>")


def test_liveness_pings_keep_answering_subscribers_and_drop_silent_ones(m):
    """Every 30 s the gateway pings each subscriber from the device JID. alice answers (slixmpp
    does) and keeps her subscription past the second ping; frank goes offline without a word
    (no event is due for him, so nothing else bounces) and is dropped when his ping bounces."""
    alice = m.client("alice", resource="live")
    frank = m.fresh_client("frank", "a")
    ctl = m.client("alice")
    set_value(ctl, TANK, "level", "10")
    sa, sf, sc = seq(), seq(), seq()
    before = m.gw.log_size()
    _r, mka = subscribe(alice, METER, sa, [{"name": "energy"}], momentary=True, maxInterval="PT2S")
    _r, mkf = subscribe(frank, TANK, sf, [{"name": "level", "changedBy": 5}], momentary=True)
    _r, mkc = subscribe(ctl, TANK, sc, [{"name": "level", "changedBy": 5}], momentary=True)
    try:
        def pings(c, mk, dev):
            return [(t, st) for t, st in c.timed_since(mk)
                    if st.tag == q(NS_CLIENT, "iq") and st.get("type") == "get"
                    and st.find(q(NS_PING, "ping")) is not None and st.get("from") == f"{dev}/gw"]

        # a first ping soon after subscribing, from the device's full JID
        wait_for(lambda: pings(frank, mkf, TANK), 5, "a liveness ping to frank")
        first_alice = wait_for(lambda: pings(alice, mka, METER), 5, "a liveness ping to alice")[0][0]
        frank.disconnect()
        # the next round: frank's ping bounces, he is dropped; alice answers hers
        wait_for(lambda: "liveness ping bounced" in m.gw.log_since(before), 40,
                 "the gateway to drop frank after his ping bounced")
        log = m.gw.log_since(before)
        gone = [line for line in log.splitlines() if "requester gone" in line]
        assert any("frank@example.test/a" in line and "liveness ping bounced" in line for line in gone), gone
        assert not any("alice@example.test/live" in line for line in gone), gone
        second = wait_for(lambda: len(pings(alice, mka, METER)) >= 2 and pings(alice, mka, METER), 10,
                          "a second liveness ping to alice")
        assert second[1][0] - first_alice >= 25, "liveness pings every 30 s"
        n = len(events(alice, sa, mka))
        wait_events(alice, sa, n + 1, mka, timeout=5, frm=METER)  # alice still gets her events

        # frank back online with the same full JID: a change he had subscribed to is not sent
        frank.connect()
        mkf = frank.mark_stanzas()
        mkc2 = ctl.mark_stanzas()
        set_value(ctl, TANK, "level", "30")
        assert values(wait_events(ctl, sc, 1, mkc2, timeout=5, frm=TANK), "level") == ["30.0"]
        ctl.barrier(TANK)
        frank.barrier(TANK)
        assert events(frank, sf, mkf) == [], "a dropped subscriber still gets events"
    finally:
        unsubscribe(alice, METER, sa)
        unsubscribe(ctl, TANK, sc)
    m.assert_alive()
