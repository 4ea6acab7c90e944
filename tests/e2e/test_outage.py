"""Outage buffering (issue 14): change events due while the component link is down are
kept and delivered after the reconnect, in order and before new ones, each with an
XEP-0203 <delay> (stamp = when the value was read, from = the component domain).

The gateway reaches Prosody through a TCP proxy (harness.TcpProxy) that the tests
interrupt: every byte dropped on the open connection (the network cut silently), new
connections refused, until the test restores it. The subscriber stays online on its own
connection to Prosody throughout. The sim device's counter changes every 500 ms, so
every value it had is known (iot.counter_at) and a lost change shows as a gap.
"""

from __future__ import annotations

import itertools
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from harness import NS_CLIENT, sim_device, wait_for
from iot import NS_SD, ModuleEnv, counter_at, extra_sections, fields_of, gateway_toml, make_env, parse_iso, q, \
    subscribe_iq

NS_DELAY = "urn:xmpp:delay"
DOMAIN = "gw.example.test"
ALICE = "alice@example.test"
ACCESS = {"subscribe": [ALICE], "read": [ALICE]}
EVERY = 0.5
COUNTER = {"kind": "counter", "start": 0, "step": 1, "every": f"{int(EVERY * 1000)}ms"}
DEVICES = [sim_device("meter", name="Meter", fields=[{"name": "n", "type": "long", "sim": COUNTER}])]
EVENTS = {"sample_interval": "100ms", "min_interval": "100ms"}
# The link is declared dead after three silent keep-alive intervals; retries every 1 s
# at most, so the link is back about a second after the proxy is.
XMPP = {"keepalive": "1s", "reconnect_min": "100ms", "reconnect_max": "1s"}

_seq = itertools.count(1)


class OutageEnv(ModuleEnv):
    """ModuleEnv with the gateway's component link through a proxy the test controls."""

    def __init__(self, events: dict):
        self.root = Path(tempfile.mkdtemp(prefix="fg-outage-"))
        self.env = make_env(self.root, users=("alice",))
        self._clients = {}
        try:
            self.proxy = self.env.proxy()
            gw = self.env.new_gateway()
            xmpp = {"server": f"127.0.0.1:{self.proxy.port}", **XMPP}
            text = gateway_toml(self.env.server, gw.state_dir, DEVICES, ACCESS, xmpp)
            gw.write_raw_config(text + extra_sections({"events": {**EVENTS, **events}}))
            gw.start()
        except BaseException:
            self.close()
            raise

    def cut(self) -> float:
        """Interrupts the link; when."""
        self.proxy.set_mode("refuse")
        self.proxy.blackhole()
        return time.time()

    def restore(self) -> float:
        """Lets the gateway in again; when. Waits until it is."""
        connects = self.gw.log_text().count("component link up")
        self.proxy.set_mode("forward")
        t = time.time()
        wait_for(lambda: self.gw.log_text().count("component link up") > connects, 15,
                 "the gateway to reconnect through the proxy")
        return t


@pytest.fixture
def env_factory():
    made = []

    def make(**events):
        e = OutageEnv(events)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()
        if e.root.exists():
            shutil.rmtree(e.root, ignore_errors=True)


class Event:
    """One change event as received: its value, the value's stamp, its delay (if any)."""

    def __init__(self, arrived: float, msg):
        self.arrived = arrived
        fields = [f for p in msg if p.tag == q(NS_SD, "fields") for f in fields_of(p)]
        assert len(fields) == 1 and fields[0].name == "n", fields
        self.n = int(fields[0].value)
        self.stamp = parse_iso(fields[0].timestamp)
        d = msg.find(q(NS_DELAY, "delay"))
        self.delay = None if d is None else (d.get("from"), parse_iso(d.get("stamp")))

    def __repr__(self):
        return f"n={self.n}{' delayed' if self.delay else ''}"


def subscribe(c, seqnr: int) -> int:
    mk = c.mark_stanzas()
    r = c.iq(subscribe_iq(f"meter@{DOMAIN}", seqnr, [{"name": "n", "changedBy": "1"}], momentary="true"))
    assert r.ok, f"subscribe refused: {r.condition} {r.text}"
    return mk


def received(c, seqnr: int, since: int) -> list[Event]:
    out = []
    for t, s in c.timed_since(since):
        if s.tag == q(NS_CLIENT, "message") and any(
                p.tag == q(NS_SD, "fields") and p.get("seqnr") == str(seqnr) for p in s):
            out.append(Event(t, s))
    return out


def check_values(evs: list[Event]) -> None:
    """Each event's value is the one the counter had at its stamp."""
    for e in evs:
        assert e.n == counter_at(e.stamp + 0.0005, 0, 1, EVERY) or e.n == counter_at(e.stamp - 0.0005, 0, 1, EVERY), e


