"""Presence subscription, probes, disco, ping, version and error replies of device JIDs,
checked through a real XMPP server (Prosody and ejabberd) with slixmpp as the client."""

from __future__ import annotations

import re

import pytest

from conftest import ALICE_BOB_ACCESS
from harness import (NS_DISCO_INFO, NS_PING, NS_VERSION, caps_ver, make_env, parse_disco_info,
                     parse_disco_items, run_cli, sim_device)

pytestmark = pytest.mark.servers("prosody", "ejabberd")

def log_lines(gw, since: int, *words: str) -> list[str]:
    """The gateway's log lines written after offset `since` that hold every one of `words`."""
    return [line for line in gw.log_since(since).splitlines() if all(w in line for w in words)]


# --------------------------------------------------------------------------------------
# 1. subscriptions and the access policy


def test_subscribe_allowed_gets_subscribed_then_available_with_caps(env, gw):
    alice = env.client("alice")
    pump = env.dev("pump1")
    m = alice.mark()
    alice.subscribe(pump)

    sub = alice.wait_presence(pump, "subscribed", m)
    assert sub.frm == pump, "subscribed must come from the device's bare JID"
    avail = alice.wait_presence(pump, "available", m)
    assert avail.frm == f"{pump}/gw", "presence must come from <id>@<domain>/<resource>"
    assert avail.at >= sub.at
    assert avail.caps is not None, f"available presence without XEP-0115 <c/>: {avail.xml}"
    assert avail.caps.get("hash") == "sha-1"
    assert avail.caps.get("node")
    assert avail.caps.get("ver")
    assert not any(p.type in ("unsubscribed", "unavailable") for p in alice.presences_since(m, pump))

    # The server recorded the approval: the device is in alice's roster with subscription 'to'.
    assert alice.fetch_roster().get(pump) == "to"
    # ... and the gateway logged it: the approval's own line, not just any line naming alice.
    assert log_lines(gw, 0, "subscription approved", "device=pump1", "subscriber=alice@example.test"), \
        f"approval not logged\n{gw.log_tail()}"


def test_subscribe_refused_for_user_not_in_policy(env, gw):
    carol = env.client("carol")
    pump = env.dev("pump1")
    before = gw.log_size()
    m = carol.mark()
    carol.subscribe(pump)

    unsub = carol.wait_presence(pump, "unsubscribed", m)
    assert unsub.frm == pump
    # Nothing else may follow: a ping round trip through the same streams settles it.
    alice = env.client("alice")
    alice.barrier(env.domain)
    got = carol.presences_since(m, pump)
    assert [p.type for p in got] == ["unsubscribed"], f"unexpected presences: {[(p.frm, p.type) for p in got]}"
    assert carol.fetch_roster().get(pump) in (None, "none")
    # Contract: a refusal is logged with the reason; the log names the requester.
    refused = log_lines(gw, before, "subscribe refused", "device=pump1", "from=carol@example.test")
    assert refused, f"refusal not logged:\n{gw.log_since(before)}"
    assert re.search(r"reason=\S", refused[0]), f"the refusal does not say why: {refused[0]}"


def test_device_access_override(env, gw):
    vault = env.dev("vault")
    pump = env.dev("pump1")
    alice = env.client("alice")
    bob = env.client("bob")

    # bob is only on vault's own list: vault accepts him, pump1 refuses him
    mb = bob.mark()
    bob.subscribe(vault)
    bob.wait_presence(vault, "subscribed", mb)
    avail = bob.wait_presence(vault, "available", mb)
    assert avail.caps is not None
    bob.subscribe(pump)
    bob.wait_presence(pump, "unsubscribed", mb)

    # alice is on the global list, which vault's own list replaces
    ma = alice.mark()
    alice.subscribe(vault)
    alice.wait_presence(vault, "unsubscribed", ma)
    alice.subscribe(pump)
    alice.wait_presence(pump, "available", ma)
    bob.barrier(env.domain)
    assert not [p for p in bob.presences_since(mb, pump) if p.type != "unsubscribed"]
    assert not [p for p in alice.presences_since(ma, vault) if p.type != "unsubscribed"]


def test_unreachable_device_presence_has_reason(env, gw):
    alice = env.client("alice")
    dead = env.dev("dead")
    m = alice.mark()
    alice.subscribe(dead)
    alice.wait_presence(dead, "subscribed", m)
    p = alice.wait_presence(dead, "unavailable", m)
    assert p.frm == f"{dead}/gw"
    assert p.status == "cable cut"
    alice.barrier(env.domain)
    assert not [p for p in alice.presences_since(m, dead) if p.type == "available"]


# --------------------------------------------------------------------------------------
# 2. presence after logging in again (server probes)


