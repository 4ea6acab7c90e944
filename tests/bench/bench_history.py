"""fieldgate history benchmark: the store written at 100,000 samples/s, what it costs in
CPU and bytes, historical readouts of a prefilled store through Prosody, and start-up
beside a 1 GB store.

Phases (`--phases`, all by default), each with a gateway of its own against one Prosody:

  write     `--devices` (100) sim devices x `--fields` (100) fields, half counters (integers)
            and half sines (reals, 2 decimals), all kept with sample = "every", read every
            100 ms: 100,000 samples/s offered. After `--warmup` (30 s: until every series
            has pages of its own, as in a store that has been running) a window of
            `--duration` (20 s) is measured; `--commit` sets commit_interval (1s).
  wide      the same rate from many fields read once a second, the common case:
            `--wide-devices` (1000) x `--fields` fields every 1 s (100,000 series), each
            series given 200 samples of past first (a store that has been running).
  capacity  the same with `--capacity-devices` (400) devices: 400,000 samples/s offered;
            what is stored is what the gateway can take on this machine.
  readout   a store holding 31 days of one field at one sample per second (2,678,400
            samples; the gateway made the store and its series, the samples were added
            here with sqlite3 in the gateway's tables), read through Prosody by a slixmpp
            client: the last whole day (86,400 values, historical='true') and the month's
            hourly aggregates (historicalHour: mean, min and max of 744 hours).
  startup   100 sim devices x 10 kept fields (1,000 series, read every 100 ms: well before
            the first commit, one commit interval after the start), subscribed to by the client;
            the gateway started `--repeats` (5) times on an empty store and as often on a
            store of `--big-store-mb` (1024) MB, alternately, the store's pages dropped
            from the page cache before each start (posix_fadvise DONTNEED).

Figures (`name: value` lines):
  write_offered_samples_per_s       devices x fields / read interval
  write_stored_samples_per_s        samples in the store stamped within the window / window
  write_gateway_cpu_pct             the gateway's CPU in the window, % of one core
  write_cpu_s_per_100k_samples      gateway CPU seconds per 100,000 samples stored
  write_writer_cpu_s_per_100k_samples   of which the writer thread ("history")
  write_disk_bytes_per_sample       the store's file after a clean stop / samples in it
  write_page_bytes_per_sample       pages in use (page_count - freelist) x page size / samples
  write_written_bytes_per_sample    /proc/<pid>/io write_bytes - cancelled_write_bytes in the
                                    window / samples stored: what the gateway had the kernel
                                    write to disk, WAL and checkpoints included
  write_syscall_bytes_per_sample    /proc/<pid>/io wchar: bytes passed to write(2)
  write_dropped_samples             samples the gateway dropped (queue or backlog): the last
                                    count it logged (a lower bound: it logs once a minute)
  wide_*, capacity_*                the same for those phases (the byte figures of the store
                                    itself for the write and capacity phases only)
  readout_day_values / _messages    values and <fields> messages of the day's readout
  readout_day_s                     request sent -> the `done` message at the client (median)
  readout_day_gateway_cpu_s         gateway CPU for one such readout (median); _prosody_cpu_s
                                    and _client_cpu_s: Prosody's and this client's meanwhile
  readout_month_hourly_*            the same for the month's hourly aggregates
  startup_<store>_ready_s           process start -> READY=1 (component link up), median
  startup_<store>_presence_s        process start -> every device's available presence at
                                    the subscribed client, median
  startup_<store>_first_commit_s    process start -> the first sample of the run readable
                                    in the store by another process, median
  stop_<store>_s                    SIGTERM -> exit (the last commit, the WAL folded in), median
  (<store>: empty, or <N>mb), and startup_big_store_bytes / _samples: the big store's size.

Not pass/fail. Run through `bash tests/bench/run_history.sh` (release build).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
from benchlib import report, teardown  # noqa: E402
from iot import NS_SD, IotClient, all_fields, extra_sections, iso, req_iq  # noqa: E402

COUNTER = {"kind": "counter", "start": 0, "step": 1, "every": "100ms"}
SINE = {"kind": "sine", "period": "60s", "amplitude": 10.0, "offset": 20.0}
DAY_MS = 86_400_000


def all_samples(db: sqlite3.Connection) -> str:
    """Every sample of a store: those folded into `samples` and those committed since, in
    `recent` (src/history/store.rs; a store of schema version 1 has `samples` alone)."""
    if db.execute("SELECT 1 FROM sqlite_schema WHERE name = 'recent'").fetchone():
        return "(SELECT series, t, v FROM samples UNION ALL SELECT series, t, v FROM recent)"
    return "samples"


def ro(store: Path) -> closing:
    return closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30))


def thread_cpu_s(pid: int, name: str) -> float:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == name:
                total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass
    return total / 1e9


def proc_io(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def gateway(env, root: Path, name: str, devices: list[dict], history: dict, users: list[str]) -> h.Gateway:
    gw = h.Gateway(root / name, env.server)
    access = {"subscribe": users, "read": users}
    gw.write_raw_config(h.gateway_toml(env.server, gw.state_dir, devices, access)
                        + extra_sections({"history": history}))
    env.gateway = gw
    return gw


def stop(gw: h.Gateway) -> float:
    code, took = gw.stop(signal.SIGTERM, timeout=120)
    if code != 0:
        raise RuntimeError(f"fieldgate exited with {code}\n{gw.log_tail()}")
    return took


# --------------------------------------------------------------------------------------
# write and capacity


def sim_fleet(n: int, fields: int) -> list[dict]:
    return [h.sim_device(f"d{i:03d}", fields=[
        {"name": "n{n}", "type": "long", "count": fields // 2, "sim": COUNTER},
        {"name": "s{n}", "type": "double", "decimals": 2, "count": fields - fields // 2, "sim": SINE},
    ]) for i in range(n)]


def write_phase(args, env, root: Path, phase: str, devices: int, read_s: float, warmup: float, duration: float,
                prefill: int = 0) -> None:
    offered = devices * args.fields / read_s
    history = {"keep": "30d", "sample": "every", "read_interval": f"{read_s * 1000:.0f}ms",
               "commit_interval": args.commit, "max_size": "16 GiB"}
    gw = gateway(env, root, phase, sim_fleet(devices, args.fields), history, [])
    store = gw.state_dir / "history.db"
    print(f"# {phase}: {devices} devices x {args.fields} fields every {read_s:g} s = {offered:.0f} samples/s offered, "
          f"commit_interval {args.commit}, warm-up {warmup:g} s, window {duration:g} s", flush=True)
    if prefill:
        # Series with a past: each has pages of its own, as in a store that has run
        # for a while (a new store packs many series' first samples into one page).
        gw.start()
        n = devices * args.fields
        h.wait_for(lambda: store.exists() and series_count(store) >= n, 60, f"{n} series in the store")
        stop(gw)
        with ro(store) as db:
            ids = [r[0] for r in db.execute("SELECT id FROM series")]
        t = time.monotonic()
        fill(store, ids, int((time.time() - 3600 - prefill * read_s) * 1000), int(read_s * 1000), prefill)
        print(f"# {phase}: {prefill} samples of each series added in {time.monotonic() - t:.0f} s", flush=True)
    gw.start()
    time.sleep(warmup)
    c0, w0, io0, t0 = h.cpu_ns(gw.pid), thread_cpu_s(gw.pid, "history"), proc_io(gw.pid), time.time()
    time.sleep(duration)
    c1, w1, io1, t1 = h.cpu_ns(gw.pid), thread_cpu_s(gw.pid, "history"), proc_io(gw.pid), time.time()
    # what was read in the window is committed within a commit interval (and its commit)
    time.sleep(h_duration(args.commit) + 2.0)
    stored = 0
    if store.exists():  # a writer that never commits never makes it
        with ro(store) as db:
            stored = db.execute(f"SELECT count(*) FROM {all_samples(db)} WHERE t >= ? AND t < ?",
                                (int(t0 * 1000), int(t1 * 1000))).fetchone()[0]
    win = t1 - t0
    cpu = (c1 - c0) / 1e9
    written = (io1["write_bytes"] - io0["write_bytes"]) - (io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"])
    p = f"{phase}_"
    report(f"{p}offered_samples_per_s", offered)
    report(f"{p}stored_samples_per_s", stored / win)
    report(f"{p}gateway_cpu_pct", cpu / win * 100)
    if stored:
        report(f"{p}cpu_s_per_100k_samples", cpu / (stored / 100_000))
        report(f"{p}writer_cpu_s_per_100k_samples", (w1 - w0) / (stored / 100_000))
        report(f"{p}written_bytes_per_sample", written / stored)
        report(f"{p}syscall_bytes_per_sample", (io1["wchar"] - io0["wchar"]) / stored)
    dropped = [int(x) for x in re.findall(r"dropped_total=(\d+)", gw.log_text())]
    report(f"{p}dropped_samples", max(dropped, default=0))
    stop(gw)
    if not prefill and store.exists():
        with ro(store) as db:
            total = db.execute(f"SELECT count(*) FROM {all_samples(db)}").fetchone()[0]
            pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
        size = store.stat().st_size + sum(p.stat().st_size for p in store.parent.glob("history.db-wal"))
        report(f"{p}disk_bytes_per_sample", size / total)
        report(f"{p}page_bytes_per_sample", pages * page_size / total)
        report(f"{p}store_samples", total)
    store.unlink(missing_ok=True)  # up to a GB: not kept for the phases after


def series_count(store: Path) -> int:
    try:
        with ro(store) as db:
            return db.execute("SELECT count(*) FROM series").fetchone()[0]
    except sqlite3.Error:
        return 0


def h_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text.strip())
    if not m:
        raise SystemExit(f"--commit {text!r}: write e.g. 500ms, 1s, 10s")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(2)]


# --------------------------------------------------------------------------------------
# readout


def series_id(store: Path, device: str, field: str) -> int:
    with ro(store) as db:
        row = db.execute("SELECT id FROM series WHERE device = ? AND field = ?", (device, field)).fetchone()
    if row is None:
        raise RuntimeError(f"the gateway made no series for {device}/{field} in {store}")
    return row[0]


def fill(store: Path, series: list[int], first_ms: int, step_ms: int, per_series: int) -> None:
    """Adds `per_series` samples to each series, `step_ms` apart from `first_ms`, reals of
    two decimals: into the gateway's own tables (it made them), while it is stopped."""
    with closing(sqlite3.connect(store, isolation_level=None)) as db:
        db.execute("BEGIN")
        for s in series:
            db.execute(
                "WITH RECURSIVE i(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM i WHERE x < ?) "
                "INSERT OR REPLACE INTO samples(series, t, v) "
                "SELECT ?, ? + x * ?, 20.0 + ((x * 7919) % 2000) / 100.0 FROM i",
                (per_series - 1, s, first_ms, step_ms))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()


