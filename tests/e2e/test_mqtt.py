"""The MQTT adapter end to end: the gateway against a real Mosquitto (mosquitto.py), read
and written through a real Prosody with XEP-0323 readouts, XEP-0325 sets, IoT event
subscriptions and presence from slixmpp, while paho-mqtt clients play the devices (they
publish state, answer commands, leave Last Wills) and watch what the gateway publishes.

Two worlds, each one Prosody + one Mosquitto, shared by the tests of this module:

- `mq`: one gateway for the whole module with a device (or discovering entry) per
  concern and a `[[mqtt.broker]]` per kind of connection: plain, TLS (right CA, wrong
  CA, wrong host name), password (inline, file, environment, wrong), a second broker that
  is killed and restarted, a third whose TLS listener requires a client certificate (with
  and without one), a host name that does not resolve, a closed port, and a TCP proxy in
  front of the broker that can swallow the traffic. Some state is on the broker before the
  gateway starts (retained messages). The tests do not share devices' state unless they
  say so.
- `rw`: a broker and a Prosody for the tests that stop and start a gateway of their own
  (persistent sessions in MQTT 3.1.1 and 5, discovered devices remembered in the state
  directory, a gateway with another `[events] min_interval`).

Every wait polls a condition; the few fixed sleeps are measurement windows, named as such.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import re
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from certs import make_certs
from harness import (Gateway, HarnessError, IqReply, TcpProxy, free_port, gateway_toml, make_env,
                     parse_disco_info, run_cli, toml_value, wait_for)
from iot import (NS_SD, Fld, IotClient, all_fields, brief, expect_error, extra_sections, failure_texts,
                 fields_of, iso, param_errors, parse_iso, q, req_iq, set_iq, set_response_code, subscribe_iq,
                 unsubscribe_iq)

DOMAIN = "gw.example.test"
ALICE, BOB = "alice@example.test", "bob@example.test"
# bob may read and subscribe, not control
ACCESS = {"subscribe": [ALICE, BOB], "read": [ALICE, BOB], "control": [ALICE]}
FAST = {"keep_alive": "5s", "reconnect_min": "100ms", "reconnect_max": "1s"}
PW_ENV = "FIELDGATE_E2E_MQTT_PASSWORD"
SEQ = itertools.count(1)


def jid(device_id: str) -> str:
    return f"{device_id}@{DOMAIN}"


# --------------------------------------------------------------------------------------
# configuration


def fld(name: str, type_: str, writable: bool = False, mqtt: dict | None = None, **kw) -> dict:
    f = {"name": name, "type": type_, **kw}
    if writable:
        f["writable"] = True
    if mqtt:
        f["mqtt"] = mqtt
    return f


def mqtt_device(id: str, fields: list[dict], name: str | None = None, **mqtt) -> dict:
    """A `[[device]]` with `adapter = "mqtt"`; its `[device.mqtt]` as an inline table."""
    return {"id": id, "name": name or id, "adapter": "mqtt", "mqtt": mqtt, "fields": fields}


def broker_sections(brokers: list[dict]) -> str:
    out = []
    for b in brokers:
        out += ["", "[[mqtt.broker]]"] + [f"{k} = {toml_value(v)}" for k, v in b.items()]
    return "\n".join(out) + "\n"


def config_text(prosody, gw: Gateway, devices: list[dict], brokers: list[dict],
                events: dict | None = None) -> str:
    return (gateway_toml(prosody, gw.state_dir, devices, ACCESS) + broker_sections(brokers)
            + extra_sections({"events": events or {"min_interval": "100ms"}}))


def plain_broker(name: str, port: int, client_id: str, **kw) -> dict:
    return {"name": name, "host": "127.0.0.1", "port": port, "client_id": client_id, "qos": 1, **FAST, **kw}


# --------------------------------------------------------------------------------------
# readouts


@dataclass
class Readout:
    seqnr: int
    fields: dict[str, Fld] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    payloads: list[ET.Element] = field(default_factory=list)

    def value(self, name: str) -> str:
        assert name in self.fields, f"no field {name} in the readout; failures: {self.failures}"
        return self.fields[name].value

    def failure_for(self, name: str) -> str:
        hits = [f for f in self.failures if f.startswith(f"{name}:")]
        assert hits, f"no failure for {name}; failures: {self.failures}; values: {self.summary()}"
        return hits[0]

    def summary(self) -> dict[str, str]:
        return {k: f.value for k, f in self.fields.items()}


def stamp(f: Fld) -> float:
    return parse_iso(f.timestamp)


def assert_ok(r: IqReply) -> None:
    assert r.ok, f"set failed: {r.condition} {r.text}: {brief(r.xml)}"
    assert set_response_code(r) == "OK", brief(r.xml)


def log_lines(gw: Gateway, since: int, *needles: str) -> list[str]:
    return [line for line in gw.log_since(since).splitlines() if all(n in line for n in needles)]


def wait_log(gw: Gateway, since: int, *needles: str, timeout: float = 10.0) -> list[str]:
    return wait_for(lambda: log_lines(gw, since, *needles), timeout, f"a gateway log line with {needles}")


def discovered_file(gw: Gateway) -> dict:
    try:
        return json.loads((gw.state_dir / "discovered.json").read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------------------
# the worlds


class World:
    def __init__(self, prefix: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.env = None
        self.brokers = []
        self.extras = []
        self.pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="e2e-async")

    def start_env(self) -> None:
        self.env = make_env(self.root, users=("alice", "bob"))
        self.alice = self._client("alice")
        self.bob = self._client("bob")

    def _client(self, user: str) -> IotClient:
        c = IotClient(self.env.prosody, user, resource="mqtt")
        self.env.clients.append(c)
        c.connect()
        return c

    def client(self, c: IotClient | None = None) -> IotClient:
        c = c or self.alice
        if c.xmpp is None:
            c.connect()
        return c

    # -- XEP-0323

    def readout(self, dev: str, fields: tuple[str, ...] = (), client: IotClient | None = None,
                timeout: float = 10.0) -> Readout:
        c = self.client(client)
        seqnr = next(SEQ)
        mk = c.mark_stanzas()
        r = c.iq(req_iq(jid(dev), seqnr, fields, momentary=True), timeout)
        assert r.ok, f"readout of {dev} refused: {r.condition} {r.text}"
        payloads = c.wait_readout_end(seqnr, mk, timeout)
        out = Readout(seqnr, payloads=payloads, failures=failure_texts(payloads))
        for f in all_fields(payloads):
            assert f.name not in out.fields, f"{f.name} reported twice: {[brief(p) for p in payloads]}"
            out.fields[f.name] = f
        return out

    def wait_readout(self, dev: str, pred, what: str, timeout: float = 10.0, fields: tuple[str, ...] = (),
                     client: IotClient | None = None) -> Readout:
        last: list[Readout] = []

        def cond():
            r = self.readout(dev, fields, client)
            last[:] = [r]
            return r if pred(r) else None

        try:
            return wait_for(cond, timeout, what, interval=0.05)
        except HarnessError as e:
            r = last[0] if last else None
            raise HarnessError(f"{e}; last readout of {dev}: values {r and r.summary()}, "
                               f"failures {r and r.failures}") from None

    def wait_value(self, dev: str, name: str, value: str, timeout: float = 10.0) -> Fld:
        r = self.wait_readout(dev, lambda r: name in r.fields and r.fields[name].value == value,
                              f"{dev}.{name} = {value} in a readout", timeout)
        return r.fields[name]

    # -- XEP-0325

    def set(self, dev: str, params: list[tuple[str, str, str]], client: IotClient | None = None,
            timeout: float = 15.0) -> IqReply:
        return self.client(client).iq(set_iq(jid(dev), params), timeout)

    def set_async(self, dev: str, params: list[tuple[str, str, str]]) -> concurrent.futures.Future:
        """The set in a thread: the test can play the device while the gateway waits."""
        c = self.client()
        return self.pool.submit(lambda: c.iq(set_iq(jid(dev), params), 15.0))

    def wait_device(self, dev: str, timeout: float = 10.0) -> None:
        """Until `dev` is a device (a ping is answered); a gateway that stopped answering
        at all fails this too."""
        c = self.client()

        def up() -> bool:
            r = c.iq_maybe(f"<iq type='get' to='{jid(dev)}'><ping xmlns='urn:xmpp:ping'/></iq>", 2.0)
            return r is not None and r.ok

        wait_for(up, timeout, f"{dev} to be a device (a ping to it answered)", interval=0.05)

    # -- presence

    def subscribe(self, dev: str, client: IotClient | None = None, state: str = "available",
                  timeout: float = 10.0, pred=None):
        c = self.client(client)
        m = c.mark()
        c.subscribe(jid(dev))
        return c.wait_presence(jid(dev), state, m, timeout=timeout, pred=pred)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        os.environ.pop(PW_ENV, None)
        try:
            if self.env:
                self.env.close()
        finally:
            for x in self.extras:
                x.close()
            for b in self.brokers:
                b.close()
            if os.environ.get("FIELDGATE_E2E_KEEP") != "1":
                shutil.rmtree(self.root, ignore_errors=True)


def require_mosquitto():
    try:
        import mosquitto
    except ImportError as e:
        pytest.fail(f"{e}: run bash tests/run.sh (it installs tests/e2e/requirements.txt into .venv)", pytrace=False)
    missing = mosquitto.missing_tools()
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: install the Debian packages 'mosquitto', "
                    "'mosquitto-clients' and 'openssl' (bash tests/run.sh does it)", pytrace=False)
    return mosquitto


# the main world's devices, on the broker "plain" unless said otherwise
BOILER = mqtt_device("boiler", [
    fld("temperature", "double", unit="°C", decimals=1, mqtt={"pointer": "/temperature"}),
    fld("setpoint", "double", True, min=5, max=30, mqtt={"pointer": "/setpoint", "confirm": True}),
    fld("relay", "bool", True, mqtt={"topic": "plant/boiler/relay", "command_topic": "plant/boiler/relay/set",
                                     "payload_on": "ON", "payload_off": "OFF"}),
], name="Boiler", broker="plain", topic="plant/boiler/state", format="json", timestamp_pointer="/time",
    availability_topic="plant/boiler/availability", availability_pointer="/state",
    command_topic="plant/boiler/set", command_format="json", command_qos=1, command_retain=False,
    confirm_timeout="2s")
THERMO = mqtt_device("thermo", [
    fld("temperature", "double", decimals=2),
    fld("humidity", "double", decimals=1),
], broker="plain", topic="plant/thermo/state", format="json", timestamp_pointer="/ts", timestamp_unit="millis")
JUNK = mqtt_device("junk", [
    fld("a", "double"),
    fld("b", "int"),
    fld("p", "int", mqtt={"topic": "junk/plain", "format": "plain"}),
], broker="plain", topic="junk/state", format="json")
VIRGIN = mqtt_device("virgin", [fld("a", "double"), fld("b", "int")], broker="plain", topic="virgin/state",
                     format="json")
LW = mqtt_device("lw", [fld("v", "int")], broker="plain", topic="lw/state", format="plain",
                 availability_topic="lw/availability")
EXP = mqtt_device("exp", [fld("v", "int")], broker="plain", topic="exp/state", format="plain", expire_after="2s")
FLEET = mqtt_device("fleet", [
    fld("t", "double", mqtt={"pointer": "/t"}),
    fld("led", "bool", True, mqtt={"pointer": "/led"}),
], broker="plain", discover=True, max_devices=60, id_prefix="fl-", topic="fleet/+/telemetry", format="json",
    availability_topic="fleet/+/status", command_topic="fleet/+/set", command_format="json")
CAP = mqtt_device("cap", [fld("v", "int")], broker="plain", discover=True, max_devices=3, id_prefix="cap-",
                  topic="cap/+/v", format="plain")
VIC = mqtt_device("vic", [fld("v", "int")], broker="victim", topic="vic/state", format="plain")
ACKED = mqtt_device("acked", [fld("on", "bool", True)], broker="proxied", topic="acked/state", format="plain",
                    command_topic="acked/set", command_format="plain", command_qos=1, confirm_timeout="1s")
TLS_DEVICES = [
    mqtt_device("tlsdev", [fld("v", "int")], broker="tls-ok", topic="tls/state", format="plain"),
    mqtt_device("tlsca", [fld("v", "int")], broker="tls-badca", topic="tlsca/state", format="plain"),
    mqtt_device("tlshost", [fld("v", "int")], broker="tls-badhost", topic="tlshost/state", format="plain"),
]
AUTH_DEVICES = [
    mqtt_device("authdev", [fld("v", "int")], broker="auth-ok", topic="auth/state", format="plain"),
    mqtt_device("authenv", [fld("v", "int")], broker="auth-env", topic="authenv/state", format="plain"),
    mqtt_device("authinl", [fld("v", "int")], broker="auth-inline", topic="authinl/state", format="plain"),
    mqtt_device("authbad", [fld("v", "int")], broker="auth-bad", topic="authbad/state", format="plain"),
]
# a broker whose TLS listener requires a client certificate signed by the test CA
MTLS_DEVICES = [
    mqtt_device("mtlsdev", [fld("v", "int")], broker="mtls-ok", topic="mtls/state", format="plain"),
    mqtt_device("mtlsnocert", [fld("v", "int")], broker="mtls-nocert", topic="mtlsnc/state", format="plain"),
]
# brokers that cannot be reached at all: a host name that does not resolve, a closed port
NOWHERE = mqtt_device("nowhere", [fld("v", "int")], broker="nowhere", topic="nowhere/state", format="plain")
CLOSED = mqtt_device("closed", [fld("v", "int")], broker="closed", topic="closed/state", format="plain")
BYSTANDER = mqtt_device("bystander", [fld("v", "int")], broker="plain", topic="bystander/state", format="plain")
# its state is on the broker (retained) before the gateway starts; nothing is published to it after
RET = mqtt_device("ret", [
    fld("temperature", "double", mqtt={"pointer": "/temperature"}),
    fld("mode", "string", mqtt={"topic": "ret/mode", "format": "plain"}),
], broker="plain", topic="ret/state", format="json", timestamp_pointer="/time")
RET_TIME = "2024-06-01T08:00:00.500Z"
# SenML (RFC 8428): `power`, `state` and `on` by their own record name, `energy` by its full name
SENML_BN = "urn:dev:mac:0024befffe804ff1:"
METER = mqtt_device("meter", [
    fld("power", "double", unit="W"),
    fld("energy", "double", unit="Wh", mqtt={"senml_name": SENML_BN + "energy"}),
    fld("state", "string"),
    fld("on", "bool"),
], broker="plain", topic="senml/meter1", format="senml")
# commands published retained (and the same without, for contrast)
CMDRET = mqtt_device("cmdret", [fld("level", "int", True)], broker="plain", topic="cmdret/state", format="plain",
                     command_topic="cmdret/set", command_format="plain", command_qos=1, command_retain=True)
CMDPLAIN = mqtt_device("cmdplain", [fld("level", "int", True)], broker="plain", topic="cmdplain/state",
                       format="plain", command_topic="cmdplain/set", command_format="plain", command_qos=1,
                       command_retain=False)
# what the gateway subscribes to on the broker "plain" (client id fg-test)
PLAIN_FILTERS = ["plant/boiler/state", "plant/boiler/relay", "plant/boiler/availability", "plant/thermo/state",
                 "junk/state", "junk/plain", "virgin/state", "lw/state", "lw/availability", "exp/state",
                 "fleet/+/telemetry", "fleet/+/status", "cap/+/v", "bystander/state", "ret/state", "ret/mode",
                 "senml/meter1", "cmdret/state", "cmdplain/state"]


class MqttWorld(World):
    def __init__(self) -> None:
        super().__init__("fg-mqtt-")

    def start(self) -> None:
        mosq = require_mosquitto()
        self.certs = make_certs(self.root / "certs")
        # a fourth listener: TLS with a certificate for another host name (wrong.example)
        self.badhost_port = free_port()
        extra = (f"listener {self.badhost_port} 127.0.0.1\ncafile {self.certs.ca_cert}\n"
                 f"certfile {self.certs.wrong_host.cert}\nkeyfile {self.certs.wrong_host.key}\n"
                 "allow_anonymous true\n")
        self.broker = mosq.Mosquitto(self.root / "mosquitto", self.certs, extra_config=extra)
        self.brokers.append(self.broker)
        self.victim = mosq.Mosquitto(self.root / "victim", self.certs)
        self.brokers.append(self.victim)
        # its tls listener requires a client certificate (the helper clients present certs.client)
        self.mtls = mosq.Mosquitto(self.root / "mtls", self.certs, require_certificate=True)
        self.brokers.append(self.mtls)
        self.broker.start()
        self.victim.start()
        self.mtls.start()
        # the initial state of `ret`, retained; the later message, not retained, reaches nobody
        self.broker.publish("ret/state", json.dumps({"temperature": 19.5, "time": RET_TIME}), qos=1, retain=True)
        self.broker.publish("ret/mode", "eco", qos=1, retain=True)
        self.broker.publish("ret/state", json.dumps({"temperature": 99.0, "time": "2024-06-01T09:00:00Z"}), qos=1)
        self.closed_port = free_port()  # nothing listens there
        self.proxy = TcpProxy(self.broker.plain_port)
        self.extras.append(self.proxy)
        self.start_env()
        b = self.broker
        self.password_file = self.root / "mqtt-password"
        self.password_file.write_text(b.password + "\n")
        os.environ[PW_ENV] = b.password
        ca = str(self.certs.ca_cert)
        brokers = [
            plain_broker("plain", b.plain_port, "fg-test", max_payload=2048),
            plain_broker("victim", self.victim.plain_port, "fg-victim", reconnect_max="500ms"),
            plain_broker("proxied", self.proxy.port, "fg-proxied", keep_alive="2s"),
            plain_broker("tls-ok", b.tls_port, "fg-tls-ok", tls={"ca_file": ca, "server_name": "localhost"}),
            plain_broker("tls-badca", b.tls_port, "fg-tls-badca", tls={"ca_file": str(self.certs.wrong_ca_cert)}),
            plain_broker("tls-badhost", self.badhost_port, "fg-tls-badhost",
                         tls={"ca_file": ca, "server_name": "localhost"}),
            plain_broker("auth-ok", b.auth_port, "fg-auth-ok", username=b.user, password_file=str(self.password_file)),
            plain_broker("auth-env", b.auth_port, "fg-auth-env", username=b.user, password_env=PW_ENV),
            plain_broker("auth-inline", b.auth_port, "fg-auth-inline", username=b.user, password=b.password),
            plain_broker("auth-bad", b.auth_port, "fg-auth-bad", username=b.user, password="not-the-password",
                         reconnect_min="200ms", reconnect_max="1s"),
            plain_broker("mtls-ok", self.mtls.tls_port, "fg-mtls-ok",
                         tls={"ca_file": ca, "cert_file": str(self.certs.client.cert),
                              "key_file": str(self.certs.client.key), "server_name": "localhost"}),
            plain_broker("mtls-nocert", self.mtls.tls_port, "fg-mtls-nocert",
                         tls={"ca_file": ca, "server_name": "localhost"}),
            {**plain_broker("nowhere", 1883, "fg-nowhere"), "host": "broker.nonexistent.invalid"},
            plain_broker("closed", self.closed_port, "fg-closed"),
        ]
        devices = [BOILER, THERMO, JUNK, VIRGIN, LW, EXP, FLEET, CAP, VIC, ACKED, *TLS_DEVICES, *AUTH_DEVICES,
                   *MTLS_DEVICES, NOWHERE, CLOSED, BYSTANDER, RET, METER, CMDRET, CMDPLAIN]
        self.gw = self.env.new_gateway()
        self.gw.write_raw_config(config_text(self.env.prosody, self.gw, devices, brokers))
        since = b.log_size()
        self.gw.start()
        for f in PLAIN_FILTERS:
            b.wait_subscribed("fg-test", f, since, timeout=15)

    def assert_alive(self) -> None:
        assert self.gw.running, f"gateway died\n{self.gw.log_tail()}"
        assert "panicked" not in self.gw.log_text(), f"panic in the gateway log\n{self.gw.log_tail()}"


@pytest.fixture(scope="module")
def mq():
    w = MqttWorld()
    try:
        w.start()
        yield w
    finally:
        w.close()


class RestartWorld(World):
    """A broker and a Prosody; each test runs a gateway of its own (one at a time: they
    share the component address)."""

    def __init__(self) -> None:
        super().__init__("fg-mqtt-rw-")

    def start(self) -> None:
        mosq = require_mosquitto()
        self.broker = mosq.Mosquitto(self.root / "mosquitto", make_certs(self.root / "certs"))
        self.brokers.append(self.broker)
        self.broker.start()
        self.start_env()

    def gateway(self, name: str, devices: list[dict], brokers: list[dict], events: dict | None = None) -> Gateway:
        gw = Gateway(self.root / f"gw-{name}", self.env.prosody)
        self.env.extras.append(gw)
        gw.write_raw_config(config_text(self.env.prosody, gw, devices, brokers, events))
        return gw


@pytest.fixture(scope="module")
def rw():
    w = RestartWorld()
    try:
        w.start()
        yield w
    finally:
        w.close()


# --------------------------------------------------------------------------------------
# values in readouts, with their own timestamps


def test_values_arrive_in_readouts_with_their_own_timestamps(mq):
    b = mq.broker
    cases = [
        # payload, shown (decimals = 1), the XEP-0323 timestamp expected
        ({"temperature": 21.37, "time": "2024-05-01T12:34:56.789Z"}, "21.4", parse_iso("2024-05-01T12:34:56.789Z")),
        ({"temperature": 19.96, "time": "2024-05-01T14:34:57.5+02:00"}, "20.0", parse_iso("2024-05-01T12:34:57.500Z")),
        ({"temperature": 18, "time": 1714567000}, "18.0", 1714567000.0),
    ]
    for payload, shown, expected in cases:
        b.publish("plant/boiler/state", json.dumps(payload), qos=1)
        f = mq.wait_value("boiler", "temperature", shown)
        assert abs(stamp(f) - expected) < 0.0005, f"{payload}: timestamp {f.timestamp}, expected {iso(expected)}"
        assert f.tag == "numeric" and f.attrs.get("unit") == "°C", f.attrs
        assert f.flag("momentary") and f.flag("automaticReadout"), f.attrs
    # without a time in the message: stamped with its arrival
    before = time.time()
    b.publish("plant/boiler/state", json.dumps({"temperature": 17.5}), qos=1)
    f = mq.wait_value("boiler", "temperature", "17.5")
    assert before - 1 <= stamp(f) <= time.time() + 1, f"{f.timestamp} is not the arrival time"
    # a plain topic of a field's own, with the device's words for on and off
    b.publish("plant/boiler/relay", "ON", qos=1)
    relay = mq.wait_value("boiler", "relay", "true")
    assert relay.tag == "boolean" and relay.flag("writable"), relay.attrs
    b.publish("plant/boiler/relay", "OFF", qos=1)
    mq.wait_value("boiler", "relay", "false")


def test_fields_never_received_report_a_field_error(mq):
    r = mq.readout("virgin")
    assert r.fields == {}, f"values nobody published: {r.summary()}"
    for name in ("a", "b"):
        r.failure_for(name)
    # the device itself is there and reachable: only its values are missing
    p = mq.subscribe("virgin", state=("available", "unavailable"))
    assert p.type == "available", p.status
    mq.broker.publish("virgin/state", json.dumps({"a": 1.5}), qos=1)
    r = mq.wait_readout("virgin", lambda r: "a" in r.fields, "virgin.a in a readout")
    assert r.value("a") == "1.5" and "b" not in r.fields, r.summary()
    r.failure_for("b")


def test_retained_messages_are_the_initial_state(mq):
    """`ret`'s state was published retained before the gateway started, then once more not
    retained (which reached nobody); nothing since: what the readout shows came with the
    gateway's subscriptions."""
    p = mq.subscribe("ret", state=("available", "unavailable"))
    assert p.type == "available", p.status
    r = mq.wait_readout("ret", lambda r: {"temperature", "mode"} <= set(r.fields), "ret's retained state", timeout=5)
    assert r.summary() == {"temperature": "19.5", "mode": "eco"}, (r.summary(), r.failures)
    t = r.fields["temperature"]
    assert stamp(t) == parse_iso(RET_TIME), f"not the retained message's own time: {t.timestamp}"
    assert t.flag("automaticReadout") and not t.flag("automaticEstimate"), t.attrs


