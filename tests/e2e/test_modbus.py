"""The modbus adapter end to end: the gateway against pymodbus (an independent Modbus
implementation, in a subprocess, see modbus_sim.py / pymodbus_server.py) over Modbus TCP,
RTU over TCP and RTU on a pseudo-terminal pair, read and written through a real Prosody
with XEP-0323 readouts and XEP-0325 sets from slixmpp.

Every expected value is computed from what the pymodbus datastore holds, decoded with
Python's `struct` (never with the gateway's codec); every write is checked in the
datastore. One Prosody, one gateway and every Modbus peer are shared by the module: each
test has its own connection or device, so they do not disturb each other.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import struct
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import (NS_CLIENT, REPO_ROOT, IqReply, XmppClient, gateway_bin, gateway_toml, make_env,
                     run_cli, wait_for)
from iot import parse_iso
from modbus_sim import (PtyPair, PymodbusServer, RawModbusTcp, decode, encode, encode_string, f32,
                        f32_shortest, modbus_device, modbus_sections, read_holding_reply)

NS_SD = "urn:xmpp:iot:sensordata"
NS_CTL = "urn:xmpp:iot:control"
WRITE_FCS = {5, 6, 15, 16, 22}
# bob may read but not control: he must not learn where the devices are reached
ACCESS = {"subscribe": ["alice@example.test", "bob@example.test"],
          "read": ["alice@example.test", "bob@example.test"], "control": ["alice@example.test"]}
FAST = {"timeout": "200ms", "reconnect_min": "100ms", "reconnect_max": "1s"}
ENUM = {0: "off", 1: "heating", 2: "hot-water", 3: "eco"}


def fld(name: str, type_: str, writable: bool = False, **modbus) -> dict:
    f = {"name": name, "type": type_}
    if writable:
        f["writable"] = True
    f["modbus"] = modbus
    return f


# --------------------------------------------------------------------------------------
# the devices

# main (pymodbus TCP, unit 1): every type and byte order, merged reads
PLC_FIELDS = [
    fld("u16", "int", address=0, type="u16"),
    fld("i16s", "double", True, address=1, type="i16", scale=0.1),
    fld("i32c", "int", address=2, type="i32", order="CDAB"),
    fld("u32c", "long", address=4, type="u32", order="CDAB"),
    fld("f32a", "double", address=6, type="f32", order="ABCD"),
    fld("f32c", "double", True, address=8, type="f32", order="CDAB"),
    fld("f64", "double", address=10, type="f64"),
    fld("flag3", "bool", True, address=14, type="bit", bit=3),
    fld("flag4", "bool", address=14, type="bit", bit=4),
    fld("flag9", "bool", address=14, type="bit", bit=9),
    fld("label", "string", address=15, type="string", length=4),
    # the field lists its labels again: without them the gateway refuses the config (a bug,
    # see test_check_accepts_enum_labels_from_the_value_map)
    dict(fld("mode", "enum", True, address=19, values=ENUM), values=list(ENUM.values())),
    fld("u16ba", "int", address=20, type="u16", order="BA"),
    fld("f32d", "double", address=21, type="f32", order="DCBA"),
    fld("i64b", "long", address=23, type="i64", order="BADCFEHG"),
    fld("coil0", "bool", True, register="coil", address=0),
    fld("coil1", "bool", True, register="coil", address=1),
    fld("coil5", "bool", register="coil", address=5),
    fld("di2", "bool", register="discrete", address=2),
    fld("di3", "bool", register="discrete", address=3),
    fld("di10", "bool", register="discrete", address=10),
    fld("ir0", "int", register="input", address=0),
    fld("irf", "double", register="input", address=2, type="f32", order="CDAB"),
    fld("iri", "int", register="input", address=4, type="i32"),
]
MAIN_TABLES = {"holding": [(0, 30), (100, 10)], "coils": [(0, 16)], "discrete": [(0, 16)], "input": [(0, 8)]}
# gaps (same unit, one request per field): holding 60 is in no pymodbus block
GAPS_FIELDS = [
    fld("ok_h", "int", address=100),
    fld("hole", "int", True, address=60),
    fld("ok_i", "int", register="input", address=6),
]


@dataclass
class Readout:
    seqnr: int
    values: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (element, value)
    failures: list[str] = field(default_factory=list)
    payloads: list[ET.Element] = field(default_factory=list)

    def value(self, name: str) -> str:
        assert name in self.values, f"no field {name} in the readout; failures: {self.failures}"
        return self.values[name][1]

    def failure_for(self, name: str) -> str:
        hits = [f for f in self.failures if f.startswith(f"{name}:")]
        assert hits, f"no failure for {name}; failures: {self.failures}; values: {self.values}"
        return hits[0]


class ModbusWorld:
    """Prosody + every Modbus peer + one gateway with a connection per peer."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fg-mb-"))
        self.servers: list[PymodbusServer] = []
        self.pty: PtyPair | None = None
        self.raw: RawModbusTcp | None = None
        self.env = None
        self.seq = itertools.count(1)
        self.alice: XmppClient | None = None
        self.bob: XmppClient | None = None

    def server(self, name: str, units: dict, **kw) -> PymodbusServer:
        s = PymodbusServer(self.root / "modbus", name, units, **kw)
        self.servers.append(s)
        return s

    def start(self) -> None:
        self.env = make_env(self.root, users=("alice", "bob"))
        self.main = self.server("main", {1: MAIN_TABLES})
        self.multi = self.server("multi", {1: {"holding": [(0, 4)]}, 2: {"holding": [(0, 4)]}}, silent_units=(7,))
        self.flaky = self.server("flaky", {1: {"holding": [(0, 4)]}})
        self.rot = self.server("rot", {3: {"holding": [(0, 8)]}}, transport="rtu-over-tcp")
        # one slowly polled device on a server of its own: its requests are counted
        self.evs = self.server("evs", {1: {"holding": [(0, 4)]}})
        self.rtu = None
        if shutil.which("socat"):  # else test_rtu_over_pty fails and says so; the rest runs
            self.pty = PtyPair(self.root).start()
            self.rtu = self.server("rtu", {5: {"holding": [(0, 8)], "coils": [(0, 16)], "discrete": [(0, 16)]}},
                                   transport="rtu", serial=self.pty.paths[0], baud=19200)
        self.raw_values = {u: [u] for u in range(1, 11)}
        self.raw_values[1] = [1234]
        self.raw = RawModbusTcp(self.raw_answer)
        for s in self.servers:
            s.spawn()
        for s in self.servers:
            s.wait_ready()
        self.flaky.set(1, "holding", 0, [4321])

        def tcp(name: str, port: int, transport: str = "tcp", **kw) -> dict:
            return {"name": name, "transport": transport, "address": f"127.0.0.1:{port}", **FAST, **kw}

        connections = [
            tcp("main", self.main.port),
            tcp("multi", self.multi.port),
            tcp("flaky", self.flaky.port, reconnect_max="400ms"),
            tcp("rot", self.rot.port, transport="rtu-over-tcp"),
            tcp("evs", self.evs.port),
            tcp("raw", self.raw.port),
        ]
        if self.pty:
            connections.append({"name": "rtu", "transport": "rtu", "port": self.pty.paths[1], "baud": 19200,
                                "timeout": "500ms", "reconnect_min": "100ms", "reconnect_max": "1s"})
        v = [fld("v", "int", address=0)]
        vw = [fld("v", "int", True, address=0)]
        devices = [
            modbus_device("plc", "main", 1, PLC_FIELDS),
            modbus_device("ev1", "evs", 1, [fld("v", "int", address=0), fld("w", "int", address=1)],
                          poll="2s"),
            modbus_device("gaps", "main", 1, GAPS_FIELDS, merge=False),
            modbus_device("mu1", "multi", 1, v + [fld("w", "int", address=1, type="i16")]),
            modbus_device("mu2", "multi", 2, v + [fld("w", "int", address=1, type="i16")]),
            modbus_device("mu7", "multi", 7, v),
            modbus_device("mu9", "multi", 9, v),
            modbus_device("rb", "main", 1, [fld("v", "int", True, address=29)], read_back=True),
            modbus_device("rc", "flaky", 1, vw),
            modbus_device("rot1", "rot", 3, [fld("x", "double", address=0, type="f64", order="CDAB"),
                                             fld("n", "int", True, address=4)]),
            modbus_device("bad-ok", "raw", 1, v),
            modbus_device("bad-unit", "raw", 2, v),
            modbus_device("bad-short", "raw", 3, [fld("v", "long", address=0, type="u32")]),
            modbus_device("bad-trunc", "raw", 4, v),
            modbus_device("bad-garbage", "raw", 5, v),
            modbus_device("bad-rb", "raw", 6, vw, read_back=True),
            modbus_device("busy", "raw", 8, vw),
            modbus_device("picky", "raw", 9, vw),
            modbus_device("deaf", "raw", 10, vw),
            modbus_device("hangup", "raw", 11, v),
        ]
        if self.pty:
            devices.append(modbus_device("rtu1", "rtu", 5, [
                fld("t", "double", address=0, type="f32", order="CDAB"),
                fld("n", "int", True, address=2),
                fld("relay", "bool", True, register="coil", address=0),
                fld("alarm", "bool", register="discrete", address=1)]))
        gw = self.env.new_gateway()
        text = gateway_toml(self.env.prosody, gw.state_dir, devices, ACCESS) + modbus_sections(connections)
        gw.write_raw_config(text)
        gw.start()
        self.alice = XmppClient(self.env.prosody, "alice", resource="modbus")
        self.env.clients.append(self.alice)
        self.alice.connect()
        self.bob = XmppClient(self.env.prosody, "bob", resource="modbus")
        self.env.clients.append(self.bob)
        self.bob.connect()

    # the hand-written server's answers, per unit:
    #   1 correct, reads and writes          6 acknowledges writes but keeps its value
    #   2 answers as unit 12                 8 refuses writes: exception 06 (busy)
    #   3 one register short                 9 refuses writes: exception 03 (illegal value)
    #   4 truncated frame, then silence     10 never answers writes
    #   5 not Modbus (protocol id 0x1234)  11 closes the connection
    def raw_answer(self, tid: int, unit: int, pdu: bytes) -> bytes | None:
        if pdu[0] == 6:  # write single register
            _fc, _addr, value = struct.unpack(">BHH", pdu[:5])
            if unit in (1, 6):  # acknowledged (echo); only unit 1 stores it
                if unit == 1:
                    self.raw_values[1] = [value]
                return RawModbusTcp.mbap(tid, unit, pdu[:5])
            if unit == 8:  # exception 06, server device busy
                return RawModbusTcp.mbap(tid, unit, bytes([0x86, 6]))
            if unit == 9:  # exception 03, illegal data value
                return RawModbusTcp.mbap(tid, unit, bytes([0x86, 3]))
            return None  # unit 10 ignores writes
        if pdu[0] != 3:
            return RawModbusTcp.mbap(tid, unit, bytes([pdu[0] | 0x80, 1]))
        if unit in (1, 6, 8, 9, 10):  # correct
            return read_holding_reply(tid, unit, pdu, self.raw_values[unit])
        if unit == 2:  # a correct answer, but from unit 12
            return read_holding_reply(tid, 12, pdu, self.raw_values[2])
        if unit == 3:  # one register fewer than asked, consistently framed
            _fc, _addr, count = struct.unpack(">BHH", pdu[:5])
            n = count - 1
            body = struct.pack(">BB", 3, 2 * n) + b"\x00\x03" * n
            return RawModbusTcp.mbap(tid, unit, body)
        if unit == 4:  # the header announces 5 bytes; 3 arrive, then nothing
            return struct.pack(">HHHB", tid, 0, 5, unit) + bytes([3, 2])
        if unit == 5:  # not Modbus: protocol id 0x1234
            return struct.pack(">HHHB", tid, 0x1234, 5, unit) + bytes([3, 2, 0, 5])
        if unit == 11:  # hangs up
            return RawModbusTcp.CLOSE
        return None

    def dev(self, device_id: str) -> str:
        return self.env.dev(device_id)

    @property
    def gw(self):
        return self.env.gateway

    def client(self) -> XmppClient:
        if self.alice.xmpp is None:
            self.alice.connect()
        return self.alice

    def assert_alive(self) -> None:
        assert self.gw.running, f"gateway died\n{self.gw.log_tail()}"
        assert "panicked" not in self.gw.log_text(), f"panic in the gateway log\n{self.gw.log_tail()}"

    # -- XEP-0323 / XEP-0325

    def readout(self, device_id: str, fields: tuple[str, ...] = (), timeout: float = 10.0,
                client: XmppClient | None = None) -> Readout:
        c = client or self.client()
        jid = self.dev(device_id)
        seqnr = next(self.seq)
        with c.cond:
            mark = len(c.messages)
        inner = "".join(f"<field name='{f}'/>" for f in fields)
        r = c.iq(f"<iq type='get' to='{jid}'><req xmlns='{NS_SD}' seqnr='{seqnr}' momentary='true'>"
                 f"{inner}</req></iq>")
        assert r.ok, f"readout refused: {r.condition} {r.text}"
        acc = r.xml.find(f"{{{NS_SD}}}accepted")
        assert acc is not None and acc.get("seqnr") == str(seqnr), ET.tostring(r.xml, encoding="unicode")

        def mine(m: ET.Element) -> list[ET.Element]:
            return [p for p in m if p.tag.startswith(f"{{{NS_SD}}}") and p.get("seqnr") == str(seqnr)]

        def ended(m: ET.Element) -> bool:
            return any(p.get("done") == "true" for p in mine(m))

        c.wait_message(ended, since=mark, timeout=timeout)
        with c.cond:
            msgs = c.messages[mark:]
        out = Readout(seqnr)
        for m in msgs:
            for p in mine(m):
                out.payloads.append(p)
                if p.tag == f"{{{NS_SD}}}fields":
                    for ts in p.iter(f"{{{NS_SD}}}timestamp"):
                        for f in ts:
                            name = f.get("name", "")
                            assert name not in out.values, f"{name} reported twice"
                            out.values[name] = (f.tag.split("}", 1)[1], f.get("value", ""))
                elif p.tag == f"{{{NS_SD}}}failure":
                    out.failures += [(e.text or "") for e in p.iter(f"{{{NS_SD}}}error")]
        return out

    def set(self, device_id: str, params: list[tuple[str, str, str]]) -> IqReply:
        inner = "".join(f"<{t} name='{n}' value='{v}'/>" for t, n, v in params)
        return self.client().iq(f"<iq type='set' to='{self.dev(device_id)}'><set xmlns='{NS_CTL}'>{inner}</set></iq>")

    def close(self) -> None:
        for s in self.servers:
            s.close()
        if self.raw:
            self.raw.close()
        if self.env:
            self.env.close()
        if self.pty:
            self.pty.close()
        if os.environ.get("FIELDGATE_E2E_KEEP") != "1":
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def mb():
    try:
        import pymodbus  # noqa: F401 - the server subprocess runs with this interpreter
    except ImportError:
        pytest.fail("pymodbus is not installed: bash tests/run.sh installs tests/e2e/requirements.txt into .venv")
    w = ModbusWorld()
    try:
        w.start()
        yield w
    finally:
        w.close()


