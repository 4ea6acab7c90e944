"""fieldgate sensor-data benchmark: XEP-0323 readouts against XEP-0199 pings, through a real
Prosody (or, with --server ejabberd, a real ejabberd) on loopback, driven by the Rust load
generator in tests/bench/loadgen/.

Both kinds of request make the same trip, client → Prosody → component (the gateway) →
Prosody → client, to the same device JID, in the same run; so the difference between them is
what a readout costs over the cheapest request the gateway answers. A readout is one iq get
answered by an iq result (<accepted>) plus a <fields done='true'> message with 10 fields
(values from the gateway's cache: `[readout] max_age = "1h"`); a ping is one iq get answered
by one iq result.

Baseline: the ideal component. The server also serves a second component domain,
null.<vhost> (Prosody: a second Component; ejabberd: a second ejabberd_service listener),
connected to fieldgate-null-component (tests/bench/loadgen/src/bin/null_component.rs): it
answers pings and readouts for any JID there with exactly the stanzas fieldgate sends (the
<fields> is the first readout the gateway answered in this run, dumped by the loadgen and
replayed with only seqnr/from/to substituted), pre-rendered, at a few µs of CPU each. Every
phase is run against the gateway's meter1 and against meter1@null.<vhost>, interleaved in
one loadgen process; what the null component reaches is what the server allows, so
gateway/null near 1.0 means the server, not the gateway, is the limit.

Figures (printed as `name: value` lines at the end):
  readout_latency_ms_p50/_p99   one session, one request at a time: request sent → the
  ping_latency_ms_p50/_p99      readout complete (accepted + done) / the ping's result;
                                ping and readout phases interleaved, --latency-count of each
  readout_p99_over_ping_p99_ms  goal: < 1 ms
  readout_accepted_ms_p50/_p99  of the readout latency: request → iq result (<accepted>)
  readouts_per_s_100_requesters / pings_per_s_100_requesters
                                --sessions c2s sessions (separate accounts), each keeping
                                --inflight requests in flight, phases interleaved
  readout_to_ping_ratio         goal: >= 0.8
  gateway_cpu_s_during_readouts utime+stime of the gateway over the throughput readout phases
  gateway_cpu_us_per_readout / _per_ping
  gateway_rss_peak_kb           VmHWM of the gateway at the end (peak since its start)
  prosody_cpu_s_during_readouts / _pings, loadgen_cpu_s_...
                                who else used the CPU (the machine has few cores)
  prosody_cpu_us_per_readout / _per_ping, loadgen_cpu_us_per_readout / _per_ping
                                their CPU per request answered by the gateway
 the ideal component (meter1@null.<vhost>), same phases, same run:
  null_readout_latency_ms_p50/_p99 / null_ping_latency_ms_p50/_p99
                                as readout_latency_ms_*, ping_latency_ms_*
  null_readouts_per_s_100_requesters / null_pings_per_s_100_requesters
                                as readouts_per_s_*, pings_per_s_*
  null_readout_to_ping_ratio    the readout_to_ping_ratio an ideal component gets from this
                                server: the most the goal of 0.8 can be approached
  gateway_to_null_readout_ratio readouts_per_s ÷ null_readouts_per_s: near 1.0, the
                                server is the limit; well below, the gateway is
  gateway_to_null_ping_ratio    the same for pings
  prosody_cpu_us_per_null_readout / _per_null_ping, loadgen_cpu_us_per_null_...
                                their CPU per request answered by the null component
  null_component_cpu_us_per_null_readout / _per_null_ping
                                the null component's own CPU per request
 with --tls (ejabberd only): a second gateway, the same device at its own domain
 gwtls.<vhost>, linked over TLS (an ejabberd_service listener with tls: true, a certificate
 of a CA the harness makes, the gateway's [xmpp.tls] ca_file), its phases interleaved with
 the plaintext gateway's in the same loadgen run:
  tls_readout_latency_ms_p50/_p99, tls_ping_latency_ms_p50/_p99, tls_readouts_per_s_<n>_
  requesters, tls_pings_per_s_<n>_requesters, tls_gateway_cpu_us_per_readout / _per_ping
                                as the plaintext gateway's figures
  tls_minus_plain_readout_p99_ms, tls_over_plain_gateway_cpu_per_readout
                                the TLS link's cost

With --server ejabberd the server's CPU figures are named ejabberd_cpu_* instead of
prosody_cpu_*.

Not pass/fail: a benchmark reports; it fails only if the system does not work at all (a
request that fails is counted and printed with its reason; the run goes on).
Run through `bash tests/bench/run_iot.sh` (release builds of the gateway and the loadgen).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

import harness as h  # noqa: E402
from benchlib import remove_or_keep, report  # noqa: E402

DEVICE = "meter1"
USER_PREFIX = "bench"


def loadgen_bin(name: str = "fieldgate-loadgen", env_var: str = "LOADGEN_BIN") -> Path:
    """A binary of tests/bench/loadgen: the load generator, or the null component."""
    env = os.environ.get(env_var)
    path = Path(env).resolve() if env else (
        h.REPO_ROOT / "tests" / "bench" / "loadgen" / "target" / "release" / name)
    if not path.is_file():
        raise h.HarnessError(f"{path} missing: build tests/bench/loadgen (run_iot.sh does)")
    return path


def add_null_component(server) -> tuple[str, int]:
    """Declares the null component's domain in the server's config (before start); returns
    it and the port it connects to. Prosody: a second Component beside the gateway's, on the
    same port; ejabberd: an ejabberd_service listener of its own (one listener per component:
    with two domains on one listener, ejabberd routes both to whichever authenticated)."""
    domain = f"null.{server.vhost}"
    if server.name == "ejabberd":
        return domain, server.add_service("null", domain=domain).port
    with server.config_path.open("a") as cfg:
        cfg.write(f'\nComponent "{domain}"\n    component_secret = "{server.secret}"\n')
    return domain, server.component_port


def start_null_component(server, domain: str, port: int, template: Path, workdir: Path) -> subprocess.Popen:
    """Starts the ideal component (tests/bench/loadgen/src/bin/null_component.rs) and waits
    until the server accepted its handshake."""
    out_path = workdir / "null-component.out"
    cmd = [str(loadgen_bin("fieldgate-null-component", "NULL_COMPONENT_BIN")),
           "--server", f"127.0.0.1:{port}", "--domain", domain,
           "--secret", server.secret, "--fields-template", str(template)]
    with out_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if proc.poll() is not None:
            raise h.HarnessError(f"null component exited with {proc.returncode}:\n{h.tail(out_path)}")
        return "ready" in out_path.read_text()

    h.wait_for(ready, 10, "the null component's handshake")
    return proc


def device(nfields: int) -> dict:
    """One sim device with `nfields` fields of mixed types."""
    fields = []
    for i in range(nfields):
        name = f"f{i:02d}"
        kind = i % 5
        if kind == 3:
            fields.append({"name": name, "type": "int", "unit": "pcs",
                           "sim": {"kind": "counter", "every": "1s"}})
        elif kind == 4:
            fields.append({"name": name, "type": "bool", "sim": {"kind": "toggle", "every": "10s"}})
        else:
            fields.append({"name": name, "type": "double", "unit": "bar", "decimals": 2,
                           "sim": {"kind": "sine", "period": "60s", "amplitude": 1.0, "offset": 5.0 + i}})
    return h.sim_device(DEVICE, name="Bench meter", fields=fields)


def register_users(server, n: int) -> str:
    """Registers bench0..bench{n-1} (before start). ejabberd: its node registers them as it
    boots. Prosody: prosodyctl takes about a second per call (it starts a
    Lua VM each time), so: register bench0 with prosodyctl, then copy its account file for
    the others (internal_plain storage: one file per account, holding only the password).
    Falls back to prosodyctl in parallel when the file is not where expected."""
    if server.name == "ejabberd":
        for i in range(n):
            server.register(f"{USER_PREFIX}{i}")
        return "by ejabberd as it starts"
    prosody = server
    prosody.register(f"{USER_PREFIX}0")
    found = list(prosody.data_dir.glob(f"*/accounts/{USER_PREFIX}0.dat"))
    if len(found) == 1 and h.PASSWORD in found[0].read_text():
        src = found[0]
        for i in range(1, n):
            shutil.copyfile(src, src.with_name(f"{USER_PREFIX}{i}.dat"))
        return "prosodyctl once, account file copied"
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: prosody.register(f"{USER_PREFIX}{i}"), range(1, n)))
    return "prosodyctl, 8 in parallel"


def set_prosody_nagle_off(prosody: h.Prosody) -> None:
    """TCP_NODELAY on Prosody's sockets: a global option, so it goes before the first host."""
    cfg = prosody.config_path.read_text()
    marker = "\nVirtualHost "
    assert marker in cfg, "unexpected Prosody config layout"
    cfg = cfg.replace(marker, "\nnetwork_settings = { nagle = false }\n" + marker, 1)
    prosody.config_path.write_text(cfg)