def cpu_s(pid: int) -> float:
    """utime + stime of a process, its ended threads included (a readout runs on a
    blocking thread of its own)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_readout(c: IotClient, env, jid: str, seqnr: int, since_ms: int, until_ms: int,
                  **flags) -> dict[str, float]:
    """One readout: seconds to `done` at the client, CPU seconds of the gateway, Prosody
    and this client meanwhile, values and messages."""
    mk = c.mark_stanzas()
    iq = req_iq(jid, seqnr, fields=["power"], **flags)
    bounds = f" from='{iso(since_ms / 1000)}' to='{iso(until_ms / 1000)}'"
    iq = iq.replace(f"<req xmlns='{NS_SD}'", f"<req xmlns='{NS_SD}'{bounds}", 1)
    pids = (env.gateway.pid, env.server.proc.pid, os.getpid())
    c0 = [cpu_s(p) for p in pids]
    sent = time.monotonic()
    r = c.iq(iq, timeout=60)
    if not r.ok:
        raise RuntimeError(f"readout refused: {r.condition} {r.text}")
    payloads = c.wait_readout_end(seqnr, mk, timeout=300)
    done_at = max(at for at, s in c.timed_since(mk) if any(p.get("seqnr") == str(seqnr) for p in s))
    c1 = [cpu_s(p) for p in pids]
    return {"s": done_at - sent, "gateway_cpu_s": c1[0] - c0[0], "prosody_cpu_s": c1[1] - c0[1],
            "client_cpu_s": c1[2] - c0[2], "values": len(all_fields(payloads)),
            "messages": sum(1 for p in payloads if p.tag == f"{{{NS_SD}}}fields")}


def readout_phase(args, env, root: Path, client: IotClient) -> None:
    dev = [h.sim_device("meter", fields=[{"name": "power", "type": "double", "unit": "kW", "decimals": 2,
                                          "sim": SINE}])]
    history = {"keep": "400d", "sample": "every", "read_interval": "10s", "max_size": "4 GiB"}
    gw = gateway(env, root, "readout", dev, history, [client.jid])
    store = gw.state_dir / "history.db"
    gw.start()
    h.wait_for(lambda: store.exists() and series_id_or_none(store, "meter", "power"), 30, "the first commit")
    stop(gw)
    sid = series_id(store, "meter", "power")
    end = (int(time.time()) // 3600 - 1) * 3600 * 1000  # an hour's start, an hour or more ago
    days = 31
    t = time.monotonic()
    fill(store, [sid], end - days * DAY_MS, 1000, days * 86_400)
    print(f"# readout: {days * 86_400} samples of meter/power added in {time.monotonic() - t:.1f} s; "
          f"store {store.stat().st_size / 2**20:.0f} MiB", flush=True)
    gw.start()
    jid = env.dev("meter")
    seq = 7000
    for name, since, flags in (("day", end - DAY_MS, {"historical": "true"}),
                               ("month_hourly", end - days * DAY_MS, {"historicalHour": "true"})):
        runs = []
        for _ in range(args.readouts):
            seq += 1
            runs.append(timed_readout(client, env, jid, seq, since, end - 1, **flags))
        for k in ("values", "messages"):
            report(f"readout_{name}_{k}", runs[-1][k])
        for k in ("s", "gateway_cpu_s", "prosody_cpu_s", "client_cpu_s"):
            report(f"readout_{name}_{k}", median([r[k] for r in runs]))
    stop(gw)


def series_id_or_none(store: Path, device: str, field: str) -> int | None:
    try:
        return series_id(store, device, field)
    except (RuntimeError, sqlite3.Error):
        return None


# --------------------------------------------------------------------------------------
# start-up


def drop_cached(store: Path) -> None:
    """Drops the store's pages from the page cache: a start as after a reboot, for the
    store (the binary stays cached)."""
    for p in (store, Path(f"{store}-wal"), Path(f"{store}-shm")):
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def startup_phase(args, env, root: Path, client: IotClient) -> None:
    n_dev, n_fields = 100, 10
    devices = [h.sim_device(f"s{i:03d}", fields=[{"name": "f{n}", "type": "double", "decimals": 2, "count": n_fields,
                                                    "sim": SINE}]) for i in range(n_dev)]
    jids = [env.dev(f"s{i:03d}") for i in range(n_dev)]
    gw = h.Gateway(root / "startup", env.server)
    env.gateway = gw
    stores = {"empty": gw.dir / "empty.db", f"{args.big_store_mb}mb": gw.dir / "big.db"}

    def configure(store: Path) -> None:
        history = {"keep": "400d", "sample": "every", "read_interval": "100ms", "max_size": "16 GiB",
                   "file": str(store)}
        gw.write_raw_config(h.gateway_toml(env.server, gw.state_dir, devices,
                                           {"subscribe": [client.jid], "read": [client.jid]})
                            + extra_sections({"history": history}))

    # Each store made by the gateway (its series included); the client subscribes once.
    for i, store in enumerate(stores.values()):
        configure(store)
        gw.start()
        if i == 0:
            m = client.mark()
            for jid in jids:
                client.subscribe(jid)
            client.wait_all(jids, "available", m, timeout=60)
        h.wait_for(lambda: store.exists() and series_id_or_none(store, "s099", "f9"), 30, "the first commit")
        stop(gw)
    big = stores[f"{args.big_store_mb}mb"]
    with ro(big) as db:
        ids = [r[0] for r in db.execute("SELECT id FROM series")]
    per_series = int(args.big_store_mb * 2**20 / 25.3 / len(ids))
    t = time.monotonic()
    fill(big, ids, int(time.time() * 1000) - DAY_MS - per_series * 10_000, 10_000, per_series)
    with ro(big) as db:
        samples = db.execute(f"SELECT count(*) FROM {all_samples(db)}").fetchone()[0]
    report("startup_big_store_bytes", big.stat().st_size)
    report("startup_big_store_samples", samples)
    print(f"# startup: big store filled in {time.monotonic() - t:.0f} s", flush=True)

    probe = {name: series_id(s, "s000", "f0") for name, s in stores.items()}
    got: dict[str, dict[str, list[float]]] = {name: {"ready": [], "presence": [], "commit": [], "stop": []}
                                              for name in stores}
    for r in range(args.repeats):
        order = list(stores.items()) if r % 2 == 0 else list(reversed(stores.items()))
        for name, store in order:
            configure(store)
            drop_cached(store)
            m = client.mark()
            wall = time.time()
            gw.start(wait_ready=False)
            t0 = gw.started_at
            gw.wait_ready(60)
            got[name]["ready"].append(time.monotonic() - t0)
            client.wait_all(jids, "available", m, timeout=60)
            got[name]["presence"].append(time.monotonic() - t0)
            with ro(store) as db:
                def committed() -> bool:
                    return db.execute(f"SELECT 1 FROM {all_samples(db)} WHERE series = ? AND t >= ? LIMIT 1",
                                      (probe[name], int(wall * 1000))).fetchone() is not None
                h.wait_for(committed, 30, "a sample of this run in the store", interval=0.005)
            got[name]["commit"].append(time.monotonic() - t0)
            m = client.mark()
            got[name]["stop"].append(stop(gw))
            client.wait_all(jids, "unavailable", m, timeout=60)
    for name, figures in got.items():
        report(f"startup_{name}_ready_s", median(figures["ready"]))
        report(f"startup_{name}_presence_s", median(figures["presence"]))
        report(f"startup_{name}_first_commit_s", median(figures["commit"]))
        report(f"stop_{name}_s", median(figures["stop"]))
    print("# startup runs (s): " + "; ".join(
        f"{name} {k} " + " ".join(f"{x:.3f}" for x in v) for name, f in got.items() for k, v in f.items()), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phases", default="write,wide,capacity,readout,startup")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--fields", type=int, default=100)
    ap.add_argument("--capacity-devices", type=int, default=400)
    ap.add_argument("--wide-devices", type=int, default=1000)
    ap.add_argument("--commit", default="1s")
    ap.add_argument("--warmup", type=float, default=30.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--readouts", type=int, default=3)
    ap.add_argument("--big-store-mb", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    h_duration(args.commit)
    root = Path(tempfile.mkdtemp(prefix="fieldgate-bench-history-"))
    env = None
    try:
        env = h.make_env(root, users=("bench",), log_level="warn")
        client = IotClient(env.server, "bench")
        env.clients.append(client)
        client.connect()
        print(f"# gateway {h.gateway_bin()}", flush=True)
        if "write" in phases:
            write_phase(args, env, root, "write", args.devices, 0.1, args.warmup, args.duration)
        if "wide" in phases:
            write_phase(args, env, root, "wide", args.wide_devices, 1.0, 10.0, args.duration, prefill=200)
        if "capacity" in phases:
            write_phase(args, env, root, "capacity", args.capacity_devices, 0.1, min(args.warmup, 10.0),
                        min(args.duration, 10.0))
        if "readout" in phases:
            readout_phase(args, env, root, client)
        if "startup" in phases:
            startup_phase(args, env, root, client)
        return 0
    except BaseException:
        if env is not None and env.gateway is not None:
            print(env.gateway.log_tail(40), file=sys.stderr)
        raise
    finally:
        teardown(env, root, args.keep)


if __name__ == "__main__":
    sys.exit(main())