def set_response_code(r: IqReply) -> str | None:
    sr = r.xml.find(f"{{{NS_CTL}}}setResponse")
    return None if sr is None else sr.get("responseCode")


def param_errors(r: IqReply) -> dict[str, str]:
    err = r.xml.find(f"{{{NS_CLIENT}}}error")
    assert err is not None, ET.tostring(r.xml, encoding="unicode")
    return {p.get("var", ""): (p.text or "") for p in err.iter(f"{{{NS_CTL}}}paramError")}


def brief(r: IqReply) -> str:
    return ET.tostring(r.xml, encoding="unicode")


def assert_ok(r: IqReply) -> None:
    assert r.ok, f"set failed: {r.condition} {r.text}: {brief(r)}"
    assert set_response_code(r) == "OK", brief(r)


def as_double(text: str) -> float:
    return float(text)


# --------------------------------------------------------------------------------------
# 1. every type and byte order over Modbus TCP


def test_tcp_readout_every_type_and_byte_order(mb):
    s = mb.main
    s.set(1, "holding", 0, [54321])
    s.set(1, "holding", 1, encode("i16", -1234))
    s.set(1, "holding", 2, encode("i32", -123456789, "CDAB"))
    s.set(1, "holding", 4, encode("u32", 3_000_000_123, "CDAB"))
    s.set(1, "holding", 6, encode("f32", 123.456, "ABCD"))
    s.set(1, "holding", 8, encode("f32", -0.0625, "CDAB"))
    s.set(1, "holding", 10, encode("f64", 12345.678901234, "ABCDEFGH"))
    s.set(1, "holding", 14, [0x5A08])  # bits 3, 9, 11, 12, 14 set; bit 4 clear
    s.set(1, "holding", 15, encode_string("Pump-7", 4))
    s.set(1, "holding", 19, [2])
    s.set(1, "holding", 20, [0x3412])
    s.set(1, "holding", 21, encode("f32", 1.1, "DCBA"))
    s.set(1, "holding", 23, encode("i64", -1234567890123, "BADCFEHG"))
    s.set(1, "coils", 0, [True, False, False, False, False, True])
    s.set(1, "discrete", 0, [False, False, True, False] + [False] * 6 + [True])
    s.set(1, "input", 0, [777, 0] + encode("f32", 50.25, "CDAB") + encode("i32", -2))

    # expectations from what pymodbus holds, decoded here with struct
    h = s.get(1, "holding", 0, 27)
    coils = s.get(1, "coils", 0, 6)
    di = s.get(1, "discrete", 0, 11)
    ir = s.get(1, "input", 0, 6)
    label = b"".join(r.to_bytes(2, "big") for r in h[15:19]).split(b"\0")[0].decode()
    expect = {
        "u16": ("int", str(h[0])),
        "i16s": ("numeric", f"{decode('i16', h[1:2]) * 0.1:.1f}"),
        "i32c": ("int", str(decode("i32", h[2:4], "CDAB"))),
        "u32c": ("long", str(decode("u32", h[4:6], "CDAB"))),
        "f32a": ("numeric", f32_shortest(decode("f32", h[6:8], "ABCD"))),
        "f32c": ("numeric", f32_shortest(decode("f32", h[8:10], "CDAB"))),
        "f64": ("numeric", repr(decode("f64", h[10:14]))),
        "flag3": ("boolean", str(bool(h[14] >> 3 & 1)).lower()),
        "flag4": ("boolean", str(bool(h[14] >> 4 & 1)).lower()),
        "flag9": ("boolean", str(bool(h[14] >> 9 & 1)).lower()),
        "label": ("string", label),
        "mode": ("enum", ENUM[h[19]]),
        "u16ba": ("int", str(decode("u16", h[20:21], "BA"))),
        "f32d": ("numeric", f32_shortest(decode("f32", h[21:23], "DCBA"))),
        "i64b": ("long", str(decode("i64", h[23:27], "BADCFEHG"))),
        "coil0": ("boolean", str(coils[0]).lower()),
        "coil1": ("boolean", str(coils[1]).lower()),
        "coil5": ("boolean", str(coils[5]).lower()),
        "di2": ("boolean", str(di[2]).lower()),
        "di3": ("boolean", str(di[3]).lower()),
        "di10": ("boolean", str(di[10]).lower()),
        "ir0": ("int", str(ir[0])),
        "irf": ("numeric", f32_shortest(decode("f32", ir[2:4], "CDAB"))),
        "iri": ("int", str(decode("i32", ir[4:6]))),
    }
    # the test data itself is what was meant (a typo in the encoders would hide here)
    assert expect["i16s"][1] == "-123.4" and expect["u32c"][1] == "3000000123"
    assert expect["f32a"][1] == "123.456" and expect["f32d"][1] == "1.1" and expect["label"][1] == "Pump-7"
    assert expect["u16ba"][1] == "4660" and expect["mode"][1] == "hot-water" and expect["irf"][1] == "50.25"
    assert [expect[f][1] for f in ("flag3", "flag4", "flag9")] == ["true", "false", "true"]

    r = mb.readout("plc")
    assert not r.failures, r.failures
    got = {k: v for k, v in r.values.items() if k in expect}
    assert got == expect, "readout differs from the pymodbus datastore:\n" + "\n".join(
        f"  {k}: got {got.get(k)} expected {expect[k]}" for k in expect if got.get(k) != expect[k])
    assert as_double(r.value("f64")) == decode("f64", h[10:14])

    # the poller merged the holding registers 0..26 into one FC03 (max_gap 10, ≤ 125)
    reqs = s.requests()
    assert any(q["unit"] == 1 and q["fc"] == 3 and q["address"] == 0 and q["count"] == 27 for q in reqs), \
        f"no merged FC03 0+27 among {reqs[-20:]}"

    # a change in the datastore shows in the next readout (max_age 0s: read, not cached)
    s.set(1, "holding", 0, [12])
    s.set(1, "coils", 5, [False])
    r = mb.readout("plc", ("u16", "coil5"))
    assert r.values == {"u16": ("int", "12"), "coil5": ("boolean", "false")}, r.values


