"""Work bounded per user (bare JID): a user's resources share one budget of readouts
(running or queued with `when`), writes and subscriptions, and what a vanished session
held ends when its liveness ping bounces, so ten rounds of connect, queue, vanish leave
the gateway's memory where it was.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from harness import gateway_toml, make_env, proc_status, sim_device, wait_for
from iot import NS_SD, IotClient, expect_error, extra_sections, iso, q, req_iq

USERS = tuple(f"u{i}" for i in range(5))
DEV = "pump@gw.example.test"
LIMIT = 16  # [readout] max_per_requester
_seq = itertools.count(1)


@pytest.fixture(scope="module")
def env():
    root = Path(tempfile.mkdtemp(prefix="fg-limits-"))
    e = make_env(root, users=USERS + ("shared", "other"))
    try:
        gw = e.new_gateway()
        jids = [f"{u}@example.test" for u in USERS + ("shared", "other")]
        devices = [sim_device("pump", fields=[
            {"name": "level", "type": "double", "writable": True, "min": 0.0, "max": 100.0},
        ])]
        text = gateway_toml(e.prosody, gw.state_dir, devices,
                            {"subscribe": jids, "read": jids, "control": jids}) + extra_sections(
            {"readout": {"max_per_requester": LIMIT},
             "events": {"liveness_interval": "1s"}})
        gw.write_raw_config(text)
        gw.start()
        yield e
    finally:
        e.close()
        shutil.rmtree(root, ignore_errors=True)


def client(e, user, resource):
    c = IotClient(e.prosody, user, resource=resource)
    e.clients.append(c)
    return c.connect()


def queue(c, n) -> None:
    """`n` readouts queued a day ahead; each accepted with queued='true'."""
    later = iso(time.time() + 86_400)
    for _ in range(n):
        r = c.iq(req_iq(DEV, next(_seq), momentary="true", when=later))
        assert r.ok, f"readout refused: {r.condition} {r.text}"
        acc = r.payload()
        assert acc.tag == q(NS_SD, "accepted") and acc.get("queued") == "true"


def test_a_users_resources_share_one_budget(env):
    a = client(env, "shared", "a")
    b = client(env, "shared", "b")
    other = client(env, "other", "x")
    try:
        queue(a, LIMIT // 2)
        queue(b, LIMIT // 2)
        r = b.iq(req_iq(DEV, next(_seq), momentary="true", when=iso(time.time() + 86_400)))
        expect_error(r, "resource-constraint", "wait", text_contains=[f"at most {LIMIT} per user"])
        queue(other, 1)  # another user has a budget of its own
    finally:
        for c in (a, b, other):
            c.disconnect()


def test_queued_readouts_of_vanished_sessions_end_and_memory_returns(env):
    gw = env.gateway

    def ended_readouts(since: int, round_: int) -> int:
        """Queued readouts ended for the sessions of round `round_` (resources r<round>*)."""
        n = 0
        for line in gw.log_since(since).splitlines():
            if "requester gone" in line and f"/r{round_}_" in line and " readouts=" in line:
                n += int(line.split(" readouts=")[1].split()[0])
        return n

    def rss_kb() -> int:
        return proc_status(gw.pid)["VmRSS"]

    per_round = len(USERS) * 2 * (LIMIT // 2)
    baseline = None
    for round_ in range(10):
        before = gw.log_size()
        clients = [client(env, u, f"r{round_}_{k}") for u in USERS for k in range(2)]
        for c in clients:
            queue(c, LIMIT // 2)
        for c in clients:
            c.disconnect()
        # The next liveness ping to each vanished session bounces, or (a session the
        # server was still closing) goes unanswered for a liveness interval: its readouts end.
        wait_for(lambda: ended_readouts(before, round_) >= per_round, 20,
                 f"{per_round} queued readouts of round {round_} ended")
        assert ended_readouts(before, round_) == per_round
        if round_ == 0:
            baseline = rss_kb()  # after a first round: buffers and tables at their size
    grown = rss_kb() - baseline
    print(f"RSS after round 1: {baseline} kB; after round 10: {baseline + grown} kB")
    assert grown < 1024, f"RSS grew by {grown} kB over nine rounds of {per_round} queued readouts"