def test_presence_after_relogin(env, gw):
    pump, dead = env.dev("pump1"), env.dev("dead")
    alice = env.client("alice")
    m = alice.mark()
    alice.subscribe(pump)
    alice.subscribe(dead)
    alice.wait_presence(pump, "available", m)
    alice.wait_presence(dead, "unavailable", m)
    alice.disconnect()

    # A new session: the server probes every contact with subscription 'to' on initial presence.
    m = alice.mark()
    alice.connect()
    p = alice.wait_presence(pump, "available", m)
    assert p.caps is not None
    d = alice.wait_presence(dead, "unavailable", m)
    assert d.status == "cable cut"

    # An explicit probe from the subscriber is answered with the current presence too.
    m = alice.mark()
    alice.probe(pump)
    alice.wait_presence(pump, "available", m)


# --------------------------------------------------------------------------------------
# 3. disco, ping, version


def test_disco_info_domain(env, gw):
    carol = env.client("carol")  # no rights at all: the domain still answers
    info = parse_disco_info(carol.disco_info(env.domain))
    assert any(cat == "gateway" for cat, _t, _n in info.identities), info.identities
    assert NS_DISCO_INFO in info.features
    # the same through slixmpp's disco plugin
    info2 = carol.plugin_disco_info(env.domain)
    assert sorted(i[:2] for i in info2.identities) == sorted(i[:2] for i in info.identities)
    assert info2.features == info.features


def test_disco_items_domain_lists_visible_devices_only(env, gw):
    domain = env.domain
    alice, bob, carol = env.client("alice"), env.client("bob"), env.client("carol")
    assert sorted(parse_disco_items(alice.disco_items(domain))) == sorted(
        env.dev(d) for d in ("pump1", "meter1", "dead"))
    assert parse_disco_items(bob.disco_items(domain)) == [env.dev("vault")]
    assert parse_disco_items(carol.disco_items(domain)) == []
    # slixmpp's parser agrees
    assert sorted(alice.plugin_disco_items(domain)) == sorted(env.dev(d) for d in ("pump1", "meter1", "dead"))


def test_disco_info_device_and_caps(env, gw):
    alice = env.client("alice")
    pump = env.dev("pump1")
    reply = alice.disco_info(pump)
    info = parse_disco_info(reply)
    assert ("client", "bot", "Pump 1") in info.identities, info.identities
    for feature in (NS_DISCO_INFO, NS_PING, NS_VERSION):
        assert feature in info.features, f"{feature} missing from {sorted(info.features)}"
    plugin = alice.plugin_disco_info(pump)
    assert ("client", "bot", "Pump 1") in plugin.identities
    assert plugin.features == info.features

    # XEP-0115: the caps hash in the presence is the hash of this disco#info, and
    # node#ver is answered with the same identities and features.
    m = alice.mark()
    alice.subscribe(pump)
    caps = alice.wait_presence(pump, "available", m).caps
    assert caps["ver"] == caps_ver(reply), "caps ver does not match the device's disco#info"
    node_info = parse_disco_info(alice.disco_info(pump, node=f"{caps['node']}#{caps['ver']}"))
    assert sorted(node_info.identities) == sorted(info.identities)
    assert node_info.features == info.features

    # identity names follow the device
    meter = parse_disco_info(alice.disco_info(env.dev("meter1")))
    assert ("client", "bot", "Meter 1") in meter.identities


@pytest.mark.parametrize("target", ["domain", "pump1", "dead"])
def test_ping(env, gw, target):
    alice = env.client("alice")
    jid = env.domain if target == "domain" else env.dev(target)
    r = alice.ping(jid)
    assert r.ok, f"ping {jid}: {r.condition}"
    assert r.xml.get("from") == jid
    assert len(list(r.xml)) == 0, "a ping result carries no payload"
    alice.plugin_ping(jid)  # slixmpp's own ping (raises on error)


@pytest.mark.parametrize("target", ["domain", "pump1"])
def test_version(env, gw, fieldgate_bin, target):
    alice = env.client("alice")
    jid = env.domain if target == "domain" else env.dev(target)
    expected = run_cli(fieldgate_bin, "--version").stdout.split()[-1]
    v = alice.plugin_version(jid)
    assert v.get("name") == "fieldgate"
    assert v.get("version") == expected


# --------------------------------------------------------------------------------------
# 4. unknown devices, invisible devices, unsupported payloads


@pytest.mark.parametrize("payload", [
    f"<query xmlns='{NS_DISCO_INFO}'/>",
    f"<ping xmlns='{NS_PING}'/>",
    f"<query xmlns='{NS_VERSION}'/>",
])
def test_unknown_device_iq_is_service_unavailable(env, gw, payload):
    alice = env.client("alice")
    r = alice.iq(f"<iq type='get' to='{env.dev('nosuch')}'>{payload}</iq>")
    assert r.type == "error" and r.condition == "service-unavailable", (r.type, r.condition)


