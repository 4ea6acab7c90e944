"""fieldgate events benchmark: what change-event subscriptions cost a polled device.

Layout: `--devices` Modbus devices (default 10) of `--registers` holding registers each
(default 1000), polled every `--poll` (default 1s) from the Modbus TCP simulator of
bench_modbus.py (one connection per device; every register changes every second), the
gateway against a real Prosody, and one slixmpp client.

Two phases of `--duration` seconds each, in one run:
  quiet      no subscription
  events     one subscription per device, every field, maxInterval = the poll period:
             every value delivered every poll, as a dashboard of the plant would ask

Figures (`name: value` lines, prefixed with the phase):
  sim_requests_per_s        requests the simulator answered per second (a subscription to
                            a polled device must add none)
  gateway_cpu_s             gateway CPU seconds in the window (utime + stime)
  cpu_s_per_100k_registers  gateway CPU per 100,000 registers polled (the simulator's count)
  events_per_s              event messages the client received per second
  values_per_s              field values in them per second
  values_per_device_cycle   values_per_s / devices / (1 / poll): 1,000 = every value of
                            every cycle delivered once
  event_latency_ms_p50/_p99 poll -> client: arrival at the client minus the event's
                            <timestamp> (the instant the adapter stamped the poll's values,
                            before its requests), wall clock of one machine, ms resolution
and, comparing the phases:
  events_cpu_us_per_value   (gateway CPU with events - without) / values delivered: what
                            delivering one value costs the gateway

Not pass/fail. Run through `bash tests/bench/run_events.sh` (release builds).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
from bench_modbus import Sim, cpu_s, device_id, modbus_config, parse_duration, pct  # noqa: E402
from benchlib import report, teardown  # noqa: E402
from iot import NS_SD, iso, parse_iso, subscribe_iq, unsubscribe_iq  # noqa: E402, F401


class EventLog:
    """Every event message's arrival (wall clock), value count and stamps."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recs: list[tuple[float, int, list[float]]] = []

    def on_message(self, msg) -> None:
        now = time.time()
        fields = msg.xml.find(f"{{{NS_SD}}}fields")
        if fields is None:
            return
        n = 0
        stamps = []
        for ts in fields.iter(f"{{{NS_SD}}}timestamp"):
            stamps.append(parse_iso(ts.get("value")))
            n += len(ts)
        with self.lock:
            self.recs.append((now, n, stamps))

    def between(self, t0: float, t1: float) -> list[tuple[float, int, list[float]]]:
        with self.lock:
            return [r for r in self.recs if t0 <= r[0] <= t1]


def window(args, gw, sim, log: EventLog, phase: str) -> dict[str, float]:
    s0 = sim.latest()
    c0, t0 = cpu_s(gw.pid), time.time()
    time.sleep(args.duration)
    c1, t1 = cpu_s(gw.pid), time.time()
    sim.latest()
    s1 = sim.at_whole_periods(s0, args.poll_s)
    win = t1 - t0
    req_s = (s1["requests"] - s0["requests"]) / (s1["t"] - s0["t"])
    regs_s = (s1["registers"] - s0["registers"]) / (s1["t"] - s0["t"]) if "registers" in s1 else float("nan")
    recs = log.between(t0, t1)
    values = sum(n for _, n, _ in recs)
    lat = [(at - st) * 1000 for at, _, stamps in recs for st in stamps[:1]]
    cpu = c1 - c0
    p = f"{phase}_"
    report(f"{p}window_s", win)
    report(f"{p}sim_requests_per_s", req_s)
    report(f"{p}gateway_cpu_s", cpu)
    if regs_s == regs_s and regs_s > 0:
        report(f"{p}cpu_s_per_100k_registers", cpu / (regs_s * win / 100_000))
    report(f"{p}events_per_s", len(recs) / win)
    report(f"{p}values_per_s", values / win)
    report(f"{p}values_per_device_cycle", values / win / args.devices * args.poll_s)
    if lat:
        report(f"{p}event_latency_ms_p50", pct(lat, 50))
        report(f"{p}event_latency_ms_p99", pct(lat, 99))
    return {"cpu": cpu, "values": values, "win": win}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--registers", type=int, default=1000)
    ap.add_argument("--poll", default="1s")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    args.poll_s = parse_duration(args.poll)
    sim_bin = Path(os.environ.get("FIELDGATE_MODBUS_SIM", h.REPO_ROOT / "target/release/examples/sim_server"))
    root = Path(tempfile.mkdtemp(prefix="fieldgate-bench-events-"))
    env = None
    try:
        env = h.make_env(root, users=("bench",), log_level="warn")
        client = env.client("bench")
        log = EventLog()
        client.xmpp.add_event_handler("message", log.on_message)
        n = args.devices
        print(f"# {n} devices x {args.registers} holding registers, poll {args.poll}, one connection each; "
              f"gateway {h.gateway_bin()}", flush=True)
        sim = Sim(sim_bin, root, n, 1, args.registers)
        gw = h.Gateway(root / "gw", env.prosody)
        env.gateway = gw
        try:
            gw.write_raw_config(modbus_config(env.prosody, gw.state_dir, env.prosody.jid("bench"),
                                              sim.addresses, n, args.registers, args.poll))
            gw.start()
            time.sleep(args.warmup)
            quiet = window(args, gw, sim, log, "quiet")
            period = f"PT{args.poll_s:g}S"
            for d in range(n):
                r = client.iq(subscribe_iq(f"{device_id(d)}@{env.prosody.component}", 1000 + d,
                                           momentary="true", maxInterval=period))
                if not r.ok:
                    print(f"# subscribe refused: {r.condition} {r.text}", flush=True)
                    return 1
            time.sleep(args.warmup)
            ev = window(args, gw, sim, log, "events")
            if ev["values"]:
                report("events_cpu_us_per_value", (ev["cpu"] / ev["win"] - quiet["cpu"] / quiet["win"])
                       * ev["win"] / ev["values"] * 1e6)
            for d in range(n):
                client.iq(unsubscribe_iq(f"{device_id(d)}@{env.prosody.component}", 1000 + d))
        finally:
            sim.close()
        return 0
    finally:
        teardown(env, root, args.keep)


if __name__ == "__main__":
    sys.exit(main())
