"""fieldgate on both XMPP servers, in one run: bench_core.py and bench_iot.py against Prosody,
then against ejabberd, and the TLS link's cost on ejabberd (issue 13, "Figures").

Each benchmark runs as its own process, one after the other (never two at once: the machine
has few cores), against a server of its own. Every figure a benchmark prints is printed
again as `<server>.<name>: value` (`prosody.startup_1000_devices_s: 0.22`), its comment
lines as `# [<server> <bench>] ...`; see bench_core.py and bench_iot.py for what each figure
measures. At the end, `# side by side` lines put the main figures of the two servers next to
each other.

  core   start-up of --devices devices to a subscribed client (startup_<N>_devices_s),
         presence re-announced after a server restart (reannounce_after_<server>_restart_s),
         ping round trips from Python (ping_rtt_ms_p50/_p99)
  iot    readout and ping latency, one requester (readout_latency_ms_p50/_p99,
         ping_latency_ms_p50/_p99); readouts and pings per second from --sessions requesters
         keeping 2 requests in flight each (closed loop: the rates are the capacity of the
         chain, not an offered load), beside the ideal null component's through the same
         server (null_readouts_per_s_..., gateway_to_null_readout_ratio); on ejabberd also a
         second gateway linked over TLS in the same run (tls_*: readout p99 and gateway CPU
         per readout with TLS beside the plaintext gateway's)

Run through `bash tests/bench/run_servers.sh` (release builds); not pass/fail.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(server: str, bench: str, script: str, args: list[str], figures: dict[str, str]) -> bool:
    cmd = [sys.executable, str(HERE / script), "--server", server, *args]
    tag = f"[{server} {bench}]"
    print(f"# {tag} {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        name, sep, value = line.partition(": ")
        if sep and not line.startswith("#") and " " not in name:
            figures[name] = value
            print(f"{server}.{name}: {value}", flush=True)
        elif line.startswith("#   "):
            continue  # the loadgen's own lines: bench_iot.py prints its figures
        else:
            print(f"# {tag} {line}", flush=True)
    code = proc.wait()
    print(f"# {tag} exit {code} after {time.monotonic() - t0:.0f}s", flush=True)
    return code == 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", default="prosody,ejabberd", help="comma list (default prosody,ejabberd)")
    ap.add_argument("--no-tls", action="store_true", help="leave out the TLS gateway on ejabberd")
    ap.add_argument("--devices", type=int, default=1000, help="devices of the start-up benchmark (default 1000)")
    ap.add_argument("--sessions", type=int, default=100, help="concurrent requesters (default 100)")
    ap.add_argument("--latency-count", type=int, default=20000, help="bench_iot.py --latency-count")
    ap.add_argument("--phase-duration", default="8s", help="bench_iot.py --phase-duration")
    ap.add_argument("--rounds", type=int, default=3, help="bench_iot.py --rounds")
    args = ap.parse_args()
    servers = [s for s in args.servers.split(",") if s]

    results: dict[str, dict[str, str]] = {}
    ok = True
    for server in servers:
        figures = results.setdefault(server, {})
        ok &= run(server, "core", "bench_core.py", ["--devices", str(args.devices)], figures)
        iot = ["--sessions", str(args.sessions), "--latency-count", str(args.latency_count),
               "--phase-duration", args.phase_duration, "--rounds", str(args.rounds)]
        if server == "ejabberd" and not args.no_tls:
            iot.append("--tls")
        ok &= run(server, "iot", "bench_iot.py", iot, figures)

    n, d = args.sessions, args.devices
    rows = [
        (f"startup_{d}_devices_s", lambda s: f"startup_{d}_devices_s"),
        ("reannounce_after_server_restart_s", lambda s: f"reannounce_after_{s}_restart_s"),
        ("readout_latency_ms_p50", lambda s: "readout_latency_ms_p50"),
        ("readout_latency_ms_p99", lambda s: "readout_latency_ms_p99"),
        ("ping_latency_ms_p50", lambda s: "ping_latency_ms_p50"),
        ("ping_latency_ms_p99", lambda s: "ping_latency_ms_p99"),
        (f"readouts_per_s_{n}_requesters", lambda s: f"readouts_per_s_{n}_requesters"),
        (f"null_readouts_per_s_{n}_requesters", lambda s: f"null_readouts_per_s_{n}_requesters"),
        ("gateway_to_null_readout_ratio", lambda s: "gateway_to_null_readout_ratio"),
        (f"pings_per_s_{n}_requesters", lambda s: f"pings_per_s_{n}_requesters"),
        ("gateway_cpu_us_per_readout", lambda s: "gateway_cpu_us_per_readout"),
        ("server_cpu_us_per_readout", lambda s: f"{s}_cpu_us_per_readout"),
        ("tls_readout_latency_ms_p99", lambda s: "tls_readout_latency_ms_p99"),
        ("tls_gateway_cpu_us_per_readout", lambda s: "tls_gateway_cpu_us_per_readout"),
        ("tls_over_plain_gateway_cpu_per_readout", lambda s: "tls_over_plain_gateway_cpu_per_readout"),
    ]
    print(f"# side by side: {'figure':40} " + " ".join(f"{s:>10}" for s in servers), flush=True)
    for label, key in rows:
        cells = [results.get(s, {}).get(key(s), "-") for s in servers]
        print(f"# side by side: {label:40} " + " ".join(f"{c:>10}" for c in cells), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
