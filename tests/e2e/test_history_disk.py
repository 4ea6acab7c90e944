"""History (issue 14) on a full disk: the store on a small tmpfs of its own, filled up.
Writing pauses with a log line, live readouts (XEP-0323, through Prosody) go on, a
restart on the full disk keeps the store, and once space is freed history resumes with
the samples held in memory meanwhile.

On a full disk SQLite answers SQLITE_FULL (ENOSPC while appending to the WAL); the writer
counts that as transient: it pauses and retries every 5 s.

The tmpfs is mounted by the test when it may (as root); otherwise in a user and mount
namespace of its own, held by a `sleep`, which the gateway joins through nsenter; without
either the test is skipped, saying why.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness import HarnessError, gateway_bin, gateway_toml, make_env, sim_device, wait_for
from iot import NS_SD, IotClient, all_fields, by_name, extra_sections, failure_texts, iso, parse_iso, req_iq, sine_at

ALICE = "alice@example.test"
SINE = {"kind": "sine", "period": "20s", "amplitude": 1.5, "offset": 4.0}
COUNT = {"kind": "counter", "start": 0, "step": 1, "every": "100ms"}
TICK_MS = 100  # the counter's value at t ms is t // TICK_MS (integers: no float rounding at a tick)
# Holes in the stamps of a field read every 100 ms beyond this are lost samples (a loaded
# machine delays a read now and then; a lost pause would be seconds).
MAX_HOLE_S = 0.6
DEVICES = [sim_device("pump", fields=[
    {"name": "n", "type": "long", "sim": COUNT},
    {"name": "p", "type": "double", "unit": "bar", "decimals": 3, "sim": SINE},
    {"name": "x{n}", "type": "long", "count": 18, "sim": COUNT},
])]
PAUSED = "history writing paused"
RESUMED = "history writing resumed"

_seq = itertools.count(900)


class SmallDisk:
    """A tmpfs of `size` for the store. `path`: the directory as the gateway sees it;
    `here`: the same directory as this process reaches it; `binary`: the gateway to run
    (a wrapper entering the namespace, when the tmpfs lives in one)."""

    def __init__(self, path: Path, size: str):
        path.mkdir()
        self.path = self.here = path
        self.binary = gateway_bin()
        self.mounted = False
        self.holder: subprocess.Popen | None = None
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "fg-history", str(path)],
                           capture_output=True, text=True)
        if r.returncode == 0:
            self.mounted = True
            return
        why = f"mount: {r.stderr.strip() or r.returncode}"
        if not (shutil.which("unshare") and shutil.which("nsenter")):
            pytest.skip(f"cannot mount a tmpfs ({why}), and unshare/nsenter are not installed")
        self.holder = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
             f'mount -t tmpfs -o size={size} fg-history "$0" && echo mounted && exec sleep 600', str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if (self.holder.stdout.readline().strip() != "mounted"):
            err = self.holder.stderr.read().strip() if self.holder.wait(5) is not None else ""
            self.holder = None
            pytest.skip(f"cannot mount a tmpfs ({why}), nor in a user namespace ({err})")
        self.here = Path(f"/proc/{self.holder.pid}/root") / path.relative_to("/")
        wrapper = path.parent / "fieldgate-in-namespace"
        wrapper.write_text("#!/bin/sh\n"
                           f"exec nsenter --target {self.holder.pid} --user --mount --preserve-credentials "
                           f"-- '{gateway_bin()}' \"$@\"\n")
        wrapper.chmod(0o755)
        self.binary = wrapper

    def fill(self) -> None:
        """Takes every free block."""
        fd = os.open(self.here / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for chunk in (1 << 20, 4096, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError:
                    pass  # ENOSPC: on with smaller writes, for the last bytes
        finally:
            os.close(fd)
        st = os.statvfs(self.here)
        assert st.f_bavail == 0, f"{st.f_bavail} blocks still free"

    def free(self) -> None:
        (self.here / "filler").unlink()

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait(5)


@pytest.fixture
def disk(workdir):
    d = SmallDisk(workdir / "disk", "4m")
    yield d
    d.close()


def readout(c: IotClient, jid: str, fields=(), since: float | None = None, until: float | None = None, **flags):
    """A readout through the server: (fields, failure texts)."""
    seqnr = next(_seq)
    mk = c.mark_stanzas()
    iq = req_iq(jid, seqnr, fields=fields, **flags)
    if since is not None:
        bounds = f" from='{iso(since)}' to='{iso(until)}'"
        iq = iq.replace(f"<req xmlns='{NS_SD}'", f"<req xmlns='{NS_SD}'{bounds}", 1)
    r = c.iq(iq)
    assert r.ok, f"refused: {r.condition} {r.text}"
    payloads = c.wait_readout_end(seqnr, mk, 15)
    return all_fields(payloads), failure_texts(payloads)


def wait_log(gw, since: int, text: str, timeout: float) -> str:
    """The first log line after offset `since` that contains `text`."""
    def line():
        return next((x for x in gw.log_since(since).splitlines() if text in x), None)
    try:
        return wait_for(line, timeout, f"the gateway to log {text!r}")
    except HarnessError as e:
        raise AssertionError(f"{e}\n{gw.log_tail()}") from None


def counter_stamps(fields) -> list[float]:
    """The stamps of the `n` samples of a historical answer, each checked against the
    device's value at that instant."""
    out = []
    for f in fields:
        if f.name == "n":
            t = parse_iso(f.timestamp)
            assert int(f.value) == round(t * 1000) // TICK_MS, (f.timestamp, f.value)
            out.append(t)
    return out


