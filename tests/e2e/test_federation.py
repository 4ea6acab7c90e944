"""Deployment pattern (c): a small Prosody on the gateway box ("edge": the fieldgate
component on loopback) federating over s2s with the site's main server ("main": the
users), TLS required and certificates verified on both sides (`s2s_secure_auth = true`).

Two real Prosody servers on loopback addresses of their own, each on port 5269 (no SRV
records: that is the port a server connects to), names resolved from a hosts file of the
test's own through Prosody's `unbound` option (see federation.py), certificates from the
harness' CA (certs.py). A user of main.test reaches the devices of gw.edge.test: presence
subscription, probe after logging in again, XEP-0323 readout, XEP-0325 control read back;
and the s2s link is refused, with an error to the client, when either server's
certificate names another domain, comes from an unknown CA or has expired.
"""

from __future__ import annotations

import itertools
from pathlib import Path
import xml.etree.ElementTree as ET

import pytest

from harness import NS_CLIENT, NS_STANZAS, HarnessError, sim_device
from iot import NS_CTL, NS_SD, all_fields, brief, by_name, q, req_iq, set_iq

import federation
from federation import EDGE_COMPONENT, MAIN_DOMAIN, FedCerts, Federation, remove_root, temp_root

ALICE = f"alice@{MAIN_DOMAIN}"
PUMP = f"pump1@{EDGE_COMPONENT}"

# alice: everything; bob: subscribe and read, no control
ACCESS = {"subscribe": [MAIN_DOMAIN], "read": [MAIN_DOMAIN], "control": [ALICE]}

DEVICES = [
    sim_device("pump1", name="Pump 1", fields=[
        {"name": "pressure", "type": "double", "unit": "bar", "decimals": 2,
         "sim": {"kind": "sine", "period": "60s", "amplitude": 1.5, "offset": 4.0}},
        {"name": "setpoint", "type": "double", "unit": "bar", "decimals": 1, "writable": True,
         "min": 0.0, "max": 10.0},
    ]),
]

_seq = itertools.count(1)


@pytest.fixture(scope="module")
def fed_certs():
    root = temp_root("fg-fedcerts-")
    try:
        try:
            certs = FedCerts(root)
        except HarnessError as e:
            pytest.fail(str(e), pytrace=False)
        yield certs
    finally:
        remove_root(root)


def _federation(certs: FedCerts, **kw) -> tuple[Federation, Path]:
    try:
        federation.check_unbound()
    except HarnessError as e:
        pytest.fail(str(e), pytrace=False)
    root = temp_root("fg-fed-")
    try:
        fed = Federation(root, certs, **kw)
    except BaseException:
        remove_root(root)
        raise
    return fed, root


@pytest.fixture(scope="module")
def fed(fed_certs):
    """main + edge with good certificates, the gateway up on edge."""
    f, root = _federation(fed_certs)
    try:
        f.start_gateway(DEVICES, ACCESS)
        yield f
    finally:
        f.close()
        remove_root(root)


def readout(c, dev: str = PUMP, timeout: float = 10.0) -> dict:
    """A momentary readout across the federation: {name: Fld}."""
    seqnr = next(_seq)
    mk = c.mark_stanzas()
    r = c.iq(req_iq(dev, seqnr, momentary=True), timeout=timeout)
    assert r.ok, f"readout refused: {r.condition} {r.text}\n{brief(r.xml)}"
    acc = r.payload()
    assert acc is not None and acc.tag == q(NS_SD, "accepted") and acc.get("seqnr") == str(seqnr), brief(r.xml)
    return by_name(all_fields(c.wait_readout_end(seqnr, mk, timeout)))


