"""Fair service under a flood: while one user sends 10,000 stanzas (pings, readouts, disco
queries, requests the gateway refuses) as fast as its connection takes them, another
user's pings and readouts all complete, with a p99 within five times the p99 it had on a
quiet gateway, measured in the same run. The gateway serves senders (bare JIDs) in turn
and drops the flooder's excess first (counted, logged).
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
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


class Flooder:
    """flooder.py in a process of its own (see there): the flood must not share the
    measuring client's interpreter, nor cost it the parsing of 10,000 answers."""

    def __init__(self, prosody, user: str, stanzas: list[str], workdir: Path):
        path = workdir / "flood.xml"
        path.write_text("\n".join("".join(stanzas[i:i + 100]) for i in range(0, len(stanzas), 100)))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("flooder.py")), str(prosody.c2s_port), user,
             PASSWORD, str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready", "the flooder did not log in"
        self.sent = threading.Event()
        self.lines: list[str] = []

    def start(self) -> None:
        def watch():
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
            for line in self.proc.stdout:
                self.lines.append(line.strip())
                if line.strip() == "sent":
                    self.sent.set()
        threading.Thread(target=watch, daemon=True).start()

    def close(self) -> str:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        return " ".join(self.lines)


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
    measure(alice, 10)  # warm-up
    quiet = measure(alice, 60)

    flooder = Flooder(env.prosody, "flood", flood_stanzas(), env.root)
    before = env.gateway.log_size()
    t0 = time.monotonic()
    flooder.start()
    busy = []
    try:
        while not flooder.sent.is_set() or len(busy) < 60:
            busy += measure(alice, 5)
            assert time.monotonic() - t0 < 60, "the flood did not end"
    finally:
        took = time.monotonic() - t0
        time.sleep(1)
        said = flooder.close()
    q99, b99 = pct(quiet, 0.99), pct(busy, 0.99)
    print("slow:", [(i, round(x * 1000)) for i, x in enumerate(busy) if x > 0.1])
    print(f"quiet p50 {pct(quiet, 0.5) * 1000:.1f} ms p99 {q99 * 1000:.1f} ms; during the flood "
          f"({took:.1f} s, {len(busy)} requests) p50 {pct(busy, 0.5) * 1000:.1f} ms p99 {b99 * 1000:.1f} ms; "
          f"flooder: {said}")
    assert b99 <= 5 * q99, f"p99 {b99 * 1000:.1f} ms under the flood, {q99 * 1000:.1f} ms quiet"
    dropped = [line for line in env.gateway.log_since(before).splitlines() if "stanza dropped" in line]
    print(f"{len(dropped)} drop log lines: {dropped[-1][:200] if dropped else ''}")