# --------------------------------------------------------------------------------------
# 2. writes


def test_writes_land_in_the_datastore(mb):
    s = mb.main
    s.set(1, "holding", 14, [0x5A08])
    s.set(1, "coils", 0, [True, False])
    s.set(1, "holding", 19, [0])
    mark = len(s.requests())

    # f32, word-swapped: 1.1 as the nearest f32, registers low word first
    assert_ok(mb.set("plc", [("double", "f32c", "1.1")]))
    assert s.get(1, "holding", 8, 2) == encode("f32", 1.1, "CDAB")
    assert decode("f32", s.get(1, "holding", 8, 2), "CDAB") == f32(1.1)

    # a scaled i16: -12.3 / 0.1 = -123 = 0xFF85
    assert_ok(mb.set("plc", [("double", "i16s", "-12.3")]))
    assert s.get(1, "holding", 1) == [0xFF85]

    # coils, both ways
    assert_ok(mb.set("plc", [("boolean", "coil1", "true")]))
    assert_ok(mb.set("plc", [("boolean", "coil0", "false")]))
    assert s.get(1, "coils", 0, 2) == [False, True]

    # one bit of a register: the other 15 bits stay
    assert_ok(mb.set("plc", [("boolean", "flag3", "false")]))
    assert s.get(1, "holding", 14) == [0x5A00]
    assert_ok(mb.set("plc", [("boolean", "flag3", "true")]))
    assert s.get(1, "holding", 14) == [0x5A08]

    # an enum label: its register value
    assert_ok(mb.set("plc", [("string", "mode", "eco")]))
    assert s.get(1, "holding", 19) == [3]

    writes = [q for q in s.requests(mark) if q["fc"] in WRITE_FCS]
    by_fc = {}
    for q in writes:
        by_fc.setdefault(q["fc"], []).append(q)
    assert [(q["address"], q["values"]) for q in by_fc.get(16, [])] == [(8, encode("f32", 1.1, "CDAB"))], writes
    assert [(q["address"], q["values"]) for q in by_fc.get(6, [])] == [(1, [0xFF85]), (19, [3])], writes
    assert sorted(q["address"] for q in by_fc.get(5, [])) == [0, 1], writes
    # the bit went with Mask Write Register (FC22), not read-modify-write
    assert [q["address"] for q in by_fc.get(22, [])] == [14, 14], writes

    # read back through the gateway
    r = mb.readout("plc", ("f32c", "i16s", "coil0", "coil1", "flag3", "mode"))
    assert r.values == {"f32c": ("numeric", "1.1"), "i16s": ("numeric", "-12.3"), "coil0": ("boolean", "false"),
                        "coil1": ("boolean", "true"), "flag3": ("boolean", "true"), "mode": ("enum", "eco")}, r.values


