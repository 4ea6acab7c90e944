"""pytest fixtures for the real-server end-to-end tests (see harness.py)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import SERVERS, Env, gateway_bin, loop_thread, make_env, sim_device  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "servers(*names): run the module's tests against each of these XMPP servers "
        "(\"prosody\", \"ejabberd\"), through the xmpp_server fixture; unmarked tests run on Prosody")
    # Fail fast with one clear message instead of N identical start-up failures.
    missing = [name for name in ("prosody", "prosodyctl") if shutil.which(name) is None]
    if missing:
        raise pytest.UsageError(f"{', '.join(missing)} not on PATH: install the Debian package 'prosody' "
                                "(bash tests/run.sh does it)")


def pytest_generate_tests(metafunc):
    """`@pytest.mark.servers("prosody", "ejabberd")` (usually as a module's pytestmark):
    every test of it that uses the xmpp_server fixture (through env, or a module fixture)
    runs once per server. Module-scoped, so that a module's shared environment is made once
    per server and its tests are grouped by server."""
    marker = metafunc.definition.get_closest_marker("servers")
    if marker is None or "xmpp_server" not in metafunc.fixturenames:
        return
    names = marker.args or SERVERS
    unknown = set(names) - set(SERVERS)
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown XMPP server(s) {sorted(unknown)}")
    metafunc.parametrize("xmpp_server", names, scope="module")


@pytest.fixture(scope="module")
def xmpp_server() -> str:
    """The XMPP server the test runs against: "prosody" unless the module is marked
    `servers(...)` (then each in turn)."""
    return "prosody"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the log tails of everything still running to a failing test's report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        for obj in list(harness.ACTIVE):
            try:
                rep.sections.append((f"harness: {type(obj).__name__}", obj.describe()))
            except Exception as e:  # noqa: BLE001 - diagnostics must not mask the failure
                rep.sections.append((f"harness: {type(obj).__name__}", f"<describe failed: {e}>"))


@pytest.fixture(scope="session", autouse=True)
def _xmpp_loop():
    lt = loop_thread()
    yield lt
    lt.close()


@pytest.fixture
def workdir():
    """A short temp dir (unix socket paths must stay < 108 bytes), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="fg-e2e-"))
    yield d
    if os.environ.get("FIELDGATE_E2E_KEEP") != "1":
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_certs():
    """Test certificates (certs.Certs: CA, wrong CA, server/wrong-host/expired/untrusted leaves
    for localhost + 127.0.0.1, client certificates), made once per test module."""
    from certs import make_certs, openssl_bin

    try:
        openssl_bin()
    except harness.HarnessError as e:
        pytest.fail(str(e), pytrace=False)
    d = Path(tempfile.mkdtemp(prefix="fg-certs-"))
    try:
        yield make_certs(d)
    finally:
        if os.environ.get("FIELDGATE_E2E_KEEP") != "1":
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mosquitto(workdir, tls_certs):
    """A Mosquitto broker (mosquitto.Mosquitto) running in the test's workdir with the
    listeners plain, tls and auth; stopped, with its helper clients, after the test."""
    # Imported here: only the MQTT tests need paho-mqtt and the mosquitto packages, and
    # they fail with one clear message (not the whole suite) if those are missing.
    try:
        from mosquitto import Mosquitto, missing_tools
    except ImportError as e:
        pytest.fail(f"{e}: run bash tests/run.sh (it installs tests/e2e/requirements.txt into .venv)", pytrace=False)
    missing = missing_tools()
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: install the Debian packages 'mosquitto', "
                    "'mosquitto-clients' and 'openssl' (bash tests/run.sh does it)", pytrace=False)
    m = Mosquitto(workdir / "mosquitto", tls_certs)
    try:
        m.start()
        yield m
    finally:
        m.close()


def _coap_peers():
    """coap_peers, or a clear failure if aiocoap/cbor2 or libcoap's programs are missing."""
    try:
        import coap_peers
    except ImportError as e:
        pytest.fail(f"{e}: run bash tests/run.sh (it installs tests/e2e/requirements.txt into .venv)", pytrace=False)
    return coap_peers