def test_senml_pack_values_and_times(mq):
    b = mq.broker
    bt = 1717236000  # 2024-06-01T10:00:00Z
    pack = [
        {"bn": SENML_BN, "bt": bt, "bv": 100, "n": "power", "u": "W", "v": 12.5, "t": 1.25},
        {"n": "power", "v": 30, "t": -5},  # an older record of power: not the one taken
        {"n": "energy", "u": "Wh", "v": 5.5, "t": 2},
        {"n": "state", "vs": "running", "t": 3},
        {"n": "on", "vb": True, "t": 4},
        # another device's energy: the same `n`, not the full name energy asks for
        {"bn": "urn:dev:mac:0000000000000000:", "n": "energy", "v": 900, "t": 10},
    ]
    b.publish("senml/meter1", json.dumps(pack), qos=1)
    r = mq.wait_readout("meter", lambda r: len(r.fields) == 4, "meter's four fields")
    # v + bv; vs; vb
    assert r.summary() == {"power": "112.5", "energy": "105.5", "state": "running", "on": "true"}, \
        (r.summary(), r.failures)
    for name, t in (("power", 1.25), ("energy", 2), ("state", 3), ("on", 4)):
        f = r.fields[name]
        assert abs(stamp(f) - (bt + t)) < 0.0005, f"{name}: timestamp {f.timestamp}, expected {iso(bt + t)} (bt + t)"
    assert r.fields["power"].tag == "numeric" and r.fields["power"].attrs.get("unit") == "W", r.fields["power"].attrs

    # no bt: a time below 2^28 counts from the arrival; base values do not outlive their pack
    before = time.time()
    b.publish("senml/meter1", json.dumps([{"n": "power", "v": 7, "t": -60}]), qos=1)
    f = mq.wait_value("meter", "power", "7")
    after = time.time()
    assert before - 61 <= stamp(f) <= after - 59, f"t = -60 is a minute before the arrival: {f.timestamp}"
    assert mq.readout("meter").value("energy") == "105.5"