def test_write_out_of_range_is_refused_and_nothing_written(mb):
    s = mb.main
    before = s.get(1, "holding", 0, 27)
    coils = s.get(1, "coils", 0, 2)
    mark = len(s.requests())
    # i16 with scale 0.1 holds -3276.8 ..= 3276.7
    r = mb.set("plc", [("boolean", "coil0", "true"), ("double", "i16s", "4000")])
    assert r.type == "error" and r.condition == "bad-request", brief(r)
    assert "i16s" in param_errors(r), brief(r)
    assert "coil0" not in param_errors(r), brief(r)
    # not a whole number of steps, an unknown label
    r = mb.set("plc", [("double", "i16s", "1.25")])
    assert r.type == "error" and r.condition == "bad-request" and "whole" in r.text, brief(r)
    r = mb.set("plc", [("string", "mode", "turbo")])
    assert r.type == "error" and r.condition == "bad-request" and "mode" in param_errors(r), brief(r)
    time.sleep(0.5)  # a few poll cycles: anything sent would be in the log by now
    assert [q for q in s.requests(mark) if q["fc"] in WRITE_FCS] == []
    assert s.get(1, "holding", 0, 27) == before
    assert s.get(1, "coils", 0, 2) == coils


# --------------------------------------------------------------------------------------
# 3. several units behind one TCP connection


