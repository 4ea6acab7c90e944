"""Hostile input from any user of the server: stanzas nested thousands deep, attributes of
kilobytes to a megabyte, requests whose honest answer would exceed the server's stanza
limit. None may crash the gateway, cut its component link or starve other users.

Prosody runs with its default limits here (c2s 256 KiB, component 512 KiB). What fits
under the c2s limit is sent by carol (a user holding no right on any device) through
Prosody; what does not is injected raw into the component stream by the proxy, as a server
with other limits (or a federated peer through one) would deliver it.
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET

import pytest

from conftest import linked_gateway, standard_devices
from harness import NS_STANZAS, cpu_ns, make_env, sim_device, wait_for

C2S_LIMIT = 256 * 1024
NS_SD = "urn:xmpp:iot:sensordata"


@pytest.fixture
def env(workdir):
    e = make_env(workdir, default_limits=True)
    try:
        yield e
    finally:
        e.close()


class Pinger:
    """A second user pinging a device every 50 ms from a thread, for as long as it runs."""

    def __init__(self, client, jid: str):
        self.client, self.jid = client, jid
        self.results: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pinger", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            r = self.client.iq_maybe(f"<iq type='get' to='{self.jid}'><ping xmlns='urn:xmpp:ping'/></iq>", timeout=5)
            self.results.append((time.monotonic() - t0, r is not None and r.ok))
            self._stop.wait(0.05)

    def stop(self) -> list[tuple[float, bool]]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.results


@pytest.fixture
def served(env):
    """The linked gateway, and carol, who holds no right on any device."""
    proxy, gw, alice = linked_gateway(env)
    return proxy, gw, alice, env.client("carol")


def nest(depth: int) -> str:
    return "<x xmlns='urn:example:x'>" + "<a>" * depth + "</a>" * depth + "</x>"


def flat(depth: int) -> str:
    """As many elements, and as many bytes, as nest(depth), but one level deep."""
    return "<x xmlns='urn:example:x'>" + "<a></a>" * depth + "</x>"


def stanza(kind: str, to: str, payload: str, sid: str, frm: str | None = None, id_attr: str | None = None) -> str:
    f = f" from='{frm}'" if frm else ""
    i = id_attr if id_attr is not None else sid
    if kind == "message":
        return f"<message to='{to}' id='{i}'{f}>{payload}</message>"
    if kind == "iq":
        return (f"<iq type='get' to='{to}' id='{i}'{f}>"
                f"<query xmlns='http://jabber.org/protocol/disco#info'>{payload}</query></iq>")
    return f"<presence to='{to}' id='{i}'{f}>{payload}</presence>"


def send(env, proxy, client, text: str) -> str:
    """Send through the client's c2s stream if Prosody takes it, else inject it raw into the
    component stream (with the client's full JID as sender). Returns which way it went."""
    if len(text.encode()) < C2S_LIMIT - 1024:
        client.send_raw(text)
        return "c2s"
    proxy.inject_downstream(text)
    return "raw"


def error_condition(el: ET.Element, ns_client: str = "jabber:client") -> str | None:
    err = el.find(f"{{{ns_client}}}error")
    if err is None:
        return None
    for c in err:
        if c.tag.startswith(f"{{{NS_STANZAS}}}") and not c.tag.endswith("}text"):
            return c.tag.split("}", 1)[1]
    return None


def error_text(el: ET.Element) -> str:
    t = el.find(f"{{jabber:client}}error/{{{NS_STANZAS}}}text")
    return (t.text or "") if t is not None else ""


def wait_reply(client, kind: str, sid: str, since: int, timeout: float = 15) -> ET.Element:
    if kind == "iq":
        wait_for(lambda: sid in client.iq_replies, timeout, f"a reply to iq {sid}")
        return client.iq_replies[sid]
    return client.wait_message(lambda m: m.get("id") == sid and m.get("type") == "error", since, timeout)


def assert_link_kept(proxy, gw, pid: int) -> None:
    assert gw.running and gw.pid == pid, f"the gateway died\n{gw.log_tail()}"
    assert proxy.accepted == 1, f"the component link was re-established ({proxy.accepted} connections)"
    assert gw.log_text().count("component link up") == 1, "the log shows a reconnect"


def run_batch(env, proxy, gw, carol, kind: str, payload: str, count: int, tag: str, expect_reply: bool):
    """Send `count` stanzas of one shape; returns (gateway CPU ns per stanza, replies, way)."""
    me = carol.full_jid
    target = env.domain if kind == "iq" else f"nosuch@{env.domain}"
    since = len(carol.messages)
    cpu0 = cpu_ns(gw.pid)
    way = ""
    sids = []
    for i in range(count):
        sid = f"{tag}-{i}"
        sids.append(sid)
        way = send(env, proxy, carol, stanza(kind, target, payload, sid, frm=me))
    replies = [wait_reply(carol, kind, sid, since) for sid in sids] if expect_reply else []
    # Every stanza has been handled once the gateway answered a ping sent after them.
    assert carol.ping(env.domain).ok
    cpu = cpu_ns(gw.pid) - cpu0
    return cpu / count, replies, way


@pytest.mark.parametrize("kind", ["message", "iq", "presence"])
@pytest.mark.parametrize("depth", [1000, 6000, 100_000])
def test_deep_nesting_is_refused_without_harm(env, served, kind, depth):
    proxy, gw, alice, carol = served
    pid = gw.pid
    pinger = Pinger(alice, env.dev("pump1"))
    try:
        expect = kind != "presence"
        n = 3 if depth > 10_000 else 5
        plain_cpu, _, _ = run_batch(env, proxy, gw, carol, kind, flat(depth), n, f"plain{depth}", expect)
        alice.barrier(env.dev("pump1"))
        hostile_cpu, replies, way = run_batch(env, proxy, gw, carol, kind, nest(depth), n, f"deep{depth}", expect)
        alice.barrier(env.dev("pump1"))
    finally:
        results = pinger.stop()
    print(f"{kind} depth {depth} via {way}: gateway CPU per stanza {hostile_cpu / 1e6:.2f} ms "
          f"(flat stanza of the same size {plain_cpu / 1e6:.2f} ms); {len(results)} pings, "
          f"max {max(r[0] for r in results) * 1000:.0f} ms")
    for r in replies:
        assert error_condition(r) == "policy-violation", ET.tostring(r, encoding="unicode")[:500]
        assert "nested deeper than 64" in error_text(r)
    assert results and all(ok for _, ok in results), f"another user's pings went unanswered: {results}"
    assert_link_kept(proxy, gw, pid)
    # Hostile input costs no more than plain input of the same size (noise allowance 2 ms).
    assert hostile_cpu <= 3 * plain_cpu + 2e6, (hostile_cpu, plain_cpu)


@pytest.mark.parametrize("size", [8 * 1024, 64 * 1024, 1024 * 1024])
@pytest.mark.parametrize("kind", ["message", "iq"])
def test_long_attribute_is_refused_without_harm(env, served, kind, size):
    """An attribute value of 8 KiB and more used to reset the component link (the parser's
    token limit); now the stanza alone is refused, the sender told why."""
    proxy, gw, alice, carol = served
    pid = gw.pid
    pinger = Pinger(alice, env.dev("pump1"))
    try:
        value = "v" * size
        plain_cpu, _, _ = run_batch(env, proxy, gw, carol, kind, f"<x xmlns='urn:example:x'>{value}</x>",
                                    3, f"plain{size}", kind == "message" or size < 200_000)
        hostile_cpu, replies, way = run_batch(env, proxy, gw, carol, kind, f"<x xmlns='urn:example:x' v='{value}'/>",
                                              3, f"attr{size}", True)
        alice.barrier(env.dev("pump1"))
    finally:
        results = pinger.stop()
    print(f"{kind} attribute {size} B via {way}: gateway CPU per stanza {hostile_cpu / 1e6:.2f} ms "
          f"(text of the same size {plain_cpu / 1e6:.2f} ms); {len(results)} pings")
    for r in replies:
        assert error_condition(r) == "policy-violation", ET.tostring(r, encoding="unicode")[:300]
        # the first bound broken is named (the attribute's, long before the stanza's)
        assert "attribute value longer than 8000" in error_text(r), error_text(r)
        assert len(ET.tostring(r)) < 2048, "the error echoes the request"
    assert results and all(ok for _, ok in results), f"another user's pings went unanswered: {results}"
    assert_link_kept(proxy, gw, pid)
    assert hostile_cpu <= 3 * plain_cpu + 2e6, (hostile_cpu, plain_cpu)


@pytest.mark.parametrize("size", [8300, 64 * 1024, 1024 * 1024])
def test_long_id_is_refused_and_not_echoed(env, served, size):
    """The probe's own stanza: a message whose id is longer than 8 KiB. The error goes back
    without the id (it cannot be echoed within bounds); an iq with such an id cannot be
    answered at all and is dropped."""
    proxy, gw, alice, carol = served
    pid = gw.pid
    me = carol.full_jid
    since = len(carol.messages)
    long_id = "i" * size
    for kind in ("message", "iq", "presence"):
        text = stanza(kind, f"nosuch@{env.domain}", "", "unused", frm=me, id_attr=long_id)
        send(env, proxy, carol, text)
    assert carol.ping(env.domain).ok
    err = carol.wait_message(lambda m: m.get("type") == "error" and m.get("from", "").startswith("nosuch@"), since)
    assert err.get("id") is None
    # an error without the id would break RFC 6120 8.1.3 (a reply carries the request's id)
    assert not [i for i in carol.iqs_in if i[2].startswith("nosuch@")], "the iq with the long id was answered"
    assert error_condition(err) == "policy-violation"
    assert len(ET.tostring(err)) < 2048
    assert alice.ping(env.dev("pump1")).ok
    assert_link_kept(proxy, gw, pid)


def test_legitimate_oversized_values_get_a_clear_error(env, served):
    """Values people might send in good faith: a 200 kB string to write, a `when` or a
    `maxInterval` with a 10,000-digit fraction. Each gets policy-violation naming the bound;
    a 5,000-digit fraction (within the bound) is read like any other."""
    proxy, gw, alice, carol = served
    pid = gw.pid
    pump = env.dev("pump1")
    big = "1" * 200_000
    r = alice.iq(f"<iq type='set' to='{pump}'><set xmlns='urn:xmpp:iot:control'>"
                 f"<string name='setpoint' value='{big}'/></set></iq>")
    assert (r.type, r.condition) == ("error", "policy-violation"), (r.type, r.condition, r.text)
    assert "8000" in r.text
    frac = "5" * 10_000
    r = alice.iq(f"<iq type='get' to='{pump}'><req xmlns='{NS_SD}' seqnr='1' momentary='true' "
                 f"when='2020-01-01T00:00:00.{frac}Z'/></iq>")
    assert (r.type, r.condition) == ("error", "policy-violation")
    r = alice.iq(f"<iq type='get' to='{pump}'><subscribe xmlns='urn:xmpp:iot:events' seqnr='2' "
                 f"maxInterval='PT1.{frac}S'><field name='pressure'/></subscribe></iq>")
    assert (r.type, r.condition) == ("error", "policy-violation")
    # within the bound: a past `when` with 5,000 fraction digits starts the readout at once
    m = len(alice.messages)
    r = alice.iq(f"<iq type='get' to='{pump}'><req xmlns='{NS_SD}' seqnr='3' momentary='true' "
                 f"when='2020-01-01T00:00:00.{frac[:5000]}Z'/></iq>")
    assert r.ok, (r.condition, r.text)
    alice.wait_message(lambda el: el.find(f"{{{NS_SD}}}fields[@seqnr='3']") is not None, m)
    assert_link_kept(proxy, gw, pid)


# --------------------------------------------------------------------------------------
# Replies the gateway sends: never over the bound, however large the honest answer.

OUT_LIMIT = 65536  # max_outbound_stanza_size's default


def big_device_env(env):
    from iot import IotClient

    proxy = env.proxy()
    gw = env.new_gateway()
    big = sim_device("big", name="Register map", fields=[
        {"name": "register{n}", "type": "int", "count": 6000,
         "sim": {"kind": "counter", "start": 0, "step": 1, "every": "1s"}},
    ])
    gw.write_config(standard_devices() + [big], access={"read": ["alice@example.test", "bob@example.test"]},
                    xmpp={"server": f"127.0.0.1:{proxy.port}"})
    gw.start()
    alice = IotClient(env.prosody, "alice")
    env.clients.append(alice)
    alice.connect()
    # a second user whose pings must keep being answered throughout
    pinger = Pinger(env.client("bob"), env.dev("pump1"))
    env.extras.append(_Stopper(pinger))
    return proxy, gw, alice, pinger


class _Stopper:
    def __init__(self, pinger: Pinger):
        self.pinger = pinger

    def close(self) -> None:
        self.pinger.stop()


def assert_pings_answered(pinger: Pinger) -> None:
    results = pinger.stop()
    assert results and all(ok for _, ok in results), f"another user's pings went unanswered: {results}"


def wire_len(el: ET.Element) -> int:
    """Bytes of `el` as the gateway wrote it on the component stream: Prosody forwards the
    same content; slixmpp writes it back with default namespaces, as the gateway does, but
    declares the stanza's own namespace and puts a space before each "/>"."""
    from slixmpp.xmlstream.tostring import tostring

    text = tostring(el)
    return len(text.encode()) - len(' xmlns="jabber:client"') - text.count(" />")


def test_a_readout_of_6000_fields_arrives_in_messages_under_the_limit(env):
    """A sim device of 6,000 fields: one <fields> of ~600 KB would exceed Prosody's
    component limit (512 KiB) and reset the link on every full readout."""
    from iot import all_fields, req_iq

    proxy, gw, alice, pinger = big_device_env(env)
    pid = gw.pid
    for seqnr in (1, 2):  # twice: the first reads the device, the second is served from the cache
        mk = alice.mark_stanzas()
        r = alice.iq(req_iq(env.dev("big"), seqnr, momentary="true"))
        assert r.ok, (r.condition, r.text)
        payloads = alice.wait_readout_end(seqnr, mk, timeout=30)
        messages = [s for s in alice.stanzas_since(mk) if any(p.get("seqnr") == str(seqnr) for p in s)]
        sizes = [wire_len(m) for m in messages if m.tag.endswith("message")]
        fields = all_fields(payloads)
        print(f"readout {seqnr}: {len(fields)} fields in {len(sizes)} messages, largest {max(sizes)} bytes")
        assert len(fields) == 6000
        assert sorted(f.name for f in fields) == sorted(f"register{n}" for n in range(6000))
        assert len(sizes) >= 8 and max(sizes) <= OUT_LIMIT
        done = [p.get("done") == "true" for p in payloads]
        assert done[-1] and not any(done[:-1]), "done='true' on the last message only"
    assert_pings_answered(pinger)
    assert_link_kept(proxy, gw, pid)


def test_an_event_of_6000_fields_is_split_too(env):
    from iot import all_fields, subscribe_iq

    proxy, gw, alice, pinger = big_device_env(env)
    pid = gw.pid
    mk = alice.mark_stanzas()
    r = alice.iq(subscribe_iq(env.dev("big"), 5, req="true", maxInterval="PT1H"))
    assert r.ok, (r.condition, r.text)
    payloads = alice.wait_readout_end(5, mk, timeout=30)
    names = {f.name for f in all_fields(payloads)}
    sizes = [wire_len(s) for s in alice.stanzas_since(mk) if s.tag.endswith("message")]
    assert {f"register{n}" for n in range(6000)} <= names
    assert len(sizes) >= 8 and max(sizes) <= OUT_LIMIT
    assert_pings_answered(pinger)
    assert_link_kept(proxy, gw, pid)


def test_thousands_of_unknown_filters_get_a_short_failure(env):
    """11,000 unknown <field name> filters (about 250 KB, under the c2s limit): the failure
    names the first ten and counts the rest, instead of a reply five times the request."""
    from iot import failure_texts

    proxy, gw, alice, pinger = big_device_env(env)
    pid = gw.pid
    filters = "".join(f"<field name='n{i:05}'/>" for i in range(11_000))
    mk = alice.mark_stanzas()
    # sent as written (the harness' iq() would add a prefix to every element)
    alice.send_raw(f"<iq type='get' id='many' to='{env.dev('pump1')}'>"
                   f"<req xmlns='{NS_SD}' seqnr='7' momentary='true'>{filters}</req></iq>")
    wait_for(lambda: "many" in alice.iq_replies, 20, "the readout to be accepted")
    assert alice.iq_replies["many"].get("type") == "result"
    payloads = alice.wait_readout_end(7, mk, timeout=20)
    texts = failure_texts(payloads)
    assert len(texts) == 11, texts[:3]
    assert texts[0].startswith("n00000") and "10990 more" in texts[-1], texts[-1][:200]
    assert max(wire_len(s) for s in alice.stanzas_since(mk)) < 8192
    assert_pings_answered(pinger)
    assert_link_kept(proxy, gw, pid)


def test_disco_items_of_many_devices_come_in_pages_under_the_limit(env):
    """1,500 devices: the domain's disco#items would be ~130 KB; it comes in pages (XEP-0059
    result set management) that each stay under the bound, and walking them with <after/>
    lists every device once."""
    n = 1500
    gw = env.new_gateway()
    gw.write_config([sim_device(f"sensor{i:04}", name=f"Temperature sensor {i:04} in hall B") for i in range(n)],
                    access={"read": ["alice@example.test"]})
    gw.start()
    alice = env.client("alice")
    r = alice.disco_items(env.domain)
    assert r.ok, (r.condition, r.text)
    seen: list[str] = []
    pages = 0
    while True:
        q = r.xml.find("{http://jabber.org/protocol/disco#items}query")
        assert wire_len(r.xml) <= OUT_LIMIT
        items = [i.get("jid") for i in q.findall("{http://jabber.org/protocol/disco#items}item")]
        rsm = q.find("{http://jabber.org/protocol/rsm}set")
        assert rsm is not None, "a partial list must say so"
        assert rsm.findtext("{http://jabber.org/protocol/rsm}count") == str(n)
        if not items:
            break
        first = rsm.find("{http://jabber.org/protocol/rsm}first")
        assert first.text == items[0] and first.get("index") == str(len(seen))
        seen += items
        pages += 1
        last = rsm.findtext("{http://jabber.org/protocol/rsm}last")
        r = alice.iq(f"<iq type='get' to='{env.domain}'><query xmlns='http://jabber.org/protocol/disco#items'>"
                     f"<set xmlns='http://jabber.org/protocol/rsm'><after>{last}</after></set></query></iq>")
        assert r.ok, (r.condition, r.text)
    print(f"{n} devices in {pages} pages")
    assert pages >= 2
    assert seen == [env.dev(f"sensor{i:04}") for i in range(n)]
    # a page size the client chooses
    r = alice.iq(f"<iq type='get' to='{env.domain}'><query xmlns='http://jabber.org/protocol/disco#items'>"
                 f"<set xmlns='http://jabber.org/protocol/rsm'><max>10</max></set></query></iq>")
    assert len(r.xml.findall(".//{http://jabber.org/protocol/disco#items}item")) == 10