# --------------------------------------------------------------------------------------
# change events


def timed_events(c: IotClient, seqnr: int, since: int, dev: str = "thermo") -> list[tuple[float, ET.Element]]:
    """(arrival, <fields>) of the events of subscription `seqnr` from `dev` since stanza mark `since`."""
    out = []
    for t, s in c.timed_since(since):
        if s.tag == q("jabber:client", "message") and s.get("from", "").split("/")[0] == jid(dev):
            out += [(t, p) for p in s if p.tag == q(NS_SD, "fields") and p.get("seqnr") == str(seqnr)]
    return out


def events_of(c: IotClient, seqnr: int, since: int, dev: str = "thermo") -> list[ET.Element]:
    return [e for _t, e in timed_events(c, seqnr, since, dev)]


def wait_events(c: IotClient, seqnr: int, n: int, since: int, timeout: float = 10.0) -> list[ET.Element]:
    wait_for(lambda: len(events_of(c, seqnr, since)) >= n, timeout, f"{n} events of subscription {seqnr}")
    return events_of(c, seqnr, since)


def ev_fields(ev: ET.Element, name: str) -> Fld:
    assert ev.get("done") == "true", brief(ev)
    fs = {f.name: f for f in fields_of(ev)}
    assert name in fs, brief(ev)
    return fs[name]


