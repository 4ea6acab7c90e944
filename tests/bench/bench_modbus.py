"""fieldgate Modbus benchmark: a Modbus TCP simulator (a separate process, the
`sim_server` example of the fieldgate-modbus crate), the gateway against a real Prosody,
and a slixmpp client for the write round trip.

Layout: `--devices` devices (default 100) with `--registers` holding registers each
(default 1000, u16 fields, one field per register, consecutive addresses from 0),
polled every `--poll` (default 1s), spread over the Modbus TCP connections of each
`--connections` layout (default "10,1": 10 connections of 10 unit ids each, then all
devices as unit ids behind one connection). The simulator listens on one port per
connection; each (port, unit id) is a device with its own registers, which change
every second.

Figures per layout (`name: value` lines, each prefixed with `c<connections>_`):

  registers_decoded_per_s   values the gateway decoded per second, sustained over the
                            measuring window: from its `poll cycle` debug lines (timestamp,
                            device, values=), per device the values of its cycles after the
                            first in the window over the time from first to last, summed
                            (decoded by the adapter: readings the core then drops on a
                            full event queue are counted by readings_dropped)
  registers_served_per_s    registers the simulator served per second (its own counters)
  sim_requests_per_s        requests the simulator answered per second
  requests_per_device_cycle sim_requests_per_s / devices / (1 / poll)
  devices_polled            devices with at least two poll cycles in the window
  poll_period_ms_mean/_max  time between two poll cycles of a device (polls run at a fixed
                            rate: --poll, unless a cycle overruns it)
  fields_failed             failed field reads in the window (expected 0)
  cpu_s_per_100k_registers  gateway CPU seconds (utime + stime from /proc/<pid>/stat) per
                            100,000 registers decoded
  cpu_pct_one_core          gateway CPU in the window as % of one core
  sim_cpu_pct_one_core      the simulator's, to show it is not the bottleneck
  machine_idle_pct          idle time of all CPUs in the window,
  machine_cpu_wait_pct      the share of it some task waited for a CPU (PSI "some"), and
  loadavg_1m                the load at its end: the figures are only as quiet as the
                            machine
  rss_kb / hwm_kb           gateway VmRSS at the end of the window / VmHWM (peak)
  readings_dropped          "core event queue full" warnings since start: the highest
                            dropped_total logged (the gateway logs the 1st, 2nd, 4th, 8th, …
                            drop, so this is a lower bound; 0 = no warning)
  requests_per_cycle        per device, from the gateway's `modbus read plan` start-up
                            line (min/max over devices when they differ)
  requests_per_cycle_min    the fewest requests that can read the layout: ceil(R / 125)
  one_per_field             the per-field request count from the same line
  write_rtt_ms_p50 / _p99   XEP-0325 `set` of one writable u16 (c2s → Prosody → gateway →
                            Modbus FC06 → `setResponse`), sequential, while polling goes on
  ping_rtt_ms_p50 / _p99    XEP-0199 pings to the same device JID, interleaved with the
                            writes
  sim_writes                writes the simulator received in that phase (expected: --writes)

and, once: config size, `fieldgate check` wall time and peak RSS on it (what loading the
configuration alone costs); per layout gateway start → READY=1 and start → every
device's first poll cycle.

`--profile S` records S seconds of `perf record -e cpu-clock` on the gateway after the
measuring window of each layout and prints the top symbols (needs `perf`).

Not pass/fail: a benchmark reports; it fails only if the system does not work at all.
Run through `bash tests/bench/run_modbus.sh` (release builds of both binaries).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

import harness as h  # noqa: E402
from benchlib import report, teardown  # noqa: E402

NS_CTL = "urn:xmpp:iot:control"
MAX_READ = 125  # registers per Modbus read (FC03)


# --------------------------------------------------------------------------------------
# small helpers


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def machine_ticks() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of every CPU, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return v[3] + v[4], sum(v[:8])


def cpu_pressure_us() -> int | None:
    """Total µs some task waited for a CPU (PSI), or None without /proc/pressure."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None
    return int(line.rsplit("total=", 1)[1])



def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def device_id(i: int) -> str:
    return f"mb{i:03d}"


def field_name(a: int) -> str:
    return f"r{a:04d}"


# --------------------------------------------------------------------------------------
# the simulator process


