"""Fair service under a flood: while one user sends 10,000 stanzas (pings, readouts, disco
queries, requests the gateway refuses) as fast as its connection takes them, another
user's pings and readouts all complete, with a p99 within five times the p99 it had on a
quiet gateway, measured in the same run. The gateway serves senders (bare JIDs) in turn
and drops the flooder's excess first (counted, logged).
"""

from __future__ import annotations

import base64
import itertools
import socket
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from harness import NS_PING, PASSWORD, gateway_toml, make_env, sim_device
from iot import NS_SD, IotClient, req_iq

DEV = "pump@gw.example.test"
FLOOD = 10_000
_seq = itertools.count(1)


@pytest.fixture(scope="module")
def env():
    root = Path(tempfile.mkdtemp(prefix="fg-fair-"))
    e = make_env(root, users=("alice", "flood"))
    try:
        gw = e.new_gateway()
        jids = ["alice@example.test", "flood@example.test"]
        devices = [sim_device("pump", fields=[
            {"name": f"f{i}", "type": "double", "sim": {"kind": "sine", "period": "10s",
                                                        "amplitude": 1.0, "offset": float(i)}}
            for i in range(10)], max_age="0s")]
        gw.write_raw_config(gateway_toml(e.prosody, gw.state_dir, devices,
                                         {"subscribe": jids, "read": jids}))
        gw.start()
        yield e
    finally:
        e.close()
        shutil.rmtree(root, ignore_errors=True)


def client(e, user):
    c = IotClient(e.prosody, user)
    e.clients.append(c)
    return c.connect()


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure(c, n) -> list[float]:
    """`n` rounds of a ping and a readout (every field, read from the device), each timed
    from send to answer; a failure or timeout fails the test."""
    times = []
    for _ in range(n):
        t = time.monotonic()
        r = c.ping(DEV, timeout=10)
        assert r.ok, f"ping: {r.condition} {r.text}"
        times.append(time.monotonic() - t)
        s = next(_seq)
        mk = c.mark_stanzas()
        t = time.monotonic()
        r = c.iq(req_iq(DEV, s, momentary="true"), timeout=10)
        assert r.ok, f"readout: {r.condition} {r.text}"
        c.wait_readout_end(s, mk, timeout=10)
        times.append(time.monotonic() - t)
    return times


class RawFlooder:
    """A c2s session on a plain socket (SASL PLAIN, bind) that writes what it is given and
    reads everything back unparsed: the flood must not share the measuring client's event
    loop, nor cost it the parsing of 10,000 answers."""

    def __init__(self, prosody, user: str):
        self.sock = socket.create_connection(("127.0.0.1", prosody.c2s_port), timeout=10)
        self.buf = b""
        header = (f"<?xml version='1.0'?><stream:stream to='example.test' version='1.0' "
                  f"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        self.sock.sendall(header.encode())
        self._until(b"</stream:features>")
        token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        self.sock.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                          f"{token}</auth>".encode())
        self._until(b"<success")
        self.sock.sendall(header.encode())
        self._until(b"</stream:features>")
        self.sock.sendall(b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                          b"<resource>flood</resource></bind></iq>")
        self._until(b"</iq>")
        self.received = 0
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _until(self, marker: bytes) -> None:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"flooder: stream closed waiting for {marker!r}: {self.buf[-300:]!r}")
            self.buf += chunk
        self.buf = self.buf[self.buf.index(marker) + len(marker):]

    def _drain(self) -> None:
        self.sock.settimeout(None)
        try:
            while chunk := self.sock.recv(1 << 20):
                self.received += chunk.count(b"<iq ")
        except OSError:
            pass

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def close(self) -> None:
        try:
            self.sock.sendall(b"</stream:stream>")
        except OSError:
            pass
        self.sock.close()


def flood_stanzas() -> list[str]:
    kinds = [
        lambda i: f"<iq type='get' id='f{i}' to='{DEV}'><ping xmlns='{NS_PING}'/></iq>",
        lambda i: req_iq(DEV, 1_000_000 + i, momentary="true", iq_id=f"f{i}"),
        lambda i: f"<iq type='get' id='f{i}' to='gw.example.test'>"
                  f"<query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        lambda i: f"<iq type='set' id='f{i}' to='{DEV}'><set xmlns='urn:xmpp:iot:control'>"
                  f"<double name='nope' value='1'/></set></iq>",
        lambda i: f"<iq type='get' id='f{i}' to='{DEV}'><x xmlns='urn:example:unknown'/></iq>",
    ]
    return [kinds[i % len(kinds)](i) for i in range(FLOOD)]


def test_a_flood_from_one_user_does_not_starve_another(env):
    alice = client(env, "alice")
    flooder = RawFlooder(env.prosody, "flood")
    measure(alice, 10)  # warm-up
    quiet = measure(alice, 60)

    stanzas = flood_stanzas()
    sent = threading.Event()

    def flood():
        for i in range(0, len(stanzas), 100):
            flooder.send("".join(stanzas[i:i + 100]))
        sent.set()

    before = env.gateway.log_size()
    t = threading.Thread(target=flood, daemon=True)
    t0 = time.monotonic()
    t.start()
    busy = []
    while not sent.is_set() or len(busy) < 60:
        busy += measure(alice, 5)
    took = time.monotonic() - t0
    t.join(timeout=30)
    q99, b99 = pct(quiet, 0.99), pct(busy, 0.99)
    print("slow:", [(i, round(x * 1000)) for i, x in enumerate(busy) if x > 0.1])
    print(f"quiet p50 {pct(quiet, 0.5) * 1000:.1f} ms p99 {q99 * 1000:.1f} ms; during the flood "
          f"({took:.1f} s, {len(busy)} requests) p50 {pct(busy, 0.5) * 1000:.1f} ms p99 {b99 * 1000:.1f} ms")
    assert b99 <= 5 * q99, f"p99 {b99 * 1000:.1f} ms under the flood, {q99 * 1000:.1f} ms quiet"
    time.sleep(1)
    print(f"flooder: {flooder.received} of {FLOOD} answered so far")
    flooder.close()
    dropped = [line for line in env.gateway.log_since(before).splitlines() if "stanza dropped" in line]
    print(f"{len(dropped)} drop log lines: {dropped[-1][:200] if dropped else ''}")