def test_units_behind_one_connection_and_missing_units(mb):
    s, c = mb.multi, mb.client()
    s.set(1, "holding", 0, [111] + encode("i16", -11))
    s.set(2, "holding", 0, [222] + encode("i16", -22))
    jids = {d: mb.dev(d) for d in ("mu1", "mu2", "mu7", "mu9")}
    m = c.mark()
    for j in jids.values():
        c.subscribe(j)
    up1 = c.wait_presence(jids["mu1"], "available", m)
    up2 = c.wait_presence(jids["mu2"], "available", m)
    # unit 7 never answers (pymodbus ignore_missing_devices): unavailable, with the reason
    p7 = c.wait_presence(jids["mu7"], "unavailable", m, timeout=10, pred=lambda p: "no answer" in p.status)
    assert "unit 7" in p7.status, p7.status

    for round_ in range(3):
        a, b = 100 + round_, 200 + round_
        s.set(1, "holding", 0, [a])
        s.set(2, "holding", 0, [b])
        r1, r2 = mb.readout("mu1"), mb.readout("mu2")
        assert r1.values == {"v": ("int", str(a)), "w": ("int", "-11")}, (r1.values, r1.failures)
        assert r2.values == {"v": ("int", str(b)), "w": ("int", "-22")}, (r2.values, r2.failures)
        assert not r1.failures and not r2.failures

    # unit 9 is not in pymodbus' context: pymodbus 3.16 answers exception 04 (its SimCore
    # raises KeyError for an unknown unit). The gateway must say so: presence unavailable
    # with a reason, or a <failure> naming the exception.
    r9 = mb.readout("mu9")
    assert not r9.values and r9.failures, (r9.values, r9.failures)
    p9 = [p for p in c.presences_since(m, jids["mu9"]) if p.type == "unavailable" and "starting" not in p.status]
    assert p9 or any("server device failure (04)" in f for f in r9.failures), \
        f"unit 9: neither unavailable with a reason nor a failure naming the exception: {r9.failures}"
    r7 = mb.readout("mu7")
    assert not r7.values and any("no answer from unit 7" in f for f in r7.failures), r7.failures

    # the gateway did ask units 7 and 9 on the same connection
    units = {q["unit"] for q in s.requests()}
    assert {1, 2, 7, 9} <= units, units
    # units 1 and 2 stayed available throughout
    c.barrier(mb.env.domain)
    for d, up in (("mu1", up1), ("mu2", up2)):
        downs = [p for p in c.presences_since(m, jids[d]) if p.type == "unavailable" and p.at > up.at]
        assert not downs, f"{d} went unavailable: {[(p.status) for p in downs]}"
    mb.assert_alive()


# --------------------------------------------------------------------------------------
# 4. Modbus exceptions


def test_illegal_address_read_and_write(mb):
    s = mb.main
    s.set(1, "holding", 100, [4100])
    s.set(1, "input", 6, [606])
    r = mb.readout("gaps")
    assert r.values == {"ok_h": ("int", "4100"), "ok_i": ("int", "606")}, (r.values, r.failures)
    assert len(r.failures) == 1, r.failures
    assert "illegal data address" in r.failure_for("hole"), r.failures
    # failures come after the values and end the readout
    kinds = [p.tag.split("}", 1)[1] for p in r.payloads]
    assert kinds == ["fields", "failure"], kinds

    mark = len(s.requests())
    w = mb.set("gaps", [("int", "hole", "5")])
    assert w.type == "error" and w.condition == "item-not-found", brief(w)
    assert "illegal data address" in w.text, w.text
    assert set_response_code(w) == "NotFound", brief(w)
    # the write did reach pymodbus (which refused it)
    assert any(q["fc"] in (6, 16) and q["address"] == 60 for q in s.requests(mark)), s.requests(mark)


