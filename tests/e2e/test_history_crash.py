"""History (issue 14) under a crash: `kill -9` of a gateway storing 100,000 samples/s
loses at most what was not yet committed, and the gateway starts again on the same store
without repair and keeps storing.

What it proves, and what it does not: a killed process loses its memory, not what it
handed to the kernel, so this checks that the writer commits promptly and completely
(once per `commit_interval`, each commit whole) and that the store opens again as it was
left (the WAL recovered, nothing moved aside). A power cut, which loses the page cache,
is out of its reach.

The store is read here with Python's sqlite3, read-only, in the schema of
src/history/store.rs; one series is also exported with `fieldgate history`. The sim
devices' counters tick every 100 ms of wall-clock time, so each stored value is checked
against the device's value at its stamp, and the reads of each series (every 100 ms)
must follow each other without a hole the size of a commit.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections import defaultdict
from contextlib import closing
from pathlib import Path

from harness import gateway_toml, make_env, sim_device
from iot import extra_sections, iso, parse_iso

DEVICES, FIELDS = 100, 100
READ_S = 0.1  # read_interval: 100 devices x 100 fields x 10 reads/s = 100,000 samples/s offered
OFFERED = DEVICES * FIELDS / READ_S
COMMIT_S = 1.0  # commit_interval (the default): what a crash may lose
# Between a read and the end of the commit holding it, beyond the commit interval: the
# read's way to the writer and the commit's own duration (~0.1 s for 100,000 samples in a
# debug build), with room for a loaded CI machine.
SLACK_S = 1.0
# Consecutive reads of a device are READ_S apart; a loaded machine delays some (a read
# still out when the next is due is skipped). A lost commit would be a hole of COMMIT_S.
MAX_HOLE_S = 0.5
COUNTER = {"kind": "counter", "start": 0, "step": 1, "every": "100ms"}
TICK_MS = 100  # the counter's value at t ms is t // TICK_MS (integers: no float rounding at a tick)
ALICE = "alice@example.test"
# Every sample of the store: those folded into `samples` and those committed since, in
# `recent` (src/history/store.rs).
ALL_SAMPLES = "(SELECT series, t, v FROM samples UNION ALL SELECT series, t, v FROM recent)"


def config(gw, server) -> str:
    devices = [sim_device(f"d{i}", fields=[{"name": "c{n}", "type": "long", "count": FIELDS, "sim": COUNTER}])
               for i in range(DEVICES)]
    history = {"keep": "1d", "sample": "every", "read_interval": "100ms", "commit_interval": "1s",
               "max_size": "1 GiB"}
    return gateway_toml(server, gw.state_dir, devices, {"read": [ALICE]}) + extra_sections({"history": history})


def read_only(store: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10))


def committed(store: Path) -> dict[int, tuple[int, int]]:
    """Per series: (samples, newest stamp) as another process sees them: committed."""
    with read_only(store) as db:
        rows = db.execute(f"SELECT series, count(*), max(t) FROM {ALL_SAMPLES} GROUP BY series")
        return {s: (n, hi) for s, n, hi in rows}


def test_kill_9_at_100k_samples_per_second_loses_at_most_the_last_commit(workdir):
    env = make_env(workdir, users=("alice",))
    try:
        gw = env.new_gateway()
        gw.write_raw_config(config(gw, env.server))
        store = gw.state_dir / "history.db"
        gw.start()
        started = time.time()
        time.sleep(4.0)
        seen = committed(store)
        killed_at = time.time()
        os.kill(gw.pid, signal.SIGKILL)
        gw.proc.wait(10)
        assert seen, "nothing committed in 4 s"

        # The same store, as the killed gateway left it (its WAL and all).
        log_from = gw.log_size()
        gw.start()
        restarted = time.time()
        time.sleep(2.0)
        log = gw.log_since(log_from)
        for bad in ("unusable", "moved aside", "damaged", "writing paused", "samples dropped", "panicked"):
            assert bad not in log, f"{bad!r} after the restart\n{gw.log_tail()}"
        assert not list(store.parent.glob("history.db.unusable-*"))

        with read_only(store) as db:
            names = {s: (d, f) for s, d, f in db.execute("SELECT id, device, field FROM series")}
            rows = db.execute(f"SELECT series, t, v FROM {ALL_SAMPLES} ORDER BY series, t").fetchall()
        assert len(names) == DEVICES * FIELDS, len(names)
        by_series: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for s, t, v in rows:
            by_series[s].append((t, v))

        horizon = killed_at - COMMIT_S - SLACK_S
        last_before: list[float] = []
        reads: dict[tuple[str, int], int] = defaultdict(int)  # (device, stamp) -> samples
        for s, samples in by_series.items():
            # Everything another process saw committed before the kill is still there.
            n, hi = seen.get(s, (0, 0))
            assert sum(1 for t, _ in samples if t <= hi) == n, (names[s], n, hi)
            before = [(t, v) for t, v in samples if t < killed_at * 1000]
            after = [t for t, _ in samples if t > restarted * 1000]
            assert after, f"{names[s]}: nothing stored since the restart"
            # Each value is the device's at its stamp, and the reads follow each other up
            # to the kill: no hole the size of a commit.
            for t, v in before:
                assert v == t // TICK_MS, (names[s], t, v)
            for (t0, v0), (t1, v1) in zip(before, before[1:]):
                assert t1 - t0 <= MAX_HOLE_S * 1000, \
                    f"{names[s]}: values {v0} -> {v1} ({iso(t0 / 1000)} -> {iso(t1 / 1000)})"
            last_before.append(before[-1][0] / 1000)
            device = names[s][0]
            for t, _ in before:
                reads[(device, t)] += 1
        # Up to one commit interval (and the slack) before the kill, every series is there.
        late = [t for t in last_before if t < horizon]
        assert not late, f"{len(late)} series end before {iso(horizon)} (killed {iso(killed_at)}): {iso(min(late))}"
        # A read's samples are committed together or not at all.
        partial = {k: n for k, n in reads.items() if n != FIELDS}
        assert not partial, list(partial.items())[:5]

        # The rate the gateway was storing at, from the stored stamps (the first read is
        # one period after the start).
        t0, t1 = started + 0.5, horizon
        stored = sum(1 for s in by_series.values() for t, _ in s if t0 * 1000 <= t <= t1 * 1000)
        rate = stored / (t1 - t0)
        assert rate >= 0.85 * OFFERED, f"{rate:.0f} samples/s stored, {OFFERED:.0f} offered"

        # The export reads the same store: one series across the kill and the restart.
        series = next(s for s, name in names.items() if name == ("d42", "c7"))
        expected = by_series[series]
        r = gw.run_cli("history", "--config", str(gw.config_path), "--device", "d42", "--field", "c7",
                       "--from", iso(started - 1), "--to", iso((expected[-1][0] + 0.5) / 1000))
        assert r.returncode == 0, r.stderr
        exported = [line.split(",") for line in r.stdout.strip().splitlines()[1:]]
        assert [(round(parse_iso(ts) * 1000), int(v)) for ts, _, _, v in exported] == expected

        code, _ = gw.stop()
        assert code == 0, gw.log_tail()
        with read_only(store) as db:
            assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)
    finally:
        env.close()
