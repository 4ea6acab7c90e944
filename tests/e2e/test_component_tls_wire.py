"""TLS on the component link against a real ejabberd, read on the wire (issue 13, item 2;
README "TLS on the component link").

test_component_tls.py runs deployment pattern (b) on both servers: the link up, and each
refusal with its log line. This module adds what is seen only between the gateway and the
server: every gateway reaches its listener through a recording TCP proxy
(harness.TcpProxy(record=True)), and what it sent on each connection is checked. So "never
falls back to plaintext" is proved on the wire: every connection, the first and each retry
after a refusal, opens with a TLS ClientHello (record type 0x16, version 0x03xx, handshake
type 1) and no byte of an XMPP stream header or of the component handshake ever goes out
in the clear; the control is a gateway without TLS, whose stream the same check sees. The
ClientHello's server_name extension (SNI) is read too: absent when the gateway connects by
address, the configured `server_name` when set. Also here: a `ca_file` of another CA (the
server's certificate good), and a certificate for a name only, refused by address and
accepted with `server_name`.

One ejabberd for the module (one start, 13 s for the module), with the harness' plaintext
component listener and one `ejabberd_service` listener with `tls: true` per server
certificate (certs.py; ejabberd.Service):

  good        the CA's leaf for localhost + 127.0.0.1
  untrusted   the same names, signed by an unrelated CA
  wrong_host  the CA's leaf whose only name is wrong.example
  expired     the CA's leaf for localhost + 127.0.0.1, expired yesterday
  named       a leaf (of a second CA) for xmpp.fieldgate.test only, no address

ejabberd presents a listener's own `certfile` when the client sends no name (SNI), and picks
among all its certificates by name when it sends one. The gateway sends no name when it
connects by address, so every gateway here connects to 127.0.0.1 and, but for the
server_name case, gets the certificate of the listener it reached.

A client certificate the server requires cannot be tested here: ejabberd 23.01 asks for one
on a listener with a `cafile` but accepts any or none (src/xmpp/tls.rs tests it against an
in-process server).
"""

from __future__ import annotations

import re
import shutil
import struct
import tempfile
from pathlib import Path

import pytest

from certs import make_certs
from ejabberd import Service
from harness import NS_PING, Gateway, HarnessError, TcpProxy, make_env, sim_device, wait_for
from iot import NS_SD, IotClient, q, req_iq

NAMED_HOST = "xmpp.fieldgate.test"
DEVICE = "meter1"
ACCESS = {"subscribe": ["alice@example.test"], "read": ["alice@example.test"]}


def devices() -> list[dict]:
    return [sim_device(DEVICE, name="Meter 1", fields=[
        {"name": "energy", "type": "long", "unit": "Wh",
         "sim": {"kind": "counter", "start": 1000, "step": 1, "every": "1s"}},
    ])]


# -- the ClientHello, read from the recorded bytes


def client_hello_sni(data: bytes) -> str | None:
    """The server name a TLS ClientHello at the start of `data` carries (None: no SNI).
    Fails the test if `data` does not start with a ClientHello."""
    assert len(data) >= 6, f"fewer than 6 bytes sent: {data!r}"
    # TLSPlaintext: type 22 (handshake), legacy version 3.x, length; Handshake: type 1
    assert data[0] == 0x16 and data[1] == 0x03, f"not a TLS record: the connection opened with {data[:40]!r}"
    assert data[5] == 0x01, f"not a ClientHello (handshake type {data[5]})"
    (rec_len,) = struct.unpack(">H", data[3:5])
    body = data[5:5 + rec_len]
    hs_len = int.from_bytes(body[1:4], "big")
    hello = body[4:4 + hs_len]
    i = 2 + 32  # legacy_version, random
    i += 1 + hello[i]  # session id
    i += 2 + struct.unpack(">H", hello[i:i + 2])[0]  # cipher suites
    i += 1 + hello[i]  # compression methods
    (ext_total,) = struct.unpack(">H", hello[i:i + 2])
    i += 2
    end = i + ext_total
    while i + 4 <= end:
        etype, elen = struct.unpack(">HH", hello[i:i + 4])
        ext = hello[i + 4:i + 4 + elen]
        if etype == 0:  # server_name: list length, type 0 (host_name), name length, name
            assert ext[2] == 0, ext
            (nlen,) = struct.unpack(">H", ext[3:5])
            return ext[5:5 + nlen].decode()
        i += 4 + elen
    return None