# --------------------------------------------------------------------------------------
# 5. reconnect after the server died


def test_reconnect_after_server_restart(mb):
    s, c, gw = mb.flaky, mb.client(), mb.gw
    rc = mb.dev("rc")
    pid = gw.pid
    m = c.mark()
    c.subscribe(rc)
    c.wait_presence(rc, "available", m)
    s.set(1, "holding", 0, [4321])
    assert mb.readout("rc").values == {"v": ("int", "4321")}

    m = c.mark()
    t0 = time.monotonic()
    s.kill()
    down = c.wait_presence(rc, "unavailable", m, timeout=10)
    assert time.monotonic() - t0 < 5, "unavailable took more than a few poll intervals"
    assert down.status and "flaky" in down.status, f"no reason naming the connection: {down.status!r}"
    # reconnecting fails while the server is away: the reason follows, without the host and
    # port (every subscriber sees the status)
    refused = c.wait_presence(rc, "unavailable", m, timeout=10, pred=lambda p: "cannot connect" in p.status)
    assert "127.0.0.1" not in refused.status and f":{s.port}" not in refused.status, refused.status
    # alice holds the control right: her readout says where the gateway tried to connect
    r = mb.readout("rc")
    assert not r.values and r.failures and "flaky" in r.failures[0], r.failures
    assert f"127.0.0.1:{s.port}" in r.failures[0], r.failures
    # bob may only read: the same sentence without the host and port
    rb = mb.readout("rc", client=mb.bob)
    assert not rb.values and rb.failures and "cannot connect" in rb.failures[0], rb.failures
    assert "127.0.0.1" not in rb.failures[0] and f":{s.port}" not in rb.failures[0], rb.failures
    # a write to a device that is down: nothing applied, try later
    w = mb.set("rc", [("int", "v", "1")])
    assert w.type == "error" and (w.condition, w.error_type) == ("service-unavailable", "wait"), brief(w)

    m = c.mark()
    s.start()
    s.set(1, "holding", 0, [9876])
    c.wait_presence(rc, "available", m, timeout=20)
    r = mb.readout("rc")
    assert r.values == {"v": ("int", "9876")}, (r.values, r.failures)
    assert_ok(mb.set("rc", [("int", "v", "5")]))
    assert s.get(1, "holding", 0) == [5]
    assert gw.running and gw.pid == pid, "the gateway restarted"
    mb.assert_alive()


# --------------------------------------------------------------------------------------
# 6. RTU on a serial line (a pty pair), RTU over TCP


def test_rtu_over_pty(mb):
    assert mb.pty is not None, "socat not found on PATH: install the Debian package 'socat' (tests/e2e/deps.sh does)"
    s = mb.rtu
    assert mb.pty.running, mb.pty.describe()
    s.set(5, "holding", 0, encode("f32", 21.5, "CDAB") + [77])
    s.set(5, "discrete", 1, [True])
    r = mb.readout("rtu1")
    h = s.get(5, "holding", 0, 3)
    assert r.values == {"t": ("numeric", f32_shortest(decode("f32", h[0:2], "CDAB"))), "n": ("int", str(h[2])),
                        "relay": ("boolean", "false"), "alarm": ("boolean", "true")}, (r.values, r.failures)
    assert r.values["t"][1] == "21.5"

    assert_ok(mb.set("rtu1", [("int", "n", "4242")]))
    assert s.get(5, "holding", 2) == [4242]
    assert_ok(mb.set("rtu1", [("boolean", "relay", "true")]))
    assert s.get(5, "coils", 0) == [True]
    r = mb.readout("rtu1", ("n", "relay"))
    assert r.values == {"n": ("int", "4242"), "relay": ("boolean", "true")}, (r.values, r.failures)


def test_rtu_over_tcp(mb):
    s = mb.rot
    # on a four-register value, CDAB means GHEFCDAB (README, byte order)
    s.set(3, "holding", 0, encode("f64", -98765.4321, "GHEFCDAB") + [5])
    r = mb.readout("rot1")
    h = s.get(3, "holding", 0, 5)
    assert r.values == {"x": ("numeric", repr(decode("f64", h[0:4], "GHEFCDAB"))), "n": ("int", "5")}, \
        (r.values, r.failures)
    assert r.values["x"][1] == "-98765.4321"
    assert_ok(mb.set("rot1", [("int", "n", "65535")]))
    assert s.get(3, "holding", 4) == [65535]
    assert {q["fc"] for q in s.requests()} >= {3, 6}


# --------------------------------------------------------------------------------------
# 7. bad answers: wrong unit, short answer, truncated frame, not Modbus


