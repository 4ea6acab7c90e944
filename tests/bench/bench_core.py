"""fieldgate core benchmark, against a real Prosody (or, with --server ejabberd, a real
ejabberd) with a slixmpp client.

Figures (printed as `name: value` lines):
  startup_<N>_devices_s       process start → every device's available presence received by
                              a subscribed client (the subscriptions were made in a first run,
                              so this start-up announces to persisted subscribers)
  startup_ready_s             process start → READY=1 (component link up)
  rss_idle_kb / hwm_idle_kb   VmRSS / VmHWM of the gateway right after that start-up
  rss_idle_5s_kb              VmRSS after 5 s idle
  cpu_idle_5s_ms              CPU time (user+system) the gateway used in those 5 s
  reannounce_after_<server>_restart_s
                              the server (prosody or ejabberd) accepting connections again
                              after a restart → every device's presence at the
                              (reconnected) client
  client_session_after_restart_s
                              of which: until the client's new session was established
  ping_rtt_ms_p50 / _p99      round trips of sequential pings to a device (c2s → Prosody →
                              gateway → back)

Not pass/fail: a benchmark reports; it fails only if the system does not work at all.
Run through `bash tests/bench/run.sh` (release build); `--devices N` to change the size,
`--server ejabberd` for ejabberd (tests/bench/run_servers.sh runs both).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

import harness as h  # noqa: E402
from benchlib import report, teardown  # noqa: E402


def devices(n: int) -> list[dict]:
    return [h.sim_device(f"dev{i:04d}", name=f"Device {i}", fields=[
        {"name": "value", "type": "double", "unit": "bar", "decimals": 2,
         "sim": {"kind": "sine", "period": "60s", "amplitude": 1.0, "offset": 5.0}},
    ]) for i in range(n)]


def cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return 1000.0 * ticks / os.sysconf("SC_CLK_TCK")



def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--pings", type=int, default=500)
    ap.add_argument("--server", choices=h.SERVERS, default="prosody", help="the XMPP server (default prosody)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    n = args.devices
    timeout = max(60.0, n * 0.12)

    root = Path(tempfile.mkdtemp(prefix="fieldgate-bench-"))
    env = None
    try:
        env = h.make_env(root, users=("bench",), log_level="info", server=args.server)
        gw = env.new_gateway()
        gw.write_config(devices(n), access={"subscribe": [env.prosody.jid("bench")],
                                            "read": [env.prosody.jid("bench")]},
                        xmpp={"keepalive": "30s", "reconnect_min": "100ms", "reconnect_max": "1s"})
        jids = [env.dev(f"dev{i:04d}") for i in range(n)]
        print(f"# {n} simulated devices, binary {gw.binary}, server {args.server}", flush=True)

        # -- phase 1: subscribe to every device (not measured)
        gw.start()
        client = env.client("bench")
        m = client.mark()
        t = time.monotonic()
        for jid in jids:
            client.subscribe(jid)
        client.wait_all(jids, "available", m, timeout=timeout)
        print(f"# subscribed to {n} devices in {time.monotonic() - t:.2f}s", flush=True)
        m = client.mark()
        code, took = gw.stop(signal.SIGTERM, timeout=30)
        client.wait_all(jids, "unavailable", m, timeout=timeout)
        print(f"# SIGTERM: exit {code} after {took:.2f}s, {n} unavailable presences delivered", flush=True)

        # -- (a) start-up with N devices and N persisted subscriptions
        m = client.mark()
        gw.start(wait_ready=False)
        t0 = gw.started_at
        gw.wait_ready(timeout)
        ready = time.monotonic() - t0
        client.wait_all(jids, "available", m, timeout=timeout)
        report(f"startup_{n}_devices_s", time.monotonic() - t0)
        report("startup_ready_s", ready)

        # -- (b) memory and idle CPU
        st = h.proc_status(gw.pid)
        report("rss_idle_kb", st.get("VmRSS"))
        report("hwm_idle_kb", st.get("VmHWM"))
        c0 = cpu_ms(gw.pid)
        time.sleep(5)  # the measurement itself: five seconds of idling
        report("rss_idle_5s_kb", h.proc_status(gw.pid).get("VmRSS"))
        report("cpu_idle_5s_ms", cpu_ms(gw.pid) - c0)

        # ping latency through the whole chain
        rtts = []
        for _ in range(args.pings):
            t = time.monotonic()
            r = client.ping(jids[0])
            assert r.ok, r.condition
            rtts.append(1000 * (time.monotonic() - t))
        rtts.sort()
        report("ping_rtt_ms_p50", statistics.median(rtts))
        report("ping_rtt_ms_p99", rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))])

        # -- (c) server restart → presence re-announced to the reconnected client
        env.server.stop()
        client.wait_disconnected()
        client.drop()
        env.server.start()  # returns once both ports accept connections
        t0 = time.monotonic()
        m = client.mark()
        client.connect()
        session = time.monotonic() - t0
        client.wait_all(jids, "available", m, timeout=timeout)
        report(f"reannounce_after_{args.server}_restart_s", time.monotonic() - t0)
        report("client_session_after_restart_s", session)
        st = h.proc_status(gw.pid)
        report("rss_after_restart_kb", st.get("VmRSS"))
        report("hwm_after_restart_kb", st.get("VmHWM"))

        code, took = gw.stop(signal.SIGTERM, timeout=30)
        report("sigterm_exit_s", took)
        if code != 0:
            print(f"# fieldgate exited with {code}", flush=True)
            return 1
        return 0
    except BaseException:
        if env is not None and env.gateway is not None:
            print(env.gateway.log_tail(40), file=sys.stderr)
        raise
    finally:
        teardown(env, root, args.keep)


if __name__ == "__main__":
    sys.exit(main())
