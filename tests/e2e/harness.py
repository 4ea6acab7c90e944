"""Real-server end-to-end harness for fieldgate.

Starts a real XMPP server: Prosody (here) or ejabberd (ejabberd.py), foreground, with a
generated config in a temp dir and loopback ports picked by binding port 0; the fieldgate
binary under test, and slixmpp clients driven from synchronous
code through one asyncio loop running in a background thread.

Nothing here waits blindly: every wait polls a condition (a port accepting, a stanza
received, a line logged, a process exited) under a timeout, and fails with a message saying
what it waited for.
"""

from __future__ import annotations

import asyncio
import json
import queue
import atexit
import copy
import itertools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

REPO_ROOT = Path(__file__).resolve().parents[2]

VHOST = "example.test"
COMPONENT = "gw.example.test"
PASSWORD = "secret-pw"

NS_CAPS = "http://jabber.org/protocol/caps"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PING = "urn:xmpp:ping"
NS_VERSION = "jabber:iq:version"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_CLIENT = "jabber:client"

log = logging.getLogger("e2e")

# Every process/helper started by the harness registers itself here so that the pytest
# hooks can attach log tails to a failing test's report and kill leftovers.
ACTIVE: list[Any] = []


class HarnessError(AssertionError):
    pass


# --------------------------------------------------------------------------------------
# small utilities


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bound with port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `cond` until it returns a truthy value; raise HarnessError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


def prosody_bin(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise HarnessError(f"{name} not found on PATH (install the Debian package 'prosody')")
    return found


def gateway_bin() -> Path:
    env = os.environ.get("FIELDGATE_BIN")
    path = Path(env).resolve() if env else REPO_ROOT / "target" / "debug" / "fieldgate"
    if not path.is_file():
        raise HarnessError(f"gateway binary {path} missing: run `cargo build` (or set FIELDGATE_BIN)")
    return path


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
    """Send `sig`, wait up to `timeout`, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


# --------------------------------------------------------------------------------------
# Prosody


class Prosody:
    """A Prosody server in `workdir`, foreground, on free loopback ports.

    The ports are fixed at construction, so stop()/start() restarts the server on the same
    ports (the gateway reconnects to the same address).

    ejabberd.Ejabberd has the same interface; code that takes "a server" takes either.
    """

    name = "prosody"

    def __init__(self, workdir: Path, vhost: str = VHOST, component: str = COMPONENT,
                 secret: str = "component-secret", log_level: str = "debug", default_limits: bool = False):
        self.dir = Path(workdir).resolve()
        # default_limits: keep Prosody's own stanza size limits (c2s 256 KiB, component
        # 512 KiB) instead of the 4 MiB the other tests use for big rosters.
        self.default_limits = default_limits
        self.dir.mkdir(parents=True, exist_ok=True)
        self.vhost = vhost
        self.component = component
        self.secret = secret
        self.log_level = log_level
        self.c2s_port = free_port()
        self.component_port = free_port()
        while self.component_port == self.c2s_port:
            self.component_port = free_port()
        self.config_path = self.dir / "prosody.cfg.lua"
        self.log_path = self.dir / "prosody.log"
        self.out_path = self.dir / "prosody.out"
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self._write_config()
        ACTIVE.append(self)

    def _write_config(self) -> None:
        d = self.dir
        # run_as_root: Prosody's mod_posix refuses to run as root (CI runs as root) and
        # prosodyctl would switch to the 'prosody' user, which cannot write our temp dir.
        # Only consulted when the uid is 0.
        limits = "" if self.default_limits else (
            "-- bigger stanzas for rosters with many devices\n"
            "c2s_stanza_size_limit = 4*1024*1024\n"
            "component_stanza_size_limit = 4*1024*1024")
        cfg = f"""\
-- generated by tests/e2e/harness.py
run_as_root = true
pidfile = "{d}/prosody.pid"
data_path = "{self.data_dir}"
log = {{ {self.log_level} = "{self.log_path}" }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.c2s_port} }}
c2s_interfaces = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
s2s_direct_tls_ports = {{ }}
component_ports = {{ {self.component_port} }}
component_interfaces = {{ "127.0.0.1" }}
http_ports = {{ }}
https_ports = {{ }}
authentication = "internal_plain"
storage = "internal"
c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
-- no mod_tls (no certificates needed), no mod_limits (no c2s rate limits),
-- no s2s listener; mod_posix for the pid file.
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "posix"; "version"; "uptime" }}
modules_disabled = {{ "s2s"; "offline" }}
{limits}

VirtualHost "{self.vhost}"

Component "{self.component}"
    component_secret = "{self.secret}"
