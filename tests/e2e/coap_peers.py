"""CoAP peers for the end-to-end tests of the CoAP adapter.

- `LibcoapServer`: libcoap's example server `coap-server-notls` (Debian 12: libcoap3-bin
  4.3.1), a C implementation independent of the gateway's codec, with fixed resources.
- `AiocoapServer`: aiocoap (Python) in a subprocess (aiocoap_server.py) with resources the
  tests control through a side channel: values, when notifications go out and of which
  type, response codes, silence, "forget every observation", and the record of every
  request and every datagram it saw.
- `LossyRelay`: a UDP relay between the gateway and a server that drops datagrams by policy
  (the first N transmissions of each message, a seeded random share each way, all of them,
  a predicate), delays them, records every datagram with its monotonic time, and injects
  raw (malformed) datagrams toward the gateway.
- `check_backoff` / `assert_backoff`: transmission times of one CON against RFC 7252 §4.2.

coap_wire.py is the datagram codec they share (also handy in tests: `coap_wire.request_sync`
to read a resource directly, `coap_wire.raw_*` to build malformed datagrams).

Additive to harness.py: every process or relay started here registers in harness.ACTIVE
(log tails on a failing test's report) and is stopped by `close()`.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import json
import os
import queue
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import coap_wire as cw
import harness
from harness import HarnessError, LogFile, SideChannel, stop_process, tail, wait_for

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
AIOCOAP_SCRIPT = HERE / "aiocoap_server.py"


def free_udp_port(also_tcp: bool = False) -> int:
    """A currently free UDP port on 127.0.0.1 (bound with port 0, then released); with
    `also_tcp`, one whose TCP twin is free too (libcoap's server binds both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((HOST, 0))
            port = u.getsockname()[1]
            if not also_tcp:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise HarnessError("no free UDP+TCP port pair found")


def udp_bound(port: int) -> bool:
    """Whether some socket is bound to UDP 127.0.0.1:port or 0.0.0.0:port / [::]:port
    (from /proc/net/udp{,6}; no datagram sent)."""
    hexport = f":{port:04X}"
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 1 and cols[1].endswith(hexport):
                return True
    return False


def libcoap_bin(name: str = "coap-server-notls") -> str:
    found = shutil.which(name)
    if not found:
        raise HarnessError(f"{name} not found (install the Debian package 'libcoap3-bin'; bash tests/run.sh does it)")
    return found


def missing_tools() -> list[str]:
    return [n for n in ("coap-server-notls", "coap-client-notls") if shutil.which(n) is None]


# --------------------------------------------------------------------------------------
# libcoap's example server


class LibcoapServer(LogFile):
    """libcoap's `coap-server-notls` (4.3.1 on Debian 12) on UDP 127.0.0.1:`port` (free
    by default, fixed for the object's life: `restart()` comes back on the same port). It
    also listens on TCP (coap+tcp) on the same port number; the tests use UDP.

    Resources (examples/coap-server.c of libcoap 4.3.1; all ct=0, text/plain):

      /                  GET: a fixed text ("This is a test server made with libcoap ..."),
                         Max-Age 196607.
      /time              GET (and FETCH): the server's clock as "Nov 29 15:57:05" (UTC), or the
                         Unix time with the query `?ticks`; Max-Age 1. Observable: libcoap
                         notifies every observer once a second (CON unless `non_observe`, and
                         then still every fifth one CON). PUT with a payload of digits sets the
                         clock (2.04, or 2.01 after a DELETE); an empty PUT resets it. DELETE
                         (2.02) removes the clock: GET then answers 4.04 until the next PUT.
                         link: if="clock";rt="ticks";title="Internal Clock";obs
      /async             GET: a separate response: empty ACK at once, then after 4 s (or N s
                         with the query `?N`; `?0` answers 4.00) a CON 2.05 "done". One per
                         token; another GET meanwhile with a new token is set up the same way.
      /example_data      GET: 1500 bytes "a123456789b123456789..." (block-wise: Block2 1024 +
                         476 with ETag and Size2); Content-Format as last PUT (default 0).
                         PUT (Block1 supported): replaces the data (2.04, 2.01 the first time,
                         2.31 Continue between blocks), takes the Content-Format of the PUT, and
                         notifies its observers. Observable. With `echo` the PUT's answer
                         carries the new data. title="Example Data";obs
      /.well-known/core  GET: link-format (ct=40) of the above:
                         </>;title="General Info";ct=0,</time>;if="clock";rt="ticks";
                         title="Internal Clock";ct=0;obs,</async>;ct=0,</example_data>;
                         title="Example Data";ct=0;obs
      anything else      4.04; PUT/POST to an unknown path 4.05, unless `dynamic` (-d N): then
                         PUT/POST create a resource there (2.01; GET/PUT/DELETE on it later;
                         observable), at most N of them (then 4.06).

    libcoap answers a CoAP ping (empty CON) with RST, but at most once per 250 ms per client
    session (address:port), and not at all in the first 250 ms of the server's life; it
    deduplicates retransmitted CONs (the same response again), retransmits its own CONs
    (separate responses, CON notifications) with the RFC 7252 defaults, and drops an
    observer whose notification is RST or times out. Observe numbers need not start at 0
    (the first response to an observe GET of /time carried Observe 2).
    The answer to the last Block1 block of a PUT to /example_data is a plain 2.04/2.01
    without a Block1 option (RFC 7959 §2.3 says it should echo it; aiocoap's client warns
    "Block1 option completely ignored by server"). It logs every PDU in and out at `verbosity` 7 (the default here) to
    `log_path`; `received()` parses those lines.

    Options: `verbosity` (-v 0..9), `non_observe` (-N), `dynamic` (-d N), `echo` (-e),
    `loss` (-l: "20%" or "1,3-5": datagrams libcoap itself fails to send), `block_mode`
    (-L), `extra_args` (appended), `bind` (-A: the listening address, 127.0.0.1 by default;
    "::" listens on IPv6 and, dual-stack, on 127.0.0.1 too, which the readiness check uses).
    """

    def __init__(self, workdir: Path, port: int | None = None, *, verbosity: int = 7, non_observe: bool = False,
                 dynamic: int = 0, echo: bool = False, loss: str | None = None, block_mode: int | None = None,
                 extra_args: Iterable[str] = (), name: str = "coap-server", bind: str = HOST):
        self.dir = Path(workdir).resolve()
        self.bind = bind
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = port if port is not None else free_udp_port(also_tcp=True)
        self.verbosity = verbosity
        self.non_observe = non_observe
        self.dynamic = dynamic
        self.echo = echo
        self.loss = loss
        self.block_mode = block_mode
        self.extra_args = list(extra_args)
        self.log_path = self.dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.start_seconds: float | None = None  # how long the last start() took
        harness.ACTIVE.append(self)

    @property
    def uri(self) -> str:
        return f"coap://{HOST}:{self.port}"

    def argv(self) -> list[str]:
        a = [libcoap_bin("coap-server-notls"), "-A", self.bind, "-p", str(self.port), "-v", str(self.verbosity)]
        if self.non_observe:
            a.append("-N")
        if self.dynamic:
            a += ["-d", str(self.dynamic)]
        if self.echo:
            a.append("-e")
        if self.loss:
            a += ["-l", self.loss]
        if self.block_mode is not None:
            a += ["-L", str(self.block_mode)]
        return a + self.extra_args

    # -- lifecycle

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> "LibcoapServer":
        """Start the server and wait until it answers a GET of /.well-known/core (not a
        CoAP ping: libcoap 4.3.1 answers an empty CON with RST at most once per 250 ms per
        session, counted from the server's start, so pings in its first 250 ms go
        unanswered)."""
        assert not self.running, f"{self.name} already running"
        t0 = time.monotonic()
        self.starts += 1
        with open(self.log_path, "ab") as logf:
            logf.write(f"===== harness: start #{self.starts}: {' '.join(self.argv())} =====\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         cwd=self.dir, start_new_session=True)

        def ready() -> cw.Message | None:
            if self.proc.poll() is not None:
                raise HarnessError(f"{self.name} exited with {self.proc.returncode} during start-up\n{self.describe()}")
            if not udp_bound(self.port):
                return None
            try:
                return cw.exchange(self.port, cw.request("GET", "/.well-known/core"), timeout=0.5, retransmit=0.05)
            except (cw.CoapTimeout, OSError):
                return None

        r = wait_for(ready, timeout, f"{self.name} to answer GET /.well-known/core on udp {HOST}:{self.port}")
        if r.code_name != "2.05" or b"</time>" not in r.payload:
            raise HarnessError(f"{self.name}: unexpected /.well-known/core answer {r.summary()} {r.payload!r}")
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (libcoap's example server quits its loop and frees its context)."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, signal.SIGTERM, timeout)
        wait_for(lambda: not udp_bound(self.port), timeout, f"{self.name}'s udp port {self.port} to close")
        return code

    def kill(self) -> int | None:
        """SIGKILL: the server vanishes; every observation and exchange is forgotten."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, signal.SIGKILL, 10)
        wait_for(lambda: not udp_bound(self.port), 10, f"{self.name}'s udp port {self.port} to close")
        return code

    def restart(self, kill: bool = False, timeout: float = 10.0) -> "LibcoapServer":
        """Stop (SIGTERM, or SIGKILL with `kill=True`) and start again on the same port: a
        server that forgot its observers, its message ids and /example_data's value."""
        self.kill() if kill else self.stop()
        return self.start(timeout)

    def freeze(self) -> None:
        """SIGSTOP: the socket stays bound, nothing is answered (datagrams queue in the
        kernel until `thaw()`)."""
        assert self.running
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            stop_process(self.proc, signal.SIGTERM, 5)
        if self in harness.ACTIVE:
            harness.ACTIVE.remove(self)

    def describe(self) -> str:
        state = "never started" if self.proc is None else (
            f"pid {self.proc.pid}, " + ("running" if self.running else f"exited {self.proc.returncode}"))
        return f"{self.name} ({state}; udp {HOST}:{self.port})\n--- {self.log_path.name} ---\n{tail(self.log_path, 60)}"

    # -- log

    def wait_log(self, pattern: str | re.Pattern, since: int = 0, timeout: float = 10.0) -> re.Match:
        rx = re.compile(pattern, re.M) if isinstance(pattern, str) else pattern
        return wait_for(lambda: rx.search(self.log_since(since)), timeout, f"{self.name} to log /{rx.pattern}/")

    _PDU = re.compile(r"^\S+ \S+ \S+ DEBG \*\s+(\S+) <-> (\S+) \(if\d+\) UDP : (received|sent) (\d+) bytes\n"
                      r"v:1 t:(\w+) c:(\S+) i:([0-9a-f]{4}) \{([0-9a-f]*)\} \[ ?(.*?) ?\](?: :: '(.*)')?$", re.M)

    def pdus(self, since: int = 0, direction: str | None = None) -> list[dict]:
        """The PDUs libcoap logged (verbosity >= 7) after log offset `since`: dicts with
        dir ("in"/"out"), peer, type ("CON"...), code ("GET", "2.05"...), mid, token (hex),
        options (libcoap's text, e.g. "Uri-Path:time, Observe:0"), payload (text, as
        logged: escaped, binary shown as hex by libcoap)."""
        out = []
        for m in self._PDU.finditer(self.log_since(since)):
            d = {"dir": "in" if m.group(3) == "received" else "out", "peer": m.group(2), "type": m.group(5),
                 "code": m.group(6), "mid": int(m.group(7), 16), "token": m.group(8), "options": m.group(9),
                 "payload": m.group(10)}
            if direction is None or d["dir"] == direction:
                out.append(d)
        return out

    def received(self, since: int = 0) -> list[dict]:
        return self.pdus(since, "in")


# --------------------------------------------------------------------------------------
# aiocoap with test-controlled resources


class AiocoapServer(SideChannel, LogFile):
    """aiocoap 0.4.17 (aiocoap_server.py in a subprocess) on UDP 127.0.0.1:`port` (free by
    default, fixed for the object's life: `restart()` comes back on the same port).

    Resources (see aiocoap_server.py for the details):
      /counter         GET text/plain integer, +1 on each GET (the first GET reads 1)
      /sensor          GET/observe JSON {"temperature": .., "humidity": ..} (ct 50); the
                       test sets the value and decides when a notification goes out
      /setpoint        GET/PUT text/plain number, observable; PUT outside [lo, hi] (0..100)
                       or not a number: 4.00; a Content-Format other than 0: 4.15
      /command         POST: recorded, 2.04 "ok"
      /large           GET 10240 bytes of JSON (ct 50), block-wise
      /blob            GET/PUT any bytes (Block1 and Block2), keeps the Content-Format
      /senml           SenML JSON pack (ct 110), observable
      /senml-cbor      the same pack as SenML CBOR (ct 112), observable
      /cbor            a CBOR map (ct 60), observable
      /codes/<c.dd>    any method: answers that code (e.g. 4.04, 5.03 with Max-Age)
      /slow            answers after `slow_delay` s (empty ACK first: a separate response)
      /hang            empty ACK, then never a response
      /void            never answered at all: no ACK, no RST, nothing
      /.well-known/core  aiocoap's link-format listing

    Side channel (stdin/stdout JSON lines, as the Modbus peer's): `call(op=..)` and the
    typed helpers below. State (values, records) lives in the process: `restart()` starts
    from the defaults again; `forget()` keeps the process and its values but drops every
    observation and message-layer state by rebinding the socket.
    """

    def __init__(self, workdir: Path, port: int | None = None, *, name: str = "aiocoap",
                 log_level: str = "INFO", bind: str = HOST):
        """`bind`: the listening address (127.0.0.1 by default; "::" listens on IPv6 and,
        dual-stack, on 127.0.0.1 too, which the readiness ping uses)."""
        self.dir = Path(workdir).resolve()
        self.bind = bind
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = port if port is not None else free_udp_port()
        self.log_level = log_level
        self.log_path = self.dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self.starts = 0
        self.start_seconds: float | None = None
        harness.ACTIVE.append(self)

    @property
    def uri(self) -> str:
        return f"coap://{HOST}:{self.port}"

    # -- lifecycle

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> "AiocoapServer":
        """Start the process; returns once it printed its ready line and answers a CoAP ping."""
        assert not self.running, f"{self.name} already running"
        t0 = time.monotonic()
        self.starts += 1
        self._lines = queue.Queue()
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n===== harness: start #{self.starts} =====\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                [sys.executable, str(AIOCOAP_SCRIPT), "--host", self.bind, "--port", str(self.port),
                 "--log-level", self.log_level],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf,
                text=True, bufsize=1, cwd=self.dir, start_new_session=True,
            )
        lines, out = self._lines, self.proc.stdout

        def reader() -> None:
            for line in out:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=reader, name=f"{self.name}-stdout", daemon=True).start()
        reply = self._read(timeout, "the ready line")
        if not reply.get("ready"):
            raise HarnessError(f"{self.name}: unexpected first line {reply}")
        wait_for(lambda: cw.coap_ping(self.port, timeout=0.3), timeout, f"{self.name} to answer a CoAP ping")
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the side channel: the server shuts its context down and exits."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.stdin.close()
            except (OSError, ProcessLookupError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                stop_process(self.proc, signal.SIGKILL, 5)
        wait_for(lambda: not udp_bound(self.port), timeout, f"{self.name}'s udp port {self.port} to close")

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a word."""
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, signal.SIGKILL, 10)
        wait_for(lambda: not udp_bound(self.port), 10, f"{self.name}'s udp port {self.port} to close")

    def restart(self, kill: bool = False, timeout: float = 20.0) -> "AiocoapServer":
        """A new process on the same port, with the default values and empty records."""
        self.kill() if kill else self.stop()
        return self.start(timeout)

    def freeze(self) -> None:
        """SIGSTOP (the side channel blocks too until `thaw()`)."""
        assert self.running
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        try:
            self.stop(5)
        except Exception:  # noqa: BLE001 - teardown best effort
            if self.proc is not None and self.proc.poll() is None:
                stop_process(self.proc, signal.SIGKILL, 5)
        if self in harness.ACTIVE:
            harness.ACTIVE.remove(self)

    def describe(self) -> str:
        state = "never started" if self.proc is None else (
            f"pid {self.proc.pid}, " + ("running" if self.running else f"exited {self.proc.returncode}"))
        return f"{self.name} ({state}; udp {HOST}:{self.port})\n--- {self.log_path.name} ---\n{tail(self.log_path, 60)}"

    # -- side channel


    def get(self, resource: str) -> Any:
        """The current value of a resource (as JSON: a dict for sensor, a number for
        counter/setpoint, a list for the SenML packs, base64 under "b64" for blob)."""
        return self.call(op="get", resource=resource)["value"]

    def set(self, resource: str, value: Any, notify: bool = False, **notify_kw: Any) -> None:
        """Change a value; observers hear of it only with `notify=True` (or `notify()`)."""
        self.call(op="set", resource=resource, value=value)
        if notify:
            self.notify(resource, **notify_kw)

    def notify(self, resource: str, mtype: str | None = None, max_age: int | None = None) -> int:
        """Send the resource's current state to its observers now; `mtype` "CON"/"NON"
        forces the message type (default: aiocoap's choice, CON for observations
        registered with CON). Returns how many observers were notified."""
        return self.call(op="notify", resource=resource, mtype=mtype, max_age=max_age)["observers"]

    def end_observations(self, resource: str, code: str = "4.04", payload: str = "") -> int:
        """Send a final non-2.xx notification (no Observe option: RFC 7641 §3.2 ends the
        observation) to every observer of `resource`."""
        return self.call(op="end", resource=resource, code=code, payload=payload)["observers"]

    def observers(self, resource: str) -> int:
        return self.call(op="observers", resource=resource)["observers"]

    def wait_observers(self, resource: str, n: int = 1, timeout: float = 10.0) -> int:
        """Wait until `resource` has exactly `n` observations (n=0: all gone)."""
        return wait_for(lambda: self.observers(resource) == n or None, timeout,
                        f"{self.name}: {n} observer(s) of /{resource}", interval=0.05) and n

    def configure(self, resource: str, **settings: Any) -> None:
        """Per-resource settings: max_age (int or None), mtype ("CON"/"NON"/None, the type of
        notifications), range ([lo, hi] for setpoint), delay (s, for slow), max_age on codes
        (the Max-Age of /codes/5.03), content_format (for blob)."""
        self.call(op="configure", resource=resource, settings=settings)

    def silence(self, path: str | None = "*", on: bool = True) -> None:
        """Drop incoming datagrams without any answer: every one ("*"), or the requests
        for one path ("sensor"). `on=False` lifts it."""
        self.call(op="silence", path=path, on=on)

    def forget(self) -> None:
        """Drop every observation and all message-layer state (deduplication, message ids,
        block-wise transfers) by shutting the CoAP context down and binding the same port
        again; values and records stay. Observers are not told: their next ACK/RST or
        re-registration is what the server sees."""
        self.call(op="forget")

    def requests(self, since: int = 0, path: str | None = None) -> list[dict]:
        """Requests as the resources saw them (block-wise ones reassembled), in order:
        {seq, t (server monotonic), method, path ("/sensor"), query, payload (text or None),
        payload_b64, content_format, observe, block1, block2 ("num/M/size" or None),
        accept, mtype, mid, token (hex), remote}."""
        return self.call(op="requests", since=since, path=path)["requests"]

    def datagrams(self, since: int = 0) -> list[dict]:
        """Every datagram in ("in") and out ("out") at the message layer, retransmissions
        and empty ACK/RST included: {seq, t, dir, type, code, mid, token, options (names ->
        values), payload_len, dropped (silenced)}."""
        return self.call(op="datagrams", since=since)["datagrams"]

    def clear(self) -> None:
        """Empty both records (sequence numbers keep counting)."""
        self.call(op="clear")

    def mark(self) -> tuple[int, int]:
        """The next sequence numbers of (requests, datagrams), for since=..."""
        r = self.call(op="marks")
        return r["requests"], r["datagrams"]

    def wait_request(self, pred: Callable[[dict], bool] | None = None, path: str | None = None, since: int = 0,
                     timeout: float = 10.0) -> dict:
        """Wait for a request (after sequence number `since`) to `path` matching `pred`."""
        def found():
            for r in self.requests(since, path):
                if pred is None or pred(r):
                    return r
            return None
        return wait_for(found, timeout, f"{self.name}: a request{' to ' + path if path else ''} matching {pred}",
                        interval=0.05)


# --------------------------------------------------------------------------------------
# the lossy relay


@dataclass
class Datagram:
    """One datagram through the relay (or injected by it)."""
    seq: int
    t: float                 # time.monotonic() when the relay received (or injected) it
    dir: str                 # "up": gateway -> server; "down": server -> gateway
    client: tuple[str, int]  # the gateway-side address of the flow
    data: bytes
    dropped: bool = False
    injected: bool = False
    delayed: float = 0.0
    msg: cw.Message | None = None  # None: does not decode

    @property
    def type(self) -> str | None:
        if self.msg is not None:
            return self.msg.type_name
        t, _c, _m, _tok = cw.peek_header(self.data)
        return None if t is None else cw.TYPE_NAMES[t]

    @property
    def mid(self) -> int | None:
        return self.msg.mid if self.msg else cw.peek_header(self.data)[2]

    @property
    def token(self) -> bytes:
        return self.msg.token if self.msg else cw.peek_header(self.data)[3]

    @property
    def code(self) -> str | None:
        if self.msg is not None:
            return self.msg.code_name
        c = cw.peek_header(self.data)[1]
        return None if c is None else cw.code_str(c)

    def __str__(self) -> str:
        what = self.msg.summary() if self.msg else f"undecodable {self.data[:16].hex()}"
        flags = "".join([" DROPPED" if self.dropped else "", " INJECTED" if self.injected else "",
                         f" +{self.delayed:.2f}s" if self.delayed else ""])
        return f"#{self.seq} {self.t:.3f} {self.dir:4} {what}{flags}"


class LossyRelay:
    """A UDP relay on 127.0.0.1:`port` (free) forwarding to the server at
    127.0.0.1:`upstream_port`: point the gateway at `port`. Each gateway-side address gets
    its own upstream socket (a NAT), so the server sees one peer per gateway socket.

    Drop policies (all active ones apply; `forward()` clears them):
      drop_first(n, direction="up", types=("CON",))
                   drop the first n transmissions of each message (keyed by direction, flow,
                   message id and token: retransmissions repeat both) whose type is in types
      drop_rate(up=0.0, down=0.0, seed=0)
                   drop a share of the datagrams each way, from a seeded random.Random
      blackhole(direction="both")
                   drop everything that way
      drop_if(pred)
                   drop a datagram when pred(Datagram) is true (seen before the others)
      delay(up=0.0, down=0.0)
                   forward after that many seconds (kept in order per direction)

    Every datagram is recorded (`datagrams()`), dropped or not, with its monotonic time;
    `transmissions(mid)` and `check_backoff()` judge retransmissions. `inject_down(data)`
    sends raw bytes to the gateway as if the server had (from the relay's port).
    """

    def __init__(self, upstream_port: int, upstream_host: str = HOST, name: str = "coap-relay"):
        self.name = name
        self.upstream = (upstream_host, upstream_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self._lock = threading.Lock()
        self._records: list[Datagram] = []
        self._seq = itertools.count()
        self._flows: dict[tuple[str, int], socket.socket] = {}   # client addr -> upstream socket
        self._by_up: dict[socket.socket, tuple[str, int]] = {}
        self._last_client: tuple[str, int] | None = None
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self._pending: list[tuple[float, int, socket.socket, bytes, tuple[str, int]]] = []  # heap
        self._tasks: queue.Queue[Callable[[], None]] = queue.Queue()
        self.forward()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        harness.ACTIVE.append(self)

    # -- policy

    def forward(self) -> None:
        """Forward everything, at once: no drop policy, no delay."""
        with self._lock:
            self._first_n: int = 0
            self._first_dir = "up"
            self._first_types: tuple[str, ...] = ("CON",)
            self._seen: dict[tuple, int] = {}
            self._rate = {"up": 0.0, "down": 0.0}
            self._rng = random.Random(0)
            self._hole = {"up": False, "down": False}
            self._pred: Callable[[Datagram], bool] | None = None
            self._delay = {"up": 0.0, "down": 0.0}

    def drop_first(self, n: int, direction: str = "up", types: Iterable[str] = ("CON",)) -> None:
        assert direction in ("up", "down", "both")
        with self._lock:
            self._first_n, self._first_dir, self._first_types = n, direction, tuple(types)
            self._seen = {}

    def drop_rate(self, up: float = 0.0, down: float = 0.0, seed: int = 0) -> None:
        with self._lock:
            self._rate = {"up": up, "down": down}
            self._rng = random.Random(seed)

    def blackhole(self, direction: str = "both") -> None:
        assert direction in ("up", "down", "both")
        with self._lock:
            self._hole = {d: direction in (d, "both") for d in ("up", "down")}

    def drop_if(self, pred: Callable[[Datagram], bool] | None) -> None:
        with self._lock:
            self._pred = pred

    def delay(self, up: float = 0.0, down: float = 0.0) -> None:
        with self._lock:
            self._delay = {"up": up, "down": down}

    def set_upstream(self, port: int, host: str = HOST) -> None:
        """Send to another server from now on (existing flows keep their sockets)."""
        self.upstream = (host, port)

    def _decide(self, d: Datagram) -> bool:
        """Whether to drop `d` (under the lock)."""
        if self._pred is not None and self._pred(d):
            return True
        if self._hole[d.dir]:
            return True
        if self._first_n and self._first_dir in (d.dir, "both") and d.type in self._first_types:
            key = (d.dir, d.client, d.mid, d.token)
            k = self._seen.get(key, 0) + 1
            self._seen[key] = k
            if k <= self._first_n:
                return True
        rate = self._rate[d.dir]
        if rate and self._rng.random() < rate:
            return True
        return False

    # -- the loop

    def _flow(self, client: tuple[str, int]) -> socket.socket:
        up = self._flows.get(client)
        if up is None:
            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            up.bind((HOST, 0))
            up.setblocking(False)
            self._flows[client] = up
            self._by_up[up] = client
            self._sel.register(up, selectors.EVENT_READ, None)
        return up

    def _handle(self, direction: str, data: bytes, client: tuple[str, int], out: socket.socket,
                dest: tuple[str, int]) -> None:
        d = Datagram(next(self._seq), time.monotonic(), direction, client, data, msg=cw.try_decode(data))
        with self._lock:
            d.dropped = self._decide(d)
            d.delayed = 0.0 if d.dropped else self._delay[direction]
            self._records.append(d)
        if d.dropped:
            return
        if d.delayed:
            heapq.heappush(self._pending, (d.t + d.delayed, d.seq, out, data, dest))
        else:
            self._send(out, data, dest)

    @staticmethod
    def _send(out: socket.socket, data: bytes, dest: tuple[str, int]) -> None:
        try:
            out.sendto(data, dest)
        except OSError:
            pass  # e.g. ECONNREFUSED from an earlier ICMP port unreachable: UDP loses it

    def _run(self) -> None:
        while not self._stop:
            while True:
                try:
                    self._tasks.get_nowait()()
                except queue.Empty:
                    break
            now = time.monotonic()
            while self._pending and self._pending[0][0] <= now:
                _due, _seq, out, data, dest = heapq.heappop(self._pending)
                self._send(out, data, dest)
            wait = 0.05
            if self._pending:
                wait = max(0.0, min(wait, self._pending[0][0] - now))
            for key, _ev in self._sel.select(timeout=wait):
                s = key.fileobj
                while True:
                    try:
                        data, addr = s.recvfrom(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break  # ICMP error surfaced on the socket: nothing to read
                    if s is self.sock:
                        self._last_client = addr
                        self._handle("up", data, addr, self._flow(addr), self.upstream)
                    else:
                        client = self._by_up.get(s)
                        if client is not None:
                            self._handle("down", data, client, self.sock, client)

    # -- injection

    def inject_down(self, data: bytes, client: tuple[str, int] | None = None) -> Datagram:
        """Send raw bytes to the gateway (the last gateway address seen, or `client`) from
        the relay's port, as if the server had sent them. Recorded with injected=True."""
        dest = client or self._last_client
        if dest is None:
            raise HarnessError(f"{self.name}: no gateway address seen yet to inject toward")
        return self._inject("down", data, dest, self.sock, dest)

    def inject_up(self, data: bytes, client: tuple[str, int] | None = None) -> Datagram:
        """Send raw bytes to the server on a gateway flow's socket, as if the gateway had."""
        c = client or self._last_client
        if c is None:
            raise HarnessError(f"{self.name}: no flow to inject on")
        return self._inject("up", data, c, None, self.upstream)

    def _inject(self, direction: str, data: bytes, client, out, dest) -> Datagram:
        done = threading.Event()
        box: list[Datagram] = []

        def task() -> None:
            sock = out if out is not None else self._flow(client)
            d = Datagram(next(self._seq), time.monotonic(), direction, client, data, injected=True,
                         msg=cw.try_decode(data))
            with self._lock:
                self._records.append(d)
            self._send(sock, data, dest)
            box.append(d)
            done.set()

        self._tasks.put(task)
        if not done.wait(5):
            raise HarnessError(f"{self.name}: injection not done within 5 s")
        return box[0]

    # -- the record

    @property
    def clients(self) -> list[tuple[str, int]]:
        """The gateway-side addresses seen, in order of first appearance."""
        return list(self._flows)

    def mark(self) -> int:
        with self._lock:
            return len(self._records)

    def datagrams(self, since: int = 0, direction: str | None = None, dropped: bool | None = None) -> list[Datagram]:
        """Recorded datagrams (index >= `since`, see mark()), optionally one way only, or only
        the dropped (True) / forwarded (False) ones."""
        with self._lock:
            ds = self._records[since:]
        return [d for d in ds if (direction is None or d.dir == direction)
                and (dropped is None or d.dropped == dropped)]

    def wait_datagram(self, pred: Callable[[Datagram], bool], since: int = 0, timeout: float = 10.0,
                      what: str = "a datagram") -> Datagram:
        def found():
            return next((d for d in self.datagrams(since) if pred(d)), None)
        return wait_for(found, timeout, f"{self.name}: {what}", interval=0.01)

    def transmissions(self, mid: int, direction: str = "up", token: bytes | None = None,
                      since: int = 0) -> list[Datagram]:
        """Every transmission (first and retransmissions, dropped or not) of message `mid`
        that way, in order."""
        return [d for d in self.datagrams(since, direction)
                if not d.injected and d.mid == mid and (token is None or d.token == token)]

    def first_request(self, path: str | None = None, since: int = 0, method: str | None = None) -> Datagram | None:
        for d in self.datagrams(since, "up"):
            if d.msg is not None and d.msg.is_request and (path is None or d.msg.path == path) \
                    and (method is None or d.msg.code_name == method):
                return d
        return None

    def check_backoff(self, mid: int, direction: str = "up", **kw: Any) -> list[str]:
        return check_backoff([d.t for d in self.transmissions(mid, direction)], **kw)

    def describe(self, last: int = 40) -> str:
        with self._lock:
            recs = self._records[-last:]
            n = len(self._records)
        lines = [f"{self.name} :{self.port} -> {self.upstream[0]}:{self.upstream[1]}, {n} datagrams, "
                 f"flows {list(self._flows)}; last {len(recs)}:"]
        lines += [str(d) for d in recs]
        return "\n".join(lines)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        for s in list(self._flows.values()):
            s.close()
        self.sock.close()
        self._sel.close()
        if self in harness.ACTIVE:
            harness.ACTIVE.remove(self)


# --------------------------------------------------------------------------------------
# RFC 7252 §4.2 retransmission timing


def check_backoff(times: list[float], *, ack_timeout: float = cw.ACK_TIMEOUT,
                  random_factor: float = cw.ACK_RANDOM_FACTOR, max_retransmit: int = cw.MAX_RETRANSMIT,
                  slack: float = 0.25, expect_all: bool = False) -> list[str]:
    """Problems with the transmission times of one CON (first transmission included),
    against RFC 7252 §4.2: the first timeout is in [ACK_TIMEOUT, ACK_TIMEOUT *
    ACK_RANDOM_FACTOR] ([2 s, 3 s]), each next one is twice the previous, at most
    MAX_RETRANSMIT (4) retransmissions. `slack` (s) allows for scheduling on a loaded
    machine. `expect_all`: there must be all 1 + MAX_RETRANSMIT transmissions.
    An empty list means it is fine."""
    problems = []
    if not times:
        return ["no transmission at all"]
    if len(times) > 1 + max_retransmit:
        problems.append(f"{len(times) - 1} retransmissions, more than MAX_RETRANSMIT {max_retransmit}")
    if expect_all and len(times) < 1 + max_retransmit:
        problems.append(f"only {len(times) - 1} retransmissions, expected {max_retransmit}")
    gaps = [b - a for a, b in zip(times, times[1:])]
    if gaps:
        lo, hi = ack_timeout, ack_timeout * random_factor
        if not (lo - slack <= gaps[0] <= hi + slack):
            problems.append(f"first timeout {gaps[0]:.3f}s outside [{lo}, {hi}]s")
        first = gaps[0]
        for i, g in enumerate(gaps[1:], start=1):
            want = first * (2 ** i)
            if abs(g - want) > slack * (2 ** i):
                problems.append(f"timeout #{i + 1} is {g:.3f}s, expected {want:.3f}s (twice the previous)")
    return problems


def assert_backoff(times: list[float], **kw: Any) -> None:
    problems = check_backoff(times, **kw)
    if problems:
        gaps = ", ".join(f"{b - a:.3f}" for a, b in zip(times, times[1:]))
        raise AssertionError(f"CON retransmissions break RFC 7252 §4.2 (gaps {gaps}): " + "; ".join(problems))


@atexit.register
def _stop_leftovers() -> None:
    """An interrupted run leaves no CoAP server behind."""
    for obj in list(reversed(harness.ACTIVE)):
        if isinstance(obj, (LibcoapServer, AiocoapServer, LossyRelay)):
            try:
                obj.close()
            except Exception:  # noqa: BLE001
                pass