def test_published_values_arrive_as_change_events(mq):
    b, alice = mq.broker, mq.alice
    t0 = 1717236000123  # ms: 2024-06-01T10:00:00.123Z

    def pub(temp: float, ts: int) -> None:
        b.publish("plant/thermo/state", json.dumps({"temperature": temp, "humidity": 40.0, "ts": ts}), qos=1)

    pub(20.0, t0)
    f = mq.wait_value("thermo", "temperature", "20.00")
    assert abs(stamp(f) - t0 / 1000) < 0.0005, f.timestamp

    s = next(SEQ)
    mk = alice.mark_stanzas()
    r = alice.iq(subscribe_iq(jid("thermo"), s, [{"name": "temperature", "changedBy": 1}], momentary=True))
    assert r.ok, f"subscribe refused: {r.condition} {r.text}"
    try:
        pub(20.4, t0 + 1000)  # too small a change
        pub(21.5, t0 + 2000)
        evs = wait_events(alice, s, 1, mk)
        first = ev_fields(evs[0], "temperature")
        assert first.value == "21.50", f"the first event must be the change of >= 1: {[brief(e) for e in evs]}"
        assert abs(stamp(first) - (t0 + 2000) / 1000) < 0.0005, "an event carries the message's own time"
        assert {x.name for x in fields_of(evs[0])} == {"temperature"}, "only the subscribed field"
        pub(21.9, t0 + 3000)  # 0.4 from the last event: nothing
        pub(23.0, t0 + 4000)
        evs = wait_events(alice, s, 2, mk)
        alice.barrier(jid("thermo"))
        values = [ev_fields(e, "temperature").value for e in events_of(alice, s, mk)]
        assert values == ["21.50", "23.00"], values
    finally:
        alice.iq(unsubscribe_iq(jid("thermo"), s))

    # maxInterval: the current value again and again, without a new message
    s = next(SEQ)
    mk = alice.mark_stanzas()
    r = alice.iq(subscribe_iq(jid("thermo"), s, [{"name": "humidity"}], momentary=True, maxInterval="PT1S"))
    assert r.ok, f"subscribe refused: {r.condition} {r.text}"
    try:
        evs = wait_events(alice, s, 3, mk, timeout=8)
        hum = [ev_fields(e, "humidity") for e in evs[:3]]
        assert [h.value for h in hum] == ["40.0"] * 3, [brief(e) for e in evs]
        assert all(abs(stamp(h) - (t0 + 4000) / 1000) < 0.0005 for h in hum), [h.timestamp for h in hum]
    finally:
        alice.iq(unsubscribe_iq(jid("thermo"), s))


# --------------------------------------------------------------------------------------
# sets become publishes


def commands(col, since: int) -> list[tuple[str, bytes]]:
    return [(m.topic, m.payload) for m in col.received(None, since) if m.topic.endswith("/set")]


def test_set_publishes_on_the_fields_command_topic(mq):
    with mq.broker.collector("plant/boiler/#") as col:
        mk = col.mark()
        assert_ok(mq.set("boiler", [("boolean", "relay", "true")]))
        on = col.wait_message("plant/boiler/relay/set", since=mk)
        assert on.payload == b"ON", on
        assert on.qos == 1 and not on.retain, on
        assert_ok(mq.set("boiler", [("boolean", "relay", "false")]))
        col.wait_count(2, "plant/boiler/relay/set", since=mk)
        assert commands(col, mk) == [("plant/boiler/relay/set", b"ON"), ("plant/boiler/relay/set", b"OFF")]


def retained_on(b, topic: str) -> list:
    """The retained messages a fresh subscription to `topic` is handed (a subscriber that
    was there before gets a retained publish without the flag: Mosquitto 2.0). The
    unsubscribe round trip behind the SUBACK makes sure they have all arrived."""
    with b.collector(topic) as col:
        col.unsubscribe("fieldgate-e2e/nothing")
        return [m for m in col.received(topic) if m.retain]


def test_command_retain_publishes_retained_commands(mq):
    b = mq.broker
    try:
        assert_ok(mq.set("cmdret", [("int", "level", "42")]))
        got = [(m.payload, m.retain) for m in retained_on(b, "cmdret/set")]
        assert got == [(b"42", True)], f"command_retain = true: the broker keeps the command: {got}"
        assert_ok(mq.set("cmdret", [("int", "level", "43")]))
        got = [(m.payload, m.retain) for m in retained_on(b, "cmdret/set")]
        assert got == [(b"43", True)], got
        # command_retain = false: the command was published, and the broker keeps nothing
        with b.collector("cmdplain/set") as col:
            assert_ok(mq.set("cmdplain", [("int", "level", "42")]))
            assert col.wait_message("cmdplain/set").payload == b"42"
        assert retained_on(b, "cmdplain/set") == [], "command_retain = false published retained"
    finally:
        b.clear_retained("cmdret/set")
        b.clear_retained("cmdplain/set")


def test_confirmed_set_succeeds_when_the_device_echoes_it(mq):
    b = mq.broker
    with b.collector("plant/boiler/set") as col:
        mk = col.mark()
        fut = mq.set_async("boiler", [("double", "setpoint", "21.5")])
        cmd = col.wait_message("plant/boiler/set", since=mk)
        assert json.loads(cmd.payload) == {"setpoint": 21.5}, cmd.payload
        assert cmd.qos == 1 and not cmd.retain, cmd
        time.sleep(0.5)  # the device takes its time: the gateway must still be waiting
        assert not fut.done(), f"answered before the device confirmed: {brief(fut.result().xml)}"
        b.publish("plant/boiler/state", json.dumps({"setpoint": 21.5, "temperature": 19.0}), qos=1)
        assert_ok(fut.result(15))
    assert mq.readout("boiler", ("setpoint",)).value("setpoint") == "21.5"


def test_confirmed_set_without_echo_times_out(mq):
    b = mq.broker
    with b.collector("plant/boiler/set") as col:
        # nobody answers
        mk = col.mark()
        t0 = time.monotonic()
        r = mq.set("boiler", [("double", "setpoint", "22.5")])
        took = time.monotonic() - t0
        expect_error(r, "remote-server-timeout")
        assert took >= 1.8, f"confirm_timeout is 2s, the error came after {took:.2f}s"
        assert [json.loads(p) for _t, p in commands(col, mk)] == [{"setpoint": 22.5}], "it was published"
        # the device answers with another value (it clamped it, say): no confirmation
        mk = col.mark()
        fut = mq.set_async("boiler", [("double", "setpoint", "23.5")])
        col.wait_message("plant/boiler/set", since=mk)
        b.publish("plant/boiler/state", json.dumps({"setpoint": 23.0}), qos=1)
        expect_error(fut.result(15), "remote-server-timeout")
    # the readout says what the device said (no decimals configured: its shortest form)
    assert mq.readout("boiler", ("setpoint",)).value("setpoint") == "23"