PLAINTEXT_MARKS = (b"<stream", b"jabber:component:accept", b"<handshake", b"<?xml")


def assert_all_tls(proxy: TcpProxy, sni: str | None) -> list[bytes]:
    """Every connection the gateway made opened with a ClientHello naming `sni` (None: no
    name), and nothing XMPP went out in the clear."""
    conns = proxy.upstream_connections()
    assert conns, "the gateway made no connection"
    for n, data in enumerate(conns):
        assert client_hello_sni(data) == sni, f"connection {n}"
        for mark in PLAINTEXT_MARKS:
            assert mark not in data, f"connection {n} carried {mark!r} in the clear: {data[:200]!r}"
    return conns


# -- fixtures


@pytest.fixture(scope="module")
def tls_env(tls_certs):
    root = Path(tempfile.mkdtemp(prefix="fg-e2e-tls-"))
    named = make_certs(root / "named-certs", dns_names=(NAMED_HOST,), ip_addresses=())
    services = {
        "good": Service(tls=True, certfile=tls_certs.server.bundle),
        "untrusted": Service(tls=True, certfile=tls_certs.untrusted.bundle),
        "wrong_host": Service(tls=True, certfile=tls_certs.wrong_host.bundle),
        "expired": Service(tls=True, certfile=tls_certs.expired.bundle),
        "named": Service(tls=True, certfile=named.server.bundle),
    }
    env = make_env(root, server="ejabberd", users=("alice",), services=services)
    env.named_certs = named
    try:
        yield env
    finally:
        env.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def gateway(tls_env, workdir):
    """start(listener_port, xmpp=...) -> (gateway, recording proxy in front of the port)."""
    made: list = []

    def start(port: int, wait_ready: bool, **xmpp) -> tuple[Gateway, TcpProxy]:
        proxy = TcpProxy(port, record=True)
        made.append(proxy)
        gw = Gateway(workdir / f"gw{len(made)}", tls_env.server)
        made.append(gw)
        gw.write_config(devices(), access=ACCESS, xmpp={"server": f"127.0.0.1:{proxy.port}", **xmpp})
        gw.start(wait_ready=wait_ready)
        return gw, proxy

    yield start
    for x in reversed(made):
        x.close()


@pytest.fixture
def alice(tls_env):
    c = IotClient(tls_env.server, "alice")
    c.connect()
    yield c
    c.close()


# -- helpers


def assert_readable(alice: IotClient, jid: str) -> None:
    """The device's presence reaches a subscribed client and a readout returns its value."""
    m = alice.mark()
    alice.subscribe(jid)
    alice.wait_presence(jid, "available", m, timeout=15)
    mk = alice.mark_stanzas()
    r = alice.iq(req_iq(jid, 7, momentary=True))
    assert r.ok, r.condition
    payloads = alice.wait_readout_end(7, mk)
    values = [f.get("value") for p in payloads if p.tag == q(NS_SD, "fields")
              for node in p for ts in node for f in ts if f.get("name") == "energy"]
    assert values and int(values[0]) >= 1000, payloads
    assert alice.ping(jid).ok


def refused(gw: Gateway, proxy: TcpProxy, reason: str, attempts: int = 3) -> str:
    """Waits for the link-down line with `reason` and for `attempts` connections; checks the
    link never came up. Returns the matching log line."""
    pattern = re.compile(r"component link down.*reason=" + reason)

    def seen():
        if not gw.running:
            raise HarnessError(f"the gateway exited\n{gw.log_tail(30)}")
        return pattern.search(gw.log_text())

    line = wait_for(seen, 15, f"the log line matching {pattern.pattern!r}")
    wait_for(lambda: len(proxy.upstream_connections()) >= attempts, 15,
             f"{attempts} connection attempts (the link retries)")
    text = gw.log_text()
    assert "component link up" not in text, gw.log_tail(30)
    assert not gw.notify.seen("READY=1")
    assert gw.running
    return text[line.start():text.index("\n", line.start())]


