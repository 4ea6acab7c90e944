"""Malformed and unusual stanzas from a client must not take the gateway down: each gets an
error reply or is ignored, and afterwards the gateway still serves, over the same component
link (a parse failure must not end the stream: PROTOCOLS.md, library traps)."""

from __future__ import annotations

import pytest

from conftest import ALICE_BOB_ACCESS, standard_devices
from harness import COMPONENT, NS_PING, wait_for

PUMP = f"pump1@{COMPONENT}"

# (name, raw stanza, what is acceptable in reply: set of "result" / "error" / "none")
IQ_CASES = [
    ("iq_without_payload", f"<iq type='get' to='{PUMP}'/>", {"error", "none"}),
    ("iq_set_without_payload", f"<iq type='set' to='{PUMP}'/>", {"error", "none"}),
    ("iq_two_payloads",
     f"<iq type='get' to='{PUMP}'><ping xmlns='{NS_PING}'/><query xmlns='jabber:iq:version'/></iq>",
     {"error", "none"}),
    ("iq_garbage_attributes",
     f"<iq type='get' to='{PUMP}' foo='bar' xmlns:g='urn:example:garbage' g:weird='&lt;&amp;&gt;'>"
     f"<ping xmlns='{NS_PING}' junk='1'/></iq>",
     {"result", "error", "none"}),
    ("iq_payload_without_namespace", f"<iq type='get' to='{PUMP}'><ping/></iq>", {"error", "none"}),
    ("iq_ping_with_children",
     f"<iq type='get' to='{PUMP}'><ping xmlns='{NS_PING}'><x xmlns='urn:example:x'>text</x></ping></iq>",
     {"result", "error", "none"}),
    ("iq_to_other_resource", f"<iq type='get' to='{PUMP}/nosuchresource'><ping xmlns='{NS_PING}'/></iq>",
     {"result", "error", "none"}),
    ("iq_deeply_nested",
     f"<iq type='get' to='{PUMP}'><q xmlns='urn:example:deep'>" + "<a>" * 400 + "</a>" * 400 + "</q></iq>",
     {"error", "none"}),
    ("iq_big_payload",
     f"<iq type='get' to='{PUMP}'><q xmlns='urn:example:big'>" + "<item v='x'/>" * 5000 + "</q></iq>",
     {"error", "none"}),
    ("iq_unicode_and_entities",
     f"<iq type='get' to='{PUMP}'><q xmlns='urn:example:t'>\u00e9\u20ac\U0001F600 &amp; &#x41;</q></iq>",
     {"error", "none"}),
    ("iq_disco_info_unknown_node",
     f"<iq type='get' to='{PUMP}'><query xmlns='http://jabber.org/protocol/disco#info' node='no#such'/></iq>",
     {"result", "error"}),
]


@pytest.fixture
def linked(env):
    """Gateway behind a TCP proxy that counts component connections."""
    proxy = env.proxy()
    gw = env.new_gateway()
    gw.write_config(standard_devices(), access=ALICE_BOB_ACCESS, xmpp={"server": f"127.0.0.1:{proxy.port}"})
    gw.start()
    alice = env.client("alice")
    m = alice.mark()
    alice.subscribe(env.dev("pump1"))
    alice.wait_presence(env.dev("pump1"), "available", m)
    return proxy, gw, alice


def assert_still_serving(env, proxy, gw, alice, pid):
    assert gw.running and gw.pid == pid, f"gateway died\n{gw.log_tail()}"
    pump = env.dev("pump1")
    assert alice.ping(pump).ok, "ping after the malformed stanza failed"
    assert alice.disco_info(pump).ok
    assert proxy.accepted == 1, (f"the component link was re-established ({proxy.accepted} connections): "
                                 "a client's stanza must not break the gateway's stream")
    assert not [p for p in alice.presences if p.bare == pump and p.type == "unavailable"], \
        "the device went unavailable"


@pytest.mark.parametrize("name,stanza,allowed", IQ_CASES, ids=[c[0] for c in IQ_CASES])
def test_malformed_iq(env, linked, name, stanza, allowed):
    proxy, gw, alice = linked
    pid = gw.pid
    reply = alice.iq_maybe(stanza, timeout=3)
    got = "none" if reply is None else reply.type
    print(f"{name}: reply {got} {reply.condition if reply else ''}")
    assert got in allowed, f"{name}: got {got!r} ({reply and reply.condition}), allowed {sorted(allowed)}"
    if reply is not None and reply.type == "error":
        assert reply.condition, "an error reply needs a defined condition"
    assert_still_serving(env, proxy, gw, alice, pid)