class Sim:
    """`sim_server` in the background; its stdout is parsed by a reader thread."""

    def __init__(self, binary: Path, workdir: Path, ports: int, units: int, registers: int):
        self.out_path = workdir / f"sim-{ports}.out"
        self.lock = threading.Lock()
        self.addresses: list[str] = []
        self.stats: list[dict[str, float]] = []
        self.final: dict[str, float] | None = None
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [str(binary), "--ports", str(ports), "--units", str(units), "--registers", str(registers),
             "--report", "0.25"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        self.thread = threading.Thread(target=self._read, name="sim-stdout", daemon=True)
        self.thread.start()
        if not self.ready.wait(20):
            self.close()
            raise h.HarnessError(f"sim_server not ready within 20s:\n{h.tail(self.out_path)}")

    def _read(self) -> None:
        with open(self.out_path, "w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                words = line.split()
                if not words:
                    continue
                kv = dict(w.split("=", 1) for w in words[1:] if "=" in w)
                with self.lock:
                    if words[0] == "listening":
                        self.addresses.append(kv["address"])
                    elif words[0] == "ready":
                        self.ready.set()
                    elif words[0] in ("stats", "final"):
                        rec = {k: float(v) for k, v in kv.items()}
                        rec["wall"] = time.monotonic()
                        self.stats.append(rec)
                        if words[0] == "final":
                            self.final = rec

    def at_whole_periods(self, s0: dict[str, float], period: float) -> dict[str, float]:
        """The counters line a whole number of poll periods after `s0`, as near as the lines
        allow. The polls of all devices come in one burst a period, so a window of 20.25
        periods would count 20 bursts and under-report the rate by 1.2 %."""
        with self.lock:
            later = [r for r in self.stats if r["t"] > s0["t"]]
        last = later[-1]
        target = s0["t"] + max(1, round((last["t"] - s0["t"]) / period)) * period
        return min(later, key=lambda r: abs(r["t"] - target))

    def latest(self) -> dict[str, float]:
        """The most recent counters line (waits for one newer than the call)."""
        t = time.monotonic()
        h.wait_for(lambda: self.stats and self.stats[-1]["wall"] >= t, 5, "a sim_server stats line",
                   interval=0.01)
        with self.lock:
            return dict(self.stats[-1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        h.stop_process(self.proc, signal.SIGTERM, 5)
        self.thread.join(timeout=5)


# A child's ru_maxrss counts the process it was forked from: Linux carries the high-water
# mark of the memory image an exec replaces. A `fieldgate check` started from here would
# report at least this benchmark's own RSS (tens of MB, the generated config and all), so
# it is started from a fresh interpreter instead (a few MB, well below what is measured),
# which prints the wall time and the peak RSS in kB and exits with the check's status.
PEAK_RSS_OF = """
import os, sys, time
t = time.monotonic()
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(time.monotonic() - t, usage.ru_maxrss)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


# --------------------------------------------------------------------------------------
# the gateway configuration, generated (100,000 fields: written directly, not through
# harness.gateway_toml, which knows no [[modbus.connection]])


def modbus_config(prosody: h.Prosody, state_dir: Path, bench_jid: str, addresses: list[str],
                  devices: int, registers: int, poll: str, compact: bool = True) -> str:
    """The gateway config. `compact` writes each device's register map as one repeated
    field (`count`), as a user would; otherwise one [[device.field]] per register."""
    tv = h.toml_value
    out = ["[xmpp]",
           f"server = {tv(f'127.0.0.1:{prosody.component_port}')}",
           f"domain = {tv(prosody.component)}",
           f"secret = {tv(prosody.secret)}",
           'keepalive = "30s"', 'reconnect_min = "100ms"', 'reconnect_max = "1s"', 'resource = "gw"',
           "", "[access]",
           f"subscribe = {tv([bench_jid])}", f"read = {tv([bench_jid])}", f"control = {tv([bench_jid])}",
           "", "[state]", f"dir = {tv(str(state_dir))}", ""]
    for i, addr in enumerate(addresses):
        out += ["[[modbus.connection]]", f'name = "sim{i}"', 'transport = "tcp"',
                f"address = {tv(addr)}", 'timeout = "1s"', ""]
    per_port = devices // len(addresses)
    for d in range(devices):
        port, unit = divmod(d, per_port)
        out += ["[[device]]", f'id = "{device_id(d)}"', f'name = "Modbus device {d}"', 'adapter = "modbus"',
                "[device.modbus]", f'connection = "sim{port}"', f"unit = {unit + 1}", f'poll = "{poll}"']
        if compact:
            out += ["[[device.field]]", f'name = "{field_name(0)}"', 'type = "int"', "writable = true",
                    'modbus = { register = "holding", address = 0, type = "u16" }']
            if registers > 1:
                out += ["[[device.field]]", 'name = "reg{n}"', 'type = "int"', f"count = {registers - 1}",
                        'modbus = { register = "holding", address = 1, type = "u16" }']
            out.append("")
            continue
        for a in range(registers):
            out.append("[[device.field]]")
            out.append(f'name = "{field_name(a)}"')
            out.append('type = "int"')
            if a == 0:
                out.append("writable = true")  # the register the write round trip sets
            out.append(f'modbus = {{ register = "holding", address = {a}, type = "u16" }}')
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# gateway log


PLAN_RE = re.compile(r"requests_per_cycle=(\d+) one_per_field=(\d+)")
CYCLE_RE = re.compile(r"^(\S+Z) .*poll cycle device=(\S+) requests=(\d+) values=(\d+) failed=(\d+)")
DROP_RE = re.compile(r"dropped_total=(\d+)")


def log_time(stamp: str) -> float:
    """The gateway's RFC 3339 UTC timestamp as a Unix time."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def cycles(text: str) -> list[tuple[float, str, int, int, int]]:
    """Every `poll cycle` debug line: (unix time, device, requests, values, failed)."""
    out = []
    for line in text.splitlines():
        if "poll cycle" in line:
            m = CYCLE_RE.search(line)
            if m:
                out.append((log_time(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)),
                            int(m.group(5))))
    return out


def drops(text: str) -> tuple[int, int]:
    """(highest dropped_total logged, number of 'core event queue full' lines)."""
    most = lines = 0
    for line in text.splitlines():
        if "core event queue full" in line:
            lines += 1
            m = DROP_RE.search(line)
            if m:
                most = max(most, int(m.group(1)))
    return most, lines


def sustained(recs: list[tuple[float, str, int, int, int]], t0: float, t1: float) -> dict[str, float]:
    """Per device, the cycles completed in [t0, t1]: the rate is the values of every cycle
    after the first divided by the time from the first to the last (so the window's phase
    against the poll cycles does not matter), summed over devices."""
    per: dict[str, list[tuple[float, int, int, int]]] = {}
    for t, dev, req, val, fail in recs:
        if t0 <= t <= t1:
            per.setdefault(dev, []).append((t, req, val, fail))
    rate = req_rate = 0.0
    periods = []
    for rs in per.values():
        if len(rs) < 2:
            continue
        span = rs[-1][0] - rs[0][0]
        rate += sum(v for _, _, v, _ in rs[1:]) / span
        req_rate += sum(r for _, r, _, _ in rs[1:]) / span
        periods += [b[0] - a[0] for a, b in zip(rs, rs[1:])]
    return {
        "devices": len(per),
        "cycles": sum(len(rs) for rs in per.values()),
        "values_per_s": rate,
        "requests_per_s": req_rate,
        "failed": sum(f for rs in per.values() for *_, f in rs),
        "period_mean": statistics.mean(periods) if periods else float("nan"),
        "period_max": max(periods) if periods else float("nan"),
    }


# --------------------------------------------------------------------------------------
# one layout


def profile(pid: int, seconds: float, workdir: Path, prefix: str) -> None:
    perf = shutil.which("perf")
    if not perf:
        print("# --profile: perf not found", flush=True)
        return
    data = workdir / f"{prefix}perf.data"
    r = subprocess.run([perf, "record", "-e", "cpu-clock", "-F", "999", "-o", str(data), "-p", str(pid),
                        "--", "sleep", str(seconds)], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"# perf record failed: {r.stderr.strip()[-300:]}", flush=True)
        return
    r = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", "symbol",
                        "--percent-limit", "0.7"], capture_output=True, text=True)
    print(f"# perf: top gateway symbols over {seconds:.0f}s (cpu-clock samples)", flush=True)
    for line in r.stdout.splitlines():
        if line.strip() and not line.startswith("#"):
            print(f"#   {line.strip()[:150]}", flush=True)


def run_layout(args, env: h.Env, root: Path, sim_bin: Path, client, connections: int,
               first: bool) -> bool:
    n, regs = args.devices, args.registers
    p = f"c{connections}_"
    print(f"# --- layout: {n} devices x {regs} holding registers, {connections} Modbus TCP "
          f"connection(s) of {n // connections} unit id(s), poll {args.poll}", flush=True)
    work = root / f"c{connections}"
    work.mkdir()
    sim = Sim(sim_bin, work, connections, n // connections, regs)
    gw = h.Gateway(work / "gw", env.prosody)
    env.gateway = gw
    try:
        t = time.monotonic()
        text = modbus_config(env.prosody, gw.state_dir, env.prosody.jid("bench"), sim.addresses, n, regs,
                             args.poll, compact=not args.expanded)
        gw.write_raw_config(text)
        gen = time.monotonic() - t
        if first:
            report("config_devices", n)
            report("config_fields", n * regs)
            report("config_bytes", len(text.encode()))
            print(f"# config generated in {gen:.2f}s", flush=True)
            chk = subprocess.run([sys.executable, "-c", PEAK_RSS_OF, str(gw.binary), "check", "--config",
                                  str(gw.config_path)], stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True)
            if chk.returncode != 0:
                print(f"# fieldgate check failed ({chk.returncode}):\n{chk.stderr[-2000:]}", flush=True)
                return False
            took, peak_kb = chk.stdout.split()
            report("check_s", float(took))
            report("check_peak_rss_kb", int(peak_kb))  # what loading the config alone costs

        # -- start; READY=1; every device's first poll cycle
        gw.start(wait_ready=False)
        t0 = gw.started_at
        gw.wait_ready(timeout=300)
        report(f"{p}start_ready_s", time.monotonic() - t0)

        def first_cycles() -> bool:
            return len({dev for _, dev, *_ in cycles(gw.log_text())}) >= n
        h.wait_for(first_cycles, 120, f"{n} poll cycles in the gateway log", interval=0.2)
        report(f"{p}start_first_cycles_s", time.monotonic() - t0)
        log = gw.log_text()
        plans = [tuple(map(int, m.groups())) for m in PLAN_RE.finditer(log)]
        if len(plans) != n:
            print(f"# expected {n} 'modbus read plan' lines, found {len(plans)}", flush=True)
        rpc = sorted({a for a, _ in plans})
        opf = sorted({b for _, b in plans})
        report(f"{p}requests_per_cycle", "/".join(map(str, rpc)) if len(rpc) > 1 else (rpc[0] if rpc else "?"))
        report(f"{p}requests_per_cycle_min", math.ceil(regs / MAX_READ))
        report(f"{p}one_per_field", "/".join(map(str, opf)) if len(opf) > 1 else (opf[0] if opf else "?"))

        # -- warm-up, then the measuring window
        time.sleep(args.warmup)
        s0 = sim.latest()
        m0, q0, c0, sc0, t0 = machine_ticks(), cpu_pressure_us(), cpu_s(gw.pid), cpu_s(sim.pid), time.time()
        time.sleep(args.duration)
        m1, q1, c1, sc1, t1 = machine_ticks(), cpu_pressure_us(), cpu_s(gw.pid), cpu_s(sim.pid), time.time()
        sim.latest()  # a counters line from after the window
        s1 = sim.at_whole_periods(s0, args.poll_s)
        st = h.proc_status(gw.pid)
        win = t1 - t0
        log = gw.log_text()
        recs = [r for r in cycles(log) if t0 <= r[0] <= t1]
        sus = sustained(recs, t0, t1)
        cpu = c1 - c0
        sim_win = s1["t"] - s0["t"]
        req_s = (s1["requests"] - s0["requests"]) / sim_win
        report(f"{p}window_s", win)
        report(f"{p}registers_decoded_per_s", sus["values_per_s"])
        report(f"{p}registers_served_per_s", (s1["registers"] - s0["registers"]) / sim_win)
        report(f"{p}sim_requests_per_s", req_s)
        report(f"{p}requests_per_device_cycle", req_s / n * args.poll_s)
        report(f"{p}devices_polled", sus["devices"])
        report(f"{p}poll_period_ms_mean", 1000 * sus["period_mean"])
        report(f"{p}poll_period_ms_max", 1000 * sus["period_max"])
        report(f"{p}fields_failed", sus["failed"])
        report(f"{p}sim_exceptions", int(s1["exceptions"] - s0["exceptions"]))
        decoded = sus["values_per_s"] * win  # registers decoded in the window
        report(f"{p}cpu_s_per_100k_registers", cpu / (decoded / 100_000) if decoded else "n/a")
        report(f"{p}cpu_pct_one_core", 100 * cpu / win)
        report(f"{p}sim_cpu_pct_one_core", 100 * (sc1 - sc0) / win)
        report(f"{p}machine_idle_pct", 100 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]))
        if q0 is not None and q1 is not None:
            report(f"{p}machine_cpu_wait_pct", (q1 - q0) / 1e4 / win)
        report(f"{p}loadavg_1m", Path("/proc/loadavg").read_text().split()[0])
        report(f"{p}rss_kb", st.get("VmRSS"))
        report(f"{p}hwm_kb", st.get("VmHWM"))
        dropped, drop_lines = drops(log)
        report(f"{p}readings_dropped", dropped)
        if drop_lines:
            print(f"# {drop_lines} 'core event queue full' warnings since start", flush=True)

        if args.profile > 0:
            profile(gw.pid, args.profile, work, p)

        # -- write round trip beside ping round trip, sequential, while polling continues
        if args.writes > 0:
            jid = env.dev(device_id(0))
            w_before = sim.latest()["writes"]
            writes, pings = [], []
            for i in range(args.writes):
                t = time.monotonic()
                r = client.ping(jid)
                pings.append(1000 * (time.monotonic() - t))
                assert r.ok, f"ping {jid}: {r.condition} {r.text}"
                t = time.monotonic()
                r = client.iq(f"<iq type='set' to='{jid}'><set xmlns='{NS_CTL}'>"
                              f"<int name='{field_name(0)}' value='{i % 65536}'/></set></iq>")
                writes.append(1000 * (time.monotonic() - t))
                if not r.ok:
                    raise h.HarnessError(f"set {jid} {field_name(0)}={i}: {r.condition} {r.text}")
                sr = r.payload()
                assert sr is not None and sr.tag == f"{{{NS_CTL}}}setResponse" \
                    and sr.get("responseCode") == "OK", "no <setResponse responseCode='OK'/>"
            report(f"{p}write_rtt_ms_p50", statistics.median(writes))
            report(f"{p}write_rtt_ms_p99", pct(writes, 0.99))
            report(f"{p}write_rtt_ms_max", max(writes))
            report(f"{p}ping_rtt_ms_p50", statistics.median(pings))
            report(f"{p}ping_rtt_ms_p99", pct(pings, 0.99))
            report(f"{p}sim_writes", int(sim.latest()["writes"] - w_before))
        report(f"{p}hwm_end_kb", h.proc_status(gw.pid).get("VmHWM"))

        code, took = gw.stop(signal.SIGTERM, timeout=30)
        report(f"{p}sigterm_exit_s", took)
        if code != 0:
            print(f"# fieldgate exited with {code}\n{gw.log_tail(30)}", flush=True)
            return False
        if "panicked" in gw.log_text():
            print(f"# panic in the gateway log\n{gw.log_tail(60)}", flush=True)
            return False
        return True
    except BaseException:
        print(gw.log_tail(40), file=sys.stderr)
        raise
    finally:
        gw.close()
        env.gateway = None
        sim.close()


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text.strip())
    if not m:
        raise SystemExit(f"--poll {text}: use e.g. 500ms, 1s, 2m")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(2)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--registers", type=int, default=1000)
    ap.add_argument("--connections", default="10,1",
                    help="comma-separated layouts: Modbus TCP connections the devices are spread over")
    ap.add_argument("--poll", default="1s")
    ap.add_argument("--duration", type=float, default=30.0, help="measuring window, seconds")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--writes", type=int, default=500)
    ap.add_argument("--profile", type=float, default=0.0, help="seconds of perf record per layout")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--expanded", action="store_true",
                    help="one [[device.field]] per register instead of a repeated field (count)")
    args = ap.parse_args()
    args.poll_s = parse_duration(args.poll)
    layouts = [int(x) for x in args.connections.split(",") if x.strip()]
    for c in layouts:
        if c < 1 or args.devices % c or args.devices // c > 247:
            ap.error(f"--connections {c}: must divide --devices {args.devices} into at most 247 units each")

    sim_bin = Path(os.environ.get("FIELDGATE_MODBUS_SIM", h.REPO_ROOT / "target/release/examples/sim_server"))
    if not sim_bin.is_file():
        print(f"sim_server binary {sim_bin} missing: cargo build --release -p fieldgate-modbus "
              f"--example sim_server", file=sys.stderr)
        return 1
    # the per-cycle `poll cycle` debug lines are what registers_decoded_per_s counts
    log_filter = os.environ.setdefault("FIELDGATE_LOG", "info,fieldgate_modbus=debug")
    if "debug" not in log_filter and "trace" not in log_filter:
        print(f"FIELDGATE_LOG={log_filter}: needs fieldgate_modbus=debug (the poll cycle lines)",
              file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="fieldgate-bench-modbus-"))
    env = None
    ok = True
    try:
        env = h.make_env(root, users=("bench",), log_level="warn")
        print(f"# gateway {h.gateway_bin()}, simulator {sim_bin}, FIELDGATE_LOG={os.environ.get('FIELDGATE_LOG')}",
              flush=True)
        client = env.client("bench")
        for i, c in enumerate(layouts):
            ok = run_layout(args, env, root, sim_bin, client, c, first=(i == 0)) and ok
        return 0 if ok else 1
    finally:
        teardown(env, root, args.keep)


if __name__ == "__main__":
    sys.exit(main())