def test_a_full_disk_pauses_history_live_readouts_go_on_and_history_resumes(workdir, disk):
    env = make_env(workdir, users=("alice",))
    try:
        gw = env.new_gateway()
        gw.binary = disk.binary
        history = {"keep": "1d", "sample": "every", "read_interval": "100ms", "commit_interval": "100ms",
                   "file": str(disk.path / "history.db")}
        gw.write_raw_config(gateway_toml(env.server, gw.state_dir, DEVICES, {"read": [ALICE]})
                            + extra_sections({"history": history}))
        gw.start()
        started = time.time()
        c = IotClient(env.server, "alice")
        env.clients.append(c)
        c.connect()
        pump = env.dev("pump")
        time.sleep(1.0)

        log_from = gw.log_size()
        disk.fill()
        full_at = time.time()
        line = wait_log(gw, log_from, PAUSED, 5)
        assert "the disk is full" in line, line

        # Live values go on: a momentary readout through Prosody, read after the disk filled.
        time.sleep(0.5)
        got, failures = readout(c, pump, fields=["p", "n"], momentary="true")
        assert failures == []
        f = by_name(got)
        t = parse_iso(f["p"].timestamp)
        assert t > full_at, (f["p"].timestamp, iso(full_at))
        assert abs(float(f["p"].value) - sine_at(t, 20, 1.5, 4.0)) <= 0.0011, (f["p"].timestamp, f["p"].value)
        assert int(f["n"].value) == round(parse_iso(f["n"].timestamp) * 1000) // TICK_MS
        # And what was stored before is read back (nothing after: the disk refuses it).
        got, failures = readout(c, pump, fields=["n"], since=started - 1, until=time.time(), historical="true")
        assert failures == []
        before = counter_stamps(got)
        assert len(before) >= 5 and max(before) < full_at + 0.5, (len(before), before[-3:], iso(full_at))

        # A restart on the full disk opens the same store (it is not judged unusable).
        code, _ = gw.stop()
        assert code == 0, gw.log_tail()
        log_from = gw.log_size()
        gw.start()
        restarted = time.time()
        wait_log(gw, log_from, PAUSED, 5)
        assert "unusable" not in gw.log_since(log_from), gw.log_tail()
        assert sorted(p.name for p in disk.here.iterdir()) == ["filler", "history.db", "history.db-shm",
                                                               "history.db-wal"]
        time.sleep(1.0)

        disk.free()
        freed_at = time.time()
        wait_log(gw, log_from, RESUMED, 10)  # the next retry (every 5 s)
        time.sleep(0.5)

        got, failures = readout(c, pump, fields=["n"], since=started - 1, until=time.time(), historical="true")
        assert failures == []
        stamps = counter_stamps(got)
        assert [t for t in stamps if t < full_at - 1] == [t for t in before if t < full_at - 1], "lost old samples"
        # The second run: read while the disk was full, held in memory, written on resume;
        # then stored as they come.
        run2 = [t for t in stamps if t >= restarted]
        assert run2 and run2[0] < restarted + 0.5 and run2[-1] > freed_at + 0.2, \
            (iso(restarted), iso(freed_at), [iso(x) for x in run2[:1] + run2[-1:]])
        holes = [(iso(a), iso(b)) for a, b in zip(run2, run2[1:]) if b - a > MAX_HOLE_S]
        assert not holes, holes
        assert gw.running and "panicked" not in gw.log_text(), gw.log_tail()
    finally:
        env.close()
