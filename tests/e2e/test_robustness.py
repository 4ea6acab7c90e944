"""Malformed and unusual stanzas from a client must not take the gateway down: each iq
request gets the result or error RFC 6120 demands, with a defined condition (nothing only
where no reply can be addressed), a response is never answered, and afterwards the gateway
still serves, over the same component link (a parse failure must not end the stream:
PROTOCOLS.md, library traps)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from conftest import linked_gateway
from harness import COMPONENT, NS_PING, NS_STANZAS, parse_iq_reply, wait_for

pytestmark = pytest.mark.servers("prosody", "ejabberd")

PUMP = f"pump1@{COMPONENT}"

# What a reply may be: (type, condition), the condition None for a result; NONE for no
# reply at all. An iq of type get or set with a sender and an id MUST be answered with a
# result or an error (RFC 6120 8.2.3), so NONE appears only where no reply can be addressed.
RESULT = ("result", None)
NONE = ("none", None)
ERROR_TYPES = {"auth", "cancel", "continue", "modify", "wait"}


def err(condition: str) -> tuple[str, str]:
    return ("error", condition)


# (name, raw stanza, acceptable replies). Prosody answers some of these itself on c2s
# (wrong number of children); the INJECTED cases below put the same ones to the gateway.
IQ_CASES = [
    # exactly one payload per request (RFC 6120 8.2.3)
    ("iq_without_payload", f"<iq type='get' to='{PUMP}'/>", {err("bad-request")}),
    ("iq_set_without_payload", f"<iq type='set' to='{PUMP}'/>", {err("bad-request")}),
    ("iq_two_payloads",
     f"<iq type='get' to='{PUMP}'><ping xmlns='{NS_PING}'/><query xmlns='jabber:iq:version'/></iq>",
     {err("bad-request")}),
    # unknown attributes are ignored: it is a ping
    ("iq_garbage_attributes",
     f"<iq type='get' to='{PUMP}' foo='bar' xmlns:g='urn:example:garbage' g:weird='&lt;&amp;&gt;'>"
     f"<ping xmlns='{NS_PING}' junk='1'/></iq>",
     {RESULT}),
    # <ping/> in the stanza's own namespace is no payload the gateway knows (RFC 6120 8.4)
    ("iq_payload_without_namespace", f"<iq type='get' to='{PUMP}'><ping/></iq>", {err("service-unavailable")}),
    ("iq_ping_with_children",
     f"<iq type='get' to='{PUMP}'><ping xmlns='{NS_PING}'><x xmlns='urn:example:x'>text</x></ping></iq>",
     {RESULT}),
    # the device answering at any resource, or service-unavailable for a resource it does
    # not have (RFC 6121 8.5.3.2.1): either way an answer
    ("iq_to_other_resource", f"<iq type='get' to='{PUMP}/nosuchresource'><ping xmlns='{NS_PING}'/></iq>",
     {RESULT, err("service-unavailable")}),
    # 400 levels: beyond the gateway's bound of 64 below the stanza
    ("iq_deeply_nested",
     f"<iq type='get' to='{PUMP}'><q xmlns='urn:example:deep'>" + "<a>" * 400 + "</a>" * 400 + "</q></iq>",
     {err("policy-violation")}),
    # ~70 KB, within the inbound bound: refused only for its unknown namespace
    ("iq_big_payload",
     f"<iq type='get' to='{PUMP}'><q xmlns='urn:example:big'>" + "<item v='x'/>" * 5000 + "</q></iq>",
     {err("service-unavailable")}),
    ("iq_unicode_and_entities",
     f"<iq type='get' to='{PUMP}'><q xmlns='urn:example:t'>\u00e9\u20ac\U0001F600 &amp; &#x41;</q></iq>",
     {err("service-unavailable")}),
    # XEP-0030 3.1: a node the entity does not have
    ("iq_disco_info_unknown_node",
     f"<iq type='get' to='{PUMP}'><query xmlns='http://jabber.org/protocol/disco#info' node='no#such'/></iq>",
     {err("item-not-found")}),
]


def kind_of(reply_type: str, condition: str | None) -> tuple[str, str | None]:
    return (reply_type, condition if reply_type == "error" else None)


@pytest.fixture
def linked(env):
    return linked_gateway(env, record=True)


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
    got = NONE if reply is None else kind_of(reply.type, reply.condition)
    print(f"{name}: reply {got}")
    assert got in allowed, f"{name}: got {got} ({reply and reply.text!r}), allowed {sorted(allowed, key=str)}"
    if reply is not None:
        assert reply.xml.get("from", "").split("/", 1)[0] == PUMP, f"answered by {reply.xml.get('from')}"
        if reply.type == "error":
            assert reply.error_type in ERROR_TYPES, f"error type {reply.error_type!r}"
    assert_still_serving(env, proxy, gw, alice, pid)
    if reply is not None:
        assert len(alice.replies_to(reply.xml.get("id"))) == 1, f"{name}: answered more than once"


def test_unsolicited_result_and_error_are_not_answered(env, linked):
    """A response is never answered (RFC 6120 8.2.3), whatever is wrong with it: to a device,
    the domain, a device that does not exist or one alice may not see, beyond the nesting
    bound, and (injected, as Prosody bounces these from clients itself) without an id."""
    proxy, gw, alice = linked
    pid = gw.pid
    error = "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    deep = "<q xmlns='urn:example:deep'>" + "<a>" * 100 + "</a>" * 100 + "</q>"
    sent = [
        f"<iq type='result' id='unsolicited-1' to='{PUMP}'/>",
        f"<iq type='error' id='unsolicited-2' to='{PUMP}'>{error}</iq>",
        f"<iq type='result' id='unsolicited-3' to='{env.domain}'><junk xmlns='urn:x'/></iq>",
        f"<iq type='result' id='unsolicited-4' to='nosuch@{env.domain}'/>",
        f"<iq type='error' id='unsolicited-5' to='nosuch@{env.domain}'>{error}</iq>",
        f"<iq type='result' id='unsolicited-6' to='{env.dev('vault')}'/>",
        f"<iq type='result' id='unsolicited-7' to='{PUMP}'>{deep}</iq>",
        f"<iq type='error' id='unsolicited-8' to='{PUMP}'>{deep}{error}</iq>",
    ]
    for stanza in sent:
        alice.send_raw(stanza)
    me = alice.full_jid
    proxy.inject_downstream(f"<iq type='result' from='{me}' to='{PUMP}'/>"
                            f"<iq type='error' from='{me}' to='{PUMP}'>{error}</iq>")
    alice.barrier(env.dev("pump1"))
    for i in range(1, len(sent) + 1):
        assert not alice.replies_to(f"unsolicited-{i}"), "an iq result/error must never be answered (RFC 6120 8.2.3)"
    assert not alice.replies_to(""), "an iq result/error without an id must never be answered"
    assert_still_serving(env, proxy, gw, alice, pid)


def test_messages_and_odd_presence(env, linked):
    """None of these asks for an answer. Whatever comes back is an error with a defined
    condition, and an error is never answered at all (RFC 6120 8.3.1)."""
    proxy, gw, alice = linked
    pid = gw.pid
    error = "<error type='cancel'><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    stanzas = {
        "odd-chat": f"<message to='{PUMP}' type='chat'><body>hello device</body></message>",
        "odd-garbage": f"<message to='{PUMP}'><garbage xmlns='urn:example:garbage' a='1'><b/></garbage></message>",
        "odd-groupchat": f"<message to='{PUMP}' type='groupchat'/>",
        "odd-message-error": f"<message to='{PUMP}' type='error'>{error}</message>",
        "odd-directed": f"<presence to='{PUMP}'><status>directed presence</status><x xmlns='urn:example:x'/></presence>",
        "odd-unavailable": f"<presence to='{PUMP}' type='unavailable'/>",
        "odd-presence-error": f"<presence to='{PUMP}' type='error'><error type='cancel'>"
                              "<gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
        "odd-domain-subscribe": f"<presence to='{env.domain}' type='subscribe'/>",
    }
    m_at, p_at = len(alice.messages), len(alice.presences)
    for sid, stanza in stanzas.items():
        alice.send_raw(stanza.replace(" to=", f" id='{sid}' to=", 1))
    alice.barrier(env.dev("pump1"))
    back = list(alice.messages[m_at:]) + [ET.fromstring(p.xml) for p in alice.presences[p_at:]]
    replies = {sid: [(e.get("type"), stanza_condition(e)) for e in back if e.get("id") == sid]
               for sid in stanzas}
    print(f"replies: { {k: v for k, v in replies.items() if v} }")
    for sid in ("odd-message-error", "odd-presence-error"):
        assert not replies[sid], f"an error was answered: {sid} {replies[sid]}"
    for sid, got in replies.items():
        assert all(t == "error" and c for t, c in got), f"{sid}: a reply is an error with a defined condition: {got}"
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
    ("iq_without_payload", "<iq type='get' id='{id}' from='{me}' to='{pump}'/>", {err("bad-request")}, True),
    ("iq_set_without_payload", "<iq type='set' id='{id}' from='{me}' to='{pump}'/>", {err("bad-request")}, True),
    ("iq_two_payloads",
     "<iq type='get' id='{id}' from='{me}' to='{pump}'><ping xmlns='urn:xmpp:ping'/>"
     "<query xmlns='jabber:iq:version'/></iq>", {err("bad-request")}, True),
    ("iq_garbage_attributes",
     "<iq type='get' id='{id}' from='{me}' to='{pump}' zzz='1' xmlns:g='urn:g' g:a='b'>"
     "<ping xmlns='urn:xmpp:ping' extra='x'/></iq>", {RESULT}, True),
    # not get, set, result or error: bad-request (RFC 6120 8.2.3, 8.3.3.1)
    ("iq_bogus_type", "<iq type='bogus' id='{id}' from='{me}' to='{pump}'><ping xmlns='urn:xmpp:ping'/></iq>",
     {err("bad-request")}, True),
    ("iq_without_type", "<iq id='{id}' from='{me}' to='{pump}'><ping xmlns='urn:xmpp:ping'/></iq>",
     {err("bad-request")}, True),
    # The id is required (RFC 6120 8.1.3) but the sender can still be told: bad-request
    # without an id, as there is none to echo (what Prosody answers its own clients).
    ("iq_missing_id", "<iq type='get' from='{me}' to='{pump}'><ping xmlns='urn:xmpp:ping'/></iq>",
     {err("bad-request")}, True),
    # No usable sender: there is nobody to address a reply to, so nothing is the only answer.
    ("iq_invalid_from", "<iq type='get' id='{id}' from='a@@b/c' to='{pump}'><ping xmlns='urn:xmpp:ping'/></iq>",
     {NONE}, False),
    ("iq_without_from", "<iq type='get' id='{id}' to='{pump}'><ping xmlns='urn:xmpp:ping'/></iq>", {NONE}, False),
    # Not a stanza at all: there is no stanza error to send.
    ("unknown_top_level_element", "<frobnicate id='{id}' from='{me}' to='{pump}'/>", {NONE}, False),
    # Not requests. A message of a type not understood is a normal one (RFC 6121 5.2.2),
    # here asking nothing of the device; Prosody refuses an unknown presence type from
    # its clients with bad-request, the gateway may do the same or ignore it.
    ("message_bogus_type", "<message type='bogus' id='{id}' from='{me}' to='{pump}'><body>x</body></message>",
     {err("bad-request"), NONE}, True),
    ("presence_bogus_type", "<presence type='bogus' id='{id}' from='{me}' to='{pump}'/>",
     {err("bad-request"), NONE}, True),
]


# Where the servers differ in what reaches alice. ejabberd drops an iq without an id that
# the component sends (silently; its parser requires the id), so the gateway's bad-request
# never reaches her; Prosody passes it on. The gateway's answer is checked on the
# component stream (WIRE) on both.
DELIVERED = {("ejabberd", "iq_missing_id"): {NONE}}
WIRE = {
    # an error iq with no id attribute, bad-request
    "iq_missing_id": r"""<iq(?![^>]*\sid=)[^>]*\stype=['"]error['"][^>]*>(?:(?!</iq>).)*<bad-request""",
}