def test_bad_answers_get_clear_errors_and_others_keep_working(mb):
    c = mb.client()
    ok, trunc, garbage = mb.dev("bad-ok"), mb.dev("bad-trunc"), mb.dev("bad-garbage")
    m = c.mark()
    for d in ("bad-ok", "bad-unit", "bad-short", "bad-trunc", "bad-garbage"):
        c.subscribe(mb.dev(d))
    up = c.wait_presence(ok, "available", m)
    # a frame that stops short: no answer within the timeout
    pt = c.wait_presence(trunc, "unavailable", m, pred=lambda p: "no answer" in p.status)
    assert "unit 4" in pt.status, pt.status
    # not Modbus at all (protocol id 0x1234): the link is dropped, the reason says why
    pg = c.wait_presence(garbage, "unavailable", m, pred=lambda p: "raw" in p.status)
    assert "protocol" in pg.status.lower(), pg.status

    def bad_readout(device: str) -> Readout:
        """A readout of `device`, again while it races the `hangup` unit on the shared
        connection: that unit's hang-up closes the connection for every unit on it, and a
        read under way then fails as "the peer closed the connection" (correctly)."""
        for _ in range(5):
            r = mb.readout(device)
            assert not r.values, f"{device}: a bad answer was taken for a value: {r.values}"
            if not any("peer closed the connection" in f for f in r.failures):
                return r
        return r

    for i in range(3):
        mb.raw_values[1] = [1000 + i]
        r = mb.readout("bad-ok")
        assert r.values == {"v": ("int", str(1000 + i))} and not r.failures, (r.values, r.failures)
        ru = bad_readout("bad-unit")
        assert not ru.values, f"an answer from unit 12 was taken for unit 2's: {ru.values}"
        assert "bad answer from unit 2" in ru.failure_for("v"), ru.failures
        rs = bad_readout("bad-short")
        assert not rs.values, rs.values
        assert "short answer" in rs.failure_for("v"), rs.failures
        rt = bad_readout("bad-trunc")
        assert not rt.values and "no answer from unit 4" in rt.failure_for("v"), rt.failures

    c.barrier(mb.env.domain)
    downs = [p for p in c.presences_since(m, ok) if p.type == "unavailable" and p.at > up.at]
    assert not downs, f"bad-ok went unavailable: {[p.status for p in downs]}"
    assert mb.raw.requests_for(2) and mb.raw.requests_for(3) and mb.raw.requests_for(4)
    # the TCP devices on other connections are unaffected
    assert mb.readout("plc", ("u16",)).values.keys() == {"u16"}
    mb.assert_alive()


def test_unreachable_reason_is_not_repeated(mb):
    """A readout of a device that is down says "link down" once, not "link down: link down"."""
    c = mb.client()
    g = mb.dev("bad-garbage")
    m = c.mark()
    c.subscribe(g)
    c.wait_presence(g, "unavailable", m, pred=lambda p: "raw" in p.status)
    r = mb.readout("bad-garbage")
    f = r.failure_for("v")
    assert "link down" in f, f
    assert "link down: link down" not in f, f"the reason is prefixed twice: {f!r}"


def test_peer_closing_the_connection_is_reported_as_such(mb):
    """A server that closes the connection instead of answering: the reason says the
    connection was closed (not a stale errno such as "Resource temporarily unavailable")."""
    c = mb.client()
    h = mb.dev("hangup")
    m = c.mark()
    c.subscribe(h)
    p = c.wait_presence(h, "unavailable", m, pred=lambda p: "raw" in p.status)
    assert re.search(r"clos|eof|reset|end of", p.status, re.I), f"unclear reason: {p.status!r}"
    assert mb.readout("bad-ok").values == {"v": ("int", str(mb.raw_values[1][0]))}


# --------------------------------------------------------------------------------------
# Modbus exceptions and confirmations on writes


def test_write_errors_map_to_xmpp_errors(mb):
    raw = mb.raw
    # exception 06: busy, try later
    w = mb.set("busy", [("int", "v", "1")])
    assert (w.type, w.condition, w.error_type) == ("error", "resource-constraint", "wait"), brief(w)
    assert "busy" in w.text, w.text
    # exception 03: the device refuses the value
    w = mb.set("picky", [("int", "v", "1")])
    assert (w.type, w.condition, w.error_type) == ("error", "not-acceptable", "modify"), brief(w)
    assert "illegal data value" in w.text, w.text
    # no answer to the write within the connection's timeout
    w = mb.set("deaf", [("int", "v", "1")])
    assert (w.type, w.condition, w.error_type) == ("error", "remote-server-timeout", "wait"), brief(w)
    # read_back: acknowledged, but the register still holds its old value
    n = raw.requests_for(6)
    w = mb.set("bad-rb", [("int", "v", "99")])
    assert (w.type, w.condition, w.error_type) == ("error", "not-acceptable", "modify"), brief(w)
    assert "read back" in w.text, w.text
    with raw._lock:
        sent = [pdu[0] for u, pdu in raw.requests if u == 6][n:]
    assert 6 in sent and 3 in sent[sent.index(6):], f"no write then read-back: {sent}"
    # none of them changed anything, and reads still work
    for d, unit in (("busy", 8), ("picky", 9), ("deaf", 10), ("bad-rb", 6)):
        r = mb.readout(d)
        assert r.values == {"v": ("int", str(unit))}, (d, r.values, r.failures)


def test_read_back_write_confirmed(mb):
    s = mb.main
    assert_ok(mb.set("rb", [("int", "v", "777")]))
    assert s.get(1, "holding", 29) == [777]


# --------------------------------------------------------------------------------------
# 8. configuration errors


GOOD_MODBUS = """\
[xmpp]
server = "127.0.0.1:5347"
domain = "gw.example.test"
secret = "s3cret"

[access]
read = ["alice@example.test"]

[state]
dir = "state"

[[modbus.connection]]
name = "plc-lan"
transport = "tcp"
address = "127.0.0.1:1502"

[[device]]
id = "plc1"
adapter = "modbus"

[device.modbus]
connection = "plc-lan"
unit = 1

[[device.field]]
name = "speed"
type = "double"
modbus = { register = "holding", address = 10, type = "f32", order = "CDAB" }

[[device.field]]
name = "alarm"
type = "bool"
modbus = { register = "coil", address = 0 }

[[device.field]]
name = "flag"
type = "bool"
modbus = { register = "holding", address = 3, type = "bit", bit = 15 }

[[device.field]]
name = "level"
type = "int"
modbus = { register = "input", address = 0 }
"""


