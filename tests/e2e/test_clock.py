"""The wall clock steps back an hour under a running gateway (NTP on a box without a
real-time clock): readouts still return fresh values, events still flow with fresh
values, and writes still apply. The gateway runs under libfaketime with only the wall
clock faked (FAKETIME_DONT_FAKE_MONOTONIC=1), its offset read from a file at every call,
so the test moves it mid-run. Ages, timeouts and the order of reads and writes must run
on the monotonic clock; the stamps in the payloads follow the (faked) wall clock.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from harness import NS_CLIENT, gateway_toml, make_env, sim_device, wait_for
from iot import (NS_SD, IotClient, by_name, extra_sections, fields_of, parse_iso, q, req_iq, set_iq,
                 subscribe_iq, unsubscribe_iq)

LIBS = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
pytestmark = pytest.mark.skipif(not LIBS, reason="libfaketime is not installed (tests/run.sh installs it)")

ALICE = "alice@example.test"
DEV = "pump@gw.example.test"
HOUR = 3600.0


@pytest.fixture
def stepped():
    root = Path(tempfile.mkdtemp(prefix="fg-clock-"))
    env = make_env(root, users=("alice",))
    offset = root / "faketime.rc"
    offset.write_text("+0\n")
    saved = {k: os.environ.get(k) for k in ("LD_PRELOAD", "FAKETIME_TIMESTAMP_FILE", "FAKETIME_NO_CACHE",
                                           "FAKETIME_DONT_FAKE_MONOTONIC")}
    try:
        gw = env.new_gateway()
        devices = [sim_device("pump", fields=[
            {"name": "count", "type": "long", "sim": {"kind": "counter", "start": 0, "step": 1, "every": "1s"}},
            {"name": "setpoint", "type": "double", "decimals": 1, "writable": True, "min": 0.0, "max": 100.0},
        ], max_age="1s")]
        access = {"subscribe": [ALICE], "read": [ALICE], "control": [ALICE]}
        text = gateway_toml(env.prosody, gw.state_dir, devices, access) + extra_sections(
            {"events": {"sample_interval": "200ms"}})
        gw.write_raw_config(text)
        os.environ.update({"LD_PRELOAD": LIBS[0], "FAKETIME_TIMESTAMP_FILE": str(offset),
                           "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
        try:
            gw.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        yield env, offset
    finally:
        env.close()
        shutil.rmtree(root, ignore_errors=True)


_seq = iter(range(1, 10_000))


def readout(c) -> dict:
    """One readout of every field: {name: Fld}."""
    s = next(_seq)
    mk = c.mark_stanzas()
    r = c.iq(req_iq(DEV, s, momentary="true"))
    assert r.ok, f"readout refused: {r.condition} {r.text}"
    got = c.wait_readout_end(s, mk)
    return by_name(f for p in got if p.tag == q(NS_SD, "fields") for f in fields_of(p))


def events_since(c, mk, seqnr) -> list[dict]:
    out = []
    for s in c.stanzas_since(mk):
        if s.tag != q(NS_CLIENT, "message"):
            continue
        for p in s:
            if p.tag == q(NS_SD, "fields") and p.get("seqnr") == str(seqnr):
                out.append(by_name(fields_of(p)))
    return out


def test_a_wall_clock_stepped_back_an_hour(stepped):
    env, offset = stepped
    c = IotClient(env.prosody, "alice")
    env.clients.append(c)
    c.connect()
    r = c.iq(set_iq(DEV, [("double", "setpoint", "3")]))
    assert r.ok, f"set before the step: {r.condition} {r.text}"
    before = readout(c)
    t_before = parse_iso(before["count"].timestamp)
    assert before["setpoint"].value == "3.0"

    offset.write_text("-1h\n")  # the wall clock steps back an hour
    time.sleep(1.5)  # past max_age (1s)

    # Readouts: read again (not the cached value stamped "in the future"), stamped by the
    # stepped clock, and again a second later.
    after = readout(c)
    t_after = parse_iso(after["count"].timestamp)
    assert t_after < t_before - HOUR + 60, \
        f"readout served the value cached before the step ({after['count'].timestamp})"
    time.sleep(1.5)
    later = readout(c)
    assert parse_iso(later["count"].timestamp) >= t_after + 1.0, "the cache froze after the step"
    assert later["setpoint"].value == "3.0"

    # Events: a subscription started after the step sees fresh values of both fields,
    # including the one written before the step (its reads are stamped "before" the
    # write by the stepped clock, and must not be dropped for it).
    s = next(_seq)
    mk = c.mark_stanzas()
    r = c.iq(subscribe_iq(DEV, s, momentary="true", maxInterval="PT1S"))
    assert r.ok, f"subscribe: {r.condition} {r.text}"
    try:
        wait_for(lambda: len(events_since(c, mk, s)) >= 3, 10, "three events after the step")
        evs = events_since(c, mk, s)
        stamps = [parse_iso(e["count"].timestamp) for e in evs if "count" in e]
        assert len(stamps) >= 3 and stamps[-1] >= stamps[0] + 1.0, f"event values do not advance: {stamps}"
        assert all("setpoint" in e for e in evs[1:]), "the written field vanished from the events"

        # Writes still apply after the step: the new value is read back and reported.
        r = c.iq(set_iq(DEV, [("double", "setpoint", "7")]))
        assert r.ok, f"set after the step: {r.condition} {r.text}"
        assert readout(c)["setpoint"].value == "7.0"
        mk2 = c.mark_stanzas()
        wait_for(lambda: any(e.get("setpoint") and e["setpoint"].value == "7.0"
                             for e in events_since(c, mk2, s)), 10, "an event with the new setpoint")
    finally:
        c.iq(unsubscribe_iq(DEV, s))