def stanza_condition(el: ET.Element) -> str | None:
    for c in el.iterfind("{jabber:client}error/*"):
        if c.tag.startswith(f"{{{NS_STANZAS}}}") and not c.tag.endswith("}text"):
            return c.tag.split("}", 1)[1]
    return None


def replies_from_pump(alice, kind: str, stanza_id: str) -> list[tuple[str, str | None]]:
    """Every reply of the stanza's kind carrying `stanza_id` ("" for none) from pump1."""
    def ours(frm: str | None) -> bool:
        return (frm or "").split("/", 1)[0] == PUMP
    # what is not a stanza could be answered as any of them
    kinds = {kind} & {"iq", "message", "presence"} or {"iq", "message", "presence"}
    got = []
    if "iq" in kinds:
        found = [t for t, _i, f in alice.replies_to(stanza_id) if ours(f)]
        el = alice.iq_replies.get(stanza_id)
        cond = parse_iq_reply(el).condition if el is not None else None
        got += [kind_of(t, cond) for t in found]
    els = list(alice.messages) if "message" in kinds else []
    els += [ET.fromstring(p.xml) for p in alice.presences] if "presence" in kinds else []
    return got + [kind_of(e.get("type") or "", stanza_condition(e)) for e in els
                  if (e.get("id") or "") == stanza_id and ours(e.get("from"))]


