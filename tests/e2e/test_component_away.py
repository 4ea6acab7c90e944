"""What a client sees while the gateway is away (the component not connected), on Prosody and
on ejabberd, and that the subscription outlives the absence (PROTOCOLS.md: "When the
component is away"; README: Configuring the XMPP server).

The servers answer a stanza for an absent component differently, both at once (no time-out):

- Prosody keeps the component's host and bounces it itself: type `wait`,
  `remote-server-timeout`, with `<not-connected xmlns='xmpp:prosody.im/protocol/component'/>`.
- ejabberd has no route for the domain while the component is away, so it treats it as a
  remote domain: with server-to-server allowed (its default) the s2s connection fails (here:
  the name does not resolve) and it bounces `cancel` / `remote-server-not-found` with the
  reason as text ("DNS lookup failed: ..."), and keeps bouncing for that domain for a while
  without retrying; with `s2s_access: none` it refuses: `auth` / `forbidden`, "Access denied
  by service policy". Once the component is back its route wins again at once.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import pytest

from conftest import ALICE_BOB_ACCESS, standard_devices
from harness import NS_CLIENT, NS_PING, NS_STANZAS, IqReply, make_env
from iot import NS_SD, req_iq

pytestmark = pytest.mark.servers("prosody", "ejabberd")

NS_PROSODY_COMPONENT = "xmpp:prosody.im/protocol/component"

# server -> (error type, condition, extra child (namespace, name) or None, text pattern)
AWAY = {
    "prosody": ("wait", "remote-server-timeout", (NS_PROSODY_COMPONENT, "not-connected"), "Component unavailable"),
    "ejabberd": ("cancel", "remote-server-not-found", None, "DNS lookup failed"),
}


def error_children(reply: IqReply) -> list[tuple[str, str]]:
    """(namespace, name) of every child of the reply's <error/>."""
    err = reply.xml.find(f"{{{NS_CLIENT}}}error")
    assert err is not None, ET.tostring(reply.xml, encoding="unicode")
    return [tuple(c.tag[1:].split("}", 1)) for c in err]


def assert_away_error(server: str, reply: IqReply, jid: str, took: float) -> None:
    etype, condition, extra, text = AWAY[server]
    xml = ET.tostring(reply.xml, encoding="unicode")
    assert reply.type == "error", xml
    assert (reply.error_type, reply.condition) == (etype, condition), xml
    assert reply.xml.get("from") == jid, xml
    children = error_children(reply)
    assert (NS_STANZAS, condition) in children
    if extra:
        assert extra in children, xml
    if text:
        assert text in reply.text, xml
    # the server answers at once: a client is not left to its own time-out
    assert took < 3.0, f"the bounce took {took:.1f}s"


def timed_iq(client, xml: str) -> tuple[IqReply, float]:
    t0 = time.monotonic()
    r = client.iq(xml, timeout=15)
    return r, time.monotonic() - t0


def test_iq_while_gateway_away_bounces_and_subscription_survives(env, gw):
    alice = env.client("alice")
    pump, meter = env.dev("pump1"), env.dev("meter1")
    m = alice.mark()
    alice.subscribe(pump)
    alice.wait_presence(pump, "available", m)
    # (settles ejabberd's caps query for pump1's presence before the gateway stops)
    alice.barrier(pump)

    m = alice.mark()
    code, _ = gw.stop()
    assert code == 0
    alice.wait_presence(pump, "unavailable", m, timeout=5)

    # Requests to a device, to another one and to the component's domain: every one bounced
    # by the server, at once, with its server's error.
    for to, xml in [
        (pump, f"<iq type='get' to='{pump}'><ping xmlns='{NS_PING}'/></iq>"),
        (meter, req_iq(meter, 1, momentary=True)),
        (env.domain, f"<iq type='get' to='{env.domain}'><ping xmlns='{NS_PING}'/></iq>"),
        (f"{pump}/gw", f"<iq type='get' to='{pump}/gw'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
    ]:
        r, took = timed_iq(alice, xml)
        print(f"{env.server_name} while away, {to}: {took * 1000:.0f} ms {ET.tostring(r.xml, encoding='unicode')}")
        assert_away_error(env.server_name, r, to, took)

    # A new session while the gateway is away: the server's probe to the absent component
    # bounces; the roster keeps the subscription all the same.
    alice.disconnect()
    m = alice.mark()
    alice.connect()
    assert alice.fetch_roster().get(pump) == "to", alice.fetch_roster()
    assert not [p for p in alice.presences_since(m, pump) if p.type == "available"]

    # The gateway comes back: the subscriber sees the device again without subscribing
    # anew, and requests go through at once (ejabberd's memory of the failed s2s
    # connection does not shadow the component's route).
    m = alice.mark()
    gw.start()
    back = alice.wait_presence(pump, "available", m, timeout=10)
    assert back.caps is not None
    r = alice.ping(pump)
    assert r.ok, (r.condition, r.text)
    mk = alice.mark()
    assert not [p for p in alice.presences_since(m) if p.type in ("subscribed", "unsubscribed")]
    assert alice.fetch_roster().get(pump) == "to"
    # and the subscription is the gateway's too: a probe is answered
    alice.probe(pump)
    alice.wait_presence(pump, "available", mk)


@pytest.mark.servers("ejabberd")
def test_ejabberd_without_s2s_refuses_requests_for_an_absent_component(workdir, xmpp_server):
    """With server-to-server turned off (`s2s_access: none`) ejabberd refuses a stanza for
    the absent component instead: `auth` / `forbidden`, "Access denied by service policy"."""
    env = make_env(workdir, users=("alice",), server=xmpp_server, s2s=False)
    try:
        gw = env.new_gateway()
        gw.write_config(standard_devices(), access=ALICE_BOB_ACCESS)
        alice = env.client("alice")
        pump = env.dev("pump1")
        r, took = timed_iq(alice, f"<iq type='get' to='{pump}'><ping xmlns='{NS_PING}'/></iq>")
        print(f"ejabberd s2s off, gateway away: {took * 1000:.0f} ms {ET.tostring(r.xml, encoding='unicode')}")
        assert (r.type, r.error_type, r.condition) == ("error", "auth", "forbidden"), ET.tostring(r.xml)
        assert r.text == "Access denied by service policy"
        assert took < 3.0
        # the gateway connects: the same request is answered by the device
        gw.start()
        assert alice.ping(pump).ok
    finally:
        env.close()