def test_invalid_sets_are_refused_before_anything_is_published(mq):
    with mq.broker.collector("plant/boiler/#") as col:
        mk = col.mark()
        for params, named in [
            ([("double", "setpoint", "40")], "setpoint"),  # above max 30
            ([("double", "setpoint", "4.9")], "setpoint"),  # below min 5
            ([("boolean", "setpoint", "true")], "setpoint"),  # wrong type
            ([("double", "relay", "1")], "relay"),  # wrong type
            ([("boolean", "relay", "true"), ("double", "setpoint", "99")], "setpoint"),  # one bad: none applied
        ]:
            r = mq.set("boiler", params)
            expect_error(r, "bad-request")
            assert named in param_errors(r), f"{params}: {brief(r.xml)}"
        r = mq.set("boiler", [("double", "temperature", "20")])  # not writable
        assert r.type == "error", brief(r.xml)
        # bob may read, not control
        r = mq.set("boiler", [("boolean", "relay", "true")], client=mq.bob)
        assert r.type == "error", brief(r.xml)
        # a valid set afterwards: its publish is the first command the broker sees
        assert_ok(mq.set("boiler", [("boolean", "relay", "false")]))
        col.wait_message("plant/boiler/relay/set", since=mk)
        # (the payload itself is test_set_publishes_on_the_fields_command_topic's business)
        assert [t for t, _p in commands(col, mk)] == ["plant/boiler/relay/set"], commands(col, mk)


def test_unconfirmed_qos1_set_is_answered_after_the_puback(mq):
    """The broker is reached through a proxy: while the proxy swallows every byte, the
    PUBLISH never reaches the broker and no PUBACK comes back, so the set must fail
    (after confirm_timeout, 1s) instead of being answered when the command was written."""
    b, proxy = mq.broker, mq.proxy
    b.wait_subscribed("fg-proxied", "acked/state", 0, timeout=15)
    with b.collector("acked/set") as col:
        mk = col.mark()
        assert_ok(mq.set("acked", [("boolean", "on", "true")]))
        m = col.wait_message("acked/set", since=mk)
        assert m.payload == b"true" and m.qos == 1, m

        accepted = proxy.accepted
        proxy.blackhole()
        mk = col.mark()
        t0 = time.monotonic()
        r = mq.set("acked", [("boolean", "on", "false")])
        took = time.monotonic() - t0
        expect_error(r, "remote-server-timeout")
        assert took >= 0.8, f"answered after {took:.2f}s, without the broker's PUBACK"
        assert col.received("acked/set", mk) == [], "the broker got the command after all"

        # keep-alive (2s) finds the link dead; the gateway reconnects and sets work again
        wait_for(lambda: proxy.accepted > accepted, 20, "the gateway to reconnect through the proxy")
        wait_for(lambda: mq.set("acked", [("boolean", "on", "true")]).ok, 20, "a set to succeed again",
                 interval=0.3)
        col.wait_message("acked/set", since=mk, pred=lambda m: m.payload == b"true")
    mq.assert_alive()


# --------------------------------------------------------------------------------------
# wildcard discovery


def test_wildcard_discovery_of_fifty_devices(mq):
    b, alice, gw = mq.broker, mq.alice, mq.gw
    since = gw.log_size()
    segs = [f"Unit-{i:02d}" for i in range(50)]
    ids = [f"fl-unit-{i:02d}" for i in range(50)]
    b.publish_many([(f"fleet/{s}/telemetry", json.dumps({"t": i + 0.5, "led": i % 2 == 0}))
                    for i, s in enumerate(segs)], qos=1)
    # messages are taken in order: once the last one is a device, all are
    mq.wait_device(ids[-1], 15)

    m = alice.mark()
    for d in ids:
        alice.subscribe(jid(d))
    alice.wait_all([jid(d) for d in ids], "available", m, timeout=30)
    for i, d in enumerate(ids):
        r = mq.readout(d)
        assert r.summary() == {"t": str(i + 0.5), "led": "true" if i % 2 == 0 else "false"}, (d, r.summary(),
                                                                                             r.failures)
    # its identity is the entry's kind of device; the domain's items name it by its segment
    info = parse_disco_info(alice.disco_info(jid(ids[7])))
    assert any(name == "fleet" for _c, _t, name in info.identities), f"the entry's name: {info.identities}"
    items = alice.disco_items(rw_domain := jid(ids[7]).split("@", 1)[1])
    assert items.ok, items
    q = items.xml.find("{http://jabber.org/protocol/disco#items}query")
    names = {i.get("jid"): i.get("name") for i in q.findall("{http://jabber.org/protocol/disco#items}item")}
    assert names.get(jid(ids[7])) == "Unit-07", f"listed by its segment in {rw_domain}'s items: {names}"

    # the entry itself is no device
    r = alice.ping(jid("fleet"))
    assert r.condition == "service-unavailable", (r.type, r.condition)
    mk = alice.mark()
    alice.subscribe(jid("fleet"))
    alice.wait_presence(jid("fleet"), "unsubscribed", mk)

    # the mapping rule: lower case, a space becomes '_'; unmappable segments make no device
    # (segments mapping to a taken id: test_discovery_refuses_a_segment_mapping_to_a_taken_id)
    weird = ["bad@seg", "Ünï", ".hidden", "trail.", "a..b", "x:y", "semi;colon", "comma,x"]
    b.publish_many([("fleet/Hall Lamp.2/telemetry", json.dumps({"t": 7.25, "led": True}))]
                   + [(f"fleet/{s}/telemetry", json.dumps({"t": 99.0, "led": False})) for s in weird]
                   + [("fleet/Last-One/telemetry", json.dumps({"t": 1.0, "led": False}))], qos=1)
    mq.wait_device("fl-last-one")
    assert mq.readout("fl-hall_lamp.2").summary() == {"t": "7.25", "led": "true"}
    wait_log(gw, since, "MQTT message skipped")

    # remembered in the state directory, in the order found, nothing unmappable
    want = [{"id": d, "name": s} for d, s in zip(ids, segs)] + [
        {"id": "fl-hall_lamp.2", "name": "Hall Lamp.2"}, {"id": "fl-last-one", "name": "Last-One"}]
    wait_for(lambda: discovered_file(gw).get("fleet") == want, 10, "discovered.json to list the fleet",
             interval=0.2)

    # availability and commands go to the device's own topics
    m = alice.mark()
    b.publish("fleet/Unit-03/status", "offline", qos=1)
    down = alice.wait_presence(jid("fl-unit-03"), "unavailable", m)
    assert "offline" in down.status, down.status
    b.publish("fleet/Unit-03/status", "online", qos=1)
    alice.wait_presence(jid("fl-unit-03"), "available", m)
    with b.collector("fleet/+/set") as col:
        mk = col.mark()
        assert_ok(mq.set("fl-unit-07", [("boolean", "led", "true")]))
        cmd = col.wait_message("fleet/+/set", since=mk)
        assert cmd.topic == "fleet/Unit-07/set" and json.loads(cmd.payload) == {"led": True}, cmd
    mq.assert_alive()


def test_discovery_maximum_is_enforced(mq):
    b, alice, gw = mq.broker, mq.alice, mq.gw
    since = gw.log_size()
    b.publish_many([("cap/a/v", "1"), ("cap/b/v", "2"), ("cap/c/v", "3"), ("cap/d/v", "4"), ("cap/e/v", "5"),
                    ("cap/a/v", "11")], qos=1)
    mq.wait_device("cap-a")
    mq.wait_value("cap-a", "v", "11")  # after d and e: those have been seen
    for d, v in (("cap-b", "2"), ("cap-c", "3")):
        assert mq.readout(d).value("v") == v
    for d in ("cap-d", "cap-e"):
        r = alice.ping(jid(d))
        assert r.condition == "service-unavailable", (d, r.type, r.condition)
    m = alice.mark()
    alice.subscribe(jid("cap-d"))
    alice.wait_presence(jid("cap-d"), "unsubscribed", m)
    lines = wait_log(gw, since, "MQTT message skipped", "max_devices")
    assert "cap/d/v" in lines[0], lines
    wait_for(lambda: [x["id"] for x in discovered_file(gw).get("cap", [])] == ["cap-a", "cap-b", "cap-c"], 10,
             "discovered.json to list cap-a, cap-b, cap-c", interval=0.2)


# --------------------------------------------------------------------------------------
# the broker goes away


def test_broker_killed_and_restarted(mq):
    v, alice, gw = mq.victim, mq.alice, mq.gw
    pid = gw.pid
    v.wait_subscribed("fg-victim", "vic/state", 0, timeout=15)
    mq.subscribe("vic")
    v.publish("vic/state", "1", qos=1)
    mq.wait_value("vic", "v", "1")

    m = alice.mark()
    v.kill()
    down = alice.wait_presence(jid("vic"), "unavailable", m, timeout=15)
    assert "broker unreachable" in down.status, down.status
    assert gw.running and gw.pid == pid, "the gateway died with the broker"

    since = v.log_size()
    m = alice.mark()
    v.start()
    alice.wait_presence(jid("vic"), "available", m, timeout=15)
    # clean session: a new broker knows nothing; the gateway subscribes again
    v.wait_subscribed("fg-victim", "vic/state", since, timeout=15)
    v.publish("vic/state", "2", qos=1)
    mq.wait_value("vic", "v", "2")
    assert gw.pid == pid
    mq.assert_alive()