@pytest.fixture
def libcoap_server(workdir):
    """libcoap's example server (coap_peers.LibcoapServer: /time observable, /async,
    /example_data, /.well-known/core) on a free UDP port; stopped after the test."""
    cp = _coap_peers()
    missing = cp.missing_tools()
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: install the Debian package 'libcoap3-bin' "
                    "(bash tests/run.sh does it)", pytrace=False)
    s = cp.LibcoapServer(workdir / "libcoap")
    try:
        s.start()
        yield s
    finally:
        s.close()


@pytest.fixture
def aiocoap_server(workdir):
    """aiocoap with the test resources (coap_peers.AiocoapServer: /counter, /sensor,
    /setpoint, /large, /senml, /codes/<code>, /hang, /void, ...) on a free UDP port, with its
    side channel; stopped after the test."""
    s = _coap_peers().AiocoapServer(workdir / "aiocoap")
    try:
        s.start()
        yield s
    finally:
        s.close()


@pytest.fixture
def coap_relay():
    """A factory of LossyRelays: `coap_relay(server.port)` -> a relay in front of that
    server (point the gateway at relay.port); all closed after the test."""
    cp = _coap_peers()
    relays = []

    def make(upstream_port: int):
        r = cp.LossyRelay(upstream_port)
        relays.append(r)
        return r

    try:
        yield make
    finally:
        for r in relays:
            r.close()


@pytest.fixture
def fieldgate_bin() -> Path:
    return gateway_bin()


@pytest.fixture
def env(workdir, xmpp_server) -> Env:
    """The XMPP server (xmpp_server: Prosody, or ejabberd) running with users alice, bob,
    carol; no gateway yet."""
    e = make_env(workdir, server=xmpp_server)
    try:
        yield e
    finally:
        e.close()


# The standard device set of the core tests.
#   pump1  – sine pressure + writable setpoint
#   meter1 – counter
#   dead   – sim unreachable "cable cut"
#   vault  – per-device access: only bob may subscribe/read it
ALICE_BOB_ACCESS = {"subscribe": ["alice@example.test"], "read": ["alice@example.test"]}


def standard_devices() -> list[dict]:
    return [
        sim_device("pump1", name="Pump 1", fields=[
            {"name": "pressure", "type": "double", "unit": "bar", "decimals": 2,
             "sim": {"kind": "sine", "period": "60s", "amplitude": 1.5, "offset": 4.0}},
            {"name": "setpoint", "type": "double", "unit": "bar", "decimals": 1, "writable": True,
             "min": 0.0, "max": 10.0},
        ]),
        sim_device("meter1", name="Meter 1", fields=[
            {"name": "energy", "type": "long", "unit": "Wh",
             "sim": {"kind": "counter", "start": 0, "step": 1, "every": "1s"}},
        ]),
        sim_device("dead", name="Dead device", sim={"unreachable": "cable cut"}),
        sim_device("vault", name="Vault", access={"subscribe": ["bob@example.test"], "read": ["bob@example.test"]}),
    ]


def linked_gateway(env, record: bool = False):
    """The standard gateway behind a TCP proxy that counts component connections (so a
    test can tell that the link never dropped), with alice subscribed to pump1.
    Returns (proxy, gateway, alice). record: the proxy keeps what the gateway sends."""
    proxy = env.proxy(record=record)
    g = env.new_gateway()
    g.write_config(standard_devices(), access=ALICE_BOB_ACCESS, xmpp={"server": f"127.0.0.1:{proxy.port}"})
    g.start()
    alice = env.client("alice")
    m = alice.mark()
    alice.subscribe(env.dev("pump1"))
    alice.wait_presence(env.dev("pump1"), "available", m)
    return proxy, g, alice


@pytest.fixture
def gw(env):
    """The gateway started with the standard devices and access lists, link up."""
    g = env.new_gateway()
    g.write_config(standard_devices(), access=ALICE_BOB_ACCESS)
    g.start()
    return g
