"""fieldgate CoAP benchmark: what the CoAP adapter costs, how fast it answers, and how it
fares on a lossy network.

Layout: a private Prosody (Nagle off), the gateway (release build), one slixmpp client,
and the CoAP server of the benchmark, `bench_server` (adapters/coap/examples/
bench_server.rs: one thread, requests decoded with coap-lite, answers encoded by hand;
resources `/r/<i>` and a probe `/lat`, each answering `{"v":<n>,"ts":<µs>}` with
Content-Format 50, `n` new on every read and every notification, `ts` the server's wall
clock when it built the datagram), all on loopback. Each field of the gateway reads
`v` (or `ts` for the probe) with an RFC 6901 pointer, type long. 2 CPUs shared by all of
it (and by whatever else runs: see others_cpu_pct): CPU per request is the steadier
figure; the rates depend on what the machine had to spare.

Phases (`--phases`, all by default, in this order):

poll        `--devices` devices (default 100) × `--per-device` resources (10), every one a
            field on its own resource `/r/<d·10+k>` of ONE server (one UDP port: the
            gateway's NSTART 1 queue serialises all 1,000 requests; `--servers N` spreads
            the devices over N ports instead), polled every `--poll` (1s): 1,000
            confirmable GETs a second. After a warm-up, a `--duration` window
            (20 s). Prefixed poll_:
  offered_req_per_s         OFFERED LOAD: resources / poll
  req_per_s                 what the server answered per second over the window (whole
                            poll periods): the rate sustained
  gateway_cpu_s             gateway CPU (utime + stime of every thread) in the window
  cpu_s_per_100k_requests   gateway CPU per 100,000 requests answered (the issue's goal:
                            at most 2.0, i.e. 20 µs a request), everything included: the
                            poll timers, decoding, the core taking the readings
  cpu_us_per_request        the same per request
  server_cpu_pct / gateway_cpu_pct   % of one core over the window
  rss_kb / hwm_kb           VmRSS / VmHWM (peak since start) at the end (goal: < 40 MB)
  rss_kb_idle               VmRSS right after start, before the first poll round
and the machine's figures (machine_idle_pct, others_cpu_pct, machine_cpu_wait_pct).

capacity    The same gateway configuration with `--capacity-poll` (default 10ms: 100,000
            requests a second offered, far more than one server's NSTART 1 queue lets
            through); a `--capacity-duration` window (10 s). Prefixed cap_:
  offered_req_per_s         resources / poll (what the poll timers ask for)
  req_per_s                 CAPACITY: requests per second the gateway got answered from
                            one server, one at a time (NSTART 1): each costs a round trip
                            on loopback plus the gateway's turn-around
  cpu_s_per_100k_requests / cpu_us_per_request / gateway_cpu_pct / server_cpu_pct / hwm_kb

spread      The poll and capacity runs again (`--spread-duration` windows, 10 s) with the
            devices spread over `--spread-servers` servers (100 UDP ports of one
            bench_server: device d on port d), so that requests to different servers
            overlap instead of waiting for each other. Prefixed spread_ and spread_cap_.
            With one server every request is a full sleep / wake-up of the gateway's
            runtime (nothing else to do while its one outstanding request is answered,
            ~25 µs on loopback); here several answers are taken per wake-up.

observe     The same 100 × 10 resources observed (`observe = true`), plus device `lat`
            observing `/lat` (field `ts`), which the server notifies `--probe-rate` times a
            second (20) on its own. Per step of `--notify-rates` (default 1000,10000,30000,
            60000 notifications a second in total over the 1,000 resources, round-robin, so
            1 to 60 a second each; confirmable; the last step is beyond what the gateway
            takes on 2 shared cores, and the server may not reach it either: what it sent
            is reported): the rate is set, 2 s to settle, a
            `--obs-duration` window (15 s). The client subscribes to `lat` (changedBy,
            `[events] min_interval = "10ms"`) and pings (XEP-0199) `lat@` (answered by the
            gateway) and the XMPP server, alternately, all through the same Prosody, all
            window long. Prefixed obs_<rate>_:
  notifications_per_s       notifications the server sent per second (the offered load)
  acked_per_s               HANDLED: notifications the gateway acknowledged per second
                            (its receive task ACKs a confirmable notification once the
                            observation's queue took it; a full queue leaves it unACKed;
                            the server never retransmits, the next one supersedes it)
  unacked                   sent − acknowledged in the window (expected 0)
  gateway_socket_drops      datagrams the kernel dropped at the gateway's sockets for a
                            full receive queue (/proc/net/udp `drops`): notifications its
                            receive task did not read in time; with server_socket_drops
                            (the gateway's ACKs lost at the server's 4 MiB queue; expected
                            0) they account for `unacked`
  gateway_cpu_s / cpu_us_per_notification / cpu_s_per_100k_notifications   everything
                            the gateway did in the window (pings and probe events too)
  marginal_cpu_us_per_notification   (gateway CPU/s − the step before's) / (acked/s −
                            the step before's): the cost of one more notification
  gateway_cpu_pct / server_cpu_pct / prosody_cpu_pct / client_cpu_pct
  event_latency_ms_p50/_p99/_max   the notification's `ts` (server clock, µs, set as the
                            datagram is built) → the change event's arrival at the client
                            (same machine, same clock)
  coap_leg_ms_p50/_p99      `ts` → the event's <timestamp> (the gateway's stamp of the
                            reading, truncated to whole ms: 0.5 ms early on average, so
                            a leg of ~0.1 ms shows as about −0.4)
  ping_device_ms_p50/_p99   client → Prosody → gateway → Prosody → client
  ping_server_ms_p50/_p99   client → Prosody → client
  event_minus_ping_device_ms_p50/_p99   the issue's goal: under 1 ms at p99
  events                    probe events received in the window (expected ≈ probe rate ×
                            window)
and obs_registered_s (gateway start → all 1,001 observations registered) and obs_hwm_kb.

loss        `--loss-devices` devices (200), each one resource `/r/0` of a server of its
            own (a UDP port each, so that one device's retransmissions do not hold up
            another's polls in the NSTART queue), polled every 1 s with the RFC's default
            transmission parameters (ACK_TIMEOUT 2 s, ACK_RANDOM_FACTOR 1.5,
            MAX_RETRANSMIT 4); the server drops `--drop` (0.3) of the datagrams each way
            (seeded: `--seed`). The server follows every exchange (peer, message id) from
            its first transmission: complete when an answer to it was sent and not dropped
            (on loopback the gateway then has it), failed when the 5th transmission went
            unanswered. Exchanges whose first transmission fell in a `--loss-duration`
            window (60 s) are counted, after a 47 s tail (a completed exchange takes at
            most 15T ≤ 45 s from the server's view). Prefixed loss_:
  exchanges / completed / failed / completed_share
  open_at_end               exchanges still under way at the end (started after the
                            window; those of the window have all ended by then)
  latency_s_p50/_p90/_p99/_max   first transmission → the answer that got through
  done_at_tx<k>_share       share of the exchanges completed on transmission k (1..5)
  within_<x>s_share         share of the completed ones done within 1, 10, 25 s (steadier
                            than the percentiles, which jump from one retransmission time
                            to the next: the expected p90 sits just past the 3rd)
  first_timeout_s_min/_max  the gateway's first retransmission time T (RFC: 2 to 3 s)
  backoff_schedule_dev_ms_p50/_p99/_max  how far each exchange's retransmissions were from
                            T, 3T, 7T, 15T after the first transmission (T as seen for the
                            first one; timers firing late show here)
  dropped_in_share / dropped_out_share   the drop rates the server applied
  polls_offered             devices × window / poll: a poll waits for the previous one
                            of its resource, so fewer exchanges are started
  exchanges_per_server_per_s   what one server gets through under this loss with NSTART
                            1 (a failed exchange holds its queue for 31T, 62 to 93 s):
                            the most polls a second all the resources of one server
                            share
and beside each, the model's expected value (expected_…): each transmission is a request
that must arrive (1 − drop) and a piggybacked answer that must come back (1 − drop), so it
succeeds with p = (1 − drop)²; the server answers every copy, no separate ACK. A poll
fails when all 1 + MAX_RETRANSMIT = 5 transmissions do: (1 − p)^5; it completes on
transmission k (k = 1..5) with probability p(1 − p)^(k−1), at time T·(2^(k−1) − 1) with T
uniform in [ACK_TIMEOUT, ACK_TIMEOUT·ACK_RANDOM_FACTOR] = [2 s, 3 s] (a round trip on
loopback is ~0); the percentiles are those of that mixture, conditioned on completing.

`--profile` records `perf record -g -e cpu-clock` of the gateway for 8 s after the poll
window, the capacity window (one server) and the last observe step, outside the measured
windows, and prints where its CPU went: by DSO (kernel, the binary, libc), the inclusive
share of the main syscalls (context switches, futex: worker threads parked and woken,
epoll_wait, sendto, recvfrom, eventfd writes) and the top user-space symbols.

Not pass/fail. Run through `bash tests/bench/run_coap.sh` (release builds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
from bench_iot import set_prosody_nagle_off  # noqa: E402
from bench_modbus import parse_duration, pct  # noqa: E402
from bench_mqtt import Machine, cpu, ping_rtt, subscribe  # noqa: E402
from benchlib import report, teardown  # noqa: E402
from harness import NS_CLIENT  # noqa: E402
from iot import NS_SD, IotClient, fields_of, parse_iso  # noqa: E402


# --------------------------------------------------------------------------------------
# the CoAP server process


class Server:
    """`bench_server` in the background; its stdout is parsed by a reader thread."""

    def __init__(self, binary: Path, workdir: Path, name: str, *args: str):
        self.out_path = workdir / f"coap-server-{name}.out"
        self.lock = threading.Lock()
        self.addresses: list[str] = []
        self.stats: list[dict[str, float]] = []
        self.exchanges: list[dict[str, str]] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen([str(binary), "--report", "0.25", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.thread = threading.Thread(target=self._read, name=f"coap-server-{name}", daemon=True)
        self.thread.start()
        if not self.ready.wait(20):
            self.close()
            raise h.HarnessError(f"bench_server not ready within 20s:\n{h.tail(self.out_path)}")

    def _read(self) -> None:
        with open(self.out_path, "w") as log:
            for line in self.proc.stdout:
                words = line.split()
                if not words:
                    continue
                log.write(line)
                if words[0] != "exchange":
                    log.flush()
                kv = dict(w.split("=", 1) for w in words[1:] if "=" in w)
                with self.lock:
                    if words[0] == "listening":
                        self.addresses.append(kv["address"])
                    elif words[0] == "ready":
                        self.ready.set()
                    elif words[0] == "exchange":
                        self.exchanges.append(kv)
                    elif words[0] in ("stats", "final"):
                        rec = {k: float(v) for k, v in kv.items()}
                        rec["wall"] = time.monotonic()
                        self.stats.append(rec)

    def latest(self) -> dict[str, float]:
        """The most recent counters line (waits for one newer than the call)."""
        t = time.monotonic()
        h.wait_for(lambda: self.stats and self.stats[-1]["wall"] >= t, 5, "a bench_server stats line",
                   interval=0.01)
        with self.lock:
            return dict(self.stats[-1])

    def at_whole_periods(self, s0: dict[str, float], period: float) -> dict[str, float]:
        """The counters line a whole number of poll periods after `s0`, as near as the lines
        allow (the polls of all resources come in one burst a period)."""
        with self.lock:
            later = [r for r in self.stats if r["t"] > s0["t"]]
        last = later[-1]
        target = s0["t"] + max(1, round((last["t"] - s0["t"]) / period)) * period
        return min(later, key=lambda r: abs(r["t"] - target))

    def set_rate(self, rate: float) -> None:
        self.proc.stdin.write(f"rate {rate}\n")
        self.proc.stdin.flush()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        h.stop_process(self.proc, signal.SIGTERM, 5)
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------------------
# profiles


SYSCALLS = {"__schedule (context switches)": "__schedule", "futex (thread park/unpark)": "__x64_sys_futex",
            "epoll_wait": "__x64_sys_epoll_wait", "sendto": "__x64_sys_sendto", "recvfrom": "__x64_sys_recvfrom",
            "write (eventfd wake)": "ksys_write"}


def profile(pid: int, seconds: float, workdir: Path, prefix: str) -> None:
    """`perf record -g` of the gateway for `seconds`: its CPU by DSO (kernel / the binary /
    libc), the syscalls it spent it in (inclusive), and its top user-space symbols (self)."""
    perf = shutil.which("perf")
    if not perf:
        print("# --profile: perf not found", flush=True)
        return
    data = workdir / f"{prefix}perf.data"
    r = subprocess.run([perf, "record", "-g", "-e", "cpu-clock", "-F", "999", "-o", str(data), "-p", str(pid),
                        "--", "sleep", str(seconds)], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"# perf record failed: {r.stderr.strip()[-300:]}", flush=True)
        return

    def rep(*a: str) -> list[str]:
        out = subprocess.run([perf, "report", "-i", str(data), "--stdio", "-g", "none", *a],
                             capture_output=True, text=True).stdout
        lines = []
        for ln in out.splitlines():
            words = ln.split()
            if not words or ln.startswith("#"):
                continue
            while words and words[-1] == "-":  # the IPC columns, empty here
                words.pop()
            lines.append(" ".join(words))
        return lines

    print(f"# perf {prefix}: gateway CPU over {seconds:.0f}s by DSO (cpu-clock samples):", flush=True)
    for line in rep("--no-children", "--sort", "dso")[:4]:
        print(f"#   {line[:100]}", flush=True)
    print(f"# perf {prefix}: inclusive share of the main syscalls:", flush=True)
    incl = rep("--children", "--sort", "symbol", "--percent-limit", "0.5")
    for what, sym in SYSCALLS.items():
        hit = next((ln for ln in incl if ln.split()[-1] == sym), None)
        print(f"#   {what:28} {hit.split()[0] if hit else '<0.5%'}", flush=True)
    print(f"# perf {prefix}: top user-space symbols (self time):", flush=True)
    for line in [ln for ln in rep("--no-children", "--sort", "symbol", "--percent-limit", "0.5") if "[.]" in ln][:15]:
        print(f"#   {line[:140]}", flush=True)


# --------------------------------------------------------------------------------------
# the gateway configuration


def coap_device(did: str, address: str, fields: list[tuple[str, str, str]], name: str,
                opts: dict | None = None) -> str:
    """A `[[device]]` of the coap adapter; `fields`: (name, path, pointer), all long."""
    out = ["", "[[device]]", f"id = {h.toml_value(did)}", f"name = {h.toml_value(name)}", 'adapter = "coap"',
           "[device.coap]", f"address = {h.toml_value('coap://' + address)}"]
    out += [f"{k} = {h.toml_value(v)}" for k, v in (opts or {}).items()]
    for fname, path, pointer in fields:
        out += ["[[device.field]]", f"name = {h.toml_value(fname)}", 'type = "long"',
                f"coap = {h.toml_value({'path': path, 'pointer': pointer})}"]
    return "\n".join(out)


def gateway_config(prosody: h.Prosody, state_dir: Path, bench_jid: str, devices: list[str]) -> str:
    access = {"subscribe": [bench_jid], "read": [bench_jid], "control": [bench_jid]}
    text = h.gateway_toml(prosody, state_dir, [], access)
    text += "\n".join(devices)
    # events at most 10 ms apart per subscription (the default floor is 1 s)
    text += "\n\n[events]\nmin_interval = \"10ms\"\n"
    return text


def dev_id(i: int) -> str:
    return f"c{i:03d}"


def grid_devices(addresses: list[str], devices: int, per: int, opts: dict) -> list[str]:
    """`devices` × `per` fields, field k of device d on `/r/<d·per+k>` of server d mod
    len(addresses)."""
    return [coap_device(dev_id(d), addresses[d % len(addresses)],
                        [(f"v{k}", f"/r/{d * per + k}", "/v") for k in range(per)],
                        f"CoAP sensor {d}", opts) for d in range(devices)]


def start_gateway(env: h.Env, root: Path, name: str, devices: list[str]) -> h.Gateway:
    gw = h.Gateway(root / name, env.prosody)
    env.gateway = gw
    gw.write_raw_config(gateway_config(env.prosody, gw.state_dir, env.prosody.jid("bench"), devices))
    gw.start(timeout=60)
    return gw


def status(pid: int) -> dict[str, int]:
    return h.proc_status(pid)


def udp_drops(pid: int) -> int:
    """Datagrams the kernel dropped for a full receive buffer on the UDP sockets of `pid`
    (the `drops` column of /proc/net/udp and udp6, matched by socket inode)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) >= 13 and cols[9] in inodes:
                total += int(cols[12])
    return total