def test_events_follow_the_polls_and_add_no_requests(mb):
    """A subscription to a polled device (every 2s) is served from the polls: the device
    gets the same requests with and without it (the events engine used to read every
    stale field each second), a change is reported as its poll reads it, and a
    maxInterval equal to the poll period delivers every poll."""
    c = mb.client()
    jid = mb.dev("ev1")

    def requests_over(seconds: float) -> int:
        before = mb.evs.request_count()
        time.sleep(seconds)
        return mb.evs.request_count() - before

    quiet = requests_over(6.0)
    with c.cond:
        mk = len(c.messages)
    r = c.iq(f"<iq type='get' to='{jid}'><subscribe xmlns='urn:xmpp:iot:events' seqnr='77' "
             f"momentary='true' maxInterval='PT2S'><field name='v' changedBy='1'/></subscribe></iq>")
    assert r.ok, brief(r)
    try:
        busy = requests_over(6.0)
        assert busy <= quiet + 1, f"{busy} requests in 6s with a subscription, {quiet} without"
        mb.evs.set(1, "holding", 0, [4242])
        t_set = time.time()

        def events():
            out = []
            with c.cond:
                msgs = list(c.messages[mk:])
            for m in msgs:
                for f in m.iter(f"{{{NS_SD}}}fields"):
                    if f.get("seqnr") == "77":
                        out.append(f)
            return out

        def changed():
            return [f for f in events() for n in f.iter(f"{{{NS_SD}}}int")
                    if n.get("name") == "v" and n.get("value") == "4242"]

        wait_for(lambda: changed(), 6, "an event with the new value")
        stamp = parse_iso(next(changed()[0].iter(f"{{{NS_SD}}}timestamp")).get("value"))
        assert stamp >= t_set - 0.05, "the event carries the poll that read the change"
        # every poll delivered: about one event per 2s poll (maxInterval = the poll period)
        n0 = len(events())
        time.sleep(6.0)
        n = len(events()) - n0
        assert 2 <= n <= 4, f"{n} events in 6s with maxInterval = poll = 2s"
    finally:
        c.iq(f"<iq type='get' to='{jid}'><unsubscribe xmlns='urn:xmpp:iot:events' seqnr='77'/></iq>")



def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once"
    return text.replace(old, new)


# case: (config, acceptable lines (text the line starts with), words the message must contain)
BAD_MODBUS = {
    "unknown_connection": (edit(GOOD_MODBUS, 'connection = "plc-lan"', 'connection = "plc-wan"'),
                           ("[device.modbus]", 'connection = "plc-wan"'), ("plc-wan", "plc-lan")),
    "coil_as_f32": (edit(GOOD_MODBUS, 'modbus = { register = "coil", address = 0 }',
                         'modbus = { register = "coil", address = 0, type = "f32" }'),
                    ('modbus = { register = "coil"',), ("f32", "coil")),
    "bit_16": (edit(GOOD_MODBUS, "bit = 15", "bit = 16"), ('modbus = { register = "holding", address = 3',),
               ("bit", "16")),
    "writable_input_register": (edit(GOOD_MODBUS, 'type = "int"\nmodbus = { register = "input"',
                                     'type = "int"\nwritable = true\nmodbus = { register = "input"'),
                                ('modbus = { register = "input"', "writable = true"), ("writable", "input")),
}


def line_of(text: str, start: str) -> int:
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith(start)]
    assert len(hits) == 1, f"{start!r} starts {len(hits)} lines"
    return hits[0]


def readme_examples() -> dict[str, str]:
    text = (REPO_ROOT / "adapters" / "modbus" / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    out = {}
    for b in blocks:
        m = re.search(r'^id = "([^"]+)"', b, re.M)
        if m and "[[modbus.connection]]" in b:
            out[m.group(1)] = b
    return out


@pytest.mark.parametrize("example", ["meter1", "boiler", "plc1"])
def test_check_accepts_the_readme_examples(workdir, example):
    """The README's configurations are valid as written (the boiler's value-mapped enum
    field `mode` lists no `values` of its own: the labels come from the register's map)."""
    blocks = readme_examples()
    assert example in blocks, f"README example {example} not found (have {sorted(blocks)})"
    head = '[xmpp]\nserver = "127.0.0.1:5347"\ndomain = "gw.example.test"\nsecret = "s3cret"\n\n'
    (workdir / "gw.toml").write_text(head + blocks[example])
    proc = run_cli(gateway_bin(), "check", "--config", "gw.toml", cwd=workdir)
    assert proc.returncode == 0, f"README example {example} refused:\n{proc.stderr}"


def test_check_accepts_good_modbus_config(workdir):
    (workdir / "gw.toml").write_text(GOOD_MODBUS)
    proc = run_cli(gateway_bin(), "check", "--config", "gw.toml", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    # the device is read as a Modbus one with all its fields, not merely accepted
    lines = proc.stdout.splitlines()
    assert "devices: 1" in lines, proc.stdout
    assert "  plc1@gw.example.test (plc1) adapter=modbus fields=4 writable=0" in lines, proc.stdout


@pytest.mark.parametrize("case", sorted(BAD_MODBUS))
def test_check_refuses_bad_modbus_config(workdir, case):
    text, starts, words = BAD_MODBUS[case]
    (workdir / "gw.toml").write_text(text)
    proc = run_cli(gateway_bin(), "check", "--config", "gw.toml", cwd=workdir)
    assert proc.returncode == 2, f"exit {proc.returncode}, expected 2: {proc.stderr}"
    m = re.search(r"^error: (?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<rest>.*)$", proc.stderr, re.M)
    assert m, f"no 'error: FILE:LINE:COL: message' on stderr:\n{proc.stderr}"
    assert m.group("file").endswith("gw.toml"), m.group(0)
    want = {line_of(text, s) for s in starts}
    assert int(m.group("line")) in want, f"line {m.group('line')}, expected one of {sorted(want)}: {m.group(0)}"
    assert int(m.group("col")) >= 1
    for w in words:
        assert w in m.group("rest"), f"message lacks {w!r}: {m.group(0)}"