def stanza_error(el: ET.Element) -> tuple[str | None, str | None, str | None, str]:
    """(condition, type, by, text) of the RFC 6120 <error/> of a stanza (in jabber:client,
    or in no namespace as slixmpp prints a received stanza)."""
    err = next((c for c in el if c.tag in (f"{{{NS_CLIENT}}}error", "error")), None)
    assert err is not None, f"no <error/> in {brief(el)}"
    cond, text = None, ""
    for c in err:
        if c.tag.startswith(f"{{{NS_STANZAS}}}"):
            name = c.tag.split("}", 1)[1]
            if name == "text":
                text = c.text or ""
            elif cond is None:
                cond = name
    return cond, err.get("type"), err.get("by"), text


def s2s_lines(server, *words: str) -> list[str]:
    return [line for line in server.log_text().splitlines() if all(w in line for w in words)]


# --------------------------------------------------------------------------------------
# a main.test user reaches the devices of gw.edge.test


def test_main_user_subscribes_reads_and_sets_across_federation(fed):
    alice = fed.client("alice")

    # presence subscription: the gateway's answer and presence cross back over s2s
    m = alice.mark()
    alice.subscribe(PUMP)
    sub = alice.wait_presence(PUMP, "subscribed", m, timeout=15)
    assert sub.frm == PUMP
    avail = alice.wait_presence(PUMP, "available", m, timeout=15)
    assert avail.frm == f"{PUMP}/gw"
    assert avail.caps is not None and avail.caps.get("ver"), f"no XEP-0115 caps: {avail.xml}"
    assert fed.gateway.log_text().count(f"subscriber={ALICE}") >= 1, fed.gateway.log_tail()
    # main.test keeps the roster: the remote device is a contact with subscription 'to'
    assert alice.fetch_roster().get(PUMP) == "to"

    # XEP-0323 readout: values arrive
    f = readout(alice)
    assert set(f) == {"pressure", "setpoint"}, sorted(f)
    p = f["pressure"]
    assert p.tag == "numeric" and p.attrs.get("unit") == "bar"
    assert 2.5 - 0.01 <= float(p.value) <= 5.5 + 0.01, f"pressure {p.value} is not on the sine 4.0 ± 1.5"
    assert f["setpoint"].flag("writable")

    # XEP-0325 control: the value changes, read back through another readout
    new = "7.5" if f["setpoint"].value != "7.5" else "2.5"
    r = alice.iq(set_iq(PUMP, [("double", "setpoint", new)]))
    assert r.ok, f"set refused: {r.condition} {r.text}\n{brief(r.xml)}"
    sr = r.payload()
    assert sr is not None and sr.tag == q(NS_CTL, "setResponse") and sr.get("responseCode") == "OK", brief(r.xml)
    assert readout(alice)["setpoint"].value == new

    # The traffic went over s2s, TLS, both directions authenticated by certificate
    # (SASL EXTERNAL), as s2s_secure_auth demands.
    for server, local, remote in ((fed.main, MAIN_DOMAIN, EDGE_COMPONENT), (fed.edge, EDGE_COMPONENT, MAIN_DOMAIN)):
        assert s2s_lines(server, f"Outgoing s2s connection {local}->{remote} complete"), server.describe()
        assert s2s_lines(server, f"Incoming s2s connection {remote}->{local} complete"), server.describe()
        assert s2s_lines(server, "certificate identity validation result: valid"), server.describe()
        assert s2s_lines(server, "<auth", "mechanism='EXTERNAL'"), server.describe()
        assert not s2s_lines(server, "Forbidding insecure connection"), server.describe()


def test_access_policy_applies_to_federated_users(fed):
    """bob@main.test may read but not control: the gateway's policy sees the federated JID."""
    bob = fed.client("bob")
    assert "pressure" in readout(bob)
    r = bob.iq(set_iq(PUMP, [("double", "setpoint", "1.0")]))
    assert r.type == "error" and r.condition == "forbidden", brief(r.xml)