@pytest.mark.parametrize("name,template,allowed,keep_link", INJECTED, ids=[c[0] for c in INJECTED])
def test_injected_malformed_stanza(env, linked, name, template, allowed, keep_link):
    proxy, gw, alice = linked
    pid = gw.pid
    stanza_id = f"inj-{name}" if "{id}" in template else ""
    kind = template[1:].split(" ", 1)[0]
    proxy.inject_downstream(template.format(id=stanza_id, me=alice.full_jid, pump=PUMP))
    # wait until the gateway answers pings again (immediately, unless it had to reconnect):
    # a reply sent before the pong has arrived by then
    wait_for(lambda: alice.ping(env.dev("pump1"), timeout=3).ok, 15, "the gateway to answer a ping again")
    got = replies_from_pump(alice, kind, stanza_id)
    print(f"{name}: replies {got}, component connections {proxy.accepted}")
    assert len(got) <= 1, f"{name}: answered more than once: {got}"
    allowed = DELIVERED.get((env.server_name, name), allowed)
    assert set(got or [NONE]) <= allowed, f"{name}: got {got or [NONE]}, allowed {sorted(allowed, key=str)}"
    if name in WIRE:
        sent = proxy.upstream_text()
        assert re.search(WIRE[name], sent, re.S), f"{name}: the gateway's answer is not on the wire:\n{sent[-2000:]}"
    assert gw.running and gw.pid == pid, f"gateway died on {name}\n{gw.log_tail()}"
    if keep_link:
        assert proxy.accepted == 1, f"{name}: the gateway dropped its component link ({proxy.accepted} connections)"
