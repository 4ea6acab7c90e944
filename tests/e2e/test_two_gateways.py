"""Several gateways, one XMPP service (issue 13 item 4): two gateways with two component
domains on one ejabberd, one `ejabberd_service` listener each (the layout the README
recommends), each with its own devices; a user reads from both, and restarting one
leaves the other's devices untouched (no presence change, still readable)."""

from __future__ import annotations

import itertools
import tempfile
import shutil
import os
from pathlib import Path

import pytest

from ejabberd import Service
from harness import Gateway, make_env, sim_device
from iot import IotClient, all_fields, req_iq

ALICE = "alice@example.test"
ACCESS = {"subscribe": [ALICE], "read": [ALICE]}
GW2 = "gw2.example.test"
_seq = itertools.count(900)


@pytest.fixture
def two():
    root = Path(tempfile.mkdtemp(prefix="fg-two-"))
    env = make_env(root, users=("alice",), server="ejabberd", services={"gw2": Service(domain=GW2)})
    try:
        gw1 = env.new_gateway()
        gw1.write_config([sim_device("pump", fields=[{"name": "p", "type": "long",
                                                        "sim": {"kind": "constant", "value": 1}}])], ACCESS)
        gw2 = Gateway(root / "gw2", env.server)
        env.extras.append(gw2)
        svc = env.server.services["gw2"]
        gw2.write_config([sim_device("meter", fields=[{"name": "e", "type": "long",
                                                         "sim": {"kind": "constant", "value": 2}}])], ACCESS,
                         xmpp={"server": f"127.0.0.1:{svc.port}", "domain": GW2, "secret": svc.secret})
        gw1.start()
        gw2.start()
        alice = IotClient(env.server, "alice")
        env.clients.append(alice)
        alice.connect()
        yield env, gw1, gw2, alice
    finally:
        env.close()
        if os.environ.get("FIELDGATE_E2E_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)


def read(alice, jid: str) -> dict[str, str]:
    seqnr = next(_seq)
    mk = alice.mark_stanzas()
    r = alice.iq(req_iq(jid, seqnr, momentary="true"))
    assert r.ok, f"{jid}: {r.condition} {r.text}"
    return {f.name: f.value for f in all_fields(alice.wait_readout_end(seqnr, mk))}


def test_two_gateways_on_one_ejabberd_are_independent(two):
    env, gw1, gw2, alice = two
    pump, meter = env.dev("pump"), f"meter@{GW2}"
    for jid in (pump, meter):
        m = alice.mark()
        alice.subscribe(jid)
        alice.wait_presence(jid, "available", m)
    assert read(alice, pump) == {"p": "1"}
    assert read(alice, meter) == {"e": "2"}
    # gw1 restarts: its device goes and comes back; gw2's neither moves nor stops answering
    m = alice.mark()
    gw1.stop()
    alice.wait_presence(pump, "unavailable", m)
    assert read(alice, meter) == {"e": "2"}
    gw1.start()
    alice.wait_presence(pump, "available", m)
    assert read(alice, pump) == {"p": "1"}
    assert [p for p in alice.presences_since(m, frm=meter)] == [], "gw2's device changed presence"
    assert gw2.running and "component link down" not in gw2.log_text(), gw2.log_tail()