# --------------------------------------------------------------------------------------
# TLS and passwords


def test_tls_with_the_right_ca(mq):
    b = mq.broker
    b.wait_subscribed("fg-tls-ok", "tls/state", 0, timeout=15)
    mq.subscribe("tlsdev")
    b.publish("tls/state", "42", qos=1, listener="tls")
    mq.wait_value("tlsdev", "v", "42")


@pytest.mark.parametrize("dev,broker_name,reason", [
    ("tlsca", "fg-tls-badca", r"UnknownIssuer|unknown issuer"),
    ("tlshost", "fg-tls-badhost", r"NotValidForName|not valid for name"),
])
def test_tls_refused_with_a_clear_log_line(mq, dev, broker_name, reason):
    p = mq.subscribe(dev, state="unavailable", pred=lambda p: "broker unreachable" in p.status, timeout=15)
    assert "broker unreachable" in p.status, p.status
    rx = re.compile(reason, re.I)
    wait_for(lambda: [line for line in log_lines(mq.gw, 0, "broker connection failed") if rx.search(line)], 15,
             f"a 'broker connection failed' line saying /{reason}/")
    # never got as far as MQTT
    assert not re.search(rf"New client connected from \S+ as {broker_name} ", mq.broker.log_text())


def test_tls_with_a_client_certificate(mq):
    """The broker `mtls` requires a client certificate signed by the test CA: `mtls-ok`
    presents one (cert_file, key_file), `mtls-nocert` does not and is refused."""
    m, gw = mq.mtls, mq.gw
    info = m.wait_client_connected("fg-mtls-ok", 0, timeout=15)
    assert info["protocol"] == "3.1.1", info
    m.wait_subscribed("fg-mtls-ok", "mtls/state", 0, timeout=15)
    mq.subscribe("mtlsdev")
    m.publish("mtls/state", "17", qos=1, listener="tls")  # the helper presents certs.client
    mq.wait_value("mtlsdev", "v", "17")

    p = mq.subscribe("mtlsnocert", state="unavailable", pred=lambda p: "broker unreachable" in p.status, timeout=15)
    assert "broker unreachable" in p.status, p.status
    # TLS 1.3: the broker's verdict comes as an alert after the client's handshake
    rx = re.compile(r"CertificateRequired|certificate required", re.I)
    wait_for(lambda: [line for line in log_lines(gw, 0, "mqtt{broker=mtls-nocert}", "broker connection failed")
                      if rx.search(line)], 15,
             "a 'broker connection failed' line of the broker mtls-nocert saying a certificate is required")
    assert not re.search(r"New client connected from \S+ as fg-mtls-nocert ", m.log_text()), \
        "the broker let a client without a certificate in"
    mq.assert_alive()


def test_unreachable_brokers_make_only_their_devices_unavailable(mq):
    """`nowhere`'s host does not resolve, nothing listens on `closed`'s port: their devices
    are unavailable with the reason, each attempt is logged, and a device of another broker
    is served meanwhile."""
    gw, alice = mq.gw, mq.alice
    for dev, address, reason in (("nowhere", "broker.nonexistent.invalid:1883", r"lookup|resolve|name or service"),
                                 ("closed", f"127.0.0.1:{mq.closed_port}", r"refused")):
        p = mq.subscribe(dev, state="unavailable", pred=lambda p: "broker unreachable" in p.status, timeout=15)
        assert "broker unreachable" in p.status, p.status
        lines = wait_for(lambda: log_lines(gw, 0, f"mqtt{{broker={dev}}}", "broker connection failed"), 15,
                         f"a 'broker connection failed' line of the broker {dev}")
        assert f"broker={address}" in lines[0] and re.search(reason, lines[0], re.I), lines[0]
        r = mq.readout(dev)
        assert r.fields == {}, r.summary()
        r.failure_for("v")
    # a device of the plain broker is served, and stays available
    m = alice.mark()
    mq.subscribe("bystander")
    mq.broker.publish("bystander/state", "5", qos=1)
    mq.wait_value("bystander", "v", "5")
    alice.barrier(jid("bystander"))
    assert [p for p in alice.presences_since(m, jid("bystander")) if p.type == "unavailable"] == []
    mq.assert_alive()


def test_password_inline_from_file_and_environment(mq):
    b = mq.broker
    for client_id, dev, topic, value in (("fg-auth-ok", "authdev", "auth/state", "7"),
                                          ("fg-auth-env", "authenv", "authenv/state", "8"),
                                          ("fg-auth-inline", "authinl", "authinl/state", "9")):
        info = b.wait_client_connected(client_id, 0, timeout=15)
        assert info["username"] == b.user, info
        b.wait_subscribed(client_id, topic, 0, timeout=15)
        mq.subscribe(dev)
        b.publish(topic, value, qos=1)
        mq.wait_value(dev, "v", value)


def test_wrong_password_is_logged_once_per_back_off(mq):
    gw = mq.gw
    p = mq.subscribe("authbad", state="unavailable", pred=lambda p: "broker unreachable" in p.status, timeout=15)
    assert "broker unreachable" in p.status, p.status
    # Mosquitto 2.0 refuses a wrong password in MQTT 3.1.1 with return code 5 (not
    # authorised), not 4 (bad user name or password): the log line must name the refusal
    # the broker gave.
    refusal = re.compile(r"bad user name or password|not authori[sz]ed", re.I)

    def refusals(text: str) -> list[str]:
        return [line for line in text.splitlines() if "broker connection failed" in line and refusal.search(line)]

    wait_for(lambda: refusals(gw.log_text()), 15, "a log line saying the broker refused the password")
    since = gw.log_size()
    time.sleep(4.0)  # a measurement window: reconnect_max 1s, jittered 0.8..1.0s
    n = len(refusals(gw.log_since(since)))
    assert 2 <= n <= 7, f"{n} refusals logged in 4s with a back-off of up to 1s"
    mq.assert_alive()


# --------------------------------------------------------------------------------------
# what devices should not send


def test_unusable_payloads_are_skipped_and_the_rest_keeps_flowing(mq):
    b, gw, alice = mq.broker, mq.gw, mq.alice
    b.publish("junk/state", json.dumps({"a": 1.5, "b": 2}), qos=1)
    b.publish("junk/plain", "7", qos=1)
    mq.wait_readout("junk", lambda r: r.summary() == {"a": "1.5", "b": "2", "p": "7"}, "junk's first values")
    mq.subscribe("junk")
    m = alice.mark()
    since = gw.log_size()

    # bigger than max_payload (2048): skipped, and the first line logged says why
    b.publish("junk/state", json.dumps({"a": 77.0, "b": 77, "pad": "x" * 3000}), qos=1)
    b.publish("junk/state", json.dumps({"b": 3}), qos=1)
    assert mq.wait_value("junk", "b", "3") and mq.readout("junk").value("a") == "1.5"
    lines = wait_log(gw, since, "MQTT payload not usable")
    assert "max_payload" in lines[0], lines[0]

    # not JSON, binary garbage, wrong types for a
    b.publish_many([("junk/state", "{not json"), ("junk/state", b"\xff\xfe\x00\x01garbage\x80"),
                    ("junk/state", json.dumps({"a": "hot"})), ("junk/state", json.dumps({"a": [1, 2]})),
                    ("junk/state", json.dumps({"a": "NaN"})), ("junk/state", b""),
                    ("junk/state", json.dumps({"b": 4}))], qos=1)
    mq.wait_value("junk", "b", "4")
    assert mq.readout("junk").value("a") == "1.5"
    # wrong values for b: a fraction, beyond an int, text
    b.publish_many([("junk/state", json.dumps({"b": 2.5})), ("junk/state", json.dumps({"b": 2 ** 40})),
                    ("junk/state", json.dumps({"b": "many"})), ("junk/state", json.dumps({"a": 2.5}))], qos=1)
    mq.wait_value("junk", "a", "2.5")
    assert mq.readout("junk").value("b") == "4"
    # one bad field does not spoil the other fields of its message
    b.publish("junk/state", json.dumps({"a": "hot", "b": 5}), qos=1)
    mq.wait_value("junk", "b", "5")
    assert mq.readout("junk").value("a") == "2.5"
    # garbage on a plain topic; topics that match nothing
    b.publish_many([("junk/plain", b"\xc3\x28"), ("junk/plain", "12abc"), ("junk/plain", b"\x00\x01\x02"),
                    ("junk/state/extra", json.dumps({"a": 66.0})), ("junk", json.dumps({"a": 66.0})),
                    ("junk/other", json.dumps({"a": 66.0})), ("junk/plain", "8")], qos=1)
    mq.wait_value("junk", "p", "8")
    b.publish("junk/state", json.dumps({"b": 6}), qos=1)
    mq.wait_value("junk", "b", "6")
    assert mq.readout("junk").summary() == {"a": "2.5", "b": "6", "p": "8"}

    alice.barrier(jid("junk"))
    assert [p.status for p in alice.presences_since(m, jid("junk")) if p.type == "unavailable"] == [], \
        "bad payloads made the device unavailable"
    # the other devices are unaffected
    b.publish("virgin/state", json.dumps({"b": 12}), qos=1)
    mq.wait_value("virgin", "b", "12")
    mq.assert_alive()