def test_invisible_device_is_service_unavailable(env, gw):
    carol = env.client("carol")
    for dev in ("pump1", "vault"):
        r = carol.disco_info(env.dev(dev))
        assert r.condition == "service-unavailable", (dev, r.type, r.condition)
        r = carol.ping(env.dev(dev))
        assert r.condition == "service-unavailable", (dev, r.type, r.condition)
    alice = env.client("alice")
    assert alice.disco_info(env.dev("vault")).condition == "service-unavailable"
    # the same requests succeed for those allowed
    assert alice.disco_info(env.dev("pump1")).ok
    assert env.client("bob").disco_info(env.dev("vault")).ok


@pytest.mark.parametrize("iq_type,payload", [
    ("get", "<query xmlns='jabber:iq:last'/>"),
    ("get", "<vCard xmlns='vcard-temp'/>"),
    ("set", "<query xmlns='jabber:iq:roster'/>"),
    ("get", "<anything xmlns='urn:example:unknown'><deep/></anything>"),
])
def test_unsupported_payload_on_device_is_service_unavailable(env, gw, iq_type, payload):
    alice = env.client("alice")
    r = alice.iq(f"<iq type='{iq_type}' to='{env.dev('pump1')}'>{payload}</iq>")
    assert r.type == "error" and r.condition == "service-unavailable", (r.type, r.condition)
    assert r.xml.get("from") == env.dev("pump1")


def test_subscribe_to_unknown_device_is_unsubscribed(env, gw):
    alice = env.client("alice")
    ghost = env.dev("nosuch")
    m = alice.mark()
    alice.subscribe(ghost)
    alice.wait_presence(ghost, "unsubscribed", m)
    alice.barrier(env.domain)
    assert [p.type for p in alice.presences_since(m, ghost)] == ["unsubscribed"]


def test_unsubscribe_stops_presence(env, gw):
    """After <unsubscribe/> the gateway forgets the subscriber: no presence on probe, on
    shutdown or on the next start, while the other subscription stays."""
    alice = env.client("alice")
    meter, pump = env.dev("meter1"), env.dev("pump1")
    m = alice.mark()
    alice.subscribe(meter)
    alice.subscribe(pump)
    alice.wait_presence(meter, "available", m)
    alice.wait_presence(pump, "available", m)
    m = alice.mark()
    alice.unsubscribe(meter)
    # RFC 6121 3.3.3: the contact answers an unsubscribe with unavailable presence
    # from its available resources; this also tells us it has been processed.
    alice.wait_presence(meter, "unavailable", m)

    # a probe from alice now gets no presence; one to a device she still subscribes to does
    # (handled the same way, so its answer is the barrier for the first one)
    m = alice.mark()
    alice.probe(meter)
    alice.probe(pump)
    alice.wait_presence(pump, "available", m)
    code, _ = gw.stop()
    assert code == 0
    alice.wait_presence(pump, "unavailable", m)
    restarted = alice.mark()
    gw.start()
    # the start-up announcement to pump1's subscriber; meter1's would be in the same pass
    alice.wait_presence(pump, "available", restarted)
    alice.barrier(env.domain)
    leaked = [(p.frm, p.type) for p in alice.presences_since(m, meter)]
    assert not [t for _f, t in leaked if t in ("available", "unavailable")], leaked


@pytest.mark.servers("ejabberd")
def test_ejabberd_default_presence_counter_limits_subscriptions(workdir, xmpp_server):
    """Debian's default ejabberd.yml loads mod_pres_counter (count 5, interval 60): the sixth
    subscription request within a minute is refused by the server with not-acceptable and
    never reaches the gateway. A user subscribing to many devices needs a higher count
    (README: Configuring the XMPP server)."""
    env = make_env(workdir, users=("alice",), server=xmpp_server,
                   extra_modules="  mod_pres_counter:\n    count: 5\n    interval: 60\n")
    try:
        ids = [f"dev{i}" for i in range(8)]
        gw = env.new_gateway()
        gw.write_config([sim_device(i) for i in ids], access=ALICE_BOB_ACCESS)
        gw.start()
        alice = env.client("alice")
        m = alice.mark()
        for i in ids:
            alice.subscribe(env.dev(i))
        alice.wait_all([env.dev(i) for i in ids[:5]], "available", m)
        refused = alice.wait_all([env.dev(i) for i in ids[5:]], "error", m)
        for p in refused.values():
            assert "not-acceptable" in p.xml and 'type="modify"' in p.xml, p.xml
        alice.barrier(env.domain)
        roster = alice.fetch_roster()
        assert [roster.get(env.dev(i)) for i in ids] == ["to"] * 5 + ["none"] * 3, roster
        assert not [line for line in gw.log_text().splitlines()
                    if "subscription approved" in line and any(f"device={i}" in line for i in ids[5:])]
    finally:
        env.close()
