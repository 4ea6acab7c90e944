"""A pymodbus server for the Modbus end-to-end tests, run as a subprocess by modbus_sim.py.

    python pymodbus_server.py SPEC.json

SPEC (JSON):
    transport     "tcp" (MBAP framing), "rtu-over-tcp" (RTU frames on a TCP socket) or "rtu"
    host, port    tcp, rtu-over-tcp: where to listen
    serial, baud  rtu: the serial device (one end of a pty pair) and its baud rate
    units         {"<unit id>": {"coils": [[start, count], ...], "discrete": [...],
                                 "holding": [...], "input": [...]}}
                  every address in a block starts at 0 / False; addresses outside the
                  blocks are invalid (pymodbus answers exception 02, illegal data address)
    silent_units  unit ids that do not exist and get no answer at all (a missing unit on a
                  serial line); any other unit id not in `units` gets pymodbus' own answer

Once it listens it prints one line `{"ready": true}` on stdout. Then it serves a side
channel on stdin/stdout, one JSON object per line, answered in order:
    {"op": "get", "unit": 1, "table": "holding", "address": 0, "count": 2}
        -> {"ok": true, "values": [...]}      (bools for coils / discrete)
    {"op": "set", "unit": 1, "table": "coils", "address": 3, "values": [true]}
        -> {"ok": true}
    {"op": "log", "since": 0}
        -> {"ok": true, "requests": [{"unit", "fc", "address", "count", "values",
                                      "and_mask", "or_mask"}, ...]}   (every request received)
    {"op": "ping"} -> {"ok": true}
The datastore is pymodbus' own (SimDevice/SimData, the 3.16 API); `get`/`set` go through
the same SimCore the Modbus requests use. The server exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading

from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

TABLES = ("coils", "discrete", "holding", "input")
# function codes whose block the side channel reads/writes (SimRuntime maps them)
TABLE_FC = {"coils": 1, "discrete": 2, "holding": 3, "input": 4}


def build_device(unit: int, blocks: dict) -> SimDevice:
    lists = []
    for table in TABLES:
        entries = []
        for start, count in blocks.get(table) or []:
            if table in ("coils", "discrete"):
                entries.append(SimData(start, values=[False] * count, datatype=DataType.BITS))
            else:
                entries.append(SimData(start, values=[0] * count, datatype=DataType.REGISTERS))
        if not entries:
            # pymodbus needs at least one entry per table; one far away, never used
            if table in ("coils", "discrete"):
                entries.append(SimData(60000, values=[False] * 16, datatype=DataType.BITS))
            else:
                entries.append(SimData(60000, values=[0], datatype=DataType.REGISTERS))
        lists.append(entries)
    return SimDevice(id=unit, simdata=tuple(lists))


def patch_silent(core: SimCore, spec: dict) -> None:
    silent = {int(u) for u in spec.get("silent_units", [])}
    if silent:
        # pymodbus 3.16's SimCore raises KeyError for an unknown unit (answered with
        # exception 04); a unit listed here raises NoSuchIdException instead, which the
        # server, with ignore_missing_devices=True, leaves unanswered.
        get, put = core.async_getValues, core.async_setValues

        async def async_getValues(device_id, func_code, address, count=1):
            if device_id in silent:
                raise NoSuchIdException(f"unit {device_id} is silent")
            return await get(device_id, func_code, address, count)

        async def async_setValues(device_id, func_code, address, values):
            if device_id in silent:
                raise NoSuchIdException(f"unit {device_id} is silent")
            return await put(device_id, func_code, address, values)

        core.async_getValues = async_getValues
        core.async_setValues = async_setValues


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def trace_pdu(self, sending: bool, pdu):
        if not sending:
            rec = {
                "unit": pdu.dev_id,
                "fc": pdu.function_code,
                "address": getattr(pdu, "address", None),
                "count": getattr(pdu, "count", None),
                "values": [int(b) for b in (list(pdu.registers) or list(pdu.bits))],
            }
            for k in ("and_mask", "or_mask"):
                if hasattr(pdu, k):
                    rec[k] = getattr(pdu, k)
            with self.lock:
                self.requests.append(rec)
        return pdu


async def main(spec_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    devices = [build_device(int(u), b) for u, b in spec["units"].items()]
    rec = Recorder()
    silent = bool(spec.get("silent_units"))
    transport = spec["transport"]
    common = dict(ignore_missing_devices=silent, trace_pdu=rec.trace_pdu)
    if transport in ("tcp", "rtu-over-tcp"):
        server = ModbusTcpServer(
            devices,
            framer=FramerType.SOCKET if transport == "tcp" else FramerType.RTU,
            address=(spec.get("host", "127.0.0.1"), int(spec["port"])),
            **common,
        )
    elif transport == "rtu":
        server = ModbusSerialServer(
            devices, framer=FramerType.RTU, port=spec["serial"], baudrate=int(spec.get("baud", 19200)),
            **common,
        )
    else:
        raise SystemExit(f"unknown transport {transport!r}")
    # the server's own datastore (a SimCore built from the devices) serves the requests
    # and the side channel alike
    core = server.context
    assert isinstance(core, SimCore), type(core)
    patch_silent(core, spec)
    await server.serve_forever(background=True)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    async def handle(cmd: dict) -> dict:
        op = cmd.get("op")
        if op == "ping":
            return {"ok": True}
        if op == "log":
            with rec.lock:
                return {"ok": True, "requests": rec.requests[int(cmd.get("since", 0)):]}
        unit, table, address = int(cmd["unit"]), cmd["table"], int(cmd["address"])
        fc = TABLE_FC[table]
        runtime = core.devices[unit]
        if op == "get":
            res = await runtime.async_getValues(fc, address, int(cmd["count"]))
            if not isinstance(res, list):
                return {"ok": False, "error": f"get {table} {address}: {res!r}"}
            return {"ok": True, "values": [bool(v) if table in ("coils", "discrete") else int(v) for v in res]}
        if op == "set":
            values = [bool(v) for v in cmd["values"]] if table in ("coils", "discrete") else \
                [int(v) & 0xFFFF for v in cmd["values"]]
            res = await runtime.async_setValues(fc, address, values)
            if res is not None:
                return {"ok": False, "error": f"set {table} {address}: {res!r}"}
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def stdin_reader() -> None:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                cmd = json.loads(line)
                fut = asyncio.run_coroutine_threadsafe(handle(cmd), loop)
                reply = fut.result(10)
            except Exception as e:  # noqa: BLE001 - reported to the test
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    threading.Thread(target=stdin_reader, name="side-channel", daemon=True).start()
    await done
    await server.shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main(sys.argv[1]))
