"""Modbus peers for the end-to-end tests of the modbus adapter.

- `PymodbusServer`: pymodbus (an independent Modbus implementation) in a subprocess
  (pymodbus_server.py), serving Modbus TCP, RTU over TCP, or RTU on a serial device, with a
  side channel to set and inspect its datastore and the requests it received.
- `PtyPair`: two connected pseudo-terminals from socat, a null-modem cable for RTU.
- `RawModbusTcp`: a tiny hand-written Modbus TCP server whose answers per unit id can be
  wrong on purpose (wrong unit id, short answer, truncated frame, garbage).
- Encoders of register values in every byte order, written with `struct` independently of
  the gateway's codec, and the shortest decimal of an f32.
- `modbus_sections`: `[[modbus.connection]]` tables to append to a gateway config.

Additive to harness.py: every process started here registers in harness.ACTIVE (log tails
on failure) and is stopped by `close()`.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import harness
from harness import HarnessError, SideChannel, free_port, port_open, stop_process, tail, toml_value, wait_for

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "pymodbus_server.py"

# --------------------------------------------------------------------------------------
# register encodings (independent of the gateway: struct + the README's byte-order table)

STRUCT = {"u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "u64": ">Q", "i64": ">q",
          "f32": ">f", "f64": ">d"}


def order_regs(big_endian: bytes, order: str) -> list[int]:
    """Registers on the wire of a value given as its big-endian bytes (A first).

    `order` as in the README: ABCD (AB, ABCDEFGH) = as is; BADC = bytes swapped inside each
    register; CDAB = registers in reverse order; DCBA = both."""
    swap_bytes = order.startswith("BA") or order.startswith("DC") or order.startswith("HG")
    reverse_regs = order[0] in "CDGH" and len(big_endian) > 2
    regs = [big_endian[i:i + 2] for i in range(0, len(big_endian), 2)]
    if reverse_regs:
        regs.reverse()
    if swap_bytes:
        regs = [r[::-1] for r in regs]
    return [int.from_bytes(r, "big") for r in regs]


def encode(kind: str, value: Any, order: str = "ABCD") -> list[int]:
    return order_regs(struct.pack(STRUCT[kind], value), order)


def decode(kind: str, regs: list[int], order: str = "ABCD") -> Any:
    """Inverse of encode()."""
    raw = b"".join(r.to_bytes(2, "big") for r in regs)
    # each of the two swaps is its own inverse
    be = b"".join(r.to_bytes(2, "big") for r in order_regs(raw, order))
    return struct.unpack(STRUCT[kind], be)[0]


def encode_string(text: str, length: int, order: str = "AB") -> list[int]:
    data = text.encode()
    assert len(data) <= 2 * length
    data = data.ljust(2 * length, b"\0")
    regs = [data[i:i + 2] for i in range(0, len(data), 2)]
    if order in ("BA", "BADC", "DCBA"):
        regs = [r[::-1] for r in regs]
    return [int.from_bytes(r, "big") for r in regs]


def f32(x: float) -> float:
    """`x` rounded to the nearest f32."""
    return struct.unpack(">f", struct.pack(">f", x))[0]


def f32_shortest(x: float) -> str:
    """The shortest decimal that reads back as the same f32 (what the README promises)."""
    x = f32(x)
    for digits in range(1, 10):
        s = f"{x:.{digits}g}"
        if f32(float(s)) == x:
            return s
    return repr(x)


# --------------------------------------------------------------------------------------
# pymodbus in a subprocess


class PymodbusServer(SideChannel):
    """pymodbus serving `units` (`{unit: {"holding": [(start, count)], ...}}`).

    transport "tcp" / "rtu-over-tcp": on 127.0.0.1:`port` (a free port by default; fixed for
    the object's life, so kill()/start() restarts it on the same port); "rtu": on the serial
    device `serial` (one end of a PtyPair).
    """

    def __init__(self, workdir: Path, name: str, units: dict[int, dict[str, list[tuple[int, int]]]],
                 transport: str = "tcp", port: int | None = None, serial: str | None = None,
                 baud: int = 19200, silent_units: tuple[int, ...] = ()):
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.transport = transport
        self.port = port if port is not None else (free_port() if transport != "rtu" else None)
        self.serial = serial
        self.units = units
        self.spec_path = self.dir / f"{name}.json"
        self.log_path = self.dir / f"{name}.log"
        spec = {
            "transport": transport, "host": "127.0.0.1", "port": self.port, "serial": serial, "baud": baud,
            "units": {str(u): {t: [list(b) for b in blocks] for t, blocks in tables.items()}
                      for u, tables in units.items()},
            "silent_units": list(silent_units),
        }
        self.spec_path.write_text(json.dumps(spec, indent=1))
        self.proc: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self.starts = 0
        harness.ACTIVE.append(self)

    # -- lifecycle

    def spawn(self) -> "PymodbusServer":
        """Start the process without waiting (see wait_ready)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self.starts += 1
        self._lines = queue.Queue()
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n===== modbus_sim: start #{self.starts} =====\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                [sys.executable, str(SERVER_SCRIPT), str(self.spec_path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf,
                text=True, bufsize=1, cwd=self.dir, start_new_session=True,
            )
        lines = self._lines
        out = self.proc.stdout

        def reader() -> None:
            for line in out:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=reader, name=f"{self.name}-stdout", daemon=True).start()
        return self

    def wait_ready(self, timeout: float = 20.0) -> "PymodbusServer":
        reply = self._read(timeout, "the ready line")
        if not reply.get("ready"):
            raise HarnessError(f"{self.name}: unexpected first line {reply}")
        if self.port is not None:
            wait_for(lambda: port_open(self.port), timeout, f"{self.name} to listen on :{self.port}")
        return self

    def start(self, timeout: float = 20.0) -> "PymodbusServer":
        return self.spawn().wait_ready(timeout)

    def kill(self) -> None:
        """SIGKILL: the peer vanishes without closing anything politely."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.port is not None:
            wait_for(lambda: not port_open(self.port), 10, f"{self.name}'s port to close")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the server exits at EOF on its side channel
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                stop_process(self.proc, signal.SIGKILL, 5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        self.stop()
        if self in harness.ACTIVE:
            harness.ACTIVE.remove(self)

    def describe(self) -> str:
        where = f"port {self.port}" if self.port else f"serial {self.serial}"
        return f"pymodbus {self.name} ({self.transport}, {where}) log tail:\n{tail(self.log_path, 40)}"

    # -- side channel


    def get(self, unit: int, table: str, address: int, count: int = 1) -> list:
        return self.call(op="get", unit=unit, table=table, address=address, count=count)["values"]

    def set(self, unit: int, table: str, address: int, values: list) -> None:
        self.call(op="set", unit=unit, table=table, address=address, values=list(values))

    def requests(self, since: int = 0) -> list[dict]:
        """Every request the server received (after the first `since`), in order."""
        return self.call(op="log", since=since)["requests"]

    def request_count(self) -> int:
        return len(self.requests())

    # typed helpers on holding/input registers

    def set_value(self, unit: int, table: str, address: int, kind: str, value: Any, order: str = "ABCD") -> list[int]:
        regs = encode(kind, value, order)
        self.set(unit, table, address, regs)
        return regs

    def get_value(self, unit: int, table: str, address: int, kind: str, order: str = "ABCD") -> Any:
        n = struct.calcsize(STRUCT[kind]) // 2
        return decode(kind, self.get(unit, table, address, n), order)


# --------------------------------------------------------------------------------------
# a pseudo-terminal pair (socat)


class PtyPair:
    """`socat -d -d pty,raw,echo=0 pty,raw,echo=0`: two pty slaves wired back to back."""

    PTY_RE = re.compile(r"PTY is (\S+)")

    def __init__(self, workdir: Path):
        self.dir = Path(workdir).resolve()
        self.log_path = self.dir / "socat.log"
        self.paths: list[str] = []
        self.proc: subprocess.Popen | None = None
        self._lines: list[str] = []
        self._cond = threading.Condition()
        harness.ACTIVE.append(self)

    def start(self, timeout: float = 10.0) -> "PtyPair":
        import shutil

        socat = shutil.which("socat")
        if not socat:
            raise HarnessError("socat not found on PATH (install the Debian package 'socat')")
        self.proc = subprocess.Popen(
            [socat, "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )
        err = self.proc.stderr

        def reader() -> None:
            with open(self.log_path, "a") as logf:
                for line in err:
                    logf.write(line)
                    logf.flush()
                    with self._cond:
                        self._lines.append(line)
                        self._cond.notify_all()

        threading.Thread(target=reader, name="socat-stderr", daemon=True).start()

        def ready():
            if self.proc.poll() is not None:
                raise HarnessError(f"socat exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            with self._cond:
                text = "".join(self._lines)
            paths = self.PTY_RE.findall(text)
            return paths if len(paths) == 2 and "starting data transfer loop" in text else None

        self.paths = wait_for(ready, timeout, "socat to create two ptys")
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, signal.SIGTERM, 5)
        if self in harness.ACTIVE:
            harness.ACTIVE.remove(self)

    def describe(self) -> str:
        return f"socat {self.paths} running={self.running}:\n{tail(self.log_path, 20)}"


# --------------------------------------------------------------------------------------
# a hand-written Modbus TCP server that can answer wrongly


class RawModbusTcp:
    """Modbus TCP (MBAP) server in a thread: `answer(tid, unit, pdu)` returns the whole
    reply frame to send (build it with `mbap()`), None for no answer, or `CLOSE` to close
    the connection without answering."""

    CLOSE = b"close"

    def __init__(self, answer: Callable[[int, int, bytes], bytes | None]):
        self.answer = answer
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.requests: list[tuple[int, bytes]] = []  # (unit, pdu)
        self.connections = 0
        self._stop = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="raw-modbus", daemon=True)
        self._thread.start()
        harness.ACTIVE.append(self)

    @staticmethod
    def mbap(tid: int, unit: int, pdu: bytes, length: int | None = None) -> bytes:
        n = len(pdu) + 1 if length is None else length
        return struct.pack(">HHHB", tid, 0, n, unit) + pdu

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._socks.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(0.2)
        try:
            while not self._stop:
                try:
                    data = conn.recv(4096)
                except socket.timeout:
                    continue
                if not data:
                    return
                buf += data
                while len(buf) >= 7:
                    tid, _proto, length, unit = struct.unpack(">HHHB", buf[:7])
                    if len(buf) < 6 + length:
                        break
                    pdu = buf[7:6 + length]
                    buf = buf[6 + length:]
                    with self._lock:
                        self.requests.append((unit, pdu))
                    reply = self.answer(tid, unit, pdu)
                    if reply is self.CLOSE:
                        return
                    if reply:
                        conn.sendall(reply)
        except OSError:
            return
        finally:
            conn.close()

    def requests_for(self, unit: int) -> int:
        with self._lock:
            return sum(1 for u, _ in self.requests if u == unit)

    def close(self) -> None:
        self._stop = True
        self.listener.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass
        self._thread.join(timeout=2)
        if self in harness.ACTIVE:
            harness.ACTIVE.remove(self)

    def describe(self) -> str:
        with self._lock:
            recent = self.requests[-10:]
        return f"raw modbus :{self.port} connections={self.connections} last requests={recent}"


def read_holding_reply(tid: int, unit: int, pdu: bytes, values: list[int]) -> bytes:
    """A correct FC03 answer carrying `values` (as many as asked) for request `pdu`."""
    _fc, _addr, count = struct.unpack(">BHH", pdu[:5])
    regs = (values * count)[:count]
    body = struct.pack(">BB", 3, 2 * count) + b"".join(struct.pack(">H", r) for r in regs)
    return RawModbusTcp.mbap(tid, unit, body)


# --------------------------------------------------------------------------------------
# gateway configuration


def modbus_sections(connections: list[dict]) -> str:
    """`[[modbus.connection]]` tables (valid after the devices' array-of-tables)."""
    out = []
    for c in connections:
        out += ["", "[[modbus.connection]]"] + [f"{k} = {toml_value(v)}" for k, v in c.items()]
    return "\n".join(out) + "\n"


def modbus_device(id: str, connection: str, unit: int, fields: list[dict], poll: str = "200ms",
                  max_age: str = "0s", **modbus: Any) -> dict:
    """A `[[device]]` of the modbus adapter; `fields` carry their own `modbus = {...}`.
    max_age 0s: every readout asks the device (nothing is served from the poll cache)."""
    return {"id": id, "name": id, "adapter": "modbus", "max_age": max_age,
            "modbus": {"connection": connection, "unit": unit, "poll": poll, **modbus},
            "fields": fields}