def test_presence_follows_the_gateway_and_probes_cross_the_federation(fed):
    alice = fed.client("alice", resource="presence")
    m = alice.mark()
    alice.subscribe(PUMP)
    alice.wait_presence(PUMP, "available", m, timeout=15)

    # the gateway stops: its unavailable presence reaches main.test's user
    m = alice.mark()
    code, _ = fed.gateway.stop()
    assert code == 0, fed.gateway.log_tail()
    alice.wait_presence(PUMP, "unavailable", m, timeout=15)
    # ... and the edge answers for the absent component, across the federation
    r = alice.iq(req_iq(PUMP, next(_seq), momentary=True), timeout=15)
    assert r.type == "error", brief(r.xml)
    cond, etype, by, text = stanza_error(r.xml)
    assert (cond, etype, by, text) == ("remote-server-timeout", "wait", EDGE_COMPONENT, "Component unavailable"), \
        brief(r.xml)
    assert r.xml.find(".//{xmpp:prosody.im/protocol/component}not-connected") is not None, brief(r.xml)

    # back: announced again to the subscriber across the federation
    m = alice.mark()
    fed.gateway.start()
    alice.wait_presence(PUMP, "available", m, timeout=15)

    # logging in again: main.test probes the contact over s2s and the gateway answers
    alice.disconnect()
    m = alice.mark()
    alice.connect()
    alice.wait_presence(PUMP, "available", m, timeout=15)


# --------------------------------------------------------------------------------------
# the TLS of the s2s link is checked: a bad certificate on either side refuses the link


@pytest.mark.parametrize("bad, reason, checker", [
    # main checks edge's certificate when it connects out to gw.edge.test
    ("edge_wrong_name", "is not valid for this name", "main"),
    ("edge_unknown_ca", "is not trusted", "main"),
    ("edge_expired", "has expired", "main"),
    # edge checks main's certificate (SASL EXTERNAL) when main connects in
    ("main_wrong_name", "is not valid for this name", "edge"),
    ("main_unknown_ca", "is not trusted", "edge"),
])
def test_bad_certificate_refuses_the_s2s_link(fed_certs, bad, reason, checker):
    certs = {"main_cert": bad} if bad.startswith("main_") else {"edge_cert": bad}
    f, root = _federation(fed_certs, users=("alice",), **certs)
    try:
        gw = f.start_gateway(DEVICES, ACCESS)  # the component is up: only the TLS check is in the way
        alice = f.client("alice")

        # a subscription: bounced with a presence error, never approved by the gateway
        m = alice.mark()
        alice.subscribe(PUMP)
        bounce = alice.wait_presence(PUMP, "error", m, timeout=15)
        cond, etype, by, text = stanza_error(ET.fromstring(bounce.xml))
        assert (cond, etype, by) == ("remote-server-timeout", "wait", MAIN_DOMAIN), bounce.xml
        assert reason in text, f"{text!r} lacks {reason!r}"

        # a readout: an error, not a value. Prosody bounces the stanzas queued for the
        # failed s2s connection: 'wait', remote-server-timeout, by main.test, the reason
        # in the text.
        r = alice.iq(req_iq(PUMP, next(_seq), momentary=True), timeout=15)
        assert r.type == "error", f"a readout across a refused link must fail: {brief(r.xml)}"
        cond, etype, by, text = stanza_error(r.xml)
        assert (cond, etype, by) == ("remote-server-timeout", "wait", MAIN_DOMAIN), brief(r.xml)
        assert text.startswith("Server-to-server connection failed") and reason in text, text
        assert not r.xml.findall(f".//{q(NS_SD, 'fields')}"), "no value may come back"
        assert not [p for p in alice.presences_since(m, PUMP) if p.type != "error"], \
            [(p.frm, p.type) for p in alice.presences_since(m, PUMP)]

        # the server that checked says why, naming the peer whose certificate it refused
        server, peer = (f.main, EDGE_COMPONENT) if checker == "main" else (f.edge, MAIN_DOMAIN)
        assert s2s_lines(server, f"Forbidding insecure connection to/from {peer} because its certificate {reason}"), \
            server.describe()
        # nothing reached the gateway (it logs every approved subscription with the subscriber)
        assert f"subscriber={ALICE}" not in gw.log_text(), gw.log_tail()
    finally:
        f.close()
        remove_root(root)
