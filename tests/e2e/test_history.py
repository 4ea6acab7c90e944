"""History (issue 14): values kept in the gateway's store and read back with XEP-0323
historical readouts, through a real Prosody with raw stanzas (slixmpp's xep_0323 plugin
has no historical types).

The sim device's values are functions of wall-clock time (iot.sine_at, counter_at), so
every stored sample can be checked against the value the device had at its stamp.
"""

from __future__ import annotations

import itertools
import statistics
import time
import xml.etree.ElementTree as ET

import pytest

from harness import sim_device
from iot import (NS_SD, ModuleEnv, all_fields, counter_at, expect_error, failure_texts, iso, parse_iso, q, req_iq,
                 sine_at)

ALICE, BOB = "alice@example.test", "bob@example.test"
ACCESS = {"subscribe": [ALICE, BOB], "read": [ALICE], "control": [ALICE]}  # bob sees it, may not read
SINE = {"kind": "sine", "period": "20s", "amplitude": 1.5, "offset": 4.0}
COUNT = {"kind": "counter", "start": 0, "step": 1, "every": "1s"}
LIMIT = 4096  # [xmpp] max_outbound_stanza_size: long answers take several messages

DEVICES = [
    sim_device("pump", name="Pump", fields=[
        {"name": "p", "type": "double", "unit": "bar", "decimals": 3, "sim": SINE},
        {"name": "n", "type": "long", "sim": COUNT, "history": {"keep": "1d", "sample": "every"}},
        {"name": "label", "type": "string", "sim": {"kind": "constant", "value": "north"}, "history": False},
    ]),
]
SECTIONS = {"history": {"keep": "1d", "read_interval": "200ms", "commit_interval": "100ms"}}

_seq = itertools.count(500)


@pytest.fixture(scope="module")
def m():
    env = ModuleEnv(DEVICES, ACCESS, users=("alice", "bob"), sections=SECTIONS,
                    xmpp={"max_outbound_stanza_size": LIMIT})
    env.started = time.time()
    yield env
    env.close()


def historical(m, c, since: float, until: float | None = None, fields=(), timeout=15.0, **flags):
    """Runs a historical readout; (fields received, failure texts, messages)."""
    seqnr = next(_seq)
    mk = c.mark_stanzas()
    iq = req_iq(m.dev("pump"), seqnr, fields=fields, **flags)
    # `from` and `to` of the request (not of the iq): added by hand, `to` is req_iq's own
    bounds = f" from='{iso(since)}'" + (f" to='{iso(until)}'" if until is not None else "")
    iq = iq.replace(f"<req xmlns='{NS_SD}'", f"<req xmlns='{NS_SD}'{bounds}", 1)
    r = c.iq(iq)
    assert r.ok, f"refused: {r.condition} {r.text}"
    payloads = c.wait_readout_end(seqnr, mk, timeout)
    msgs = [s for s in c.stanzas_since(mk) if s.tag.endswith("}message")
            and any(p.get("seqnr") == str(seqnr) for p in s)]
    return all_fields(payloads), failure_texts(payloads), msgs, payloads


def wait_stored(seconds: float) -> None:
    # the first read is after read_interval; commits every 100 ms
    time.sleep(seconds)


def test_samples_come_back_with_their_own_stamps_and_the_device_values(m):
    c = m.client("alice")
    wait_stored(2.5)
    t0 = m.started - 1
    got, failures, msgs, payloads = historical(m, c, t0, time.time(), historical="true")
    assert failures == []
    p = [f for f in got if f.name == "p"]
    n = [f for f in got if f.name == "n"]
    assert len(p) >= 6 and len(n) >= 6, (len(p), len(n))
    assert all(f.flag("historicalOther") for f in got), got[:3]
    assert not any(f.name == "label" for f in got), "not kept"
    for f in p:
        t = parse_iso(f.timestamp)
        assert t0 <= t <= time.time()
        # rounding to 3 decimals, plus the sine's slope (0.47/s) over the stamp's ms
        assert abs(float(f.value) - sine_at(t, 20, 1.5, 4.0)) <= 0.0011, (f.timestamp, f.value)
        assert f.attrs.get("unit") == "bar"
    for f in n:
        assert int(f.value) == counter_at(parse_iso(f.timestamp), 0, 1, 1.0), (f.timestamp, f.value)
    # in time order across every message, `done` on the last only
    stamps = [parse_iso(f.timestamp) for f in got]
    assert stamps == sorted(stamps)
    dones = [p.get("done") for p in payloads]
    assert dones[-1] == "true" and "true" not in dones[:-1], dones


def test_a_range_is_a_range_and_an_empty_one_is_done_without_fields(m):
    c = m.client("alice")
    wait_stored(1.0)
    mid = m.started + 1.0
    got, failures, _, _ = historical(m, c, m.started - 1, mid, fields=["p"], historical="true")
    assert got and all(parse_iso(f.timestamp) <= mid + 0.001 and f.name == "p" for f in got)
    got, failures, msgs, payloads = historical(m, c, 978307200, 978310800, historical="true")  # 2001
    assert got == [] and failures == [], (got, failures)
    assert [p.tag for p in payloads] == [q(NS_SD, "fields")] and payloads[-1].get("done") == "true"