# --------------------------------------------------------------------------------------
# availability


def test_last_will_makes_the_device_unavailable(mq):
    b, alice = mq.broker, mq.alice
    mq.subscribe("lw")
    dev = b.device_client("lw-device", will=("lw/availability", "offline", 1, False))
    dev.publish("lw/availability", "online", qos=1)
    dev.publish("lw/state", "5", qos=1)
    mq.wait_value("lw", "v", "5")
    m = alice.mark()
    dev.drop()  # the broker publishes the will
    down = alice.wait_presence(jid("lw"), "unavailable", m, timeout=10)
    assert "offline" in down.status, down.status
    m = alice.mark()
    dev.connect()
    dev.publish("lw/availability", "online", qos=1)
    alice.wait_presence(jid("lw"), "available", m, timeout=10)
    dev.close()


def test_availability_pointer_reads_json_and_plain_payloads(mq):
    b, alice = mq.broker, mq.alice
    mq.subscribe("boiler")
    m = alice.mark()
    b.publish("plant/boiler/availability", json.dumps({"state": "offline"}), qos=1)
    down = alice.wait_presence(jid("boiler"), "unavailable", m)
    assert "offline" in down.status, down.status
    m = alice.mark()
    b.publish("plant/boiler/availability", "online", qos=1)  # the plain form as well
    alice.wait_presence(jid("boiler"), "available", m)


def test_expire_after_makes_a_silent_device_unavailable(mq):
    b, alice = mq.broker, mq.alice
    # never heard from since the gateway started (more than 2s ago): may be either
    first = mq.subscribe("exp", state=("available", "unavailable"))
    m = alice.mark()
    b.publish("exp/state", "5", qos=1)
    published = time.monotonic()
    f = mq.wait_value("exp", "v", "5")
    assert f.flag("automaticReadout"), f.attrs
    if first.type == "unavailable":
        alice.wait_presence(jid("exp"), "available", m, timeout=5)
    down = alice.wait_presence(jid("exp"), "unavailable", m, timeout=10, pred=lambda p: "no message for" in p.status)
    assert "2s" in down.status, down.status
    assert down.at - published >= 1.9, f"unavailable {down.at - published:.2f}s after the message"
    r = mq.readout("exp")
    f = r.fields.get("v")
    assert f is not None and f.value == "5", (r.summary(), r.failures)
    assert f.flag("automaticEstimate") and not f.flag("automaticReadout"), f"a stale value: {f.attrs}"
    m = alice.mark()
    b.publish("exp/state", "6", qos=1)
    alice.wait_presence(jid("exp"), "available", m, timeout=5)
    assert mq.wait_value("exp", "v", "6").flag("automaticReadout")


def test_check_summarises_the_mqtt_devices(mq):
    gw = mq.gw
    found = discovered_file(gw)
    proc = run_cli(gw.binary, "check", "--config", str(gw.config_path), cwd=gw.dir)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "  boiler@gw.example.test (Boiler) adapter=mqtt fields=3 writable=2" in lines, proc.stdout
    assert "  entry fleet (fleet) adapter=mqtt discovers devices, each with fields=2 writable=1" in lines, \
        proc.stdout
    n = sum(len(found.get(e, [])) for e in ("fleet", "cap"))
    assert f"discovered devices (in the state directory): {n}" in lines, proc.stdout
    assert mq.broker.password not in proc.stdout + proc.stderr, "check prints a broker password"


# --------------------------------------------------------------------------------------
# restarts: persistent sessions, remembered devices


def t_iso(n: int) -> str:
    return iso(1717236000 + n + 0.25)


def test_persistent_session_keeps_messages_while_the_gateway_is_away(rw):
    """clean_session = false, a fixed client id, QoS 1: what is published while the gateway
    is away (or while the broker restarts) is delivered when it is back; each value carries
    its message's time, so the readout tells which message it came from."""
    b = rw.broker
    brokers = [plain_broker("keep", b.plain_port, "fg-keep", clean_session=False)]
    devices = [mqtt_device("keeper", [fld("n", "int", mqtt={"pointer": "/n"})], broker="keep", topic="keep/state",
                           format="json", timestamp_pointer="/time")]
    gw = rw.gateway("persist", devices, brokers)
    gone = r"^\S+: Client fg-keep (disconnected|closed its connection)"

    def pub(n: int) -> None:
        b.publish("keep/state", json.dumps({"n": n, "time": t_iso(n)}), qos=1)

    def resumed(since: int) -> None:
        """The gateway is back and the broker kept its session (CONNACK session present)."""
        info = b.wait_client_connected("fg-keep", since, timeout=15)
        assert info["clean"] is False, f"clean_session = false: {info}"
        b.wait_log(r"^\S+: Sending CONNACK to fg-keep \(1, 0\)", since)

    def expect(n: int) -> None:
        f = rw.wait_value("keeper", "n", str(n), timeout=15)
        assert stamp(f) == parse_iso(t_iso(n)), f"n = {n} with the time of another message: {f.timestamp}"

    try:
        since = b.log_size()
        gw.start()
        info = b.wait_client_connected("fg-keep", since, timeout=15)
        assert info["clean"] is False, f"clean_session = false: {info}"
        assert b.wait_subscribed("fg-keep", "keep/state", since) == 1
        pub(1)
        expect(1)

        # 1. the broker stops (saving the session) and starts under the running gateway: a
        # message published before the gateway is back is queued for its session
        b.stop()
        since = b.log_size()
        b.start()
        pub(2)
        resumed(since)
        expect(2)

        # 2. the gateway is away: the broker queues for its session
        since = b.log_size()
        assert gw.stop()[0] == 0
        b.wait_log(gone, since)
        pub(3)
        pub(4)
        since = b.log_size()
        gw.start()
        resumed(since)
        expect(4)

        # 3. gateway away, a message queued, the broker restarted, the gateway back
        since = b.log_size()
        assert gw.stop()[0] == 0
        b.wait_log(gone, since)
        pub(5)
        b.restart()
        since = b.log_size()
        gw.start()
        resumed(since)
        expect(5)
        assert "panicked" not in gw.log_text()
    finally:
        gw.close()


def test_discovered_devices_come_back_after_a_restart_and_check_lists_them(rw):
    b, alice = rw.broker, rw.alice
    brokers = [plain_broker("disc", b.plain_port, "fg-disc")]
    devices = [mqtt_device("zz", [fld("v", "int")], broker="disc", topic="zz/+/v", format="plain", discover=True,
                           max_devices=10)]
    gw = rw.gateway("disc", devices, brokers)
    expected = [("alpha", "Alpha"), ("beta", "beta"), ("gamma_3", "Gamma 3")]
    try:
        since = b.log_size()
        gw.start()
        b.wait_subscribed("fg-disc", "zz/+/v", since, timeout=15)
        b.publish_many([("zz/Alpha/v", "1"), ("zz/beta/v", "2"), ("zz/Gamma 3/v", "3")], qos=1)
        wait_for(lambda: [(x["id"], x["name"]) for x in discovered_file(gw).get("zz", [])] == expected, 10,
                 "discovered.json to list alpha, beta, gamma_3", interval=0.2)
        rw.subscribe("alpha")
        assert rw.readout("alpha").value("v") == "1"

        m = alice.mark()
        assert gw.stop()[0] == 0
        alice.wait_presence(jid("alpha"), "unavailable", m)
        proc = run_cli(gw.binary, "check", "-c", str(gw.config_path), cwd=gw.dir)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert "  entry zz (zz) adapter=mqtt discovers devices, each with fields=1 writable=0" in lines, proc.stdout
        assert "discovered devices (in the state directory): 3" in lines, proc.stdout
        for d, name in expected:
            assert f"  {d}@{DOMAIN} ({name}) from entry zz" in lines, proc.stdout

        # back before any new message: alpha's subscriber is told it is available
        m = alice.mark()
        gw.start()
        alice.wait_presence(jid("alpha"), "available", m, timeout=15)
        rw.subscribe("beta")
        r = rw.readout("gamma_3")
        assert r.fields == {}, f"values were not remembered, yet: {r.summary()}"
        r.failure_for("v")
        b.publish("zz/Gamma 3/v", "33", qos=1)
        rw.wait_value("gamma_3", "v", "33")
        b.publish("zz/Delta/v", "4", qos=1)
        rw.wait_device("delta")
        rw.wait_value("delta", "v", "4")
        wait_for(lambda: [x["id"] for x in discovered_file(gw).get("zz", [])] == ["alpha", "beta", "gamma_3", "delta"],
                 10, "discovered.json to add delta once", interval=0.2)
        assert "panicked" not in gw.log_text()
    finally:
        gw.close()