def run_loadgen(args: list[str], what: str, timeout: float) -> dict[str, str]:
    cmd = [str(loadgen_bin()), *args]
    print(f"# {what}: {' '.join(cmd[1:])}", flush=True)
    t = time.monotonic()
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    out: dict[str, str] = {}
    for line in r.stdout.splitlines():
        print(f"#   {line}", flush=True)
        k, sep, v = line.partition(": ")
        if sep:
            out[k] = v
    if r.returncode != 0:
        raise h.HarnessError(f"loadgen failed ({r.returncode}) after {time.monotonic() - t:.1f}s:\n{r.stderr}")
    if r.stderr.strip():
        print("#   (stderr) " + r.stderr.strip().replace("\n", "\n#   (stderr) "), flush=True)
    return out


def fnum(d: dict[str, str], k: str) -> float:
    try:
        return float(d[k])
    except (KeyError, ValueError):
        return float("nan")



def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fields", type=int, default=10, help="fields of the sim device (default 10)")
    ap.add_argument("--sessions", type=int, default=100, help="concurrent requesters (default 100)")
    ap.add_argument("--inflight", type=int, default=2, help="requests in flight per requester (default 2)")
    ap.add_argument("--latency-count", type=int, default=20000,
                    help="requests of each kind for the latency figures (default 20000)")
    ap.add_argument("--latency-phase-cap", default="20s",
                    help="time limit of one latency phase (4 per kind), in case requests are slow "
                         "(default 20s; the samples actually taken are reported)")
    ap.add_argument("--phase-duration", default="8s", help="length of one throughput phase (default 8s)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="ping/readout phase pairs, interleaved (default 3; latency uses 4)")
    ap.add_argument("--prosody-nagle", choices=("on", "off"), default="on",
                    help="Prosody's Nagle algorithm on its sockets: on (Prosody's default) or off "
                         "(network_settings = { nagle = false })")
    ap.add_argument("--prosody-log", choices=("info", "debug"), default="info",
                    help="Prosody's log level (debug logs every stanza: slower, for tracing a "
                         "lost request; use with --keep)")
    ap.add_argument("--server", choices=h.SERVERS, default="prosody", help="the XMPP server (default prosody)")
    ap.add_argument("--tls", action="store_true",
                    help="also a second gateway linked over TLS, same device, same run (ejabberd only)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    args = ap.parse_args()
    if args.tls and args.server != "ejabberd":
        ap.error("--tls needs --server ejabberd (Prosody has no TLS component listener)")

    root = Path(tempfile.mkdtemp(prefix="fieldgate-bench-iot-"))
    prosody = None
    env = None
    null = None
    gw_tls = None
    try:
        # (named prosody for history: the server, Prosody or ejabberd)
        prosody = h.make_server(root, args.server, log_level=args.prosody_log)
        if args.prosody_nagle == "off":
            if args.server != "prosody":
                ap.error("--prosody-nagle off is for Prosody")
            set_prosody_nagle_off(prosody)
        null_domain, null_port = add_null_component(prosody)
        tls_domain = None
        if args.tls:
            from certs import make_certs

            certs = make_certs(root / "certs")
            tls_domain = f"gwtls.{prosody.vhost}"
            tls_port = prosody.add_service("tls", domain=tls_domain, tls=True, certfile=certs.server.bundle).port
        env = h.Env(root=root, server=prosody)
        t = time.monotonic()
        how = register_users(prosody, args.sessions)
        print(f"# registered {args.sessions} users in {time.monotonic() - t:.2f}s ({how}; not measured)",
              flush=True)
        prosody.start()

        gw = env.new_gateway()
        text = h.gateway_toml(prosody, gw.state_dir, [device(args.fields)],
                              access={"read": ["*"]}, xmpp={"keepalive": "30s"})
        # a value younger than max_age comes from the cache: after the first readout, every
        # readout is served from the cache and never waits on the (simulated) device
        text += '\n[readout]\nmax_age = "1h"\nmax_per_requester = 64\n'
        gw.write_raw_config(text)
        gw.start()
        target = env.dev(DEVICE)
        print(f"# gateway {gw.binary} pid {gw.pid}, {args.server} pid {prosody.proc.pid}"
              f"{f' (nagle {args.prosody_nagle})' if args.server == 'prosody' else ''}, device {target} "
              f"with {args.fields} fields, {os.cpu_count()} CPUs", flush=True)
        if args.tls:
            # the same gateway at its own domain, linked over TLS (by address: the listener's
            # certificate, which carries 127.0.0.1)
            gw_tls = h.Gateway(root / "gw-tls", prosody)
            env.extras.append(gw_tls)
            text = h.gateway_toml(prosody, gw_tls.state_dir, [device(args.fields)], access={"read": ["*"]},
                                  xmpp={"keepalive": "30s", "server": f"127.0.0.1:{tls_port}",
                                        "domain": tls_domain, "tls": {"ca_file": str(certs.ca_cert)}})
            text += '\n[readout]\nmax_age = "1h"\nmax_per_requester = 64\n'
            gw_tls.write_raw_config(text)
            gw_tls.start()
            print(f"# TLS gateway pid {gw_tls.pid}, device {DEVICE}@{tls_domain} (port {tls_port}, TLS)",
                  flush=True)

        # (0) the ideal component: replays the first readout the gateway answers
        template = root / "fields-template.xml"
        run_loadgen([
            "--server", f"127.0.0.1:{prosody.c2s_port}", "--password", h.PASSWORD,
            "--target", target, "--fields", str(args.fields), "--user", f"{USER_PREFIX}0@{prosody.vhost}",
            "--mode", "readout", "--count", "1", "--dump-fields", str(template),
        ], "capture one gateway readout for the null component", timeout=120)
        null = start_null_component(prosody, null_domain, null_port, template, root)
        null_target = f"{DEVICE}@{null_domain}"
        print(f"# null component pid {null.pid}, device {null_target}, replaying "
              f"{template.stat().st_size} bytes of <fields>", flush=True)

        # the gateway's figures keep their names (ping_*, readout_*), the null component's
        # are null_ping_*, null_readout_*; each round runs gateway then null phases
        srv = args.server  # the server's CPU figures are named after it
        targets = f"{target},null={null_target}"
        watch = f"gateway:{gw.pid},{srv}:{prosody.proc.pid},null:{null.pid}"
        if gw_tls is not None:
            targets += f",tls={DEVICE}@{tls_domain}"
            watch += f",tls:{gw_tls.pid}"
        common = ["--server", f"127.0.0.1:{prosody.c2s_port}", "--password", h.PASSWORD,
                  "--target", targets, "--fields", str(args.fields), "--watch", watch]

        # (1) latency: one requester, one request at a time
        per_phase = max(1, args.latency_count // 4)
        lat = run_loadgen(common + [
            "--user", f"{USER_PREFIX}0@{prosody.vhost}", "--concurrency", "1", "--inflight", "1",
            "--mode", "ping,readout", "--rounds", "4", "--count", str(per_phase),
            "--duration", args.latency_phase_cap, "--warmup", "2s",
        ], "latency, 1 requester", timeout=600)

        # (2) throughput: many requesters, a few requests in flight each
        tput = run_loadgen(common + [
            "--user", f"{USER_PREFIX}{{}}@{prosody.vhost}", "--concurrency", str(args.sessions),
            "--inflight", str(args.inflight), "--mode", "ping,readout", "--rounds", str(args.rounds),
            "--duration", args.phase_duration, "--warmup", "3s", "--connect-parallel", "10",
        ], f"throughput, {args.sessions} requesters", timeout=900)

        assert gw.running, f"the gateway died during the run\n{gw.log_tail(40)}"
        assert null.poll() is None, f"the null component died during the run\n{h.tail(root / 'null-component.out')}"
        assert gw_tls is None or gw_tls.running, f"the TLS gateway died during the run\n{gw_tls.log_tail(40)}"
        failed = sum(int(fnum(d, f"{t}{m}_failed"))
                     for d in (lat, tput) for t in ("", "null_", "tls_") for m in ("ping", "readout")
                     if f"{t}{m}_failed" in d)

        print("", flush=True)
        r50, r99 = fnum(lat, "readout_lat_ms_p50"), fnum(lat, "readout_lat_ms_p99")
        p50, p99 = fnum(lat, "ping_lat_ms_p50"), fnum(lat, "ping_lat_ms_p99")
        report("readout_latency_ms_p50", r50)
        report("readout_latency_ms_p99", r99)
        report("ping_latency_ms_p50", p50)
        report("ping_latency_ms_p99", p99)
        report("readout_accepted_ms_p50", fnum(lat, "readout_accepted_ms_p50"))
        report("readout_accepted_ms_p99", fnum(lat, "readout_accepted_ms_p99"))
        report("readout_p50_over_ping_p50_ms", r50 - p50)
        report("readout_p99_over_ping_p99_ms", r99 - p99)
        report("latency_samples_readout", int(fnum(lat, "readout_ok")))
        report("latency_samples_ping", int(fnum(lat, "ping_ok")))
        rr, pr = fnum(tput, "readout_rate_per_s"), fnum(tput, "ping_rate_per_s")
        n = args.sessions
        report(f"readouts_per_s_{n}_requesters", rr)
        report(f"pings_per_s_{n}_requesters", pr)
        report("readout_to_ping_ratio", rr / pr if pr else float("nan"))
        report(f"readout_latency_ms_p50_{n}_requesters", fnum(tput, "readout_lat_ms_p50"))
        report(f"readout_latency_ms_p99_{n}_requesters", fnum(tput, "readout_lat_ms_p99"))
        report(f"ping_latency_ms_p50_{n}_requesters", fnum(tput, "ping_lat_ms_p50"))
        report(f"ping_latency_ms_p99_{n}_requesters", fnum(tput, "ping_lat_ms_p99"))
        report("gateway_cpu_s_during_readouts", fnum(tput, "readout_cpu_s_gateway"))
        report("gateway_cpu_s_during_pings", fnum(tput, "ping_cpu_s_gateway"))
        report("gateway_cpu_us_per_readout", fnum(tput, "readout_cpu_us_per_request_gateway"))
        report("gateway_cpu_us_per_ping", fnum(tput, "ping_cpu_us_per_request_gateway"))
        report("gateway_rss_peak_kb", int(fnum(tput, "vmhwm_kb_gateway")))
        report(f"{srv}_cpu_s_during_readouts", fnum(tput, f"readout_cpu_s_{srv}"))
        report(f"{srv}_cpu_s_during_pings", fnum(tput, f"ping_cpu_s_{srv}"))
        report("loadgen_cpu_s_during_readouts", fnum(tput, "readout_cpu_s_loadgen"))
        report("loadgen_cpu_s_during_pings", fnum(tput, "ping_cpu_s_loadgen"))
        report("throughput_phase_wall_s_per_kind", fnum(tput, "readout_wall_s"))
        # the ideal component, same server, same run
        report("null_readout_latency_ms_p50", fnum(lat, "null_readout_lat_ms_p50"))
        report("null_readout_latency_ms_p99", fnum(lat, "null_readout_lat_ms_p99"))
        report("null_ping_latency_ms_p50", fnum(lat, "null_ping_lat_ms_p50"))
        report("null_ping_latency_ms_p99", fnum(lat, "null_ping_lat_ms_p99"))
        nrr, npr = fnum(tput, "null_readout_rate_per_s"), fnum(tput, "null_ping_rate_per_s")
        report(f"null_readouts_per_s_{n}_requesters", nrr)
        report(f"null_pings_per_s_{n}_requesters", npr)
        report("null_readout_to_ping_ratio", nrr / npr if npr else float("nan"))
        report("gateway_to_null_readout_ratio", rr / nrr if nrr else float("nan"))
        report("gateway_to_null_ping_ratio", pr / npr if npr else float("nan"))
        for who, key in ((srv, srv), ("null_component", "null"), ("loadgen", "loadgen")):
            for kind in ("readout", "ping"):
                report(f"{who}_cpu_us_per_null_{kind}", fnum(tput, f"null_{kind}_cpu_us_per_request_{key}"))
        for who in (srv, "loadgen"):
            for kind in ("readout", "ping"):
                report(f"{who}_cpu_us_per_{kind}", fnum(tput, f"{kind}_cpu_us_per_request_{who}"))
        if gw_tls is not None:
            # the TLS link's cost: the same device behind the same server, phases interleaved
            t50, t99 = fnum(lat, "tls_readout_lat_ms_p50"), fnum(lat, "tls_readout_lat_ms_p99")
            report("tls_readout_latency_ms_p50", t50)
            report("tls_readout_latency_ms_p99", t99)
            report("tls_ping_latency_ms_p50", fnum(lat, "tls_ping_lat_ms_p50"))
            report("tls_ping_latency_ms_p99", fnum(lat, "tls_ping_lat_ms_p99"))
            report(f"tls_readouts_per_s_{n}_requesters", fnum(tput, "tls_readout_rate_per_s"))
            report(f"tls_pings_per_s_{n}_requesters", fnum(tput, "tls_ping_rate_per_s"))
            tcpu = fnum(tput, "tls_readout_cpu_us_per_request_tls")
            report("tls_gateway_cpu_us_per_readout", tcpu)
            report("tls_gateway_cpu_us_per_ping", fnum(tput, "tls_ping_cpu_us_per_request_tls"))
            report(f"tls_{srv}_cpu_us_per_readout", fnum(tput, f"tls_readout_cpu_us_per_request_{srv}"))
            report("tls_minus_plain_readout_p50_ms", t50 - r50)
            report("tls_minus_plain_readout_p99_ms", t99 - r99)
            pcpu = fnum(tput, "readout_cpu_us_per_request_gateway")
            report("tls_over_plain_gateway_cpu_per_readout", tcpu / pcpu if pcpu else float("nan"))
        report("requests_failed", failed)
        for what, d in (("latency", lat), ("throughput", tput)):
            for k, v in d.items():
                if k.startswith("failure_") or k.startswith("warmup_") and "_failure_" in k:
                    print(f"# {what} run, {v}", flush=True)
        return 0
    except BaseException:
        if env is not None and env.gateway is not None:
            print(env.gateway.log_tail(40), file=sys.stderr)
        if prosody is not None:
            print(prosody.describe(), file=sys.stderr)
        raise
    finally:
        if null is not None:
            h.stop_process(null)
        if env is not None:
            env.close()
        elif prosody is not None:
            prosody.close()
        remove_or_keep(root, args.keep)


if __name__ == "__main__":
    sys.exit(main())