"""
        self.config_path.write_text(cfg)

    # -- lifecycle

    def start(self, timeout: float = 20.0) -> "Prosody":
        assert self.proc is None or self.proc.poll() is not None, "prosody already running"
        out = open(self.out_path, "ab")
        self.proc = subprocess.Popen(
            [prosody_bin("prosody"), "--config", str(self.config_path), "-F"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=self.dir, start_new_session=True,
        )
        out.close()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"prosody exited with {self.proc.returncode} during start-up\n"
                    f"--- prosody.out ---\n{tail(self.out_path)}\n--- prosody.log ---\n{tail(self.log_path)}")
            return port_open(self.c2s_port) and port_open(self.component_port)

        wait_for(ready, timeout, f"prosody to listen on 127.0.0.1:{self.c2s_port} and :{self.component_port}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, timeout)
            wait_for(lambda: not port_open(self.c2s_port) and not port_open(self.component_port),
                     timeout, "prosody's ports to close")

    def register(self, user: str, password: str = PASSWORD) -> str:
        """Register user@vhost through prosodyctl; returns the bare JID."""
        r = subprocess.run(
            [prosody_bin("prosodyctl"), "--config", str(self.config_path), "register", user, self.vhost, password],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, cwd=self.dir)
        if r.returncode != 0:
            raise HarnessError(f"prosodyctl register {user} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return f"{user}@{self.vhost}"

    def jid(self, user: str) -> str:
        return f"{user}@{self.vhost}"

    def describe(self) -> str:
        return (f"prosody (c2s {self.c2s_port}, component {self.component_port}) log tail:\n"
                f"{tail(self.out_path, 20)}\n{tail(self.log_path, 80)}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, signal.SIGTERM, 10)
        if self in ACTIVE:
            ACTIVE.remove(self)


# --------------------------------------------------------------------------------------
# gateway configuration (the format of config.example.toml)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def sim_device(id: str, name: str | None = None, fields: list[dict] | None = None,
               access: dict | None = None, sim: dict | None = None, **extra: Any) -> dict:
    """A device entry; defaults to one sine 'pressure' field."""
    d: dict[str, Any] = {"id": id, "name": name or id.capitalize(), "adapter": "sim"}
    d.update(extra)
    if access:
        d["access"] = access
    if sim:
        d["sim"] = sim
    d["fields"] = fields if fields is not None else [
        {"name": "pressure", "type": "double", "unit": "bar", "decimals": 2,
         "sim": {"kind": "sine", "period": "60s", "amplitude": 1.5, "offset": 4.0}},
    ]
    return d


def gateway_toml(server: Any, state_dir: Path, devices: Iterable[dict],
                 access: dict | None = None, xmpp: dict | None = None) -> str:
    """The gateway's config for `server` (a Prosody or an Ejabberd)."""
    x: dict[str, Any] = {
        "server": f"127.0.0.1:{server.component_port}",
        "domain": server.component,
        "secret": server.secret,
        "keepalive": "5s",
        "reconnect_min": "100ms",
        "reconnect_max": "1s",
        "resource": "gw",
    }
    x.update(xmpp or {})
    out = ["[xmpp]"]
    out += [f"{k} = {toml_value(v)}" for k, v in x.items() if v is not None]
    out += ["", "[access]"]
    out += [f"{k} = {toml_value(v)}" for k, v in (access or {}).items()]
    out += ["", "[state]", f"dir = {toml_value(str(state_dir))}"]
    for dev in devices:
        dev = dict(dev)
        fields = dev.pop("fields", [])
        dev_access = dev.pop("access", None)
        dev_sim = dev.pop("sim", None)
        out += ["", "[[device]]"]
        out += [f"{k} = {toml_value(v)}" for k, v in dev.items()]
        if dev_access:
            out += ["[device.access]"] + [f"{k} = {toml_value(v)}" for k, v in dev_access.items()]
        if dev_sim:
            out += ["[device.sim]"] + [f"{k} = {toml_value(v)}" for k, v in dev_sim.items()]
        for f in fields:
            out += ["[[device.field]]"] + [f"{k} = {toml_value(v)}" for k, v in f.items()]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------
# a TCP proxy between the gateway and Prosody's component port, to break the link on demand


class TcpProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<upstream_port> with a switchable mode:

    forward      – pass bytes both ways
    refuse       – new connections are accepted and closed at once
    cut()        – close every current connection (a link that died loudly)
    blackhole()  – the current connections stay open but every byte is dropped (a link that
                   died silently); they are closed when the next connection comes in, as the
                   server would eventually notice, so that the server lets the component in
                   again instead of answering `conflict`.
    """

    def __init__(self, upstream_port: int, record: bool = False):
        import selectors

        self.upstream_port = upstream_port
        # record: keep every byte the gateway sends towards the server (upstream_text())
        self.record = record
        self._upstream_bytes = bytearray()
        # with record: what the gateway sent on each connection, in the order they came
        self._conn_bytes: list[bytearray] = []
        self._conn_index: dict[socket.socket, int] = {}
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.mode = "forward"
        self.accepted = 0
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._cut = False
        self._holed: set[socket.socket] = set()
        self._hole = False
        self._downstream: set[socket.socket] = set()  # our accepted side (towards the gateway)
        self._inject: list[bytes] = []
        self._rec_lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()
        ACTIVE.append(self)

    def _close_pair(self, s: socket.socket) -> None:
        other = self._peers.pop(s, None)
        for sock in (s, other):
            if sock is None:
                continue
            self._peers.pop(sock, None)
            self._holed.discard(sock)
            self._downstream.discard(sock)
            self._conn_index.pop(sock, None)
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()

    def _run(self) -> None:
        import selectors

        while not self._stop:
            if self._cut:
                for s in list(self._peers):
                    self._close_pair(s)
                self._cut = False
            if self._hole:
                self._holed.update(self._peers)
                self._hole = False
            while self._inject:
                data = self._inject.pop(0)
                for s in list(self._downstream):
                    s.setblocking(True)
                    s.sendall(data)
                    s.setblocking(False)
            for key, _ev in self._sel.select(timeout=0.05):
                s = key.fileobj
                if s is self.listener:
                    try:
                        client, _ = self.listener.accept()
                    except BlockingIOError:
                        continue
                    self.accepted += 1
                    for old in list(self._holed):
                        self._close_pair(old)
                    if self.mode == "refuse":
                        client.close()
                        continue
                    try:
                        up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
                    except OSError:
                        client.close()
                        continue
                    client.setblocking(False)
                    up.setblocking(False)
                    self._peers[client] = up
                    self._peers[up] = client
                    self._downstream.add(client)
                    if self.record:
                        with self._rec_lock:
                            self._conn_index[client] = len(self._conn_bytes)
                            self._conn_bytes.append(bytearray())
                    self._sel.register(client, selectors.EVENT_READ, None)
                    self._sel.register(up, selectors.EVENT_READ, None)
                    continue
                try:
                    data = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._close_pair(s)
                    continue
                if s in self._holed:
                    continue
                if self.record and s in self._downstream:
                    with self._rec_lock:
                        self._upstream_bytes += data
                        self._conn_bytes[self._conn_index[s]] += data
                other = self._peers.get(s)
                if other is not None:
                    try:
                        other.setblocking(True)
                        other.sendall(data)
                        other.setblocking(False)
                    except OSError:
                        self._close_pair(s)

    def cut(self) -> None:
        self._cut = True
        wait_for(lambda: not self._cut, 5, "the proxy to cut its connections")

    def inject_downstream(self, data: str) -> None:
        """Send raw bytes to the gateway as if the server had sent them (between two reads
        from the server, so at a stanza boundary while the link is idle)."""
        self._inject.append(data.encode())
        wait_for(lambda: not self._inject, 5, "the proxy to inject")

    def upstream_text(self) -> str:
        """What the gateway has sent towards the server so far (with record=True)."""
        assert self.record, "TcpProxy(record=True) records the gateway's bytes"
        with self._rec_lock:
            return self._upstream_bytes.decode(errors="replace")

    def upstream_connections(self) -> list[bytes]:
        """What the gateway has sent towards the server on each connection the proxy passed
        on, in order (with record=True; a connection refused in mode "refuse" is not one)."""
        assert self.record, "TcpProxy(record=True) records the gateway's bytes"
        with self._rec_lock:
            return [bytes(b) for b in self._conn_bytes]

    def blackhole(self) -> None:
        self._hole = True
        wait_for(lambda: not self._hole, 5, "the proxy to blackhole its connections")

    def set_mode(self, mode: str) -> None:
        assert mode in ("forward", "refuse")
        self.mode = mode

    def describe(self) -> str:
        return f"tcp proxy :{self.port} -> :{self.upstream_port} mode={self.mode} accepted={self.accepted}"

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        for s in list(self._peers):
            self._close_pair(s)
        self.listener.close()
        if self in ACTIVE:
            ACTIVE.remove(self)


# --------------------------------------------------------------------------------------
# systemd notify socket (the gateway sends READY=1 once the component link is first up)


class NotifySocket:
    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.exists():
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="sd-notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.extend(data.decode(errors="replace").splitlines())

    def seen(self, msg: str) -> bool:
        with self._lock:
            return msg in self.messages

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()
        try:
            self.path.unlink()
        except OSError:
            pass


# --------------------------------------------------------------------------------------
# the gateway process


class SideChannel:
    """A peer in a subprocess driven by one JSON line per command on its stdin, answered
    by one JSON line (`{"ok": true, ...}` or `{"ok": false, "error": ...}`) that a reader
    thread puts on `self._lines` (`None` when the process ended). The class provides
    `name`, `proc`, `running`, `_lock`, `_lines` and `describe()`."""

    def _read(self, timeout: float, what: str) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise HarnessError(f"{self.name}: no {what} within {timeout}s\n{self.describe()}") from None
        if line is None:
            raise HarnessError(f"{self.name}: exited (waiting for {what})\n{self.describe()}")
        return json.loads(line)

    def call(self, **cmd: Any) -> dict:
        """One command; raises HarnessError when it fails."""
        with self._lock:
            if not self.running:
                raise HarnessError(f"{self.name} is not running\n{self.describe()}")
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            reply = self._read(10, f"reply to {cmd}")
        if not reply.get("ok"):
            raise HarnessError(f"{self.name}: {cmd} failed: {reply.get('error')}")
        return reply


class LogFile:
    """Reading a process's log file (`self.log_path`) whole, its size, or from an offset;
    an absent file reads as empty."""

    log_path: Path

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""


class Gateway(LogFile):
    """fieldgate run --config <workdir>/fieldgate.toml, logs to a file."""

    def __init__(self, workdir: Path, server: Any, binary: Path | None = None):
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.server = server  # a Prosody or an Ejabberd
        self.binary = binary or gateway_bin()
        self.config_path = self.dir / "fieldgate.toml"
        self.state_dir = self.dir / "state"
        self.log_path = self.dir / "fieldgate.log"
        self.proc: subprocess.Popen | None = None
        self.notify: NotifySocket | None = None
        self.starts = 0
        ACTIVE.append(self)

    # -- config

    def write_config(self, devices: Iterable[dict], access: dict | None = None,
                     xmpp: dict | None = None) -> str:
        text = gateway_toml(self.server, self.state_dir, devices, access, xmpp)
        self.write_raw_config(text)
        return text

    def write_raw_config(self, text: str) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)  # atomic: a reload never sees a half-written file

    # -- lifecycle

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> "Gateway":
        assert self.proc is None or self.proc.poll() is not None, "gateway already running"
        if self.notify:
            self.notify.close()
        self.notify = NotifySocket(self.dir / "notify.sock")
        env = dict(os.environ)
        env.setdefault("FIELDGATE_LOG", "debug")
        env["NOTIFY_SOCKET"] = str(self.notify.path)
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        self.starts += 1
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n===== harness: start #{self.starts} =====\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                [str(self.binary), "run", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                cwd=self.dir, env=env, start_new_session=True,
            )
        self.started_at = time.monotonic()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise HarnessError(f"fieldgate exited with {self.proc.returncode} during start-up\n{self.log_tail()}")
            return self.notify.seen("READY=1")
        wait_for(ready, timeout, "fieldgate to send READY=1 (component link up)")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int | None, float]:
        """Signal the gateway and wait for it to exit: (exit code, seconds it took)."""
        assert self.proc is not None
        t0 = time.monotonic()
        code = stop_process(self.proc, sig, timeout)
        return code, time.monotonic() - t0

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None, "gateway not running"
        self.proc.send_signal(sig)

    def hup(self) -> None:
        self.signal(signal.SIGHUP)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


    def log_tail(self, lines: int = 80) -> str:
        return f"--- fieldgate log ({self.log_path.name}) ---\n{tail(self.log_path, lines)}"

    def describe(self) -> str:
        return self.log_tail(120)

    def run_cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return run_cli(self.binary, *args, timeout=timeout, cwd=self.dir)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, signal.SIGTERM, 10)
        if self.notify:
            self.notify.close()
            self.notify = None
        if self in ACTIVE:
            ACTIVE.remove(self)


def run_cli(binary: Path, *args: str, timeout: float = 30.0, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


# --------------------------------------------------------------------------------------
# slixmpp client driven from synchronous code


class LoopThread:
    """One asyncio event loop in a daemon thread; run coroutines on it from test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="xmpp-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro, timeout: float = 30.0):
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise HarnessError(f"timed out after {timeout}s running {coro!r}") from None

    def call(self, fn: Callable, *args, timeout: float = 30.0):
        async def wrapper():
            return fn(*args)
        return self.run(wrapper(), timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_all(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
            if not self.thread.is_alive():
                self.loop.close()


_LOOP: LoopThread | None = None


def loop_thread() -> LoopThread:
    global _LOOP
    if _LOOP is None or not _LOOP.thread.is_alive():
        _LOOP = LoopThread()
    return _LOOP


@dataclass
class Pres:
    """One received presence stanza, flattened."""
    frm: str
    type: str  # available | unavailable | subscribed | unsubscribed | subscribe | ...
    status: str
    show: str
    caps: dict | None  # attributes of <c xmlns='http://jabber.org/protocol/caps'/>
    xml: str
    at: float

    @property
    def bare(self) -> str:
        return self.frm.split("/", 1)[0]


@dataclass
class IqReply:
    type: str  # result | error
    xml: ET.Element
    condition: str | None = None  # error condition (e.g. service-unavailable)
    error_type: str | None = None
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.type == "result"

    def payload(self) -> ET.Element | None:
        for child in self.xml:
            if child.tag != f"{{{NS_CLIENT}}}error":
                return child
        return None


@dataclass
class DiscoInfo:
    identities: list[tuple[str, str, str]]  # (category, type, name)
    features: set[str]


async def _reap(x) -> None:
    """Finish slixmpp's send-queue task before the client object is dropped (otherwise its
    __del__ cancels it during garbage collection and asyncio complains)."""
    task = getattr(x, "_run_out_filters", None)
    if task is not None and not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class XmppClient:
    """A slixmpp c2s client that records every presence and answers synchronous calls.

    All slixmpp objects live on the harness loop thread; public methods are safe to call
    from the test thread.
    """

    _ids = itertools.count(1)

    def __init__(self, server: Any, user: str, password: str = PASSWORD, resource: str = "test"):
        self.server = server  # a Prosody or an Ejabberd
        self.user = user
        self.jid = server.jid(user)
        self.full_jid_wanted = f"{self.jid}/{resource}"
        self.password = password
        self.lt = loop_thread()
        self.presences: list[Pres] = []
        self.iqs_in: list[tuple[str, str, str]] = []  # (type, id, from) of every iq received
        self.iq_replies: dict[str, ET.Element] = {}  # every result/error received, by id
        self.messages: list[ET.Element] = []  # every message received (deep copies)
        self.cond = threading.Condition()
        self.iq_waiters: dict[str, asyncio.Future] = {}
        self.xmpp = None
        self.session_started = threading.Event()
        self.disconnected_evt = threading.Event()
        self.send_initial_presence = True
        ACTIVE.append(self)

    # -- connection

    def _make(self):
        import slixmpp
        from slixmpp.xmlstream.handler import Callback
        from slixmpp.xmlstream.matcher import MatchXPath

        x = slixmpp.ClientXMPP(
            self.full_jid_wanted, self.password,
            plugin_config={"feature_mechanisms": {"unencrypted_plain": True, "unencrypted_scram": True}},
        )
        # loopback Prosody without TLS: plain TCP only
        x.enable_direct_tls = False
        x.enable_starttls = False
        x.enable_plaintext = True
        x.auto_authorize = False
        x.auto_subscribe = False
        x.register_plugin("xep_0030")
        x.register_plugin("xep_0092")
        x.register_plugin("xep_0199", {"keepalive": False})
        x.add_event_handler("session_start", self._on_session_start)
        x.add_event_handler("disconnected", self._on_disconnected)
        x.add_event_handler("presence", self._on_presence)
        # (slixmpp's "message" event only fires for messages with a <body/>)
        x.register_handler(Callback("e2e all messages", MatchXPath(f"{{{NS_CLIENT}}}message"), self._on_message))
        x.register_handler(Callback(
            "e2e raw iq replies",
            MatchXPath(f"{{{NS_CLIENT}}}iq"),
            self._on_iq,
        ))
        return x

    async def _on_session_start(self, _event) -> None:
        try:
            await self.xmpp.get_roster(timeout=10)
        except Exception as e:  # noqa: BLE001 - surfaced through the event below
            log.warning("%s: roster fetch failed: %s", self.jid, e)
        if self.send_initial_presence:
            self.xmpp.send_presence()
        self.session_started.set()

    def _on_disconnected(self, _event) -> None:
        self.disconnected_evt.set()

    def _on_presence(self, p) -> None:
        caps_el = p.xml.find(f"{{{NS_CAPS}}}c")
        ptype = p["type"]
        if ptype in ("", None) or ptype in p.showtypes:
            ptype = "available"
        rec = Pres(
            frm=str(p["from"]), type=ptype, status=p["status"], show=p["show"] or "",
            caps=dict(caps_el.attrib) if caps_el is not None else None,
            xml=str(p), at=time.monotonic(),
        )
        with self.cond:
            self.presences.append(rec)
            self.cond.notify_all()

    def _on_message(self, msg) -> None:
        with self.cond:
            self.messages.append(copy.deepcopy(msg.xml))
            self.cond.notify_all()

    def wait_message(self, pred: Callable[[ET.Element], bool], since: int = 0, timeout: float = 10.0) -> ET.Element:
        """Wait for a received <message/> (after index `since`) matching `pred`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.messages[since:]:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError(f"{self.jid}: no matching message within {timeout}s")
                self.cond.wait(left)

    def _on_iq(self, iq) -> None:
        with self.cond:
            self.iqs_in.append((iq["type"], iq["id"], str(iq["from"])))
        if iq["type"] not in ("result", "error"):
            return
        with self.cond:
            self.iq_replies[iq["id"]] = copy.deepcopy(iq.xml)
            self.cond.notify_all()
        fut = self.iq_waiters.pop(iq["id"], None)
        if fut is not None and not fut.done():
            fut.set_result(copy.deepcopy(iq.xml))

    def connect(self, initial_presence: bool = True, timeout: float = 20.0) -> "XmppClient":
        self.send_initial_presence = initial_presence
        self.session_started.clear()
        self.disconnected_evt.clear()

        async def go():
            self.xmpp = self._make()
            self.xmpp.connect(host="127.0.0.1", port=self.server.c2s_port)

        self.lt.run(go())
        if not self.session_started.wait(timeout):
            raise HarnessError(f"{self.jid}: no session within {timeout}s ({self.server.name} c2s port {self.server.c2s_port})")
        return self

    def disconnect(self, timeout: float = 10.0) -> None:
        if self.xmpp is None:
            return
        x = self.xmpp

        async def go():
            if x.transport is not None:
                fut = x.disconnect(wait=2.0)
                try:
                    await asyncio.wait_for(fut, timeout)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            if x.transport is not None:
                x.abort()
            await _reap(x)

        try:
            self.lt.run(go(), timeout + 5)
        finally:
            self.xmpp = None

    def wait_disconnected(self, timeout: float = 15.0) -> None:
        if not self.disconnected_evt.wait(timeout):
            raise HarnessError(f"{self.jid}: not disconnected within {timeout}s")

    def drop(self) -> None:
        """Forget a dead connection (after the server went away) without a closing handshake."""
        x = self.xmpp
        self.xmpp = None
        if x is not None:
            async def go():
                x.abort()
                await _reap(x)
            try:
                self.lt.run(go(), 10)
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        try:
            self.disconnect(timeout=3)
        except Exception:  # noqa: BLE001 - teardown best effort
            pass
        if self in ACTIVE:
            ACTIVE.remove(self)

    def describe(self) -> str:
        with self.cond:
            recent = self.presences[-30:]
        lines = [f"{p.frm} {p.type} status={p.status!r} caps={'yes' if p.caps else 'no'}" for p in recent]
        return f"client {self.jid}: last presences received:\n" + "\n".join(lines)

    # -- presence

    @property
    def full_jid(self) -> str:
        return self.lt.call(lambda: str(self.xmpp.boundjid.full))

    def mark(self) -> int:
        with self.cond:
            return len(self.presences)

    def presences_since(self, mark: int = 0, frm: str | None = None) -> list[Pres]:
        with self.cond:
            ps = self.presences[mark:]
        if frm is not None:
            ps = [p for p in ps if p.bare == frm or p.frm == frm]
        return ps

    def wait_presence(self, frm: str, types: str | Iterable[str], since: int = 0,
                      timeout: float = 10.0, pred: Callable[[Pres], bool] | None = None) -> Pres:
        """Wait for a presence from `frm` (bare or full JID) with a type in `types`."""
        wanted = {types} if isinstance(types, str) else set(types)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for p in self.presences[since:]:
                    if (p.bare == frm or p.frm == frm) and p.type in wanted and (pred is None or pred(p)):
                        return p
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [f"{p.frm} {p.type} {p.status!r}" for p in self.presences[since:]]
                    raise HarnessError(
                        f"{self.jid}: no presence {sorted(wanted)} from {frm} within {timeout}s; "
                        f"received since mark: {got}")
                self.cond.wait(left)

    def wait_all(self, jids: Iterable[str], types: str | Iterable[str], since: int = 0,
                 timeout: float = 30.0) -> dict[str, Pres]:
        """Wait until every JID in `jids` sent a presence of one of `types` (after `since`)."""
        wanted = {types} if isinstance(types, str) else set(types)
        pending = set(jids)
        found: dict[str, Pres] = {}
        idx = since
        deadline = time.monotonic() + timeout
        with self.cond:
            while pending:
                for p in self.presences[idx:]:
                    if p.bare in pending and p.type in wanted:
                        pending.discard(p.bare)
                        found[p.bare] = p
                idx = len(self.presences)
                if not pending:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError(
                        f"{self.jid}: {len(pending)} JIDs sent no {sorted(wanted)} presence within {timeout}s, "
                        f"e.g. {sorted(pending)[:5]}")
                self.cond.wait(left)
        return found

    def send_presence(self, to: str, ptype: str | None = None) -> None:
        def go():
            kw = {"pto": to}
            if ptype:
                kw["ptype"] = ptype
            self.xmpp.send_presence(**kw)
        self.lt.call(go)

    def subscribe(self, to: str) -> None:
        self.send_presence(to, "subscribe")

    def unsubscribe(self, to: str) -> None:
        self.send_presence(to, "unsubscribe")

    def probe(self, to: str) -> None:
        self.send_presence(to, "probe")

    def send_raw(self, xml: str) -> None:
        self.lt.call(lambda: self.xmpp.send_raw(xml))

    def fetch_roster(self) -> dict[str, str]:
        """Roster items as stored by the server: {jid: subscription}."""
        r = self.iq(f"<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
        assert r.ok, f"roster get failed: {r.condition}"
        q = r.payload()
        return {item.get("jid"): item.get("subscription", "none") for item in q}

    # -- iq

    def replies_to(self, iq_id: str) -> list[tuple[str, str, str]]:
        with self.cond:
            return [i for i in self.iqs_in if i[1] == iq_id]

    def iq(self, xml: str, timeout: float = 10.0) -> IqReply:
        """Send an iq given as XML text (the id is set here) and wait for the result/error.

        Returns the reply; raises HarnessError on timeout (no reply at all).
        """
        el = ET.fromstring(xml)
        assert el.tag == "iq", "iq() takes an <iq/>"
        iq_id = f"e2e{next(self._ids)}"
        el.set("id", iq_id)
        text = ET.tostring(el, encoding="unicode")

        async def go():
            fut = self.xmpp.loop.create_future()
            self.iq_waiters[iq_id] = fut
            self.xmpp.send_raw(text)
            try:
                return await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                self.iq_waiters.pop(iq_id, None)
                return None

        reply = self.lt.run(go(), timeout + 5)
        if reply is None:
            raise HarnessError(f"{self.jid}: no reply within {timeout}s to {text}")
        return parse_iq_reply(reply)

    def iq_maybe(self, xml: str, timeout: float) -> IqReply | None:
        """Like iq() but returns None when no reply arrives within `timeout`."""
        try:
            return self.iq(xml, timeout)
        except HarnessError:
            return None

    def barrier(self, jid: str) -> None:
        """A ping round trip through the gateway: whatever the gateway sent to this client
        before answering has been delivered once this returns (one ordered component stream,
        one ordered c2s stream)."""
        r = self.ping(jid)
        assert r.ok, f"barrier ping to {jid} failed: {r.condition}"

    def disco_info(self, jid: str, node: str | None = None) -> IqReply:
        node_attr = f" node='{node}'" if node else ""
        return self.iq(f"<iq type='get' to='{jid}'><query xmlns='{NS_DISCO_INFO}'{node_attr}/></iq>")

    def disco_items(self, jid: str) -> IqReply:
        return self.iq(f"<iq type='get' to='{jid}'><query xmlns='{NS_DISCO_ITEMS}'/></iq>")

    def ping(self, jid: str, timeout: float = 10.0) -> IqReply:
        return self.iq(f"<iq type='get' to='{jid}'><ping xmlns='{NS_PING}'/></iq>", timeout)

    def version(self, jid: str) -> IqReply:
        return self.iq(f"<iq type='get' to='{jid}'><query xmlns='{NS_VERSION}'/></iq>")

    # The same requests through slixmpp's own plugins (an independent parser of the
    # replies); these raise slixmpp.exceptions.IqError on an error reply.

    def plugin_disco_info(self, jid: str, node: str | None = None) -> DiscoInfo:
        async def go():
            iq = await self.xmpp.plugin["xep_0030"].get_info(jid=jid, node=node, cached=False, timeout=10)
            info = iq["disco_info"]
            ids = [(c, t, n or "") for (c, t, _lang, n) in info["identities"]]
            return DiscoInfo(ids, set(info["features"]))
        return self.lt.run(go(), 15)

    def plugin_disco_items(self, jid: str) -> list[str]:
        async def go():
            iq = await self.xmpp.plugin["xep_0030"].get_items(jid=jid, timeout=10)
            return [str(j) for (j, _node, _name) in iq["disco_items"]["items"]]
        return self.lt.run(go(), 15)

    def plugin_version(self, jid: str) -> dict:
        async def go():
            iq = await self.xmpp.plugin["xep_0092"].get_version(jid, timeout=10)
            return dict(iq["software_version"].values)
        return self.lt.run(go(), 15)

    def plugin_ping(self, jid: str) -> float:
        async def go():
            return await self.xmpp.plugin["xep_0199"].ping(jid, timeout=10)
        return self.lt.run(go(), 15)


def parse_iq_reply(el: ET.Element) -> IqReply:
    t = el.get("type", "")
    r = IqReply(type=t, xml=el)
    if t == "error":
        err = el.find(f"{{{NS_CLIENT}}}error")
        if err is not None:
            r.error_type = err.get("type")
            for c in err:
                if c.tag.startswith(f"{{{NS_STANZAS}}}"):
                    name = c.tag.split("}", 1)[1]
                    if name == "text":
                        r.text = c.text or ""
                    elif r.condition is None:
                        r.condition = name
    return r


def parse_disco_info(reply: IqReply) -> DiscoInfo:
    assert reply.ok, f"disco#info failed: {reply.condition} {reply.text}"
    q = reply.xml.find(f"{{{NS_DISCO_INFO}}}query")
    assert q is not None, f"no disco#info query in {ET.tostring(reply.xml, encoding='unicode')}"
    ids = [(i.get("category", ""), i.get("type", ""), i.get("name", ""))
           for i in q.findall(f"{{{NS_DISCO_INFO}}}identity")]
    feats = {f.get("var", "") for f in q.findall(f"{{{NS_DISCO_INFO}}}feature")}
    return DiscoInfo(ids, feats)


def parse_disco_items(reply: IqReply) -> list[str]:
    assert reply.ok, f"disco#items failed: {reply.condition} {reply.text}"
    q = reply.xml.find(f"{{{NS_DISCO_ITEMS}}}query")
    assert q is not None, f"no disco#items query in {ET.tostring(reply.xml, encoding='unicode')}"
    return [i.get("jid", "") for i in q.findall(f"{{{NS_DISCO_ITEMS}}}item")]


def caps_ver(reply: IqReply) -> str:
    """XEP-0115 verification string (sha-1) of a disco#info reply."""
    import base64
    import hashlib

    q = reply.xml.find(f"{{{NS_DISCO_INFO}}}query")
    ids = sorted(
        (i.get("category", ""), i.get("type", ""), i.get("{http://www.w3.org/XML/1998/namespace}lang", ""),
         i.get("name", ""))
        for i in q.findall(f"{{{NS_DISCO_INFO}}}identity"))
    s = "".join("/".join(i) + "<" for i in ids)
    s += "".join(f + "<" for f in sorted(f.get("var", "") for f in q.findall(f"{{{NS_DISCO_INFO}}}feature")))
    forms = []
    for x in q.findall("{jabber:x:data}x"):
        fields = {}
        form_type = ""
        for fld in x.findall("{jabber:x:data}field"):
            vals = sorted(v.text or "" for v in fld.findall("{jabber:x:data}value"))
            if fld.get("var") == "FORM_TYPE":
                form_type = vals[0] if vals else ""
            else:
                fields[fld.get("var", "")] = vals
        forms.append((form_type, fields))
    for form_type, fields in sorted(forms):
        s += form_type + "<"
        for var in sorted(fields):
            s += var + "<" + "".join(v + "<" for v in fields[var])
    return base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()


def cpu_ns(pid: int) -> int:
    """CPU time a process has used so far, in nanoseconds, summed over its threads
    (/proc/<pid>/task/*/schedstat: finer than the 10 ms ticks of /proc/<pid>/stat)."""
    total = 0
    for st in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(st.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM etc. of a process in kB (from /proc/<pid>/status)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        m = re.match(r"(Vm\w+):\s+(\d+) kB", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


# --------------------------------------------------------------------------------------
# one test environment: Prosody + users + gateway + clients, torn down together


@dataclass
class Env:
    root: Path
    server: Any  # a Prosody or an ejabberd.Ejabberd
    gateway: Gateway | None = None
    clients: list[XmppClient] = field(default_factory=list)
    extras: list[Any] = field(default_factory=list)

    @property
    def prosody(self) -> Any:
        """The server, under its old name (the tests of the bus adapters run on Prosody)."""
        return self.server

    @property
    def server_name(self) -> str:
        """"prosody" or "ejabberd"."""
        return self.server.name

    @property
    def domain(self) -> str:
        return self.server.component

    def dev(self, device_id: str) -> str:
        return f"{device_id}@{self.server.component}"

    def client(self, user: str, connect: bool = True, **kw) -> XmppClient:
        c = XmppClient(self.server, user)
        self.clients.append(c)
        if connect:
            c.connect(**kw)
        return c

    def proxy(self, record: bool = False) -> TcpProxy:
        """A TCP proxy in front of the server's component port (record: keep what the
        gateway sends, TcpProxy.upstream_text())."""
        p = TcpProxy(self.server.component_port, record=record)
        self.extras.append(p)
        return p

    def new_gateway(self) -> Gateway:
        self.gateway = Gateway(self.root / "gw", self.server)
        return self.gateway

    def close(self) -> None:
        for c in self.clients:
            c.close()
        if self.gateway:
            self.gateway.close()
        for x in self.extras:
            x.close()
        self.server.close()


SERVERS = ("prosody", "ejabberd")


def make_server(root: Path, server: str = "prosody", log_level: str = "debug", default_limits: bool = False,
                **kw: Any) -> Any:
    """An XMPP server (not started) in `root`/<server>: "prosody" or "ejabberd"."""
    if server == "prosody":
        return Prosody(root / "prosody", log_level=log_level, default_limits=default_limits, **kw)
    if server == "ejabberd":
        from ejabberd import Ejabberd

        # ejabberd's debug level logs every stanza routed and slows it down; info keeps the
        # log readable (FIELDGATE_E2E_EJABBERD_LOG=debug to see the stanzas)
        if log_level == "debug":
            log_level = os.environ.get("FIELDGATE_E2E_EJABBERD_LOG", "info")
        return Ejabberd(root / "ejabberd", log_level=log_level,
                        default_limits=default_limits, **kw)
    raise ValueError(f"unknown XMPP server {server!r} (one of {SERVERS})")


def make_env(root: Path, users: Iterable[str] = ("alice", "bob", "carol"), log_level: str = "debug",
             default_limits: bool = False, server: str = "prosody", **server_kw: Any) -> Env:
    """The server started with `users` registered (password PASSWORD); no gateway yet."""
    srv = make_server(root, server, log_level=log_level, default_limits=default_limits, **server_kw)
    env = Env(root=root, server=srv)
    try:
        for u in users:
            srv.register(u)
        srv.start()
    except BaseException:
        env.close()
        raise
    return env


@atexit.register
def _stop_leftovers() -> None:
    """Last line of defence (an interrupted run): no server or gateway outlives the tests."""
    for obj in list(reversed(ACTIVE)):
        if isinstance(obj, (Gateway, Prosody, TcpProxy)):
            try:
                obj.close()
            except Exception:  # noqa: BLE001
                pass
