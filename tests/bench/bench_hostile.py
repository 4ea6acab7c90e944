"""Hostile-input benchmark: what a refused stanza costs the gateway, and whether other users
notice a flood of them. Against a real Prosody at its default limits; hostile and plain
stanzas are injected raw into the component stream by a proxy (as a server would deliver
them), with a registered user as sender so that the gateway's answers are routed.

Figures (printed as `name: value` lines):
  cpu_us_<shape>_hostile     gateway CPU (all threads) per stanza refused by the guard
  cpu_us_<shape>_plain       the same for a plain stanza of the same size (as many elements
                             one level deep, or the attribute's bytes as text)
  cpu_ratio_<shape>          hostile / plain: the issue's "small constant factor"
      shapes: deep1000, deep6000, deep100000 (nested <a>), attr8k, attr64k, attr1m, and
      minimal (an empty message: what any stanza costs, answer included)
  ping_ms_p50/p99_idle       another user's pings to a device, one after the other, idle
  ping_ms_p50/p99_flood_plain / _hostile
                             the same while a user without rights sends, through Prosody,
                             --flood-rate (50) messages a second of 6,000 elements: flat
                             (plain), or nested 6,000 deep (hostile; 4,000 deep used to
                             delay pings by 0.8-1.5 s, 6,000 to crash the gateway)
  flood_<kind>_stanzas_per_s the offered load actually sent
  flood_<kind>_gateway_cpu_share  gateway CPU seconds per second during that flood
  component_connections      1 if the component link never dropped
  gateway_alive              1 if the gateway process survived

Not pass/fail. Run through `bash tests/bench/run_hostile.sh` (release build).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

import harness as h  # noqa: E402
from benchlib import report, teardown  # noqa: E402


def nest(depth: int) -> str:
    return "<x xmlns='urn:example:x'>" + "<a>" * depth + "</a>" * depth + "</x>"


def flat(depth: int) -> str:
    return "<x xmlns='urn:example:x'>" + "<a></a>" * depth + "</x>"


SHAPES = {
    "minimal": ("", ""),
    "deep1000": (nest(1000), flat(1000)),
    "deep6000": (nest(6000), flat(6000)),
    "deep100000": (nest(100_000), flat(100_000)),
    "attr8k": ("<x xmlns='urn:example:x' v='" + "v" * 8192 + "'/>", "<x xmlns='urn:example:x'>" + "v" * 8192 + "</x>"),
    "attr64k": ("<x xmlns='urn:example:x' v='" + "v" * 65536 + "'/>", "<x xmlns='urn:example:x'>" + "v" * 65536 + "</x>"),
    "attr1m": ("<x xmlns='urn:example:x' v='" + "v" * 1048576 + "'/>",
               "<x xmlns='urn:example:x'>" + "v" * 1048576 + "</x>"),
}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20, help="stanzas of each shape")
    ap.add_argument("--flood-seconds", type=float, default=5.0)
    ap.add_argument("--flood-rate", type=float, default=50.0, help="stanzas per second")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fg-bench-hostile-"))
    env = None
    try:
        env = h.make_env(root, log_level="info", default_limits=True)
        proxy = env.proxy()
        gw = env.new_gateway()
        gw.write_config([h.sim_device("pump1", fields=[{"name": "p", "type": "double", "sim": {"kind": "constant", "value": 1.0}}])],
                        access={"read": ["alice@example.test"]}, xmpp={"server": f"127.0.0.1:{proxy.port}"})
        gw.start()
        alice = env.client("alice")
        carol = env.client("carol")
        me = carol.full_jid
        target = f"nosuch@{env.domain}"
        pump = env.dev("pump1")
        pid = gw.pid

        def batch(payload: str, tag: str) -> float:
            # One write of all of them: a stanza arriving alone costs a wake-up of the
            # runtime (~100-300 us here, whatever the stanza), which would hide the rest.
            text = "".join(f"<message to='{target}' from='{me}' id='{tag}{i}'>{payload}</message>"
                           for i in range(args.count))
            cpu0 = h.cpu_ns(pid)
            proxy.inject_downstream(text)
            assert carol.ping(env.domain, timeout=60).ok  # after every injected stanza
            return (h.cpu_ns(pid) - cpu0) / args.count / 1000.0

        for name, (hostile, plain) in SHAPES.items():
            p = batch(plain, f"p-{name}-")
            x = batch(hostile, f"x-{name}-")
            report(f"cpu_us_{name}_hostile", x)
            report(f"cpu_us_{name}_plain", p)
            if name != "minimal":
                report(f"cpu_ratio_{name}", x / p if p else 0.0)

        def pings(n: int) -> list[float]:
            out = []
            for _ in range(n):
                t0 = time.monotonic()
                assert alice.ping(pump, timeout=10).ok
                out.append((time.monotonic() - t0) * 1000)
            return out

        idle = pings(200)
        report("ping_ms_p50_idle", statistics.median(idle))
        report("ping_ms_p99_idle", pct(idle, 0.99))

        def flood(kind: str, payload: str) -> None:
            """carol sends `payload` messages through Prosody at --flood-rate for
            --flood-seconds while alice pings; offered load, not capacity."""
            stop = threading.Event()
            sent = [0]

            def run() -> None:
                period = 1.0 / args.flood_rate
                next_at = time.monotonic()
                while not stop.is_set():
                    carol.send_raw(f"<message to='{target}' id='f{sent[0]}'>{payload}</message>")
                    sent[0] += 1
                    next_at += period
                    stop.wait(max(0.0, next_at - time.monotonic()))

            t = threading.Thread(target=run, daemon=True)
            cpu0, t0 = h.cpu_ns(pid), time.monotonic()
            t.start()
            during: list[float] = []
            while time.monotonic() - t0 < args.flood_seconds:
                during += pings(10)
            stop.set()
            t.join(timeout=30)
            elapsed = time.monotonic() - t0
            assert carol.ping(env.domain, timeout=60).ok
            report(f"ping_ms_p50_flood_{kind}", statistics.median(during))
            report(f"ping_ms_p99_flood_{kind}", pct(during, 0.99))
            report(f"flood_{kind}_stanzas_per_s", sent[0] / elapsed)
            report(f"flood_{kind}_gateway_cpu_share", (h.cpu_ns(pid) - cpu0) / 1e9 / elapsed)

        flood("plain", flat(6000))
        flood("hostile", nest(6000))
        assert carol.ping(env.domain, timeout=60).ok
        report("component_connections", proxy.accepted)
        report("gateway_alive", int(gw.running and gw.pid == pid))
        return 0
    finally:
        teardown(env, root, args.keep)


if __name__ == "__main__":
    sys.exit(main())