def assert_unreachable(alice: IotClient, jid: str) -> None:
    """The server has no route to the device: its ping bounces (ejabberd: no component,
    so s2s, which fails)."""
    r = alice.iq(f"<iq type='get' to='{jid}' id='tls-ping'><ping xmlns='{NS_PING}'/></iq>", timeout=15)
    assert r.type == "error", r


# -- the tests


def test_gateway_over_tls_with_ca_file(tls_env, gateway, alice, tls_certs):
    svc = tls_env.server.services["good"]
    gw, proxy = gateway(svc.port, True, tls={"ca_file": str(tls_certs.ca_cert)})
    assert_readable(alice, tls_env.dev(DEVICE))
    # by address: no name sent; ClientHello first, the stream and handshake encrypted
    conns = assert_all_tls(proxy, None)
    assert len(conns) == 1, f"{len(conns)} connections for one link"
    assert "component link down" not in gw.log_text()


@pytest.mark.parametrize("listener,ca,reason", [
    ("untrusted", "ca", r"TLS: the server's certificate is not signed by a trusted CA"),
    ("good", "wrong_ca", r"TLS: the server's certificate is not signed by a trusted CA"),
    ("wrong_host", "ca", r'TLS: the server\'s certificate is not valid for the name "127\.0\.0\.1": '
                         r'it carries only DnsName\("wrong\.example"\)'),
    ("expired", "ca", r"TLS: the server's certificate has expired: it was valid until \d{4}-\d\d-\d\dT"),
], ids=["server-cert-of-another-CA", "ca_file-of-another-CA", "wrong-name", "expired"])
def test_bad_certificate_refused_never_plaintext(tls_env, gateway, alice, tls_certs, listener, ca, reason):
    svc = tls_env.server.services[listener]
    ca_file = tls_certs.ca_cert if ca == "ca" else tls_certs.wrong_ca_cert
    gw, proxy = gateway(svc.port, False, tls={"ca_file": str(ca_file)})
    refused(gw, proxy, reason)
    # every attempt, retries included, was TLS from the first byte
    assert_all_tls(proxy, None)
    assert_unreachable(alice, tls_env.dev(DEVICE))
    # the client that subscribed in an earlier test never hears of the device
    assert [p for p in alice.presences_since(0, frm=tls_env.dev(DEVICE)) if p.type == "available"] == []


def test_server_name_override(tls_env, gateway, alice):
    """A certificate for a name, reached by address: refused without server_name (the
    address is not on it), accepted with server_name, which is sent as SNI."""
    svc = tls_env.server.services["named"]
    ca = str(tls_env.named_certs.ca_cert)
    gw, proxy = gateway(svc.port, False, tls={"ca_file": ca})
    refused(gw, proxy, r'TLS: the server\'s certificate is not valid for the name "127\.0\.0\.1": '
                       rf'it carries only DnsName\("{re.escape(NAMED_HOST)}"\); set server_name', attempts=2)
    assert_all_tls(proxy, None)
    gw.close()

    gw, proxy = gateway(svc.port, True, tls={"ca_file": ca, "server_name": NAMED_HOST})
    assert_readable(alice, tls_env.dev(DEVICE))
    assert_all_tls(proxy, NAMED_HOST)
    assert "component link down" not in gw.log_text()


def test_plaintext_gateway_on_tls_port_gets_hint(tls_env, gateway, alice):
    svc = tls_env.server.services["good"]
    gw, proxy = gateway(svc.port, False)
    refused(gw, proxy, r"no stream from 127\.0\.0\.1:\d+: .*\(if the server's component listener "
                       r"expects TLS, set tls in \[xmpp\]\)", attempts=2)
    # (the control: this gateway did speak XMPP in the clear)
    assert all(c.startswith(b"<?xml") or c.startswith(b"<stream") for c in proxy.upstream_connections())
    assert_unreachable(alice, tls_env.dev(DEVICE))


def test_tls_gateway_on_plaintext_port_refused(tls_env, gateway, alice, tls_certs):
    gw, proxy = gateway(tls_env.server.component_port, False, tls={"ca_file": str(tls_certs.ca_cert)})
    refused(gw, proxy, r"TLS: the server does not speak TLS on this port \(a plaintext listener\?\)")
    assert_all_tls(proxy, None)
    assert_unreachable(alice, tls_env.dev(DEVICE))