def test_discovery_refuses_a_segment_mapping_to_a_taken_id(rw):
    """`Living Room`, `living room` and `living_room` all map to `living_room`: the first
    is the device, the others are skipped (logged) and do not feed it. A gateway of its own:
    a mistake here must not take the other tests' gateway with it."""
    b = rw.broker
    brokers = [plain_broker("coll", b.plain_port, "fg-coll")]
    devices = [mqtt_device("rooms", [fld("v", "int")], broker="coll", topic="rooms/+/v", format="plain",
                           discover=True)]
    gw = rw.gateway("collide", devices, brokers)
    try:
        since = b.log_size()
        gw.start()
        b.wait_subscribed("fg-coll", "rooms/+/v", since, timeout=15)
        log_since = gw.log_size()
        b.publish_many([("rooms/Living Room/v", "1"), ("rooms/living room/v", "2"), ("rooms/living_room/v", "3"),
                        ("rooms/Other/v", "4")], qos=1)
        rw.wait_device("other")  # after the two others: they have been taken or skipped
        assert rw.readout("other").value("v") == "4"
        assert rw.readout("living_room").value("v") == "1", "a colliding segment fed the device"
        wait_log(gw, log_since, "MQTT message skipped", "living room")
        wait_for(lambda: [(x["id"], x["name"]) for x in discovered_file(gw).get("rooms", [])]
                 == [("living_room", "Living Room"), ("other", "Other")], 10,
                 "discovered.json to list living_room (Living Room) and other", interval=0.2)
        # and the gateway still answers and takes messages
        b.publish("rooms/Living Room/v", "5", qos=1)
        rw.wait_value("living_room", "v", "5")
        assert gw.running and "panicked" not in gw.log_text()
    finally:
        gw.close()


def test_mqtt5_session_readout_set_and_persistence(rw):
    """`protocol = "5"`: the broker sees an MQTT 5 client; values, timestamps and commands
    work as with 3.1.1; with clean_session = false and session_expiry = "1h" the session
    (and what is published while the gateway is away) outlives the connection, while a
    session_expiry of 1s lets it end."""
    b = rw.broker
    device = mqtt_device("five", [fld("n", "int", mqtt={"pointer": "/n"}),
                                  fld("sw", "bool", True, mqtt={"pointer": "/sw"})],
                         broker="v5", topic="five/state", format="json", timestamp_pointer="/time",
                         command_topic="five/set", command_format="json", command_qos=1)

    def config(expiry: str) -> list[dict]:
        return [plain_broker("v5", b.plain_port, "fg-v5", protocol="5", clean_session=False, session_expiry=expiry)]

    gw = rw.gateway("mqtt5", [device], config("1h"))
    gone = r"^\S+: Client fg-v5 (disconnected|closed its connection)"

    def pub(n: int) -> None:
        b.publish("five/state", json.dumps({"n": n, "time": t_iso(n)}), qos=1)

    def connected(since: int, session_present: int) -> None:
        info = b.wait_client_connected("fg-v5", since, timeout=15)
        assert info["protocol"] == "5" and info["clean"] is False, f"MQTT 5 without clean start: {info}"
        b.wait_log(rf"^\S+: Sending CONNACK to fg-v5 \({session_present}, 0\)", since)

    def expect(n: int) -> None:
        f = rw.wait_value("five", "n", str(n), timeout=15)
        assert stamp(f) == parse_iso(t_iso(n)), f"n = {n} with the time of another message: {f.timestamp}"

    try:
        since = b.log_size()
        gw.start()
        connected(since, 0)
        assert b.wait_subscribed("fg-v5", "five/state", since) == 1
        pub(1)
        expect(1)
        with b.collector("five/set") as col:
            assert_ok(rw.set("five", [("boolean", "sw", "true")]))
            cmd = col.wait_message("five/set")
            assert json.loads(cmd.payload) == {"sw": True} and cmd.qos == 1, cmd

        # the gateway away: the broker keeps the session and queues for it
        since = b.log_size()
        assert gw.stop()[0] == 0
        b.wait_log(gone, since)
        pub(2)
        pub(3)
        since = b.log_size()
        gw.start()
        connected(since, 1)
        expect(3)

        # the broker restarted under the running gateway: the session was saved with it
        b.stop()
        since = b.log_size()
        b.start()
        pub(4)
        connected(since, 1)
        expect(4)

        # session_expiry = "1s": a session that ends a second after the connection does
        since = b.log_size()
        assert gw.stop()[0] == 0
        gw.write_raw_config(config_text(rw.env.prosody, gw, [device], config("1s")))
        gw.start()
        connected(since, 1)  # the 1h session, resumed, now set to expire after 1s
        since = b.log_size()
        assert gw.stop()[0] == 0
        b.wait_log(gone, since)
        time.sleep(3.0)  # a measurement window: the session expires (mosquitto checks about every second)
        pub(5)  # no session to queue it for: lost
        since = b.log_size()
        gw.start()
        connected(since, 0)
        b.wait_subscribed("fg-v5", "five/state", since, timeout=15)
        b.publish("five/state", json.dumps({"sw": False}), qos=1)  # after 5, had it been queued
        r = rw.wait_readout("five", lambda r: "sw" in r.fields, "five.sw in a readout")
        assert r.value("sw") == "false"
        # (values are not kept across a restart of the gateway: only the lost message could have set n)
        assert "n" not in r.fields, f"a message published after the session expired arrived: {r.summary()}"
        assert "panicked" not in gw.log_text()
    finally:
        gw.close()


def test_events_are_capped_by_the_gateways_min_interval(rw):
    """[events] min_interval = 500ms: a device publishing 50 changes in 0.75 s makes a
    subscriber watching every change (changedBy 1) at most an event per 500 ms, and the
    last change, held back (the burst ends in the middle of an interval), is delivered
    when the interval is over."""
    b, alice = rw.broker, rw.alice
    brokers = [plain_broker("burst", b.plain_port, "fg-burst")]
    devices = [mqtt_device("burst", [fld("v", "int")], broker="burst", topic="burst/state", format="plain")]
    gw = rw.gateway("burst", devices, brokers, events={"min_interval": "500ms"})
    try:
        since = b.log_size()
        gw.start()
        b.wait_subscribed("fg-burst", "burst/state", since, timeout=15)
        b.publish("burst/state", "0", qos=1)
        rw.wait_value("burst", "v", "0")
        s = next(SEQ)
        mk = alice.mark_stanzas()
        r = alice.iq(subscribe_iq(jid("burst"), s, [{"name": "v", "changedBy": 1}], momentary=True))
        assert r.ok, f"subscribe refused: {r.condition} {r.text}"
        try:
            time.sleep(0.6)  # the first event waits min_interval after subscribing, too: let it pass
            with b.device_client("burst-device") as dev:
                t0 = time.monotonic()
                for i in range(1, 51):
                    dev.publish("burst/state", str(i), qos=1)
                    t_last = time.monotonic()
                    time.sleep(max(0.0, t0 + i * 0.015 - time.monotonic()))
            wait_for(lambda: [e for _t, e in timed_events(alice, s, mk, "burst")
                              if ev_fields(e, "v").value == "50"], 5, "an event with the last value, 50")
            time.sleep(1.0)  # a measurement window: nothing more may come
            evs = timed_events(alice, s, mk, "burst")
            values = [int(ev_fields(e, "v").value) for _t, e in evs]
            times = [t for t, _e in evs]
            took = t_last - t0
            assert 2 <= len(evs) <= 4, f"{len(evs)} events for 50 changes in {took:.2f}s: {values}"
            gaps = [round(b2 - a2, 3) for a2, b2 in zip(times, times[1:])]
            assert all(g >= 0.4 for g in gaps), f"events closer than min_interval (500ms): gaps {gaps}"
            assert values == sorted(set(values)) and values[-1] == 50, values
            # events at about 0, 0.5 and 1.0 s from the first change: the last one is the
            # change held back since about 0.75 s, sent when the interval ends
            late = times[-1] - t_last
            assert 0.1 <= late <= 0.9, f"the last change came in an event {late:.2f}s after its publish"
        finally:
            alice.iq(unsubscribe_iq(jid("burst"), s))
        assert "panicked" not in gw.log_text()
    finally:
        gw.close()