# --------------------------------------------------------------------------------------
# poll and capacity


def poll_window(args, env, gw, srv: Server, prefix: str, poll_s: float, duration: float) -> None:
    n = args.devices * args.per_device
    pids = {"gateway": gw.pid, "server": srv.pid}
    machine = Machine([gw.pid, srv.pid, env.prosody.proc.pid, os.getpid()])
    s0 = srv.latest()
    c0 = {k: cpu(p) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(duration)
    c1 = {k: cpu(p) for k, p in pids.items()}
    win = time.monotonic() - t0
    machine.stop()
    srv.latest()
    s1 = srv.at_whole_periods(s0, poll_s) if poll_s >= 0.5 else srv.latest()
    reqs = s1["gets"] - s0["gets"]
    rate = reqs / (s1["t"] - s0["t"])
    gw_cpu = c1["gateway"] - c0["gateway"]
    answered = rate * win  # requests in the CPU window, at the rate sustained
    report(f"{prefix}offered_req_per_s", n / poll_s)
    report(f"{prefix}req_per_s", rate)
    report(f"{prefix}window_s", win)
    report(f"{prefix}gateway_cpu_s", gw_cpu)
    if answered > 0:
        report(f"{prefix}cpu_s_per_100k_requests", gw_cpu / (answered / 100_000))
        report(f"{prefix}cpu_us_per_request", gw_cpu / answered * 1e6)
    report(f"{prefix}gateway_cpu_pct", gw_cpu / win * 100)
    report(f"{prefix}server_cpu_pct", (c1["server"] - c0["server"]) / win * 100)
    if answered > 0:
        report(f"{prefix}server_cpu_us_per_request", (c1["server"] - c0["server"]) / answered * 1e6)
    st = status(gw.pid)
    report(f"{prefix}rss_kb", st.get("VmRSS", 0))
    report(f"{prefix}hwm_kb", st.get("VmHWM", 0))
    machine.report(prefix)


def poll_phases(args, env, root: Path, server_bin: Path, servers: int,
                runs: list[tuple[str, str, float]]) -> None:
    """Poll windows against one bench_server with `servers` ports: per run (prefix, poll
    interval, window seconds), a gateway of its own."""
    n = args.devices * args.per_device
    srv = Server(server_bin, root, f"poll{servers}", "--resources", str(n), "--ports", str(servers))
    try:
        addrs = srv.addresses
        where = f"one server ({addrs[0]})" if len(addrs) == 1 else f"{len(addrs)} servers (ports)"
        layout = f"{args.devices} devices x {args.per_device} resources, {where}, NSTART 1"
        for prefix, poll, duration in runs:
            print(f"# {prefix.rstrip('_')}: {layout}, poll {poll}", flush=True)
            report(f"{prefix}layout", f"{args.devices}x{args.per_device} on {len(addrs)} server(s)")
            s_before = srv.latest()["gets"]
            gw = start_gateway(env, root, f"gw-{prefix.rstrip('_')}",
                               grid_devices(addrs, args.devices, args.per_device, {"poll": poll}))
            report(f"{prefix}rss_kb_idle", status(gw.pid).get("VmRSS", 0))
            h.wait_for(lambda: srv.latest()["gets"] >= s_before + n, 30, "a first poll round")
            time.sleep(args.warmup)
            poll_window(args, env, gw, srv, prefix, parse_duration(poll), duration)
            if args.profile and servers == 1:
                profile(gw.pid, 8, root, prefix.replace("_", "-"))
            gw.close()
    finally:
        srv.close()


# --------------------------------------------------------------------------------------
# observe


def event_samples(client: IotClient, mark: int, seqnr: int, t0: float, t1: float) -> list[tuple[float, float]]:
    """(ts → arrival ms, ts → gateway stamp ms) of the probe's events arrived in [t0, t1]."""
    wall_minus_mono = time.time() - time.monotonic()
    out = []
    for at, s in client.timed_since(mark):
        if not (t0 <= at <= t1) or s.tag != f"{{{NS_CLIENT}}}message" or not s.get("from", "").startswith("lat@"):
            continue
        for p in s:
            if p.tag != f"{{{NS_SD}}}fields" or p.get("seqnr") != str(seqnr):
                continue
            for f in fields_of(p):
                if f.name != "ts":
                    continue
                ts = int(f.value) / 1e6
                stamp = parse_iso(f.timestamp) if f.timestamp else float("nan")
                out.append(((at + wall_minus_mono - ts) * 1000, (stamp - ts) * 1000))
    return out


def observe_phase(args, env, root: Path, server_bin: Path, client: IotClient) -> None:
    n = args.devices * args.per_device
    rates = [float(r) for r in args.notify_rates.split(",") if r.strip()]
    srv = Server(server_bin, root, "observe", "--resources", str(n), "--notify-rate", str(max(rates[0], 1.0)),
                 "--probe-rate", str(args.probe_rate))
    try:
        addr = srv.addresses[0]
        srv.set_rate(0)
        print(f"# observe: {args.devices} devices x {args.per_device} observed resources + the probe, one server "
              f"({addr}); rates {args.notify_rates}/s", flush=True)
        opts = {"observe": True, "poll": "10s"}
        devs = grid_devices([addr], args.devices, args.per_device, opts)
        devs.append(coap_device("lat", addr, [("ts", "/lat", "/ts")], "Latency probe", opts))
        t = time.monotonic()
        gw = start_gateway(env, root, "gw-observe", devs)
        h.wait_for(lambda: srv.latest()["observers"] >= n + 1, 60, "every observation registered")
        report("obs_registered_s", time.monotonic() - t)
        lat = f"lat@{env.prosody.component}"
        subscribe(client, lat, 7001, [{"name": "ts", "changedBy": 1, "currentValue": 0}])
        prev = None
        for k, rate in enumerate(rates):
            p = f"obs_{rate:g}_"
            print(f"# observe: {rate:g} notifications/s", flush=True)
            srv.set_rate(rate)
            time.sleep(args.warmup if k == 0 else 2.0)
            pids = {"gateway": gw.pid, "server": srv.pid, "prosody": env.prosody.proc.pid, "client": os.getpid()}
            machine = Machine([gw.pid, srv.pid, env.prosody.proc.pid, os.getpid()])
            mk = client.mark_stanzas()
            s0 = srv.latest()
            d0 = {"gateway": udp_drops(gw.pid), "server": udp_drops(srv.pid)}
            c0 = {k: cpu(v) for k, v in pids.items()}
            t0 = time.monotonic()
            pdev, psrv = [], []
            while time.monotonic() - t0 < args.obs_duration:
                pdev.append(ping_rtt(client, lat))
                time.sleep(args.ping_spacing)
                psrv.append(ping_rtt(client, env.prosody.vhost))
                time.sleep(args.ping_spacing)
            t1 = time.monotonic()
            c1 = {k: cpu(v) for k, v in pids.items()}
            s1 = srv.latest()
            d1 = {"gateway": udp_drops(gw.pid), "server": udp_drops(srv.pid)}
            machine.stop()
            win = t1 - t0
            sw = s1["t"] - s0["t"]
            sent = s1["notifications"] - s0["notifications"]
            acked = s1["notify_acks"] - s0["notify_acks"]
            gw_cpu = c1["gateway"] - c0["gateway"]
            report(f"{p}notifications_per_s", sent / sw)
            report(f"{p}acked_per_s", acked / sw)
            report(f"{p}unacked", int(sent - acked))
            report(f"{p}rsts_from_gateway", s1["notify_rsts"] - s0["notify_rsts"])
            # where unacknowledged notifications went: the kernel dropped them at the
            # gateway's socket (its receive task was not scheduled in time), or the ACKs
            # at the server's
            report(f"{p}gateway_socket_drops", d1["gateway"] - d0["gateway"])
            report(f"{p}server_socket_drops", d1["server"] - d0["server"])
            report(f"{p}gateway_cpu_s", gw_cpu)
            if prev is not None and acked / sw > prev[1]:
                # what one more notification costs, against the step before (the fixed
                # costs of the window, pings and probe events included, cancel out)
                report(f"{p}marginal_cpu_us_per_notification",
                       (gw_cpu / win - prev[0]) / (acked / sw - prev[1]) * 1e6)
            prev = (gw_cpu / win, acked / sw)
            if acked > 0:
                handled = acked / sw * win  # in the CPU window
                report(f"{p}cpu_us_per_notification", gw_cpu / handled * 1e6)
                report(f"{p}cpu_s_per_100k_notifications", gw_cpu / (handled / 100_000))
            for k2 in pids:
                report(f"{p}{k2}_cpu_pct", (c1[k2] - c0[k2]) / win * 100)
            ev = event_samples(client, mk, 7001, t0, t1)
            report(f"{p}events", len(ev))
            if ev:
                lat_ms = [a for a, _ in ev]
                leg = [b for _, b in ev if b == b]
                report(f"{p}event_latency_ms_p50", pct(lat_ms, 0.5))
                report(f"{p}event_latency_ms_p99", pct(lat_ms, 0.99))
                report(f"{p}event_latency_ms_max", max(lat_ms))
                if leg:
                    report(f"{p}coap_leg_ms_p50", pct(leg, 0.5))
                    report(f"{p}coap_leg_ms_p99", pct(leg, 0.99))
            report(f"{p}ping_device_ms_p50", pct(pdev, 0.5))
            report(f"{p}ping_device_ms_p99", pct(pdev, 0.99))
            report(f"{p}ping_server_ms_p50", pct(psrv, 0.5))
            report(f"{p}ping_server_ms_p99", pct(psrv, 0.99))
            if ev:
                report(f"{p}event_minus_ping_device_ms_p50", pct(lat_ms, 0.5) - pct(pdev, 0.5))
                report(f"{p}event_minus_ping_device_ms_p99", pct(lat_ms, 0.99) - pct(pdev, 0.99))
            machine.report(p)
        st = status(gw.pid)
        report("obs_rss_kb", st.get("VmRSS", 0))
        report("obs_hwm_kb", st.get("VmHWM", 0))
        if args.profile:
            profile(gw.pid, 8, root, "obs-")
        gw.close()
    finally:
        srv.close()


# --------------------------------------------------------------------------------------
# loss


class Model:
    """RFC 7252 retransmission under independent loss (see the module's docstring)."""

    def __init__(self, drop_in: float, drop_out: float, ack_timeout: float = 2.0, factor: float = 1.5,
                 max_retransmit: int = 4):
        self.p = (1 - drop_in) * (1 - drop_out)
        q = 1 - self.p
        self.n = max_retransmit + 1
        self.fail = q ** self.n
        ok = 1 - self.fail
        # completion on transmission k (1-based): weight, and the latency T·(2^(k−1) − 1)
        self.weights = [self.p * q ** (k - 1) / ok for k in range(1, self.n + 1)]
        self.lo, self.hi = ack_timeout, ack_timeout * factor

    def cdf(self, x: float) -> float:
        out = 0.0
        for k, w in enumerate(self.weights, start=1):
            m = 2 ** (k - 1) - 1
            if m == 0:
                out += w if x >= 0 else 0.0
            else:
                a, b = self.lo * m, self.hi * m
                out += w * min(1.0, max(0.0, (x - a) / (b - a)))
        return out

    def quantile(self, q: float) -> float:
        lo, hi = 0.0, self.hi * (2 ** (self.n - 1) - 1)
        if self.cdf(0.0) >= q:
            return 0.0
        for _ in range(100):
            mid = (lo + hi) / 2
            if self.cdf(mid) >= q:
                hi = mid
            else:
                lo = mid
        return hi

    @property
    def max(self) -> float:
        return self.hi * (2 ** (self.n - 1) - 1)


def loss_phase(args, env, root: Path, server_bin: Path) -> None:
    nd = args.loss_devices
    srv = Server(server_bin, root, "loss", "--ports", str(nd), "--resources", "1", "--drop-in", str(args.drop),
                 "--drop-out", str(args.drop), "--seed", str(args.seed), "--exchanges")
    try:
        print(f"# loss: {nd} devices, one resource each on a server of its own, poll 1s, "
              f"{args.drop:.0%} of datagrams dropped each way (seed {args.seed}), RFC default parameters", flush=True)
        devs = [coap_device(dev_id(d), a, [("v", "/r/0", "/v")], f"Lossy sensor {d}", {"poll": "1s"})
                for d, a in enumerate(srv.addresses)]
        gw = start_gateway(env, root, "gw-loss", devs)
        s0 = srv.latest()
        t0 = time.monotonic()
        time.sleep(args.loss_duration)
        s1 = srv.latest()
        win = time.monotonic() - t0
        print(f"# loss: window over; {args.loss_tail:.0f} s for its exchanges to end", flush=True)
        time.sleep(args.loss_tail)
        s2 = srv.latest()
        gw.close()
        with srv.lock:
            xs = [x for x in srv.exchanges if s0["t"] <= float(x["start"]) < s1["t"]]
    finally:
        srv.close()
    ok = [x for x in xs if x["outcome"] == "ok"]
    failed = [x for x in xs if x["outcome"] == "failed"]
    model = Model(args.drop, args.drop)
    report("loss_polls_offered", round(nd * win))
    report("loss_exchanges", len(xs))
    report("loss_exchanges_per_server_per_s", len(xs) / nd / (s1["t"] - s0["t"]))
    report("loss_completed", len(ok))
    report("loss_failed", len(failed))
    report("loss_open_at_end", int(s2["exchanges_open"]))
    if xs:
        report("loss_completed_share", len(ok) / len(xs))
    report("expected_loss_completed_share", 1 - model.fail)
    lat = [float(x["latency"]) for x in ok]
    if lat:
        for q, name in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
            report(f"loss_latency_s_{name}", pct(lat, q))
            report(f"expected_loss_latency_s_{name}", model.quantile(q))
        report("loss_latency_s_max", max(lat))
        report("expected_loss_latency_s_max", model.max)
        report("loss_latency_s_mean", sum(lat) / len(lat))
        report("expected_loss_latency_s_mean",
               sum(w * (2 ** (k - 1) - 1) * (model.lo + model.hi) / 2
                   for k, w in enumerate(model.weights, start=1)))
    for k in range(1, model.n + 1):
        if ok:
            report(f"loss_done_at_tx{k}_share", sum(1 for x in ok if int(x["tx"]) == k) / len(ok))
        report(f"expected_loss_done_at_tx{k}_share", model.weights[k - 1])
    # the share done within fixed times: steadier than the percentiles, which jump
    # between the retransmission times (the expected p90 sits at the edge of the 3rd one)
    for x_s in (1, 10, 25):
        if lat:
            report(f"loss_within_{x_s}s_share", sum(1 for v in lat if v <= x_s) / len(lat))
        report(f"expected_loss_within_{x_s}s_share", model.cdf(x_s))
    # the gateway's retransmission schedule: T, 3T, 7T, 15T after the first transmission
    # (T the first timeout, as the server saw it; a timer that fires late shifts one)
    firsts, devs = [], []
    for x in xs:
        if x["retx_at"] == "-":
            continue
        at = [float(a) for a in x["retx_at"].split(",")]
        T = at[0]
        firsts.append(T)
        devs.append(max(abs(a - T * (2 ** (i + 1) - 1)) for i, a in enumerate(at)) * 1000)
    if firsts:
        report("loss_first_timeout_s_min", min(firsts))
        report("loss_first_timeout_s_max", max(firsts))
        report("loss_backoff_schedule_dev_ms_p50", pct(devs, 0.5))
        report("loss_backoff_schedule_dev_ms_p99", pct(devs, 0.99))
        report("loss_backoff_schedule_dev_ms_max", max(devs))
    seen_in = s2["requests"] + s2["dropped_in"]
    if seen_in:
        report("loss_dropped_in_share", s2["dropped_in"] / (s2["requests"] + s2["dropped_in"]))
    if s2["requests"]:
        report("loss_dropped_out_share", s2["dropped_out"] / s2["requests"])
    report("loss_late_transmissions", int(s2["late_transmissions"]))


# --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--per-device", type=int, default=10, help="resources (fields) per device")
    ap.add_argument("--servers", type=int, default=1,
                    help="poll and capacity: servers (UDP ports of bench_server) the devices are spread over")
    ap.add_argument("--poll", default="1s")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of the poll window")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--capacity-poll", default="10ms")
    ap.add_argument("--capacity-duration", type=float, default=10.0)
    ap.add_argument("--notify-rates", default="1000,10000,30000,60000",
                    help="notifications per second over all observed resources, one step each")
    ap.add_argument("--probe-rate", type=float, default=20.0)
    ap.add_argument("--obs-duration", type=float, default=15.0)
    ap.add_argument("--ping-spacing", type=float, default=0.02)
    ap.add_argument("--loss-devices", type=int, default=200)
    ap.add_argument("--drop", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--loss-duration", type=float, default=60.0)
    ap.add_argument("--loss-tail", type=float, default=47.0)
    ap.add_argument("--spread-servers", type=int, default=100)
    ap.add_argument("--spread-duration", type=float, default=10.0)
    ap.add_argument("--phases", default="poll,capacity,spread,observe,loss")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    server_bin = Path(os.environ.get("FIELDGATE_COAP_SERVER",
                                     h.REPO_ROOT / "target/release/examples/bench_server"))
    root = Path(tempfile.mkdtemp(prefix="fieldgate-bench-coap-"))
    env = None
    try:
        prosody = h.Prosody(root / "prosody", log_level="warn")
        env = h.Env(root=root, server=prosody)
        set_prosody_nagle_off(prosody)
        prosody.register("bench")
        prosody.start()
        client = IotClient(env.prosody, "bench")
        env.clients.append(client)
        client.connect()
        print(f"# gateway {h.gateway_bin()}; server {server_bin}; {os.cpu_count()} CPUs; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        runs = [r for r in (("poll_", args.poll, args.duration),
                            ("cap_", args.capacity_poll, args.capacity_duration)) if r[0].rstrip("_") in
                [{"poll": "poll", "capacity": "cap"}.get(p, p) for p in phases]]
        if runs:
            poll_phases(args, env, root, server_bin, args.servers, runs)
        if "spread" in phases:
            poll_phases(args, env, root, server_bin, args.spread_servers,
                        [("spread_", args.poll, args.spread_duration),
                         ("spread_cap_", args.capacity_poll, args.spread_duration)])
        if "observe" in phases:
            observe_phase(args, env, root, server_bin, client)
        if "loss" in phases:
            loss_phase(args, env, root, server_bin)
        return 0
    finally:
        teardown(env, root, args.keep)


if __name__ == "__main__":
    sys.exit(main())