def test_every_change_of_a_30s_cut_arrives_afterwards_delayed_and_in_order(env_factory):
    m = env_factory()
    alice = m.client("alice")
    seqnr = next(_seq)
    mk = subscribe(alice, seqnr)
    wait_for(lambda: len(received(alice, seqnr, mk)) >= 3, 10, "events before the cut")
    cut_mono = time.monotonic()
    cut_at = m.cut()
    # The subscriber stays online; the gateway notices the silent link after ~3 s and
    # keeps what is due from then on (and what it wrote but the server never confirmed).
    time.sleep(30)
    during = [e for e in received(alice, seqnr, mk) if e.arrived > cut_mono + 0.5]
    assert during == [], f"events arrived while the link was cut: {during}"
    back_at = m.restore()
    # caught up: a value read after the link came back has arrived
    wait_for(lambda: any(e.stamp > back_at + 1 for e in received(alice, seqnr, mk)), 15,
             "events after the reconnect")
    evs = received(alice, seqnr, mk)
    ns = [e.n for e in evs]
    assert ns == sorted(ns), f"out of order: {ns}"
    first, last = ns[0], ns[-1]
    missing = sorted(set(range(first, last + 1)) - set(ns))
    assert missing == [], f"changes lost: {missing} of {first}..{last}"
    # one value may come twice: written just before the cut, unconfirmed, sent again
    assert len(ns) - len(set(ns)) <= 2, f"duplicates: {ns}"
    check_values(evs)
    cut_changes = [e for e in evs if cut_at + 0.1 < e.stamp < back_at - 0.1]
    assert len(cut_changes) >= 50, f"{len(cut_changes)} changes read during the 30 s cut"
    for e in cut_changes:
        assert e.delay is not None, f"no <delay> on {e}"
        frm, stamp = e.delay
        assert frm == DOMAIN
        assert abs(stamp - e.stamp) < 0.001, (stamp, e.stamp)
    log = m.gw.log_text()
    assert "events kept while the link was down delivered" in log
    assert "events kept for the component link dropped" not in log
    m.assert_alive()


def test_the_outage_buffer_keeps_the_newest_and_counts_the_dropped(env_factory):
    m = env_factory(outage_buffer=4)
    alice = m.client("alice")
    seqnr = next(_seq)
    mk = subscribe(alice, seqnr)
    wait_for(lambda: len(received(alice, seqnr, mk)) >= 2, 10, "events before the cut")
    m.cut()
    # ~3 s to notice the silent link, then ~5 s of changes: more than 4 kept
    time.sleep(8)
    back_at = m.restore()
    wait_for(lambda: any(e.stamp > back_at + 1 for e in received(alice, seqnr, mk)), 15,
             "events after the reconnect")
    evs = received(alice, seqnr, mk)
    late = [e for e in evs if e.delay is not None and e.stamp < back_at]
    assert 1 <= len(late) <= 4, late
    ns = [e.n for e in evs]
    assert ns == sorted(ns), ns
    # the kept ones are the newest: no gap between them and what followed
    after = [e.n for e in evs if e.stamp > late[-1].stamp]
    assert after and after[0] == late[-1].n + 1, (late, after[:3])
    assert [e.n for e in late] == list(range(late[0].n, late[-1].n + 1)), late
    # ... and the oldest were dropped, counted in the log
    assert set(range(ns[0], ns[-1] + 1)) - set(ns), "a gap where the oldest were dropped"
    dropped = [int(x) for x in re.findall(r"dropped_full=(\d+)", m.gw.log_text())]
    assert dropped and max(dropped) >= 2, m.gw.log_tail()
    m.assert_alive()


def test_a_subscriber_whose_session_ended_during_the_cut_gets_none(env_factory):
    m = env_factory()
    alice = m.fresh_client("alice", "gone")
    seqnr = next(_seq)
    subscribe(alice, seqnr)
    wait_for(lambda: len(received(alice, seqnr, 0)) >= 2, 10, "events before the cut")
    # another session of the same user, online throughout: a message to the ended
    # session's full JID must not be rerouted to it
    other = m.client("alice", "other")
    mk = other.mark_stanzas()
    m.cut()
    time.sleep(4)
    alice.close()
    time.sleep(1)
    m.restore()
    wait_for(lambda: "its session ended while the link was down" in m.gw.log_text(), 15,
             "the gateway to learn the subscriber's session ended")
    time.sleep(2)  # the counter changed meanwhile: the subscription ended, no event
    got = [s for s in other.stanzas_since(mk) if s.tag == q(NS_CLIENT, "message")]
    assert got == [], f"events reached another session: {len(got)}"
    m.assert_alive()


def test_after_a_server_restart_the_subscriber_gets_none_and_subscribes_again(env_factory):
    """A server restart ends every client's session: what was kept for them is dropped
    and their subscriptions end; a subscriber that comes back with the same resource
    gets nothing of the old subscription, subscribes again, and reads the gap from
    history."""
    m = env_factory()
    alice = m.fresh_client("alice", "same")
    seqnr = next(_seq)
    subscribe(alice, seqnr)
    wait_for(lambda: len(received(alice, seqnr, 0)) >= 2, 10, "events before the restart")
    m.env.server.stop()
    alice.wait_disconnected()
    alice.drop()
    time.sleep(3)  # changes due meanwhile are kept
    m.env.server.start()
    wait_for(lambda: "its session ended while the link was down" in m.gw.log_text(), 20,
             "the gateway to learn the subscriber's session ended")
    assert "events kept while the link was down delivered" not in m.gw.log_text()
    mk = alice.mark_stanzas()
    alice.connect()
    time.sleep(2)
    assert received(alice, seqnr, mk) == [], "events of a subscription that ended"
    # subscribing again works as ever
    seqnr2 = next(_seq)
    mk = subscribe(alice, seqnr2)
    wait_for(lambda: len(received(alice, seqnr2, mk)) >= 2, 10, "events of the new subscription")
    m.assert_alive()