def test_unsolicited_result_and_error_are_not_answered(env, linked):
    proxy, gw, alice = linked
    pid = gw.pid
    alice.send_raw(f"<iq type='result' id='unsolicited-1' to='{PUMP}'/>")
    alice.send_raw(f"<iq type='error' id='unsolicited-2' to='{PUMP}'>"
                   "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
    alice.send_raw(f"<iq type='result' id='unsolicited-3' to='{env.domain}'><junk xmlns='urn:x'/></iq>")
    alice.barrier(env.dev("pump1"))
    for i in (1, 2, 3):
        assert not alice.replies_to(f"unsolicited-{i}"), "an iq result/error must never be answered (RFC 6120 8.2.3)"
    assert_still_serving(env, proxy, gw, alice, pid)


def test_messages_and_odd_presence(env, linked):
    proxy, gw, alice = linked
    pid = gw.pid
    for stanza in [
        f"<message to='{PUMP}' type='chat'><body>hello device</body></message>",
        f"<message to='{PUMP}'><garbage xmlns='urn:example:garbage' a='1'><b/></garbage></message>",
        f"<message to='{PUMP}' type='groupchat'/>",
        f"<message to='{PUMP}' type='error'><error type='cancel'>"
        "<undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        f"<presence to='{PUMP}'><status>directed presence</status><x xmlns='urn:example:x'/></presence>",
        f"<presence to='{PUMP}' type='unavailable'/>",
        f"<presence to='{PUMP}' type='error'><error type='cancel'>"
        "<gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
        f"<presence to='{env.domain}' type='subscribe'/>",
    ]:
        alice.send_raw(stanza)
    alice.barrier(env.dev("pump1"))
    assert_still_serving(env, proxy, gw, alice, pid)


def test_many_requests_in_a_burst(env, linked):
    """200 pings sent back to back all get their own answer."""
    proxy, gw, alice = linked
    pid = gw.pid
    ids = [f"burst-{i}" for i in range(200)]
    alice.send_raw("".join(f"<iq type='get' id='{i}' to='{PUMP}'><ping xmlns='{NS_PING}'/></iq>" for i in ids))
    try:
        wait_for(lambda: all(alice.replies_to(i) for i in ids), 15, "answers to 200 pings")
    except AssertionError:
        missing = [i for i in ids if not alice.replies_to(i)]
        raise AssertionError(f"{len(missing)} of 200 pings unanswered, e.g. {missing[:3]}") from None
    assert all(alice.replies_to(i)[0][0] == "result" for i in ids)
    assert_still_serving(env, proxy, gw, alice, pid)


# --------------------------------------------------------------------------------------
# Stanzas Prosody filters on c2s (it answers bad-request itself) but passes on from other
# servers, or that no correct server sends: injected into the component stream by the
# proxy, as if the server had sent them. Replies go through Prosody to alice's client.
#
# (name, stanza template, allowed replies, whether the link must survive without reconnect)
INJECTED = [
    ("iq_without_payload", "<iq type='get' id='{id}' from='{me}' to='{pump}'/>", {"error", "none"}, True),
    ("iq_set_without_payload", "<iq type='set' id='{id}' from='{me}' to='{pump}'/>", {"error", "none"}, True),
    ("iq_two_payloads",
     "<iq type='get' id='{id}' from='{me}' to='{pump}'><ping xmlns='urn:xmpp:ping'/>"
     "<query xmlns='jabber:iq:version'/></iq>", {"error", "none"}, True),
    ("iq_garbage_attributes",
     "<iq type='get' id='{id}' from='{me}' to='{pump}' zzz='1' xmlns:g='urn:g' g:a='b'>"
     "<ping xmlns='urn:xmpp:ping' extra='x'/></iq>", {"result", "error", "none"}, True),
    ("iq_bogus_type", "<iq type='bogus' id='{id}' from='{me}' to='{pump}'><ping xmlns='urn:xmpp:ping'/></iq>",
     {"error", "none"}, True),
    ("iq_missing_id", "<iq type='get' from='{me}' to='{pump}'><ping xmlns='urn:xmpp:ping'/></iq>",
     {"error", "none"}, True),
    ("iq_invalid_from", "<iq type='get' id='{id}' from='a@@b/c' to='{pump}'><ping xmlns='urn:xmpp:ping'/></iq>",
     {"none"}, False),
    ("iq_without_from", "<iq type='get' id='{id}' to='{pump}'><ping xmlns='urn:xmpp:ping'/></iq>", {"none"}, False),
    ("unknown_top_level_element", "<frobnicate id='{id}' from='{me}' to='{pump}'/>", {"none"}, False),
    ("message_bogus_type", "<message type='bogus' id='{id}' from='{me}' to='{pump}'><body>x</body></message>",
     {"error", "none"}, True),
    ("presence_bogus_type", "<presence type='bogus' id='{id}' from='{me}' to='{pump}'/>", {"error", "none"}, True),
]


@pytest.mark.parametrize("name,template,allowed,keep_link", INJECTED, ids=[c[0] for c in INJECTED])
def test_injected_malformed_stanza(env, linked, name, template, allowed, keep_link):
    proxy, gw, alice = linked
    pid = gw.pid
    stanza_id = f"inj-{name}"
    proxy.inject_downstream(template.format(id=stanza_id, me=alice.full_jid, pump=PUMP))
    # wait until the gateway answers pings again (immediately, unless it had to reconnect)
    wait_for(lambda: alice.ping(env.dev("pump1"), timeout=3).ok, 15, "the gateway to answer a ping again")
    got = alice.replies_to(stanza_id)
    kinds = {t for t, _i, _f in got} or {"none"}
    print(f"{name}: reply {sorted(kinds)}, component connections {proxy.accepted}")
    assert kinds <= allowed, f"{name}: got {kinds}, allowed {sorted(allowed)}"
    assert gw.running and gw.pid == pid, f"gateway died on {name}\n{gw.log_tail()}"
    if keep_link:
        assert proxy.accepted == 1, f"{name}: the gateway dropped its component link ({proxy.accepted} connections)"
