"""fieldgate events benchmark: what change-event subscriptions cost a polled device.

Layout: `--devices` Modbus devices (default 10) of `--registers` holding registers each
(default 1000), polled every `--poll` (default 1s) from the Modbus TCP simulator of
bench_modbus.py (one connection per device; every register changes every second), the
gateway against a real Prosody, and one slixmpp client.

Three phases of `--duration` seconds each, in one run:
  quiet      no subscription
  events     one subscription per device, every field, maxInterval = the poll period:
             every value delivered every poll, as a dashboard of the plant would ask
  light      the same with ten fields per device: small events, so the latency is that
             of the path rather than of moving ~700 kB/s through Prosody and Python

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
  prosody_cpu_pct / client_cpu_pct  Prosody's and this client's CPU (% of a core): with
                            every field, the Python client and Prosody bound the latency
  <phase>_cpu_us_per_value  (gateway CPU with events - without) / values delivered: what
                            delivering one value costs the gateway

Not pass/fail. Run through `bash tests/bench/run_events.sh` (release builds).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
from bench_modbus import Sim, cpu_s, device_id, field_name, modbus_config, parse_duration, pct  # noqa: E402
from benchlib import report, teardown  # noqa: E402
from harness import NS_CLIENT  # noqa: E402
from iot import NS_SD, IotClient, parse_iso, subscribe_iq, unsubscribe_iq  # noqa: E402


class EventLog:
    """Every event message's arrival (wall clock), value count and stamps, from the
    client's timed record of what it received."""

    def __init__(self, client) -> None:
        self.client = client
        self.mark = client.mark_stanzas()
        # arrival times are monotonic; the stamps are wall clock
        self.wall_minus_mono = time.time() - time.monotonic()

    def between(self, t0: float, t1: float) -> list[tuple[float, int, list[float]]]:
        out = []
        for at, s in self.client.timed_since(self.mark):
            at += self.wall_minus_mono
            if not (t0 <= at <= t1) or s.tag != f"{{{NS_CLIENT}}}message":
                continue
            fields = s.find(f"{{{NS_SD}}}fields")
            if fields is None:
                continue
            stamps, n = [], 0
            for ts in fields.iter(f"{{{NS_SD}}}timestamp"):
                stamps.append(parse_iso(ts.get("value")))
                n += len(ts)
            out.append((at, n, stamps))
        return out


def window(args, env, gw, sim, log: EventLog, phase: str) -> dict[str, float]:
    s0 = sim.latest()
    pids = (gw.pid, env.prosody.proc.pid, os.getpid())
    c0, t0 = [cpu_s(p) for p in pids], time.time()
    time.sleep(args.duration)
    c1, t1 = [cpu_s(p) for p in pids], time.time()
    sim.latest()
    s1 = sim.at_whole_periods(s0, args.poll_s)
    win = t1 - t0
    req_s = (s1["requests"] - s0["requests"]) / (s1["t"] - s0["t"])
    regs_s = (s1["registers"] - s0["registers"]) / (s1["t"] - s0["t"]) if "registers" in s1 else float("nan")
    recs = log.between(t0, t1)
    values = sum(n for _, n, _ in recs)
    lat = [(at - st) * 1000 for at, _, stamps in recs for st in stamps[:1]]
    cpu = c1[0] - c0[0]
    p = f"{phase}_"
    report(f"{p}window_s", win)
    report(f"{p}sim_requests_per_s", req_s)
    report(f"{p}gateway_cpu_s", cpu)
    report(f"{p}prosody_cpu_pct", (c1[1] - c0[1]) / win * 100)
    report(f"{p}client_cpu_pct", (c1[2] - c0[2]) / win * 100)
    if regs_s == regs_s and regs_s > 0:
        report(f"{p}cpu_s_per_100k_registers", cpu / (regs_s * win / 100_000))
    report(f"{p}events_per_s", len(recs) / win)
    report(f"{p}values_per_s", values / win)
    report(f"{p}values_per_device_cycle", values / win / args.devices * args.poll_s)
    if lat:
        report(f"{p}event_latency_ms_p50", pct(lat, 0.5))
        report(f"{p}event_latency_ms_p99", pct(lat, 0.99))
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
        client = IotClient(env.prosody, "bench")
        env.clients.append(client)
        client.connect()
        log = EventLog(client)
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
            quiet = window(args, env, gw, sim, log, "quiet")
            period = f"PT{args.poll_s:g}S"
            # `events`: every field; `light`: ten fields a device (small events: the
            # latency of the path, not of moving 700 kB/s through Prosody and Python)
            for phase, fields in (("events", []), ("light", [{"name": field_name(0)}] + [{"name": f"reg{a}"} for a in range(9)])):
                for d in range(n):
                    r = client.iq(subscribe_iq(f"{device_id(d)}@{env.prosody.component}", 1000 + d, fields,
                                               momentary="true", maxInterval=period))
                    if not r.ok:
                        print(f"# subscribe refused: {r.condition} {r.text}", flush=True)
                        return 1
                time.sleep(args.warmup)
                ev = window(args, env, gw, sim, log, phase)
                if ev["values"]:
                    report(f"{phase}_cpu_us_per_value", (ev["cpu"] / ev["win"] - quiet["cpu"] / quiet["win"])
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