def test_a_long_answer_is_split_under_the_size_bound(m):
    c = m.client("alice")
    wait_stored(3.0)
    got, failures, msgs, payloads = historical(m, c, m.started - 1, time.time(), historical="true")
    assert len(msgs) >= 2, f"{len(got)} fields in {len(msgs)} message(s)"
    for s in msgs:
        # the gateway's own serialisation is bounded by LIMIT; the client's re-serialisation
        # of what it received is close to it
        assert len(ET.tostring(s)) <= LIMIT + 512, len(ET.tostring(s))


def test_period_types_give_the_mean_min_and_max_of_each_period(m):
    c = m.client("alice")
    wait_stored(1.0)
    t0, t1 = m.started - 1, time.time()
    raw, _, _, _ = historical(m, c, t0, t1, fields=["p"], historical="true")
    agg, failures, _, _ = historical(m, c, t0, t1, fields=["p"], historicalMinute="true")
    assert failures == []
    by_minute: dict[float, list[float]] = {}
    for f in raw:
        t = parse_iso(f.timestamp)
        by_minute.setdefault(t - t % 60, []).append(float(f.value))
    means = {parse_iso(f.timestamp): f for f in agg if f.name == "p"}
    mins = {parse_iso(f.timestamp): float(f.value) for f in agg if f.name == "p.min"}
    maxs = {parse_iso(f.timestamp): float(f.value) for f in agg if f.name == "p.max"}
    assert set(means) == set(by_minute), (sorted(means), sorted(by_minute))
    for start, values in by_minute.items():
        f = means[start]
        assert f.flag("historicalMinute") and f.flag("computed"), f.attrs
        # the samples read back are rounded to 3 decimals; the mean is written with 4
        assert abs(float(f.value) - statistics.mean(values)) <= 0.001, (start, f.value, statistics.mean(values))
        assert abs(mins[start] - min(values)) <= 0.001 and abs(maxs[start] - max(values)) <= 0.001


def test_history_needs_the_read_right(m):
    bob = m.client("bob")
    r = bob.iq(req_iq(m.dev("pump"), next(_seq), historical="true"))
    expect_error(r, "forbidden")


def test_a_range_spanning_a_restart(m):
    c = m.client("alice")
    wait_stored(1.0)
    before = time.time()
    m.gw.stop()
    gap_from = time.time()
    m.gw.start()
    gap_to = time.time()
    wait_stored(1.5)
    got, failures, _, _ = historical(m, c, m.started - 1, time.time(), fields=["n"], historical="true")
    assert failures == []
    stamps = [parse_iso(f.timestamp) for f in got]
    assert any(t < before for t in stamps) and any(t > gap_to for t in stamps), (before, gap_to, stamps[-5:])
    # nothing from the time the gateway was down
    assert not any(gap_from + 0.05 < t < gap_to - 0.5 for t in stamps)
    m.assert_alive()


def test_export_from_a_running_gateway_and_check(m):
    wait_stored(1.0)
    gw = m.gw
    r = gw.run_cli("history", "--config", str(gw.config_path), "--device", "pump", "--field", "n",
                   "--from", iso(m.started - 1))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "timestamp,device,field,value"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) >= 5
    for stamp, dev, field, value in rows:
        assert (dev, field) == ("pump", "n")
        assert int(value) == counter_at(parse_iso(stamp), 0, 1, 1.0), (stamp, value)
    r = gw.run_cli("history", "--config", str(gw.config_path), "--device", "pump", "--format", "json",
                   "--from", "not a time")
    assert r.returncode == 1 and "RFC 3339" in r.stderr, r.stderr
    r = gw.run_cli("check", "--config", str(gw.config_path))
    assert r.returncode == 0, r.stderr
    assert "history: 2 fields kept in" in r.stdout and "history n: kept 1day, every value" in r.stdout, r.stdout
    m.assert_alive()


def test_a_corrupt_store_is_moved_aside_and_a_fresh_one_started(tmp_path):
    from harness import make_env
    env = make_env(tmp_path, users=("alice",))
    try:
        gw = env.new_gateway()
        gw.write_config(DEVICES, ACCESS)
        gw.write_raw_config(gw.config_path.read_text() + "\n[history]\nkeep = \"1d\"\nread_interval = \"200ms\"\n"
                            "commit_interval = \"100ms\"\n")
        gw.state_dir.mkdir(parents=True, exist_ok=True)
        store = gw.state_dir / "history.db"
        store.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)  # a header, then garbage
        started = time.time()
        gw.start()
        wait_stored(1.5)
        assert "history store unusable: moved aside" in gw.log_text(), gw.log_tail()
        aside = list(gw.state_dir.glob("history.db.unusable-*"))
        assert len(aside) == 1 and aside[0].read_bytes().endswith(b"\xff" * 100)
        r = gw.run_cli("history", "--config", str(gw.config_path), "--device", "pump", "--field", "n",
                       "--from", iso(started - 1))
        assert r.returncode == 0 and len(r.stdout.strip().splitlines()) >= 3, (r.stdout, r.stderr)
        assert gw.running
    finally:
        env.close()
